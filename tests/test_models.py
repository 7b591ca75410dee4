"""Tests of qrsu_models: shapes, training, padding invariance, fast path vs flax reference cells, inits, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from qrsu_data import task
from qrsu_models import CELLS, DEFAULT_CHRONO_MAX, SequenceClassifier, apply_fn, lstm_gate_bias

V = task.VOCAB_SIZE


def _pad(seqs: list[np.ndarray], width: int, padding: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of width ``width`` holding ``seqs`` pre- or post-padded with RANDOM valid tokens (must not matter)."""
    tokens = rng.integers(0, V, (len(seqs), width)).astype(np.int32)
    for i, s in enumerate(seqs):
        if padding == "pre":
            tokens[i, width - len(s):] = s
        else:
            tokens[i, :len(s)] = s
    return tokens, np.array([len(s) for s in seqs], np.int32)


# --------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_and_dtype(cell):
    model = SequenceClassifier(cell, hidden=16, num_classes=8, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (3, 11)), jnp.int32)
    logits = model(tokens, jnp.array([11, 5, 1], jnp.int32))
    assert logits.shape == (3, 8)
    assert logits.dtype == jnp.float32
    assert model.w_in.shape == (V, {"rnn": 1, "lstm": 4, "gru": 3}[cell] * 16)


def test_generated_uint8_batches_are_accepted():
    # uint8 tokens straight from task.generate (PAD_ID=255 beyond each length), padding 'post'.
    model = SequenceClassifier("rnn", hidden=16, rngs=nnx.Rngs(0))
    batch = task.generate("easy", 4, np.random.default_rng(1))
    assert batch.tokens.dtype == np.uint8
    assert model.last_hidden(jnp.asarray(batch.tokens), jnp.asarray(batch.lengths), "post").shape == (4, 16)


