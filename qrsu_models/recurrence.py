"""Fast scanned recurrences (LSTM, GRU, the seed's ReLU RNN) over token ids, with hand-written backward passes.

Every cell here maps time-major token ids ``tokens`` [T, B] to the last hidden state [B, H], starting from a
zero state, given an input table ``w_in`` [V, G*H] (the input projection of each token, input bias folded in;
row v equals ``one_hot(v) @ W_ih + b``) and a fused recurrent kernel ``w_hh`` [H, G*H], gates in flax order.

Padding contract: real steps come LAST (pre-padding) and a padded step holds a token id outside ``[0, V)``
(e.g. ``V``). A padded step gets an exactly-zero input, and from a zero state a zero input keeps every cell
here exactly at zero (LSTM: c = 0.5*0 + 0.5*tanh(0) = 0; GRU: h = tanh(0) + 0.5*(0 - 0) = 0; RNN:
relu(tanh(0)) = 0). So no mask is needed inside the forward loop: the final state is the state after the last
real token, bit for bit, and the padded steps add nothing to any gradient (their h_{t-1} and one-hot row are
0). The LSTM's and the GRU's backward loops still zero the cotangents of padded steps (:func:`_real`):
carried back through a long stretch of padding they can overflow float32, and ``0 * inf`` is NaN. The plain
forward that JAX differentiates (``custom_grad=False``, the tests' reference) does not, and can overflow there.

Why hand-written backward passes (``jax.custom_vjp``)? Measured on a 2-core XLA:CPU: every op inside a
``while`` body is a separately dispatched, single-threaded kernel (~1 us of overhead each), each per-step
stacked output is a dynamic-update-slice, and every large temporary costs memory bandwidth on every call
(B=256 x T=111 x 4H floats is 29 MB). Autodiff of the scan stacks several intermediates per step and adds a
small dW matmul per step. Here instead:

* every step, forward and backward, takes its token ids and forms ``[h_{t-1} | onehot_t]`` itself, so ONE
  matmul with ``[W_hh; W_in]`` gives the step's pre-activations: no gathered [T, B, G] input streams and no
  bulk [T, B, H+V] operands (measured 6-15% faster than gathering the inputs before the loop);
* the forward loop stores only the carries (h_{t-1}, c_{t-1}): 2H floats per step and row;
* the reverse loop recomputes the step's gates with that one matmul (the RNN needs no recompute:
  relu(tanh)' follows from h_t itself) and propagates dh/dc through one ``dz @ W_hh^T`` matmul;
* it accumulates the gradients of W_hh AND of the input table with one ``[h_{t-1} | onehot_t]^T @ dz_t``
  matmul per step, so the reverse loop stacks nothing.

That is 4 matmuls per step for the LSTM/GRU (2 for the RNN) instead of 3 with stored gates, and no [T, B, G]
buffer anywhere. Measured alternatives, all on this 2-core machine: storing the gates in the forward loop
(plus bulk precompute of the backward's coefficients) was ~even at batch 32 and ~1.4x slower at batch 256;
stacking dz and computing dW as ONE [H+V, T*B] @ [T*B, G] matmul after the loop was within noise (+-15%)
at B=32, T=111 and ~1.3x slower at B=32, T=501; processing 2-8 steps per loop iteration, with one dW
matmul per chunk, was within noise.

Sigmoids are computed as 0.5*tanh(x/2) + 0.5 on pre-scaled weights (one transcendental per gate; XLA:CPU's
logistic is slower). Loop bodies never slice a dynamically indexed array (XLA:CPU then emits scalar code):
per-step inputs are whole arrays, and only values computed inside the step are sliced.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

GATES: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}
"""Gate blocks per cell: ``w_in`` and ``w_hh`` have GATES[cell] * hidden columns (flax's gate order)."""


def _augmented(h: jax.Array, tokens: jax.Array, vocab: int) -> jax.Array:
    """One step's [h | onehot(token)] [B, H+V]: ``@ [W_hh; W_in]`` gives the step's pre-activations."""
    # jax.nn.one_hot gives an all-zero row for ids outside [0, V), i.e. for padding.
    return jnp.concatenate([h, jax.nn.one_hot(tokens, vocab, dtype=h.dtype)], axis=-1)


def _outer(a: jax.Array, dz: jax.Array) -> jax.Array:
    """a^T @ dz [H+V, G]: one step's weight gradient, summed over the batch."""
    return lax.dot_general(a, dz, (((0,), (0,)), ((), ())))


def _real(a: jax.Array, hidden: int) -> jax.Array:
    """[B, 1]: 1 where the step of ``a`` (:func:`_augmented`) holds a real token, 0 where it is padding.

    The backward loops zero their cotangents on padded steps with it. A padded step's state is the constant
    zero, so its exact gradient is zero; but a cotangent carried back through the padding is multiplied at each
    padded step by the cell's Jacobian at the zero state, which can expand (the LSTM's g-gate path and the
    GRU's candidate path through ``W_hh``). Over the 200 padded steps of a ``nightmare`` batch it overflowed
    float32 to inf, and ``0 * inf`` in the weight gradient made the update NaN. Where it stayed finite,
    zeroing it changes nothing (the padded rows of ``[h | onehot]`` are zero)."""
    return a[:, hidden:].sum(axis=1, keepdims=True)  # the one-hot part: all zero for padding


def _sigmoid_scale(blocks: tuple[float, ...], hidden: int, dtype: jnp.dtype) -> jax.Array:
    """Column scale k: 0.5 on sigmoid-gate blocks, 1 on tanh blocks (sigmoid(x) = 0.5*tanh(x/2) + 0.5)."""
    return jnp.concatenate([jnp.full((hidden,), b, dtype) for b in blocks])


# ----------------------------------------------------------------------------------------------- LSTM

_LSTM_K = (0.5, 0.5, 1.0, 0.5)  # i, f, g, o


def _lstm_w_aug(w_in: jax.Array, w_hh: jax.Array) -> jax.Array:
    """[H+V, 4H] with [h | onehot] @ it = the step's gate pre-activations, sigmoid gates pre-scaled by 0.5."""
    return jnp.concatenate([w_hh, w_in], axis=0) * _sigmoid_scale(_LSTM_K, w_hh.shape[0], w_hh.dtype)


def _lstm_update(z: jax.Array, c: jax.Array, hidden: int) -> tuple[jax.Array, jax.Array]:
    """(c, h) after one LSTM step from the pre-activations ``z`` [B, 4H] (gates i, f, g, o) and the cell ``c``."""
    i = 0.5 * jnp.tanh(z[:, :hidden]) + 0.5  # sigmoid of the unscaled pre-activation (_sigmoid_scale)
    f = 0.5 * jnp.tanh(z[:, hidden:2 * hidden]) + 0.5
    g = jnp.tanh(z[:, 2 * hidden:3 * hidden])
    o = 0.5 * jnp.tanh(z[:, 3 * hidden:]) + 0.5
    c_new = f * c + i * g
    return c_new, o * jnp.tanh(c_new)


def _gru_update(za: jax.Array, h: jax.Array, hidden: int) -> jax.Array:
    """h after one GRU step from the pre-activations ``za`` [B, 4H] (r, z, h W_hn, x_n) and the state ``h``."""
    r = 0.5 * jnp.tanh(za[:, :hidden]) + 0.5
    z = 0.5 * jnp.tanh(za[:, hidden:2 * hidden]) + 0.5
    n = jnp.tanh(za[:, 3 * hidden:] + r * za[:, 2 * hidden:3 * hidden])
    return n + z * (h - n)  # == (1 - z) * n + z * h


def _lstm_forward(tokens, w_in, w_hh, unroll, keep):
    hidden = w_hh.shape[0]
    vocab = w_in.shape[0]
    w_aug = _lstm_w_aug(w_in, w_hh)

    def step(carry, tok):
        c, h = carry
        new = _lstm_update(_augmented(h, tok, vocab) @ w_aug, c, hidden)
        return new, ((c, h) if keep else None)

    zeros = jnp.zeros((tokens.shape[1], hidden), w_hh.dtype)
    return lax.scan(step, (zeros, zeros), tokens, unroll=unroll)


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
    w_aug = _lstm_w_aug(w_in, w_hh)  # z = [h | onehot] @ w_aug
    w_t = w_aug[:hidden].T
    batch = tokens.shape[1]

    def step(carry, xs):
        dh, dc, dw_aug = carry
        tok, hp, cp = xs
        a = _augmented(hp, tok, vocab)
        real = _real(a, hidden)
        dh, dc = dh * real, dc * real
        u = jnp.tanh(a @ w_aug)  # recomputed gates (scaled pre-activations)
        ui, uf, ug, uo = (u[:, j * hidden:(j + 1) * hidden] for j in range(4))
        i, f, o = 0.5 * ui + 0.5, 0.5 * uf + 0.5, 0.5 * uo + 0.5
        tc = jnp.tanh(f * cp + i * ug)
        dc = dc + dh * o * (1.0 - tc * tc)
        # Cotangents of the scaled pre-activations: d sigmoid-gate = 0.5 * (1 - u^2), d tanh-gate = 1 - u^2.
        dz = jnp.stack([dc * ug * 0.5 * (1.0 - ui * ui), dc * cp * 0.5 * (1.0 - uf * uf),
                        dc * i * (1.0 - ug * ug), dh * tc * 0.5 * (1.0 - uo * uo)], axis=1).reshape(batch, gates)
        return (dz @ w_t, dc * f, dw_aug + _outer(a, dz)), None

    init = (dh_last, jnp.zeros_like(dh_last), jnp.zeros_like(w_aug))
    (_, _, dw_aug), _ = lax.scan(step, init, (tokens, h_prev, c_prev), reverse=True, unroll=unroll)
    # z was computed with k-scaled weights: chain rule through the scaling.
    return None, dw_aug[hidden:] * k, dw_aug[:hidden] * k


lstm_last_hidden.defvjp(_lstm_fwd, _lstm_bwd)


# ------------------------------------------------------------------------------------------------ GRU

_GRU_K = (0.5, 0.5, 1.0)  # r, z, n


def _gru_forward(tokens, w_in, w_hh, unroll, keep):
    hidden = w_hh.shape[0]
    vocab = w_in.shape[0]
    w_aug = _gru_w_aug(w_in, w_hh)

    def step(h, tok):
        return _gru_update(_augmented(h, tok, vocab) @ w_aug, h, hidden), (h if keep else None)

    h0 = jnp.zeros((tokens.shape[1], hidden), w_hh.dtype)
    return lax.scan(step, h0, tokens, unroll=unroll)


def _gru_w_aug(w_in: jax.Array, w_hh: jax.Array) -> jax.Array:
    """[H+V, 4H] with [h | onehot] @ it = [x_rz + h W_rz | h W_hn | x_n] (scaled): r multiplies h W_hn alone."""
    hidden, vocab = w_hh.shape[0], w_in.shape[0]
    k = _sigmoid_scale(_GRU_K, hidden, w_hh.dtype)
    w, win = w_hh * k, w_in * k
    return jnp.concatenate([
        jnp.concatenate([w, jnp.zeros((hidden, hidden), w.dtype)], axis=1),
        jnp.concatenate([win[:, :2 * hidden], jnp.zeros((vocab, hidden), w.dtype), win[:, 2 * hidden:]], axis=1),
    ], axis=0)


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
    w_aug = _gru_w_aug(w_in, w_hh)
    w_t = w_aug[:hidden].T  # [4H, H]: the h rows, whose x_n block is zero
    batch = tokens.shape[1]

    def step(carry, xs):
        dh, dw_aug = carry
        tok, hp = xs
        a = _augmented(hp, tok, vocab)
        dh = dh * _real(a, hidden)
        za = a @ w_aug
        u = jnp.tanh(za[:, :2 * hidden])
        ur, uz = u[:, :hidden], u[:, hidden:]
        r, z = 0.5 * ur + 0.5, 0.5 * uz + 0.5
        hn = za[:, 2 * hidden:3 * hidden]
        n = jnp.tanh(za[:, 3 * hidden:] + r * hn)
        dan = dh * (1.0 - z) * (1.0 - n * n)
        dz = jnp.stack([dan * hn * 0.5 * (1.0 - ur * ur), dh * (hp - n) * 0.5 * (1.0 - uz * uz), dan * r, dan],
                       axis=1).reshape(batch, 4 * hidden)
        return (dh * z + dz @ w_t, dw_aug + _outer(a, dz)), None

    (_, dw_aug), _ = lax.scan(step, (dh_last, jnp.zeros_like(w_aug)), (tokens, h_prev), reverse=True,
                              unroll=unroll)
    dw = dw_aug[:hidden, :3 * hidden] * k
    dwin = jnp.concatenate([dw_aug[hidden:, :2 * hidden], dw_aug[hidden:, 3 * hidden:]], axis=1) * k
    return None, dwin, dw


gru_last_hidden.defvjp(_gru_fwd, _gru_bwd)


# ------------------------------------------------------------------------------------------------ RNN


def _rnn_forward(tokens, w_in, w_hh, unroll, keep):
    hidden, vocab = w_hh.shape[0], w_in.shape[0]
    w_aug = jnp.concatenate([w_hh, w_in], axis=0)

    def step(h, tok):
        # The seed's SimpleRNN: nnx.SimpleCell (tanh) followed by a ReLU on the carried state.
        return jax.nn.relu(jnp.tanh(_augmented(h, tok, vocab) @ w_aug)), (h if keep else None)

    h0 = jnp.zeros((tokens.shape[1], hidden), w_hh.dtype)
    return lax.scan(step, h0, tokens, unroll=unroll)


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
    vocab = w_in.shape[0]
    w_t = w_hh.T

    def step(carry, xs):
        dh, dw_aug = carry
        tok, hp, hn = xs
        dz = dh * jnp.where(hn > 0, 1.0 - hn * hn, 0.0)
        return (dz @ w_t, dw_aug + _outer(_augmented(hp, tok, vocab), dz)), None

    init = (dh_last, jnp.zeros((hidden + vocab, hidden), w_hh.dtype))
    (_, dw_aug), _ = lax.scan(step, init, (tokens, h_prev, h_next), reverse=True, unroll=unroll)
    return None, dw_aug[hidden:], dw_aug[:hidden]


rnn_last_hidden.defvjp(_rnn_fwd, _rnn_bwd)


# ------------------------------------------------------------------------------------------- dispatch

_FAST = {"rnn": rnn_last_hidden, "lstm": lstm_last_hidden, "gru": gru_last_hidden}
_PLAIN = {"rnn": _rnn_forward, "lstm": _lstm_forward, "gru": _gru_forward}


def _held(step, start: jax.Array):
    """``step`` that leaves the carry as it is before each row's first real step (t < start[row])."""
    def held(carry, xs):
        tok, t = xs
        new, out = step(carry, tok)
        keep = (t >= start)[:, None]
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, carry), out
    return held


