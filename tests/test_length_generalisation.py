"""Length generalisation's training recipes: levels of varied length, batches bucketed by length, sequences that
start from a given (noisy or passed) state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pipelines.engine.config import TrainConfig
from pipelines.engine.model import create_model, create_tx
from pipelines.engine.sharding import Sharding
from pipelines.engine.state import SplitModel, init_state, loss_fn, train_step
from qrsu_data import codec, loaders, padding, splits, store, task
from qrsu_models import SequenceClassifier

VARIED = "hard-var50to200"


# ------------------------------------------------------------------------------------------ varied lengths


def test_a_varied_level_keeps_its_positions_at_the_same_fractions_of_every_length():
    level = task.get_level(VARIED)
    assert level.length == (50, 200) and level.scale == 110 and level.base is None
    batch = task.generate(level, 20_000, np.random.default_rng(0))
    assert batch.lengths.min() == 50 and batch.lengths.max() == 200
    lo, hi = level.position_bounds(batch.lengths)
    assert ((batch.positions >= lo) & (batch.positions <= hi)).all()
    # hard's t1 in 10..20 and t2 in 50..60 of 110: the same fractions at every length, rounded half up.
    frac = batch.positions / batch.lengths[:, None]
    assert 10 / 110 - 0.01 < frac[:, 0].min() and frac[:, 0].max() < 20 / 110 + 0.01
    assert 50 / 110 - 0.01 < frac[:, 1].min() and frac[:, 1].max() < 60 / 110 + 0.01
    assert level.ranges_at(110) == ((10, 20), (50, 60)) and level.ranges_at(50) == ((5, 9), (23, 27))
    for seq in batch.take(np.arange(50)).sequences():
        task.check_sequence(seq, level)  # every generated sequence follows its own length's ranges
    problems = codec.example_problems(batch.tokens, batch.lengths, batch.labels, batch.positions, level)
    assert not any(rows.any() for rows in problems.values())  # what a split's reader checks
    again = task.generate(level, 20_000, np.random.default_rng(0))
    assert np.array_equal(again.tokens, batch.tokens)  # deterministic from its seed


def test_varied_levels_by_name_and_by_json():
    by_json = splits.SplitSpec.parse('{"length": [50, 200], "positions": [[10, 20], [50, 60]], "scale": 110}')
    assert by_json.name == VARIED and splits.SplitSpec.parse(VARIED).level_def == task.get_level(VARIED)
    own = task.get_level("len50to200_pos10to20_pos50to60_per100")
    assert own.scale == 100 and own.ranges_at(200) == ((20, 40), (100, 120))
    assert task.level_from_json(own.to_json()) == own
    with pytest.raises(ValueError, match="that level is named 'hard-var50to200'"):
        task.get_level("len50to200_pos10to20_pos50to60_per110")
    with pytest.raises(ValueError, match="at length 4"):  # the shortest sequences cannot hold the positions
        task.get_level("hard-var4to200")
    with pytest.raises(ValueError, match="not a lengthening len<N> or tail<N>, nor var<LO>to<HI>"):
        task.get_level("hard-vary")


# ------------------------------------------------------------------------------------------ buckets


@pytest.fixture(scope="module")
def varied_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("varied")
    store.build(f"{VARIED}-train3000-validation500-test500", path)
    return str(path)


CONFIG = f"{VARIED}-train3000-validation500-test500"


@pytest.mark.parametrize("pad", ["pre", "post"])
def test_buckets_pad_each_batch_to_its_bucket_and_cover_the_split(varied_dir, pad):
    kw = dict(batch_size=32, seed=3, data_dir=varied_dir, padding=pad, shard_index=0, shard_count=1)
    ds = loaders.train_dataset(CONFIG, bucket_width=25, **kw)
    it = iter(ds)
    seen, widths = [], set()
    for _ in range(60):
        b = next(it)
        width = b["tokens"].shape[1]
        widths.add(width)
        assert b["lengths"].max() <= width and width - b["lengths"].min() < 25  # one bucket per batch
        real = b["tokens"][:, -b["lengths"].min():] if pad == "pre" else b["tokens"][:, :b["lengths"].min()]
        assert (real < task.VOCAB_SIZE).all()
        seen.append(b["label"])
    assert len(widths) >= 5 and max(widths) <= 200
    # The same batches, padded as a bucketed batch or to the level's longest: the same logits (exact padding).
    model = SequenceClassifier("lstm", hidden=16, rngs=nnx.Rngs(0))
    plain = loaders.train_loader(CONFIG, **kw)
    b = next(iter(loaders.train_dataset(CONFIG, bucket_width=25, **kw)))
    wide = padding.pad_sequences([t[t < task.VOCAB_SIZE] for t in b["tokens"]], 200, pad)
    np.testing.assert_allclose(np.asarray(model(b["tokens"], b["lengths"], pad)),
                               np.asarray(model(wide, b["lengths"], pad)), rtol=1e-6, atol=1e-6)
    assert next(plain)["tokens"].shape[1] == 200  # without buckets: the level's longest


def test_bucketed_batches_repeat_from_their_seed_and_resume_from_a_checkpointed_position(varied_dir):
    kw = dict(batch_size=32, seed=5, data_dir=varied_dir, shard_index=0, shard_count=1, bucket_width=30)
    a = loaders.train_loader(CONFIG, **kw)
    first = [next(a) for _ in range(7)]
    state = a.get_state()
    rest = [next(a) for _ in range(100)]  # across an epoch's end
    b = loaders.train_loader(CONFIG, **kw)
    b.set_state(state)
    for x, y in zip(rest, [next(b) for _ in range(100)]):
        assert np.array_equal(x["tokens"], y["tokens"])
    c = loaders.train_loader(CONFIG, **kw)
    assert all(np.array_equal(x["tokens"], next(c)["tokens"]) for x in first)
    with pytest.raises(ValueError, match="no bucket of 1 lengths holds batch_size 3000"):
        loaders.train_loader(CONFIG, **{**kw, "batch_size": 3000, "bucket_width": 1})


# ------------------------------------------------------------------------------------------ initial states


def _python_loop_lstm(model: SequenceClassifier, seq: np.ndarray, c: np.ndarray, h: np.ndarray):
    """flax's LSTMCell by hand from (c, h), one token at a time: the reference of a given start."""
    hidden = model.hidden
    w_in, w_hh, bias = (np.asarray(x, np.float64) for x in (model.w_in[...], model.w_hh[...], model.bias[...]))
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    for tok in seq:
        z = h @ w_hh + w_in[tok] + bias
        i, f, g, o = (z[..., k * hidden:(k + 1) * hidden] for k in range(4))
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
    return c, h


