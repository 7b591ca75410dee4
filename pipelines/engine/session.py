"""One run's machinery, set up once from its config: data, mesh, model, optimizer, state, evaluator and step.

``pipelines.train`` and the grid's runs (:mod:`pipelines.engine.solving`) both open a :class:`Session` and
drive it with :func:`pipelines.engine.loop.train_steps`; they differ only in what they do between steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import optax

from pipelines.engine.config import TrainConfig
from pipelines.engine.evaluator import Evaluator
from pipelines.engine.model import create_model, create_tx
from pipelines.engine.sharding import Sharding
from pipelines.engine.state import SplitModel, TrainState, init_state
from pipelines.engine.step import TrainStep, make_train_step
from qrsu_data import loaders, store
from qrsu_data.splits import SplitSpec
from qrsu_models import registry


def ensure_built(dataset: SplitSpec, data_dir: str | os.PathLike | None) -> None:
    """Builds ``dataset`` into ``data_dir`` unless it is built, saying so (concurrent processes build it once)."""
    if not store.is_built(dataset, data_dir):
        print(f"Dataset {dataset.name!r} is not built yet; building it into {store.resolve_data_dir(data_dir)} ...",
              flush=True)
        store.build(dataset, data_dir)


@dataclasses.dataclass
class Session:
    """A run in progress: its config and dataset, its mesh, model and optimizer, the state after ``step`` steps."""

    config: TrainConfig
    dataset: SplitSpec
    sharding: Sharding
    model: SplitModel
    tx: optax.GradientTransformation
    state: TrainState
    evaluator: Evaluator
    train_iter: Any  # a checkpointable Grain iterator of this process's part of each batch
    step_fn: TrainStep
    parameters: int
    state_size: int | None
    step: int = 0

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: TrainConfig, *, eval_batch_size: int | None = None) -> Iterator[Session]:
        """The session of ``config`` (its dataset built first if missing); its step strategy is closed on exit."""
        dataset = config.dataset
        ensure_built(dataset, config.data_dir)
        sharding = Sharding.create()
        eval_batch_size = eval_batch_size or config.eval_batch_size
        sharding.check_batch_size(config.batch_size)
        sharding.check_batch_size(eval_batch_size)
        train_iter = loaders.train_loader(dataset, batch_size=config.batch_size // jax.process_count(),
                                          seed=config.seed, data_dir=config.data_dir, padding=config.padding,
                                          bucket_width=config.bucket_width)
        module = create_model(config)
        parameters = registry.parameter_count(module)
        state_size = registry.state_size(module, dataset.level_def.max_length)
        tx = create_tx(config)
        carry = module.zero_state(config.batch_size) if config.initial_state == "passed" else None
        model, state = init_state(module, tx, config.padding, sharding, regularizer=config.omega, carry=carry)
        with make_train_step(model, tx, sharding, batch_size=config.batch_size,
                             length=dataset.level_def.max_length, grad_threads=config.grad_threads) as step_fn:
            yield cls(config, dataset, sharding, model, tx, state, Evaluator(model, sharding, eval_batch_size),
                      train_iter, step_fn, parameters, state_size)

    def next_batch(self) -> dict:
        """The next training batch, on the mesh; with a noisy initial state, each sequence's start drawn from
        ``(seed, step)``."""
        batch = next(self.train_iter)
        if self.config.initial_state == "noise":
            rng = np.random.default_rng([self.config.seed, self.step, jax.process_index()])
            width = self.state_size
            batch = {**batch, "initial_state": (self.config.noise_std * rng.standard_normal(
                (len(batch["lengths"]), width))).astype(np.float32)}
        return self.sharding.put_batch(batch)

    def fresh_carry(self) -> None:
        """Sets the carried states of state passing back to zeros (a resumed run: the carry is not saved)."""
        if self.config.initial_state == "passed":
            self.state = self.state._replace(carry=self.sharding.replicate(
                np.zeros((self.config.batch_size, self.state_size), np.float32)))

    @property
    def sequences_seen(self) -> int:
        """Training sequences read so far (every process's part of every batch)."""
        return self.step * self.config.batch_size

    def evaluate(self, split: str, limit: int | None = None) -> dict[str, float]:
        """Mean loss and accuracy of the current parameters over ``split`` of the run's dataset (or its first
        ``limit`` examples)."""
        return self.evaluator.evaluate(self.state.params, self.dataset, split, data_dir=self.config.data_dir,
                                       limit=limit)

    @property
    def check_split(self) -> str:
        """The split that decisions during training look at: validation, or test for a config without one."""
        return "validation" if "validation" in self.dataset.splits else "test"
