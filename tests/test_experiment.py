"""The experiment in --quick mode (the leaderboard's protocol on two families): runs, learning-rate selection on
validation, length generalisation, TensorBoard events, resuming, and the same table from the same seeds."""

import json
import os
import shutil
import statistics
from pathlib import Path

import pytest

from pipelines import experiment
from pipelines.engine import grid as grid_lib
from pipelines.engine import leaderboard, solving

from conftest import read_events

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(easy_data_dir):
    return easy_data_dir


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(scope="module")
def first(data_dir, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("exp") / "a"
    assert experiment.main(["--quick", "--data-dir", data_dir, "--out", os.fspath(out)]) == 0
    return out


def test_quick_runs_the_protocol_on_two_families(first):
    rows = json.loads((first / "results.json").read_text())
    # Each family: its three learning rates on seed 0, then seeds 1 and 2 at the chosen one.
    assert len(rows) == 10 and {r["cell"] for r in rows} == {"lstm", "gru"}
    for cell in ("lstm", "gru"):
        runs = [r for r in rows if r["cell"] == cell]
        assert sorted(r["lr"] for r in runs if r["seed"] == 0) == list(grid_lib.FAMILIES[cell].lrs)
        chosen = {r["lr"] for r in runs if r["seed"] > 0}
        assert len(chosen) == 1 and sorted(r["seed"] for r in runs if r["lr"] in chosen) == [0, 1, 2]
    lstm = [r for r in rows if r["cell"] == "lstm"]
    assert all(r["solved"] and r["sequences_trained"] == r["sequences_to_solve"] <= 3200 for r in lstm)
    assert all(r["validation_accuracy"] >= 0.99 and r["test_accuracy"] > 0.95 for r in lstm)
    assert lstm[0]["parameters"] == 18_948 and lstm[0]["state_size"] == 128
    for name in ("results.csv", "results.md", "sequences_to_solve.png", "learning_curves.png", "lengthgen.md",
                 "lengthgen.png", "lengthgen.json"):
        assert (first / name).stat().st_size > 0
    table = (first / "results.md").read_text()
    assert "| family | parameters | state | easy |" in table and "| lstm | 18,948 | 128 | 3/3, " in table


def test_the_learning_rate_is_chosen_on_validation_by_the_stated_rule(first):
    results = grid_lib.load_results(first)
    for (cell, level), sel in leaderboard.select(results).items():
        seed0 = {r.lr: r for r in results if r.cell == cell and r.seed == 0}
        # Most solved, then fewest sequences to solve, then the highest validation accuracy.
        best = max(seed0.values(), key=lambda r: (r.solved, -(r.sequences_to_solve or 1e12), r.validation_accuracy))
        assert sel.lr == best.lr and [r.seed for r in sel.runs] == [0, 1, 2]


def test_length_generalisation_and_tensorboard_events(first):
    record = json.loads((first / "lengthgen.json").read_text())
    assert record["trained_on"] == "easy"
    assert set(record["accuracy"]) == {"lstm", "gru"}
    assert all(set(per) == {"easy-len16", "easy-len32"} and len(per["easy-len16"]) == 3
               for per in record["accuracy"].values())
    run = json.loads(next((first / "runs").glob("lstm-easy-*-seed1.json")).read_text())["result"]
    events = read_events(first / "events" / next((first / "runs").glob("lstm-easy-*-seed1.json")).stem)
    assert [(s, pytest.approx(a)) for s, a in events["validation/accuracy"]] == [tuple(p) for p in run["curve"]]
    assert [a for _, a in events["test/accuracy"]] == [pytest.approx(run["test_accuracy"])]


def _records(out):
    return {p.stem: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}


def test_a_stopped_evaluation_keeps_its_configs_and_evaluates_only_the_rest(first, data_dir, capsys):
    # Each (model, config) is a task saved as it ends: a study stopped inside a model's evaluations keeps the
    # configs done (a Transformer's at 10,000 alone is minutes), and a rerun evaluates only the others.
    files = sorted((first / "lengthgen").glob("*.json"))
    full = json.loads(files[0].read_text())
    files[0].write_text(json.dumps({"easy-len16": full["easy-len16"]}))  # as if stopped after its first config
    others = {p: p.stat().st_mtime_ns for p in files[1:]}
    assert experiment.main(["--quick", "--data-dir", data_dir, "--out", os.fspath(first)]) == 0
    assert "21 tasks are done already" in capsys.readouterr().out
    assert json.loads(files[0].read_text()) == full  # the same model on the same sequences
    assert {p: p.stat().st_mtime_ns for p in files[1:]} == others


def test_a_rerun_skips_finished_runs_and_extends_the_grid(first, data_dir, capsys):
    table = (first / "results.md").read_text()
    before = _records(first)
    assert experiment.main(["--quick", "--data-dir", data_dir, "--out", os.fspath(first)]) == 0
    assert _records(first) == before and "22 tasks are done already" in capsys.readouterr().out
    assert (first / "results.md").read_text() == table
    # Another seed of the same settings: only the new run trains, and the table holds it.
    assert experiment.main(["--quick", "--cells", "lstm", "--seeds", "0", "1", "2", "3", "--data-dir", data_dir,
                            "--out", os.fspath(first), "--lengthgen-lengths"]) == 0
    new = {k: t for k, t in _records(first).items() if before.get(k) != t}
    assert len(new) == 1 and next(iter(new)).startswith("lstm-easy-") and next(iter(new)).endswith("-seed3")


def test_redo_sets_a_familys_runs_aside_and_runs_them_again(first, data_dir, tmp_path, capsys):
    # After a fix to a model its rows are redone: its saved runs kept under superseded/LABEL, the others untouched.
    out = tmp_path / "study"
    shutil.copytree(first, out)
    before = _records(out)
    gru = {k for k in before if k.startswith("gru-")}
    for key, cell in (("gru-easy-lr0.002-seed9", "gru"), ("lstm-easy-lr0.002-seed9", "lstm")):  # runs in flight
        (out / "inflight" / key).mkdir(parents=True)
        (out / "inflight" / key / "settings.json").write_text(json.dumps({"cell": cell, "level": "easy"}))
    assert gru and experiment.main(["--quick", "--cells", "gru", "--redo", "fix", "--data-dir", data_dir,
                                    "--out", os.fspath(out)]) == 0
    printed = capsys.readouterr().out
    assert f"set aside {len(gru)} saved run(s) of gru on easy" in printed
    assert "lstm-easy-lr0.002-seed9" not in printed  # another family's snapshot is not this command's to resume
    assert {p.stem for p in (out / "superseded" / "fix" / "runs").glob("*.json")} == gru
    assert [p.name for p in (out / "inflight").iterdir()] == ["lstm-easy-lr0.002-seed9"]  # the gru's snapshot too
    assert {p.name for p in (out / "superseded" / "fix" / "lengthgen").glob("*.json")} == {
        p.name for p in (first / "lengthgen").glob("gru-*.json")}
    after = _records(out)
    assert {k: t for k, t in after.items() if k not in gru} == {k: t for k, t in before.items() if k not in gru}
    # The study's tables still hold every family, not only the command's.
    assert {r["cell"] for r in json.loads((out / "results.json").read_text())} == {"lstm", "gru"}
    assert set(json.loads((out / "lengthgen.json").read_text())["accuracy"]) == {"lstm", "gru"}
    for key in gru:  # redone, from the same seeds: the same results
        old, new = (json.loads((folder / f"{key}.json").read_text())["result"]
                    for folder in (out / "superseded" / "fix" / "runs", out / "runs"))
        assert (new["sequences_to_solve"], new["test_accuracy"]) == (old["sequences_to_solve"], old["test_accuracy"])
    # The same label again is refused, moving nothing: a redo under it has begun.
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".lock" not in p.name}
    assert experiment.main(["--quick", "--cells", "gru", "--redo", "fix", "--data-dir", data_dir,
                            "--out", os.fspath(out)]) == 1
    assert "run the same command without --redo" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".lock" not in p.name} == files


