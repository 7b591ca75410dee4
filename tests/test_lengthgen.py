"""The length-generalisation command: recipes, Pascanu et al.'s test configs, the matrix and its table."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines import lengthgen
from pipelines.engine import grid as grid_lib
from pipelines.engine.solving import RunSpec, run_one
from qrsu_data import splits, task


def test_pascanus_test_configs_hold_their_positions_exactly():
    assert lengthgen.pascanu_config(50) == "len50_pos5to9_pos25to29-train1-validation0"
    assert lengthgen.pascanu_config(5000) == "len5000_pos500to999_pos2500to2999-train1-validation0"
    for n in lengthgen.PASCANU_LENGTHS:
        spec = splits.SplitSpec.parse(lengthgen.pascanu_config(n))
        level = spec.level_def
        assert level.length == (n, n) and spec.size("test") == 10_000 and "validation" not in spec.splits
        # Their code: p0 in [L/10, 2L/10), p1 in [L/2, L/2 + L/10).
        assert level.positions == ((n // 10, 2 * (n // 10) - 1), (n // 2, n // 2 + n // 10 - 1))
    train = task.get_level(lengthgen.PASCANU_LEVEL)
    assert train.length == (50, 199) and train.ranges_at(100) == ((10, 19), (50, 59))


def test_recipes_that_set_the_state_need_a_family_whose_state_can_be_set():
    assert lengthgen.applicable("lstm", "passed") and lengthgen.applicable("transformer", "varied")
    assert not lengthgen.applicable("transformer", "passed") and not lengthgen.applicable("transformer", "noise")


def test_the_matrix_table_gives_the_median_and_range_over_seeds():
    found = {"lstm": {"fixed": {"hard-len200": [0.5, 0.9, 0.7]}, "passed": {"hard-len200": [1.0, 0.98]}}}
    table = lengthgen.markdown(found, (200, 500))
    # The seed count shows a row still being filled (here passed, with 2 seeds of 3).
    assert "| lstm | fixed | 3 | 0.700 (0.50-0.90) |  |" in table
    assert "| lstm | passed | 2 | 0.990 (0.98-1.00) |" in table


@pytest.mark.slow
def test_the_matrix_end_to_end(tmp_path, ray_cluster, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.fspath(Path(__file__).resolve().parents[1]))  # examples/ from the repository
    out = tmp_path / "lg"
    # One recipe: every recipe is the same code with other settings (tests/test_length_generalisation.py).
    args = ["--cells", "gru", "--recipes", "noise", "--lengths", "200", "--budget", "640",
            "--check-every", "320", "--eval-sequences", "32", "--out", os.fspath(out),
            "--data-dir", os.fspath(tmp_path / "data")]
    assert lengthgen.main(args) == 0
    found = json.loads((out / "matrix.json").read_text())
    assert set(found["gru"]) == {"noise"}
    assert all(len(per["hard-len200"]) == 3 for per in found["gru"].values())  # every seed of the chosen rate
    runs = [json.loads(p.read_text())["settings"] for p in (out / "noise" / "runs").glob("*.json")]
    assert {r["initial_state"] for r in runs} == {"noise"} and {r["level"] for r in runs} == {"hard-var50to200"}
    assert {r["bucket_width"] for r in runs} == {25}
    assert (out / "matrix.png").stat().st_size > 0 and "| gru | noise |" in (out / "matrix.md").read_text()
    # examples/evaluate_saved_run.py: a saved model of the study, on other test sequences, as the study does it.
    from examples.evaluate_saved_run import evaluate_saved_run
    key = sorted(p.stem for p in (out / "noise" / "models").glob("*.npz"))[0]
    record = evaluate_saved_run(out / "noise", key, ["hard-len200"], 32, os.fspath(tmp_path / "data"))
    saved = json.loads((out / "noise" / "lengthgen" / f"{key}.json").read_text())
    assert record == {"hard-len200": saved["hard-len200"]}  # the same 32 sequences the study evaluated
    with pytest.raises(ValueError, match=f"no saved run 'nope' in .*; its saved runs: {key}"):
        evaluate_saved_run(out / "noise", "nope", ["hard-len200"], 32)
    # --confusion: the same sequences' confusion matrix, its diagonal the accuracy above, written with --out.
    from examples import evaluate_saved_run as example
    written = tmp_path / "confusion.json"
    assert example.main([os.fspath(out / "noise"), key, "--sequences", "32", "--lengths", "200", "--confusion",
                         "--data-dir", os.fspath(tmp_path / "data"), "--out", os.fspath(written)]) == 0
    confusion = json.loads(written.read_text())
    counts = np.asarray(confusion["confusion"]["hard-len200"][example.COUNTS])
    assert counts.shape == (4, 4) and counts.sum() == 32 and confusion["confusion"]["hard-len200"]["classes"] == [
        "Q", "R", "S", "U"]
    assert confusion["accuracy"] == record and np.trace(counts) == round(32 * record["hard-len200"])
    assert example.main([os.fspath(out / "noise"), key, "--sequences", "0"]) == 2
    assert "--sequences must be positive" in capsys.readouterr().err
    capsys.readouterr()
    # The matrix holds every recipe studied in --out, whichever recipes the command names; --replot also rewrites
    # each recipe's own tables, which a study stopped mid-way leaves at its last finish.
    (out / "noise" / "results.md").write_text("stale")
    others = [a if a != "noise" else "varied" for a in args]
    assert lengthgen.main([*others, "--replot"]) == 0 and "| gru | noise |" in capsys.readouterr().out
    assert "| gru |" in (out / "noise" / "results.md").read_text()


def test_pascanus_runs_stop_by_their_codes_rule():
    # Their code stops at no validation sequence wrong, not at the leaderboard's 1%.
    args = lengthgen.parser().parse_args(["--pascanu"])
    args.budget, args.check_every = 1000, 100
    spec = grid_lib.Grid(lengthgen.pascanu_args(args)).spec("pascanu_rnn", lengthgen.PASCANU_LEVEL, 0.01, 0)
    assert spec.solved_error == 0.0 and spec.omega == 4.0 and spec.optimizer == "sgd" and spec.batch_size == 20
    assert spec.bucket_width == 1  # their code: one length per minibatch
    # Another bucket width is another study, in a folder of its own.
    args.pascanu_buckets, args.pascanu_train = 10, 3000
    assert grid_lib.Grid(lengthgen.pascanu_args(args)).spec(
        "pascanu_rnn", lengthgen.pascanu_level(3000), 0.01, 0).bucket_width == 10
    assert lengthgen.pascanu_args(args).out.endswith(os.sep + "pascanu-train3000-buckets10")


@pytest.mark.slow
def test_a_run_stops_by_its_stop_rule(easy_data_dir):
    # The seed's RNN on easy passes 99% right (the leaderboard's stop) before it is at 100%: with no sequence
    # wrong as its rule, the run goes on past the checks where the leaderboard's would have stopped.
    spec = RunSpec("rnn", "easy", 0, budget=9600, check_every=160, lr=3e-3, solved_error=0.0)
    result, _ = run_one(spec, easy_data_dir)
    assert any(0.99 <= accuracy < 1.0 for _, accuracy in result.curve[:-1]), result.curve
    assert result.validation_accuracy == 1.0 if result.solved else result.sequences_trained == 9600


def test_the_through_recipes_train_their_whole_budget_with_a_decaying_rate(tmp_path):
    args = lengthgen.parser().parse_args(["--out", os.fspath(tmp_path)])
    args.budget, args.check_every = lengthgen.BUDGET, lengthgen.CHECK_EVERY
    for recipe, state in (("passed-through", "passed"), ("varied-through", "zero")):
        grid = grid_lib.Grid(lengthgen.study_args(recipe, ["mingru"], tmp_path, args))
        spec = grid.spec("mingru", "hard-var50to200", 4e-3, 0)
        assert spec.train_through and spec.initial_state == state and spec.key.endswith("-through-lr0.004-seed0")
        # 100,000 sequences in whole checks of 1,600 (100 steps of 16): 63 checks, the rate at 0 after the last.
        assert spec.config().decay_steps == spec.steps == 6300
    plain = grid_lib.Grid(lengthgen.study_args("passed", ["mingru"], tmp_path, args))
    assert not plain.spec("mingru", "hard-var50to200", 4e-3, 0).train_through
    assert plain.args.seeds == [0, 1, 2] and plain.lrs("mingru") == (1e-3, 3e-3, 1e-2)


def test_the_matrix_takes_its_seeds_learning_rates_and_width_from_the_command(tmp_path):
    args = lengthgen.parser().parse_args(["--hidden", "128", "--lrs", "0.004", "--seeds", "0", "3", "5"])
    args.budget, args.check_every = lengthgen.BUDGET, lengthgen.CHECK_EVERY
    grid = grid_lib.Grid(lengthgen.study_args("passed-through", ["mingru"], tmp_path, args))
    assert grid.args.seeds == [0, 3, 5] and grid.lrs("mingru") == (0.004,)
    assert grid.spec("mingru", "hard-var50to200", 0.004, 3).hidden == 128


@pytest.mark.slow
def test_pascanus_experiment_end_to_end(tmp_path, ray_cluster, capsys, monkeypatch):
    # Their experiment as the command runs it, shrunk: a split of 2,000, 40 sequences, one test length. It used
    # to train, evaluate and then fail on its last step (the heatmap's label had no suite to name).
    monkeypatch.setattr(lengthgen, "PASCANU_LENGTHS", (50,))
    out = tmp_path / "lg"
    args = ["--pascanu", "--pascanu-train", "2000", "--seeds", "0", "--budget", "40", "--check-every", "20",
            "--out", os.fspath(out), "--data-dir", os.fspath(tmp_path / "data")]
    assert lengthgen.main(args) == 0
    printed = capsys.readouterr().out
    folder = out / "pascanu-train2000"
    run = json.loads((folder / "runs" / f"{next((folder / 'lengthgen').glob('*.json')).stem}.json").read_text())
    assert run["settings"]["level"] == f"{lengthgen.PASCANU_LEVEL}-train2000" and run["result"]["seed"] == 0
    wrong = round((1 - json.loads(next((folder / "lengthgen").glob("*.json")).read_text())[
        lengthgen.pascanu_config(50)]) * 10_000)
    assert f"| 0 | not in 40 | {wrong} wrong |" in printed
    assert (folder / "lengthgen.png").stat().st_size > 0
    assert f"trained on {lengthgen.PASCANU_LEVEL}-train2000" in (folder / "lengthgen.md").read_text()


def test_with_one_learning_rate_each_model_is_evaluated_as_its_run_finishes(tmp_path):
    # Pascanu's study has one rate: its seeds' evaluations at length need not wait for the last seed's run
    # (they did: a solved seed waited hours for its evaluation behind the others' 10,000,000-sequence runs).
    from pipelines.engine.solving import RunResult

    args = lengthgen.parser().parse_args(["--pascanu", "--out", os.fspath(tmp_path)])
    args.budget, args.check_every = 1000, 100
    grid = grid_lib.Grid(lengthgen.pascanu_args(args))
    seed0 = grid.spec("pascanu_rnn", lengthgen.PASCANU_LEVEL, 0.01, 0)
    done = {seed0.key: RunResult("pascanu_rnn", lengthgen.PASCANU_LEVEL, 0, True, 400, 400, 1.0, 0, 1.0, [(400, 1.0)],
                                 lr=0.01)}
    plan = grid.plan("pascanu_rnn", lengthgen.PASCANU_LEVEL, done, None)
    evals = grid_lib.LengthPlan(plan, grid.lengthgen_configs(lengthgen.PASCANU_LEVEL), {}, lambda spec: {}, None)
    jobs = evals.ready()
    assert {j.args[0].key for j in jobs} == {seed0.key}
    assert len(jobs) == len(lengthgen.PASCANU_LENGTHS) and not evals.done


def _leaderboard_study(study: Path, accuracies: dict[str, list[float]], level: str = "hard",
                       lr: float | None = None) -> Path:
    """A leaderboard study's saved final runs on ``level`` at ``lr`` and their evaluations at length (family ->
    accuracy at hard-len200, by seed), as pipelines.experiment writes them."""
    import dataclasses
    from pipelines.engine.solving import RunResult
    for folder in ("runs", "lengthgen"):
        (study / folder).mkdir(parents=True, exist_ok=True)
    for cell, per_seed in accuracies.items():
        for seed, accuracy in enumerate(per_seed):
            key = f"{cell}-{level}-final-seed{seed}"
            result = RunResult(cell, level, seed, True, 3_200, 3_200, 1.0, 0, 1.0, [(3_200, 1.0)], role="final",
                               lr=lr)
            (study / "runs" / f"{key}.json").write_text(json.dumps(
                {"settings": {"cell": cell, "level": level}, "result": dataclasses.asdict(result)}))
            (study / "lengthgen" / f"{key}.json").write_text(json.dumps({"hard-len200": accuracy}))
    return study


def test_the_fixed_rows_come_from_a_leaderboard_study_and_its_folder_is_remembered(tmp_path, capsys):
    board = _leaderboard_study(tmp_path / "board", {"gru": [1.0, 0.5, 0.75], "mingru": [1.0, 1.0, 1.0, 1.0, 0.75]})
    out = tmp_path / "lg"
    # The matrix's own fixed study has the LSTM; the leaderboard gives the families the matrix lacks.
    _leaderboard_study(out / "fixed", {"lstm": [0.25, 0.5, 0.25], "gru": [0.3, 0.3, 0.3]})
    args = ["--lengths", "200", "--out", os.fspath(out), "--replot"]
    assert lengthgen.main([*args, "--fixed-from", os.fspath(board)]) == 0
    found = json.loads((out / "matrix.json").read_text())
    assert found["mingru"]["fixed"]["hard-len200"] == [1.0, 1.0, 1.0, 1.0, 0.75]
    assert found["gru"]["fixed"]["hard-len200"] == [0.3, 0.3, 0.3]  # the matrix's own study comes first
    assert found["lstm"]["fixed"]["hard-len200"] == [0.25, 0.5, 0.25]
    assert json.loads((out / lengthgen.FIXED_FROM).read_text()) == {"study": "../board"}
    # A later command without the flag keeps the rows: the study's folder was recorded, relative to --out.
    (out / "matrix.json").unlink()
    assert lengthgen.main(args) == 0 and json.loads((out / "matrix.json").read_text()) == found
    assert "| mingru | fixed | 5 | 1.000 (0.75-1.00) |" in capsys.readouterr().out


def test_a_fixed_from_folder_without_hard_models_is_refused_and_nothing_is_written(tmp_path, capsys):
    board = _leaderboard_study(tmp_path / "board", {"gru": [1.0]}, level="easy")
    for source in (board, tmp_path / "nowhere"):
        assert lengthgen.main(["--out", os.fspath(tmp_path / "lg"), "--replot", "--fixed-from", os.fspath(source)]) == 2
        assert "no evaluations at length of models trained on hard" in capsys.readouterr().err
    assert not (tmp_path / "lg").exists()


def test_the_rate_tuned_on_hard_joins_each_familys_grid(tmp_path):
    board = _leaderboard_study(tmp_path / "board", {"mingru": [1.0, 1.0]}, lr=0.0229734)
    _leaderboard_study(tmp_path / "board", {"lstm": [1.0]}, level="easy", lr=0.5)  # another level's: not taken
    rates = lengthgen.leaderboard_rates(board)
    assert rates == {"mingru": 0.023}
    args = lengthgen.parser().parse_args(["--out", os.fspath(tmp_path)])
    args.budget, args.check_every = lengthgen.BUDGET, lengthgen.CHECK_EVERY
    grid = grid_lib.Grid(lengthgen.study_args("varied", ["mingru", "lstm"], tmp_path, args, rates))
    assert grid.lrs("mingru") == (1e-3, 3e-3, 1e-2, 0.023) and grid.lrs("lstm") == (1e-3, 2e-3, 4e-3)
    assert grid.spec("mingru", "hard-var50to200", 0.023, 0).key.endswith("-lr0.023-seed0")
    # --lrs still decides alone.
    args.lrs = [0.004]
    assert grid_lib.Grid(lengthgen.study_args("varied", ["mingru"], tmp_path, args, rates)).lrs("mingru") == (0.004,)


def test_a_row_holds_the_evaluations_of_its_chosen_rate_only(tmp_path):
    # A grid whose seed 0 at a rate added later (the tuned one) beats the old choice: the old rate's seeds keep
    # their evaluations on disk, and the row is the new rate's models alone.
    import dataclasses
    from pipelines.engine.solving import RunResult
    study = tmp_path / "varied"
    for folder in ("runs", "lengthgen"):
        (study / folder).mkdir(parents=True)
    runs = [(0.004, 0, 40_000, 0.5), (0.004, 1, 40_000, 0.6), (0.004, 2, 40_000, 0.7), (0.023, 0, 9_600, 1.0)]
    for lr, seed, solved_at, accuracy in runs:
        key = f"mingru-hard-var50to200-lr{lr:g}-seed{seed}"
        result = RunResult("mingru", "hard-var50to200", seed, True, solved_at, solved_at, 1.0, 0, 1.0,
                           [(solved_at, 1.0)], lr=lr)
        (study / "runs" / f"{key}.json").write_text(json.dumps(
            {"settings": {"cell": "mingru", "level": "hard-var50to200"}, "result": dataclasses.asdict(result)}))
        (study / "lengthgen" / f"{key}.json").write_text(json.dumps({"hard-len200": accuracy}))
    table, trained_on = grid_lib.saved_lengthgen(study)
    assert table == {"mingru": {"hard-len200": [1.0]}} and trained_on == "hard-var50to200"


def test_replot_of_a_folder_without_studies_is_refused_and_nothing_is_written(tmp_path, capsys):
    # A mistyped --out: a message naming the folder, not an empty matrix written into a new folder.
    for pascanu in ([], ["--pascanu"]):
        assert lengthgen.main(["--out", os.fspath(tmp_path / "typo"), "--replot", *pascanu]) == 2
        assert "--replot: no " in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
