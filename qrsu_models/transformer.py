"""Pre-LayerNorm Transformer encoder classifier over token ids: embed -> positions -> blocks -> pool -> Linear.

The encoder of Vaswani et al. 2017 with the LayerNorm before each sublayer (Xiong et al. 2020):
``x = x + Attention(LN(x))``, ``x = x + MLP(LN(x))``, a final LayerNorm, then a pooled representation into
``nnx.Linear``. Positions (option ``positions``):

* ``'rotary'`` (Su et al. 2021): queries and keys rotated by their position, so attention scores depend on
  relative positions only; no parameters, no longest length;
* ``'sinusoidal'`` (Vaswani et al. 2017): the fixed sin/cos table added to the embeddings, any length;
* ``'learned'``: a trained table of ``max_length`` rows (the longest sequence of the training data); a position
  beyond it is CLAMPED to the last row (the model has never seen one there, so expect it to degrade).

The default (width 64, 2 layers, 4 heads, MLP of 64 units) has 51,332 parameters for 4 classes and a KV cache
of 2 * layers * hidden = 256 floats per token (28,160 at length 110).

Rotary is the default: it learned ``hard`` as fast as any and length-generalised best. A quick experiment
(one seed, lr 2e-3, batch 16, validation checked every 1,600 sequences; accuracy on 256 test sequences of the
lengthened configs; /tmp scripts, not kept):

============  ==============  ========  ============  =============
positions     solved hard at  test      hard-len500   hard-len1000
============  ==============  ========  ============  =============
rotary        1,600 seqs      1.000     0.727         0.934
learned       1,600 seqs      1.000     0.734         0.734
sinusoidal    3,200 seqs      1.000     0.430         0.496
rotary, last  1,600 seqs      1.000     0.309         0.250 (chance)
============  ==============  ========  ============  =============

Pooling (option ``pool``): ``'mean'``, the mean over a row's real tokens, or ``'last'``, the output at its last
real token (the task's sequences end with the end symbol ``E``, which so plays the part of a [CLS] token).
Mean pooling is the default: with the last token, the model learned as fast but did not length-generalise
(the table's last row).

Padding is exact: rows are right-aligned (:func:`qrsu_models.layout.right_aligned`), padded keys are masked
out of every attention, positions count from each row's first real token (:func:`qrsu_models.layout.positions`)
and pooling reads real tokens only, so a sequence's logits do not depend on its batch's padding.

Attention is written plainly (fused q/k/v projection, einsums, a masked softmax) because flax's
``nnx.MultiHeadAttention`` has no hook for rotary positions; ``jax.nn.dot_product_attention`` (XLA:CPU) measured
slower than these einsums (one layer's forward plus backward at batch 32, length 110: 19.6 ms against 16.5;
/tmp micro-benchmark beside benchmarks/train_throughput.py's transformer row). Sequences longer than a block
budget are attended in query chunks (:func:`attend`), so evaluating at length 5,000 does not hold a
[B, heads, T, T] score tensor.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_data import task
from qrsu_models import layout
from qrsu_models.arguments import check_choice as _check_choice
from qrsu_models.arguments import check_positive as _check_positive

POSITIONS: tuple[str, ...] = ("rotary", "sinusoidal", "learned")
"""Positional encodings: rotary (Su et al. 2021), sinusoidal (Vaswani et al. 2017), a learned table."""
POOLS: tuple[str, ...] = ("mean", "last")
"""Sequence representations: the masked mean over real tokens, or the output at the last real token."""
ROPE_BASE = 10_000.0
"""The base of the rotary and sinusoidal frequencies (both papers')."""
SCORE_BLOCK = 1 << 24
"""Most attention scores (floats) one query chunk holds at once: 64 MiB, whatever the batch and length."""


def mlp_width(mlp: int | float, hidden: int) -> int:
    """The MLP's hidden units: ``mlp`` itself if an int, else ``round(mlp * hidden)`` (a ratio)."""
    if isinstance(mlp, bool) or not isinstance(mlp, (int, float)) or mlp <= 0:
        raise ValueError(f"mlp must be a positive int (units) or float (a ratio of hidden), got {mlp!r}")
    width = mlp if isinstance(mlp, int) else round(mlp * hidden)
    if width <= 0:
        raise ValueError(f"mlp {mlp!r} of hidden {hidden} gives {width} units; give at least 1")
    return width


def sinusoidal(positions: jax.Array, width: int) -> jax.Array:
    """float32 [..., width]: Vaswani et al.'s encoding of integer ``positions`` (sin on even, cos on odd)."""
    freqs = ROPE_BASE ** (-jnp.arange(0, width, 2, dtype=jnp.float32) / width)
    angles = positions[..., None].astype(jnp.float32) * freqs
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, -1)[..., :width]