def test_same_seed_same_model_and_functional_apply():
    a = SequenceClassifier("gru", hidden=8, rngs=nnx.Rngs(3))
    b = SequenceClassifier("gru", hidden=8, rngs=nnx.Rngs(3))
    c = SequenceClassifier("gru", hidden=8, rngs=nnx.Rngs(4))
    np.testing.assert_array_equal(a.w_hh[...], b.w_hh[...])
    assert not np.allclose(a.w_hh[...], c.w_hh[...])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 6)), jnp.int32)
    lengths = jnp.array([6, 3], jnp.int32)
    graphdef, params = nnx.split(a)
    fn = jax.jit(apply_fn(graphdef), static_argnums=3)
    np.testing.assert_allclose(fn(params, tokens, lengths, "post"), a(tokens, lengths, "post"), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------- train


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_trains_on_easy(cell):
    data = task.generate("easy", 256, np.random.default_rng(0))
    tokens, lengths, labels = jnp.asarray(data.tokens), jnp.asarray(data.lengths), jnp.asarray(data.labels)
    graphdef, params = nnx.split(SequenceClassifier(cell, hidden=32, rngs=nnx.Rngs(0)))
    apply = apply_fn(graphdef)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, opt):
        # Full-batch steps: the returned loss is the whole set's loss before the update (one compile only).
        loss, grads = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, tokens, lengths, "post"), labels).mean()
        )(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    opt = tx.init(params)
    losses = []
    for _ in range(31):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    before, after = losses[0], losses[-1]
    assert np.isfinite(after)
    assert after < 0.5 * before, (before, after)  # easy is learnt fast: ~1.39 -> well under 0.7 in 30 steps


# ------------------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("cell", CELLS)
def test_padding_invariance(cell):
    graphdef, params = nnx.split(SequenceClassifier(cell, hidden=16, rngs=nnx.Rngs(1)))
    apply = apply_fn(graphdef)
    seqs = task.generate("easy", 5, np.random.default_rng(2)).sequences()
    rng = np.random.default_rng(3)
    # Also very short rows, and a row that fills the narrow batch (no padding at all there).
    seqs = seqs + [seqs[0][:1], seqs[1][:3], rng.integers(0, V, 9).astype(np.int32)]
    batches = {(padding, width): tuple(map(jnp.asarray, _pad(seqs, width, padding, rng)))
               for padding in ("pre", "post") for width in (9, 40)}
    # One jit for all four layouts (compiling dominates this test).
    out = jax.jit(lambda p, b: {k: apply(p, *v, k[0]) for k, v in b.items()})(params, batches)
    for padding in ("pre", "post"):
        np.testing.assert_allclose(out[padding, 9], out[padding, 40], rtol=1e-5, atol=1e-6, err_msg=padding)
        np.testing.assert_allclose(out[padding, 40], out["post", 40], rtol=1e-5, atol=1e-6, err_msg=padding)
    assert np.abs(out["pre", 40][:-1] - out["pre", 40][-1]).max() > 1e-3  # different sequences, different logits


# --------------------------------------------------------------------------------- fast path vs reference


class _Reference(nnx.Module):
    """The seed's formulation: a flax cell over one-hot inputs, stepped in a lax.scan with a masked carry."""

    def __init__(self, model: SequenceClassifier):
        h, rngs = model.hidden, nnx.Rngs(0)
        w_in, w_hh, bias = model.w_in[...], model.w_hh[...], model.bias[...]
        self.kind = model.cell
        if model.cell == "lstm":
            self.cell = nnx.LSTMCell(V, h, rngs=rngs)
            layers_i = (self.cell.ii, self.cell.if_, self.cell.ig, self.cell.io)
            layers_h = (self.cell.hi, self.cell.hf, self.cell.hg, self.cell.ho)
            for j, (li, lh) in enumerate(zip(layers_i, layers_h)):
                li.kernel[...] = w_in[:, j * h:(j + 1) * h]
                lh.kernel[...] = w_hh[:, j * h:(j + 1) * h]
                lh.bias[...] = bias[j * h:(j + 1) * h]
        else:
            cls = nnx.GRUCell if model.cell == "gru" else nnx.SimpleCell
            self.cell = cls(V, h, rngs=rngs)
            self.cell.dense_i.kernel[...] = w_in
            self.cell.dense_i.bias[...] = bias
            self.cell.dense_h.kernel[...] = w_hh
        self.head = nnx.Linear(h, model.num_classes, rngs=rngs)
        self.head.kernel[...] = model.head.kernel[...]
        self.head.bias[...] = model.head.bias[...]

    def __call__(self, tokens, lengths, padding):
        batch, steps = tokens.shape
        t = jnp.arange(steps)[None, :]
        real = (t >= steps - lengths[:, None]) if padding == "pre" else (t < lengths[:, None])
        x = jax.nn.one_hot(tokens, V, dtype=jnp.float32)
        zeros = jnp.zeros((batch, self.head.in_features), jnp.float32)
        carry = (zeros, zeros) if self.kind == "lstm" else zeros
        graphdef, state = nnx.split(self.cell)

        def step(carry, inp):
            xt, mt = inp
            new, _ = nnx.merge(graphdef, state)(carry, xt)
            if self.kind == "rnn":
                new = jax.nn.relu(new)  # the seed's SimpleRNN
            return jax.tree.map(lambda n, o: jnp.where(mt[:, None], n, o), new, carry), None

        carry, _ = jax.lax.scan(step, carry, (jnp.swapaxes(x, 0, 1), real.T))
        return self.head(carry[1] if self.kind == "lstm" else carry)

    def grads_in_model_layout(self, g) -> dict[str, np.ndarray]:
        """Reference gradients rearranged into SequenceClassifier's fused parameter layout."""
        c = g["cell"]
        if self.kind == "lstm":
            names_i, names_h = ("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho")
            out = {"w_in": np.concatenate([c[n]["kernel"][...] for n in names_i], 1),
                   "w_hh": np.concatenate([c[n]["kernel"][...] for n in names_h], 1),
                   "bias": np.concatenate([c[n]["bias"][...] for n in names_h])}
        else:
            out = {"w_in": c["dense_i"]["kernel"][...], "w_hh": c["dense_h"]["kernel"][...],
                   "bias": c["dense_i"]["bias"][...]}
        out["head_kernel"] = g["head"]["kernel"][...]
        out["head_bias"] = g["head"]["bias"][...]
        return out


@pytest.mark.parametrize("cell", CELLS)
def test_fast_path_matches_flax_reference(cell):
    rng = np.random.default_rng(7)
    batch, steps = 6, 40
    tokens = jnp.asarray(rng.integers(0, V, (batch, steps)), jnp.int32)
    lengths = jnp.asarray([steps, 1, 17, 33, 2, 40], jnp.int32)
    cot = jnp.asarray(rng.normal(size=(batch, 4)), jnp.float32)
    model = SequenceClassifier(cell, hidden=24, lstm_init="chrono" if cell == "lstm" else "default",
                               rngs=nnx.Rngs(11))
    ref = _Reference(model)
    graphdef, params = nnx.split(model)
    ref_graphdef, ref_params = nnx.split(ref)

    def value_and_grad(graphdef, p, padding):
        def f(p):
            logits = nnx.merge(graphdef, p)(tokens, lengths, padding)
            return (logits * cot).sum(), logits
        return jax.value_and_grad(f, has_aux=True)(p)

    # One jit for both models and both paddings: compiling is most of this test's time.
    results = jax.jit(lambda p, rp: {pad: (value_and_grad(graphdef, p, pad), value_and_grad(ref_graphdef, rp, pad))
                                     for pad in ("pre", "post")})(params, ref_params)
    for padding, (((_, logits), g), ((_, ref_logits), g_ref)) in results.items():
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6, err_msg=padding)
        mine = {"w_in": g["w_in"][...], "w_hh": g["w_hh"][...], "bias": g["bias"][...],
                "head_kernel": g["head"]["kernel"][...], "head_bias": g["head"]["bias"][...]}
        for name, want in ref.grads_in_model_layout(g_ref).items():
            scale = np.abs(want).max()
            assert scale > 0, name
            np.testing.assert_allclose(mine[name], want, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{padding} {name}")


@pytest.mark.slow
def test_custom_vjp_matches_autodiff_of_the_same_scan():
    from qrsu_models import layout, recurrence

    rng = np.random.default_rng(8)
    tokens = jnp.asarray(rng.integers(0, V, (5, 30)), jnp.int32)
    lengths = jnp.asarray([30, 4, 12, 1, 29], jnp.int32)
    tok = layout.time_major_ids(tokens, lengths, "post", V)
    for cell in CELLS:
        w_in = jnp.asarray(rng.normal(size=(V, recurrence.GATES[cell] * 16)), jnp.float32)
        w_hh = jnp.asarray(rng.normal(size=(16, recurrence.GATES[cell] * 16)), jnp.float32) * 0.3
        cot = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)

        def grad(custom_grad):
            def f(a, b):
                return (recurrence.last_hidden(cell, tok, a, b, custom_grad=custom_grad) * cot).sum()

            return jax.grad(f, argnums=(0, 1))(w_in, w_hh)

        custom, plain = jax.jit(lambda: (grad(True), grad(False)))()  # one jit: compiling dominates
        for name, got, want in zip(("w_in", "w_hh"), custom, plain):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"{cell} {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_a_long_stretch_of_padding_adds_nothing_to_the_gradient(cell):
    # A nightmare batch (lengths 300-500) pads its shortest rows by up to 200 steps. Carried back through them,
    # a padded step's cotangent grew by the cell's Jacobian at the zero state until float32 overflowed, and
    # 0 * inf made the update NaN (the LSTM's search runs there "diverged"). An expansive W_hh shows it in 300.
    from qrsu_models import layout, recurrence

    rng = np.random.default_rng(9)
    hidden, steps, short = 8, 300, 5
    w_in = jnp.asarray(rng.normal(size=(V, recurrence.GATES[cell] * hidden)), jnp.float32)
    w_hh = jnp.asarray(rng.normal(size=(hidden, recurrence.GATES[cell] * hidden)) * 10, jnp.float32)
    rows = rng.integers(0, V, (2, steps)).astype(np.int32)
    cot = jnp.asarray(rng.normal(size=(1, hidden)), jnp.float32)

    def grad(tokens, lengths, cotangent):
        tok = layout.time_major_ids(jnp.asarray(tokens), jnp.asarray(lengths), "pre", V)
        return jax.grad(lambda a, b: (recurrence.last_hidden(cell, tok, a, b) * cotangent).sum(),
                        argnums=(0, 1))(w_in, w_hh)

    # Row 1 is `short` long, padded by 295 steps; row 0 is there to make the batch long and has no cotangent.
    batch = np.stack([rows[0], np.concatenate([np.zeros(steps - short, np.int32), rows[1, :short]])])
    padded = grad(batch, [steps, short], jnp.concatenate([jnp.zeros_like(cot), cot]))
    alone = grad(rows[1:, :short], [short], cot)
    for name, got, want in zip(("w_in", "w_hh"), padded, alone):
        assert np.all(np.isfinite(got)), f"{cell} {name}"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"{cell} {name}")


