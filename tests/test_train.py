"""The training pipeline: config and flags, a small run's outputs, resume, overwrite, locks, divergence, damage."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pipelines.engine import config as config_lib
from pipelines import train
from pipelines.engine import session as session_lib
from pipelines.engine import workdir as runs
from pipelines.engine.model import create_model, create_tx
from pipelines.engine.state import init_state
from pipelines.engine.checkpoints import Checkpointer
from pipelines.engine.evaluator import Evaluator
from pipelines.engine.sharding import Sharding
from qrsu_data import interop, store

from conftest import read_events

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(easy_data_dir):
    return easy_data_dir


def small(data_dir, workdir, **kw):
    base = dict(data_dir=data_dir, workdir=os.fspath(workdir), epochs=2, steps_per_epoch=12, log_every=4,
                checkpoint_every=5, eval_batch_size=2000)
    return config_lib.TrainConfig(**{**base, **kw})


def history(workdir):
    return json.loads((Path(workdir) / "history.json").read_text())


def test_defaults_are_the_seed_notebooks_except_what_solves_long_lags():
    c = config_lib.from_args([])
    assert (c.model, c.difficulty, c.batch_size, c.hidden, c.optimizer, c.seed) == ("lstm", "easy", 32, 64, "adam", 42)
    assert c.padding == "pre"
    # Issue 6: what solves hard and nightmare, instead of the notebook's 1e-4, zero gate biases, no clipping.
    assert (c.lr, c.lstm_init, c.clip_norm) == (3e-3, "chrono", 1.0)
    assert config_lib.from_args(["--model", "gru"]).lstm_init == "default"
    seed = config_lib.from_args(["--lr", "1e-4", "--lstm-init", "default", "--clip-norm", "0"])
    assert {k: getattr(seed, k) for k in config_lib.SEED_NOTEBOOK} == config_lib.SEED_NOTEBOOK


def test_help_explains_every_flag_and_the_epoch(capsys):
    with pytest.raises(SystemExit):
        config_lib.from_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--lr 1e-4 --clip-norm 0 --lstm-init default" in out and "the seed notebook used 1e-4" in out
    assert "one pass over the 100,000-sequence train split" in out and "31 freshly generated batches" in out
    for flag in ("--model", "--difficulty", "--batch-size", "--lr", "--hidden", "--seed", "--resume",
                 "--workdir", "--data-dir", "--lstm-init", "--clip-norm", "--padding", "--model-options"):
        assert flag in out
    assert "rnn, lstm, gru" in out  # the registered models


@pytest.mark.slow
def test_small_run_writes_history_plot_config_and_checkpoints(data_dir, tmp_path):
    summary = train.run(small(data_dir, tmp_path / "run", lr=3e-3))
    run = tmp_path / "run"
    h = history(run)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert len(h[key]) == 2 and all(np.isfinite(h[key]))
    assert h["epoch"] == [1, 2] and h["sequences_seen"] == [12 * 32, 24 * 32] and h["eval_split"] == "validation"
    assert h["val_loss"][1] < h["val_loss"][0]  # it learns
    assert h["test"]["step"] == 24 and 0.5 < h["test"]["accuracy"] <= 1  # the test split once, at the end
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "lstm" and saved["lr"] == 3e-3
    assert saved["parameters"] == 18_948 and saved["state_size"] == 128  # reported with the run
    assert Checkpointer(run).steps() == [15, 20, 24]  # every 5 steps and at epoch ends (12, 24); newest 3 kept
    events = read_events(run / "events")  # TensorBoard's view of the same numbers
    assert [s for s, _ in events["validation/accuracy"]] == [12, 24]
    assert [v for _, v in events["validation/accuracy"]] == pytest.approx(h["val_acc"])
    assert events["test/accuracy"] == [(24, pytest.approx(h["test"]["accuracy"]))]
    assert [s for s, _ in events["train/running_loss"]] == [4, 5, 8, 10, 12, 15, 16, 20, 24]
    assert summary["step"] == 24 and summary["final_test_acc"] == h["test"]["accuracy"]


def test_evaluation_counts_every_test_example_once_and_matches_a_plain_forward(data_dir, tmp_path):
    # 10,000 test examples in batches of 3,000: the last batch is filled with masked rows.
    cfg = small(data_dir, tmp_path / "run", eval_batch_size=3000, epochs=1)
    sharding = Sharding.create()
    split, state = init_state(create_model(cfg), create_tx(cfg), cfg.padding, sharding)
    predictions = Evaluator(split, sharding, 3000).predict(state.params, "easy", "test", data_dir=data_dir)
    test = interop.numpy_split("easy", "test", data_dir=data_dir)
    assert len(predictions.labels) == 10_000 and np.array_equal(predictions.labels, test["label"])
    logits = np.asarray(split.merge(state.params)(test["tokens"], test["lengths"]))
    np.testing.assert_array_equal(predictions.predicted, logits.argmax(-1))
    assert predictions.metrics()["accuracy"] == pytest.approx(float((logits.argmax(-1) == test["label"]).mean()))


def _final(workdir):
    """(parameters, meta, next batch) of a run's newest checkpoint."""
    cfg = config_lib.load(Path(workdir) / "config.json")
    sharding = Sharding.create()
    _, state = init_state(create_model(cfg), create_tx(cfg), cfg.padding, sharding)
    import qrsu_data.loaders as loaders
    it = loaders.train_loader(cfg.difficulty, batch_size=cfg.batch_size, seed=cfg.seed, data_dir=cfg.data_dir,
                              padding=cfg.padding)
    ckpt = Checkpointer(workdir)
    state, meta = ckpt.restore(ckpt.steps()[-1], state, it)
    return state.params, meta, next(it)


