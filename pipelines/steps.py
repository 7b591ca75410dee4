"""The training state (model, optimizer, metrics) and its one jitted train step and one jitted eval step."""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pipelines.config import ACCELERATOR_UNROLL, TrainConfig
from pipelines.sharding import Sharding, local_value
from qrsu_data import task
from qrsu_models import SequenceClassifier


def unroll(config: TrainConfig) -> int:
    """Time steps per loop iteration of the model's recurrence: ``config.unroll``, or 0 resolved for this device."""
    if config.unroll:
        return config.unroll
    # XLA:CPU runs a loop body op by op either way, and unrolling measured slower there; on a GPU every
    # iteration pays kernel launches and loop bookkeeping, so fewer, longer iterations pay.
    return 1 if jax.devices()[0].platform == "cpu" else ACCELERATOR_UNROLL


def create_model(config: TrainConfig) -> SequenceClassifier:
    """The configured classifier, initialised from ``config.seed``."""
    # Chrono initialisation spreads the forget gates' time scales up to the level's sequence length.
    return SequenceClassifier(config.model, hidden=config.hidden, num_classes=config.num_classes,
                              lstm_init=config.lstm_init, chrono_max=task.get_level(config.difficulty).padded_length,
                              unroll=unroll(config), rngs=nnx.Rngs(config.seed))


def create_tx(config: TrainConfig) -> optax.GradientTransformation:
    """The configured optimizer, with global-norm gradient clipping when ``clip_norm`` > 0."""
    tx = optax.adam(config.lr)
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), tx) if config.clip_norm > 0 else tx


MIN_PART_WORK = 800
"""Automatic gradient threads give each thread at least this many (time step x sequence) cells of work."""


