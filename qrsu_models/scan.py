"""The diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (real or complex) over time, from ``h_{-1} = 0``.

Every linear-recurrence family of the package (LRU, minGRU, minLSTM, Mamba) computes this recurrence, time
axis first: ``b`` is a [T, ...] array, ``a`` has its shape or, time-invariant (the LRU's lambda), ``b.shape[1:]``,
and the result is every state ``h`` [T, ...].

Two ways to compute it, the same function:

* :func:`sequential`: one ``lax.scan`` step per time step (T steps, O(T) work): the simple version;
* :func:`parallel`: ``lax.associative_scan`` over the pairs (a, b) with the composition
  ``(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)``: O(log T) depth, O(T log T)-ish work, for accelerators.

* :func:`sequential_adjoint`: the sequential scan with a hand-written backward pass (the adjoint recurrence
  ``g_t = dh_t + a_{t+1} g_{t+1}`` is one reverse scan of the same kind; ``da_t = g_t h_{t-1}``, ``db_t = g_t``
  in bulk), where autodiff of ``lax.scan`` stacks residuals inside the loop.

``method="auto"`` (:func:`resolve`) picks the sequential scan (its adjoint form) on CPU and the parallel one on
a GPU or TPU.
Measured on this 2-core XLA:CPU machine (``python benchmarks/linear_scan.py``, forward plus backward, ratio
parallel / sequential of side-by-side timings): B=32, T=501, H=128 real 3.6x (23 vs 83 ms), complex 3.9x;
B=32, T=1001, H=128 real 2.7x, complex 3.2x; the parallel scan's first call (compilation) 6-9 s vs 0.4-0.7 s
(REFERENCE.md measured 104 ms vs 23-28 ms, ~4x, for the first case). On CPU
every op of a loop body runs as one cheap kernel, while the parallel scan's O(log T) levels each touch the
whole [T, ...] array; on an accelerator the sequential loop pays a kernel launch per op and step instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

METHODS: tuple[str, ...] = ("auto", "sequential", "adjoint", "parallel")
"""How to compute the recurrence: 'auto' (per platform, :func:`resolve`), 'sequential', 'adjoint' (sequential,
hand-written backward pass: :func:`sequential_adjoint`) or 'parallel'."""


def check_method(method: object) -> str:
    """Returns ``method`` if it names a way to scan; raises ValueError listing the valid ones."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown scan {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def sequential(a: jax.Array, b: jax.Array) -> jax.Array:
    """Every state h [T, ...] of h_t = a_t h_{t-1} + b_t from h_{-1} = 0, one time step per loop iteration."""
    if a.ndim < b.ndim:  # time-invariant a: nothing to slice per step
        return lax.scan(lambda h, b_t: (a * h + b_t,) * 2, jnp.zeros_like(b[0]), b)[1]

    def step(h, ab):
        a_t, b_t = ab
        h = a_t * h + b_t
        return h, h

    _, hs = lax.scan(step, jnp.zeros_like(b[0]), (a, b))
    return hs


@jax.custom_vjp
def sequential_adjoint(a: jax.Array, b: jax.Array) -> jax.Array:
    """:func:`sequential` with a hand-written backward pass: the adjoint recurrence, itself one reverse scan."""
    return sequential(a, b)


def _reverse(a: jax.Array, b: jax.Array) -> jax.Array:
    # g_t = a_t g_{t+1} + b_t from g_T = 0, t from T-1 down to 0 (a time-invariant if it has no time axis).
    if a.ndim < b.ndim:
        return lax.scan(lambda g, b_t: (a * g + b_t,) * 2, jnp.zeros_like(b[0]), b, reverse=True)[1]

    def step(g, ab):
        a_t, b_t = ab
        g = a_t * g + b_t
        return g, g

    return lax.scan(step, jnp.zeros_like(b[0]), (a, b), reverse=True)[1]


def _adjoint_fwd(a, b):
    h = sequential(a, b)
    return h, (a, h)


def _adjoint_bwd(res, dh):
    # h_t = a_t h_{t-1} + b_t, so the cotangent g_t of h_t (through every later state) is
    # g_t = dh_t + a_{t+1} g_{t+1}; then db_t = g_t and da_t = g_t h_{t-1}, in bulk outside the loop.
    a, h = res
    zero = jnp.zeros_like(h[:1])
    invariant = a.ndim < h.ndim
    g = _reverse(a if invariant else jnp.concatenate([a[1:], zero]), dh)
    da = g * jnp.concatenate([zero, h[:-1]])
    return (da.sum(axis=0) if invariant else da), g


sequential_adjoint.defvjp(_adjoint_fwd, _adjoint_bwd)


def _compose(earlier, later):
    # Applying (a1, b1) then (a2, b2) to h: a2 (a1 h + b1) + b2.
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def parallel(a: jax.Array, b: jax.Array) -> jax.Array:
    """Every state h [T, ...] of h_t = a_t h_{t-1} + b_t from h_{-1} = 0, by an associative (parallel) scan."""
    return lax.associative_scan(_compose, (jnp.broadcast_to(a, b.shape), b), axis=0)[1]


def resolve(method: str) -> str:
    """'sequential' or 'parallel': ``method`` itself, or for 'auto' the one measured faster on this platform."""
    check_method(method)
    if method != "auto":
        return method
    # benchmarks/linear_scan.py: on XLA:CPU a sequential scan ran 2.7-3.9x faster than the parallel one, and
    # the hand-written backward pass faster still at larger batches.
    return "adjoint" if jax.default_backend() == "cpu" else "parallel"


def linear_scan(a: jax.Array, b: jax.Array, method: str = "auto") -> jax.Array:
    """Every state h [T, ...] of h_t = a_t h_{t-1} + b_t from h_{-1} = 0, computed by ``method`` (METHODS)."""
    if a.shape != b.shape and a.shape != b.shape[1:]:
        raise ValueError(f"a must have b's shape [T, ...] or, time-invariant, b.shape[1:]; got {a.shape} and {b.shape}")
    return {"sequential": sequential, "adjoint": sequential_adjoint, "parallel": parallel}[resolve(method)](a, b)
