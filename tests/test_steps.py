"""The train step's CPU gradient threads and loop unrolling: same training, resolved sensibly, bad values refused."""

import jax
import numpy as np
import pytest

from pipelines.config import TrainConfig
from pipelines.sharding import Sharding
from pipelines import steps
from pipelines.steps import MIN_PART_WORK, TrainState, grad_threads
from qrsu_data import padding, task

cpu_only = pytest.mark.skipif(jax.devices()[0].platform != "cpu",
                              reason="gradient threads are a CPU feature; elsewhere the step is one program")


def _batches(level_name: str, batch_size: int, n: int) -> list[dict[str, np.ndarray]]:
    level = task.get_level(level_name)
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        b = task.generate(level, batch_size, rng)
        tokens = padding.pad_sequences(b.sequences(), level.max_length, "pre")
        out.append({"tokens": tokens, "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)})
    return out


def _train(model: str, threads: int, batches, unroll: int = 0) -> tuple[list[float], list[np.ndarray],
                                                                        dict[str, float], int]:
    sharding = Sharding.create(jax.devices()[:1])
    config = TrainConfig(model=model, difficulty="moderate", batch_size=16, lr=3e-3, grad_threads=threads,
                         unroll=unroll)
    ts = TrainState.create(config, sharding)
    losses = [float(ts.train_step(sharding.put_batch(b))) for b in batches]
    params = [np.asarray(p) for p in jax.tree.leaves(ts.pure_state()[0])]
    return losses, params, ts.compute("train"), ts.threads


@cpu_only
@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_threaded_gradient_trains_like_one_thread(model):
    batches = _batches("moderate", 16, 5)
    one = _train(model, 1, batches)
    for threads in (2, 4):
        many = _train(model, threads, batches)
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
        threads = grad_threads(TrainConfig(difficulty="hard", batch_size=batch_size), one_device)
        assert 1 <= threads <= 4 and batch_size % threads == 0
        assert threads == 1 or 111 * batch_size // threads >= MIN_PART_WORK
    assert grad_threads(TrainConfig(difficulty="hard", batch_size=7), one_device) == 1  # a prime batch: unsplit
    # Short sequences in small batches: the extra dispatches would cost more than the threads gain.
    assert grad_threads(TrainConfig(difficulty="easy", batch_size=32), one_device) == 1
    assert grad_threads(TrainConfig(batch_size=32, grad_threads=1), one_device) == 1
    assert grad_threads(TrainConfig(batch_size=32, grad_threads=4), one_device) == 4


@pytest.mark.parametrize("threads, message", [(3, "not divisible by grad_threads 3"),
                                              (-1, "grad_threads must be >= 0")])
def test_bad_grad_threads_are_refused(threads, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(batch_size=32, grad_threads=threads).validate()


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_unrolled_loop_trains_like_one_step_per_iteration(model):
    batches = _batches("moderate", 16, 3)
    one = _train(model, 1, batches, unroll=1)
    # 5 does not divide moderate's 81 steps: the remainder path of the unrolled scan is exercised too.
    unrolled = _train(model, 1, batches, unroll=5)
    np.testing.assert_allclose(unrolled[0], one[0], rtol=1e-5)
    for a, b in zip(unrolled[1], one[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_unroll_resolves_per_device(monkeypatch):
    assert steps.unroll(TrainConfig(unroll=3)) == 3
    assert steps.create_model(TrainConfig(model="gru", unroll=3)).unroll == 3

    class Device:
        def __init__(self, platform):
            self.platform = platform

    for platform, expected in (("cpu", 1), ("gpu", steps.ACCELERATOR_UNROLL), ("tpu", steps.ACCELERATOR_UNROLL)):
        monkeypatch.setattr(steps.jax, "devices", lambda platform=platform: [Device(platform)])
        assert steps.unroll(TrainConfig()) == expected
    assert steps.ACCELERATOR_UNROLL > 1


def test_bad_unroll_is_refused():
    with pytest.raises(ValueError, match="unroll must be >= 0"):
        TrainConfig(unroll=-1).validate()
