"""The Transformer family: its attention mask, its encoder layer against the equations, rotary positions, every
attention method against the dense one (values and gradients, padded), and the blockwise one's bounded memory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qrsu_data import task
from qrsu_models import registry, transformer


def _build(attention="auto", **options):
    model = registry.get("transformer").build(num_classes=4, max_length=12, seed=0, options=options)
    for block in model.blocks:
        block.attention = attention  # not a registry option: the method is the model's own business
    return model


@pytest.mark.parametrize(("options", "attention"), [({"positions": p}, "blockwise") for p in transformer.POSITIONS]
                         + [({"pool": "last"}, "blockwise"), ({}, "dense")])
def test_padded_tokens_are_masked_out(options, attention):
    model = _build(attention, **options)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, task.VOCAB_SIZE, (3, 10)).astype(np.int32)
    lengths = np.array([4, 7, 10], np.int32)
    reference = np.asarray(model(jnp.asarray(tokens), jnp.asarray(lengths)))
    changed = tokens.copy()
    changed[0, :6] = (changed[0, :6] + 3) % task.VOCAB_SIZE  # row 0's padding, pre-padded
    changed[1, :3] = (changed[1, :3] + 1) % task.VOCAB_SIZE
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(changed), jnp.asarray(lengths))), reference,
                               rtol=1e-5, atol=1e-5)
    wider = np.concatenate([rng.integers(0, task.VOCAB_SIZE, (3, 25)).astype(np.int32), tokens], axis=1)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(wider), jnp.asarray(lengths))), reference,
                               rtol=1e-5, atol=1e-5)
    # The mask is what makes this so: a real token changed does change the logits.
    real = tokens.copy()
    real[0, 7] = (real[0, 7] + 1) % task.VOCAB_SIZE
    assert np.abs(np.asarray(model(jnp.asarray(real), jnp.asarray(lengths)))[0] - reference[0]).max() > 1e-4


def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _rotary_reference(x, positions):
    """Su et al.'s rotation as complex multiplication: pair (i, i + d/2) is x_i + j x_{i+d/2}, times e^{j m theta_i}."""
    half = x.shape[-1] // 2
    theta = transformer.ROPE_BASE ** (-np.arange(half) / half)
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * positions[:, :, None, None] * theta)
    return np.concatenate([z.real, z.imag], axis=-1)


def _reference_layer(layer, x, mask, positions, rotary):
    """Pre-LN attention + MLP from the equations, in float64 numpy, with the layer's parameters."""
    p = {k: np.asarray(v, np.float64) for k, v in nnx.to_flat_state(nnx.state(layer, nnx.Param))
         for k, v in [(".".join(map(str, k)), v.get_value())]}
    heads = layer.heads
    b, t, h = x.shape
    d = h // heads
    y = _layer_norm(x, p["norm1.scale"], p["norm1.bias"])
    qkv = y @ p["qkv.kernel"] + p["qkv.bias"]
    q, k, v = (qkv[..., i * h:(i + 1) * h].reshape(b, t, heads, d) for i in range(3))
    if rotary:
        q, k = _rotary_reference(q, positions), _rotary_reference(k, positions)
    out = np.zeros((b, t, heads, d))
    for bi in range(b):
        for hi in range(heads):
            s = q[bi, :, hi] @ k[bi, :, hi].T / math.sqrt(d)
            s = np.where(mask[bi][None, :], s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[bi, :, hi] = w @ v[bi, :, hi]
    x = x + out.reshape(b, t, h) @ p["out.kernel"] + p["out.bias"]
    y = _layer_norm(x, p["norm2.scale"], p["norm2.bias"])
    u = y @ p["up.kernel"] + p["up.bias"]
    gelu = 0.5 * u * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))
    return x + gelu @ p["down.kernel"] + p["down.bias"]


