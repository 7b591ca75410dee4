"""The gradient of a training loss, kept within float32's range so that gradient clipping can do its job.

A recurrent network's gradient can exceed float32's largest number while its loss and weights are modest (the
GRU on `nightmare`: 4-7e38 in float64, docs/leaderboard.md). And a global norm squares the gradient, so from a
norm of about 1.8e19 on the norm is infinite and optax's clipping turns the step into zeros or NaN. Clipping
only needs such a gradient's direction: recomputed from a scaled-down loss (backpropagation is linear in the
loss's scale) and passed on at a norm every later transformation can square.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

RESCALE = 2.0 ** -100
"""The loss's scale when its gradient overflows: a gradient of 7e38 becomes 5.5e8, and one of 1e-3 is still normal."""
BOUND = 1e15
"""The largest global norm passed on; a sum of a few parts' gradients still squares to a finite number."""


def global_norm(tree: Any) -> jax.Array:
    """The global L2 norm of ``tree``'s arrays, finite for any finite tree (NaN if an entry is)."""
    leaves = jax.tree.leaves(tree)
    top = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(x)) for x in leaves])
    scale = jnp.where(top > 0, top, 1.0)  # dividing by the largest entry first: no square overflows
    return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


def bounded_value_and_grad(fun: Callable[..., tuple[jax.Array, Any]]) -> Callable[..., tuple[tuple, Any]]:
    """``jax.value_and_grad(fun, has_aux=True)`` whose gradient has a global norm of at most BOUND: a larger or
    overflowing one comes back as its direction at norm BOUND (NaN stays NaN, for the optimizer to skip)."""
    value_and_grad = jax.value_and_grad(fun, has_aux=True)

    def bounded(params: Any, *args: Any) -> tuple[tuple, Any]:
        value, grads = value_and_grad(params, *args)

        def rescued(_):  # the rare step whose plain norm is not finite: large, overflowing or NaN
            def recomputed(_):  # only an overflowing gradient pays for a second backward pass
                g = jax.grad(lambda p: RESCALE * fun(p, *args)[0])(params)
                norm = global_norm(g)  # the true norm is above float32's range, so far above BOUND
                return jax.tree.map(lambda x: x * (BOUND / norm).astype(x.dtype), g)

            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
            g = jax.lax.cond(finite, lambda _: grads, recomputed, None)
            return g, global_norm(g)

        # The common case costs one plain norm (optax's, as clipping computes it).
        norm = optax.tree.norm(grads)
        grads, norm = jax.lax.cond(jnp.isfinite(norm), lambda _: (grads, norm), rescued, None)
        scale = jnp.where(norm > BOUND, BOUND / norm, 1.0)
        return value, jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)

    return bounded
