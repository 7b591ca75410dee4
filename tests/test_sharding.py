"""Data parallelism on forced CPU devices (in subprocesses: the device count is fixed at JAX start-up)."""

import pytest
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

pytestmark = pytest.mark.slow  # end to end: see docs/development.md for the fast tier

REPO = Path(__file__).resolve().parents[1]

PRELUDE = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[1]
    import jax, numpy as np
    from qrsu_data import padding, task
    from pipelines.engine.model import create_model, create_tx
    from pipelines.engine.state import init_state
    from pipelines.engine.step import make_train_step
    from pipelines.engine.config import TrainConfig
    from pipelines.engine.sharding import Sharding

    assert len(jax.devices()) == int(sys.argv[1]), jax.devices()
    rng = np.random.default_rng(0)

    def batch(level, n=32):
        b = task.generate(level, n, rng)
        tokens = padding.pad_sequences(b.sequences(), level.max_length, "pre")
        return {"tokens": tokens, "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)}
""")

MATCH_ONE_DEVICE = PRELUDE + textwrap.dedent("""
    level = task.get_level("hard")
    batches = [batch(level) for _ in range(6)]
    out = {}
    for name, devices in (("eight", jax.devices()), ("one", jax.devices()[:1])):
        for model in ("lstm", "rnn"):
            cfg = TrainConfig(model=model, difficulty="hard", batch_size=32, lr=1e-3)
            sh = Sharding.create(devices)
            split, state = init_state(create_model(cfg), create_tx(cfg), cfg.padding, sh)
            losses = []
            with make_train_step(split, create_tx(cfg), sh, batch_size=cfg.batch_size,
                                 length=cfg.dataset.level_def.max_length, grad_threads=cfg.grad_threads) as step:
                for b in batches:
                    placed = sh.put_batch(b)
                    if name == "eight" and model == "lstm" and not out.get("shards"):
                        out["shards"] = [list(s.data.shape) for s in placed["tokens"].addressable_shards]
                        out["batch_devices"] = len(placed["tokens"].sharding.device_set)
                    state, loss = step(state, placed)
                    losses.append(float(loss))
                out[f"{name}_{model}_threads"] = step.threads
            params = jax.tree.leaves(state.params)
            out[f"{name}_{model}_losses"] = losses
            out[f"{name}_{model}_params"] = [np.asarray(p).ravel().tolist() for p in params]
            out[f"{name}_{model}_param_devices"] = len(params[0].sharding.device_set)
    print("RESULT" + json.dumps(out))
""")

# Many small steps dispatched back to back: with several CPU devices, unsynchronised steps deadlock in XLA's
# all-reduce rendezvous (the process aborts after 40 s); measured, this script aborted every time without the
# step's per-step wait, and never with it.
MANY_STEPS = PRELUDE + textwrap.dedent("""
    level = task.get_level("easy")
    cfg = TrainConfig(difficulty="easy", hidden=8)
    sh = Sharding.create()
    assert sh.blocks_each_step
    split, state = init_state(create_model(cfg), create_tx(cfg), cfg.padding, sh)
    batches = [sh.put_batch(batch(level)) for _ in range(4)]
    with make_train_step(split, create_tx(cfg), sh, batch_size=cfg.batch_size, length=cfg.dataset.level_def.max_length,
                                 grad_threads=cfg.grad_threads) as step:
        for i in range(1000):
            state, loss = step(state, batches[i % 4])
    print("RESULT" + json.dumps({"loss": float(loss)}))
""")


def _run(script: str, devices: int, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    res = subprocess.run([sys.executable, "-c", script, str(devices), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.split("RESULT", 1)[1])


def test_batch_is_sharded_over_8_devices_and_training_matches_one_device():
    out = _run(MATCH_ONE_DEVICE, 8)
    assert out["batch_devices"] == 8
    assert out["eight_lstm_threads"] == 1  # a mesh parallelises the step itself: no gradient threads
    assert out["shards"] == [[4, 110]] * 8  # each device holds 4 of the 32 sequences
    for model in ("lstm", "rnn"):
        assert out[f"eight_{model}_param_devices"] == 8  # parameters replicated on every device
        assert out[f"one_{model}_param_devices"] == 1
        eight, one = out[f"eight_{model}_losses"], out[f"one_{model}_losses"]
        assert len(eight) == 6
        assert max(abs(a - b) for a, b in zip(eight, one)) < 1e-5, (eight, one)
        for a, b in zip(out[f"eight_{model}_params"], out[f"one_{model}_params"]):
            assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_a_thousand_steps_on_two_cpu_devices_do_not_deadlock():
    assert _run(MANY_STEPS, 2)["loss"] < 1.4


def test_training_and_evaluation_on_two_cpu_devices(tmp_path, easy_data_dir):
    """pipelines.train end to end on a 2-device mesh: steps, epoch-end evaluation and checkpoints."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", TF_CPP_MIN_LOG_LEVEL="3",
               QRSU_DATA_DIR=easy_data_dir)
    res = subprocess.run([sys.executable, "-m", "pipelines.train", "--workdir", os.fspath(tmp_path / "run"),
                          "--steps-per-epoch", "150", "--epochs", "2", "--checkpoint-every", "50", "--log-every", "10",
                          "--eval-batch-size", "1000"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "over 2 device(s)" in res.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["epoch"] == [1, 2] and history["test"]["accuracy"] > 0.9