def grad_threads(config: TrainConfig, sharding: Sharding) -> int:
    """How many threads share each train step's gradient: ``config.grad_threads``, or 0 resolved for this run."""
    if sharding.num_devices > 1 or jax.devices()[0].platform != "cpu":
        return 1  # accelerators and meshes parallelise inside the step already
    if config.grad_threads:
        return config.grad_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # A thread pays only when its part of the batch is big enough to outweigh the extra dispatches: measured
    # on 2 cores, 2 threads ran `easy` at batch 32 (9 steps x 16 rows a part) at 0.4x, `normal` at batch 32
    # (41 x 16) at 0.8x, `moderate` at batch 32 (81 x 16) at 1.2x and `normal` at batch 256 at 1.8x.
    length = task.get_level(config.difficulty).padded_length
    return max(t for t in range(1, min(cores, 4) + 1)
               if config.batch_size % t == 0 and (t == 1 or length * config.batch_size // t >= MIN_PART_WORK))


def create_metrics() -> nnx.MultiMetric:
    """Mean loss and accuracy, as in the seed notebook."""
    return nnx.MultiMetric(loss=nnx.metrics.Average(), accuracy=nnx.metrics.Accuracy())


@dataclasses.dataclass
class TrainState:
    """The objects a run trains and measures, with their jitted steps."""

    model: SequenceClassifier
    optimizer: nnx.Optimizer
    train_metrics: nnx.MultiMetric
    eval_metrics: nnx.MultiMetric
    padding: str
    sharding: Sharding
    # The state of (model, optimizer, train_metrics, eval_metrics) as the flat list of its arrays, on the
    # mesh: the jitted steps take and return plain lists, so a call does no per-Variable Python work
    # (flattening an nnx.State and rebuilding its Variables cost ~0.7 ms a call, on the critical path).
    _leaves: list | None = None
    _treedef: Any = None
    _graphdef: Any = None
    _train: Callable | None = None
    _eval: Callable | None = None
    _grad: Callable | None = None
    _apply: Callable | None = None
    _pool: ThreadPoolExecutor | None = None
    _indices: list | None = None  # one device scalar per gradient thread

    @classmethod
    def create(cls, config: TrainConfig, sharding: Sharding) -> TrainState:
        """Fresh model, optimizer and metrics for ``config``, replicated over the mesh."""
        model = create_model(config)
        optimizer = nnx.Optimizer(model, create_tx(config), wrt=nnx.Param)
        ts = cls(model, optimizer, create_metrics(), create_metrics(), config.padding, sharding)
        ts._graphdef, state = nnx.split((ts.model, ts.optimizer, ts.train_metrics, ts.eval_metrics))
        ts._treedef = jax.tree.structure(state)
        ts.state = state
        rep, bat = sharding.replicated, sharding.batch
        # The graph is split once: the jitted functions take and return flat lists of arrays, so no NNX graph
        # traversal happens per step; the old state's buffers are donated to the new one.
        graph = (ts._graphdef, ts._treedef)
        ts._train = jax.jit(functools.partial(_train_step, graph, ts.padding),
                            in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
        ts._eval = jax.jit(functools.partial(_eval_step, graph, ts.padding),
                           in_shardings=(rep, bat), out_shardings=rep, donate_argnums=0)
        threads = grad_threads(config, sharding)
        if threads > 1:
            # XLA:CPU runs a recurrence's loop on one core, and one program's independent loops do not run
            # concurrently; separate executions on separate threads do. So each thread takes the gradient
            # of one slice of the batch, and one more program averages them and updates.
            part = config.batch_size // threads
            ts._grad = jax.jit(functools.partial(_grad_part, graph, ts.padding, part))
            ts._apply = jax.jit(functools.partial(_apply_grads, graph), donate_argnums=0)
            ts._indices = [jnp.int32(i) for i in range(threads)]  # device scalars: no conversion per call
            ts._pool = ThreadPoolExecutor(threads, thread_name_prefix="qrsu-grad")
        return ts

    @property
    def threads(self) -> int:
        """How many threads share each train step's gradient."""
        return len(self._indices) if self._indices else 1

    @property
    def state(self) -> nnx.State:
        """The nnx.State of (model, optimizer, train_metrics, eval_metrics), on the mesh."""
        return jax.tree.unflatten(self._treedef, self._leaves)

    @state.setter
    def state(self, state: nnx.State) -> None:
        self._leaves = jax.tree.leaves(self.sharding.replicate(state))

    def train_step(self, batch: dict[str, jax.Array]) -> jax.Array:
        """One optimizer step on ``batch``; returns the batch's mean loss (a device scalar)."""
        if self._pool is None:
            self._leaves, loss = self._train(self._leaves, batch)
            return loss
        leaves = self._leaves
        parts = [self._pool.submit(lambda i: jax.block_until_ready(self._grad(leaves, batch, i)), i)
                 for i in self._indices]
        self._leaves, loss = self._apply(leaves, [p.result() for p in parts], batch["label"])
        return loss

    def eval_step(self, batch: dict[str, jax.Array]) -> None:
        """Adds ``batch`` (masked: padded rows ignored) to the eval metrics."""
        self._leaves = self._eval(self._leaves, batch)

    def objects(self) -> tuple[SequenceClassifier, nnx.Optimizer, nnx.MultiMetric, nnx.MultiMetric]:
        """(model, optimizer, train metrics, eval metrics) holding the current state."""
        nnx.update((self.model, self.optimizer, self.train_metrics, self.eval_metrics), self.state)
        return self.model, self.optimizer, self.train_metrics, self.eval_metrics

    def compute(self, which: str) -> dict[str, float]:
        """The current values of the ``train`` or ``eval`` metrics."""
        _, _, tm, em = self.objects()
        return {k: float(local_value(v)) for k, v in (tm if which == "train" else em).compute().items()}

    def reset(self, which: str) -> None:
        """Zeroes the ``train`` or ``eval`` metrics."""
        _, _, tm, em = self.objects()
        (tm if which == "train" else em).reset()
        self.state = nnx.state((self.model, self.optimizer, tm, em))

    def pure_state(self) -> dict:
        """The whole state as a nested dict of arrays (what a checkpoint stores)."""
        return nnx.to_pure_dict(self.state)

    def load_pure_state(self, pure: dict) -> None:
        """Replaces the state by a dict of the same structure as ``pure_state()``'s."""
        state = self.state
        nnx.replace_by_pure_dict(state, pure)
        self.state = state


def _loss(model: SequenceClassifier, batch: dict[str, jax.Array], padding: str):
    logits = model(batch["tokens"], batch["lengths"], padding=padding)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return losses.mean(), (logits, losses)


def _update(graph, state, grads, logits, losses, labels):
    # The end of every train step: the optimizer's update and the train metrics, on the new state.
    model, optimizer, train_metrics, eval_metrics = nnx.merge(graph[0], state)
    optimizer.update(model, grads)
    train_metrics.update(values=losses, logits=logits, labels=labels)
    return _leaves(graph, nnx.state((model, optimizer, train_metrics, eval_metrics))), losses.mean()


def _leaves(graph, state) -> list:
    # The flat list a jitted step returns; the structure must stay the one the step was built for.
    leaves, treedef = jax.tree.flatten(state)
    if treedef != graph[1]:
        raise ValueError(f"the step changed the state's structure:\n{graph[1]}\n->\n{treedef}")
    return leaves


def _train_step(graph, padding: str, leaves, batch):
    state = jax.tree.unflatten(graph[1], leaves)
    model = nnx.merge(graph[0], state)[0]
    (_, (logits, losses)), grads = nnx.value_and_grad(_loss, has_aux=True)(model, batch, padding)
    return _update(graph, state, grads, logits, losses, batch["label"])


def _grad_part(graph, padding: str, part: int, leaves, batch, index):
    # Slicing inside the program keeps one compilation for every part (index is traced).
    sliced = {k: jax.lax.dynamic_slice_in_dim(v, index * part, part) for k, v in batch.items()}
    model = nnx.merge(graph[0], jax.tree.unflatten(graph[1], leaves))[0]
    (_, (logits, losses)), grads = nnx.value_and_grad(_loss, has_aux=True)(model, sliced, padding)
    return jax.tree.leaves(grads), logits, losses


def _apply_grads(graph, leaves, parts, labels):
    state = jax.tree.unflatten(graph[1], leaves)
    # The gradients' structure is that of the model's parameters (what nnx.value_and_grad differentiates).
    grad_def = jax.tree.structure(nnx.state(nnx.merge(graph[0], state)[0], nnx.Param))
    # Equal parts: the mean of the parts' mean gradients is the whole batch's mean gradient.
    grads = jax.tree.unflatten(grad_def, [sum(g) / len(g) for g in zip(*[p[0] for p in parts])])
    logits = jnp.concatenate([p[1] for p in parts])
    losses = jnp.concatenate([p[2] for p in parts])
    return _update(graph, state, grads, logits, losses, labels)


def _eval_step(graph, padding: str, leaves, batch):
    state = jax.tree.unflatten(graph[1], leaves)
    model, optimizer, train_metrics, eval_metrics = nnx.merge(graph[0], state)
    _, (logits, losses) = _loss(model, batch, padding)
    eval_metrics.update(values=losses, logits=logits, labels=batch["label"], mask=batch["mask"])
    return _leaves(graph, nnx.state((model, optimizer, train_metrics, eval_metrics)))
