"""The Transformer family: its attention mask, its encoder layer against the equations, rotary positions, its
long-sequence chunking, and that it learns."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qrsu_data import task
from qrsu_models import registry, transformer


def _build(**options):
    return registry.get("transformer").build(num_classes=4, max_length=12, seed=0, options=options)


@pytest.mark.parametrize("options", [{"positions": p} for p in transformer.POSITIONS] + [{"pool": "last"}])
def test_padded_tokens_are_masked_out(options):
    model = _build(**options)
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


@pytest.mark.parametrize("rotary", [False, True])
def test_the_encoder_layer_is_pre_ln_attention_and_mlp(rotary):
    layer = transformer.EncoderLayer(16, 4, 24, rotary=rotary, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 16))
    mask = np.arange(7)[None, :] >= np.array([[2], [0]])
    positions = np.where(mask, np.cumsum(mask, axis=1) - 1, 0)
    got = layer(jnp.asarray(x, jnp.float32), jnp.asarray(mask), jnp.asarray(positions))
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


def test_the_fast_and_the_chunked_attention_equal_the_plain_one():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 37, 2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.arange(37)[None, :] >= jnp.array([[5], [0]])
    plain = np.asarray(transformer.attention(q, k, v, mask))
    np.testing.assert_allclose(np.asarray(transformer.attention_deferred(q, k, v, mask)), plain, rtol=1e-5, atol=1e-6)
    chunked = transformer.attend(q, k, v, mask, score_block=2 * 2 * 37 * 8)  # chunks of 8 queries, the last short
    np.testing.assert_allclose(np.asarray(chunked), plain, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(transformer.attention(q, k, v, ~mask)) - plain).max() > 0.1  # the mask matters


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


# That each family learns easy (above 99% test accuracy within 3,200 sequences) is tested through the
# experiment's protocol: tests/test_experiment.py::test_every_family_of_the_grid_learns_easy_through_the_protocol.
