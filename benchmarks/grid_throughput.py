"""Grid throughput on Ray: the same small grid with 1 worker, with 2 workers, and one run at a time as before.

    python benchmarks/grid_throughput.py [--cells lstm gru lru] [--level hard] [--budget 6400] [--workers 1 2]

Each variant is one invocation of ``python -m pipelines.experiment`` into a fresh folder (Ray's start and the
workers' imports included, as a user pays them), timed side by side in one run of this script:

- ``N workers``: the grid's default, one run per worker, each held to one core (one XLA thread, one gradient
  thread): ``--workers N``;
- ``one at a time, 2 threads``: how the grid ran before Ray, one run after the other with the gradient split
  over 2 threads (``--workers 1 --grad-threads 2``).

The grid: every family of ``--cells`` on ``--level``, 2 learning rates x 2 seeds, a fixed budget; the runs are
seeded, so every variant does the same work. Prints wall time, runs per hour and the ratios, then what the
default leaderboard grid would take on a cluster, from the per-run times of the runs just made.

And the machine's own ceiling, without Ray or the grid: one ``pipelines.train`` process held to one core
alone, then two such processes at once (``--no-ceiling`` skips it). Two processes on two cores gain less than
2x where the cores share a physical core's caches and memory bandwidth (virtual CPUs); the grid's ratio is
to be read against that ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_grid(out: Path, args: argparse.Namespace, extra: list[str]) -> tuple[float, list[float]]:
    """(wall seconds, each run's own seconds) of one invocation of the grid."""
    command = [sys.executable, "-m", "pipelines.experiment", "--cells", *args.cells, "--levels", args.level,
               "--protocol", "grid", "--lrs", "1e-3", "2e-3", "--seeds", "0", "1", "--lr-seeds", "2",
               "--budget", str(args.budget),
               "--check-every", str(args.budget // 4), "--lengthgen-lengths", "--out", os.fspath(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"the grid failed ({' '.join(command)}):\n{proc.stderr[-3000:]}")
    runs = [json.loads(p.read_text())["result"]["wall_time_s"] for p in (out / "runs").glob("*.json")]
    return wall, runs


def train_seconds(workdir: Path, steps: int, level: str, count: int) -> float:
    """Wall seconds of ``count`` identical one-core ``pipelines.train`` processes started at once."""
    from pipelines.engine.pool import WORKER_ENV

    command = [sys.executable, "-m", "pipelines.train", "--difficulty", level, "--model", "lstm", "--batch-size",
               "16", "--epochs", "1", "--steps-per-epoch", str(steps), "--grad-threads", "1", "--overwrite",
               "--log-every", str(10 * steps)]
    env = {**os.environ, **WORKER_ENV, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*command, "--workdir", os.fspath(workdir / str(i))], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(count)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"pipelines.train failed:\n{err[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    """Runs the variants and prints the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "lru"])
    p.add_argument("--level", default="hard")
    p.add_argument("--budget", type=int, default=6400, help="training sequences per run at most (the runs "
                   "are seeded: every variant does the same work)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--no-sequential", action="store_true", help="skip the one-at-a-time variant")
    p.add_argument("--no-ceiling", action="store_true", help="skip the two-processes ceiling")
    p.add_argument("--ceiling-steps", type=int, default=1500, help="train steps of batch 16 in the ceiling's runs")
    args = p.parse_args()
    variants = [(f"{n} worker{'s' * (n > 1)}", ["--workers", str(n)]) for n in args.workers]
    if not args.no_sequential:
        variants.append(("one at a time, 2 threads", ["--workers", "1", "--grad-threads", "2"]))
    n_runs = len(args.cells) * 4
    print(f"grid: {', '.join(args.cells)} on {args.level}, 2 learning rates x 2 seeds = {n_runs} runs of "
          f"{args.budget:,} sequences; {os.cpu_count()} cores", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pipelines.build_dataset", "--config", args.level], cwd=REPO,
                       capture_output=True, check=True)
        for name, extra in variants:
            results[name] = run_grid(Path(tmp) / name.replace(" ", "_").replace(",", ""), args, extra)
            print(f"  {name}: {results[name][0]:.0f} s", flush=True)
        if not args.no_ceiling:
            alone = train_seconds(Path(tmp) / "alone", args.ceiling_steps, args.level, 1)
            pair = train_seconds(Path(tmp) / "pair", args.ceiling_steps, args.level, 2)
            print(f"  ceiling: one train process {alone:.1f} s alone, two at once {pair:.1f} s: "
                  f"{2 * alone / pair:.2f}x the work per second", flush=True)
    base = results[variants[0][0]][0]
    print(f"\n| variant | wall time | runs per hour | median run | vs {variants[0][0]} |")
    print("|---|---|---|---|---|")
    for name, (wall, runs) in results.items():
        print(f"| {name} | {wall:.0f} s | {n_runs * 3600 / wall:,.0f} | {statistics.median(runs):.1f} s | "
              f"{base / wall:.2f}x |")
    if "one at a time, 2 threads" in results and len(args.workers) > 1:
        best = f"{max(args.workers)} workers"
        print(f"\n{best} vs one at a time with 2 threads: "
              f"{results['one at a time, 2 threads'][0] / results[best][0]:.2f}x")
    if not args.no_ceiling:
        print(f"The machine's ceiling for two one-core processes: {2 * alone / pair:.2f}x; the grid's 2 workers reach "
              f"{base / results[f'{max(args.workers)} workers'][0] / (2 * alone / pair):.0%} of it.")
    per_run = statistics.mean(results[variants[-1 if args.no_sequential else 0][0]][1])
    print(f"\nMean seconds per run of {args.budget:,} sequences on one core: {per_run:.1f}. A grid of R such runs "
          f"takes about R x {per_run:.1f} / (N machines x C cores) seconds on a cluster, plus one wave's "
          f"longest run (a pair's seeds wait for its learning-rate stage).")


if __name__ == "__main__":
    main()
