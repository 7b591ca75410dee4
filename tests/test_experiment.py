"""The experiment grid in --quick mode: runs, stops when solved, saves each run, resumes, and reproduces."""

import json
import os

import pytest

from pipelines import experiment

from conftest import read_events


@pytest.fixture(scope="module")
def data_dir(easy_data_dir):
    return easy_data_dir


@pytest.fixture(scope="module")
def first(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "a"
    assert experiment.main(["--quick", "--data-dir", data_dir, "--out", os.fspath(out)]) == 0
    return out


def test_quick_experiment_writes_results(first):
    rows = json.loads((first / "results.json").read_text())
    assert {(r["cell"], r["level"]) for r in rows} == {("rnn", "easy"), ("lstm", "easy")}
    lstm = next(r for r in rows if r["cell"] == "lstm")
    assert lstm["solved"] and lstm["sequences_to_solve"] <= 3200 and lstm["test_accuracy"] >= 0.99
    assert lstm["sequences_trained"] == lstm["sequences_to_solve"]  # stopped when solved
    assert 0 <= lstm["wrong_of_2560"] <= 26
    assert lstm["parameters"] == 18_948 and lstm["state_size"] == 128
    for name in ("results.csv", "results.md", "sequences_to_solve.png", "accuracy_by_level.png",
                 "learning_curves.png", "runs/lstm-easy-seed0.json", "runs/rnn-easy-seed0.json"):
        assert (first / name).stat().st_size > 0
    assert "| easy |" in (first / "results.md").read_text()
    events = read_events(first / "events" / "lstm-easy-seed0")  # `tensorboard --logdir OUT/events` compares runs
    assert [(s, pytest.approx(a)) for s, a in events["validation/accuracy"]] == [tuple(p) for p in lstm["curve"]]


def test_same_seeds_same_table(first, data_dir, tmp_path):
    assert experiment.main(["--quick", "--data-dir", data_dir, "--out", os.fspath(tmp_path / "b")]) == 0
    assert (first / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()


def test_a_rerun_skips_finished_runs_and_extends_the_grid(first, data_dir, capsys, monkeypatch):
    trained = []
    real = experiment.run_one
    monkeypatch.setattr(experiment, "run_one", lambda spec, d=None, **k: trained.append(spec.key) or real(spec, d, **k))
    table = (first / "results.md").read_text()
    assert experiment.main(["--quick", "--data-dir", data_dir, "--out", os.fspath(first)]) == 0
    assert trained == [] and "2 of the 2 runs are done already" in capsys.readouterr().out
    assert (first / "results.md").read_text() == table
    # Another seed of the same settings: only the new run trains, and the table holds all three.
    assert experiment.main(["--cells", "lstm", "--levels", "easy", "--seeds", "1", "--budget", "3200",
                            "--check-every", "320", "--data-dir", data_dir, "--out", os.fspath(first)]) == 0
    assert trained == ["lstm-easy-seed1"]
    assert len(json.loads((first / "results.json").read_text())) == 3


def test_runs_of_other_settings_are_refused_before_anything_trains(first, data_dir, capsys):
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert experiment.main(["--quick", "--lr", "1e-3", "--data-dir", data_dir, "--out", os.fspath(first)]) == 1
    err = capsys.readouterr().err
    assert "holds runs of other settings" in err and "lr: saved 0.002, asked 0.001" in err
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_an_out_that_is_a_file_is_refused_at_once(data_dir, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    assert experiment.main(["--quick", "--data-dir", data_dir, "--out", os.fspath(blocker)]) == 1
    assert f"--out {blocker} is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_replot_rewrites_table_and_plots_without_training(tmp_path, capsys):
    rows = [dict(cell=cell, level="hard", seed=seed, solved=cell == "lstm", sequences_to_solve=4000 + seed
                 if cell == "lstm" else None, sequences_trained=4000 + seed if cell == "lstm" else 32000,
                 test_accuracy=0.995 if cell == "lstm" else 0.25, wrong_of_2560=3, wall_time_s=1.0,
                 curve=[[320, 0.25], [4000, 0.995]]) for cell in ("rnn", "lstm") for seed in (0, 1, 2)]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    assert experiment.main(["--replot", os.fspath(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| hard | 0/3 solved, not solved, acc 0.250 | 3/3 solved, 4,001 seq, acc 0.995 | 31,390 seq |" in table
    for name in ("sequences_to_solve.png", "accuracy_by_level.png", "learning_curves.png", "results.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert experiment.main(["--replot", os.fspath(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