def rotate(x: jax.Array, positions: jax.Array) -> jax.Array:
    """``x`` [B, T, heads, d] rotated by ``positions`` [B, T] (rotary, halves paired as in GPT-NeoX)."""
    half = x.shape[-1] // 2
    freqs = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[:, :, None, None].astype(jnp.float32) * freqs  # [B, T, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * half:]], axis=-1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
    """Softmax attention [B, Tq, heads, d] of q [B, Tq, h, d] over k, v [B, T, h, d], keys where ``key_mask``."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    # A finite minimum, not -inf: a masked key's weight underflows to exactly 0, and a row with no real key
    # gives finite numbers instead of NaN.
    scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


def attention_deferred(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
    """:func:`attention` with the softmax's scale and normalisation moved onto the smaller tensors."""
    # The same function; fewer passes over the [B, heads, Tq, T] scores, forward and backward: 1/sqrt(d) scales
    # q [B, Tq, h, d] rather than the scores, the mask is one additive row per key, and the softmax's division
    # is applied to the attended values [B, Tq, h, d] instead of the weights.
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + jnp.where(key_mask, 0.0, -1e30)[:, None, None, :]
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return out / jnp.moveaxis(weights.sum(axis=-1), 1, 2)[..., None]


ATTENTION = attention_deferred
"""The attention every layer uses. benchmarks/transformer_attention.py (the whole gradient, length 110, on a
loaded 2-core machine): :func:`attention_deferred` 1.36x faster than :func:`attention` at batch 16 (the per-thread
batch of training's 32), 0.88x at batch 128 (noisy; memory-bound there either way)."""


def attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
           score_block: int = SCORE_BLOCK) -> jax.Array:
    """:data:`ATTENTION`, in sequential query chunks when all scores at once would exceed ``score_block``."""
    batch, steps, heads, _ = q.shape
    chunk = max(1, score_block // (batch * heads * k.shape[1]))
    if chunk >= steps:
        return ATTENTION(q, k, v, key_mask)  # training lengths: one block
    # Queries are independent given the keys: equal results, memory bounded by the chunk.
    n = -(-steps // chunk)
    qs = jnp.pad(q, ((0, 0), (0, n * chunk - steps), (0, 0), (0, 0)))
    qs = jnp.moveaxis(qs.reshape(batch, n, chunk, *q.shape[2:]), 1, 0)
    out = jax.lax.map(lambda qc: ATTENTION(qc, k, v, key_mask), qs)
    return jnp.moveaxis(out, 0, 1).reshape(batch, n * chunk, *q.shape[2:])[:, :steps]


class EncoderLayer(nnx.Module):
    """One pre-LN block: ``x + Attention(LN(x))`` then ``+ MLP(LN(x))`` (exact GELU, as torch's), padded keys masked."""

    def __init__(self, hidden: int, heads: int, mlp: int, *, rotary: bool, rngs: nnx.Rngs):
        self.heads = heads
        self.rotary = rotary
        self.norm1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.qkv = nnx.Linear(hidden, 3 * hidden, rngs=rngs)  # fused: one matmul for queries, keys and values
        self.out = nnx.Linear(hidden, hidden, rngs=rngs)
        self.norm2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.up = nnx.Linear(hidden, mlp, rngs=rngs)
        self.down = nnx.Linear(mlp, hidden, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
        """x [B, T, hidden] -> [B, T, hidden]; ``mask`` [B, T] real tokens, ``positions`` [B, T] their offsets."""
        batch, steps, hidden = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)).reshape(batch, steps, 3, self.heads, -1), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        if self.rotary:
            q, k = rotate(q, positions), rotate(k, positions)
        x = x + self.out(attend(q, k, v, mask).reshape(batch, steps, hidden))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x)), approximate=False))