# ---------------------------------------------------------------------------------------------- inits


def test_lstm_gate_bias_options():
    h = 64
    k = jax.random.key(5)
    np.testing.assert_array_equal(lstm_gate_bias(k, h, "default"), np.zeros(4 * h))
    fb = np.asarray(lstm_gate_bias(k, h, "forget_bias", forget_bias=2.5))
    np.testing.assert_array_equal(fb[h:2 * h], np.full(h, 2.5))
    np.testing.assert_array_equal(np.concatenate([fb[:h], fb[2 * h:]]), np.zeros(3 * h))
    for chrono_max in (None, 501):
        t_max = DEFAULT_CHRONO_MAX if chrono_max is None else chrono_max
        b = np.asarray(lstm_gate_bias(k, h, "chrono", chrono_max=chrono_max))
        b_i, b_f, rest = b[:h], b[h:2 * h], b[2 * h:]
        np.testing.assert_array_equal(b_i, -b_f)
        np.testing.assert_array_equal(rest, np.zeros(2 * h))
        assert b_f.min() >= 0.0 and b_f.max() <= np.log(t_max - 1) + 1e-6
        assert b_f.max() > np.log(t_max / 2)  # the draws spread over the range, not a constant
        assert len(np.unique(b_f)) == h
    assert DEFAULT_CHRONO_MAX == 111
    # Random draws come from the key only: same key, same bias; another key, another bias.
    np.testing.assert_array_equal(lstm_gate_bias(k, 8, "chrono"), lstm_gate_bias(k, 8, "chrono"))
    assert not np.allclose(lstm_gate_bias(k, 8, "chrono"), lstm_gate_bias(jax.random.key(6), 8, "chrono"))


