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

from pipelines.engine.gradient import bounded_value_and_grad
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
    """What a step reads and writes: the model's parameters, the optimizer's state and the running metrics;
    with state passing, also ``carry``: the final states of the last batch's sequences, which the next batch's
    sequences start from (not checkpointed: a resumed run starts its carry from zeros again)."""

    params: dict
    opt_state: Any
    metrics: Metrics
    carry: jax.Array | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class SplitModel:
    """A model's static part for jitted functions: ``split(params, batch)`` gives its logits."""

    graphdef: nnx.GraphDef
    rest: dict  # state that is not a trainable nnx.Param (none in the built-in models); constant in training
    padding: str
    regularizer: float = 0.0
    """Weight of the model's own regulariser in the training loss (``model.regularizer``: Pascanu's Omega)."""

    @classmethod
    def of(cls, model: nnx.Module, padding: str, regularizer: float = 0.0) -> tuple[SplitModel, dict]:
        """(static part, parameters as a plain dict) of ``model``."""
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return cls(graphdef, nnx.to_pure_dict(rest), padding, regularizer), nnx.to_pure_dict(params)

    def merge(self, params: dict) -> nnx.Module:
        """The model object holding ``params``."""
        return nnx.merge(self.graphdef, params, self.rest)

    def __call__(self, params: dict, batch: Batch) -> jax.Array:
        return self.merge(params)(batch["tokens"], batch["lengths"], self.padding)


def loss_fn(params: dict, model: SplitModel, batch: Batch) -> tuple[jax.Array, tuple]:
    """Mean softmax cross-entropy of the batch (plus the model's weighted regulariser), with (logits,
    per-example losses, final states or None).

    With ``batch["initial_state"]`` the sequences start from those states (a noisy or a passed state), and
    their final states come back for the next batch."""
    final = None
    if "initial_state" in batch:
        logits, final = model.merge(params).forward_state(batch["tokens"], batch["lengths"], model.padding,
                                                          batch["initial_state"])
    else:
        logits = model(params, batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    loss = losses.mean()
    if model.regularizer:
        loss = loss + model.regularizer * model.merge(params).regularizer(batch["tokens"], batch["lengths"],
                                                                           model.padding, batch["label"])
    return loss, (logits, losses, final)


def apply_gradients(tx: optax.GradientTransformation, state: TrainState, grads: dict, losses: jax.Array,
                    logits: jax.Array, labels: jax.Array) -> TrainState:
    """The state after the optimizer's update with ``grads`` and the batch's metrics."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.metrics.add(losses, logits, labels),
                      state.carry)


def train_step(model: SplitModel, tx: optax.GradientTransformation, state: TrainState,
               batch: Batch) -> tuple[TrainState, jax.Array]:
    """One optimizer step on ``batch``: the new state and the batch's mean loss.

    With a carry (state passing), the batch's sequences start from the carried states, which no gradient
    flows back into (Buitrago Ruiz & Gu 2025), and their final states are the next carry."""
    if state.carry is not None:
        batch = {**batch, "initial_state": jax.lax.stop_gradient(state.carry)}
    (loss, (logits, losses, final)), grads = bounded_value_and_grad(loss_fn)(state.params, model, batch)
    new = apply_gradients(tx, state, grads, losses, logits, batch["label"])
    return (new if state.carry is None else new._replace(carry=final)), loss


def init_state(model: nnx.Module, tx: optax.GradientTransformation, padding: str, sharding: Sharding, *,
               regularizer: float = 0.0, carry: jax.Array | None = None) -> tuple[SplitModel, TrainState]:
    """(static model, fresh state) of ``model`` and ``tx``, replicated over the mesh (``carry``: the states the
    first batch starts from, for state passing)."""
    split, params = SplitModel.of(model, padding, regularizer)
    state = TrainState(params, tx.init(params), Metrics.zeros(), carry)
    return split, sharding.replicate(state)


def reset_metrics(state: TrainState, sharding: Sharding) -> TrainState:
    """``state`` with the running metrics zeroed."""
    return state._replace(metrics=sharding.replicate(Metrics.zeros()))
