"""The training configuration: one dataclass, its command-line flags, its validation, and what a resume may change."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

from qrsu_data import store, task
from qrsu_data.splits import SplitSpec
from qrsu_models import LSTM_INITS, registry

PADDINGS = ("pre", "post")
INITIAL_STATES = ("zero", "noise", "passed")
"""What a training sequence's recurrent state starts from: zeros; Gaussian noise (``noise_std``); or the final
state of the sequence in the same row of the previous batch (state passing, Buitrago Ruiz & Gu 2025)."""
ACCELERATOR_UNROLL = 8
"""Automatic ``unroll`` on a GPU or TPU (on CPU it is 1): time steps per iteration of the recurrence's loop.

Measured on an H100 (benchmarks/train_throughput.py --unrolls 1 16): 8 ran hard and nightmare 1.6-1.9x faster
than 1; 16 changed that by -4% to +7% and compiled up to 2.2x longer."""
OPTIMIZERS = ("adam", "sgd")

CHANGEABLE_ON_RESUME = ("epochs", "log_every", "checkpoint_every", "eval_batch_size", "data_dir", "workdir",
                        "grad_threads", "unroll", "coordinator_address", "process_id", "distributed",
                        "init_timeout", "resume", "overwrite")
"""Settings a resumed run may take from the new command line (recorded in config.json): how long it trains,
how it logs and evaluates, where its files are, how its steps are computed. Everything else defines the run
(model, data, optimizer, batches, seed, epoch length) and must match the saved run."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; defaults are the seed notebook's, except lr, lstm_init and clip_norm.

    Those three default to what solves the long-lag levels (Adam 3e-3, chrono-initialised LSTM gate biases,
    gradients clipped at norm 1; see docs/leaderboard.md). ``SEED_NOTEBOOK`` holds the notebook's values.
    """

    model: str = "lstm"
    difficulty: str = "easy"
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay_steps: int = 0
    hidden: int = 64
    model_options: dict = dataclasses.field(default_factory=dict)
    optimizer: str = "adam"
    seed: int = 42
    epochs: int = 3
    steps_per_epoch: int = 0
    lstm_init: str = ""  # "": chrono for an LSTM, default for the other cells
    clip_norm: float = 1.0
    padding: str = "pre"
    bucket_width: int = 0
    initial_state: str = "zero"
    noise_std: float = 1.0
    omega: float = 0.0
    workdir: str = ""
    data_dir: str | None = None
    checkpoint_every: int = 1000
    log_every: int = 100
    resume: bool = False
    overwrite: bool = False
    eval_batch_size: int = 1000
    grad_threads: int = 0
    unroll: int = 0
    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0
    distributed: bool = False
    init_timeout: int = 300

    def __post_init__(self):
        try:
            self.difficulty = store.check_config(self.difficulty)  # a config given as JSON gets its name
        except (ValueError, TypeError):
            pass  # validate() reports it
        if not self.lstm_init:
            self.lstm_init = "chrono" if self.model == "lstm" else "default"
        if not self.workdir:
            self.workdir = f"runs/{self.model.replace(':', '.')}-{self.difficulty}-seed{self.seed}"

    def validate(self) -> TrainConfig:
        """Returns self, or raises ValueError naming the bad setting and its valid choices."""
        spec = registry.get(self.model)  # a registered name or package.module:Class
        if "hidden" not in spec.options() and self.hidden != TrainConfig.hidden:
            raise ValueError(f"model {self.model!r} has no --hidden; set its size with --model-options (its options: "
                             f"{', '.join(spec.options()) or 'none'})")
        try:
            self.dataset  # noqa: B018 - resolved (and kept) here, or refused
        except (ValueError, TypeError) as e:
            if not str(e).startswith("unknown"):  # a name of the right form with a bad value: say which
                raise ValueError(f"difficulty {self.difficulty!r}: {e}") from None
            raise ValueError(f"unknown difficulty {self.difficulty!r}; choose one of: {', '.join(task.LEVELS)}, "
                             f"a level of varied lengths such as 'hard-var50to200', or a dataset config such as "
                             f"'hard-train1000000'") from None
        for name, valid in {"padding": PADDINGS, "optimizer": OPTIMIZERS, "lstm_init": LSTM_INITS,
                            "initial_state": INITIAL_STATES}.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(valid)}")
        if self.model != "lstm" and self.lstm_init != "default":
            raise ValueError(f"lstm_init {self.lstm_init!r} applies to --model lstm only, not {self.model!r}")
        for name in ("batch_size", "hidden", "epochs", "checkpoint_every", "log_every", "eval_batch_size",
                     "init_timeout"):
            _check_int(name, getattr(self, name), 1)
        _check_int("steps_per_epoch", self.steps_per_epoch, 0, "0: one pass over the train split")
        _check_int("bucket_width", self.bucket_width, 0, "0: every batch padded to the level's longest length")
        _check_int("warmup_steps", self.warmup_steps, 0, "0: the full learning rate from the first step")
        _check_int("decay_steps", self.decay_steps, 0, "0: a constant learning rate")
        _check_int("seed", self.seed, 0)
        _check_int("grad_threads", self.grad_threads, 0, "0: automatic")
        _check_int("unroll", self.unroll, 0, "0: automatic")
        _check_int("num_processes", self.num_processes, 1)
        if self.initial_state != "zero" and not spec.supports("forward_state"):
            raise ValueError(f"initial_state {self.initial_state!r} needs a model whose state can be set "
                             f"(forward_state); {self.model!r} has none. Models with one: "
                             f"{', '.join(registry.with_method('forward_state')) or 'none'}")
        if self.omega and not spec.supports("regularizer"):
            raise ValueError(f"omega (Pascanu et al.'s regulariser) needs a model that defines it; {self.model!r} "
                             f"does not. Models that do: {', '.join(registry.with_method('regularizer')) or 'none'}")
        for name in ("noise_std", "omega", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.clip_norm, (int, float)) or not math.isfinite(self.clip_norm) or self.clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0 (0 disables clipping), got {self.clip_norm!r}")
        if not isinstance(self.model_options, dict):
            raise ValueError(f"model_options must be a JSON object such as '{{\"layers\": 2}}', "
                             f"got {self.model_options!r}")
        if self.grad_threads > 1 and self.batch_size % self.grad_threads:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_threads {self.grad_threads}; "
                             f"each thread takes an equal part of every batch")
        if isinstance(self.process_id, bool) or not isinstance(self.process_id, int) or \
                not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id must lie in 0..{self.num_processes - 1}, got {self.process_id!r}")
        if self.num_processes > 1 and not self.coordinator_address:
            raise ValueError("--num-processes > 1 needs --coordinator-address HOST:PORT (process 0's address)")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) % self.num_processes:
                raise ValueError(f"{name} {getattr(self, name)} is not divisible by the {self.num_processes} "
                                 f"processes; each process loads an equal part of every batch")
        if not isinstance(self.workdir, str) or not self.workdir.strip():
            raise ValueError(f"workdir must name a folder, got {self.workdir!r}")
        if self.data_dir is not None:
            store.resolve_data_dir(self.data_dir)  # empty, or a file: ValueError
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        return self

    @functools.cached_property
    def dataset(self) -> SplitSpec:
        """The configured dataset config, resolved once (its level, splits and sizes); ValueError if unknown."""
        return SplitSpec.parse(self.difficulty)

    @property
    def num_classes(self) -> int:
        """Number of classes of the configured dataset."""
        return self.dataset.level_def.num_classes

    def options(self) -> dict[str, Any]:
        """The model's constructor options this config sets: --hidden, --lstm-init, --model-options."""
        spec = registry.get(self.model)
        accepted = spec.options()
        out: dict[str, Any] = {}
        if "hidden" in accepted:
            out["hidden"] = self.hidden
        if "lstm_init" in accepted:
            out["lstm_init"] = self.lstm_init
        return {**out, **self.model_options}

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from ``to_json``'s output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def model_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """The settings that define the run and differ between ``other`` (saved) and self (asked)."""
        return {f.name: (getattr(other, f.name), getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in CHANGEABLE_ON_RESUME and getattr(self, f.name) != getattr(other, f.name)}


def _check_int(name: str, value: object, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {what}{f' ({note})' if note else ''}, got {value!r}")


def amend(saved: TrainConfig, asked: dict[str, Any]) -> tuple[TrainConfig, dict[str, list]]:
    """The saved run's config with the ``asked`` settings of a resume: (config, changes made as [old, new]).

    ValueError lists every asked setting that would change what the run is; none of them is applied.
    """
    refused = {k: (getattr(saved, k), v) for k, v in asked.items()
               if k not in CHANGEABLE_ON_RESUME and getattr(saved, k) != v}
    if refused:
        listed = "; ".join(f"{k.replace('_', '-')}: saved {a!r}, asked {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"a resumed run continues the saved run exactly, but these settings differ from it: "
                         f"{listed}. Resume without them (the saved values are used), or start another --workdir. "
                         f"A resume may change only: {', '.join(k.replace('_', '-') for k in CHANGEABLE_ON_RESUME)}")
    changes = {k: [getattr(saved, k), v] for k, v in asked.items()
               if getattr(saved, k) != v and k not in ("resume", "overwrite")}
    return dataclasses.replace(saved, **{k: v for k, v in asked.items()}), changes


_HELP = {
    "model": "model: one of {models}, or a model of your own as package.module:Class (docs/models.md)",
    "difficulty": f"dataset config: a level ({', '.join(task.LEVELS)}) or a config name such as hard-train1000000",
    "batch_size": "global batch size (split across all devices)",
    "lr": "learning rate of the optimizer (the seed notebook used 1e-4, which learns easy but not the long "
          "lags of hard and nightmare)",
    "weight_decay": "decoupled weight decay of Adam (AdamW, Loshchilov & Hutter 2019); 0: plain Adam",
    "warmup_steps": "steps over which the learning rate rises linearly from 0 to --lr (0: none)",
    "decay_steps": "steps (after the warm-up) over which the learning rate falls to 0 along a cosine, and stays "
                   "there (0: constant). Training past solving with a decay is what generalises in length "
                   "(docs/length_generalisation.md)",
    "hidden": "model width: hidden units of a recurrent cell, the width of the other families",
    "model_options": "the model's other options as a JSON object, e.g. '{\"layers\": 2}' (docs/models.md)",
    "optimizer": "optimizer: adam (AdamW with --weight-decay), or sgd (plain gradient descent, no momentum: "
                 "Pascanu et al. 2013's)",
    "seed": "seed of the model initialisation and of the data order",
    "epochs": "number of epochs; an epoch is one pass over the 100,000-sequence train split "
              "(3,125 batches of 32), where the seed notebook's epoch was 31 freshly generated batches",
    "steps_per_epoch": "steps (batches) per epoch; 0 means one pass over the train split "
                       "(31 gives the seed notebook's epoch length)",
    "lstm_init": f"LSTM gate-bias initialisation: {', '.join(LSTM_INITS)} (default: chrono for --model lstm, "
                 f"which solves the long lags; the seed notebook's is 'default', zero biases)",
    "clip_norm": "clip gradients to this global norm (0: no clipping, as in the seed notebook)",
    "padding": "where padding goes: pre (the seed's layout) or post",
    "initial_state": "what each training sequence's recurrent state starts from: zero; noise (Gaussian, "
                     "--noise-std); passed (the final state of the previous batch's sequence in the same row: state "
                     "passing, Buitrago Ruiz & Gu 2025). Evaluation always starts from zero",
    "noise_std": "standard deviation of the noisy initial state (--initial-state noise)",
    "omega": "weight of Pascanu et al. (2013)'s vanishing-gradient regulariser Omega (models that define it: "
             "pascanu_rnn); 0: none",
    "bucket_width": "draw each batch from one bucket of this many lengths and pad it to the bucket's longest, not "
                    "the level's (for levels of varied lengths such as hard-var50to200; 0: no buckets)",
    "workdir": "where history.json, curves.png, config.json and checkpoints/ go "
               "(default: runs/MODEL-DIFFICULTY-seedSEED)",
    "data_dir": "dataset dir (default: $QRSU_DATA_DIR or ~/qrsu_data); a missing dataset is built there first",
    "checkpoint_every": "save a checkpoint every this many steps (also at each epoch end and on Ctrl-C)",
    "log_every": "check the loss for NaN and refresh the progress bar every this many steps",
    "resume": "continue the run saved in --workdir with its saved settings (--epochs may extend it)",
    "overwrite": "replace the run in --workdir by a new one (the old run is removed once the new one starts)",
    "eval_batch_size": "batch size of evaluation (the whole test split is evaluated, every example once)",
    "grad_threads": "CPU only: split each batch over this many threads, each taking the gradient of its part "
                    "(XLA:CPU runs a recurrence on one core); 0 picks up to one per core (at most 4) on a single "
                    "CPU device when each part keeps enough work (not for easy at batch 32), else 1",
    "unroll": "time steps per iteration of the recurrence's loop (the same model, a different program); 0 picks "
              f"1 on CPU, where unrolling measured slower, and {ACCELERATOR_UNROLL} on a GPU, where fewer loop "
              "iterations save launch overhead",
    "coordinator_address": "multi-process runs: HOST:PORT of process 0 (jax.distributed coordinator)",
    "num_processes": "multi-process runs: how many processes take part",
    "process_id": "multi-process runs: this process's index, 0..num_processes-1",
    "distributed": "call jax.distributed.initialize() and let JAX detect the cluster (SLURM, TPU pods, ...)",
    "init_timeout": "multi-process runs: seconds to wait for every process to reach the coordinator",
}


SEED_NOTEBOOK: dict[str, Any] = {"model": "lstm", "difficulty": "easy", "batch_size": 32, "lr": 1e-4,
                                 "hidden": 64, "optimizer": "adam", "seed": 42, "lstm_init": "default",
                                 "clip_norm": 0.0}
"""The seed notebook's settings: ``--lr 1e-4 --lstm-init default --clip-norm 0`` reproduces it."""


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object such as '{{\"layers\": 2}}': {text!r}")
    return value


def parser(prog: str = "python -m pipelines.train") -> argparse.ArgumentParser:
    """The command-line parser, one flag a config field; flags not given are left out of the parsed values."""
    description = ("Train a sequence classifier on the temporal-order task. Defaults are the seed notebook's, "
                   "except three that make the long lags learnable: --lr 3e-3, --clip-norm 1 and --lstm-init "
                   "chrono (add --lr 1e-4 --clip-norm 0 --lstm-init default for the notebook's exact set-up).")
    p = argparse.ArgumentParser(prog=prog, description=description)
    defaults = TrainConfig(workdir="-")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = _HELP[f.name].replace("{models}", ", ".join(registry.names()))
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
            continue
        kind = {"int": int, "float": float, "dict": _json_object}.get(str(f.type), str)
        shown = getattr(defaults, f.name) if f.name not in ("workdir", "lstm_init") else None
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS,
                       help=text + (f" (default: {shown})" if shown not in (None, "", {}) else ""))
    return p


def parse_flags(argv: list[str] | None = None) -> dict[str, Any]:
    """The flags given on the command line, by field name (argparse exits with code 2 on a malformed one)."""
    return vars(parser().parse_args(argv))


def from_args(argv: list[str] | None = None) -> TrainConfig:
    """A validated TrainConfig from the command line (a fresh run's; see amend for a resume)."""
    p = parser()
    try:
        return TrainConfig(**vars(p.parse_args(argv))).validate()
    except ValueError as e:
        p.error(str(e))


def load(path: str | Path) -> TrainConfig:
    """The config saved in a workdir's config.json; ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return TrainConfig.from_json(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a run's config ({type(e).__name__}: {e}); restore it from a copy, or "
                         f"start the run afresh with --overwrite") from None
