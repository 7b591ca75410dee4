"""The 1997 LSTM's online step (one sequence, one SGD update), trials side by side vs one trial at a time.

``python benchmarks/replicate_throughput.py`` trains, on ``hard``, ``--trials`` 1997 LSTMs for ``--sequences``
sequences each, through ``pipelines.trials.train_trials`` (what ``pipelines.replicate`` runs), in one run:

* side by side: all trials in one program (``jax.vmap`` over trials), the truncated gradient by forward
  partials (``truncated_loss_and_grad_rtrl``, what ``pipelines.replicate`` uses);
* the sequential alternative: the same trials one at a time (one compiled program for one trial, reused);
* the simple truncated gradient (autodiff with ``stop_gradient`` on y(t-1)) and full BPTT, side by side;

and prints trial-sequences per second and the ratios. Compilation is excluded (every variant runs once to
compile, then is timed). The stop rule never holds here (every trial trains its full count).
"""

from __future__ import annotations

import argparse
import os
import time

from pipelines import trials


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    """Runs the comparison and prints a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sequences", type=int, default=2000, help="training sequences per trial")
    p.add_argument("--config", default="hard")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    trials.ensure_built(args.config, args.data_dir)
    train = trials.load_split(args.config, "train", args.data_dir)
    rule = trials.StopRule(window=trials.MAX_WINDOW, max_error=None)  # never holds within the run
    seeds = trials.trial_seeds(0, args.trials)
    sgd = trials.optimizer("sgd", 0.5)

    def learner(gradient, method):
        return trials.lstm1997_learner(num_classes=4, gradient=gradient, method=method, tx=sgd)

    print(f"{args.trials} trials x {args.sequences:,} sequences of {args.config!r}; load average "
          f"{os.getloadavg()[0]:.2f} at the start")

    def run(learner, trial_seeds):
        trials.train_trials(learner, train, trial_seeds, budget=args.sequences, rule=rule, progress=False)

    rtrl, autodiff, full = learner("truncated", "rtrl"), learner("truncated", "autodiff"), learner("full", "autodiff")
    for lrn in (rtrl, autodiff, full):  # compile every variant first (compiled programs are cached)
        run(lrn, seeds)
    run(rtrl, seeds[:1])
    rows = {"side by side, truncated (forward partials)": _seconds(lambda: run(rtrl, seeds)),
            "one trial at a time, truncated (forward partials)": _seconds(lambda: [run(rtrl, [s]) for s in seeds]),
            "side by side, truncated (autodiff, stop_gradient)": _seconds(lambda: run(autodiff, seeds)),
            "side by side, full BPTT (autodiff)": _seconds(lambda: run(full, seeds))}
    base = rows["side by side, truncated (forward partials)"]
    total = args.trials * args.sequences
    print(f"\n| variant | seconds | trial-sequences/s | time vs side by side (forward partials) |\n|---|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} | {total / seconds:,.0f} | {seconds / base:.2f}x |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
