"""How a train step runs: one jitted program over the mesh, or, on one CPU device, the gradient threads.

The simple version is :class:`TrainStep`: :func:`pipelines.engine.state.train_step` compiled with
``jax.jit(step, in_shardings, out_shardings, donate_argnums)``, the batch sharded over the mesh's ``data`` axis
and the state replicated and donated. Beside it, the measured faster strategy on a single CPU device,
:class:`pipelines.engine.threaded_step.ThreadedTrainStep`; :func:`make_train_step` picks one.
"""

from __future__ import annotations

import functools

import jax
import optax

from pipelines.engine import threaded_step
from pipelines.engine.sharding import Sharding
from pipelines.engine.state import Batch, SplitModel, TrainState, train_step


def jit_train_step(model: SplitModel, tx: optax.GradientTransformation, sharding: Sharding):
    """``train_step`` compiled for the mesh: batch split along ``data``, state replicated and donated."""
    return jax.jit(functools.partial(train_step, model, tx), in_shardings=(sharding.replicated, sharding.batch),
                   out_shardings=(sharding.replicated, sharding.replicated), donate_argnums=0)


class TrainStep:
    """The jitted step as a callable ``(state, batch) -> (state, loss)``, closed like the threaded strategy."""

    threads = 1

    def __init__(self, model: SplitModel, tx: optax.GradientTransformation, sharding: Sharding):
        self._step = jit_train_step(model, tx, sharding)
        self._sync = sharding.blocks_each_step

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, jax.Array]:
        state, loss = self._step(state, batch)
        if self._sync:
            jax.block_until_ready(loss)
        return state, loss

    def close(self) -> None:
        """Nothing to release (the threaded strategy shuts its threads down here)."""

    def __enter__(self) -> TrainStep:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_train_step(model: SplitModel, tx: optax.GradientTransformation, sharding: Sharding, *,
                    batch_size: int, length: int, grad_threads: int = 0) -> TrainStep | threaded_step.ThreadedTrainStep:
    """The step strategy for this run: gradient threads on one CPU device where they pay, else the jitted step.

    ``grad_threads`` 0 picks the count (:func:`pipelines.engine.threaded_step.grad_threads`); ``length`` is the
    padded length of a batch."""
    threads = threaded_step.grad_threads(grad_threads, batch_size, length, sharding)
    if threads > 1:
        return threaded_step.ThreadedTrainStep(model, tx, threads, batch_size)
    return TrainStep(model, tx, sharding)
