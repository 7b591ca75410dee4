"""The RNN of Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural networks", with
their vanishing-gradient regulariser Omega.

From their code (``pascanur/trainingRNNs``, ``RNN.py``; notes in docs/length_generalisation.md):

* ``h_t = tanh(h_{t-1} W_hh + x_t W_uh + b)`` from ``h_0 = 0``, one-hot inputs, 50 hidden units; the class is
  ``softmax(h_T W_hy + b_y)`` at the last step only.
* Initialisations (``init``): 'basic_tanh', every weight N(0, 0.1^2), the one their model that generalised to
  length 5,000 used; 'smart_tanh' (their code's default), input and output weights N(0, 0.01^2) and a recurrent
  matrix with 15 non-zero entries per row rescaled to spectral radius 0.95; 'sigmoid' is not offered (a tanh
  RNN only). Biases start at 0.
* Omega, as their code computes it (the ratio of squared norms of their eq. 10, averaged over the time steps):
  with ``g_t = dC/dh_t`` the total derivative of the batch-mean cross-entropy and ``a_t = g_t (1 - h_t^2)``,
  ``v_t = a_t W_hh^T`` is ``g_t dh_t/dh_{t-1}``, ``r_t = |v_t|^2 / |g_t|^2`` and
  ``Omega = sum_t mean_b (r_t - 1)^2 / sum_t mean_b m_t`` over the steps with ``|g_t|^2 >= 1e-20`` (``m_t``).
  ``g_t`` and ``h_t`` are constants for its gradient: only the explicit ``W_hh`` of ``v_t`` is differentiated,
  so Omega's gradient reaches ``W_hh`` alone, as theirs does.

Padding: before a row's first real token the state is held (a tanh RNN is not at rest under zero input once
its bias moves), so a sequence's logits do not depend on its batch's padding, and Omega counts real steps only.
The simple version throughout: one ``lax.scan``, differentiated by JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from qrsu_data import task
from qrsu_models import layout
from qrsu_models.arguments import check_choice, check_positive

INITS: tuple[str, ...] = ("basic_tanh", "smart_tanh")
"""'basic_tanh': every weight N(0, 0.1^2); 'smart_tanh': N(0, 0.01^2) in and out, a sparse recurrent matrix at
spectral radius 0.95 (15 non-zero entries per row)."""
SMART_NONZERO, SMART_RADIUS = 15, 0.95
OMEGA_BOUND = 1e-20
"""Steps whose |dC/dh_t|^2 is below this are left out of Omega (their code's ``bound``)."""


def _smart_recurrent(key: jax.Array, hidden: int) -> jax.Array:
    normal, perms = jax.random.split(key)
    w = 0.01 * jax.random.normal(normal, (hidden, hidden))
    keep = jax.vmap(lambda k: jax.random.permutation(k, hidden) < SMART_NONZERO)(jax.random.split(perms, hidden))
    w = jnp.where(keep, w, 0.0)
    radius = jnp.max(jnp.abs(jnp.linalg.eigvals(w)))
    return (SMART_RADIUS * w / radius).astype(jnp.float32)


class PascanuRNN(nnx.Module):
    """Token ids [B, T] + lengths [B] -> logits: the tanh RNN of Pascanu et al. 2013, with their Omega."""

    def __init__(self, *, num_classes: int = 4, vocab_size: int = task.VOCAB_SIZE, hidden: int = 50,
                 init: str = "basic_tanh", rngs: nnx.Rngs):
        check_positive("hidden", hidden)
        check_positive("num_classes", num_classes)
        check_choice("init", init, INITS)
        self.hidden, self.vocab_size, self.num_classes, self.init = hidden, vocab_size, num_classes, init
        scale = 0.1 if init == "basic_tanh" else 0.01
        k_in, k_hh, k_out = rngs.params(), rngs.params(), rngs.params()  # fixed draw order
        self.w_uh = nnx.Param(scale * jax.random.normal(k_in, (vocab_size, hidden)))
        self.w_hh = nnx.Param(scale * jax.random.normal(k_hh, (hidden, hidden)) if init == "basic_tanh"
                              else _smart_recurrent(k_hh, hidden))
        self.b = nnx.Param(jnp.zeros((hidden,)))
        self.w_hy = nnx.Param(scale * jax.random.normal(k_out, (hidden, num_classes)))
        self.b_y = nnx.Param(jnp.zeros((num_classes,)))

    # ------------------------------------------------------------------------------------------ forward

    def _states(self, tokens, lengths, padding, initial, w_hh=None, eps=None):
        """(every state h_t [T, B, H], real-step mask [T, B]); ``eps`` [T, B, H] is added to each h_t (for the
        total derivatives dC/dh_t), ``w_hh`` replaces the recurrent matrix."""
        layout.check_padding(padding)
        ids, mask = layout.right_aligned(jnp.asarray(tokens), jnp.asarray(lengths), padding)
        x = jax.nn.one_hot(ids, self.vocab_size) @ self.w_uh[...] + self.b[...]  # [B, T, H]
        w = self.w_hh[...] if w_hh is None else w_hh
        eps = jnp.zeros((ids.shape[1], ids.shape[0], self.hidden)) if eps is None else eps

        def step(h, inputs):
            x_t, m_t, e_t = inputs
            h_new = jnp.tanh(h @ w + x_t) + e_t
            h = jnp.where(m_t[:, None], h_new, h)  # held before the row's first real token
            return h, h

        _, hs = jax.lax.scan(step, initial, (jnp.swapaxes(x, 0, 1), mask.T, eps))
        return hs, mask.T

    def zero_state(self, batch: int) -> jax.Array:
        """The state every sequence starts from by default, [batch, hidden]: zeros."""
        return jnp.zeros((batch, self.hidden), jnp.float32)

    def forward_state(self, tokens: jax.Array, lengths: jax.Array, padding: str, initial_state: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
        """(logits, final state) of sequences that start from ``initial_state`` [B, hidden]."""
        hs, _ = self._states(tokens, lengths, padding, initial_state)
        return hs[-1] @ self.w_hy[...] + self.b_y[...], hs[-1]

    def __call__(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """Logits [B, num_classes] from the last real step (state from zero)."""
        return self.forward_state(tokens, lengths, padding, self.zero_state(jnp.shape(tokens)[0]))[0]

    def state_size(self, length: int) -> int:
        """Floats carried per sequence from step to step: h."""
        return self.hidden

    # ------------------------------------------------------------------------------------------ Omega

    def regularizer(self, tokens: jax.Array, lengths: jax.Array, padding: str, labels: jax.Array) -> jax.Array:
        """Omega of the batch (see the module): its value, differentiable with respect to W_hh only."""
        batch, steps = jnp.shape(tokens)
        h0 = self.zero_state(batch)
        w_y, b_y = self.w_hy[...], self.b_y[...]

        def cost(eps):
            hs, _ = self._states(tokens, lengths, padding, h0, eps=eps)
            logits = hs[-1] @ w_y + b_y
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), hs

        # dC/d eps_t = dC/dh_t, the total derivative through every later step; both are constants for Omega.
        g, hs = jax.grad(cost, has_aux=True)(jnp.zeros((steps, batch, self.hidden)))
        g, hs = jax.lax.stop_gradient(g), jax.lax.stop_gradient(hs)
        mask = layout.right_aligned(jnp.asarray(tokens), jnp.asarray(lengths), padding)[1].T
        v = (g * (1.0 - hs ** 2)) @ self.w_hh[...].T  # g_t dh_t/dh_{t-1}, W_hh the one live factor
        g2 = jnp.sum(g ** 2, axis=-1)
        counted = mask & (g2 >= OMEGA_BOUND)
        ratio = jnp.where(counted, jnp.sum(v ** 2, axis=-1) / jnp.where(counted, g2, 1.0), 1.0)
        per_step = jnp.mean((ratio - 1.0) ** 2, axis=1)  # mean over the batch (uncounted terms are 0)
        return jnp.sum(per_step) / jnp.maximum(jnp.sum(jnp.mean(counted, axis=1)), 1e-12)
