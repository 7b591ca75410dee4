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


def _simulate(plan: tuning.TunedPlan, outcome) -> list[str]:
    """Runs ``plan`` to its end without training: ``outcome(spec)`` gives (solved_at or None, val); the keys
    handed out, in order."""
    from pipelines.engine.solving import RunResult as Result
    handed = []
    while not plan.done:
        jobs = plan.ready()
        assert jobs, "the plan stalled"
        for job in jobs:
            spec = job.args[0]
            solved_at, val = outcome(spec)
            handed.append(job.key)
            plan.finished(job, (Result(spec.cell, spec.level, spec.seed, solved_at is not None, solved_at,
                                       solved_at or spec.budget, val, 0, 0.0, [(spec.budget, val)],
                                       validation_accuracy=val, lr=spec.lr, role=spec.role, budget=spec.budget),
                                None))
    return handed


def _plan(done, **kw):
    from pipelines.engine.solving import RunSpec
    return tuning.TunedPlan(RunSpec("lstm", "hard", 0, budget=10_000, check_every=1_000), tuning.SearchSpace(),
                            done, configs=4, **kw)


def _fragile_then_steady(spec):
    """t00 solves fast on the search seeds but not on the confirmation's; t01 solves every seed, slower."""
    if spec.role == "t00":
        return (1_000, 1.0) if spec.seed in (100, 101) else (None, 0.5)
    if spec.role == "t01":
        return 3_000, 1.0
    if spec.role == "final":
        return 2_000, 1.0
    return None, 0.3


def test_the_confirmation_chooses_the_configuration_that_solves_on_more_seeds_over_a_lucky_one():
    plan = _plan({})
    handed = _simulate(plan, _fragile_then_steady)
    lrs = {int(t[1:]): cfg["lr"] for t, cfg in ((f"t{i:02d}", c) for i, (_, c) in enumerate(plan.trials))}
    assert plan.candidates == [0, 1]  # the 2 best, both solving
    assert plan.best["lr"] == lrs[1]
    confirm = [k for k in handed if k.endswith(("seed102", "seed103"))]
    assert sorted(confirm) == sorted(f"lstm-hard-t0{i}-seed{s}" for i in (0, 1) for s in (102, 103))
    # The confirmation runs after the whole search and before any final seed.
    assert max(handed.index(k) for k in handed if "-t0" in k and not k.endswith(("102", "103"))) \
        < min(handed.index(k) for k in confirm) < min(handed.index(k) for k in handed if "-final-" in k)
    assert plan.finished_count() == plan.total() == 4 * 2 + 2 * 2 + 5
    # Without it, the lucky configuration is chosen (version 2's first levels).
    unconfirmed = _plan({}, confirm=0)
    _simulate(unconfirmed, _fragile_then_steady)
    assert unconfirmed.best["lr"] == lrs[0] and unconfirmed.candidates == []


def test_with_fewer_than_two_solving_configurations_nothing_is_confirmed():
    plan = _plan({})
    handed = _simulate(plan, lambda spec: (2_000, 1.0) if spec.role in ("t02", "final") else (None, 0.4))
    assert plan.candidates == [] and not any(k.endswith(("seed102", "seed103")) for k in handed)
    assert plan.best["lr"] == plan.trials[2][1]["lr"]
    assert plan.finished_count() == plan.total()  # the confirmation not needed counts as done


def test_a_resumed_search_waiting_on_its_confirmation_counts_its_saved_final_runs():
    # The final seeds were run before the confirmation existed; resumed, the choice waits on it.
    first = _plan({}, confirm=0)
    _simulate(first, _fragile_then_steady)
    resumed = _plan(dict(first.results))
    assert resumed.best is None
    assert resumed.finished_count() == 4 * 2 + 5


def test_final_runs_saved_at_a_configuration_no_longer_chosen_are_set_aside_and_redone():
    first = _plan({}, confirm=0)
    _simulate(first, _fragile_then_steady)
    done = dict(first.results)  # a study saved before the confirmation: its finals ran t00's configuration
    stale_lr = first.best["lr"]
    aside = []
    plan = _plan(done, on_superseded=lambda specs, label: aside.extend(specs))
    handed = _simulate(plan, _fragile_then_steady)
    assert sorted(s.key for s in aside) == sorted(f"lstm-hard-final-seed{i}" for i in range(5))
    assert {s.lr for s in aside} == {stale_lr} != {plan.best["lr"]}
    assert sorted(k for k in handed if "-final-" in k) == sorted(s.key for s in aside)  # redone at the new choice
    assert {plan.results[s.key].lr for s in aside} == {plan.best["lr"]}
    # With nobody to hand them to, the plan refuses rather than drop saved runs.
    with pytest.raises(tuning.StudyError, match="another configuration"):
        _simulate(_plan(dict(first.results)), _fragile_then_steady)


