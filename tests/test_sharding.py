"""Data parallelism on 8 forced CPU devices (in a subprocess: the device count is fixed at JAX start-up)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from qrsu_data import task
    from pipelines.config import TrainConfig
    from pipelines.sharding import Sharding
    from pipelines.steps import TrainState

    assert len(jax.devices()) == 8, jax.devices()
    level = task.get_level("hard")
    rng = np.random.default_rng(0)

    def batch(n=32):
        b = task.generate(level, n, rng)
        tokens = np.zeros((n, level.max_length), np.int32)
        for i, seq in enumerate(b.sequences()):
            tokens[i, level.max_length - len(seq):] = seq  # pre-padding
        return {"tokens": tokens, "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)}

    batches = [batch() for _ in range(6)]
    out = {}
    for name, devices in (("eight", jax.devices()), ("one", jax.devices()[:1])):
        for model in ("lstm", "rnn"):
            cfg = TrainConfig(model=model, difficulty="hard", batch_size=32, lr=1e-3)
            sh = Sharding.create(devices)
            ts = TrainState.create(cfg, sh)
            losses = []
            for b in batches:
                placed = sh.put_batch(b)
                if name == "eight" and model == "lstm" and not out.get("shards"):
                    out["shards"] = [list(s.data.shape) for s in placed["tokens"].addressable_shards]
                    out["batch_devices"] = len(placed["tokens"].sharding.device_set)
                losses.append(float(ts.train_step(placed)))
            params = jax.tree.leaves(ts.pure_state()[0])
            out[f"{name}_{model}_losses"] = losses
            out[f"{name}_{model}_params"] = [np.asarray(p).ravel().tolist() for p in params]
            out[f"{name}_{model}_param_devices"] = len(params[0].sharding.device_set)
            out[f"{name}_{model}_threads"] = ts.threads
    print("RESULT" + json.dumps(out))
""")


def test_batch_is_sharded_over_8_devices_and_training_matches_one_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
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
