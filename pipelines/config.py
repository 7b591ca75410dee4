"""The training configuration: one dataclass, its command-line flags, and its validation."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from qrsu_data import task
from qrsu_models import CELLS, LSTM_INITS

PADDINGS = ("pre", "post")
ACCELERATOR_UNROLL = 8
"""Automatic ``unroll`` on a GPU or TPU (on CPU it is 1): time steps per iteration of the recurrence's loop.

Measured on an H100 (benchmarks/train_throughput.py --unrolls 1 16): 8 ran hard and nightmare 1.6-1.9x faster
than 1; 16 changed that by -4% to +7% and compiled up to 2.2x longer."""
OPTIMIZERS = ("adam",)

# Fields that define the model and its data: a checkpoint only resumes under the same values.
MODEL_FIELDS = ("model", "difficulty", "hidden", "lstm_init", "padding", "seed", "batch_size", "optimizer")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; defaults are the seed notebook's, except lr, lstm_init and clip_norm.

    Those three default to what solves the long-lag levels (Adam 3e-3, chrono-initialised LSTM gate biases,
    gradients clipped at norm 1; see the README's experiment). ``SEED_NOTEBOOK`` holds the notebook's values.
    """

    model: str = "lstm"
    difficulty: str = "easy"
    batch_size: int = 32
    lr: float = 3e-3
    hidden: int = 64
    optimizer: str = "adam"
    seed: int = 42
    epochs: int = 3
    steps_per_epoch: int = 0
    lstm_init: str = ""  # "": chrono for an LSTM, default for the other cells
    clip_norm: float = 1.0
    padding: str = "pre"
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

    def __post_init__(self):
        if not self.lstm_init:
            self.lstm_init = "chrono" if self.model == "lstm" else "default"
        if not self.workdir:
            self.workdir = f"runs/{self.model}-{self.difficulty}-seed{self.seed}"

    def validate(self) -> TrainConfig:
        """Returns self, or raises ValueError naming the bad setting and its valid choices."""
        choices = {"model": CELLS, "difficulty": tuple(task.LEVELS), "padding": PADDINGS,
                   "optimizer": OPTIMIZERS, "lstm_init": LSTM_INITS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(valid)}")
        if self.model != "lstm" and self.lstm_init != "default":
            raise ValueError(f"lstm_init {self.lstm_init!r} applies to --model lstm only, not {self.model!r}")
        for name in ("batch_size", "hidden", "epochs", "checkpoint_every", "log_every", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 0:
            raise ValueError(f"steps_per_epoch must be >= 0 (0: one pass over the train split), "
                             f"got {self.steps_per_epoch!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.clip_norm >= 0:
            raise ValueError(f"clip_norm must be >= 0 (0 disables clipping), got {self.clip_norm!r}")
        if not isinstance(self.grad_threads, int) or self.grad_threads < 0:
            raise ValueError(f"grad_threads must be >= 0 (0: automatic), got {self.grad_threads!r}")
        if self.grad_threads > 1 and self.batch_size % self.grad_threads:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_threads {self.grad_threads}; "
                             f"each thread takes an equal part of every batch")
        if not isinstance(self.unroll, int) or self.unroll < 0:
            raise ValueError(f"unroll must be >= 0 (0: automatic), got {self.unroll!r}")
        if not isinstance(self.num_processes, int) or self.num_processes < 1:
            raise ValueError(f"num_processes must be a positive integer, got {self.num_processes!r}")
        if not isinstance(self.process_id, int) or not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id must lie in 0..{self.num_processes - 1}, got {self.process_id!r}")
        if self.num_processes > 1 and not self.coordinator_address:
            raise ValueError("--num-processes > 1 needs --coordinator-address HOST:PORT (process 0's address)")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) % self.num_processes:
                raise ValueError(f"{name} {getattr(self, name)} is not divisible by the {self.num_processes} "
                                 f"processes; each process loads an equal part of every batch")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        return self

    @property
    def num_classes(self) -> int:
        """Number of classes of the configured level."""
        return task.get_level(self.difficulty).num_classes

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from ``to_json``'s output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def model_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """The model-defining fields whose values differ between self and ``other``."""
        return {f: (getattr(other, f), getattr(self, f)) for f in MODEL_FIELDS if getattr(self, f) != getattr(other, f)}