def test_a_sequence_starts_from_the_state_it_is_given():
    model = SequenceClassifier("lstm", hidden=6, rngs=nnx.Rngs(1))
    b = task.generate(task.get_level("easy"), 5, np.random.default_rng(2))
    tokens = padding.pad_sequences(b.sequences(), 12, "pre")  # padding before each sequence
    initial = np.asarray(jax.random.normal(jax.random.key(3), (5, 12)))
    logits, final = model.forward_state(tokens, b.lengths, "pre", initial)
    for row, seq in enumerate(b.sequences()):
        c, h = _python_loop_lstm(model, seq, initial[row, :6], initial[row, 6:])
        np.testing.assert_allclose(np.asarray(final[row]), np.concatenate([c, h]), rtol=2e-5, atol=2e-6)
    # From zeros, it is the fast path's model exactly.
    zero_logits, _ = model.forward_state(tokens, b.lengths, "pre", model.zero_state(5))
    np.testing.assert_allclose(np.asarray(zero_logits), np.asarray(model(tokens, b.lengths)), atol=1e-6)
    assert not np.allclose(np.asarray(logits), np.asarray(zero_logits))


def _batch(level, n, seed):
    b = task.generate(task.get_level(level), n, np.random.default_rng(seed))
    return {"tokens": padding.pad_sequences(b.sequences(), task.get_level(level).max_length, "pre"),
            "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)}


@pytest.mark.parametrize("grad_threads", [1, 2])
def test_state_passing_starts_each_sequence_from_the_previous_batchs_final_state(grad_threads):
    from pipelines.engine.step import make_train_step

    config = TrainConfig(model="gru", difficulty="easy", batch_size=8, initial_state="passed",
                         grad_threads=grad_threads)
    sharding = Sharding.create(jax.devices()[:1])
    module = create_model(config)
    tx = create_tx(config)
    split, state = init_state(module, tx, "pre", sharding, carry=module.zero_state(8))
    first, second = _batch("easy", 8, 0), _batch("easy", 8, 1)
    copy = lambda tree: jax.tree.map(np.array, tree)  # noqa: E731 - the step donates its input state
    with make_train_step(split, tx, sharding, batch_size=8, length=8, grad_threads=grad_threads) as step:
        params0 = copy(state.params)
        after_first, _ = step(state, sharding.put_batch(first))
        # The carry is the first batch's final states, from zero, under the parameters before the update.
        _, expected = split.merge(params0).forward_state(first["tokens"], first["lengths"], "pre",
                                                         module.zero_state(8))
        np.testing.assert_allclose(np.asarray(after_first.carry), np.asarray(expected), rtol=1e-5, atol=1e-6)
        params1, carry1 = copy(after_first.params), np.array(after_first.carry)
        _, loss = step(after_first, sharding.put_batch(second))
    # The second batch's loss is that of its sequences started from those states (under the updated params).
    want, _ = loss_fn(params1, split, {**second, "initial_state": carry1})
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    zero, _ = loss_fn(params1, split, second)
    assert float(loss) != pytest.approx(float(zero), rel=1e-3)


def test_a_noisy_start_is_drawn_from_the_seed_and_the_step(tmp_path, easy_data_dir):
    from pipelines.engine.session import Session

    config = TrainConfig(model="lstm", difficulty="easy", batch_size=16, initial_state="noise", noise_std=0.5,
                         data_dir=easy_data_dir, workdir=str(tmp_path), grad_threads=1)
    with Session.open(config) as s:
        a = s.next_batch()["initial_state"]
        s.step = 1
        b = s.next_batch()["initial_state"]
    with Session.open(config) as s:
        again = s.next_batch()["initial_state"]
    assert a.shape == (16, 128) and np.array_equal(np.asarray(a), np.asarray(again))
    assert not np.allclose(np.asarray(a), np.asarray(b)) and 0.4 < float(jnp.std(a)) < 0.6


def test_recipes_refused_where_a_model_cannot_take_them():
    with pytest.raises(ValueError, match="initial_state 'passed' needs a model whose state can be set"):
        TrainConfig(model="transformer", initial_state="passed").validate()
    with pytest.raises(ValueError, match="unknown initial_state 'random'; choose one of: zero, noise, passed"):
        TrainConfig(initial_state="random").validate()
    with pytest.raises(ValueError, match="noise_std must be a number >= 0"):
        TrainConfig(initial_state="noise", noise_std=-1.0).validate()
    with pytest.raises(ValueError, match="omega .* needs a model that defines it; 'lstm' does not"):
        TrainConfig(omega=4.0).validate()


def test_split_model_of_zero_regulariser_keeps_the_plain_loss():
    module = SequenceClassifier("rnn", hidden=4, rngs=nnx.Rngs(0))
    split, params = SplitModel.of(module, "pre")
    batch = _batch("easy", 4, 0)
    loss, (logits, losses, final) = loss_fn(params, split, batch)
    assert final is None and float(loss) == pytest.approx(float(losses.mean()))
    state = init_state(module, create_tx(TrainConfig(model="rnn")), "pre", Sharding.create(jax.devices()[:1]))[1]
    assert train_step(split, create_tx(TrainConfig(model="rnn")), state, batch)[0].carry is None


# ------------------------------------------------------------------------------------------ Pascanu's Omega


def _omega_by_hand(model, tokens, lengths, labels):
    """Omega and its W_hh gradient in float64 NumPy: the forward states, dC/dh_t by an explicit backward loop,
    then their code's formula (the ratio of squared norms, averaged over the counted steps)."""
    w_uh, w_hh, b, w_hy, b_y = (np.asarray(p[...], np.float64) for p in
                                (model.w_uh, model.w_hh, model.b, model.w_hy, model.b_y))
    batch, steps = tokens.shape
    start = steps - lengths
    hs, h = [], np.zeros((batch, model.hidden))
    for t in range(steps):
        real = (t >= start)[:, None]
        x = w_uh[np.where(real[:, 0], tokens[:, t], 0)]
        h = np.where(real, np.tanh(h @ w_hh + x + b), h)
        hs.append(h)
    logits = h @ w_hy + b_y
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(w_hy.shape[1])[labels]) / batch @ w_hy.T  # dC/dh_T of the batch-mean cross-entropy
    gs = [None] * steps
    for t in reversed(range(steps)):
        gs[t] = g
        real = (t >= start)[:, None]
        # h_t = tanh(h_{t-1} W + ...) on real steps, h_t = h_{t-1} on held ones.
        g = np.where(real, (g * (1 - hs[t] ** 2)) @ w_hh.T, g)
    num, den, grad = 0.0, 0.0, np.zeros_like(w_hh)
    for t in range(steps):
        real = t >= start
        a = gs[t] * (1 - hs[t] ** 2)
        v = a @ w_hh.T
        g2 = (gs[t] ** 2).sum(1)
        counted = real & (g2 >= 1e-20)
        r = np.where(counted, (v ** 2).sum(1) / np.where(counted, g2, 1), 1.0)
        num += ((r - 1) ** 2).mean()
        den += counted.mean()
        coef = np.where(counted, 2 * (r - 1) * 2 / np.where(counted, g2, 1), 0.0) / batch
        grad += np.einsum("b,bj,bi->ji", coef, v, a)
    return num / den, grad / den