class _Hooked:
    """A train step that calls ``hook(n, state, loss)`` after its n-th call (1-based), which may replace the loss."""

    def __init__(self, step, hook):
        self.step, self.hook, self.calls = step, hook, 0

    def __call__(self, state, batch):
        state, loss = self.step(state, batch)
        self.calls += 1
        return state, self.hook(self.calls, loss)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.step.close()


def _hook_steps(monkeypatch, hook):
    """Makes the runs' train steps call ``hook`` (see _Hooked); returns the undo."""
    real = session_lib.make_train_step
    monkeypatch.setattr(session_lib, "make_train_step", lambda *a, **k: _Hooked(real(*a, **k), hook))
    return lambda: monkeypatch.setattr(session_lib, "make_train_step", real)


def _signal_at(call, sig=signal.SIGINT):
    def hook(n, loss):
        if n == call:
            signal.raise_signal(sig)
        return loss

    return hook


@pytest.mark.slow
# Mid-epoch, by Ctrl-C; and at the epoch's last step, before its history row, by SIGTERM (kill, a scheduler).
@pytest.mark.parametrize("at_step, sig", [(7, signal.SIGINT), (12, signal.SIGTERM)])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(data_dir, tmp_path, monkeypatch, at_step, sig):
    train.run(small(data_dir, tmp_path / "straight"))
    restore = _hook_steps(monkeypatch, _signal_at(at_step, sig))
    first = train.run(small(data_dir, tmp_path / "resumed"))
    assert first["interrupted"] and first["step"] == at_step
    restore()
    second = train.run(small(data_dir, tmp_path / "resumed", resume=True))
    assert not second["interrupted"] and second["step"] == 24
    a, meta_a, next_a = _final(tmp_path / "straight")
    b, meta_b, next_b = _final(tmp_path / "resumed")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert meta_a["history"] == {**meta_b["history"], "wall_time_s": meta_a["history"]["wall_time_s"]}
    assert history(tmp_path / "resumed")["epoch"] == [1, 2]
    np.testing.assert_array_equal(next_a["tokens"], next_b["tokens"])  # the data order goes on alike
    assert second["final_test_acc"] == history(tmp_path / "straight")["test"]["accuracy"]


@pytest.mark.slow
def test_history_keeps_every_epoch_when_checkpoints_fall_on_epoch_ends(data_dir, tmp_path):
    # The reproduction: steps per epoch a multiple of --checkpoint-every, then a resume that extends.
    w = tmp_path / "run"
    train.run(small(data_dir, w, steps_per_epoch=10, checkpoint_every=10, epochs=2))
    train.run(small(data_dir, w, steps_per_epoch=10, checkpoint_every=10, epochs=3, resume=True))
    h = history(w)
    assert h["epoch"] == [1, 2, 3] and h["sequences_seen"] == [320, 640, 960]
    train.run(small(data_dir, tmp_path / "straight", steps_per_epoch=10, checkpoint_every=10, epochs=3))
    straight = history(tmp_path / "straight")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test"):
        assert h[key] == straight[key], key