_HELP = {
    "model": f"recurrent cell: {', '.join(CELLS)} (rnn is the seed's SimpleRNN with ReLU)",
    "difficulty": f"dataset level: {', '.join(task.LEVELS)}",
    "batch_size": "global batch size (split across all devices)",
    "lr": "learning rate of the optimizer (the seed notebook used 1e-4, which learns easy but not the long "
          "lags of hard and nightmare)",
    "hidden": "hidden units of the recurrent cell",
    "optimizer": "optimizer",
    "seed": "seed of the model initialisation and of the data order",
    "epochs": "number of epochs; an epoch is one pass over the 100,000-sequence train split "
              "(3,125 batches of 32), where the seed notebook's epoch was 31 freshly generated batches",
    "steps_per_epoch": "steps (batches) per epoch; 0 means one pass over the train split "
                       "(31 gives the seed notebook's epoch length)",
    "lstm_init": f"LSTM gate-bias initialisation: {', '.join(LSTM_INITS)} (default: chrono for --model lstm, "
                 f"which solves the long lags; the seed notebook's is 'default', zero biases)",
    "clip_norm": "clip gradients to this global norm (0: no clipping, as in the seed notebook)",
    "padding": "where padding goes: pre (the seed's layout) or post",
    "workdir": "where history.json, curves.png, config.json and checkpoints/ go "
               "(default: runs/MODEL-DIFFICULTY-seedSEED)",
    "data_dir": "dataset dir (default: $QRSU_DATA_DIR or ~/qrsu_data); a missing dataset is built there first",
    "checkpoint_every": "save a checkpoint every this many steps (also at each epoch end, at the end and on Ctrl-C)",
    "log_every": "check the loss for NaN and refresh the progress bar every this many steps",
    "resume": "continue the run saved in --workdir",
    "overwrite": "delete what --workdir holds and start afresh",
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
}


SEED_NOTEBOOK: dict[str, Any] = {"model": "lstm", "difficulty": "easy", "batch_size": 32, "lr": 1e-4,
                                 "hidden": 64, "optimizer": "adam", "seed": 42, "lstm_init": "default",
                                 "clip_norm": 0.0}
"""The seed notebook's settings: ``--lr 1e-4 --lstm-init default --clip-norm 0`` reproduces it."""


def parser(prog: str = "python -m pipelines.train") -> argparse.ArgumentParser:
    """The command-line parser, one flag a config field, defaults from TrainConfig."""
    description = ("Train a recurrent classifier on the temporal-order task. Defaults are the seed notebook's, "
                   "except three that make the long lags learnable: --lr 3e-3, --clip-norm 1 and --lstm-init "
                   "chrono (add --lr 1e-4 --clip-norm 0 --lstm-init default for the notebook's exact set-up).")
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=_HELP[f.name])
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        default = f.default if f.name not in ("workdir", "lstm_init") else None
        p.add_argument(flag, type=kind, default=default, help=_HELP[f.name])
    return p


def from_args(argv: list[str] | None = None) -> TrainConfig:
    """A validated TrainConfig from the command line; bad values exit with a message naming the choices."""
    p = parser()
    args = vars(p.parse_args(argv))
    args = {k: v for k, v in args.items() if v is not None}
    try:
        return TrainConfig(**args).validate()
    except ValueError as e:
        p.error(str(e))


def load(path: str | Path) -> TrainConfig:
    """The config saved in a workdir's config.json."""
    return TrainConfig.from_json(json.loads(Path(path).read_text()))
