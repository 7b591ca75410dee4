"""Evaluating and predicting with a trained run: accuracy matches training's, reports, plots and input errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.engine import config as config_lib
from pipelines import evaluate, predict, train
from pipelines.engine.workdir import RunError, load_run
from qrsu_data import interop, task

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_dir(easy_data_dir):
    return easy_data_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    """A small run on easy: two epochs of 40 steps, so two checkpoints with a test accuracy each (0.994, 1.0)."""
    workdir = tmp_path_factory.mktemp("run")
    config = config_lib.TrainConfig(data_dir=data_dir, workdir=os.fspath(workdir), epochs=2, steps_per_epoch=40,
                                    lr=3e-3, log_every=10, checkpoint_every=1000, eval_batch_size=2000)
    train.run(config)
    return workdir


@pytest.fixture(scope="module")
def evaluated(run_dir):
    """evaluate's command line on the final checkpoint: (exit code, stdout, evaluation.json)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.main(["--workdir", os.fspath(run_dir)])
    return code, out.getvalue(), json.loads((run_dir / "evaluation.json").read_text())


def history(run_dir):
    return json.loads((run_dir / "history.json").read_text())


@pytest.mark.slow
def test_accuracy_equals_the_runs_final_test_accuracy(run_dir, evaluated):
    code, out, result = evaluated
    assert code == 0
    final = history(run_dir)["test"]["accuracy"]
    assert final > 0.6  # well above chance (0.25), so the restored weights are the trained ones
    assert result["step"] == 80 and result["split"] == "test"
    assert abs(result["accuracy"] - final) < 1e-6
    assert f"accuracy {final:.4f}" in out


def test_an_earlier_checkpoint_gives_that_epochs_accuracy(run_dir):
    result = evaluate.evaluate_run(run_dir, split="validation", step=40, write=False)
    assert result["step"] == 40 and result["split"] == "validation"
    assert abs(result["accuracy"] - history(run_dir)["val_acc"][0]) < 1e-6


def test_per_class_and_by_lag_tables_cover_the_split(evaluated, data_dir):
    _, out, result = evaluated
    size = 10_000
    assert result["num_examples"] == size
    assert [r["class"] for r in result["per_class"]] == list(task.CLASSES_6A)
    assert sum(r["count"] for r in result["per_class"]) == size
    assert sum(r["count"] for r in result["by_lag"]) == size
    assert sum(r["correct"] for r in result["per_class"]) == sum(r["correct"] for r in result["by_lag"]) \
        == result["correct"]
    # easy's relevant symbols lie at 1-2 and 4-5: lags 2, 3 and 4.
    assert [(r["lag_min"], r["lag_max"]) for r in result["by_lag"]] == [(2, 2), (3, 3), (4, 4)]
    assert result["lag_definition"] == "t2 - t1"
    labels = interop.numpy_split("easy", "test", data_dir=data_dir)["label"]
    assert [r["count"] for r in result["per_class"]] == np.bincount(labels, minlength=4).tolist()
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == size and np.trace(matrix) == result["correct"]
    assert matrix.sum(axis=1).tolist() == [r["count"] for r in result["per_class"]]
    for name in ("class  count  accuracy", "lag (t2 - t1)", "Q  ", "U  "):
        assert name in out


