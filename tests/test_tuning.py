"""The tuned protocol (leaderboard version 2): scores, pruning thresholds, the search's determinism and resume,
and the table's median with its bootstrap interval."""

import os

import pytest

from pipelines import experiment
from pipelines.engine import grid as grid_lib
from pipelines.engine import leaderboard, tuning
from pipelines.engine.solving import RunResult

from conftest import study_records


def result(solved_at=None, trained=10_000, val=0.5, curve=(), seed=0, role="final"):
    return RunResult("lstm", "hard", seed, solved_at is not None, solved_at, solved_at or trained, 0.9, 10, 1.0,
                     list(curve), validation_accuracy=val, lr=1e-3, role=role, budget=trained)


def test_a_solved_run_always_scores_better_than_an_unsolved_one_and_unsolved_ones_rank_by_accuracy():
    budget = 10_000
    assert tuning.score(result(9_999), budget) == 9_999
    assert tuning.score(result(None, val=0.99), budget) > 9_999
    assert tuning.score(result(None, val=0.6), budget) < tuning.score(result(None, val=0.3), budget)


def test_pruning_thresholds_are_the_median_of_finished_runs_after_the_warm_up():
    curves = [[(320 * (k + 1), a) for k, a in enumerate(accs)]
              for accs in ([0.3, 0.5, 0.7, 0.99], [0.3, 0.4, 0.6, 0.8], [0.2, 0.3], [0.25, 0.5, 0.9, 1.0])]
    finished = [result(None, curve=c) for c in curves]
    assert tuning.prune_thresholds(finished[:3], 4, 1280, 320) == ()  # too few finished runs
    t = tuning.prune_thresholds(finished, 5, 2000, 320)
    # Checks before 20% of 2,000 (400) never prune; then the median, a finished run holding its last value.
    assert t[0] == 0.0 and t[1:] == pytest.approx((0.45, 0.65, 0.895, 0.895))


def test_the_median_and_its_bootstrap_interval_count_an_unsolved_run_as_beyond_the_budget():
    runs = [result(x, seed=i) for i, x in enumerate([4000, 5000, 6000, None, None])]
    m = leaderboard.median_summary(runs)
    assert m["median"] == 6000 and m["q1"] == 5000 and m["q3"] is None
    assert m["ci95"][0] == 4000 and m["ci95"][1] is None
    assert leaderboard.median_summary(runs) == m  # seeded
    text = leaderboard._final_text(leaderboard.Selection(1e-3, runs, {}), compact=True)
    assert text == "3/5, 6,000 [4,000-> 10,000], budget 10,000"


TINY = ["--cells", "lstm", "--levels", "easy", "--configs", "4", "--seeds", "0", "1", "--budget", "1600",
        "--check-every", "320", "--lengthgen-lengths"]


@pytest.mark.slow
def test_the_search_is_the_same_with_one_or_two_workers_and_resumes_without_retraining(easy_data_dir, tmp_path,
                                                                                        ray_cluster, capsys):
    for workers in ("1", "2"):
        assert experiment.main([*TINY, "--data-dir", easy_data_dir, "--out", os.fspath(tmp_path / workers),
                                "--workers", workers]) == 0
    one, two = study_records(tmp_path / "1"), study_records(tmp_path / "2")
    assert one == two and len(one) == 4 * 2 + 2  # 4 configurations on 2 seeds, then 2 final seeds
    finals = [r for k, r in one.items() if "-final-" in k]
    search = {k: r for k, r in one.items() if "-final-" not in k}
    # The final seeds run the configuration with the best mean score over its 2 seeds.
    scores = {}
    for k, r in search.items():
        scores.setdefault(k.split("-")[2], []).append(
            tuning.score(RunResult.from_json({**r["result"], "wall_time_s": 0.0}), 1600))
    chosen = min(scores, key=lambda t: (sum(scores[t]) / 2, t))
    chosen_lr = next(r["settings"]["lr"] for k, r in search.items() if f"-{chosen}-" in k)
    assert all(r["settings"]["lr"] == chosen_lr and r["settings"]["prune_below"] == [] for r in finals)
    assert {r["result"]["role"] for r in finals} == {"final"}
    # The settings searched: a learning rate and a weight decay, both inside the family's space.
    space = grid_lib.FAMILIES["lstm"].space
    assert all(space.lr[0] <= r["settings"]["lr"] <= space.lr[1] and
               space.weight_decay[0] <= r["settings"]["weight_decay"] <= space.weight_decay[1]
               for r in search.values())
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "1" / "runs").glob("*.json")}
    assert experiment.main([*TINY, "--data-dir", easy_data_dir, "--out", os.fspath(tmp_path / "1")]) == 0
    assert "10 tasks are done already" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "1" / "runs").glob("*.json")} == before
    table = (tmp_path / "1" / "results.md").read_text()
    assert "| lstm | 18,948 | 128 | 2/2, " in table and "IQR" in table


def test_bad_protocol_flags_are_refused(capsys, tmp_path):
    out = os.fspath(tmp_path / "o")
    assert experiment.main(["--search-seeds", "0", "7", "--out", out]) == 2
    assert "--search-seeds must be distinct and apart from --seeds" in capsys.readouterr().err
    assert experiment.main(["--configs", "0", "--out", out]) == 2
    assert "--configs must be positive" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
