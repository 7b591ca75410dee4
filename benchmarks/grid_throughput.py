"""Grid throughput on Ray: the same small grid with 1 worker, with 2 workers, and one run at a time as before.

    python benchmarks/grid_throughput.py [--cells lstm gru lru] [--level hard] [--budget 2560] [--workers 1 2]

Each variant is one invocation of ``python -m pipelines.experiment`` into a fresh folder (Ray's start and the
workers' imports included, as a user pays them), timed side by side in one run of this script:

- ``N workers``: the grid's default, one run per worker, each held to one core (one XLA thread, one gradient
  thread): ``--workers N``;
- ``one at a time, 2 threads``: how the grid ran before Ray, one run after the other with the gradient split
  over 2 threads (``--workers 1 --grad-threads 2``).

The grid: every family of ``--cells`` on ``--level``, 2 learning rates x 2 seeds, a fixed budget that no run
solves, so every variant does the same work. Prints wall time, runs per hour and the ratios, then what the
default leaderboard grid would take on a cluster, from the per-run times of the runs just made.
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
               "--lrs", "1e-3", "2e-3", "--seeds", "0", "1", "--lr-seeds", "2", "--budget", str(args.budget),
               "--check-every", str(args.budget // 4), "--lengthgen-lengths", "--out", os.fspath(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"the grid failed ({' '.join(command)}):\n{proc.stderr[-3000:]}")
    runs = [json.loads(p.read_text())["result"]["wall_time_s"] for p in (out / "runs").glob("*.json")]
    return wall, runs


def main() -> None:
    """Runs the variants and prints the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "lru"])
    p.add_argument("--level", default="hard")
    p.add_argument("--budget", type=int, default=2560, help="training sequences per run (no run solves hard in "
                   "2,560: every variant does the same work)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--no-sequential", action="store_true", help="skip the one-at-a-time variant")
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
    per_run = statistics.mean(results[variants[-1 if args.no_sequential else 0][0]][1])
    print(f"\nMean seconds per run of {args.budget:,} sequences on one core: {per_run:.1f}. A grid of R such runs "
          f"takes about R x {per_run:.1f} / (N machines x C cores) seconds on a cluster, plus one wave's "
          f"longest run (a pair's seeds wait for its learning-rate stage).")


if __name__ == "__main__":
    main()
