"""What the leaderboard's protocol version 2 costs on this machine, before it runs.

    python benchmarks/protocol_cost.py [--cells lstm gru ...] [--levels easy hard ...] [--steps 40]

Per (family, level), one process held to one core as a grid worker is (one XLA thread, one gradient thread),
one cell after the other: the seconds of one training sequence (``--steps`` steps of batch 16 after one to
compile) and of one validation check (2,560 sequences, the check's screen, after one to compile). From them,
with the protocol's budgets and check intervals, what one run costs at its whole budget, and what the protocol
costs in two cases:

- ``worst``: every run (8 configurations x 2 search seeds + 5 final seeds = 21 per cell) to its budget: no run
  solves, none is pruned;
- ``unsolved, pruned``: a cell whose family never solves: its 16 search runs stopped at the pruner's earliest
  (``tuning.PRUNE_WARMUP`` of the budget), its 5 final seeds to the budget: 8.2 budgets.

A cell whose family solves costs less (its runs stop at solving). Hours are for the 2 Ray workers of this
machine at the grid's measured efficiency (``benchmarks/grid_throughput.py``: 2 workers give 1.24x one), and
for N such machines, as the runs spread over them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from pipelines.engine.pool import WORKER_ENV  # noqa: E402 - imports no JAX

# One XLA thread, as a grid worker: set before JAX is imported.
os.environ.update(WORKER_ENV)

TWO_WORKER_SPEEDUP = 1.24
"""Two Ray workers on this 2-core machine against one (benchmarks/grid_throughput.py, docs/performance.md)."""
RUNS_PER_CELL, SEARCH_RUNS = 21, 16


def measure(cell: str, level: str, steps: int, data_dir: str | None) -> tuple[float, float]:
    """(seconds per training sequence, seconds per validation check) of ``cell`` on ``level``."""
    import jax

    from pipelines import experiment
    from pipelines.engine.grid import Grid
    from pipelines.engine.session import Session
    from pipelines.engine.solving import EVAL_BATCH, PAPER_TEST

    args = experiment.parser().parse_args(["--cells", cell, "--levels", level])
    spec = Grid(args).spec(cell, level, 1e-3, 0)
    with Session.open(spec.config(data_dir), eval_batch_size=EVAL_BATCH) as s:
        s.state, loss = s.step_fn(s.state, s.next_batch())  # compile
        jax.block_until_ready(loss)
        t0 = time.perf_counter()
        for _ in range(steps):
            s.state, loss = s.step_fn(s.state, s.next_batch())
        jax.block_until_ready(loss)
        per_sequence = (time.perf_counter() - t0) / (steps * spec.batch_size)
        check = lambda: s.evaluator.predict(s.state.params, s.dataset, s.check_split,  # noqa: E731
                                            data_dir=data_dir, limit=PAPER_TEST)
        check()  # compile
        t0 = time.perf_counter()
        check()
        per_check = time.perf_counter() - t0
    return per_sequence, per_check


def main() -> int:
    """Measures every (family, level) and prints the protocol's cost."""
    from pipelines.engine.grid import FAMILIES, TUNED_BUDGETS, TUNED_CHECK_EVERY
    from pipelines.engine.tuning import PRUNE_WARMUP

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(FAMILIES))
    p.add_argument("--levels", nargs="+", default=list(TUNED_BUDGETS))
    p.add_argument("--steps", type=int, default=40, help="timed training steps per cell")
    p.add_argument("--machines", type=int, nargs="+", default=[1, 4, 16], help="cluster sizes to print")
    p.add_argument("--speedup", type=float, default=TWO_WORKER_SPEEDUP,
                   help="a machine's 2 workers against the one core measured (default: 1.24, for a measurement "
                        "on a quiet machine; 2 when the other core was busy with a run, as a grid's is)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    worst = pruned = 0.0
    print(f"{'family':<12}{'level':<11}{'ms/seq':>8}{'s/check':>9}{'run at budget':>15}", flush=True)
    for level in args.levels:
        budget, every = TUNED_BUDGETS[level], TUNED_CHECK_EVERY[level]
        for cell in args.cells:
            per_sequence, per_check = measure(cell, level, args.steps, args.data_dir)
            run = budget * per_sequence + (budget // every) * per_check
            worst += RUNS_PER_CELL * run
            pruned += (SEARCH_RUNS * PRUNE_WARMUP + RUNS_PER_CELL - SEARCH_RUNS) * run
            print(f"{cell:<12}{level:<11}{1e3 * per_sequence:>8.2f}{per_check:>9.2f}{run:>13.0f} s", flush=True)
    cells = len(args.cells) * len(args.levels)
    print(f"\nprotocol version 2, {cells} cells x {RUNS_PER_CELL} runs, one core: worst {worst / 3600:.2f} h; "
          f"if no family solved, pruned: {pruned / 3600:.2f} h")
    for n in args.machines:
        scale = n * args.speedup
        print(f"  {n:>3} machine(s) of 2 workers: worst {worst / scale / 3600:.2f} h, unsolved pruned "
              f"{pruned / scale / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
