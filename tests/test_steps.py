"""The train step: golden values, the CPU gradient threads and loop unrolling (same training), bad values refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipelines.engine import threaded_step
from pipelines.engine.config import ACCELERATOR_UNROLL, TrainConfig
from pipelines.engine.model import create_model, create_tx, unroll
from pipelines.engine.state import init_state
from pipelines.engine.step import make_train_step
from pipelines.engine.sharding import Sharding
from qrsu_data import padding, task

cpu_only = pytest.mark.skipif(jax.devices()[0].platform != "cpu",
                              reason="gradient threads are a CPU feature; elsewhere the step is one program")


def _batches(level_name: str, batch_size: int, n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    level = task.get_level(level_name)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = task.generate(level, batch_size, rng)
        tokens = padding.pad_sequences(b.sequences(), level.max_length, "pre")
        out.append({"tokens": tokens, "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)})
    return out


def _train(config: TrainConfig, batches) -> tuple[list[float], list[np.ndarray], dict[str, float], int]:
    sharding = Sharding.create(jax.devices()[:1])
    split, state = init_state(create_model(config), create_tx(config), config.padding, sharding)
    losses = []
    with make_train_step(split, create_tx(config), sharding, batch_size=config.batch_size,
                         length=config.dataset.level_def.max_length, grad_threads=config.grad_threads) as step:
        for b in batches:
            state, loss = step(state, sharding.put_batch(b))
            losses.append(float(loss))
        threads = step.threads
    params = [np.asarray(p) for p in jax.tree.leaves(state.params)]
    return losses, params, state.metrics.compute(), threads


GOLDEN = {
    # One step of the default configuration (LSTM, hidden 64, chrono biases, Adam 3e-3, clip 1, seed 42) on a
    # fixed batch of 32 `moderate` sequences. A change of initialisation, defaults or numerics changes these.
    # Recorded from this code and, bit for bit the same, from the train step before the issue-14 rewrite.
    "loss": 1.3815715312957764,
    "param_sum": 3.1988007810424506,
    "param_abs_sum": 2713.6088964870114,
}


def test_one_step_from_a_fixed_seed_gives_the_recorded_values():
    config = TrainConfig(difficulty="moderate", grad_threads=1)
    losses, params, metrics, _ = _train(config, _batches("moderate", 32, 1, seed=0))
    got = {"loss": losses[0], "param_sum": float(sum(p.sum(dtype=np.float64) for p in params)),
           "param_abs_sum": float(sum(np.abs(p).sum(dtype=np.float64) for p in params))}
    for key, value in GOLDEN.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-4), (key, got)
    assert metrics["loss"] == pytest.approx(losses[0], rel=1e-6)


@pytest.mark.slow
@cpu_only
@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_threaded_gradient_trains_like_one_thread(model):
    batches = _batches("moderate", 16, 5)
    base = dict(model=model, difficulty="moderate", batch_size=16, lr=3e-3)
    one = _train(TrainConfig(**base, grad_threads=1), batches)
    for threads in (2, 4):
        many = _train(TrainConfig(**base, grad_threads=threads), batches)
        assert many[3] == threads and one[3] == 1
        np.testing.assert_allclose(many[0], one[0], rtol=1e-5)
        for a, b in zip(many[1], one[1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert many[2] == pytest.approx(one[2], rel=1e-5)
    assert one[0][0] != one[0][-1]  # it did train


@cpu_only
def test_automatic_threads_divide_the_batch_and_stay_off_meshes():
    one_device = Sharding.create(jax.devices()[:1])
    for batch_size in (32, 256, 7, 6):
        threads = threaded_step.grad_threads(0, batch_size, 110, one_device)  # hard
        assert 1 <= threads <= 4 and batch_size % threads == 0
        assert threads == 1 or 110 * batch_size // threads >= threaded_step.MIN_PART_WORK
    assert threaded_step.grad_threads(0, 7, 110, one_device) == 1  # prime
    # Short sequences in small batches: the extra dispatches would cost more than the threads gain.
    assert threaded_step.grad_threads(0, 32, 8, one_device) == 1  # easy
    assert threaded_step.grad_threads(4, 32, 8, one_device) == 4


def test_the_threaded_step_shuts_its_threads_down():
    config = TrainConfig(difficulty="moderate", batch_size=16, grad_threads=2)
    sharding = Sharding.create(jax.devices()[:1])
    split, _ = init_state(create_model(config), create_tx(config), config.padding, sharding)
    step = threaded_step.ThreadedTrainStep(split, create_tx(config), 2, 16)
    with step:
        pass
    with pytest.raises(RuntimeError, match="after shutdown"):
        step._pool.submit(print)


@pytest.mark.parametrize("threads, message", [(3, "not divisible by grad_threads 3"),
                                              (-1, "grad_threads must be an integer >= 0")])
def test_bad_grad_threads_are_refused(threads, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(batch_size=32, grad_threads=threads).validate()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_unrolled_loop_trains_like_one_step_per_iteration(model):
    batches = _batches("moderate", 16, 3)
    base = dict(model=model, difficulty="moderate", batch_size=16, lr=3e-3, grad_threads=1)
    one = _train(TrainConfig(**base, unroll=1), batches)
    # 5 does not divide moderate's 81 steps: the remainder path of the unrolled scan is exercised too.
    unrolled = _train(TrainConfig(**base, unroll=5), batches)
    np.testing.assert_allclose(unrolled[0], one[0], rtol=1e-5)
    for a, b in zip(unrolled[1], one[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_resolved_unroll_reaches_the_model():
    assert create_model(TrainConfig(model="gru", unroll=3)).unroll == 3
    automatic = create_model(TrainConfig(model="gru"))
    assert automatic.unroll == unroll(TrainConfig())
    assert automatic.unroll == (1 if jax.devices()[0].platform == "cpu" else ACCELERATOR_UNROLL)


def test_bad_unroll_is_refused():
    with pytest.raises(ValueError, match="unroll must be an integer >= 0"):
        TrainConfig(unroll=-1).validate()


def _state(config: TrainConfig, tx):
    return init_state(create_model(config), tx, config.padding, Sharding.create(jax.devices()[:1]))


def test_a_step_whose_gradient_is_not_finite_is_skipped_and_counted():
    from pipelines.engine.model import NONFINITE_SKIP_LIMIT, base_tx, skipped_updates
    from pipelines.engine.state import apply_gradients

    config = TrainConfig(difficulty="easy", hidden=8)
    tx = create_tx(config)
    _, state = _state(config, tx)
    apply = jax.jit(lambda *args: apply_gradients(tx, *args))
    labels = np.zeros(4, np.int32)
    losses, logits = np.ones(4, np.float32), np.zeros((4, 4), np.float32)
    finite = jax.tree.map(lambda p: jnp.full(p.shape, 0.01, p.dtype), state.params)
    overflow = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(np.inf), finite)  # one entry is enough
    skipped = apply(state, overflow, losses, logits, labels)
    for before, after in zip(jax.tree.leaves(state.params), jax.tree.leaves(skipped.params)):
        np.testing.assert_array_equal(before, after)  # the weights are untouched
    assert skipped_updates(skipped.opt_state) == 1 and skipped_updates(state.opt_state) == 0
    assert int(skipped.metrics.count) == 4  # the batch still counts in the running metrics
    # A finite step after it is exactly the step of the optimizer without the skip.
    plain_tx = base_tx(config)
    _, plain = _state(config, plain_tx)
    after = apply(skipped, finite, losses, logits, labels)
    expected = apply_gradients(plain_tx, plain, finite, losses, logits, labels)
    for got, want in zip(jax.tree.leaves(after.params), jax.tree.leaves(expected.params)):
        np.testing.assert_array_equal(got, want)
    assert skipped_updates(after.opt_state) == 1
    # A gradient that never becomes finite again is applied after NONFINITE_SKIP_LIMIT skips: the run diverges
    # (and says so) rather than silently not training.
    for n in range(NONFINITE_SKIP_LIMIT + 1):
        after = apply(after, overflow, losses, logits, labels)
        finite_weights = all(np.isfinite(p).all() for p in jax.tree.leaves(after.params))
        assert finite_weights == (n < NONFINITE_SKIP_LIMIT), n