def _main(capsys, args):
    """(exit code, stdout, stderr) of ``python -m pipelines.train ARGS``, run in this process."""
    code = train.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_resume_continues_the_saved_run_with_its_settings(data_dir, tmp_path, capsys):
    w = tmp_path / "run"
    common = ["--data-dir", data_dir, "--workdir", os.fspath(w)]
    code, _, err = _main(capsys, [*common, "--steps-per-epoch", "20", "--epochs", "1", "--eval-batch-size", "2000",
                                  "--lr", "1e-2"])
    assert code == 0, err[-2000:]
    # The printed continuation command names no setting: the saved ones are used, not the defaults.
    code, out, err = _main(capsys, ["--workdir", os.fspath(w), "--resume", "--epochs", "2"])
    assert code == 0, err[-2000:]
    assert "2 epochs of 20 steps" in out
    saved = json.loads((w / "config.json").read_text())
    assert saved["lr"] == 1e-2 and saved["steps_per_epoch"] == 20
    assert saved["resumes"] == [{"at_step": 20, "changed": {"epochs": [1, 2]}}]
    before = {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file() and p.name != ".lock"}
    code, _, err = _main(capsys, ["--workdir", os.fspath(w), "--resume", "--epochs", "3", "--lr", "3e-3",
                                  "--batch-size", "16"])
    assert code == 2
    assert "lr: saved 0.01, asked 0.003" in err and "batch-size: saved 32, asked 16" in err
    assert "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file() and p.name != ".lock"} == before
    code, _, err = _main(capsys, ["--workdir", os.fspath(w), "--resume"])
    assert code == 1 and "has trained 2 of its epochs already; pass --epochs" in err


