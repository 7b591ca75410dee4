"""Many runs side by side on Ray: one run per core on this machine, or every core of an existing cluster.

A study is a list of :class:`Plan` objects (for example one per family and level); each hands out the
:class:`Job` objects that may start now and learns of each one that finished, so that a plan's later jobs
(the seeds at a chosen learning rate) can depend on its earlier ones while other plans run beside them.
:meth:`Pool.run` keeps every worker busy with the first ready job of the first plan that has one, and gives
each finished job's outcome to the driver's ``on_done`` (which writes the run's record) as it arrives.

This is the engine that HazyResearch's zoology and mad-lab launch their sweeps on. What it adds here:

* **One core per run.** Every task holds one CPU and runs with one XLA thread (``WORKER_ENV``); with the
  runs' single gradient thread, two runs at once on 2 cores nearly double a grid's throughput
  (``benchmarks/grid_throughput.py``). Results do not depend on how many workers there are.
* **No server to start by hand.** Without ``address`` a local Ray starts with the command and stops with it;
  with ``address`` the runs go to that cluster, whose nodes need qrsu installed (``pip install -e .``).
* **Nothing lost, nothing counted twice.** A worker that dies (killed, out of memory) has its task retried by
  Ray from the start; only the driver writes records, once per finished job. Ctrl-C cancels the running tasks
  and keeps every record written.
* **Progress.** Tasks report each check (sequences, validation accuracy) to a small actor that the driver
  reads for its progress bar; the same channel carries a stop request back (a tuning search's pruner).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import tqdm

from pipelines.engine.errors import CommandError, interrupt

WORKER_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
              "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"}
"""Each worker's environment: one XLA thread, one OpenMP thread, no TensorFlow chatter, no progress bars."""
MAX_RETRIES = 3
"""Times Ray restarts a task whose worker died (a Python error in the task is not retried)."""


class PoolError(CommandError):
    """Runs that could not be done: a cluster that cannot be reached, or tasks that failed."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One task: ``fn(*args, monitor=...)`` in a worker; ``key`` names it in records and progress."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()


class Plan(Protocol):
    """A part of a study that hands out jobs as they become possible."""

    def ready(self) -> list[Job]:
        """The jobs that may start now and were not handed out before."""

    def finished(self, job: Job, outcome: Any) -> None:
        """Learns that ``job`` finished with ``outcome`` (the value its function returned)."""

    @property
    def done(self) -> bool:
        """Whether every job of the plan has finished."""


Monitor = Callable[[int, float], bool]


def _board_class():
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        """What the running tasks report: their latest check, how often each was started, and stop requests."""

        def __init__(self):
            self.checks: dict[str, tuple[int, float]] = {}
            self.starts: dict[str, int] = {}
            self.stops: set[str] = set()

        def started(self, key: str) -> None:
            self.starts[key] = self.starts.get(key, 0) + 1
            self.checks.pop(key, None)

        def report(self, key: str, seen: int, accuracy: float) -> bool:
            self.checks[key] = (seen, accuracy)
            return key in self.stops

        def stop(self, key: str) -> None:
            self.stops.add(key)

        def snapshot(self) -> tuple[dict, dict]:
            return dict(self.checks), dict(self.starts)

    return Board


def _task(board, job: Job):
    """Runs ``job`` in a worker, reporting its start and its checks to ``board``."""
    import ray

    ray.get(board.started.remote(job.key))

    def monitor(seen: int, accuracy: float) -> bool:
        return ray.get(board.report.remote(job.key, int(seen), float(accuracy)))

    return job.fn(*job.args, monitor=monitor)


@dataclasses.dataclass
class Finished:
    """A job's outcome as the driver receives it, and how many times a worker started it."""

    job: Job
    outcome: Any
    attempts: int


