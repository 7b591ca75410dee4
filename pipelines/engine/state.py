"""What a train step reads and writes, and the step itself as a pure function over plain pytrees.

The shape is the one of Flax's NNX examples and nanodo: the model is split once into a static graph and its
parameters (a plain dict of arrays); :func:`train_step` computes the loss, its gradient, the optimizer update
and the running metrics. How it is compiled and run (one jitted program, or the CPU gradient threads) is
:mod:`pipelines.engine.step`'s choice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pipelines.engine.sharding import Sharding, local_value

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


def init_state(model: nnx.Module, tx: optax.GradientTransformation, padding: str,
               sharding: Sharding) -> tuple[SplitModel, TrainState]:
    """(static model, fresh state) of ``model`` and ``tx``, replicated over the mesh."""
    split, params = SplitModel.of(model, padding)
    state = TrainState(params, tx.init(params), Metrics.zeros())
    return split, sharding.replicate(state)


def reset_metrics(state: TrainState, sharding: Sharding) -> TrainState:
    """``state`` with the running metrics zeroed."""
    return state._replace(metrics=sharding.replicate(Metrics.zeros()))
