"""A grid run saved mid-way: stopped, it resumes from its snapshot to the result of a run never stopped."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from pipelines.engine import snapshots
from pipelines.engine.grid import Driver
from pipelines.engine.pool import Finished, Job
from pipelines.engine.snapshots import INFLIGHT
from pipelines.engine.solving import RunSpec, flat_params, run_one
from pipelines.engine.study import Study

SPEC = RunSpec("lstm", "easy", 0, budget=1600, check_every=160, lr=3e-3, solved_error=0.0)  # solves at the 5th check


class _Killed(Exception):
    """Stands for the kill of a worker in the middle of a run."""


def _watch(seen: list, kill_at: int | None = None):
    def monitor(sequences: int, accuracy: float) -> bool:
        seen.append(sequences)
        if kill_at is not None and len(seen) == kill_at:
            raise _Killed
        return False

    return monitor


@pytest.fixture
def every_check(monkeypatch):
    monkeypatch.setattr(snapshots, "SNAPSHOT_EVERY_S", 0.0)  # a snapshot at every check


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_snapshot_with_the_result_of_one_never_stopped(easy_data_dir, tmp_path,
                                                                                      every_check):
    whole, whole_params = run_one(SPEC, easy_data_dir)
    inflight = tmp_path / INFLIGHT
    seen: list[int] = []
    with pytest.raises(_Killed):
        run_one(SPEC, easy_data_dir, inflight, monitor=_watch(seen, kill_at=4))
    assert seen == [160, 320, 480, 640]
    assert snapshots.settings_of(inflight / SPEC.key) == json.loads(json.dumps(dataclasses.asdict(SPEC)))
    seen.clear()
    resumed, params = run_one(SPEC, easy_data_dir, inflight, monitor=_watch(seen))
    assert seen[0] == 640  # from the snapshot of the third check, not from the start
    assert resumed.curve == whole.curve and resumed.sequences_trained == whole.sequences_trained > 640
    assert (resumed.test_accuracy, resumed.wrong_of_2560, resumed.ended) == (whole.test_accuracy,
                                                                              whole.wrong_of_2560, whole.ended)
    jax.tree.map(np.testing.assert_array_equal, params, whole_params)
    # The driver removes the snapshot once the run's record is written, not before.
    with Study(tmp_path, "experiment") as study:
        Driver(study, keep_params=False).on_done(Finished(Job(SPEC.key, run_one, (SPEC, easy_data_dir, inflight)),
                                                          (resumed, params), 1))
        assert json.loads(study.path("runs", f"{SPEC.key}.json").read_text())["result"]["curve"]
    assert not (inflight / SPEC.key).exists()


@pytest.mark.slow
def test_a_snapshot_of_other_settings_is_discarded_and_the_run_starts_afresh(easy_data_dir, tmp_path, every_check):
    inflight = tmp_path / INFLIGHT
    with pytest.raises(_Killed):
        run_one(SPEC, easy_data_dir, inflight, monitor=_watch([], kill_at=2))
    longer = dataclasses.replace(SPEC, budget=800)  # the same key (the budget is not in it), other settings
    assert longer.key == SPEC.key
    seen: list[int] = []
    run_one(longer, easy_data_dir, inflight, monitor=_watch(seen))
    assert seen == [160, 320, 480, 640, 800]
    assert snapshots.settings_of(inflight / SPEC.key)["budget"] == 800  # its own snapshots since


def test_a_run_with_state_passing_takes_no_snapshot(easy_data_dir, tmp_path, every_check):
    passed = dataclasses.replace(SPEC, budget=320, initial_state="passed")
    run_one(passed, easy_data_dir, tmp_path / INFLIGHT)
    assert not (tmp_path / INFLIGHT).exists()  # its carried states are not saved: it could not resume exactly


@pytest.mark.parametrize("protocol", ["tuned", "grid"])
def test_every_run_of_a_study_saves_its_snapshots_in_the_studys_folder(protocol, tmp_path):
    from pipelines import experiment
    from pipelines.engine import grid as grid_lib

    args = experiment.parser().parse_args(["--protocol", protocol, "--cells", "lstm", "--levels", "easy"])
    experiment._validate(args)
    plan = grid_lib.Grid(args).plan("lstm", "easy", {}, None, None, tmp_path / INFLIGHT)
    jobs = plan.ready()
    assert jobs and all(job.fn is run_one and job.args[2] == tmp_path / INFLIGHT for job in jobs)


def test_a_stopped_evaluation_at_length_goes_on_from_its_tally_to_the_count_of_one_never_stopped(
        easy_data_dir, tmp_path, monkeypatch):
    from pipelines.engine import grid
    from qrsu_data import task

    monkeypatch.setattr(grid, "EVAL_BATCH_TOKENS", 40 * task.get_level("easy").max_length)  # batches of 40
    spec = dataclasses.replace(SPEC, budget=320)
    params = flat_params(run_one(spec, easy_data_dir)[1])  # as the study saves a model
    whole = grid.evaluate_lengths(spec, params, ["easy"], easy_data_dir, limit=150)  # one pass, nothing saved
    inflight = tmp_path / INFLIGHT
    tally = inflight / grid.tally_name(spec, "easy")
    seen: list[int] = []
    with pytest.raises(_Killed):
        grid.evaluate_lengths(spec, params, ["easy"], easy_data_dir, limit=150, inflight=inflight,
                              monitor=_watch(seen, kill_at=2))
    assert seen == [40, 80] and json.loads((tally / "tally.json").read_text())["scored"] == 80
    seen.clear()
    resumed = grid.evaluate_lengths(spec, params, ["easy"], easy_data_dir, limit=150, inflight=inflight,
                                    monitor=_watch(seen))
    assert seen == [120, 150]  # from its third batch, not from the start
    assert resumed == whole and 0.0 <= whole["easy"] <= 1.0
    # A tally of other settings (another limit) is not used: that evaluation starts afresh.
    seen.clear()
    other = grid.evaluate_lengths(spec, params, ["easy"], easy_data_dir, limit=100, inflight=inflight,
                                  monitor=_watch(seen))
    assert seen == [40, 80, 100] and json.loads((tally / "tally.json").read_text())["scored"] == 100
    assert other == grid.evaluate_lengths(spec, params, ["easy"], easy_data_dir, limit=100)
    # The driver removes the tally once the evaluation's record is written, not before.
    with Study(tmp_path, "experiment") as study:
        job = Job(grid.eval_key(spec, "easy"), grid.evaluate_lengths,
                  (spec, params, ["easy"], easy_data_dir, 100, inflight))
        Driver(study, keep_params=False).on_done(Finished(job, other, 1))
        assert json.loads(study.path("lengthgen", f"{spec.key}.json").read_text()) == other
    assert not tally.exists()