def test_plots_are_pngs_and_no_temp_files_remain(run_dir, evaluated):
    for name in ("confusion_matrix.png", "accuracy_by_lag.png", "evaluation.json"):
        assert (run_dir / name).exists()
    for name in ("confusion_matrix.png", "accuracy_by_lag.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC
    # The only hidden file is the workdir's writer lock (pipelines.runs.LOCK_FILE), no temp file of a write.
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == [".lock"]


def test_lag_bins_bin_wide_ranges():
    lags = np.arange(170, 281)  # nightmare's lag range: 111 values
    bins = evaluate.lag_bins(lags)
    assert len(bins) <= evaluate.MAX_LAG_ROWS
    assert bins[0][0] == 170 and bins[-1][1] == 280
    assert all(b[0] == a[1] + 1 for a, b in zip(bins, bins[1:]))  # contiguous, no lag counted twice
    assert evaluate.lag_definition(task.get_level("exp6b")).startswith("t3 - t1")


def test_restoring_a_model_needs_no_optimizer(run_dir, monkeypatch):
    from pipelines.engine import model

    def no_optimizer(*args, **kwargs):
        raise AssertionError("load_run made an optimizer")

    monkeypatch.setattr(model, "create_tx", no_optimizer)
    run = load_run(run_dir)
    assert run.step == 80 and type(run.model).__name__ == "SequenceClassifier"


def test_predict_gives_the_known_class_of_test_sequences(run_dir, data_dir, capsys):
    split = interop.numpy_split("easy", "test", data_dir=data_dir)
    config, model, _ = load_run(run_dir)
    predicted = np.asarray(model(split["tokens"], split["lengths"], config.padding)).argmax(-1)
    # Two sequences of each class that the evaluated model gets right: predict must agree with evaluate.
    picks = [i for c in range(4) for i in np.flatnonzero((split["label"] == c) & (predicted == c))[:2]]
    assert len(picks) == 8
    texts = [task.decode(split["tokens"][i][-split["lengths"][i]:]) for i in picks]  # pre-padded rows
    assert predict.main(["--workdir", os.fspath(run_dir), *texts]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 8 and captured.err == ""
    for text, i, line in zip(texts, picks, lines):
        assert line.startswith(f"{text} -> {task.CLASSES_6A[split['label'][i]]} (p=")
        assert line.count("  ") >= 4 and all(f"{c} 0." in line or f"{c} 1." in line for c in task.CLASSES_6A)


def test_predict_warns_outside_the_levels_ranges(run_dir, capsys):
    assert predict.main(["--workdir", os.fspath(run_dir), "BaXbcdaaaaaaaaYdE"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("BaXbcdaaaaaaaaYdE -> ")
    assert "warning:" in captured.err and "length 17 is outside level 'easy'" in captured.err


@pytest.mark.parametrize("sequence, message", [
    ("BaXbcYdZ", "symbols ['Z'] are not in the vocabulary; valid symbols: X Y a b c d B E"),
    ("BaXbcYda", "must start with 'B' and end with 'E'"),
    ("BXaYbXdE", "level 'easy' takes 2 relevant symbols (X or Y), found 3"),
])
def test_predict_rejects_bad_sequences_with_exit_code_2(run_dir, capsys, sequence, message):
    assert predict.main(["--workdir", os.fspath(run_dir), "BaXbcYdE", sequence]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing predicted: every sequence is checked first
    assert message in captured.err and repr(sequence) in captured.err


def test_a_long_sequence_is_named_not_echoed(run_dir, capsys):
    long = "B" + "a" * 50_000 + "X" + "b" * 49_998 + "Z"  # 100,001 symbols, one not in the vocabulary
    assert predict.main(["--workdir", os.fspath(run_dir), long]) == 2
    err = capsys.readouterr().err
    assert "symbols ['Z'] are not in the vocabulary" in err and "(100,001 symbols)" in err
    assert len(err) < 500


@pytest.mark.slow
def test_evaluate_on_an_empty_dir_says_how_to_train(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "--workdir", os.fspath(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"{tmp_path} holds no trained run" in proc.stderr
    assert f"python -m pipelines.train --workdir {tmp_path}" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created in it


def test_missing_checkpoint_and_unknown_step_and_split(run_dir, tmp_path):
    (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(RunError, match="holds no checkpoint"):
        load_run(tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(RunError, match="no checkpoint at step 7; available steps: 40, 80"):
        load_run(run_dir, step=7)
    with pytest.raises(ValueError,
                       match="unknown split 'val' of config 'easy'; choose one of: train, validation, test"):
        evaluate.evaluate_run(run_dir, split="val")
    assert evaluate.main(["--workdir", os.fspath(run_dir), "--split", "val"]) == 2


def test_a_corrupt_checkpoint_or_config_is_named(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for f in (copy / "checkpoints" / "80" / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    assert evaluate.main(["--workdir", os.fspath(copy)]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {copy / 'checkpoints' / '80'} cannot be read" in err and "other steps: 40" in err
    assert "Traceback" not in err
    assert evaluate.main(["--workdir", os.fspath(copy), "--step", "40"]) == 0  # the readable one
    (copy / "config.json").write_text("{not json")
    assert predict.main(["--workdir", os.fspath(copy), "BaXbcYdE"]) == 1
    assert f"{copy / 'config.json'} is not a run's config" in capsys.readouterr().err


@pytest.mark.slow
def test_a_level_of_your_own_trains_and_is_evaluated_on_a_longer_config(tmp_path):
    """Issue 17's end-to-end case: 4 relevant symbols (16 classes), trained briefly, evaluated at length 200."""
    level = "len30to40_pos2to4_pos8to10_pos14to16_pos20to22"
    config = f"{level}-train2000-validation200-test200"
    w = tmp_path / "run"
    summary = train.run(config_lib.TrainConfig(difficulty=config, data_dir=os.fspath(tmp_path / "data"),
                                               workdir=os.fspath(w), epochs=1, steps_per_epoch=30,
                                               eval_batch_size=200))
    assert summary["step"] == 30 and json.loads((w / "config.json").read_text())["difficulty"] == config
    longer = f"{level}-len200-test200"
    result = evaluate.evaluate_run(w, config=longer)
    assert result["config"] == longer and result["num_examples"] == 200
    assert result["classes"][:2] == ["XXXX", "XXXY"] and len(result["classes"]) == 16
    assert (w / f"evaluation-{longer}.json").is_file() and (w / f"accuracy_by_lag-{longer}.png").is_file()
    assert json.loads((w / f"evaluation-{longer}.json").read_text())["accuracy"] == result["accuracy"]
