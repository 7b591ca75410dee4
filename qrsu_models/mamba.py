"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv:2312.00752).

One Mamba block (the paper's Figure 3), at model width H and inner width E*H (expansion E = 2):

    [x | z] = in_proj(u)                      2EH outputs, no bias
    x = SiLU(causal depthwise conv(x))        kernel 4, per channel, with bias
    Delta_t = softplus(W_up (W_down x_t) + b) per channel (W_down to rank ceil(H/16), as the paper's code)
    B_t, C_t = linear in x_t                  [N] each, shared by the channels
    h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t,    y_t = C_t h_t + D x_t    per channel d, state N
    out = out_proj(y * SiLU(z))

``A = -exp(A_log)`` diagonal, real, negative, ``A_n = -(n+1)`` at init; ``b`` set so that Delta starts
log-uniform in [0.001, 0.1]; ``D = 1``. Blocks are pre-norm residual, x + Mamba(RMSNorm(x)), stacked; the
classifier reads the last real token (:class:`stack.StackClassifier`).

The state is [E*H, N] per sequence: the recurrence is :func:`qrsu_models.scan.linear_scan` with
``a_t = exp(Delta_t A)`` and ``b_t = Delta_t B_t x_t`` over [T, B, E*H, N]. Padding is exact: x is masked to 0
at padded steps before the conv (a causal conv over left padding must see zeros, as over the zero history of
a sequence that starts there) and again after it (its bias makes SiLU(conv) nonzero there), so b_t = 0.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_data import task
from qrsu_models import stack
from qrsu_models.scan import METHODS, linear_scan, resolve


def dt_bias_init(key: jax.Array, channels: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> jax.Array:
    """Biases b [channels] with softplus(b) log-uniform in [dt_min, dt_max] (the paper's Delta init)."""
    dt = jnp.exp(jax.random.uniform(key, (channels,)) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    # The inverse of softplus: b = dt + log(1 - exp(-dt)).
    return dt + jnp.log(-jnp.expm1(-dt))


def causal_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Depthwise causal convolution over time: x [T, B, C], kernel [K, C] (last row at lag 0) -> [T, B, C]."""
    width = kernel.shape[0]
    padded = jnp.pad(x, ((width - 1, 0), (0, 0), (0, 0)))  # zeros before the first step
    steps = x.shape[0]
    return bias + sum(padded[k:k + steps] * kernel[k] for k in range(width))


def selective_scan(dt: jax.Array, x: jax.Array, b: jax.Array, c: jax.Array, a: jax.Array,
                   method: str = "auto", last: bool = False) -> jax.Array:
    """y [T, B, D] of h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t h_t per channel, from h_{-1} = 0.

    dt, x [T, B, D]; b, c [T, B, N] (with ``last``, c may be C_{T-1} alone, [B, N]); a [D, N]. ``last``: y_{T-1}
    [B, D] only. The simple form materialises the [T, B, D, N] coefficients and calls
    :func:`qrsu_models.scan.linear_scan`; ``method`` (SCANS) picks it or a faster form: 'fused'
    (:func:`fused_selective_scan`) or 'fused-adjoint' (:func:`adjoint_selective_scan`, CPU's 'auto').
    """
    method = resolve_scan(method)
    if last and c.ndim == 3:
        c = c[-1]
    if method == "fused":
        return fused_selective_scan(dt, x, b, c, a, last)
    if method == "fused-adjoint":
        return adjoint_selective_scan(dt, x, b, c, a, last)
    decay = jnp.exp(dt[..., None] * a)  # [T, B, D, N]
    drive = (dt * x)[..., None] * b[..., None, :]
    h = linear_scan(decay, drive, method)
    return jnp.einsum("bdn,bn->bd", h[-1], c) if last else jnp.einsum("tbdn,tbn->tbd", h, c)


def fused_selective_scan(dt: jax.Array, x: jax.Array, b: jax.Array, c: jax.Array, a: jax.Array,
                         last: bool = False) -> jax.Array:
    """:func:`selective_scan` with the coefficients and the read-out formed inside one sequential loop."""
    # Each step builds its own [B, D, N] coefficients from [B, D] and [B, N] inputs and reads out y_t, so no
    # [T, B, D, N] array exists in the forward pass; jax.checkpoint makes the backward pass recompute them
    # from the carried state instead of storing them. Measured at `hard`, batch 32, forward + backward of the
    # whole model: 2.0x faster than the simple form (120 vs 246 ms), and 1.3x faster than without checkpoint.
    @jax.checkpoint
    def step(h, inputs):
        dt_t, x_t, b_t, *c_t = inputs
        h = jnp.exp(dt_t[..., None] * a) * h + (dt_t * x_t)[..., None] * b_t[..., None, :]
        return h, jnp.einsum("bdn,bn->bd", h, c_t[0]) if c_t else None

    h0 = jnp.zeros((*x.shape[1:], a.shape[-1]), x.dtype)
    h, ys = jax.lax.scan(step, h0, (dt, x, b) if last else (dt, x, b, c))
    return jnp.einsum("bdn,bn->bd", h, c) if last else ys  # last: only the final state is read, c is C_{T-1}


# ------------------------------------------------------------------ 'fused-adjoint': hand-written backward passes
#
# Autodiff of the fused loop (above) runs a reverse loop of ~20 kernels per step over [B, D, N] arrays; XLA:CPU
# runs each as its own single-threaded kernel. The forms below compute the same values and gradients with
# hand-written backward passes (jax.custom_vjp), with these measured choices (benchmarks/selective_scan.py;
# 2-core XLA:CPU, D = 96, N = 16, forward + backward, side by side in one process):
#
# * the state is laid out [B, N, D] inside the loops (D, the widest axis, innermost): the forward loop alone
#   ran 2.4x faster than in [B, D, N] (13.9 vs 32.0 ms at T=111, B=128);
# * sums over D are taken as a vertical sum of 16-wide blocks, then across the block: XLA:CPU's reduction of
#   the innermost axis is not vectorised (1.5x on the whole backward pass); two sums over one axis are one
#   variadic reduce (one kernel instead of two);
# * the batch is cut into tiles of TILE rows, each scanned on its own (lax.map): one step's [B, N, D] arrays then
#   stay in the core's 1 MB L2 cache (B=128: 786 KB per array); 1.4x (full outputs) and 1.5x (last step) at
#   B=128 against the whole batch per step;
# * with ``last`` (the classifier reads only the last step), the closed form below replaces the recurrence.


def _split_sum(v: jax.Array) -> jax.Array:
    """v summed over its last axis, as a vertical sum of 16-wide blocks and then across the block."""
    if v.shape[-1] % 16:
        return v.sum(-1)
    return v.reshape(*v.shape[:-1], v.shape[-1] // 16, 16).sum(-2).sum(-1)


def _sum2(v: jax.Array, w: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(v.sum(axis), w.sum(axis)) as one variadic reduction."""
    zero = jnp.zeros((), v.dtype)
    return jax.lax.reduce((v, w), (zero, zero), lambda p, q: (p[0] + q[0], p[1] + q[1]), (axis,))


TILE = 16
"""Rows of the batch scanned together by 'fused-adjoint' (a tile's [TILE, N, D] state fits a core's L2 cache)."""

CHUNK = 16
"""Steps per recomputed chunk of the full-output 'fused-adjoint' backward pass (its stored states: one per chunk)."""


def _tiled(fn, rows: int, *arrays: tuple[jax.Array, int]) -> jax.Array:
    """fn applied to batch tiles of TILE rows (zero rows padded; each array with its batch axis), stacked first."""
    pad = -rows % TILE

    def split(v, axis):
        v = jnp.pad(v, [(0, pad) if i == axis else (0, 0) for i in range(v.ndim)])
        return jnp.moveaxis(v.reshape(*v.shape[:axis], -1, TILE, *v.shape[axis + 1:]), axis, 0)

    return jax.lax.map(lambda t: fn(*t), tuple(split(v, axis) for v, axis in arrays))


def adjoint_selective_scan(dt: jax.Array, x: jax.Array, b: jax.Array, c: jax.Array, a: jax.Array,
                           last: bool = False) -> jax.Array:
    """:func:`selective_scan` (``last``: c is C_{T-1} [B, N]) with hand-written backward passes, by batch tiles."""
    u = dt * x  # the drive's input; its product rule is left to autodiff
    rows = dt.shape[1]
    if last:
        if rows <= TILE:
            return _last_readout(dt, u, b, c, a)
        ys = _tiled(lambda *t: _last_readout(*t, a), rows, (dt, 1), (u, 1), (b, 1), (c, 0))
        return ys.reshape(-1, ys.shape[-1])[:rows]
    if rows <= TILE:
        return _outputs(dt, u, b, c, a)
    ys = _tiled(lambda *t: _outputs(*t, a), rows, (dt, 1), (u, 1), (b, 1), (c, 1))  # padded rows: u = 0
    return jnp.moveaxis(ys, 0, 1).reshape(ys.shape[1], -1, ys.shape[-1])[:, :rows]


# The last step in closed form. Unrolled, h_{T-1} = sum_t exp(A S_t) dt_t B_t x_t with S_t = dt_{t+1} + ... +
# dt_{T-1} (0 for the last step): each step's term is independent of the others, so the forward pass is one loop
# accumulating the terms (back to front, carrying S), and the backward pass needs no stored or recomputed states:
# with G the cotangent of h_{T-1} (C_{T-1} dy for the read-out), step t's term gives du_t = sum_n G E_t B_t,
# dB_t = sum_d G E_t u_t, dS_t = u_t sum_n A G E_t B_t (E_t = exp(A S_t)) and dA = sum S_t u_t G E_t B_t; dt_s
# gets sum_{t<s} dS_t. Padding stays exact: padded steps come first with u = 0, so their terms are 0 and so are
# their dS. Measured (T=111, B=16, forward + backward of the scan): 4.3 ms against 14.6 ms for autodiff of the
# fused loop's last step, and 10-13 ms for the closed form by chunks of 4-16 steps left to autodiff.


def _closed_forward(dt: jax.Array, u: jax.Array, b: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(h_{T-1} [B, N, D], S [T, B, D]) of the recurrence driven by u_t = dt_t x_t, in closed form."""
    a_nd = a.T  # [N, D]

    def step(carry, inputs):
        h, s = carry  # s: sum of dt over the steps after this one
        dt_t, u_t, b_t = inputs
        h = h + jnp.exp(s[:, None, :] * a_nd) * u_t[:, None, :] * b_t[..., None]
        return (h, s + dt_t), s

    h0 = jnp.zeros((u.shape[1], a.shape[1], u.shape[2]), u.dtype)
    (h, _), s = jax.lax.scan(step, (h0, jnp.zeros_like(dt[0])), (dt, u, b), reverse=True)
    return h, s


def _closed_backward(s: jax.Array, u: jax.Array, b: jax.Array, a: jax.Array, g: jax.Array) -> tuple[jax.Array, ...]:
    """(ddt, du, db, da) of _closed_forward's h_{T-1}, given its cotangent g [B, N, D] and S."""
    a_nd = a.T

    def step(carry, inputs):
        prefix, acc = carry  # prefix: sum of dS over the earlier steps
        s_t, u_t, b_t = inputs
        e = g * jnp.exp(s_t[:, None, :] * a_nd)
        gb = e * b_t[..., None]
        du, gba = _sum2(gb, gb * a_nd, 1)
        db = _split_sum(e * u_t[:, None, :])
        # dA's sum over the batch waits until after the loop: one elementwise update per step, no reduction.
        return (prefix + u_t * gba, acc + gb * (s_t * u_t)[:, None, :]), (prefix, du, db)

    (_, acc), (ddt, du, db) = jax.lax.scan(step, (jnp.zeros_like(s[0]), jnp.zeros_like(g)), (s, u, b))
    return ddt, du, db, acc.sum(0).T


@jax.custom_vjp
def _last_readout(dt: jax.Array, u: jax.Array, b: jax.Array, c: jax.Array, a: jax.Array) -> jax.Array:
    """y_{T-1} [B, D] = C_{T-1} h_{T-1} of the recurrence driven by u_t = dt_t x_t."""
    return _last_readout_forward(dt, u, b, c, a)[0]


def _last_readout_forward(dt, u, b, c, a):
    h, s = _closed_forward(dt, u, b, a)
    return jnp.sum(h * c[..., None], 1), (s, u, b, c, a, h)


def _last_readout_backward(res, dy):
    s, u, b, c, a, h = res
    ddt, du, db, da = _closed_backward(s, u, b, a, c[..., None] * dy[:, None, :])
    return ddt, du, db, _split_sum(h * dy[:, None, :]), da


_last_readout.defvjp(_last_readout_forward, _last_readout_backward)


def ssm_inputs(params: tuple[jax.Array, ...], x: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
    """(x', Delta, the projection's other columns) [T, B, ...] from a mixer's x half [T, B, E]; x' = 0 at padding.

    ``params``: (conv kernel [K, E], conv bias [E], x_proj's Delta-rank and further columns [E, R + M], dt_proj's
    kernel [R, E] and bias [E]).
    """
    kernel, bias, w, dt_w, dt_b = params
    # x is masked before the conv (a causal conv over left padding must see zeros) and after it (its bias).
    x = jnp.where(mask, jax.nn.silu(causal_conv(jnp.where(mask, x, 0.0), kernel, bias)), 0.0)
    dt_low, rest = jnp.split(stack.dense(lambda v: v @ w, x), [dt_w.shape[0]], axis=-1)
    return x, jax.nn.softplus(stack.dense(lambda v: v @ dt_w, dt_low) + dt_b), rest


# The classifier's last block ('fused-adjoint', last step only): the SSM's position-wise inputs and the closed form
# in one custom VJP per batch tile, whose backward pass recomputes the inputs (one tile's [T, TILE, E] arrays stay
# in cache) instead of storing them; autodiff of the same (benchmarks/selective_scan.py, whole model, T=111,
# B=128) stores a dozen [T, B, E] residuals and ran 1.6x slower.


@jax.custom_vjp
def _mixer_state(params: tuple[jax.Array, ...], a: jax.Array, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
    """(h_{T-1} [B, N, E], x'_{T-1} [B, E]) of the SSM over ssm_inputs(params, x, mask)."""
    return _mixer_state_forward(params, a, x, mask)[0]


def _mixer_state_forward(params, a, x, mask):
    xs, dt, b = ssm_inputs(params, x, mask)
    h, s = _closed_forward(dt, dt * xs, b, a)
    return (h, xs[-1]), (params, a, x, mask, s)


def _mixer_state_backward(res, cotangents):
    params, a, x, mask, s = res
    g, dxs_last = cotangents
    (xs, dt, b), inputs_vjp = jax.vjp(lambda p, v: ssm_inputs(p, v, mask), params, x)
    ddt, du, db, da = _closed_backward(s, dt * xs, b, a, g)
    dparams, dx = inputs_vjp(((du * dt).at[-1].add(dxs_last), ddt + du * xs, db))
    return dparams, da, dx, None


_mixer_state.defvjp(_mixer_state_forward, _mixer_state_backward)


def mixer_last_state(params: tuple[jax.Array, ...], a: jax.Array, x: jax.Array,
                     mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(h_{T-1} [B, N, E], x'_{T-1} [B, E]) of the SSM over ssm_inputs(params, x, mask), by batch tiles."""
    rows = x.shape[1]
    if rows <= TILE:
        return _mixer_state(params, a, x, mask)
    h, xs = _tiled(lambda v, m: _mixer_state(params, a, v, m), rows, (x, 1), (mask, 1))  # padded rows: mask False
    return h.reshape(-1, *h.shape[2:])[:rows], xs.reshape(-1, xs.shape[-1])[:rows]


# Every step's output: the forward loop stores one state per CHUNK steps; the backward pass recomputes a chunk's
# states and decays into buffers updated in place (a fresh stacked output per chunk measured ~30% slower: its
# zero-initialisation and copy), then runs the adjoint recurrence g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} back
# through the chunk, with dA_t, dB_t, dC_t, du_t and ddt_t from g_t and h_t (h_t - u_t B_t = exp(dt_t A) h_{t-1}).
# Measured (T=111, B=16): 6.7 ms against 18.6 ms for autodiff of the fused loop.


@jax.custom_vjp
def _outputs(dt: jax.Array, u: jax.Array, b: jax.Array, c: jax.Array, a: jax.Array) -> jax.Array:
    """Every y_t [T, B, D] of the recurrence driven by u_t = dt_t x_t."""
    return _outputs_forward(dt, u, b, c, a)[0]


def _chunked(v: jax.Array) -> jax.Array:
    """[T, ...] -> [chunks, CHUNK, ...], zero steps first (dt = 0, u = 0: the state stays 0 through them)."""
    v = jnp.pad(v, [(-v.shape[0] % CHUNK, 0)] + [(0, 0)] * (v.ndim - 1))
    return v.reshape(-1, CHUNK, *v.shape[1:])


def _outputs_forward(dt, u, b, c, a):
    a_nd = a.T

    def step(h, inputs):
        dt_t, u_t, b_t, c_t = inputs
        h = jnp.exp(dt_t[:, None, :] * a_nd) * h + u_t[:, None, :] * b_t[..., None]
        return h, jnp.sum(h * c_t[..., None], 1)

    def chunk(h, inputs):
        h_end, y = jax.lax.scan(step, h, inputs)
        return h_end, (y, h)

    h0 = jnp.zeros((u.shape[1], a.shape[1], u.shape[2]), u.dtype)
    _, (y, starts) = jax.lax.scan(chunk, h0, tuple(_chunked(v) for v in (dt, u, b, c)))
    return y.reshape(-1, *y.shape[2:])[-dt.shape[0]:], (dt, u, b, c, a, starts)


def _outputs_backward(res, dy):
    dt, u, b, c, a, starts = res
    steps = dt.shape[0]
    a_nd = a.T
    inputs = tuple(_chunked(v) for v in (dt, u, b, c, dy))
    chunks = starts.shape[0]
    index = functools.partial(jax.lax.dynamic_index_in_dim, axis=0, keepdims=False)
    update = functools.partial(jax.lax.dynamic_update_index_in_dim, axis=0)

    def chunk(i, carry):
        j = chunks - 1 - i
        g_next, acc, states, decays, outs = carry
        dt_k, u_k, b_k, c_k, dy_k = (index(v, j) for v in inputs)

        def recompute(k, carry):
            h, states, decays = carry
            decay = jnp.exp(index(dt_k, k)[:, None, :] * a_nd)
            h = decay * h + index(u_k, k)[:, None, :] * index(b_k, k)[..., None]
            return h, update(states, h, k), update(decays, decay, k)

        _, states, decays = jax.lax.fori_loop(0, CHUNK, recompute, (index(starts, j), states, decays))

        def back(i, carry):
            k = CHUNK - 1 - i
            g_next, acc, outs = carry
            dt_t, u_t, b_t, c_t, dy_t = (index(v, k) for v in (dt_k, u_k, b_k, c_k, dy_k))
            h = index(states, k)
            g = c_t[..., None] * dy_t[:, None, :] + g_next
            q = g * (h - u_t[:, None, :] * b_t[..., None])  # g_t exp(dt_t A) h_{t-1}
            du, ds = _sum2(g * b_t[..., None], q * a_nd, 1)
            db = _split_sum(g * u_t[:, None, :])
            dc = _split_sum(h * dy_t[:, None, :])
            t = j * CHUNK + k
            outs = tuple(update(o, v, t) for o, v in zip(outs, (ds, du, db, dc)))
            return index(decays, k) * g, acc + q * dt_t[:, None, :], outs

        g_next, acc, outs = jax.lax.fori_loop(0, CHUNK, back, (g_next, acc, outs))
        return g_next, acc, states, decays, outs

    zero = jnp.zeros_like(starts[0])
    buffer = jnp.zeros((CHUNK, *zero.shape), zero.dtype)
    outs = tuple(jnp.zeros((chunks * CHUNK, *v.shape[1:]), v.dtype) for v in (dt, u, b, c))
    _, acc, _, _, (ddt, du, db, dc) = jax.lax.fori_loop(0, chunks, chunk, (zero, zero, buffer, buffer, outs))
    return ddt[-steps:], du[-steps:], db[-steps:], dc[-steps:], acc.sum(0).T


_outputs.defvjp(_outputs_forward, _outputs_backward)


SCANS: tuple[str, ...] = (*METHODS, "fused", "fused-adjoint")
"""Mamba's ``scan`` option: a method of :mod:`qrsu_models.scan` over the materialised coefficients, 'fused'
(:func:`fused_selective_scan`) or 'fused-adjoint' (:func:`adjoint_selective_scan`, and the classifier's last
block through :func:`mixer_last_state`); 'auto' is 'fused-adjoint' on CPU and 'parallel' on a GPU or TPU."""


def resolve_scan(method: str) -> str:
    """The scan ``method`` names (SCANS), 'auto' resolved for this platform."""
    if method not in SCANS:
        raise ValueError(f"unknown scan {method!r}; choose one of: {', '.join(SCANS)}")
    if method != "auto":
        return method
    # benchmarks/selective_scan.py, whole model, forward + backward, against the fused loop's autodiff:
    # CPU_MEASUREMENT. On a GPU or TPU the parallel scan's few large kernels win, as for the other families.
    return "fused-adjoint" if resolve(method) != "parallel" else "parallel"


class Mamba(nnx.Module):
    """One Mamba mixer: inputs [T, B, H] -> outputs [T, B, H] through a selective SSM of ``state`` per channel."""

    def __init__(self, hidden: int, *, state: int, expand: int, conv: int, scan_method: str, rngs: nnx.Rngs):
        inner = expand * hidden
        self.inner = inner
        self.state = state
        self.rank = math.ceil(hidden / 16)
        self.in_proj = nnx.Linear(hidden, 2 * inner, use_bias=False, rngs=rngs)
        # nn.Conv1d's default init (uniform +-1/sqrt(fan_in), fan_in = kernel width for a depthwise conv).
        bound = 1.0 / math.sqrt(conv)
        self.conv_kernel = nnx.Param(jax.random.uniform(rngs.params(), (conv, inner), minval=-bound, maxval=bound))
        self.conv_bias = nnx.Param(jax.random.uniform(rngs.params(), (inner,), minval=-bound, maxval=bound))
        self.x_proj = nnx.Linear(inner, self.rank + 2 * state, use_bias=False, rngs=rngs)
        dt_std = self.rank ** -0.5
        self.dt_proj = nnx.Linear(self.rank, inner, rngs=rngs,
                                  kernel_init=jax.nn.initializers.uniform(2 * dt_std),
                                  bias_init=lambda key, shape, dtype: dt_bias_init(key, shape[0]).astype(dtype))
        self.a_log = nnx.Param(jnp.log(jnp.broadcast_to(jnp.arange(1, state + 1, dtype=jnp.float32), (inner, state))))
        self.d = nnx.Param(jnp.ones((inner,), jnp.float32))
        self.out_proj = nnx.Linear(inner, hidden, use_bias=False, rngs=rngs)
        self.scan_method = scan_method

    def __call__(self, u: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """[T, B, H] -> [T, B, H] (``last``: step T-1 only); padded steps (``mask`` False) feed the state nothing."""
        if last:  # z is read at the last step only
            w = self.in_proj.kernel[...]
            return self._mix(stack.dense(lambda v: v @ w[:, :self.inner], u), u[-1] @ w[:, self.inner:], mask, last)
        return self._mix(*jnp.split(stack.dense(self.in_proj, u), 2, axis=-1), mask, last)

    def from_tokens(self, onehot: jax.Array, u_table: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """``self(onehot @ u_table, mask, last)``, the in-projection applied once per token id on the table."""
        table = self.in_proj(u_table)
        if last:
            x = stack.dense(lambda v: v @ table[:, :self.inner], onehot)
            return self._mix(x, onehot[-1] @ table[:, self.inner:], mask, last)
        return self._mix(*jnp.split(stack.dense(lambda v: v @ table, onehot), 2, axis=-1), mask, last)

    def _mix(self, x: jax.Array, z: jax.Array, mask: jax.Array, last: bool) -> jax.Array:
        # x [T, B, E*H]; z likewise, or with ``last`` its last step [B, E*H].
        w = self.x_proj.kernel[...]
        split = self.rank + self.state
        a = -jnp.exp(self.a_log[...])
        params = (self.conv_kernel[...], self.conv_bias[...], w[:, :split] if last else w,
                  self.dt_proj.kernel[...], self.dt_proj.bias[...])
        if last and resolve_scan(self.scan_method) == "fused-adjoint":
            h, x = mixer_last_state(params, a, x, mask)  # [B, N, E*H], [B, E*H]
            y = jnp.einsum("bne,bn->be", h, x @ w[:, split:])
        else:
            x, dt, bc = ssm_inputs(params, x, mask)
            if last:  # C is read at the last step only
                b, c = bc, x[-1] @ w[:, split:]
            else:
                b, c = jnp.split(bc, [self.state], axis=-1)
            y = selective_scan(dt, x, b, c, a, self.scan_method, last)
            if last:
                x = x[-1]
        return stack.dense(self.out_proj, (y + self.d[...] * x) * jax.nn.silu(z))


class PreNormBlock(nnx.Module):
    """x + mixer(RMSNorm(x)): the paper's residual block."""

    def __init__(self, mixer: nnx.Module, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.RMSNorm(hidden, rngs=rngs)
        self.mixer = mixer

    def __call__(self, x: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """[T, B, H] -> [T, B, H] (``last``: step T-1 only, [B, H])."""
        return (x[-1] if last else x) + self.mixer(self.norm(x), mask, last=last)

    def from_tokens(self, onehot: jax.Array, table: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """``self(onehot @ table, mask, last)`` for a first block, the norm run on the table's rows."""
        y = self.mixer.from_tokens(onehot, self.norm(table), mask, last=last)
        return ((onehot[-1] @ table) if last else stack.dense(lambda v: v @ table, onehot)) + y


class MambaClassifier(stack.StackClassifier):
    """Token ids -> embedding -> ``layers`` blocks x + Mamba(RMSNorm(x)) -> RMSNorm -> last token -> Linear."""

    def __init__(self, *, num_classes: int, vocab_size: int = task.VOCAB_SIZE, hidden: int = 64, layers: int = 1,
                 state: int = 16, expand: int = 2, conv: int = 4, scan: str = "auto", rngs: nnx.Rngs):
        for what, value in (("state", state), ("expand", expand), ("conv", conv), ("hidden", hidden)):
            stack.check_positive(what, value)
        if not isinstance(scan, str) or scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; choose one of: {', '.join(SCANS)}")

        def block(r: nnx.Rngs) -> nnx.Module:
            mixer = Mamba(hidden, state=state, expand=expand, conv=conv, scan_method=scan, rngs=r)
            return PreNormBlock(mixer, hidden, rngs=r)

        # Carried step to step: the SSM state [E*H, N] and the conv's last conv-1 inputs [conv-1, E*H].
        super().__init__(block, layers=layers, hidden=hidden, num_classes=num_classes, vocab_size=vocab_size,
                         norm="rms", state_per_layer=expand * hidden * (state + conv - 1), rngs=rngs)
