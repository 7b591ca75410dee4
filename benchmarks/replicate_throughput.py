"""The 1997 LSTM's online step (one sequence, one SGD update): trials side by side vs one trial at a time, and
the truncated gradient by forward partials vs by autodiff.

``python benchmarks/replicate_throughput.py`` (from the repository root) trains 1997 LSTMs through
``pipelines.trials.train_trials`` (what ``pipelines.replicate`` runs) for ``--sequences`` sequences each, in
one run, for Exp. 6a (``hard``, 20 trials, 2 blocks) and Exp. 6b (``exp6b``, 10 trials, 3 blocks):

* side by side: all trials in one program (``jax.vmap`` over trials);
* one trial at a time: the sequential alternative (one compiled program for one trial, reused per trial);

each with the truncated gradient by forward partials (``truncated_loss_and_grad_rtrl``, what
``pipelines.replicate`` uses) and by autodiff (``stop_gradient`` on y(t-1), the simple form), and full BPTT
side by side. It prints trial-sequences per second and every time relative to side by side with forward
partials, the fastest of ``--repeats`` interleaved runs. Compilation is excluded (every variant runs once
first); the stop rule never holds here.
"""

from __future__ import annotations

import argparse
import os
import time

from pipelines.engine import trials

EXPERIMENTS = {"6a": ("hard", 20), "6b": ("exp6b", 10)}
"""Experiment: (config, trials) as pipelines.replicate runs it (6b's config there is larger, not faster)."""


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(experiment: str, sequences: int, repeats: int, data_dir: str | None) -> dict[str, float]:
    """Seconds per variant for one experiment (the fastest of ``repeats`` runs)."""
    config, n = EXPERIMENTS[experiment]
    trials.ensure_built(config, data_dir)
    train = trials.load_split(config, "train", data_dir)
    num_classes = trials.num_classes_of(config)
    rule = trials.StopRule(window=trials.MAX_WINDOW, max_error=None)  # never holds within the run
    seeds = trials.trial_seeds(0, n)
    sgd = trials.optimizer("sgd", 0.5)
    learners = {name: trials.lstm1997_learner(num_classes=num_classes, gradient=gradient, method=method, tx=sgd)
                for name, gradient, method in (("forward partials", "truncated", "rtrl"),
                                               ("autodiff", "truncated", "autodiff"),
                                               ("full BPTT", "full", "autodiff"))}

    def run(learner, trial_seeds):
        trials.train_trials(learner, train, trial_seeds, budget=sequences, rule=rule, progress=False)

    for name, learner in learners.items():  # compile (compiled programs are cached per learner and shape)
        run(learner, seeds)
        if name != "full BPTT":
            run(learner, seeds[:1])
    variants = {}
    for name in ("forward partials", "autodiff"):
        variants[f"side by side, truncated ({name})"] = lambda lrn=learners[name]: run(lrn, seeds)
        variants[f"one trial at a time, truncated ({name})"] = \
            lambda lrn=learners[name]: [run(lrn, [s]) for s in seeds]
    variants["side by side, full BPTT (autodiff)"] = lambda: run(learners["full BPTT"], seeds)
    # Repeats interleaved and the fastest kept: on a shared machine, load bursts hit single runs.
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_seconds(fn))
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    """Runs the comparison and prints one table per experiment."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    p.add_argument("--sequences", type=int, default=2000, help="training sequences per trial (default 2000)")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant, the fastest kept (default 3)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    for experiment in args.experiments:
        config, n = EXPERIMENTS[experiment]
        load = os.getloadavg()[0]
        rows = bench(experiment, args.sequences, args.repeats, args.data_dir)
        base = rows["side by side, truncated (forward partials)"]
        print(f"\nExp. {experiment}: {n} trials x {args.sequences:,} sequences of {config!r} (load average "
              f"{load:.2f} -> {os.getloadavg()[0]:.2f})\n")
        print("| variant | seconds | trial-sequences/s | time vs side by side, forward partials |\n|---|---|---|---|")
        for name, seconds in rows.items():
            print(f"| {name} | {seconds:.2f} | {n * args.sequences / seconds:,.0f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
