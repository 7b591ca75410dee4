"""A faster train-step strategy on one CPU device: each batch's gradient split over threads.

XLA:CPU runs a recurrence's time loop op by op on one core, and one program's independent loops do not run
concurrently; separate executions on separate threads do. So each thread takes the gradient of an equal slice
of the batch with the same compiled function, and one more jitted function averages the gradients and applies
the update of :func:`pipelines.engine.state.train_step` (the mean of equal parts' mean gradients is the whole batch's
mean gradient). Measured on 2 cores (``benchmarks/train_throughput.py --compare-threads``): 1.07-1.36x at
`hard` batch 32 and 1.8-1.9x at batch 256; a mesh of 2 forced host CPU devices ran the same step at 0.75-0.87x
the threads' speed at batch 32.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import optax

from pipelines.engine.gradient import bounded_value_and_grad
from pipelines.engine.sharding import Sharding
from pipelines.engine.state import Batch, SplitModel, TrainState, apply_gradients, loss_fn

MIN_PART_WORK = 800
"""Automatic gradient threads give each thread at least this many (time step x sequence) cells of work."""


def grad_threads(asked: int, batch_size: int, length: int, sharding: Sharding) -> int:
    """How many threads share each train step's gradient: ``asked``, or for 0 the count that pays for batches of
    ``batch_size`` sequences of padded ``length`` on this machine."""
    if sharding.num_devices > 1 or jax.devices()[0].platform != "cpu":
        return 1  # accelerators and meshes parallelise inside the step already
    if asked:
        return asked
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # A thread pays only when its part of the batch is big enough to outweigh the extra dispatches: measured
    # on 2 cores, 2 threads ran `easy` at batch 32 (9 steps x 16 rows a part) at 0.4x, `normal` at batch 32
    # (41 x 16) at 0.8x, `moderate` at batch 32 (81 x 16) at 1.2x and `normal` at batch 256 at 1.8x.
    return max(t for t in range(1, min(cores, 4) + 1)
               if batch_size % t == 0 and (t == 1 or length * batch_size // t >= MIN_PART_WORK))


def _part_gradient(model: SplitModel, part: int, params: dict, batch: Batch, index: jax.Array):
    # Slicing inside the program keeps one compilation for every part (index is traced).
    sliced = {k: jax.lax.dynamic_slice_in_dim(v, index * part, part) for k, v in batch.items()}
    (_, (logits, losses, final)), grads = bounded_value_and_grad(loss_fn)(params, model, sliced)
    return grads, logits, losses, final


def _apply_parts(tx: optax.GradientTransformation, state: TrainState, parts: list, labels: jax.Array):
    grads = jax.tree.map(lambda *g: sum(g) / len(g), *[p[0] for p in parts])
    logits = jnp.concatenate([p[1] for p in parts])
    losses = jnp.concatenate([p[2] for p in parts])
    new = apply_gradients(tx, state, grads, losses, logits, labels)
    if state.carry is not None:  # state passing: the parts' final states, in batch order, are the next carry
        new = new._replace(carry=jnp.concatenate([p[3] for p in parts]))
    return new, losses.mean()


class ThreadedTrainStep:
    """``(state, batch) -> (state, loss)`` like :class:`pipelines.engine.step.TrainStep`, the gradient split
    over threads."""

    def __init__(self, model: SplitModel, tx: optax.GradientTransformation, threads: int, batch_size: int):
        if threads < 2 or batch_size % threads:
            raise ValueError(f"batch size {batch_size} does not split into {threads} equal parts")
        self.threads = threads
        self._grad = jax.jit(functools.partial(_part_gradient, model, batch_size // threads))
        self._apply = jax.jit(functools.partial(_apply_parts, tx), donate_argnums=0)
        self._indices = [jnp.int32(i) for i in range(threads)]  # device scalars: no conversion per call
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="qrsu-grad")

    def _part(self, params: dict, batch: Batch, index: jax.Array):
        # Waiting inside the thread is what makes the parts' executions overlap.
        return jax.block_until_ready(self._grad(params, batch, index))

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, jax.Array]:
        if state.carry is not None:  # as train_step: start from the carried states, no gradient into them
            batch = {**batch, "initial_state": jax.lax.stop_gradient(state.carry)}
        parts = [self._pool.submit(self._part, state.params, batch, i) for i in self._indices]
        return self._apply(state, [p.result() for p in parts], batch["label"])

    def close(self) -> None:
        """Shuts the threads down."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ThreadedTrainStep:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