TINY = ["--cells", "lstm", "--levels", "easy", "--configs", "4", "--confirm", "0", "--seeds", "0", "1", "--budget", "1600",
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


def test_setting_runs_aside_moves_the_record_model_events_and_evaluations_and_keeps_them(tmp_path):
    from pipelines.engine.solving import RunSpec
    from pipelines.engine.study import Study
    spec = RunSpec("lstm", "hard", 0, budget=10_000, check_every=1_000, lr=0.02, role="final")
    with Study(tmp_path, grid_lib.KIND) as study:
        files = {"runs": f"{spec.key}.json", "models": f"{spec.key}.npz", "lengthgen": f"{spec.key}.json"}
        for folder, name in files.items():
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / name).write_text(folder)
        (tmp_path / "events" / spec.key).mkdir(parents=True)
        (tmp_path / "events" / spec.key / "e").write_text("events")
        other = tmp_path / "runs" / "lstm-hard-final-seed1.json"
        other.write_text("{}")
        evaluated = {spec.key: {"hard-len200"}, "lstm-hard-final-seed1": {"hard-len200"}}
        driver = grid_lib.Driver(study, keep_params=True, evaluated=evaluated)
        driver.set_aside([spec])
        aside = tmp_path / "superseded" / "lr0.02"
        for folder, name in files.items():
            assert not (tmp_path / folder / name).exists() and (aside / folder / name).read_text() == folder
        assert (aside / "events" / spec.key / "e").read_text() == "events"
        assert other.exists() and evaluated == {"lstm-hard-final-seed1": {"hard-len200"}}
        # A second run of the same key at that rate is never written over the first one set aside.
        (tmp_path / "runs" / f"{spec.key}.json").write_text("again")
        with pytest.raises(grid_lib.StudyError, match="exists already"):
            driver.set_aside([spec])
        assert (tmp_path / "runs" / f"{spec.key}.json").read_text() == "again"


def test_the_confirmation_keeps_the_search_choice_between_two_configurations_that_always_solve():
    # Both solve every seed; t01 is faster on the confirmation seeds: the search's choice (t00) stands.
    plan = _plan({})
    _simulate(plan, lambda spec: {"t00": (1_000 if spec.seed in (100, 101) else 5_000, 1.0),
                                  "t01": (2_000 if spec.seed in (100, 101) else 1_000, 1.0)}.get(
                                      spec.role, (2_000, 1.0) if spec.role == "final" else (None, 0.3)))
    assert plan.candidates == [0, 1] and plan.best["lr"] == plan.trials[0][1]["lr"]


def test_the_time_table_sums_each_levels_run_time_by_role():
    from dataclasses import replace
    runs = [replace(result(1000, seed=s, role=role), level=level, wall_time_s=t)
            for s, role, level, t in [(100, "t00", "hard", 1800.0), (0, "final", "hard", 3600.0),
                                      (100, "t00", "easy", 360.0), (1, "final", "easy", 36.0)]]
    lines = leaderboard.time_table(runs).splitlines()
    assert lines[2:] == ["| easy | 2 | 0.10 | 0.01 | 0.11 |", "| hard | 2 | 0.50 | 1.00 | 1.50 |",
                         "| all | 4 | 0.60 | 1.01 | 1.61 |"]


def test_the_budget_check_compares_each_level_budget_with_5x_its_slowest_solved_median():
    from dataclasses import replace

    def row(cell, level, outcomes, budget):
        return [replace(result(x, seed=i, trained=budget), cell=cell, level=level) for i, x in enumerate(outcomes)]

    runs = (row("lstm", "hard", [1000, 2000, 3000, 4000, 5000], 100_000)
            + row("gru", "hard", [30_000, 32_000, 34_000, None, None], 100_000)  # median 34,000: 5x > 100,000
            + row("rnn", "hard", [None, None, None, None, 50_000], 100_000)  # its median is unsolved: not counted
            + row("lstm", "easy", [100, 200, 300, 400, 500], 10_000))
    lines = leaderboard.budget_check(runs).splitlines()
    assert lines[2:] == ["| easy | 10,000 | 300 (lstm, 5/5 solved) | 1,500 | yes |",
                         "| hard | 100,000 | 34,000 (gru, 3/5 solved) | 170,000 | no |"]


def test_a_final_run_that_solved_within_a_smaller_budget_stands_and_an_unsolved_one_runs_on():
    first = _plan({})
    _simulate(first, lambda spec: ((2_000, 1.0) if spec.seed in (0, 1, 2) else (None, 0.5)) if spec.role == "final"
              else _fragile_then_steady(spec))
    assert first.final_budget == 10_000
    done, aside = dict(first.results), []
    plan = _plan(done, final_budget=20_000, on_superseded=lambda specs, label: aside.append((specs, label)))
    assert [([s.key for s in specs], label) for specs, label in aside] == [
        (["lstm-hard-final-seed3", "lstm-hard-final-seed4"], "budget10000")]
    # The solved ones stand as they were run; the unsolved ones run again, to the final budget.
    known = {s.key: s.budget for s in plan.known_specs() if s.role == "final"}
    assert known == {**{f"lstm-hard-final-seed{i}": 10_000 for i in (0, 1, 2)},
                     **{f"lstm-hard-final-seed{i}": 20_000 for i in (3, 4)}}
    handed = _simulate(plan, lambda spec: (15_000, 1.0))
    assert sorted(k for k in handed if "-final-" in k) == ["lstm-hard-final-seed3", "lstm-hard-final-seed4"]
    assert all(plan.results[f"lstm-hard-final-seed{i}"].solved for i in range(5))


@pytest.mark.slow
def test_a_run_that_solves_is_the_same_run_whatever_its_budget(easy_data_dir):
    # What lets a final run that solved within a smaller budget stand for one with a larger budget.
    from dataclasses import replace

    from pipelines.engine.solving import RunSpec, run_one
    spec = RunSpec("lstm", "easy", 0, budget=3_200, check_every=320, lr=2e-2)
    short, _ = run_one(spec, easy_data_dir)
    long, _ = run_one(replace(spec, budget=9_600), easy_data_dir)
    assert short.solved
    assert replace(short, wall_time_s=0.0, budget=None) == replace(long, wall_time_s=0.0, budget=None)