class TransformerClassifier(nnx.Module):
    """Token ids [B, T] + lengths [B] -> logits [B, num_classes] through a pre-LN Transformer encoder."""

    def __init__(self, *, num_classes: int = 4, vocab_size: int = task.VOCAB_SIZE, max_length: int = 512,
                 hidden: int = 64, layers: int = 2, heads: int = 4, mlp: int | float = 1.0,
                 positions: str = "rotary", pool: str = "mean", rngs: nnx.Rngs):
        for what, value in (("num_classes", num_classes), ("vocab_size", vocab_size), ("max_length", max_length),
                            ("hidden", hidden), ("layers", layers), ("heads", heads)):
            _check_positive(what, value)
        _check_choice("positions", positions, POSITIONS)
        _check_choice("pool", pool, POOLS)
        if hidden % heads:
            raise ValueError(f"hidden {hidden} must be a multiple of heads {heads}")
        if positions == "rotary" and (hidden // heads) % 2:
            raise ValueError(f"rotary positions need an even head width; hidden {hidden} / heads {heads} is odd")
        self.hidden, self.layers, self.heads = hidden, layers, heads
        self.positions, self.pool, self.max_length = positions, pool, max_length
        self.num_classes, self.vocab_size = num_classes, vocab_size
        self.embed = nnx.Embed(vocab_size, hidden, rngs=rngs)
        if positions == "learned":
            self.table = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (max_length, hidden)))
        width = mlp_width(mlp, hidden)
        self.blocks = nnx.List([EncoderLayer(hidden, heads, width, rotary=positions == "rotary", rngs=rngs)
                                for _ in range(layers)])
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def state_size(self, length: int) -> int:
        """Floats carried per sequence at ``length``: the KV cache, keys and values of every layer and token."""
        return 2 * self.layers * self.hidden * length

    def encode(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """The pooled representation [B, hidden] of each row's real tokens."""
        ids, mask = layout.right_aligned(jnp.asarray(tokens), jnp.asarray(lengths), padding)
        pos = layout.positions(mask)
        # An id outside [0, vocab_size) embeds as zeros (like the recurrent models' one-hot of nothing).
        x = jnp.where(((ids >= 0) & (ids < self.vocab_size))[..., None], self.embed(ids), 0.0)
        if self.positions == "sinusoidal":
            x = x + sinusoidal(pos, self.hidden)
        elif self.positions == "learned":
            x = x + self.table[...][jnp.minimum(pos, self.max_length - 1)]  # clamped beyond the training length
        for block in self.blocks:
            x = block(x, mask, pos)
        x = self.norm(x)
        if self.pool == "mean":
            count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1).astype(x.dtype)
            return jnp.where(mask[..., None], x, 0.0).sum(axis=1) / count
        # Right-aligned: the last column is every non-empty row's last real token.
        return jnp.where(mask[:, -1:], x[:, -1], 0.0)

    def __call__(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """Logits float32 [B, num_classes] of token ids [B, T] (int) with ``lengths`` [B] real tokens per row."""
        layout.check_padding(padding)  # before jit, so the error names the value
        return _logits(self, jnp.asarray(tokens), jnp.asarray(lengths), padding)


@nnx.jit(static_argnames="padding")
def _logits(model: TransformerClassifier, tokens: jax.Array, lengths: jax.Array, padding: str) -> jax.Array:
    # jitted so that eager calls compile once per shape instead of dispatching op by op; under an outer jit
    # (the training step) it is simply inlined.
    return model.head(model.encode(tokens, lengths, padding))
