"""The factor study: its path from the 1997 protocol to today's defaults, and python -m pipelines.factors."""

import dataclasses
import json
import os

import pytest

from pipelines import factors
from pipelines.engine import solving, trials
from pipelines.engine.config import TrainConfig
from qrsu_data import store

SMALL = "easy-train500-test2560"


def test_the_path_starts_at_the_1997_protocol_and_ends_at_todays_defaults():
    first, last = factors.PATH[0], factors.PATH[-1]
    assert (first.cell, first.hidden, first.gradient, first.loss, first.optimizer, first.lr, first.batch_size,
            first.clip_norm) == ("lstm1997", 4, "truncated", "squared_error", "sgd", 0.5, 1, 0.0)
    defaults = {f.name: f.default for f in dataclasses.fields(solving.RunSpec)}
    assert (last.batch_size, last.lr, last.clip_norm, last.hidden) == tuple(
        defaults[k] for k in ("batch_size", "lr", "clip_norm", "hidden"))
    assert last.cell == "lstm" and last.loss == "cross_entropy" and last.optimizer == TrainConfig.optimizer
    assert last.lstm_init == TrainConfig(model="lstm").validate().lstm_init == "chrono"


def test_each_row_changes_one_factor():
    changed = []
    for above, row in zip(factors.PATH, factors.PATH[1:]):
        a, b = dataclasses.asdict(above), dataclasses.asdict(row)
        changed.append({k for k in a if k not in ("name", "change") and a[k] != b[k]})
    assert changed == [{"gradient"}, {"loss"}, {"optimizer", "lr", "clip_norm"}, {"batch_size"}, {"cell"},
                       {"lstm_init"}, {"hidden"}]
    for name in ("batch-16", "forget-gate"):  # both kinds of learner build (the 1997 one also trains below)
        assert factors.learner_for(factors.ROWS[name], 4).batch_size == 16


def test_one_stop_rule_for_every_row():
    assert factors.STOP == trials.StopRule(window=2000, correct_by="argmax", max_error=None)
    assert "2,000 most recent" in factors.STOP.describe() and "argmax" in factors.STOP.describe()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    store.build(SMALL, d)
    return d


def _args(data, out, *extra):
    return ["--config", SMALL, "--data-dir", os.fspath(data), "--out", os.fspath(out), "--trials", "2",
            "--budget", "300", "--no-progress", *extra]


@pytest.mark.slow
def test_factor_study_end_to_end_resumes_and_refuses_other_settings(data, tmp_path, capsys, ray_cluster):
    assert factors.main(_args(data, tmp_path, "--rows", "1997")) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["1997"]
    for row in result["rows"]:
        assert row["settings"] == factors.ROWS[row["name"]].settings()
        assert [t["seed"] for t in row["trials"]] == [0, 1]
        assert all(not t["solved"] and t["sequences_trained"] == 300 for t in row["trials"])
        assert row["summary"]["solved"] == 0
    table = (tmp_path / "results.md").read_text()
    assert "| 1997 | the 1997 protocol" in table and "| 0/2 | not solved | > 300 |" in table
    assert (tmp_path / "factors.png").stat().st_size > 0
    capsys.readouterr()
    # A rerun keeps the rows it has and runs the new one, in the path's order.
    assert factors.main(_args(data, tmp_path, "--rows", "cross-entropy")) == 0
    out = capsys.readouterr().out
    assert "1997: kept from" in out and "cross-entropy: 0/2 solved" in out
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["1997", "cross-entropy"]
    assert rows[0] == result["rows"][0]
    assert factors.main(_args(data, tmp_path, "--seed", "3")) == 1
    assert "already holds results of other settings: seed: saved 0, asked 3" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "argument --trials: must be a positive integer, got '0'"),
    (["--budget", "-5"], "argument --budget: must be a positive integer, got '-5'"),
    (["--rows", "momentum"], "argument --rows: invalid choice: 'momentum'"),
    (["--config", "exp6b"], "--config 'exp6b' has 8 classes"),
])
def test_bad_flags_exit_2_with_a_message(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        factors.main(["--out", os.fspath(tmp_path / "out"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
