"""One run of the experiment: train a model on a level until it is solved on validation, then test it.

A run checks the validation split every ``check_every`` training sequences (its first 2,560 sequences first,
the whole split once those are at most 2% wrong) and stops when at most 1% of it is misclassified (the
criterion of Pascanu et al. 2013) or when its budget of training sequences is spent; the model that stopped
is then evaluated on the test split, which no decision looked at, with the 1997 paper's figure: wrong answers
among the first 2,560 test sequences.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pipelines.engine import reporting
from pipelines.engine.config import TrainConfig
from pipelines.engine.loop import STOPPED, Diverged, Every, train_steps
from pipelines.engine.model import create_model, skipped_updates
from pipelines.engine.session import Session
from pipelines.engine.snapshots import Snapshots
from pipelines.engine.state import SplitModel
from qrsu_data.splits import SplitSpec

SOLVED_ERROR = 0.01
"""Solved: at most this fraction of the validation split misclassified (Pascanu et al. 2013)."""
SCREEN_ERROR = 0.02
"""A check evaluates the whole validation split only once its first 2,560 sequences are at most this wrong."""
PAPER_TEST = 2560
"""The 1997 paper's test set size; its figure is wrong answers out of this many."""
EVAL_BATCH = 1280
"""Batch size of a run's evaluations (2,560 is two batches)."""
SOLVED, NOT_SOLVED, PRUNED, DIVERGED = "solved", "budget spent", "pruned", "diverged"
"""How a run ended: solved on validation; its budget spent; stopped early by a tuning search; its loss NaN."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on: a finished run is redone only if one of these differs."""

    cell: str
    level: str
    seed: int
    budget: int
    check_every: int
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    clip_norm: float = 1.0
    hidden: int = 64
    padding: str = "pre"
    grad_threads: int = 1  # one core per run: a grid runs one run per core side by side
    model_options: str = "{}"  # JSON, e.g. '{"layers": 2}'
    bucket_width: int = 0
    initial_state: str = "zero"
    noise_std: float = 1.0
    omega: float = 0.0
    role: str = ""  # in a tuned study: 't03' (the search's 4th configuration) or 'final'; '' names it by its lr
    prune_below: tuple[float, ...] = ()  # see solving.run_one: the accuracy a check must reach to go on
    solved_error: float = SOLVED_ERROR  # the stop rule: solved at most this fraction of validation wrong
    # Train the whole budget, the learning rate falling to 0 along a cosine over it, not stopping once solved:
    # solving within 200 symbols comes well before what carries to 5,000 (docs/length_generalisation.md).
    train_through: bool = False

    @property
    def recipe(self) -> str:
        """The training recipe beyond the defaults, as a name part: '', '-passed', '-noise0.5', '-omega4',
        '-passed-through', ..."""
        parts = [f"-{self.initial_state}" + (f"{self.noise_std:g}" if self.initial_state == "noise" else "")
                 if self.initial_state != "zero" else "", f"-omega{self.omega:g}" if self.omega else "",
                 "-through" if self.train_through else ""]
        return "".join(parts)

    @property
    def key(self) -> str:
        """The run's file name in an output folder."""
        role = f"-{self.role}" if self.role else f"-lr{self.lr:g}"
        return f"{self.cell.replace(':', '.')}-{self.level}{self.recipe}{role}-seed{self.seed}"

    @property
    def steps_per_check(self) -> int:
        """Optimizer steps between two checks."""
        return max(1, self.check_every // self.batch_size)

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole budget (at least one check runs)."""
        return -(-self.budget // (self.steps_per_check * self.batch_size)) * self.steps_per_check

    def config(self, data_dir: str | os.PathLike | None = None) -> TrainConfig:
        """The training configuration of this run."""
        return TrainConfig(model=self.cell, difficulty=self.level, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer,
                           weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                           decay_steps=self.steps if self.train_through else 0,
                           clip_norm=self.clip_norm, hidden=self.hidden, seed=self.seed, data_dir=data_dir,
                           padding=self.padding, grad_threads=self.grad_threads, workdir=os.devnull,
                           bucket_width=self.bucket_width, initial_state=self.initial_state,
                           noise_std=self.noise_std, omega=self.omega,
                           model_options=json.loads(self.model_options)).validate()


@dataclasses.dataclass
class RunResult:
    """What one run ended with."""

    cell: str
    level: str
    seed: int
    solved: bool
    sequences_to_solve: int | None
    sequences_trained: int
    test_accuracy: float
    wrong_of_2560: int
    wall_time_s: float
    curve: list[tuple[int, float]]  # (training sequences, validation accuracy) at every check
    parameters: int | None = None
    state_size: int | None = None
    validation_accuracy: float | None = None  # at the last check (the stop decision's figure)
    lr: float | None = None
    ended: str = NOT_SOLVED  # SOLVED, NOT_SOLVED, PRUNED or DIVERGED
    role: str = ""  # a tuned study's 't03' (a search run) or 'final'; '' in a learning-rate grid
    budget: int | None = None
    skipped_updates: int = 0  # optimizer steps skipped for a non-finite gradient (engine.model.create_tx)

    @classmethod
    def from_json(cls, data: dict) -> RunResult:
        """A result from its JSON record (also one of an earlier version, which had no ``ended``)."""
        data = {**data, "curve": [tuple(point) for point in data["curve"]]}
        data.setdefault("ended", SOLVED if data.get("solved") else NOT_SOLVED)
        return cls(**data)

    def outcome(self) -> str:
        """How the run ended, in words: 'solved after 4,160 sequences', 'not solved in 20,000 (budget spent)'."""
        if self.solved:
            return f"solved after {self.sequences_to_solve:,} sequences"
        return f"not solved in {self.sequences_trained:,} sequences ({self.ended})"


Monitor = Callable[[int, float], bool]
"""``monitor(sequences seen, validation accuracy)`` after every check; it returns True to stop the run there
(a tuning search's pruner)."""


def run_one(spec: RunSpec, data_dir: str | os.PathLike | None = None, snapshots: str | os.PathLike | None = None,
            monitor: Monitor | None = None) -> tuple[RunResult, dict]:
    """Trains ``spec.cell`` on ``spec.level`` from ``spec.seed`` until solved or ``spec.budget`` training sequences;
    returns the result and the final parameters. With ``snapshots`` (a study's folder of them), the run saves
    itself there as it goes and resumes from its snapshot (:mod:`pipelines.engine.snapshots`)."""
    if spec.budget <= 0 or spec.check_every <= 0:
        raise ValueError(f"budget and check_every must be positive, got {spec.budget} and {spec.check_every}")
    config = spec.config(data_dir)
    t0 = time.perf_counter()
    snap = (Snapshots(Path(snapshots) / spec.key, dataclasses.asdict(spec))
            if snapshots is not None and spec.initial_state != "passed" else None)
    with Session.open(config, eval_batch_size=EVAL_BATCH) as session:
        rule = _StopRule(session, monitor, spec.prune_below, spec.solved_error, stop_solved=not spec.train_through)
        earlier = 0.0  # seconds the run took before its snapshot
        if snap is not None:
            saved = snap.restore(session)
            if saved is not None:
                rule.load(saved)
                earlier = saved["elapsed_s"]
            rule.on_continue = lambda: snap.due() and snap.save(session, {
                **rule.saved(), "elapsed_s": earlier + time.perf_counter() - t0})
        try:
            stopped = train_steps(session, spec.steps, [Every(spec.steps_per_check, rule.check)]) == STOPPED
            ended = SOLVED if rule.solved else PRUNED if stopped else NOT_SOLVED
        except Diverged:
            ended = DIVERGED
        finally:
            if snap is not None:
                snap.close()
        # The model that stopped, on the test split it never chose by: the whole split, and the 1997 figure.
        test = session.evaluator.predict(session.state.params, session.dataset, "test", data_dir=data_dir)
        params = jax.device_get(session.state.params)
        skipped = skipped_updates(session.state.opt_state)
    wrong_of_2560 = int((test.predicted[:PAPER_TEST] != test.labels[:PAPER_TEST]).sum())
    solved = ended == SOLVED
    # A run that stops at solving stops at its first solved check; one trained through is solved when its last
    # check is, and took the sequences of its first solved check.
    to_solve = rule.first_solved if solved else None
    result = RunResult(spec.cell, spec.level, spec.seed, solved, to_solve,
                       session.sequences_seen, test.metrics()["accuracy"], wrong_of_2560,
                       round(earlier + time.perf_counter() - t0, 1), rule.curve, session.parameters,
                       session.state_size, rule.accuracy, spec.lr, ended, spec.role, spec.budget, skipped)
    return result, params


class _StopRule:
    """The check of a run: the validation accuracy, screened on its first 2,560 sequences, against
    ``solved_error`` (SOLVED_ERROR by default)."""

    def __init__(self, session: Session, monitor: Monitor | None, prune_below: tuple[float, ...] = (),
                 solved_error: float = SOLVED_ERROR, stop_solved: bool = True):
        self.session, self.monitor, self.prune_below = session, monitor, prune_below
        self.solved_error, self.stop_solved = solved_error, stop_solved
        self.curve: list[tuple[int, float]] = []
        self.accuracy: float | None = None
        self.solved = False
        self.first_solved: int | None = None  # the sequences seen at the first check that met the rule
        self.on_continue: Callable[[], Any] | None = None  # after a check that lets the run go on (a snapshot)

    def saved(self) -> dict:
        """The checks so far, as JSON (a snapshot's)."""
        return {"curve": self.curve, "accuracy": self.accuracy, "solved": self.solved,
                "first_solved": self.first_solved}

    def load(self, saved: dict) -> None:
        """Takes up the checks of :meth:`saved`."""
        self.curve = [tuple(point) for point in saved["curve"]]
        self.accuracy, self.solved, self.first_solved = saved["accuracy"], saved["solved"], saved["first_solved"]

    def check(self, step: int) -> bool:
        """Whether to stop after ``step``: solved, or the monitor says so."""
        s = self.session
        # A check first screens 2,560 validation sequences (a quarter of the split, so a quarter of the time);
        # only a screen with at most SCREEN_ERROR wrong is followed by the whole split, which decides. A model
        # at 1% error on the split fails the screen with probability ~1e-6 (5 sd).
        wrong = s.evaluator.predict(s.state.params, s.dataset, s.check_split, data_dir=s.config.data_dir,
                                    limit=PAPER_TEST).wrong
        accuracy = 1.0 - wrong / PAPER_TEST
        if wrong <= max(SCREEN_ERROR, 2 * self.solved_error) * PAPER_TEST:
            accuracy = s.evaluate(s.check_split)["accuracy"]
        self.accuracy = accuracy
        self.curve.append((s.sequences_seen, accuracy))
        self.solved = 1.0 - accuracy <= self.solved_error
        if self.solved and self.first_solved is None:
            self.first_solved = s.sequences_seen
        check = len(self.curve) - 1
        # A tuning run clearly behind the finished runs of its search at this check stops here (pruned).
        trailing = check < len(self.prune_below) and accuracy < self.prune_below[check]
        monitored = bool(self.monitor is not None and self.monitor(s.sequences_seen, accuracy))
        stop = (self.solved and self.stop_solved) or trailing or monitored
        if not stop and self.on_continue is not None:
            self.on_continue()
        return stop


def write_events(result: RunResult, logdir: Path) -> None:
    """The run's TensorBoard event files: validation accuracy at every check, test accuracy at the end."""
    if logdir.exists():
        shutil.rmtree(logdir)  # an earlier attempt's, whose record was never written
    events = reporting.Events(logdir)
    try:
        split = "validation" if result.level and "validation" in SplitSpec.parse(result.level).splits else "test"
        for seen, accuracy in result.curve:
            events.scalars(seen, {f"{split}/accuracy": accuracy})
        events.scalars(result.sequences_trained, {"test/accuracy": result.test_accuracy})
    finally:
        events.close()


def flat_params(params: dict) -> dict[str, np.ndarray]:
    """A model's parameters as named arrays, in tree order (names ``0000['layer']['kernel']``)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {f"{i:04d}{jax.tree_util.keystr(k)}": np.asarray(v) for i, (k, v) in enumerate(leaves)}


def save_params(params: dict, path: Path) -> None:
    """A model's parameters as an ``.npz`` of :func:`flat_params`, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **flat_params(params))
    os.replace(tmp, path)


def model_with_params(spec: RunSpec, flat: dict[str, np.ndarray], data_dir=None) -> tuple[SplitModel, dict]:
    """(static model, parameters) of the run ``spec`` from its :func:`flat_params`; ValueError if they are
    another model's."""
    config = spec.config(data_dir)
    split, params = SplitModel.of(create_model(config), config.padding)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = sorted(flat)
    if [n[4:] for n in names] != [jax.tree_util.keystr(k) for k, _ in leaves]:
        raise ValueError(f"the saved parameters are of another model than {spec.cell!r}")
    return split, jax.tree_util.tree_unflatten(treedef, [np.asarray(flat[n]) for n in names])


def load_params(spec: RunSpec, path: Path, data_dir=None) -> tuple[SplitModel, dict]:
    """(static model, parameters) of the run ``spec`` whose parameters :func:`save_params` wrote to ``path``."""
    with np.load(path) as saved:
        flat = {name: saved[name] for name in saved.files}
    try:
        return model_with_params(spec, flat, data_dir)
    except ValueError:
        raise ValueError(f"{path} holds the parameters of another model than {spec.cell!r}") from None