def test_classifier_wires_the_lstm_init():
    h = 8
    assert not np.any(SequenceClassifier("lstm", hidden=h, rngs=nnx.Rngs(0)).bias[...])
    fb = SequenceClassifier("lstm", hidden=h, lstm_init="forget_bias", forget_bias=3.0, rngs=nnx.Rngs(0)).bias[...]
    np.testing.assert_array_equal(fb, lstm_gate_bias(jax.random.key(0), h, "forget_bias", forget_bias=3.0))
    b = np.asarray(SequenceClassifier("lstm", hidden=h, lstm_init="chrono", chrono_max=50, rngs=nnx.Rngs(0)).bias[...])
    np.testing.assert_array_equal(b[:h], -b[h:2 * h])
    assert 0.0 <= b[h:2 * h].min() and b[h:2 * h].max() <= np.log(49) and np.unique(b[h:2 * h]).size == h
    assert not np.any(b[2 * h:])


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, bad, listed", [
    (dict(cell="transformer"), "'transformer'", "rnn, lstm, gru"),
    (dict(cell="lstm", lstm_init="xavier"), "'xavier'", "default, forget_bias, chrono"),
    (dict(cell="gru", lstm_init="chrono"), "'chrono'", "cell='lstm'"),
    (dict(cell="lstm", hidden=0), "0", "hidden"),
    (dict(cell="rnn", num_classes=-2), "-2", "num_classes"),
    (dict(cell="lstm", lstm_init="chrono", chrono_max=2), "2", "chrono_max"),
])
def test_bad_constructor_arguments(kwargs, bad, listed):
    with pytest.raises(ValueError) as err:
        SequenceClassifier(rngs=nnx.Rngs(0), **kwargs)
    assert bad in str(err.value) and listed in str(err.value)


def test_bad_call_arguments():
    model = SequenceClassifier("rnn", hidden=4, rngs=nnx.Rngs(0))
    tokens, lengths = jnp.zeros((2, 5), jnp.int32), jnp.array([5, 2], jnp.int32)
    with pytest.raises(ValueError, match=r"'middle'.*pre, post"):
        model(tokens, lengths, "middle")
    with pytest.raises(ValueError, match="lengths"):
        model(tokens, jnp.array([5, 2, 1]))
    with pytest.raises(ValueError, match="tokens"):
        model(jnp.zeros((5,), jnp.int32), lengths)
