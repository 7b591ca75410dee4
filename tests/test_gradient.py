"""The gradient guard: a gradient beyond float32's range comes back as its direction, at a norm clipping can use."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pipelines.engine.gradient import BOUND, bounded_value_and_grad, global_norm


def loss(params, weights, factors):
    """sum(weights * sin(f0 * (f1 * w))): the value is bounded, the gradient is about f0 * f1.

    The factors are arguments, not constants, so that XLA cannot fold them into one (1e40 is infinite in float32)."""
    x = factors[0] * (factors[1] * params["w"])
    return jnp.sum(weights * jnp.sin(x)) + 0.0 * params["b"], x


def _factors(scale: float):
    return jnp.array([1e20, scale], jnp.float32)


PARAMS = {"w": jnp.array([1e-30, 3e-30, -2e-30], jnp.float32), "b": jnp.float32(0.5)}
WEIGHTS = jnp.array([1.0, 0.5, -0.25], jnp.float32)


def _direction(x):
    """The exact gradient's direction (float64, from the forward's own float32 arguments)."""
    g = np.asarray(WEIGHTS, np.float64) * np.cos(np.asarray(x, np.float64))
    return g / np.linalg.norm(g)


def test_the_safe_norm_matches_optax_and_stays_finite_where_optax_overflows():
    tree = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[12.0]])}
    assert float(global_norm(tree)) == pytest.approx(float(optax.tree.norm(tree)), rel=1e-6)  # 13
    huge = jax.tree.map(lambda x: x * 1e30, tree)
    assert not np.isfinite(float(optax.tree.norm(huge)))
    assert float(global_norm(huge)) == pytest.approx(13e30, rel=1e-6)
    assert float(global_norm({"a": jnp.zeros(3)})) == 0.0
    assert np.isnan(float(global_norm({"a": jnp.array([1.0, jnp.nan])})))


def test_an_ordinary_gradient_is_returned_untouched():
    factors = _factors(1e-20)  # gradient of order 1
    (value, _), plain = jax.jit(jax.value_and_grad(loss, has_aux=True))(PARAMS, WEIGHTS, factors)
    (bvalue, _), bounded = jax.jit(bounded_value_and_grad(loss))(PARAMS, WEIGHTS, factors)
    assert float(bvalue) == float(value)
    jax.tree.map(np.testing.assert_array_equal, bounded, plain)


@pytest.mark.parametrize("scale, overflows", [(1e5, False), (1e20, True)])
def test_a_huge_or_overflowing_gradient_comes_back_as_its_direction_at_the_bound(scale, overflows):
    factors = _factors(scale)  # gradients of ~1e25 (finite, but its square is not) and ~1e40 (beyond float32)
    (value, x), plain = jax.jit(jax.value_and_grad(loss, has_aux=True))(PARAMS, WEIGHTS, factors)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(plain["w"])) != overflows
    assert not np.isfinite(float(optax.tree.norm(plain)))  # what clipping would have divided by
    _, bounded = jax.jit(bounded_value_and_grad(loss))(PARAMS, WEIGHTS, factors)
    assert float(global_norm(bounded)) == pytest.approx(BOUND, rel=1e-5)
    np.testing.assert_allclose(np.asarray(bounded["w"], np.float64) / BOUND, _direction(x), rtol=1e-5, atol=1e-6)
    assert float(bounded["b"]) == 0.0
    # Clipping at 1 now gives the exactly clipped step (the direction at norm 1), not zeros or NaN.
    clipped, _ = optax.clip_by_global_norm(1.0).update(bounded, optax.EmptyState())
    np.testing.assert_allclose(np.asarray(clipped["w"], np.float64), _direction(x), rtol=1e-5, atol=1e-6)


def test_a_nan_gradient_stays_nan_for_the_optimizer_to_skip():
    def nan_loss(params, _):
        return jnp.sum(jnp.sqrt(params["w"] - 1.0)), None  # NaN value and gradient

    _, bounded = jax.jit(bounded_value_and_grad(nan_loss))(PARAMS, WEIGHTS)
    assert np.all(np.isnan(bounded["w"]))
