"""A classifier of stacked pre-norm residual blocks over token ids, read out at the last real token.

The frame the linear-recurrence families (:mod:`qrsu_models.lru`, :mod:`qrsu_models.minrnn`,
:mod:`qrsu_models.mamba`) share: token ids -> ``nnx.Embed`` at width ``hidden`` -> blocks -> a final norm ->
the output at position T-1 (rows are right-aligned, :func:`qrsu_models.layout.right_aligned`, so that is every
row's last real token) -> ``nnx.Linear`` to the logits. Activations are time-major, [T, B, hidden].

A block is any module ``block(x [T, B, H], mask [T, B, 1] bool, last=False) -> [T, B, H]`` (with ``last``, its
output at the last step only, [B, H]), a mixer ``mixer(u, mask, last=False)`` likewise. Padding is exact when every
block keeps the inputs of its recurrence exactly zero at padded steps (``mask`` False): those steps come first,
so the zero initial state stays zero through them, and real steps never see a padded step's value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_models import layout
from qrsu_models.arguments import check_positive  # noqa: F401  (the families check their sizes with it)

NORMS: tuple[str, ...] = ("layer", "rms")
"""The blocks' and the read-out's normalisation: 'layer' (nnx.LayerNorm) or 'rms' (nnx.RMSNorm)."""


def make_norm(norm: str, hidden: int, rngs: nnx.Rngs) -> nnx.Module:
    """The normalisation layer named ``norm`` (NORMS) at width ``hidden``."""
    if norm == "layer":
        return nnx.LayerNorm(hidden, rngs=rngs)
    if norm == "rms":
        return nnx.RMSNorm(hidden, rngs=rngs)
    raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")


def dense(layer: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """``layer`` (e.g. an nnx.Linear) applied to the last axis of x [..., H], as one 2-D matmul."""
    # Measured (B=32, T=111, H=64 -> 128, forward + backward): a [T, B, H] @ [H, G] dot 1.8x slower on XLA:CPU
    # than the same dot on the [T*B, H] reshape (the weight gradient's two contracted axes).
    return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class GLUBlock(nnx.Module):
    """x + GLU(GELU(mixer(norm(x)))): the LRU paper's residual block around any sequence mixer."""

    def __init__(self, mixer: nnx.Module, hidden: int, *, norm: str = "layer", rngs: nnx.Rngs):
        self.norm = make_norm(norm, hidden, rngs)
        self.mixer = mixer
        self.glu = nnx.Linear(hidden, 2 * hidden, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """[T, B, H] -> [T, B, H] (``last``: the last step only, [B, H]); ``mask`` [T, B, 1] False at padding."""
        y = self.mixer(self.norm(x), mask, last=last)
        return self._residual(x[-1] if last else x, y)

    def from_tokens(self, onehot: jax.Array, table: jax.Array, mask: jax.Array, last: bool = False) -> jax.Array:
        """``self(onehot @ table, mask, last)`` for a first block, its position-wise work done on the table's rows."""
        # A first block's input takes only vocab_size distinct values: norm (and a mixer's input-only maps,
        # mixer.from_tokens) run on the [V, H] table, and one-hot matmuls spread them over [T, B]. At padded
        # steps (all-zero one-hot rows) this gives 0 where norm(0) would not; those steps feed no state.
        u_table = self.norm(table)
        if hasattr(self.mixer, "from_tokens"):
            y = self.mixer.from_tokens(onehot, u_table, mask, last=last)
        else:
            y = self.mixer(dense(lambda v: v @ u_table, onehot), mask, last=last)
        x = (onehot[-1] @ table) if last else dense(lambda v: v @ table, onehot)
        return self._residual(x, y)

    def from_state(self, x: jax.Array, mask: jax.Array, initial: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(``self(x, mask)``, the mixer's final state) with the mixer started from ``initial``."""
        y, final = self.mixer.from_state(self.norm(x), mask, initial)
        return self._residual(x, y), final

    def _residual(self, x: jax.Array, y: jax.Array) -> jax.Array:
        value, gate = jnp.split(dense(self.glu, jax.nn.gelu(y)), 2, axis=-1)
        return x + value * jax.nn.sigmoid(gate)


class StackClassifier(nnx.Module):
    """Token ids [B, T] + lengths [B] -> logits [B, num_classes] through residual blocks, read at the last token."""

    def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], *, layers: int, hidden: int,
                 num_classes: int, vocab_size: int, norm: str, state_per_layer: int, rngs: nnx.Rngs):
        check_positive("layers", layers)
        check_positive("hidden", hidden)
        check_positive("num_classes", num_classes)
        check_positive("vocab_size", vocab_size)
        self.hidden = hidden
        self.state_per_layer = state_per_layer
        # Fixed draw order (embedding, blocks in order, norm, head) so a seed always gives the same model.
        self.embed = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.blocks = nnx.List([make_block(rngs) for _ in range(layers)])
        self.norm = make_norm(norm, hidden, rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def state_size(self, length: int) -> int:
        """Floats carried per sequence from step to step: every block's recurrent state, whatever the length."""
        return self.state_per_layer * len(self.blocks)

    def features(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """The last block's output at every step, [T, B, hidden], rows right-aligned (real tokens last)."""
        return self._run(tokens, lengths, padding, last=False)

    def last_features(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """The last block's output at step T-1 (every row's last real token), [B, hidden]: ``features()[-1]``."""
        return self._run(tokens, lengths, padding, last=True)

    def _run(self, tokens: jax.Array, lengths: jax.Array, padding: str, last: bool) -> jax.Array:
        ids, mask = layout.right_aligned(jnp.asarray(tokens), jnp.asarray(lengths), padding)
        mask = mask.T[:, :, None]
        # The embedding as a one-hot matmul: its gradient is a matmul too (a gather's is a scatter, measured
        # slower on XLA:CPU), and a padded step (id vocab_size, an all-zero one-hot row) embeds to exactly 0.
        table = self.embed.embedding[...]
        onehot = jax.nn.one_hot(jnp.where(mask[..., 0], ids.T, table.shape[0]), table.shape[0], dtype=table.dtype)
        blocks = list(self.blocks)
        # The last block's position-wise work runs at the last step only. Measured (hard, batch 128, one block,
        # forward + backward, beside the LSTM as control): minGRU 60 -> 39 ms, LRU 88 -> 64.
        if hasattr(blocks[0], "from_tokens"):
            x = blocks[0].from_tokens(onehot, table, mask, last=last and len(blocks) == 1)
        else:
            x = blocks[0](dense(lambda v: v @ table, onehot), mask, last=last and len(blocks) == 1)
        for i, block in enumerate(blocks[1:], 2):
            x = block(x, mask, last=last and i == len(blocks))
        return x

    def stateful_zero(self, batch: int) -> jax.Array:
        """The state every sequence starts from by default, [batch, state_size]: zeros (every block's)."""
        return jnp.zeros((batch, self.state_size(0)), jnp.float32)

    def stateful_forward(self, tokens: jax.Array, lengths: jax.Array, padding: str, initial_state: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
        """(logits, final state [B, state_size]) of sequences whose blocks start from ``initial_state`` (every
        block's state, block after block) instead of zeros: the blocks' ``from_state``, simple forms throughout.
        A family whose mixers have ``from_state`` offers it as its ``forward_state``."""
        layout.check_padding(padding)
        ids, mask = layout.right_aligned(jnp.asarray(tokens), jnp.asarray(lengths), padding)
        mask = mask.T[:, :, None]
        table = self.embed.embedding[...]
        onehot = jax.nn.one_hot(jnp.where(mask[..., 0], ids.T, table.shape[0]), table.shape[0], dtype=table.dtype)
        x = dense(lambda v: v @ table, onehot)
        finals = []
        for i, block in enumerate(self.blocks):
            initial = initial_state[:, i * self.state_per_layer:(i + 1) * self.state_per_layer]
            x, final = block.from_state(x, mask, initial)
            finals.append(final)
        return self.head(self.norm(x[-1])), jnp.concatenate(finals, axis=-1)

    def logits(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """Logits float32 [B, num_classes], computed op by op (``__call__`` compiles this)."""
        return self.head(self.norm(self.last_features(tokens, lengths, padding)))

    def __call__(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """Logits float32 [B, num_classes] of token ids [B, T] with ``lengths`` [B] real tokens per row."""
        layout.check_padding(padding)  # before jit, so the error names the value
        graphdef, state = nnx.split(self)
        return _compiled_logits(graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths), padding)


@functools.partial(jax.jit, static_argnames=("graphdef", "padding"))
def _compiled_logits(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, lengths: jax.Array,
                     padding: str) -> jax.Array:
    # jitted so that eager calls compile once per shape instead of dispatching op by op (a scan called eagerly
    # compiles anew each call); under an outer jit (the training step) it is simply inlined.
    return nnx.merge(graphdef, state).logits(tokens, lengths, padding)
