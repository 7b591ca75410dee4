"""The model and the optimizer a training configuration asks for."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx

from pipelines.engine.config import ACCELERATOR_UNROLL, TrainConfig
from pipelines.engine.sharding import local_value
from qrsu_models import registry


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
    level = config.dataset.level_def
    return registry.get(config.model).build(num_classes=level.num_classes, max_length=level.max_length,
                                            seed=config.seed, options=model_options(config))


NONFINITE_SKIP_LIMIT = 20
"""Consecutive steps with a non-finite gradient that the optimizer skips; the next one is applied (and the run
diverges), so a model that only ever overflows is not silently left untrained."""


def create_tx(config: TrainConfig) -> optax.GradientTransformation:
    """The configured optimizer: Adam (AdamW with weight decay) or plain SGD, a linear warm-up and a cosine decay
    if asked, global-norm gradient clipping when ``clip_norm`` > 0, a step whose gradient is not finite skipped."""
    # A gradient can exceed float32's range while the loss and weights are modest (the GRU on `nightmare`: 4-7e38
    # in float64, docs/leaderboard.md); engine.gradient recomputes such a gradient, and one still not finite is
    # skipped here, as mixed-precision training does. A run that never meets one trains as before, to float
    # rounding (the skip's branch compiles the update a little differently).
    return optax.apply_if_finite(base_tx(config), NONFINITE_SKIP_LIMIT)


def base_tx(config: TrainConfig) -> optax.GradientTransformation:
    """The configured optimizer without the skip of non-finite gradients (the state layout of older checkpoints)."""
    lr = config.lr
    if config.decay_steps:
        lr = optax.cosine_decay_schedule(config.lr, config.decay_steps)
    if config.warmup_steps:
        lr = optax.join_schedules([optax.linear_schedule(0.0, config.lr, config.warmup_steps),
                                   lr if config.decay_steps else optax.constant_schedule(config.lr)],
                                  [config.warmup_steps])
    if config.optimizer == "sgd":
        tx = optax.sgd(lr) if not config.weight_decay else optax.chain(
            optax.add_decayed_weights(config.weight_decay), optax.sgd(lr))
    else:
        tx = optax.adamw(lr, weight_decay=config.weight_decay) if config.weight_decay else optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), tx) if config.clip_norm > 0 else tx


def skipped_updates(opt_state: Any) -> int:
    """Optimizer steps skipped so far because their gradient was not finite (0 for an optimizer without the skip)."""
    if not isinstance(opt_state, optax.ApplyIfFiniteState):
        return 0
    return int(local_value(opt_state.total_notfinite))
