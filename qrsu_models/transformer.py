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

Attention (constructor argument ``attention``; not yet a registry option) is computed one of two ways, the same
function to float rounding:

* ``'dense'``, :func:`attention`: einsums and a masked softmax over the whole [B, heads, T, T] scores, the
  reference (flax's ``nnx.MultiHeadAttention`` has no hook for rotary positions);
* ``'blockwise'``, :func:`blockwise_attention`: queries and keys in blocks of at most 512 x 512, whole
  sequences per block up to 128k scores, an online softmax across key blocks (Milakov & Gimelshein 2018; Rabe &
  Staats 2021), and a hand-written backward pass that recomputes each block's weights from the saved
  log-sum-exp (Dao et al. 2022), so memory is bounded by a block, not by T^2, forward and backward;
* ``'auto'`` (default): :func:`choose_attention`, by measurement.

What made the dense form slow on a 2-core CPU (XLA:CPU runs op by op): each op over the scores is a pass over
memory, 1 GiB per layer at `nightmare` batch 128, so the softmax cost more than both matmuls together. Blocks
that stay in the cache fix that; beyond them (benchmarks/transformer_attention.py, /tmp profiles): the key
mask and the softmax's sum are folded into the products (an extra column of q, k and v: one pass less each);
the backward's correction term is folded into its dO . V^T product the same way; dK and dV are produced
transposed (a product over the weights' rows ran 1.5-2x faster as [d, k] than [k, d]); rotation, scaling and
the [B, heads, T, d] layout are done per chunk inside the loop, in the cache, and their transposes are done by
hand in the backward, instead of whole-batch copies and autodiff's pad/slice chains; the rotary angles are
computed once per forward (sin and cos per layer and per q and k were a sixth of the step); the embedding is a
one-hot product (its gradient a matmul, not a scatter-add). Softmax and products stay float32.
"""

from __future__ import annotations

import dataclasses
import functools
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
ATTENTIONS: tuple[str, ...] = ("auto", "dense", "blockwise")
"""How attention is computed: :func:`attention` (dense), :func:`blockwise_attention`, or chosen by
:func:`choose_attention` (auto). All give the same function, to float rounding."""
ROPE_BASE = 10_000.0
"""The base of the rotary and sinusoidal frequencies (both papers')."""
DENSE_LENGTH = 2048
"""Off a CPU, the longest sequence attended densely (its [B, heads, T, T] scores in memory at once)."""
MASKED = -1e30
"""A padded key's score: its weight underflows to exactly 0, and a row without any real key stays finite."""


@dataclasses.dataclass(frozen=True)
class Blocks:
    """How :func:`blockwise_attention` cuts a pass: blocks of ``queries`` x ``keys`` at most, and as many whole
    sequences per block as keep its scores (all heads) within ``scores``."""

    queries: int = 512
    keys: int = 512
    scores: int = 1 << 17

    def plan(self, batch: int, heads: int, tq: int, tk: int) -> tuple[int, int, int]:
        """(sequences, queries, keys) per block of a pass over ``batch`` x ``heads`` x ``tq`` x ``tk`` scores."""
        bq, bk = max(1, min(self.queries, tq)), max(1, min(self.keys, tk))
        most = max(1, self.scores // (heads * bq * bk))
        even = -(-batch // -(-batch // most))  # chunks as even as they can be
        # A divisor of the batch, if one is nearly as large: then no chunk overlaps another.
        size = next((s for s in range(even, (even + 1) // 2 - 1, -1) if batch % s == 0), even)
        return size, bq, bk


FORWARD_BLOCKS = Blocks()
"""Blocks of the forward pass. Measured (benchmarks/transformer_attention.py --blocks, loaded 2-core CPU, noise
+-30%): 512 x 512 ran the forward at length 5,000 fastest (/tmp sweeps: 87 GFLOP/s against 50-76 for 128 x 512,
256 x 1,024 and 1,024 x 1,024); in training (lengths 110 and 500), blocks of 256 x 256 or whole sequences and 32k
to 1M scores per block were all within the noise of each other, except that chunks of 2-5 sequences at length
110 beat 19 (1.3-1.8x)."""
BACKWARD_BLOCKS = Blocks()
"""Blocks of the backward pass (it recomputes the weights, so its blocks may differ; none measured better)."""


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


def rotation(positions: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), float32 [..., width // 2] each: the rotary angles of integer ``positions`` for heads of ``width``."""
    half = width // 2
    freqs = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freqs
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, positions: jax.Array) -> jax.Array:
    """``x`` [B, T, heads, d] rotated by ``positions`` [B, T] (rotary, halves paired as in GPT-NeoX)."""
    cos, sin = rotation(positions, x.shape[-1])
    return _rotate(x, cos[:, :, None], sin[:, :, None])


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    # x [..., d] rotated by angles given as cos, sin [..., d // 2] (broadcast against x's leading axes).
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * half:]], axis=-1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
    """Softmax attention [B, Tq, heads, d] of q [B, Tq, h, d] over k, v [B, T, h, d], keys where ``key_mask``."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    # A finite minimum, not -inf: a masked key's weight underflows to exactly 0, and a row with no real key
    # gives finite numbers instead of NaN.
    scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                        forward: Blocks = FORWARD_BLOCKS, backward: Blocks = BACKWARD_BLOCKS) -> jax.Array:
    """:func:`attention`, computed block by block: no more than a block's scores exist at once."""
    return _blockwise(jnp.stack([q, k, v], axis=2), _key_bias(key_mask, q.dtype), None, forward, backward)


def attend(qkv: jax.Array, key_mask: jax.Array, rotation: tuple[jax.Array, jax.Array] | None = None,
           method: str = "blockwise") -> jax.Array:
    """Attention [B, T, heads, d] of qkv [B, T, 3, heads, d] (queries and keys rotated by ``rotation``, if any)."""
    if method == "dense":
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if rotation is not None:
            cos, sin = (a[:, :, None] for a in rotation)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        return attention(q, k, v, key_mask)
    _check_choice("method", method, ("dense", "blockwise"))
    return _blockwise(qkv, _key_bias(key_mask, qkv.dtype), rotation, FORWARD_BLOCKS, BACKWARD_BLOCKS)


def choose_attention(length: int, platform: str | None = None) -> str:
    """The faster attention method, by measurement, for sequences of ``length`` on ``platform`` (default: JAX's)."""
    # benchmarks/transformer_attention.py on the 2-core CPU (loaded; ms of the loss gradient, 2 concurrent
    # threads of a batch each, as the training step runs them), dense / blockwise:
    #   length           8     40     80    110    500
    #   batch 16 x 2   1.06   0.90   1.02   1.69   2.20
    #   batch 128 x 2  1.02   1.00   1.16   1.45   3.01
    # and the forward at 1,000 and 2,000 (batch 8) 1.5-2.0x; dense cannot hold 5,000 in memory at any useful
    # batch. Equal (within noise) up to 80, blockwise faster beyond: blockwise on a CPU throughout.
    platform = platform or jax.default_backend()
    if platform == "cpu":
        return "blockwise"
    # Not measured off a CPU: XLA fuses the dense form well on accelerators; blockwise bounds memory at length.
    return "dense" if length <= DENSE_LENGTH else "blockwise"


def _key_bias(key_mask: jax.Array, dtype) -> jax.Array:
    # 0 for a real key, MASKED for a padded one: added to its score.
    return jnp.where(key_mask, 0.0, MASKED).astype(dtype)


def _loop(body, carry, xs):
    # lax.scan over xs's leading axis; a single iteration is called directly (no loop to run op by op).
    if jax.tree.leaves(xs)[0].shape[0] == 1:
        carry, y = body(carry, jax.tree.map(lambda x: x[0], xs))
        return carry, jax.tree.map(lambda x: x[None], y)
    return jax.lax.scan(body, carry, xs)


def _blocks(x: jax.Array, size: int, axis: int) -> jax.Array:
    # ``axis`` cut into blocks of ``size`` (zero-padded), the block index moved first.
    n = -(-x.shape[axis] // size)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n * size - x.shape[axis])
    x = jnp.pad(x, pad)
    return jnp.moveaxis(x.reshape(*x.shape[:axis], n, size, *x.shape[axis + 1:]), axis, 0)


def _unblocks(x: jax.Array, axis: int, length: int) -> jax.Array:
    # The inverse of _blocks: blocks [n, ...] put back along ``axis``, cut to ``length``.
    x = jnp.moveaxis(x, 0, axis)
    return jax.lax.slice_in_dim(x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:]), 0, length, axis=axis)


def _chunk(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
    # Sequences start .. start + size of x (axis 0).
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _over_chunks(fn, batch: int, size: int, shapes: tuple) -> tuple:
    # fn(start) (a tuple of [size, ...]) for every chunk of ``size`` sequences, in sequence, joined into arrays of
    # ``shapes`` [batch, ...]. Chunks that divide the batch are stacked (no copy); otherwise the last chunk
    # starts at batch - size, overlapping the one before rather than padding the batch: attention is per
    # sequence, so a sequence computed twice gets the same values twice.
    n = -(-batch // size)
    if n == 1:
        return fn(0)
    if batch % size == 0:
        _, ys = jax.lax.scan(lambda _, i: (None, fn(i * size)), None, jnp.arange(n))
        return tuple(y.reshape(batch, *y.shape[2:]) for y in ys)

    def body(i, bufs):
        start = jnp.minimum(i * size, batch - size)
        return tuple(jax.lax.dynamic_update_slice_in_dim(b, r, start, axis=0) for b, r in zip(bufs, fn(start)))

    return jax.lax.fori_loop(0, n, body, tuple(jnp.zeros(s.shape, s.dtype) for s in shapes))


def _prepare(qkv, bias, rotation, start, size: int, bk: int):
    # Chunk ``start`` of qkv [B, T, 3, h, d] as the augmented blocks' inputs [c, h, T, d + 1]: queries and keys
    # rotated, queries scaled by 1/sqrt(d), heads as a batch axis. Done per chunk, in the cache, so no
    # rearranged copy of the whole batch is ever made.
    x = _chunk(qkv, start, size)
    q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    if rotation is not None:
        cos, sin = (_chunk(a, start, size)[:, :, None] for a in rotation)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    return _augment(q, k, v, _chunk(bias, start, size), bk)


def _augment(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, bk: int):
    # One extra column each, so that two whole passes over every score block become part of the products:
    # q.1 + k.bias adds the key mask inside q . k, and the last column of p . [v, 1] is the softmax's sum.
    # Keys are padded to whole blocks of ``bk``, masked; a padded query (zeros) is computed and dropped.
    pad = -k.shape[2] % bk
    bias = jnp.pad(bias, ((0, 0), (0, pad)), constant_values=MASKED)
    k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (k, v))
    return (jnp.concatenate([q, jnp.ones_like(q[..., :1])], -1),
            jnp.concatenate([k, jnp.broadcast_to(bias[:, None, :, None], k.shape[:-1] + (1,))], -1),
            jnp.concatenate([v, jnp.ones_like(v[..., :1])], -1))


def _chunk_forward(qa: jax.Array, ka: jax.Array, va: jax.Array, bq: int, bk: int):
    # (out, logsumexp) of a chunk of sequences, augmented [c, h, T, d + 1], by query and key blocks with an
    # online softmax (Milakov & Gimelshein 2018; Rabe & Staats 2021; Dao et al. 2022).
    d = qa.shape[-1] - 1
    kb, vb = _blocks(ka, bk, 2), _blocks(va, bk, 2)

    def query_block(_, qi):
        if kb.shape[0] == 1:  # every key in one block: a plain softmax
            s = jnp.einsum("chqd,chkd->chqk", qi, kb[0])
            m = s.max(-1, keepdims=True)
            acc = jnp.einsum("chqk,chkd->chqd", jnp.exp(s - m), vb[0])
        else:
            def key_block(carry, kv):
                m, acc = carry
                s = jnp.einsum("chqd,chkd->chqk", qi, kv[0])
                new = jnp.maximum(m, s.max(-1, keepdims=True))
                return (new, acc * jnp.exp(m - new) + jnp.einsum("chqk,chkd->chqd", jnp.exp(s - new), kv[1])), None

            (m, acc), _ = _loop(key_block, (jnp.full(qi.shape[:-1] + (1,), -jnp.inf, qi.dtype),
                                            jnp.zeros_like(qi)), (kb, vb))
        total = acc[..., d:]
        return None, (acc[..., :d] / total, m + jnp.log(total))

    _, (out, lse) = _loop(query_block, None, _blocks(qa, bq, 2))
    return _unblocks(out, 2, qa.shape[2]), _unblocks(lse, 2, qa.shape[2])


def _chunk_backward(qa, ka, va, out, lse, dout, bq: int, bk: int):
    # (dq, dk, dv) of a chunk, recomputing each block's weights from the saved logsumexp (Dao et al. 2022).
    d = qa.shape[-1] - 1
    # [dout, -delta] . [v, 1] = dout . v - delta: the softmax's backward correction folded into the product.
    da = jnp.concatenate([dout, -(dout * out).sum(-1, keepdims=True)], -1)
    kb, vb = _blocks(ka, bk, 2), _blocks(va, bk, 2)

    def query_block(carry, xs):
        qi, lsei, dai = xs

        def key_block(dq, kv):
            kj, vj = kv
            p = jnp.exp(jnp.einsum("chqd,chkd->chqk", qi, kj) - lsei)
            ds = p * jnp.einsum("chqd,chkd->chqk", dai, vj)
            # dk and dv transposed, [c, h, d, k]: a product over the weights' rows measured 1.5-2x faster in
            # this order than as [c, h, k, d].
            return (dq + jnp.einsum("chqk,chkd->chqd", ds, kj[..., :d]),
                    (jnp.einsum("chqd,chqk->chdk", qi[..., :d], ds), jnp.einsum("chqd,chqk->chdk", dai[..., :d], p)))

        dq, (dk, dv) = _loop(key_block, jnp.zeros_like(qi[..., :d]), (kb, vb))
        return (carry[0] + _unblocks(dk, 3, ka.shape[2]), carry[1] + _unblocks(dv, 3, ka.shape[2])), dq

    zeros = jnp.zeros((*ka.shape[:2], d, ka.shape[2]), ka.dtype)
    (dk, dv), dq = _loop(query_block, (zeros, zeros), tuple(_blocks(x, bq, 2) for x in (qa, lse, da)))
    return _unblocks(dq, 2, qa.shape[2]), jnp.swapaxes(dk, 2, 3), jnp.swapaxes(dv, 2, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _blockwise(qkv, bias, rotation, forward: Blocks, backward: Blocks) -> jax.Array:
    # qkv [B, T, 3, h, d] (queries and keys not yet rotated), bias [B, T] (0 or MASKED per key), rotation
    # (cos, sin) [B, T, d / 2] or None -> out [B, T, h, d].
    return _blockwise_forward(qkv, bias, rotation, forward, backward)[0]


def _blockwise_forward(qkv, bias, rotation, forward: Blocks, backward: Blocks):
    batch, steps, _, heads, d = qkv.shape
    size, bq, bk = forward.plan(batch, heads, steps, steps)

    def chunk(start):
        out, lse = _chunk_forward(*_prepare(qkv, bias, rotation, start, size, bk), bq, bk)
        return jnp.swapaxes(out, 1, 2), lse

    out, lse = _over_chunks(chunk, batch, size, (jax.ShapeDtypeStruct((batch, steps, heads, d), qkv.dtype),
                                                 jax.ShapeDtypeStruct((batch, heads, steps, 1), qkv.dtype)))
    return out, (qkv, bias, rotation, out, lse)


def _blockwise_backward(forward: Blocks, backward: Blocks, saved, dout):
    qkv, bias, rotation, out, lse = saved
    batch, steps, _, heads, d = qkv.shape
    size, bq, bk = backward.plan(batch, heads, steps, steps)

    def chunk(start):
        o, g = (jnp.swapaxes(_chunk(a, start, size), 1, 2) for a in (out, dout))
        dq, dk, dv = (jnp.swapaxes(a[:, :, :steps], 1, 2) for a in _chunk_backward(  # keys: block-padded
            *_prepare(qkv, bias, rotation, start, size, bk), o, _chunk(lse, start, size), g, bq, bk))
        dq = dq * (1.0 / math.sqrt(d))
        if rotation is not None:  # a rotation's transpose turns the other way
            cos, sin = (_chunk(a, start, size)[:, :, None] for a in rotation)
            dq, dk = _rotate(dq, cos, -sin), _rotate(dk, cos, -sin)
        return (jnp.stack([dq, dk, dv], axis=2),)

    (dqkv,) = _over_chunks(chunk, batch, size, (jax.ShapeDtypeStruct(qkv.shape, qkv.dtype),))
    # Neither the mask nor the positions are trained.
    return dqkv, jnp.zeros_like(bias), jax.tree.map(jnp.zeros_like, rotation)


_blockwise.defvjp(_blockwise_forward, _blockwise_backward)


class EncoderLayer(nnx.Module):
    """One pre-LN block: ``x + Attention(LN(x))`` then ``+ MLP(LN(x))`` (exact GELU, as torch's), padded keys masked."""

    def __init__(self, hidden: int, heads: int, mlp: int, *, rotary: bool, rngs: nnx.Rngs,
                 attention: str = "auto"):
        _check_choice("attention", attention, ATTENTIONS)
        self.heads = heads
        self.rotary = rotary
        self.attention = attention
        self.norm1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.qkv = nnx.Linear(hidden, 3 * hidden, rngs=rngs)  # fused: one matmul for queries, keys and values
        self.out = nnx.Linear(hidden, hidden, rngs=rngs)
        self.norm2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.up = nnx.Linear(hidden, mlp, rngs=rngs)
        self.down = nnx.Linear(mlp, hidden, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, rotation: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        """x [B, T, hidden] -> [B, T, hidden]; ``mask`` [B, T] real tokens; ``rotation`` (cos, sin) [B, T, d / 2]
        of each token's rotary angles (:func:`rotation`), None without rotary positions."""
        batch, steps, hidden = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, steps, 3, self.heads, -1)
        method = choose_attention(steps) if self.attention == "auto" else self.attention
        x = x + self.out(attend(qkv, mask, rotation if self.rotary else None, method).reshape(batch, steps, hidden))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x)), approximate=False))


class TransformerClassifier(nnx.Module):
    """Token ids [B, T] + lengths [B] -> logits [B, num_classes] through a pre-LN Transformer encoder."""

    def __init__(self, *, num_classes: int = 4, vocab_size: int = task.VOCAB_SIZE, max_length: int = 512,
                 hidden: int = 64, layers: int = 2, heads: int = 4, mlp: int | float = 1.0,
                 positions: str = "rotary", pool: str = "mean", attention: str = "auto", rngs: nnx.Rngs):
        for what, value in (("num_classes", num_classes), ("vocab_size", vocab_size), ("max_length", max_length),
                            ("hidden", hidden), ("layers", layers), ("heads", heads)):
            _check_positive(what, value)
        _check_choice("positions", positions, POSITIONS)
        _check_choice("pool", pool, POOLS)
        _check_choice("attention", attention, ATTENTIONS)
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
        self.blocks = nnx.List([EncoderLayer(hidden, heads, width, rotary=positions == "rotary", rngs=rngs,
                                             attention=attention)
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
        # The one-hot product rather than a gather: its gradient is a matmul, not a scatter-add of every token
        # (slow on a CPU). An id outside [0, vocab_size) has no one and embeds as zeros (like the recurrent
        # models' one-hot of nothing).
        x = jax.nn.one_hot(ids, self.vocab_size, dtype=jnp.float32) @ self.embed.embedding[...]
        if self.positions == "sinusoidal":
            x = x + sinusoidal(pos, self.hidden)
        elif self.positions == "learned":
            x = x + self.table[...][jnp.minimum(pos, self.max_length - 1)]  # clamped beyond the training length
        rot = None
        if self.positions == "rotary":
            # Every position's angles once (a row's positions are 0..T-1 at most), gathered per token: sin and
            # cos are costly, and computed per layer they were a sixth of the training step.
            cos, sin = rotation(jnp.arange(mask.shape[1]), self.hidden // self.heads)
            rot = cos[pos], sin[pos]
        for block in self.blocks:
            x = block(x, mask, rot)
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
