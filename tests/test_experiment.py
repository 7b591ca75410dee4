"""The experiment grid in --quick mode: runs, stops when solved, writes its results, and reproduces them."""

import json
import os

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
    for name in ("results.csv", "results.md", "accuracy_by_level.png", "learning_curves.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert "| easy |" in (tmp_path / "a" / "results.md").read_text()
    # Same seeds, same table.
    assert experiment.main([*args, "--out", os.fspath(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()
