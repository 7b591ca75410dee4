"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences").

One LRU layer maps inputs u_t [H] to outputs y_t [H] through a complex diagonal state x_t [N]:

    x_t = diag(lambda) x_{t-1} + gamma * (B u_t),    y_t = Re(C x_t) + D * u_t,

with the exponential parameterisation ``lambda_j = exp(-exp(nu_j) + i exp(theta_j))`` (|lambda| < 1 always),
initialised uniformly on the ring ``r_min <= |lambda| <= r_max`` with phases uniform in ``[0, theta_max]``,
and the normalisation ``gamma_j = sqrt(1 - |lambda_j|^2)`` (a trained parameter, stored as its log, started
there). B, C complex (N x H, H x N), D real. Blocks: x + GLU(GELU(LRU(LayerNorm(x)))) (:class:`stack.GLUBlock`),
stacked; the classifier reads the last real token (:class:`stack.StackClassifier`).

The default ring is the paper's setting for its longest task (PathX): ``|lambda|`` in [0.999, 0.9999], phases
in [0, pi/10]. The paper's general one, [0.9, 0.999] with phases in [0, pi] (options ``r_min``, ``r_max``,
``theta_max``), solves ``hard`` but never rose above chance on ``nightmare`` (lengths 300-500) in 26 runs at
learning rates 1e-4 to 3e-2; with the long-range ring it solves ``nightmare`` (docs/leaderboard.md,
"Contradictions investigated"). Neither the ring nor the small phases alone were enough there.

The recurrence is :func:`qrsu_models.scan.linear_scan` (option ``scan``) with ``a_t = lambda`` and
``b_t = gamma * B u_t``, the input projection computed for all steps at once outside the scan; ``b_t`` is
masked to 0 at padded steps.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_data import task
from qrsu_models import stack
from qrsu_models.scan import check_method, linear_scan


def ring_init(key: jax.Array, n: int, r_min: float, r_max: float, theta_max: float) -> tuple[jax.Array, ...]:
    """(nu_log, theta_log, gamma_log) [n]: lambda uniform on the ring r_min..r_max, phases in [0, theta_max]."""
    k1, k2 = jax.random.split(key)
    u1 = jax.random.uniform(k1, (n,))
    u2 = jax.random.uniform(k2, (n,))
    # |lambda|^2 uniform in [r_min^2, r_max^2] is lambda uniform on the ring's area (the paper's Lemma 3.2).
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    theta_log = jnp.log(theta_max * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    gamma_log = jnp.log(jnp.sqrt(1.0 - modulus ** 2))
    return nu_log, theta_log, gamma_log


class LRU(nnx.Module):
    """One LRU layer: inputs [T, B, H] -> outputs [T, B, H] through a complex diagonal state of size ``state``."""

    def __init__(self, hidden: int, state: int, *, r_min: float, r_max: float, theta_max: float, scan_method: str,
                 rngs: nnx.Rngs):
        nu_log, theta_log, gamma_log = ring_init(rngs.params(), state, r_min, r_max, theta_max)
        self.nu_log = nnx.Param(nu_log)
        self.theta_log = nnx.Param(theta_log)
        self.gamma_log = nnx.Param(gamma_log)
        # The paper's Glorot-like scales: B ~ N(0, 1/(2H)) per part, C ~ N(0, 1/N) per part, D ~ N(0, 1).
        normal = jax.nn.initializers.normal
        self.b_re = nnx.Param(normal(1.0 / math.sqrt(2 * hidden))(rngs.params(), (hidden, state)))
        self.b_im = nnx.Param(normal(1.0 / math.sqrt(2 * hidden))(rngs.params(), (hidden, state)))
        self.c_re = nnx.Param(normal(1.0 / math.sqrt(state))(rngs.params(), (state, hidden)))
        self.c_im = nnx.Param(normal(1.0 / math.sqrt(state))(rngs.params(), (state, hidden)))
        self.d = nnx.Param(jax.random.normal(rngs.params(), (hidden,)))
        self.scan_method = scan_method

    def eigenvalues(self) -> jax.Array:
        """lambda [N] complex64."""
        return jnp.exp(-jnp.exp(self.nu_log[...]) + 1j * jnp.exp(self.theta_log[...]))

    def _input_map(self) -> jax.Array:
        # u @ (B_re + i B_im) as one real matmul [H, 2N] (real parts, then imaginary), gamma folded in.
        gamma = jnp.exp(self.gamma_log[...])
        return jnp.concatenate([self.b_re[...], self.b_im[...]], axis=1) * jnp.concatenate([gamma, gamma])

    def _recur(self, bu_parts: jax.Array, u: jax.Array, last: bool) -> jax.Array:
        re, im = jnp.split(bu_parts, 2, axis=-1)
        bu = jax.lax.complex(re, im)
        x = linear_scan(jnp.broadcast_to(self.eigenvalues(), bu.shape[1:]), bu, self.scan_method)  # time-invariant
        if last:
            x = x[-1]
        # Re(x C) = Re(x) Re(C) - Im(x) Im(C): one matmul of [Re x | Im x] with [Re C; -Im C].
        c_both = jnp.concatenate([self.c_re[...], -self.c_im[...]], axis=0)
        return stack.dense(lambda v: v @ c_both, jnp.concatenate([jnp.real(x), jnp.imag(x)], axis=-1)) + self.d[...] * u

    def __call__(self, u: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """[T, B, H] -> [T, B, H] (``last``: step T-1 only); padded steps (``mask`` False) feed the state nothing."""
        bu = jnp.where(mask, stack.dense(lambda v: v @ self._input_map(), u), 0.0)
        return self._recur(bu, u[-1] if last else u, last)

    def from_tokens(self, onehot: jax.Array, u_table: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """``self(onehot @ u_table, mask, last)``, the input map applied once per token id on the [V, H] table."""
        # A padded step's all-zero one-hot row gives B u = 0.
        bu = stack.dense(lambda v: v @ (u_table @ self._input_map()), onehot)
        u = (onehot[-1] @ u_table) if last else stack.dense(lambda v: v @ u_table, onehot)
        return self._recur(bu, u, last)


class LRUClassifier(stack.StackClassifier):
    """Token ids -> embedding -> ``layers`` x [x + GLU(GELU(LRU(LayerNorm(x))))] -> LayerNorm -> last token -> head."""

    def __init__(self, *, num_classes: int, vocab_size: int = task.VOCAB_SIZE, hidden: int = 64, layers: int = 1,
                 state: int = 64, r_min: float = 0.999, r_max: float = 0.9999, theta_max: float = math.pi / 10,
                 scan: str = "auto", rngs: nnx.Rngs):
        stack.check_positive("state", state)
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"the ring needs 0 <= r_min < r_max < 1, got r_min={r_min!r}, r_max={r_max!r}")
        if not 0.0 < theta_max <= 2 * math.pi:
            raise ValueError(f"theta_max must be in (0, 2*pi], got {theta_max!r}")
        method = check_method(scan)

        def block(r: nnx.Rngs) -> nnx.Module:
            return stack.GLUBlock(LRU(hidden, state, r_min=r_min, r_max=r_max, theta_max=theta_max,
                                      scan_method=method, rngs=r), hidden, norm="layer", rngs=r)

        # The state is N complex numbers: 2N floats per layer.
        super().__init__(block, layers=layers, hidden=hidden, num_classes=num_classes, vocab_size=vocab_size,
                         norm="layer", state_per_layer=2 * state, rngs=rngs)