class Pool:
    """Ray workers for a study: ``workers`` local ones (default: one per core), or the cluster at ``address``."""

    def __init__(self, workers: int | None = None, address: str | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"--workers must be a positive integer, got {workers!r}")
        if address is not None and not address.strip():
            raise ValueError("--address must name a Ray cluster such as ray://HOST:10001 or HOST:6379, got ''")
        self.workers, self.address = workers, address
        self._started = False
        self._board = None
        self._sigterm = None  # the SIGTERM handler before Ray's start, put back at the end

    def __enter__(self) -> Pool:
        import ray

        if not ray.is_initialized():
            options = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                           configure_logging=True)
            try:
                if self.address:
                    ray.init(address=self.address, runtime_env={"env_vars": WORKER_ENV}, **options)
                else:
                    # "local": a new Ray of this command's own, even where a cluster is running on this machine.
                    ray.init(address="local", num_cpus=self.workers or os.cpu_count() or 1,
                             runtime_env={"env_vars": WORKER_ENV}, **options)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                raise PoolError(f"cannot start {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                ) from None
            self._started = True
            # Ray's core installs a handler of its own that aborts the driver on SIGTERM: put the command's back,
            # so that kill, timeout or a scheduler stop the grid as Ctrl-C does (finished runs kept, workers stopped).
            if threading.current_thread() is threading.main_thread():
                self._sigterm = signal.signal(signal.SIGTERM, interrupt)
        self._board = _board_class().remote()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self._board = None
        if self._started:
            ray.shutdown()
            self._started = False
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)
                self._sigterm = None

    @property
    def capacity(self) -> int:
        """How many tasks run at once: the workers asked for, else every CPU of the cluster."""
        import ray

        if self.workers and not self.address:
            return self.workers
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def stop(self, key: str) -> None:
        """Asks the running task ``key`` to stop at its next check (its monitor then returns True)."""
        self._board.stop.remote(key)

    def run(self, plans: Sequence[Plan], on_done: Callable[[Finished], None], *, total: int,
            done_before: int = 0, desc: str = "runs") -> list[tuple[Job, str]]:
        """Runs every plan's jobs to the end; ``on_done`` gets each finished one as it arrives.

        Returns the jobs that failed, with their error (their plans cannot finish: they are redone by the next
        invocation). ``total`` and ``done_before`` size the progress bar."""
        import ray

        remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_task)
        running: dict[Any, Job] = {}
        failed: list[tuple[Job, str]] = []
        queue: list[tuple[int, Job]] = []  # (plan index, job): the first plans' jobs go first
        bar = tqdm.tqdm(total=total, initial=done_before, desc=desc, unit="run", dynamic_ncols=True)
        try:
            while True:
                for i, plan in enumerate(plans):
                    queue += [(i, job) for job in plan.ready()]
                queue.sort(key=lambda item: item[0])
                while queue and len(running) < self.capacity:
                    _, job = queue.pop(0)
                    running[remote.remote(self._board, job)] = job
                if not running:
                    break
                finished, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                checks, starts = ray.get(self._board.snapshot.remote())
                for ref in finished:
                    job = running.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        failed.append((job, _first_line(e)))
                        tqdm.tqdm.write(f"{job.key}: failed: {_first_line(e)}")
                        continue
                    on_done(Finished(job, outcome, starts.get(job.key, 1)))
                    bar.update(1)
                    for plan in plans:
                        plan.finished(job, outcome)
                bar.set_postfix_str(_running_text(running.values(), checks), refresh=True)
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        return failed


def _first_line(e: Exception) -> str:
    text = str(getattr(e, "cause", None) or e).strip().splitlines()
    return text[-1][:300] if text else type(e).__name__


def _running_text(jobs, checks: dict[str, tuple[int, float]], shown: int = 4) -> str:
    """'key 4,160 seq val 0.873 | ...' for the first ``shown`` running jobs."""
    parts = []
    for job in list(jobs)[:shown]:
        seen, accuracy = checks.get(job.key, (0, float("nan")))
        parts.append(f"{job.key} {seen:,} seq val {accuracy:.3f}" if seen else f"{job.key} starting")
    more = len(jobs) - shown if len(jobs) > shown else 0
    return " | ".join(parts) + (f" | +{more} more" if more else "")
