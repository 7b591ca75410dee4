"""The 1997 LSTM: weight counts, the forward pass against the paper's equations, the truncation, padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qrsu_data import task
from qrsu_models import layout, lstm1997


def _params(seed, blocks, num_classes, scale=1.0):
    """Random parameters with larger weights than the paper's init and open gates, so every nonlinearity and
    every path is exercised."""
    return lstm1997.init_params(jax.random.key(seed), blocks=blocks, num_classes=num_classes,
                                gate_biases=(0.0,) * blocks, init_range=scale)


def _batch(level, n, seed):
    b = task.generate(level, n, np.random.default_rng(seed))
    return jnp.asarray(b.tokens.astype(np.int32)), jnp.asarray(b.lengths), jnp.asarray(b.labels)


# ------------------------------------------------------------------------------------------- weights

@pytest.mark.parametrize("num_classes, weights", [(4, 156), (8, 308)])
def test_weight_counts_match_the_paper(num_classes, weights):
    model = lstm1997.LSTM1997(num_classes=num_classes, rngs=nnx.Rngs(0))
    assert lstm1997.num_weights(model.params()) == weights
    # Every parameter of the module is one of those weights.
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == weights
    assert model.blocks == (2 if num_classes == 4 else 3) and model.hidden == 2 * model.blocks


def test_initialisation_is_the_papers():
    p = lstm1997.init_params(jax.random.key(3), blocks=3, num_classes=8)
    cells = 6
    b = np.asarray(p["b"])
    np.testing.assert_array_equal(b[cells:cells + 3], [-2.0, -4.0, -6.0])  # the input gates
    others = np.concatenate([b[:cells], b[cells + 3:], *[np.ravel(p[k]) for k in ("w_x", "w_y", "w_o", "b_o")]])
    assert np.all(np.abs(others) <= 0.1) and np.abs(others).max() > 0.09
    out = lstm1997.init_params(jax.random.key(3), blocks=3, num_classes=8, biased_gate="output")
    np.testing.assert_array_equal(np.asarray(out["b"])[cells + 3:], [-2.0, -4.0, -6.0])  # the output gates
    assert np.all(np.abs(np.asarray(out["b"])[cells:cells + 3]) <= 0.1)


def test_module_same_seed_same_model_and_interface():
    a = lstm1997.LSTM1997(num_classes=4, rngs=nnx.Rngs(7))
    b = lstm1997.LSTM1997(num_classes=4, rngs=nnx.Rngs(7))
    c = lstm1997.LSTM1997(num_classes=4, rngs=nnx.Rngs(8))
    for k, v in a.params().items():
        np.testing.assert_array_equal(v, b.params()[k])
    assert not np.array_equal(a.params()["w_y"], c.params()["w_y"])
    tokens, lengths, _ = _batch("hard", 3, 0)
    logits = a(tokens, lengths, "post")
    assert logits.shape == (3, 4) and logits.dtype == jnp.float32
    assert a.state_size(110) == 12 and lstm1997.LSTM1997(num_classes=8, rngs=nnx.Rngs(0)).state_size(5) == 18
    assert lstm1997.LSTM1997(num_classes=4, hidden=6, rngs=nnx.Rngs(0)).blocks == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden=5), "multiple of cells_per_block"),
    (dict(hidden=0), "hidden must be"),
    (dict(gradient="rtrl"), "unknown gradient 'rtrl'; choose one of: truncated, full"),
    (dict(biased_gate="forget"), "unknown biased_gate 'forget'; choose one of: input, output"),
    (dict(gate_biases=(-1.0,)), "one value per block"),
    (dict(num_classes=0), "num_classes must be"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lstm1997.LSTM1997(**{"num_classes": 4, **kwargs}, rngs=nnx.Rngs(0))


def test_bad_padding_names_the_choices():
    model = lstm1997.LSTM1997(num_classes=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown padding 'left'"):
        model(jnp.zeros((1, 3), jnp.int32), jnp.array([3]), "left")


# ------------------------------------------------------------------------- the paper's equations

def _numpy_transcription(params, tokens, blocks, cpb=2):
    """The paper's forward equations, step by step and unit by unit, for one unpadded sequence."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    f = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731 - the logistic sigmoid
    g = lambda x: 4.0 * f(x) - 2.0  # noqa: E731
    h = lambda x: 2.0 * f(x) - 1.0  # noqa: E731
    cells = blocks * cpb
    n_units = cells + 2 * blocks
    y = np.zeros(n_units)  # y(t-1): every cell's and gate's activation, 0 at the start
    s = np.zeros(cells)  # s_c(0) = 0
    for token in tokens:
        x = np.zeros(p["w_x"].shape[0])
        x[token] = 1.0
        net = [sum(p["w_x"][m, u] * x[m] for m in range(len(x))) + sum(p["w_y"][m, u] * y[m] for m in range(n_units))
               + p["b"][u] for u in range(n_units)]
        y_new = np.zeros(n_units)
        for b in range(blocks):
            y_in = f(net[cells + b])
            y_out = f(net[cells + blocks + b])
            y_new[cells + b], y_new[cells + blocks + b] = y_in, y_out
            for j in range(cpb):
                c = b * cpb + j
                s[c] = s[c] + y_in * g(net[c])
                y_new[c] = y_out * h(s[c])
        y = y_new
    out_net = [sum(p["w_o"][c, k] * y[c] for c in range(cells)) + p["b_o"][k] for k in range(p["w_o"].shape[1])]
    return np.array(out_net), y, s


