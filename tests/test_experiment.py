"""The experiment grid in --quick mode: runs, stops when solved, writes its results, and reproduces them."""

import json
import os

import pytest

from pipelines import experiment
from qrsu_data import store


def test_quick_experiment_writes_results_and_repeats(tmp_path):
    data = tmp_path / "data"
    store.build("easy", data)
    args = ["--quick", "--data-dir", os.fspath(data)]
    assert experiment.main([*args, "--out", os.fspath(tmp_path / "a")]) == 0
    rows = json.loads((tmp_path / "a" / "results.json").read_text())
    assert {(r["cell"], r["level"]) for r in rows} == {("rnn", "easy"), ("lstm", "easy")}
    lstm = next(r for r in rows if r["cell"] == "lstm")
    assert lstm["solved"] and lstm["sequences_to_solve"] <= 3200 and lstm["test_accuracy"] >= 0.99
    assert lstm["sequences_trained"] == lstm["sequences_to_solve"]  # stopped when solved
    assert 0 <= lstm["wrong_of_2560"] <= 26
    for name in ("results.csv", "results.md", "sequences_to_solve.png", "accuracy_by_level.png",
                 "learning_curves.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert "| easy |" in (tmp_path / "a" / "results.md").read_text()
    # Same seeds, same table.
    assert experiment.main([*args, "--out", os.fspath(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()


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
    with pytest.raises(SystemExit, match="does not exist"):
        experiment.main(["--replot", os.fspath(tmp_path / "missing")])