def test_runs_of_other_settings_are_refused_before_anything_trains(first, data_dir, capsys):
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert experiment.main(["--quick", "--clip-norm", "0", "--data-dir", data_dir, "--out", os.fspath(first)]) == 1
    err = capsys.readouterr().err
    assert "holds runs of other settings" in err and "clip_norm: saved 1.0, asked 0.0" in err
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
                 curve=[[320, 0.25], [4000, 0.995]], parameters=100, state_size=8)
            for cell in ("rnn", "lstm") for seed in (0, 1, 2)]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    # Saved runs, with the length-generalisation records of the LSTM's (whichever invocation wrote them): the
    # rebuilt tables hold them all.
    (tmp_path / "runs").mkdir()
    (tmp_path / "lengthgen").mkdir()
    for row in rows:
        key = solving.RunSpec(row["cell"], "hard", row["seed"], budget=32000, check_every=320).key
        (tmp_path / "runs" / f"{key}.json").write_text(json.dumps({"settings": {}, "result": row}))
        if row["cell"] == "lstm":
            accuracy = (0.9, 0.8, 1.0)[row["seed"]]
            (tmp_path / "lengthgen" / f"{key}.json").write_text(json.dumps({"hard-len200": accuracy}))
    assert experiment.main(["--replot", os.fspath(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert table.index("| lstm |") < table.index("| rnn |")  # the families' order, not the alphabet's
    assert "| lstm | 0.900 |" in (tmp_path / "lengthgen.md").read_text() and (tmp_path / "lengthgen.png").is_file()
    assert "| lstm | 100 | 8 | 3/3, 4,001 (4,000-4,002), acc 0.995 |" in table
    assert "| rnn | 100 | 8 | 0/3, acc 0.250 |" in table
    assert "| 1997 LSTM (paper, mean) | 156 / 308 |  | 31,390 |" in table
    headline = (tmp_path / "headline.md").read_text()
    assert "| lstm | 100 | 8 | 3/3, 4,001, 0.995 |" in headline and "| rnn | 100 | 8 | 0/3, -, 0.250 |" in headline
    assert "| all | 6 |" in (tmp_path / "time.md").read_text()  # the worker-hours the runs took
    for name in ("sequences_to_solve.png", "learning_curves.png", "results.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert experiment.main(["--replot", os.fspath(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_every_family_of_the_grid_learns_easy_through_the_protocol(data_dir, tmp_path):
    # The families --quick does not cover, each at its stated size through the same code: each must solve easy
    # (validation at most 1% wrong) and score above 99% on its test split within 3,200 sequences.
    cells = [c for c in grid_lib.FAMILIES if c not in experiment.QUICK["cells"]]
    out = tmp_path / "all"
    assert experiment.main(["--protocol", "grid", "--cells", *cells, "--levels", "easy", "--seeds", "0", "--lrs",
                            "2e-3", "--budget", "3200",
                            "--data-dir", data_dir, "--out", os.fspath(out), "--lengthgen-lengths"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert sorted(r["cell"] for r in rows) == sorted(cells)
    for r in rows:
        assert r["solved"] and r["sequences_to_solve"] <= 3200, r["cell"]
        assert r["test_accuracy"] > 0.99 and r["parameters"] > 0 and r["state_size"] > 0, r["cell"]
    table = (out / "results.md").read_text()
    assert all(f"| {c} |" in table for c in cells)


def test_the_default_grid_has_every_family_on_every_level():
    args = experiment.parser().parse_args([])
    experiment._validate(args)
    grid = grid_lib.Grid(args)
    every = {(c, lv) for c in grid_lib.FAMILIES for lv in grid_lib.TUNED_BUDGETS}
    assert set(grid.pairs()) == every and len(every) == 10 * 6 and args.protocol == "tuned"
    # 8 configurations on 2 seeds, the 2 best on 2 more, then 5 final seeds; and each final model on hard
    # evaluated at each length.
    assert grid.total() == ((8 * 2 + 2 * 2 + 5) * len(every)
                            + 5 * len(grid_lib.FAMILIES) * len(grid_lib.LENGTHGEN_LENGTHS))
    # One budget per level for every family: at least 100,000 on hard and exp6b.
    assert {grid.spec(c, lv, 1e-3, 0).budget for c, lv in every if lv == "hard"} == {grid_lib.TUNED_BUDGETS["hard"]}
    assert min(grid_lib.TUNED_BUDGETS["hard"], grid_lib.TUNED_BUDGETS["exp6b"]) >= 100_000
    # And at least 5x the slowest solved median of any family in version 1, so that "not solved" means it.
    assert all(grid_lib.TUNED_BUDGETS[lv] >= 5 * grid_lib.V1_SLOWEST_SOLVED[lv] for lv in grid_lib.TUNED_BUDGETS)
    # The final seeds run on where version 2's own slowest solved medians asked for more; never for less.
    assert {lv: grid.final_budget(lv) for lv in ("normal", "moderate", "hard")} == grid_lib.TUNED_FINAL_BUDGETS
    assert all(grid.final_budget(lv) >= grid_lib.TUNED_BUDGETS[lv] for lv in grid_lib.TUNED_BUDGETS)
    final = grid.plan("lstm", "hard", {}, None)
    assert final.final_budget == 160_000 and final.base.budget == 100_000


def test_version_1s_slowest_solved_medians_are_those_of_its_results():
    results = grid_lib.load_results(REPO / "docs" / "leaderboard")
    slowest = {}
    for (cell, level), chosen in leaderboard.select(results).items():
        solved = [r.sequences_to_solve for r in results
                  if r.cell == cell and r.level == level and r.lr == chosen.lr and r.solved]
        if solved:
            slowest[level] = max(slowest.get(level, 0), statistics.median(solved))
    assert slowest == grid_lib.V1_SLOWEST_SOLVED


def test_training_through_the_budget_is_a_flag_of_the_grid():
    for flags, through in (([], False), (["--train-through"], True)):
        args = experiment.parser().parse_args(["--protocol", "grid", "--cells", "gru", "--levels", "hard", *flags])
        spec = grid_lib.Grid(args).spec("gru", "hard", 2e-3, 0)
        assert spec.train_through is through and spec.config().decay_steps == (spec.steps if through else 0)
