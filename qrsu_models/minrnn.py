"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

Recurrent cells whose gates depend on the input only, so each is a diagonal linear recurrence
``h_t = a_t * h_{t-1} + b_t`` with a_t, b_t computed for all steps at once (:func:`qrsu_models.scan.linear_scan`):

* minGRU: ``z_t = sigmoid(W_z x_t)``, ``h~_t = W_h x_t``, ``h_t = (1 - z_t) h_{t-1} + z_t h~_t``;
* minLSTM: ``f_t = sigmoid(W_f x_t)``, ``i_t = sigmoid(W_i x_t)``, ``h~_t = W_h x_t``, normalised gates
  ``f'_t = f_t / (f_t + i_t)``, ``i'_t = i_t / (f_t + i_t)``, ``h_t = f'_t h_{t-1} + i'_t h~_t``.

(The W's have biases.) This is the paper's sequential-mode arithmetic, not its log-space variant: on CPU the
recurrence runs as a sequential scan (see :mod:`qrsu_models.scan`), where the log-space form buys nothing.
Blocks: x + GLU(GELU(cell(LayerNorm(x)))) (:class:`stack.GLUBlock`), stacked; the classifier reads the last
real token (:class:`stack.StackClassifier`). ``b_t`` is masked to 0 at padded steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_data import task
from qrsu_models import stack
from qrsu_models.scan import check_method, linear_scan

CELLS: tuple[str, ...] = ("mingru", "minlstm")
"""The minimal recurrent cells: 'mingru' (one gate), 'minlstm' (normalised forget and input gates)."""


def coefficients(cell: str, pre: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a, b) of h_t = a_t h_{t-1} + b_t from the cell's pre-activations ``pre`` [..., G*H] (gates, then h~)."""
    if cell == "mingru":
        z_pre, h_tilde = jnp.split(pre, 2, axis=-1)
        z = jax.nn.sigmoid(z_pre)
        return 1.0 - z, z * h_tilde
    f_pre, i_pre, h_tilde = jnp.split(pre, 3, axis=-1)
    # f / (f + i) with f, i the sigmoids, as sigmoid(log f - log i): the same number, but finite where both
    # sigmoids underflow to 0 in float32 (pre-activations below about -88 together), where f / (f + i) is 0/0.
    # A minLSTM run on hard (lr 0.026) went NaN that way after 150,400 sequences.
    log_ratio = jax.nn.log_sigmoid(f_pre) - jax.nn.log_sigmoid(i_pre)
    return jax.nn.sigmoid(log_ratio), jax.nn.sigmoid(-log_ratio) * h_tilde


class MinRNN(nnx.Module):
    """One minGRU or minLSTM layer: inputs [T, B, H] -> every hidden state [T, B, H]."""

    def __init__(self, cell: str, hidden: int, *, scan_method: str, rngs: nnx.Rngs):
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}")
        self.cell = cell
        # All of the cell's input-only projections in one matmul over all steps: [z | h~] or [f | i | h~].
        self.proj = nnx.Linear(hidden, (2 if cell == "mingru" else 3) * hidden, rngs=rngs)
        self.scan_method = scan_method

    def __call__(self, x: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """[T, B, H] -> [T, B, H] (``last``: h_{T-1} only); padded steps (``mask`` False) feed the state nothing."""
        a, b = coefficients(self.cell, stack.dense(self.proj, x))
        h = linear_scan(a, jnp.where(mask, b, 0.0), self.scan_method)
        return h[-1] if last else h

    def from_state(self, x: jax.Array, mask: jax.Array, initial: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(every hidden state [T, B, H], the final one [B, H]) from ``initial`` [B, H] instead of zeros.

        The simple form (a sequential scan, differentiated by JAX) for runs that start from a passed or a noisy
        state: padded steps get a = 1 and b = 0, so the state is held through a row's padding exactly."""
        a, b = coefficients(self.cell, stack.dense(self.proj, x))
        a, b = jnp.where(mask, a, 1.0), jnp.where(mask, b, 0.0)
        h = linear_scan(a, b.at[0].add(a[0] * initial), "sequential")
        return h, h[-1]

    def from_tokens(self, onehot: jax.Array, u_table: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """``self(onehot @ u_table, mask, last)``, the gates computed once per token id on the [V, H] table."""
        a_table, b_table = coefficients(self.cell, self.proj(u_table))
        # A padded step's all-zero one-hot row gives b = 0 (and a = 0, harmless from a zero state).
        a, b = (stack.dense(lambda v, t=t: v @ t, onehot) for t in (a_table, b_table))
        h = linear_scan(a, b, self.scan_method)
        return h[-1] if last else h


class MinRNNClassifier(stack.StackClassifier):
    """Token ids -> embedding -> ``layers`` x [x + GLU(GELU(cell(LayerNorm(x))))] -> LayerNorm -> last token -> head."""

    forward_state = stack.StackClassifier.stateful_forward
    zero_state = stack.StackClassifier.stateful_zero

    def __init__(self, cell: str = "mingru", *, num_classes: int, vocab_size: int = task.VOCAB_SIZE, hidden: int = 64,
                 layers: int = 1, scan: str = "auto", rngs: nnx.Rngs):
        method = check_method(scan)

        def block(r: nnx.Rngs) -> nnx.Module:
            return stack.GLUBlock(MinRNN(cell, hidden, scan_method=method, rngs=r), hidden, norm="layer", rngs=r)

        super().__init__(block, layers=layers, hidden=hidden, num_classes=num_classes, vocab_size=vocab_size,
                         norm="layer", state_per_layer=hidden, rngs=rngs)
