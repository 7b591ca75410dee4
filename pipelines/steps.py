"""The train step: one jitted function from (state, batch) to (new state, loss), over plain pytrees.

The shape is the one of Flax's NNX examples and nanodo: the model is split once into a static graph and its
parameters (a plain dict of arrays); the step computes the loss, its gradient, the optimizer update and the
running metrics, and is compiled with ``jax.jit(step, in_shardings, out_shardings, donate_argnums)``, the
batch sharded over the mesh's ``data`` axis and the state replicated. On one CPU device a measured faster
strategy, :class:`pipelines.threaded_step.ThreadedTrainStep`, computes the same update with each batch's
gradient split over threads; :func:`make_train_step` picks it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pipelines.config import ACCELERATOR_UNROLL, TrainConfig
from pipelines.sharding import Sharding, local_value
from qrsu_data import catalog
from qrsu_models import registry

Batch = dict[str, jax.Array]


class Metrics(NamedTuple):
    """Running sums of the train loss and accuracy since the last reset (device scalars)."""

    loss_sum: jax.Array
    correct: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls) -> Metrics:
        """No example seen."""
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def add(self, losses: jax.Array, logits: jax.Array, labels: jax.Array) -> Metrics:
        """These sums plus a batch's per-example losses and predictions."""
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels, dtype=jnp.int32)
        return Metrics(self.loss_sum + losses.sum(), self.correct + correct, self.count + losses.shape[0])

    def compute(self) -> dict[str, float]:
        """Mean loss and accuracy, on the host (NaN before any example)."""
        count = int(local_value(self.count))
        if not count:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": float(local_value(self.loss_sum)) / count,
                "accuracy": int(local_value(self.correct)) / count}


class TrainState(NamedTuple):
    """What a step reads and writes: the model's parameters, the optimizer's state and the running metrics."""

    params: dict
    opt_state: Any
    metrics: Metrics


@dataclasses.dataclass(frozen=True, eq=False)
class SplitModel:
    """A model's static part for jitted functions: ``split(params, batch)`` gives its logits."""

    graphdef: nnx.GraphDef
    rest: dict  # state that is not a trainable nnx.Param (none in the built-in models); constant in training
    padding: str

    @classmethod
    def of(cls, model: nnx.Module, padding: str) -> tuple[SplitModel, dict]:
        """(static part, parameters as a plain dict) of ``model``."""
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return cls(graphdef, nnx.to_pure_dict(rest), padding), nnx.to_pure_dict(params)

    def merge(self, params: dict) -> nnx.Module:
        """The model object holding ``params``."""
        return nnx.merge(self.graphdef, params, self.rest)

    def __call__(self, params: dict, batch: Batch) -> jax.Array:
        return self.merge(params)(batch["tokens"], batch["lengths"], self.padding)


def loss_fn(params: dict, model: SplitModel, batch: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Mean softmax cross-entropy of the batch, with (logits, per-example losses)."""
    logits = model(params, batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return losses.mean(), (logits, losses)


def apply_gradients(tx: optax.GradientTransformation, state: TrainState, grads: dict, losses: jax.Array,
                    logits: jax.Array, labels: jax.Array) -> TrainState:
    """The state after the optimizer's update with ``grads`` and the batch's metrics."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.metrics.add(losses, logits, labels))


def train_step(model: SplitModel, tx: optax.GradientTransformation, state: TrainState,
               batch: Batch) -> tuple[TrainState, jax.Array]:
    """One optimizer step on ``batch``: the new state and the batch's mean loss."""
    (loss, (logits, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, model, batch)
    return apply_gradients(tx, state, grads, losses, logits, batch["label"]), loss


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


def make_train_step(config: TrainConfig, model: SplitModel, tx: optax.GradientTransformation,
                    sharding: Sharding) -> TrainStep:
    """The step strategy for this run: gradient threads on one CPU device where they pay, else the jitted step."""
    from pipelines import threaded_step

    threads = threaded_step.grad_threads(config, sharding)
    if threads > 1:
        return threaded_step.ThreadedTrainStep(model, tx, threads, config.batch_size)
    return TrainStep(model, tx, sharding)


def unroll(config: TrainConfig) -> int:
    """Time steps per loop iteration of the model's recurrence: ``config.unroll``, or 0 resolved for this device."""
    if config.unroll:
        return config.unroll
    # XLA:CPU runs a loop body op by op either way, and unrolling measured slower there; on a GPU every
    # iteration pays kernel launches and loop bookkeeping, so fewer, longer iterations pay.
    return 1 if jax.devices()[0].platform == "cpu" else ACCELERATOR_UNROLL


def model_options(config: TrainConfig) -> dict[str, Any]:
    """The constructor options of the configured model, the loop unroll resolved for this device."""
    options = config.options()
    if "unroll" in registry.get(config.model).options():
        options.setdefault("unroll", unroll(config))
    return options


def create_model(config: TrainConfig) -> nnx.Module:
    """The configured model, initialised from ``config.seed``."""
    return registry.get(config.model).build(num_classes=config.num_classes,
                                            max_length=catalog.max_length(config.difficulty),
                                            seed=config.seed, options=model_options(config))


def create_tx(config: TrainConfig) -> optax.GradientTransformation:
    """The configured optimizer, with global-norm gradient clipping when ``clip_norm`` > 0."""
    tx = optax.adam(config.lr)
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), tx) if config.clip_norm > 0 else tx


def init_state(model: nnx.Module, tx: optax.GradientTransformation, config: TrainConfig,
               sharding: Sharding) -> tuple[SplitModel, TrainState]:
    """(static model, fresh state) of ``model`` and ``tx``, replicated over the mesh."""
    split, params = SplitModel.of(model, config.padding)
    state = TrainState(params, tx.init(params), Metrics.zeros())
    return split, sharding.replicate(state)


def reset_metrics(state: TrainState, sharding: Sharding) -> TrainState:
    """``state`` with the running metrics zeroed."""
    return state._replace(metrics=sharding.replicate(Metrics.zeros()))