def _step_of(cell: str, w_in: jax.Array, w_hh: jax.Array):
    """One time step ``(carry, token ids [B]) -> (carry, None)`` of ``cell`` (the simple form, for autodiff)."""
    hidden, vocab = w_hh.shape[0], w_in.shape[0]
    if cell == "lstm":
        w_aug = _lstm_w_aug(w_in, w_hh)

        def step(carry, tok):
            c, h = carry
            return _lstm_update(_augmented(h, tok, vocab) @ w_aug, c, hidden), None
    elif cell == "gru":
        w_aug = _gru_w_aug(w_in, w_hh)

        def step(h, tok):
            return _gru_update(_augmented(h, tok, vocab) @ w_aug, h, hidden), None
    else:
        w_aug = jnp.concatenate([w_hh, w_in], axis=0)

        def step(h, tok):
            return jax.nn.relu(jnp.tanh(_augmented(h, tok, vocab) @ w_aug)), None
    return step


def final_state(cell: str, tokens: jax.Array, w_in: jax.Array, w_hh: jax.Array, initial: jax.Array,
                start: jax.Array, *, unroll: int = 1) -> jax.Array:
    """The state [B, S] after each row's last real token, starting from ``initial`` [B, S] at its first
    (``start`` [B]: the step of each row's first real token in the pre-padded [T, B] ``tokens``).

    The state is h (S = H), and for the LSTM c then h (S = 2H). The carry is held through each row's padding,
    so a row's result does not depend on its batch's padding from any initial state (from a zero one the fast
    forms above need no hold). The simple form, differentiated by JAX: used for runs that start from a passed
    or a noisy state (pipelines' training recipes), where the fast forms' zero start does not hold."""
    hidden = w_hh.shape[0]
    carry = (initial[:, :hidden], initial[:, hidden:]) if cell == "lstm" else initial
    steps = jnp.arange(tokens.shape[0], dtype=jnp.int32)
    carry, _ = lax.scan(_held(_step_of(cell, w_in, w_hh), start), carry, (tokens, steps), unroll=unroll)
    return jnp.concatenate(carry, axis=-1) if cell == "lstm" else carry


def state_width(cell: str, hidden: int) -> int:
    """S, the floats of ``cell``'s state per sequence: h, and the LSTM's c."""
    return 2 * hidden if cell == "lstm" else hidden


def hidden_of(cell: str, state: jax.Array) -> jax.Array:
    """h [B, H] of a state [B, S] (the LSTM's state is c then h)."""
    return state[:, state.shape[1] // 2:] if cell == "lstm" else state


def last_hidden(cell: str, tokens: jax.Array, w_in: jax.Array, w_hh: jax.Array, *, unroll: int = 1,
                custom_grad: bool = True) -> jax.Array:
    """h_T [B, H] of ``cell`` over pre-padded time-major tokens [T, B]; custom_grad=False lets JAX differentiate."""
    if cell not in _FAST:
        raise ValueError(f"unknown cell {cell!r}; choose one of: {', '.join(_FAST)}")
    if custom_grad:
        return _FAST[cell](tokens, w_in, w_hh, unroll)
    out = _PLAIN[cell](tokens, w_in, w_hh, unroll, keep=False)[0]
    return out[1] if cell == "lstm" else out