def test_omega_and_its_gradient_match_a_direct_computation():
    from qrsu_models.pascanu import PascanuRNN

    model = PascanuRNN(hidden=5, rngs=nnx.Rngs(4))
    model.w_hh[...] = model.w_hh[...] * 8  # a recurrent matrix far from norm-preserving: Omega well above 0
    b = task.generate(task.get_level("easy"), 3, np.random.default_rng(5))
    tokens = padding.pad_sequences(b.sequences(), 10, "pre")
    value = float(model.regularizer(tokens, b.lengths, "pre", b.labels))
    grads = nnx.grad(lambda m: m.regularizer(tokens, b.lengths, "pre", b.labels))(model)
    want_value, want_grad = _omega_by_hand(model, np.where(tokens == task.PAD_ID, 0, tokens), b.lengths, b.labels)
    assert value == pytest.approx(want_value, rel=1e-4) and value > 0.1
    np.testing.assert_allclose(np.asarray(grads["w_hh"][...]), want_grad, rtol=2e-3, atol=1e-6)
    for name in ("w_uh", "b", "w_hy", "b_y"):  # Omega's gradient reaches the recurrent matrix alone
        assert not np.asarray(grads[name][...]).any(), name
    # The training loss adds it with its weight: --omega.
    split, params = SplitModel.of(model, "pre", regularizer=4.0)
    plain, _ = loss_fn(params, SplitModel.of(model, "pre")[0], _batch_of(b, tokens))
    weighted, _ = loss_fn(params, split, _batch_of(b, tokens))
    assert float(weighted) == pytest.approx(float(plain) + 4.0 * value, rel=1e-5)