@pytest.mark.parametrize("attention", ["dense", "blockwise"])
@pytest.mark.parametrize("rotary", [False, True])
def test_the_encoder_layer_is_pre_ln_attention_and_mlp(rotary, attention):
    layer = transformer.EncoderLayer(16, 4, 24, rotary=rotary, rngs=nnx.Rngs(3), attention=attention)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 16))
    mask = np.arange(7)[None, :] >= np.array([[2], [0]])
    positions = np.where(mask, np.cumsum(mask, axis=1) - 1, 0)
    rotation = transformer.rotation(jnp.asarray(positions), 4) if rotary else None
    got = nnx.jit(lambda m, *a: m(*a))(layer, jnp.asarray(x, jnp.float32), jnp.asarray(mask), rotation)
    want = _reference_layer(layer, x, mask, positions, rotary)
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], rtol=2e-4, atol=2e-4)


def test_rotary_scores_depend_on_relative_positions_only():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(1, 9, 2, 8)), jnp.float32) for _ in range(2))
    pos = jnp.arange(9)[None, :]

    def scores(shift):
        return jnp.einsum("bqhd,bkhd->bhqk", transformer.rotate(q, pos + shift), transformer.rotate(k, pos + shift))

    np.testing.assert_allclose(np.asarray(scores(1000)), np.asarray(scores(0)), rtol=1e-3, atol=1e-3)
    assert np.abs(np.asarray(scores(0)) - np.einsum("bqhd,bkhd->bhqk", q, k)).max() > 0.1  # it does rotate
    np.testing.assert_allclose(np.asarray(transformer.rotate(q, pos)),
                               _rotary_reference(np.asarray(q), np.asarray(pos)), rtol=1e-5, atol=1e-5)


BLOCKINGS = [
    (transformer.FORWARD_BLOCKS, transformer.BACKWARD_BLOCKS),  # the defaults: one block per chunk here
    (transformer.Blocks(8, 8, 1), transformer.Blocks(16, 8, 1)),  # a sequence per chunk, the last blocks short
    (transformer.Blocks(16, 8, 2 * 16 * 8 * 2), transformer.Blocks(8, 16, 2 * 8 * 16 * 3)),  # overlapping chunks
]


@pytest.mark.parametrize(("blocks", "rotary"), [(0, True), (1, False), (2, True)])
def test_every_attention_method_equals_the_dense_one_in_values_and_gradients(blocks, rotary, monkeypatch):
    monkeypatch.setattr(transformer, "FORWARD_BLOCKS", BLOCKINGS[blocks][0])
    monkeypatch.setattr(transformer, "BACKWARD_BLOCKS", BLOCKINGS[blocks][1])
    rng = np.random.default_rng(blocks)
    batch, steps, heads, d = 5, 37, 2, 8
    qkv = jnp.asarray(rng.normal(size=(batch, steps, 3, heads, d)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(batch, steps, heads, d)), jnp.float32)
    lengths = np.array([37, 20, 0, 1, 30])  # row 2 has no real token at all, row 3 one
    mask = jnp.asarray(np.arange(steps)[None, :] >= steps - lengths[:, None])
    rotation = transformer.rotation(jnp.where(mask, jnp.cumsum(mask, axis=1) - 1, 0), d) if rotary else None
    # Only real queries count (a padded query's output is never read), and only real rows' gradients.
    real = mask[..., None, None]

    def loss(x, method):
        return (jnp.where(real, transformer.attend(x, mask, rotation, method), 0.0) * weights).sum()

    gradient = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    attend = jax.jit(transformer.attend, static_argnums=3)
    want, want_grad = gradient(qkv, "dense")
    want_out = np.asarray(attend(qkv, mask, rotation, "dense"))[np.asarray(mask)]
    for method in transformer.ATTENTIONS[1:]:
        got, grad = gradient(qkv, method)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-4, atol=2e-6)
        out = np.asarray(attend(qkv, mask, rotation, method))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out[np.asarray(mask)], want_out, rtol=1e-5, atol=2e-6)
    # The mask is what makes the padded keys irrelevant: unmasked, they change the result.
    unmasked = attend(qkv, jnp.ones_like(mask), rotation, "blockwise")
    assert abs(float(want) - float((jnp.where(real, unmasked, 0.0) * weights).sum())) > 1e-2