@pytest.mark.slow
def test_overwrite_keeps_the_old_run_until_the_new_one_starts(data_dir, tmp_path):
    w = tmp_path / "run"
    train.run(small(data_dir, w, epochs=1))
    (w / "evaluation.json").write_text("{}")
    (w / "confusion_matrix.png").write_bytes(b"x")
    (w / "notes.txt").write_text("the user's own file")
    before = {p: p.read_bytes() for p in w.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(ValueError, match="batch_size 200000 is larger than the 100000 examples"):
        train.run(small(data_dir, w, overwrite=True, batch_size=200_000, grad_threads=1))
    assert {p: p.read_bytes() for p in w.rglob("*") if p.is_file() and p.name != ".lock"} == before
    train.run(small(data_dir, w, overwrite=True, epochs=1, seed=3))
    assert not (w / "evaluation.json").exists() and not (w / "confusion_matrix.png").exists()
    assert (w / "notes.txt").read_text() == "the user's own file"  # not the run's: left alone
    assert json.loads((w / "config.json").read_text())["seed"] == 3


@pytest.mark.slow
def test_one_writer_per_workdir(data_dir, tmp_path):
    w = tmp_path / "run"
    with runs.WorkdirLock(w):
        with pytest.raises(runs.RunError, match=f"{w} is in use by another training \\(pid {os.getpid()} on "):
            train.run(small(data_dir, w))
    assert not runs.holds_run(w)
    train.run(small(data_dir, w, epochs=1))  # free again once the holder is done


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_readable(data_dir, tmp_path, capsys):
    w = tmp_path / "run"
    train.run(small(data_dir, w))
    latest = Checkpointer(w).steps()[-1]
    for f in (w / "checkpoints" / str(latest) / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    capsys.readouterr()
    summary = train.run(small(data_dir, w, epochs=3, resume=True))
    err = capsys.readouterr().err
    assert f"checkpoint step {latest} is unreadable" in err and "resuming from step 20" in err
    assert summary["step"] == 36 and history(w)["epoch"] == [1, 2, 3]


@pytest.mark.slow
def test_a_checkpoint_from_before_the_skip_of_nonfinite_gradients_resumes(data_dir, tmp_path, monkeypatch):
    from pipelines.engine.model import base_tx

    old, new = tmp_path / "old", tmp_path / "new"
    with monkeypatch.context() as m:
        m.setattr(session_lib, "create_tx", base_tx)  # the optimizer (and state layout) of earlier versions
        train.run(small(data_dir, old, epochs=1))
    ckpt = Checkpointer(old)
    _, legacy = init_state(create_model(small(data_dir, old)), base_tx(small(data_dir, old)), "pre", Sharding.create())
    import qrsu_data.loaders as loaders
    it = loaders.train_loader("easy", batch_size=32, seed=42, data_dir=data_dir, padding="pre")
    ckpt.restore(ckpt.steps()[-1], legacy, it)  # it is the old layout: the plain optimizer's state reads it
    summary = train.run(small(data_dir, old, epochs=2, resume=True))
    assert summary["step"] == 24 and history(old)["epoch"] == [1, 2] and summary["skipped_updates"] == 0
    train.run(small(data_dir, new, epochs=2))
    # Adam's moments came back: the resumed run is the run that had the skip all along (to float rounding: the
    # skip's branch compiles the update differently).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), _final(old)[0], _final(new)[0])


@pytest.mark.slow
def test_a_run_that_diverges_before_its_first_checkpoint_leaves_nothing_to_refuse(data_dir, tmp_path):
    w = tmp_path / "run"
    with pytest.raises(train.Diverged, match="no checkpoint had been saved, so nothing was written"):
        train.run(small(data_dir, w, lr=1e38, clip_norm=0, checkpoint_every=1000))
    assert not runs.holds_run(w) and not (w / "config.json").exists()
    train.run(small(data_dir, w, epochs=1))  # a plain rerun starts


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    w = tmp_path / "run"
    train.run(small(data_dir, w, epochs=1))
    good = Checkpointer(w).steps()[-1]
    before = _final(w)[0]
    _hook_steps(monkeypatch, lambda n, loss: loss * np.nan if n >= 3 else loss)
    with pytest.raises(train.Diverged, match=f"NaN or infinite by step 15.*last good checkpoint \\(step {good}\\)"):
        train.run(small(data_dir, w, epochs=2, resume=True))
    assert Checkpointer(w).steps()[-1] == good
    jax.tree.map(np.testing.assert_array_equal, before, _final(w)[0])


@pytest.mark.slow
def test_a_resume_may_not_change_the_learning_rate(data_dir, tmp_path):
    w = tmp_path / "run"
    train.run(small(data_dir, w, epochs=1))
    with pytest.raises(train.TrainingError, match="lr: saved 0.003, asked 1e\\+38"):
        train.run(small(data_dir, w, epochs=2, lr=1e38, resume=True))


@pytest.mark.slow
def test_workdir_of_another_model_is_refused_and_kept(data_dir, tmp_path):
    w = tmp_path / "run"
    train.run(small(data_dir, w, epochs=1))
    files = {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(train.TrainingError, match="these settings differ from it: model: saved 'lstm', asked 'gru'"):
        train.run(small(data_dir, w, model="gru", resume=True))
    with pytest.raises(train.TrainingError, match="already holds a run; pass --resume"):
        train.run(small(data_dir, w, model="gru"))
    assert {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file() and p.name != ".lock"} == files
    with pytest.raises(train.TrainingError, match="nothing to resume"):
        train.run(small(data_dir, tmp_path / "empty", resume=True))


@pytest.mark.slow
def test_missing_dataset_is_built_first(tmp_path):
    data = tmp_path / "data"
    summary = train.run(config_lib.TrainConfig(data_dir=os.fspath(data), workdir=os.fspath(tmp_path / "run"),
                                               epochs=1, steps_per_epoch=2, eval_batch_size=2000))
    assert store.is_built("easy", data) and summary["step"] == 2


@pytest.mark.slow
def test_default_run_reaches_99_percent(tmp_path):
    """`python -m pipelines.train` with no flags on a fresh checkout: builds easy, trains, >= 99% test accuracy."""
    env = {**os.environ, "QRSU_DATA_DIR": os.fspath(tmp_path / "data"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-m", "pipelines.train"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "is not built yet; building it" in res.stdout
    h = history(tmp_path / "runs" / "lstm-easy-seed42")
    assert len(h["val_acc"]) == 3 and h["test"]["accuracy"] >= 0.99
    assert "test accuracy 1.0000" in res.stdout
