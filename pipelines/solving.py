"""One run of the experiment: train a model on a level until it is solved on validation, then test it.

A run checks the validation split every ``check_every`` training sequences (its first 2,560 sequences first,
the whole split once those are at most 2% wrong) and stops when at most 1% of it is misclassified (the
criterion of Pascanu et al. 2013) or when its budget of training sequences is spent; the model that stopped
is then evaluated on the test split, which no decision looked at, with the 1997 paper's figure: wrong answers
among the first 2,560 test sequences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from pipelines import reporting
from pipelines.config import TrainConfig
from pipelines.evaluator import Evaluator
from pipelines.sharding import Sharding
from pipelines.steps import SplitModel, create_model, create_tx, init_state, make_train_step
from qrsu_data import loaders, store
from qrsu_models import registry

SOLVED_ERROR = 0.01
"""Solved: at most this fraction of the validation split misclassified (Pascanu et al. 2013)."""
SCREEN_ERROR = 0.02
"""A check evaluates the whole validation split only once its first 2,560 sequences are at most this wrong."""
PAPER_TEST = 2560
"""The 1997 paper's test set size; its figure is wrong answers out of this many."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on: a finished run is redone only if one of these differs."""

    cell: str
    level: str
    seed: int
    budget: int
    check_every: int
    batch_size: int = 16
    lr: float = 2e-3
    clip_norm: float = 1.0
    hidden: int = 64
    padding: str = "pre"
    grad_threads: int = 2
    model_options: str = "{}"  # JSON, e.g. '{"layers": 2}'

    @property
    def key(self) -> str:
        """The run's file name in an output folder."""
        return f"{self.cell.replace(':', '.')}-{self.level}-lr{self.lr:g}-seed{self.seed}"

    def config(self, data_dir: str | os.PathLike | None = None) -> TrainConfig:
        """The training configuration of this run."""
        return TrainConfig(model=self.cell, difficulty=self.level, batch_size=self.batch_size, lr=self.lr,
                           clip_norm=self.clip_norm, hidden=self.hidden, seed=self.seed, data_dir=data_dir,
                           padding=self.padding, grad_threads=self.grad_threads, workdir=os.devnull,
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


def run_one(spec: RunSpec, data_dir=None, events_dir: Path | None = None,
            params_path: Path | None = None) -> RunResult:
    """Trains ``spec.cell`` on ``spec.level`` from ``spec.seed`` until solved or ``spec.budget`` training sequences.

    With ``events_dir``, each check's accuracy goes to TensorBoard event files there (step: sequences seen);
    with ``params_path``, the final parameters are saved there (``.npz``, for :func:`load_params`)."""
    if spec.budget <= 0 or spec.check_every <= 0:
        raise ValueError(f"budget and check_every must be positive, got {spec.budget} and {spec.check_every}")
    config = spec.config(data_dir)
    store.build(spec.level, data_dir)
    sharding = Sharding.create()
    model = create_model(config)
    parameters = registry.parameter_count(model)
    state_size = registry.state_size(model, loaders.max_length(spec.level))
    tx = create_tx(config)
    split, state = init_state(model, tx, config, sharding)
    evaluator = Evaluator(split, sharding, batch_size=1280)
    train_iter = loaders.train_loader(spec.level, batch_size=spec.batch_size, seed=spec.seed, data_dir=data_dir,
                                      padding=spec.padding)
    steps_per_check = max(1, spec.check_every // spec.batch_size)
    check_split = "validation" if "validation" in loaders.split_names(spec.level) else "test"
    t0 = time.perf_counter()
    seen, curve, solved_at = 0, [], None
    if events_dir is not None and events_dir.exists():
        shutil.rmtree(events_dir)  # a run killed before it was saved left these; the run is redone whole
    events = reporting.Events(events_dir or ".", enabled=events_dir is not None)
    with make_train_step(config, split, tx, sharding) as step_fn, contextlib.closing(events):
        while seen < spec.budget:  # at least one check runs
            for _ in range(steps_per_check):
                state, _ = step_fn(state, sharding.put_batch(next(train_iter)))
            seen += steps_per_check * spec.batch_size
            # A check first screens 2,560 validation sequences (a quarter of the split, so a quarter of the
            # time); only a screen with at most SCREEN_ERROR wrong is followed by the whole split, which
            # decides. A model at 1% error on the split fails the screen with probability ~1e-6 (5 sd).
            wrong = evaluator.predict(state.params, spec.level, check_split, data_dir=data_dir, limit=PAPER_TEST).wrong
            accuracy = 1.0 - wrong / PAPER_TEST
            if wrong <= SCREEN_ERROR * PAPER_TEST:
                accuracy = evaluator.evaluate(state.params, spec.level, check_split, data_dir=data_dir)["accuracy"]
            curve.append((seen, accuracy))
            events.scalars(seen, {f"{check_split}/accuracy": accuracy})
            if 1.0 - accuracy <= SOLVED_ERROR:
                solved_at = seen
                break
        # The model that stopped, on the test split it never chose by: the whole split, and the 1997 figure.
        test = evaluator.predict(state.params, spec.level, "test", data_dir=data_dir)
        events.scalars(seen, {"test/accuracy": test.metrics()["accuracy"]})
    if params_path is not None:
        save_params(state.params, params_path)
    wrong_of_2560 = int((test.predicted[:PAPER_TEST] != test.labels[:PAPER_TEST]).sum())
    return RunResult(spec.cell, spec.level, spec.seed, solved_at is not None, solved_at, seen,
                     test.metrics()["accuracy"], wrong_of_2560, round(time.perf_counter() - t0, 1), curve,
                     parameters, state_size, accuracy, spec.lr)


def save_params(params: dict, path: Path) -> None:
    """A model's parameters as an ``.npz`` of its leaves in tree order, written atomically."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    arrays = {f"{i:04d}{jax.tree_util.keystr(k)}": np.asarray(v) for i, (k, v) in enumerate(leaves)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_params(spec: RunSpec, path: Path, data_dir=None) -> tuple[SplitModel, dict]:
    """(static model, parameters) of the run ``spec`` whose parameters :func:`save_params` wrote to ``path``."""
    config = spec.config(data_dir)
    split, params = SplitModel.of(create_model(config), config.padding)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    with np.load(path) as saved:
        names = sorted(saved.files)
        if [n[4:] for n in names] != [jax.tree_util.keystr(k) for k, _ in leaves]:
            raise ValueError(f"{path} holds the parameters of another model than {spec.cell!r}")
        values = [saved[n] for n in names]
    return split, jax.tree_util.tree_unflatten(treedef, values)
