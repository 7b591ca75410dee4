"""Fast scanned recurrences (LSTM, GRU, the seed's ReLU RNN) over token ids, with hand-written backward passes.

Every cell here maps time-major token ids ``tokens`` [T, B] to the last hidden state [B, H], starting from a
zero state, given an input table ``w_in`` [V, G*H] (the input projection of each token, input bias folded in;
row v equals ``one_hot(v) @ W_ih + b``) and a fused recurrent kernel ``w_hh`` [H, G*H], gates in flax order.

Padding contract: real steps come LAST (pre-padding) and a padded step holds a token id outside ``[0, V)``
(e.g. ``V``). A padded step gets an exactly-zero input, and from a zero state a zero input keeps every cell
here exactly at zero (LSTM: c = 0.5*0 + 0.5*tanh(0) = 0; GRU: h = tanh(0) + 0.5*(0 - 0) = 0; RNN:
relu(tanh(0)) = 0). So no mask is needed inside the loop: the final state is the state after the last real
token, bit for bit, and the padded steps add nothing to any gradient (their h_{t-1} and one-hot row are 0).

Why hand-written backward passes (``jax.custom_vjp``)? Measured on a 2-core XLA:CPU: every op inside a
``while`` body is a separately dispatched, single-threaded kernel (~1 us of overhead each), each per-step
stacked output is a dynamic-update-slice, and every large temporary is fresh memory page-faulted in on every
call (B=256 x T=111 x 4H floats is 29 MB). Autodiff of the scan stacks several intermediates per step and
adds a small dW matmul per step. The backward passes here instead:

* store only the carries (h_{t-1}, c_{t-1}) in the forward loop: 2H floats per step and row;
* in the reverse loop, recompute the step's gates with ONE fused matmul ``[h_{t-1} | onehot_t] @ [W_hh;
  W_in]`` (the RNN needs no recompute: relu(tanh)' follows from h_t itself) and propagate dh/dc through one
  ``dz @ W_hh^T`` matmul;
* accumulate the gradients of W_hh AND of the input table with one ``[h_{t-1} | onehot_t]^T @ dz_t`` matmul
  per step, so the reverse loop stacks nothing.

That is 4 matmuls per step for the LSTM/GRU (2 for the RNN) instead of 3 with stored gates, and no [T, B, G]
buffer anywhere. Measured alternatives, all on this 2-core machine: storing the gates in the forward loop
(plus bulk precompute of the backward's coefficients) was ~even at batch 32 and ~1.4x slower at batch 256;
stacking dz and computing dW as ONE [H+V, T*B] @ [T*B, G] matmul after the loop was within noise (+-15%)
at B=32, T=111 and ~1.3x slower at B=32, T=501 (16 MB of fresh stack per step).

Sigmoids are computed as 0.5*tanh(x/2) + 0.5 on pre-scaled weights (one transcendental per gate; XLA:CPU's
logistic is slower). Loop bodies never slice a dynamically indexed array (XLA:CPU then emits scalar code):
per-step inputs are whole arrays, one per gate, and only values computed inside the step are sliced.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

GATES: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}
"""Gate blocks per cell: ``w_in`` and ``w_hh`` have GATES[cell] * hidden columns (flax's gate order)."""


def _gather_rows(w_in: jax.Array, tokens: jax.Array) -> jax.Array:
    """w_in[tokens] [T, B, G]; ids outside [0, V) (padding) give zero rows."""
    vocab = w_in.shape[0]
    valid = (tokens >= 0) & (tokens < vocab)
    rows = jnp.concatenate([w_in, jnp.zeros((1, w_in.shape[1]), w_in.dtype)], axis=0)
    return rows[jnp.where(valid, tokens, vocab)]


def _augmented(h_prev: jax.Array, tokens: jax.Array, vocab: int) -> tuple[jax.Array, jax.Array]:
    """[h_{t-1} | onehot(token_t)] [T, B, H+V] and its per-step transpose [T, H+V, B], built once in bulk."""
    # jax.nn.one_hot gives an all-zero row for ids outside [0, V), i.e. for padding. The transpose makes the
    # per-step weight-gradient product a plain [H+V, B] @ [B, G] matmul (a transposed operand inside the loop
    # would fall off XLA:CPU's fast matmul path).
    aug = jnp.concatenate([h_prev, jax.nn.one_hot(tokens, vocab, dtype=h_prev.dtype)], axis=-1)
    return aug, jnp.swapaxes(aug, 1, 2)


def _sigmoid_scale(blocks: tuple[float, ...], hidden: int, dtype: jnp.dtype) -> jax.Array:
    """Column scale k: 0.5 on sigmoid-gate blocks, 1 on tanh blocks (sigmoid(x) = 0.5*tanh(x/2) + 0.5)."""
    return jnp.concatenate([jnp.full((hidden,), b, dtype) for b in blocks])


# ----------------------------------------------------------------------------------------------- LSTM

_LSTM_K = (0.5, 0.5, 1.0, 0.5)  # i, f, g, o


def _lstm_forward(tokens, w_in, w_hh, unroll, keep):
    hidden = w_hh.shape[0]
    k = _sigmoid_scale(_LSTM_K, hidden, w_hh.dtype)
    w = w_hh * k
    win = w_in * k
    # One input stream per gate: a step must not slice a dynamically indexed array, nor a value computed
    # from one, or XLA:CPU may fuse it into scalar code (it did for the GRU: 70 us instead of ~5 us a step).
    xs = tuple(_gather_rows(win[:, j * hidden:(j + 1) * hidden], tokens) for j in range(4))

    def step(carry, x):
        c, h = carry
        xi, xf, xg, xo = x
        z = h @ w
        i = 0.5 * jnp.tanh(z[:, :hidden] + xi) + 0.5
        f = 0.5 * jnp.tanh(z[:, hidden:2 * hidden] + xf) + 0.5
        g = jnp.tanh(z[:, 2 * hidden:3 * hidden] + xg)
        o = 0.5 * jnp.tanh(z[:, 3 * hidden:] + xo) + 0.5
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        return (c_new, h_new), ((c, h) if keep else None)

    zeros = jnp.zeros((tokens.shape[1], hidden), w_hh.dtype)
    return lax.scan(step, (zeros, zeros), xs, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lstm_last_hidden(tokens: jax.Array, w_in: jax.Array, w_hh: jax.Array, unroll: int = 1) -> jax.Array:
    """flax-LSTMCell recurrence (gates i, f, g, o) over pre-padded tokens [T, B]; returns h_T [B, H]."""
    return _lstm_forward(tokens, w_in, w_hh, unroll, keep=False)[0][1]


def _lstm_fwd(tokens, w_in, w_hh, unroll):
    (_, h), (c_prev, h_prev) = _lstm_forward(tokens, w_in, w_hh, unroll, keep=True)
    return h, (tokens, c_prev, h_prev, w_in, w_hh)


def _lstm_bwd(unroll, res, dh_last):
    tokens, c_prev, h_prev, w_in, w_hh = res
    hidden = w_hh.shape[0]
    vocab, gates = w_in.shape
    k = _sigmoid_scale(_LSTM_K, hidden, w_hh.dtype)
    w = w_hh * k
    w_aug = jnp.concatenate([w, w_in * k], axis=0)  # [H+V, 4H]: z = [h | onehot] @ w_aug
    w_t = w.T
    aug, aug_t = _augmented(h_prev, tokens, vocab)
    batch = tokens.shape[1]

    def step(carry, xs):
        dh, dc, dw_aug = carry
        a, a_t, cp = xs
        u = jnp.tanh(a @ w_aug)  # recomputed gates (scaled pre-activations)
        ui, uf, ug, uo = (u[:, j * hidden:(j + 1) * hidden] for j in range(4))
        i, f, o = 0.5 * ui + 0.5, 0.5 * uf + 0.5, 0.5 * uo + 0.5
        tc = jnp.tanh(f * cp + i * ug)
        dc = dc + dh * o * (1.0 - tc * tc)
        # Cotangents of the scaled pre-activations: d sigmoid-gate = 0.5 * (1 - u^2), d tanh-gate = 1 - u^2.
        dz = jnp.stack([dc * ug * 0.5 * (1.0 - ui * ui), dc * cp * 0.5 * (1.0 - uf * uf),
                        dc * i * (1.0 - ug * ug), dh * tc * 0.5 * (1.0 - uo * uo)], axis=1).reshape(batch, gates)
        return (dz @ w_t, dc * f, dw_aug + a_t @ dz), None

    init = (dh_last, jnp.zeros_like(dh_last), jnp.zeros_like(w_aug))
    (_, _, dw_aug), _ = lax.scan(step, init, (aug, aug_t, c_prev), reverse=True, unroll=unroll)
    # z was computed with k-scaled weights: chain rule through the scaling.
    return None, dw_aug[hidden:] * k, dw_aug[:hidden] * k


lstm_last_hidden.defvjp(_lstm_fwd, _lstm_bwd)


# ------------------------------------------------------------------------------------------------ GRU

_GRU_K = (0.5, 0.5, 1.0)  # r, z, n


def _gru_forward(tokens, w_in, w_hh, unroll, keep):
    hidden = w_hh.shape[0]
    k = _sigmoid_scale(_GRU_K, hidden, w_hh.dtype)
    w = w_hh * k
    win = w_in * k
    # One input stream per gate: a step must not slice a dynamically indexed array (nor a value computed
    # from one), or XLA:CPU fuses it into scalar code (measured 70 us instead of ~5 us per step).
    x_r, x_z, x_n = (_gather_rows(win[:, j * hidden:(j + 1) * hidden], tokens) for j in range(3))

    def step(h, xs):
        xr, xz, xn = xs
        zh = h @ w
        r = 0.5 * jnp.tanh(zh[:, :hidden] + xr) + 0.5
        z = 0.5 * jnp.tanh(zh[:, hidden:2 * hidden] + xz) + 0.5
        n = jnp.tanh(xn + r * zh[:, 2 * hidden:])
        return n + z * (h - n), (h if keep else None)  # == (1 - z) * n + z * h

    h0 = jnp.zeros((tokens.shape[1], hidden), w_hh.dtype)
    return lax.scan(step, h0, (x_r, x_z, x_n), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gru_last_hidden(tokens: jax.Array, w_in: jax.Array, w_hh: jax.Array, unroll: int = 1) -> jax.Array:
    """flax-GRUCell recurrence (r, z, n; n = tanh(x_n + r * h W_hn)) over pre-padded tokens; returns h_T."""
    return _gru_forward(tokens, w_in, w_hh, unroll, keep=False)[0]


def _gru_fwd(tokens, w_in, w_hh, unroll):
    h, h_prev = _gru_forward(tokens, w_in, w_hh, unroll, keep=True)
    return h, (tokens, h_prev, w_in, w_hh)


def _gru_bwd(unroll, res, dh_last):
    tokens, h_prev, w_in, w_hh = res
    hidden = w_hh.shape[0]
    vocab = w_in.shape[0]
    k = _sigmoid_scale(_GRU_K, hidden, w_hh.dtype)
    w, win = w_hh * k, w_in * k
    # One matmul gives [x_rz + h W_rz | h W_hn | x_n]: the n gate needs its two halves apart (r multiplies one).
    w_aug = jnp.concatenate([
        jnp.concatenate([w, jnp.zeros((hidden, hidden), w.dtype)], axis=1),
        jnp.concatenate([win[:, :2 * hidden], jnp.zeros((vocab, hidden), w.dtype), win[:, 2 * hidden:]], axis=1),
    ], axis=0)  # [H+V, 4H]
    w_t = jnp.concatenate([w.T, jnp.zeros((hidden, hidden), w.dtype)], axis=0)  # [4H, H]: ignores the x_n block
    aug, aug_t = _augmented(h_prev, tokens, vocab)
    batch = tokens.shape[1]

    def step(carry, xs):
        dh, dw_aug = carry
        a, a_t, hp = xs
        za = a @ w_aug
        u = jnp.tanh(za[:, :2 * hidden])
        ur, uz = u[:, :hidden], u[:, hidden:]
        r, z = 0.5 * ur + 0.5, 0.5 * uz + 0.5
        hn = za[:, 2 * hidden:3 * hidden]
        n = jnp.tanh(za[:, 3 * hidden:] + r * hn)
        dan = dh * (1.0 - z) * (1.0 - n * n)
        dz = jnp.stack([dan * hn * 0.5 * (1.0 - ur * ur), dh * (hp - n) * 0.5 * (1.0 - uz * uz), dan * r, dan],
                       axis=1).reshape(batch, 4 * hidden)
        return (dh * z + dz @ w_t, dw_aug + a_t @ dz), None

    (_, dw_aug), _ = lax.scan(step, (dh_last, jnp.zeros_like(w_aug)), (aug, aug_t, h_prev), reverse=True,
                              unroll=unroll)
    dw = dw_aug[:hidden, :3 * hidden] * k
    dwin = jnp.concatenate([dw_aug[hidden:, :2 * hidden], dw_aug[hidden:, 3 * hidden:]], axis=1) * k
    return None, dwin, dw


gru_last_hidden.defvjp(_gru_fwd, _gru_bwd)


# ------------------------------------------------------------------------------------------------ RNN


def _rnn_forward(tokens, w_in, w_hh, unroll, keep):
    hidden = w_hh.shape[0]
    x = _gather_rows(w_in, tokens)

    def step(h, xt):
        # The seed's SimpleRNN: nnx.SimpleCell (tanh) followed by a ReLU on the carried state.
        return jax.nn.relu(jnp.tanh(h @ w_hh + xt)), (h if keep else None)

    h0 = jnp.zeros((tokens.shape[1], hidden), w_hh.dtype)
    return lax.scan(step, h0, x, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def rnn_last_hidden(tokens: jax.Array, w_in: jax.Array, w_hh: jax.Array, unroll: int = 1) -> jax.Array:
    """The seed's RNN, h = relu(tanh(x_t + h W_hh)), over pre-padded tokens [T, B]; returns h_T [B, H]."""
    return _rnn_forward(tokens, w_in, w_hh, unroll, keep=False)[0]


def _rnn_fwd(tokens, w_in, w_hh, unroll):
    h, h_prev = _rnn_forward(tokens, w_in, w_hh, unroll, keep=True)
    return h, (tokens, h_prev, h, w_in, w_hh)


def _rnn_bwd(unroll, res, dh_last):
    tokens, h_prev, h_last, w_in, w_hh = res
    hidden = w_hh.shape[0]
    # relu(tanh(z))' = 1 - h^2 where h > 0, else 0 (jax's relu has derivative 0 at 0 too): no recompute needed.
    h_next = jnp.concatenate([h_prev[1:], h_last[None]], axis=0)
    slope = jnp.where(h_next > 0, 1.0 - h_next * h_next, 0.0)
    _, aug_t = _augmented(h_prev, tokens, w_in.shape[0])
    w_t = w_hh.T

    def step(carry, xs):
        dh, dw_aug = carry
        a_t, s = xs
        dz = dh * s
        return (dz @ w_t, dw_aug + a_t @ dz), None

    init = (dh_last, jnp.zeros((hidden + w_in.shape[0], hidden), w_hh.dtype))
    (_, dw_aug), _ = lax.scan(step, init, (aug_t, slope), reverse=True, unroll=unroll)
    return None, dw_aug[hidden:], dw_aug[:hidden]


rnn_last_hidden.defvjp(_rnn_fwd, _rnn_bwd)


# ------------------------------------------------------------------------------------------- dispatch

_FAST = {"rnn": rnn_last_hidden, "lstm": lstm_last_hidden, "gru": gru_last_hidden}
_PLAIN = {"rnn": _rnn_forward, "lstm": _lstm_forward, "gru": _gru_forward}


def last_hidden(cell: str, tokens: jax.Array, w_in: jax.Array, w_hh: jax.Array, *, unroll: int = 1,
                custom_grad: bool = True) -> jax.Array:
    """h_T [B, H] of ``cell`` over pre-padded time-major tokens [T, B]; custom_grad=False lets JAX differentiate."""
    if cell not in _FAST:
        raise ValueError(f"unknown cell {cell!r}; choose one of: {', '.join(_FAST)}")
    if custom_grad:
        return _FAST[cell](tokens, w_in, w_hh, unroll)
    out = _PLAIN[cell](tokens, w_in, w_hh, unroll, keep=False)[0]
    return out[1] if cell == "lstm" else out