def _batch_of(b, tokens):
    return {"tokens": tokens, "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)}


@pytest.mark.parametrize("name", ["rnn", "gru", "mingru", "minlstm3", "pascanu_rnn"])
def test_every_settable_family_starts_from_the_state_it_is_given_exactly_under_padding(name):
    from qrsu_models import registry

    model = registry.get(name).build(num_classes=4, max_length=8, seed=0)
    b = task.generate(task.get_level("easy"), 5, np.random.default_rng(0))
    short, wide = (padding.pad_sequences(b.sequences(), n, "pre") for n in (8, 14))
    zero = model.zero_state(5)
    np.testing.assert_allclose(np.asarray(model.forward_state(short, b.lengths, "pre", zero)[0]),
                               np.asarray(model(short, b.lengths)), atol=2e-6)
    start = np.asarray(jax.random.normal(jax.random.key(1), zero.shape))
    a, final_a = model.forward_state(short, b.lengths, "pre", start)
    c, final_c = model.forward_state(wide, b.lengths, "pre", start)
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=2e-6)  # padding changes nothing
    np.testing.assert_allclose(np.asarray(final_a), np.asarray(final_c), atol=2e-6)
    # One real step from the given state: a sequence of length 1 moves its state from exactly there.
    one = np.full((5, 3), task.PAD_ID, np.int32)
    one[:, -1] = task.START
    _, moved = model.forward_state(one, np.ones(5, np.int32), "pre", start)
    _, from_zero = model.forward_state(one, np.ones(5, np.int32), "pre", zero)
    assert not np.allclose(np.asarray(moved), np.asarray(from_zero))


# ------------------------------------------------------------------------------- training past solving


def test_the_learning_rate_falls_to_zero_along_a_cosine_after_the_warm_up():
    config = TrainConfig(model="rnn", optimizer="sgd", lr=1.0, warmup_steps=2, decay_steps=4, clip_norm=0)
    tx = create_tx(config)
    params = jnp.zeros(())
    opt_state = tx.init(params)
    rates = []
    for _ in range(8):  # SGD on a gradient of 1: each update is minus that step's learning rate
        updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
        rates.append(-float(updates))
    cosine = [0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]
    np.testing.assert_allclose(rates, [0.0, 0.5, *cosine, 0.0, 0.0], atol=1e-6)


def test_a_negative_decay_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="decay_steps must be an integer >= 0"):
        TrainConfig(model="rnn", decay_steps=-1).validate()


@pytest.mark.slow
def test_a_run_trained_through_keeps_training_past_solving(easy_data_dir):
    from pipelines.engine.solving import RunSpec, run_one
    spec = RunSpec("gru", "easy", 0, budget=4800, check_every=320, lr=1e-2, train_through=True)
    assert spec.key == "gru-easy-through-lr0.01-seed0" and spec.config().decay_steps == spec.steps == 300
    result, _ = run_one(spec, easy_data_dir)
    assert len(result.curve) == 15 and result.sequences_trained == 4800  # every check ran: no stop at solving
    first = next(seen for seen, accuracy in result.curve if accuracy >= 0.99)
    assert first < 4800 and result.solved and result.sequences_to_solve == first, result.curve
