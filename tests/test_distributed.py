"""Two training processes on localhost (jax.distributed, CPU collectives) vs one process on the same batches."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pipelines.engine.model import create_model, create_tx
from pipelines.engine.state import init_state
from pipelines.engine.step import make_train_step
from pipelines.engine.checkpoints import Checkpointer, abstract
from pipelines.engine.config import TrainConfig
from pipelines.engine.sharding import Sharding
from qrsu_data import loaders

pytestmark = pytest.mark.slow  # end to end: see docs/development.md for the fast tier

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(easy_data_dir):
    return easy_data_dir


def test_two_processes_train_in_lockstep_and_match_one_process(data_dir, tmp_path):
    workdir = tmp_path / "run"
    port = _free_port()
    common = ["--data-dir", data_dir, "--workdir", os.fspath(workdir), "--epochs", "1", "--steps-per-epoch",
              str(STEPS), "--checkpoint-every", "3", "--log-every", "3", "--eval-batch-size", "2000", "--lr", "3e-3",
              "--num-processes", "2", "--coordinator-address", f"127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.train", *common, "--process-id", str(i)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert "over 2 device(s) in 2 process(es)" in outs[0][0]  # only process 0 reports
    assert "Done:" in outs[0][0] and "Done:" not in outs[1][0]
    history = json.loads((workdir / "history.json").read_text())
    assert len(history["val_acc"]) == 1 and history["test"]["step"] == STEPS

    # One process, one device, fed the same global batches: each process's shard is half of every batch.
    cfg = TrainConfig(data_dir=data_dir, workdir=os.fspath(tmp_path / "ref"), lr=3e-3)
    sharding = Sharding.create(jax.devices()[:1])
    split, state = init_state(create_model(cfg), create_tx(cfg), cfg.padding, sharding)
    initial = [np.asarray(x) for x in jax.tree.leaves(state.params)]  # copies: the step donates buffers
    shards = [loaders.train_loader("easy", batch_size=16, seed=cfg.seed, data_dir=data_dir, shard_index=i,
                                   shard_count=2) for i in (0, 1)]
    with make_train_step(split, create_tx(cfg), sharding, batch_size=cfg.batch_size,
                         length=cfg.dataset.level_def.max_length, grad_threads=cfg.grad_threads) as step:
        for _ in range(STEPS):
            parts = [next(it) for it in shards]
            state, _ = step(state, sharding.put_batch({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}))
    ckpt = Checkpointer(workdir)
    assert ckpt.steps()[-1] == STEPS
    theirs = ckpt.restore_params(STEPS, abstract(state.params))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    moved = [not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(initial, jax.tree.leaves(theirs))]
    assert all(moved)  # every parameter was trained, so the match above is not trivial


def test_a_process_whose_peers_never_come_exits_with_a_message(data_dir, tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-m", "pipelines.train", "--data-dir", data_dir, "--workdir",
                          os.fspath(tmp_path / "run"), "--num-processes", "2", "--process-id", "0",
                          "--coordinator-address", f"127.0.0.1:{port}", "--init-timeout", "5"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert f"not every process reached the coordinator at 127.0.0.1:{port} within 5 s" in res.stderr
    assert "Traceback" not in res.stderr and "Check failure" not in res.stderr
    assert not (tmp_path / "run" / "config.json").exists()