@pytest.mark.parametrize("blocks, num_classes, level", [(2, 4, "normal"), (3, 8, "exp6b")])
def test_forward_matches_a_numpy_transcription_of_the_paper(blocks, num_classes, level):
    params = _params(1, blocks, num_classes, scale=3.0)
    tokens, lengths, _ = _batch(level, 3, 2)
    ids, mask = layout.right_aligned(tokens, lengths, "post")
    logits = lstm1997.apply(params, tokens, lengths, "post")
    for i in range(3):
        seq = np.asarray(tokens[i, :int(lengths[i])])
        want_logits, want_y, want_s = _numpy_transcription(params, seq, blocks)
        np.testing.assert_allclose(logits[i], want_logits, rtol=1e-4, atol=1e-4)
        y, s = lstm1997.final_state(params, ids[i], mask[i])
        np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s, want_s, rtol=1e-4, atol=1e-4)
    # The state really moved (a transcription bug that left it at zero would match a broken model too).
    assert np.abs(want_s).max() > 0.5


# ------------------------------------------------------------------------------------ truncation

def _squared(logits, label):
    return lstm1997.squared_error(logits, label)


def _cross_entropy(logits, label):
    return -jax.nn.log_softmax(logits)[label]


@functools.partial(jax.jit, static_argnames=("loss", "gradient"))
def _autodiff(params, ids, mask, labels, *, loss, gradient, squash=lstm1997.SQUASH):
    """(loss, logits, grads) of every sequence of a right-aligned batch, by autodiff."""
    one = lambda i, m, y: lstm1997.loss_and_grad(params, i, m, lambda lg: loss(lg, y), gradient, squash)  # noqa: E731
    return jax.vmap(one)(ids, mask, labels)


@functools.partial(jax.jit, static_argnames=("loss", "squash"))
def _rtrl(params, ids, mask, labels, *, loss, squash=lstm1997.SQUASH):
    one = lambda i, m, y: lstm1997.truncated_loss_and_grad_rtrl(  # noqa: E731
        params, i, m, lambda lg: loss(lg, y), squash)
    return jax.vmap(one)(ids, mask, labels)


def _cut_by_construction(params, ids, mask, label):
    """The loss's gradient with every y(t-1) that enters a net input fed in as a constant (recorded from a plain
    forward pass): jax.grad sees no path through y(t-1) at all, only through the cell states s_c."""
    blocks, cpb = lstm1997.sizes(params)
    cells = blocks * cpb
    ys, y, s = [], np.zeros(params["w_y"].shape[0], np.float32), np.zeros(cells, np.float32)
    for t in range(len(ids)):
        ys.append(y)
        if mask[t]:
            net = params["w_x"][ids[t]] + y @ params["w_y"] + params["b"]
            y_new, s_new, _ = lstm1997._activate(net, s, blocks, cpb)
            y, s = np.asarray(y_new), np.asarray(s_new)

    def loss(p, ys):
        s, y = jnp.zeros(cells), None
        for t in range(len(ids)):
            if mask[t]:
                net = p["w_x"][ids[t]] + ys[t] @ p["w_y"] + p["b"]  # ys[t]: an input, not a function of p
                y, s, _ = lstm1997._activate(net, s, blocks, cpb)
        return lstm1997.squared_error(lstm1997.output_logits(p, y), label)

    return jax.jit(jax.grad(loss))(params, np.stack(ys))