def test_blockwise_attention_takes_the_plain_arguments():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 37, 2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.arange(37)[None, :] >= jnp.array([[5], [0]])
    plain = np.asarray(transformer.attention(q, k, v, mask))
    blockwise = jax.jit(transformer.blockwise_attention)(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(blockwise), plain, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(transformer.attention(q, k, v, ~mask)) - plain).max() > 0.1  # the mask matters


def test_blockwise_memory_is_bounded_by_its_blocks_not_the_squared_length():
    steps, heads, d = 4096, 4, 16
    x = jax.ShapeDtypeStruct((1, steps, 3, heads, d), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, steps), jnp.bool_)

    def temp(method):
        fn = jax.jit(lambda a, m: transformer.attend(a, m, None, method))
        return fn.lower(x, mask).compile().memory_analysis().temp_size_in_bytes

    scores = heads * steps * steps * 4  # 256 MiB of float32 scores, were they all held at once
    assert temp("dense") > scores  # what the bound is against
    blocks = transformer.FORWARD_BLOCKS
    block_bytes = 4 * max(blocks.scores, heads * blocks.queries * blocks.keys)
    assert temp("blockwise") < 4 * block_bytes + 64 * steps * 3 * heads * d


def test_blocks_plan_whole_sequences_up_to_their_budget():
    blocks = transformer.Blocks(queries=512, keys=512, scores=1 << 18)
    assert blocks.plan(128, 4, 110, 110) == (4, 110, 110)  # a divisor of the batch rather than 5
    assert blocks.plan(127, 4, 110, 110) == (5, 110, 110)  # none near: 26 chunks, the last overlapping
    assert blocks.plan(128, 4, 501, 501) == (1, 501, 501)
    assert blocks.plan(8, 4, 5000, 5000) == (1, 512, 512)
    assert blocks.plan(3, 4, 2, 2) == (3, 2, 2)


def test_learned_positions_are_clamped_beyond_the_table():
    model = _build(positions="learned")  # a table of 12 positions
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, task.VOCAB_SIZE, (1, 40)), jnp.int32)
    logits = np.asarray(model(tokens, jnp.array([40])))
    assert np.isfinite(logits).all()


def test_sizes_and_bad_options():
    model = _build()
    assert registry.state_size(model, 110) == 2 * 2 * 64 * 110
    hidden, mlp = 64, 64
    per_layer = 4 * hidden + (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden) + (
        hidden * mlp + mlp) + (mlp * hidden + hidden)
    assert registry.parameter_count(model) == task.VOCAB_SIZE * hidden + 2 * per_layer + 2 * hidden + hidden * 4 + 4
    assert registry.parameter_count(_build(positions="learned")) == registry.parameter_count(model) + 12 * hidden
    with pytest.raises(ValueError, match="unknown positions 'alibi'; choose one of: rotary, sinusoidal, learned"):
        _build(positions="alibi")
    with pytest.raises(ValueError, match="unknown pool 'max'; choose one of: mean, last"):
        _build(pool="max")
    with pytest.raises(ValueError, match="hidden 64 must be a multiple of heads 5"):
        _build(heads=5)
    with pytest.raises(ValueError, match="unknown attention 'flash'; choose one of: auto, dense, blockwise"):
        transformer.TransformerClassifier(attention="flash", rngs=nnx.Rngs(0))


# That each family learns easy (above 99% test accuracy within 3,200 sequences) is tested through the
# experiment's protocol: tests/test_experiment.py::test_every_family_of_the_grid_learns_easy_through_the_protocol.
