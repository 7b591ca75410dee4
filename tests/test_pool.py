"""The grid on Ray: the same records with 1 and 2 workers, a worker killed mid-run, one writer per study folder,
Ctrl-C. The in-process tests share one local Ray; the command-line tests start their own, as a user's would."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipelines import experiment

from conftest import study_records

pytestmark = pytest.mark.slow  # end to end: see docs/development.md for the fast tier

REPO = Path(__file__).resolve().parents[1]
TINY = ["--protocol", "grid", "--cells", "lstm", "--levels", "easy", "--lrs", "1e-3", "2e-3", "--seeds", "0", "1",
        "--budget", "1600",
        "--check-every", "320", "--lengthgen-lengths"]
SLOW_BUDGET = 16000
SLOW = ["--protocol", "grid", "--cells", "lstm", "--levels", "easy", "--lrs", "1e-5", "--seeds", "0", "1",
        "--budget", str(SLOW_BUDGET),
        "--check-every", "320", "--lengthgen-lengths"]
"""Runs that do not solve (lr 1e-5) and so last their whole budget (~10 s of CPU each with their start): time to
act on them."""
STARTED_CPU_S = 6.0
"""CPU seconds after which a worker is past its start (Ray, the imports, the run reported started) and training:
a measure of progress that a loaded machine does not stretch, as it does wall time."""


@pytest.fixture(scope="module")
def data_dir(easy_data_dir):
    return easy_data_dir


def attempts(out: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["attempts"] for p in (out / "runs").glob("*.json")}


def test_two_workers_give_the_same_records_and_table_as_one(data_dir, tmp_path, ray_cluster):
    for workers in ("1", "2"):
        args = [*TINY, "--data-dir", data_dir, "--out", os.fspath(tmp_path / workers), "--workers", workers]
        assert experiment.main(args) == 0
    one, two = study_records(tmp_path / "1"), study_records(tmp_path / "2")
    assert len(one) == 3 and one == two  # 2 rates on seed 0, then seed 1 at the chosen one
    assert (tmp_path / "1" / "results.md").read_text() == (tmp_path / "2" / "results.md").read_text()
    assert set(attempts(tmp_path / "2").values()) == {1}


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # As a terminal starts it: a process that starts with SIGINT ignored (a shell's background job; the test
    # runner's worker processes) keeps ignoring it, and Python then raises no KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-m", "pipelines.experiment", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _running_tasks(driver: subprocess.Popen) -> list[psutil.Process]:
    """The Ray workers of ``driver``'s own local Ray that are running a task now."""
    try:
        procs = psutil.Process(driver.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in procs if _running_a_task(p)]


def _running_a_task(proc: psutil.Process) -> bool:
    try:
        return "ray::_task" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _inside_a_run(worker: psutil.Process, poll: float = 0.2) -> bool:
    """Whether ``worker`` is past its start and inside a run that it has been running for ``poll`` seconds.

    The grid's seeds run one after another (seed 1 waits for seed 0's choice), often in the same worker: a
    worker between two runs, or at the first instant of its next one, is not a worker killed mid-run."""
    try:
        if not _running_a_task(worker) or sum(worker.cpu_times()[:2]) < STARTED_CPU_S:
            return False
    except psutil.Error:
        return False
    time.sleep(poll)
    return _running_a_task(worker)


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_killed_worker_has_its_run_redone_once_and_a_second_writer_is_refused(data_dir, tmp_path, ray_cluster):
    out = tmp_path / "grid"
    driver = _start([*SLOW, "--data-dir", data_dir, "--out", os.fspath(out), "--workers", "2"])
    try:
        assert _wait(lambda: _running_tasks(driver), 120), driver.communicate(timeout=60)
        # One writer per study folder: a second invocation, started now, is refused, naming the one that runs
        # (it reaches the folder after its own start-up, while the first redoes the killed run).
        second = subprocess.Popen([sys.executable, "-m", "pipelines.experiment", *SLOW, "--data-dir", data_dir,
                                   "--out", os.fspath(out)], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        victims: list[psutil.Process] = []

        def a_worker_inside_a_run() -> bool:
            victims[:] = [p for p in _running_tasks(driver) if _inside_a_run(p)]
            return bool(victims)

        assert _wait(a_worker_inside_a_run, 120)
        victims[0].send_signal(signal.SIGKILL)
        _, second_err = second.communicate(timeout=120)
        assert second.returncode == 1, second_err[-3000:]
        assert f"{out} is in use by another experiment (pid {driver.pid}" in second_err
        assert "Traceback" not in second_err
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, stderr[-3000:]
    counts = attempts(out)
    assert sorted(counts.values()) == [1, 2], counts  # one run redone once, none twice, none lost
    assert "(attempt 2)" in stdout
    # The redone run is the run it would have been: its seed alone, undisturbed, gives the same record.
    redone = next(key for key, n in counts.items() if n == 2)
    seed = str(study_records(out)[redone]["settings"]["seed"])
    clean = tmp_path / "clean"
    alone = [*SLOW[:SLOW.index("--seeds")], "--seeds", seed, *SLOW[SLOW.index("--budget"):]]
    assert experiment.main([*alone, "--data-dir", data_dir, "--out", os.fspath(clean), "--workers", "1"]) == 0
    assert study_records(clean) == {redone: study_records(out)[redone]}


# Ctrl-C; and SIGTERM (kill, timeout, a scheduler), which Ray's core would otherwise answer by aborting.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_workers_and_keeps_every_finished_run(data_dir, tmp_path, sig):
    out = tmp_path / "grid"
    slow = [*SLOW[:SLOW.index("--seeds")], "--seeds", "0", "1", "2", *SLOW[SLOW.index("--budget"):]]
    driver = _start([*slow, "--data-dir", data_dir, "--out", os.fspath(out), "--workers", "1"])
    try:
        assert _wait(lambda: len(list((out / "runs").glob("*.json"))) >= 1, 240), driver.communicate(timeout=60)
        workers = _running_tasks(driver)
        driver.send_signal(sig)
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert _wait(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers), 30)
    done = study_records(out)
    assert 1 <= len(done) < 3 and all(r["result"]["sequences_trained"] == SLOW_BUDGET for r in done.values())
    assert not (out / ".lock").read_text()  # the study folder is free again