@pytest.mark.slow
def test_truncated_gradient_sends_no_error_through_the_previous_activations():
    params = _params(4, 2, 4, scale=2.0)
    tokens, lengths, labels = _batch("easy", 2, 5)
    ids, mask = layout.right_aligned(jnp.pad(tokens, ((0, 0), (0, 2)), constant_values=255), lengths, "post")
    _, _, truncated = _autodiff(params, ids, mask, labels, loss=_squared, gradient="truncated")
    _, _, full = _autodiff(params, ids, mask, labels, loss=_squared, gradient="full")
    # One sequence (with padded steps) is enough; each one compiles its own unrolled loss.
    cut = _cut_by_construction(params, np.asarray(ids[0]), np.asarray(mask[0]), labels[0])
    for k in params:
        np.testing.assert_allclose(truncated[k][0], cut[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # Full BPTT is a different gradient: the test would notice a truncation that cut nothing.
    assert max(float(jnp.abs(full[k] - truncated[k]).max()) for k in ("w_x", "w_y", "b")) > 1e-3


@pytest.mark.parametrize("blocks, num_classes, level, loss", [(2, 4, "hard", _squared),
                                                              (3, 8, "exp6b", _cross_entropy)])
@pytest.mark.slow
def test_forward_partials_equal_the_autodiff_truncated_gradient(blocks, num_classes, level, loss):
    params = _params(8, blocks, num_classes, scale=2.0)
    tokens, lengths, labels = _batch(level, 4, 9)
    ids, mask = layout.right_aligned(tokens, lengths, "post")
    l1, lg1, g1 = _autodiff(params, ids, mask, labels, loss=loss, gradient="truncated")
    l2, lg2, g2 = _rtrl(params, ids, mask, labels, loss=loss)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    np.testing.assert_allclose(lg2, lg1, rtol=1e-5, atol=1e-6)
    for k in params:
        scale = float(jnp.abs(g1[k]).max())
        assert scale > 0, k
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-3, atol=1e-5 * max(scale, 1.0), err_msg=k)


def test_the_table_10_reading_swaps_the_ranges_of_g_and_h_in_both_gradients():
    params = _params(8, 2, 4, scale=2.0)
    tokens, lengths, labels = _batch("hard", 3, 4)
    ids, mask = layout.right_aligned(tokens, lengths, "post")
    swapped = lstm1997.SQUASHES["table10"]
    assert swapped == (1.0, 2.0) and lstm1997.SQUASHES["text"] == lstm1997.SQUASH == (2.0, 1.0)
    l1, lg1, g1 = _autodiff(params, ids, mask, labels, loss=_squared, gradient="truncated", squash=swapped)
    l2, lg2, g2 = _rtrl(params, ids, mask, labels, loss=_squared, squash=swapped)
    np.testing.assert_allclose(lg2, lg1, rtol=1e-5, atol=1e-6)
    for k in params:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-3, atol=1e-5 * max(float(jnp.abs(g1[k]).max()), 1.0))
    # A cell that saw one input with net n: s = y_in * g(n); the swap halves g's range and doubles h's.
    text = lstm1997.final_state(params, ids[0], mask[0])
    table = lstm1997.final_state(params, ids[0], mask[0], squash=swapped)
    assert not np.allclose(np.asarray(text[1]), np.asarray(table[1]))
    truncated = _autodiff(params, ids, mask, labels, loss=_squared, gradient="truncated")[1]
    assert float(jnp.abs(truncated - lg1).max()) > 1e-4


# --------------------------------------------------------------------------------------- padding

@pytest.mark.slow
def test_padding_leaves_logits_and_gradients_unchanged():
    params = _params(2, 2, 4, scale=2.0)
    tokens, lengths, labels = _batch("normal", 4, 3)  # post-padded with 255 to the batch's longest
    extra = jnp.pad(tokens, ((0, 0), (0, 7)), constant_values=255)
    pre_ids, pre_mask = layout.right_aligned(tokens, lengths, "post")
    pre = jnp.where(pre_mask, pre_ids, 3)  # the same batch pre-padded, padding holding a real symbol's id
    ref = lstm1997.apply(params, tokens, lengths, "post")
    np.testing.assert_allclose(lstm1997.apply(params, extra, lengths, "post"), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lstm1997.apply(params, pre, lengths, "pre"), ref, rtol=1e-6, atol=1e-6)
    shortest = int(jnp.argmin(lengths))
    alone = tokens[shortest:shortest + 1, :int(lengths[shortest])]  # no padding at all
    np.testing.assert_allclose(lstm1997.apply(params, alone, lengths[shortest:shortest + 1])[0], ref[shortest],
                               rtol=1e-6, atol=1e-6)

    @functools.partial(jax.jit, static_argnames="padding")
    def grad(tok, padding):
        return jax.grad(lambda p: jnp.sum(lstm1997.squared_error(lstm1997.apply(p, tok, lengths, padding),
                                                                 labels)))(params)

    g_ref, g_pre = grad(tokens, "post"), grad(pre, "pre")
    for k in params:
        np.testing.assert_allclose(g_pre[k], g_ref[k], rtol=1e-5, atol=1e-7)
    # Without the mask the 1997 net would move on padded steps (its biases drive it): the test can fail.
    y_masked, _ = lstm1997.final_state(params, jnp.zeros(5, jnp.int32), jnp.array([False] * 4 + [True]))
    y_unmasked, _ = lstm1997.final_state(params, jnp.zeros(5, jnp.int32), jnp.ones(5, bool))
    assert float(jnp.abs(y_masked - y_unmasked).max()) > 1e-3
