"""The 1997 experiment itself (Hochreiter & Schmidhuber, Experiment 6, Table 9): ``python -m pipelines.replicate``.

The 1997 LSTM (``qrsu_models.lstm1997``: 2 memory-cell blocks of size 2 for 6a, 3 for 6b, no forget gate,
truncated gradient) trained online: one training sequence, one plain gradient step (learning rate 0.5 for
6a, 0.1 for 6b, no momentum) on the squared error at the last step against 0/1 targets, until the 2,000
most recent training sequences were all correct (every output within 0.3 of its target, judged before each
update) and their mean error was below 0.1; then the first 2,560 test sequences are classified. Trials are
independent networks (seeds ``--seed``, ``--seed``+1, ...) trained side by side in one program, each reading
the train split in its own seeded order, so no trial sees a sequence twice.

Writes results.json, results.md and sequences_to_solve.png (an ECDF with the paper's mean) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from pipelines.engine import reporting, trials
from pipelines.engine.errors import guarded
from pipelines.engine.flags import non_negative_int, positive_float, positive_int
from pipelines.engine.session import ensure_built
from pipelines.engine.study import Study
from qrsu_data.splits import SplitSpec
from qrsu_models import lstm1997

EXPERIMENTS = ("6a", "6b")
PAPER = trials.PAPER_TABLE_9
DEFAULTS = {"6a": {"config": "hard", "lr": 0.5}, "6b": {"config": "exp6b-train2000000", "lr": 0.1}}
"""Per experiment: the dataset config (6b's slowest trials need well over 100,000 sequences) and the
paper's learning rate."""
BOOTSTRAP_RESAMPLES = 10_000
RESULT_FILES = ("results.json", "results.md", "sequences_to_solve.png")


def bootstrap_ci(values: list[int], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float] | None:
    """A percentile bootstrap 95% interval of the mean of ``values`` (seeded); None for fewer than 2 values."""
    if len(values) < 2:
        return None
    data = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return round(float(lo), 1), round(float(hi), 1)


def summarize(rows: list[dict], seed: int) -> dict:
    """Over trials: solved count, and mean, median, min, max and bootstrap 95% CI of sequences-to-stop."""
    solved = [r["sequences_to_stop"] for r in rows if r["solved"]]
    summary = {"trials": len(rows), "solved": len(solved), "exhausted_split": sum(r["exhausted_split"] for r in rows)}
    if solved:
        summary.update(mean=round(statistics.fmean(solved), 1), median=statistics.median(solved), min=min(solved),
                       max=max(solved), sd=round(statistics.stdev(solved), 1) if len(solved) > 1 else None,
                       ci95=bootstrap_ci(solved, seed))
    summary["mean_wrong_of_2560"] = round(statistics.fmean(r["wrong_of_2560"] for r in rows), 2)
    summary["mean_wrong_of_2560_argmax"] = round(statistics.fmean(r["wrong_of_2560_argmax"] for r in rows), 2)
    return summary


def _num(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def markdown(result: dict) -> str:
    """The Table-9 comparison and the per-trial table."""
    s, paper, settings = result["summary"], result["paper"], result["settings"]
    ci = s.get("ci95")
    lines = [
        f"# Experiment {settings['experiment']}: the 1997 protocol",
        "",
        f"Config `{settings['config']}`, {settings['trials']} trials (seeds {settings['seed']}.."
        f"{settings['seed'] + settings['trials'] - 1}), {settings['gradient']} gradient, online SGD lr "
        f"{settings['lr']:g}, gate biases on the {settings['biased_gate']} gates, g and h ranges as the paper's "
        f"{'Table 10 legend' if settings.get('squash') == 'table10' else 'text'}, {settings.get('dtype', 'float32')}, "
        f"budget "
        + (f"{settings['budget']:,} sequences per trial." if settings["budget"] else "the whole train split."),
        f"Stop rule: {result['stop_rule']}.",
        "",
        "| | trials | solved | mean sequences | 95% CI of the mean | median | min | max | wrong of 2560 (0.3 rule) "
        "| wrong of 2560 (argmax) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| this replication | {s['trials']} | {s['solved']} | {_num(s.get('mean'))} | "
        + (f"{ci[0]:,.0f}-{ci[1]:,.0f}" if ci else "-")
        + f" | {_num(s.get('median'))} | {_num(s.get('min'))} | {_num(s.get('max'))} | "
          f"{s['mean_wrong_of_2560']:g} (mean) | {s['mean_wrong_of_2560_argmax']:g} (mean) |",
        f"| paper (Table 9) | {paper['trials']} | | {paper['mean_sequences']:,} | | | | | {paper['wrong_of_2560']} | |",
        "",
    ]
    if s.get("mean"):
        lines += [f"Mean / paper's mean: {s['mean'] / paper['mean_sequences']:.2f}.", ""]
    lines += ["| trial | seed | solved | sequences to stop | sequences trained | wrong of 2560 (0.3 rule) "
              "| wrong of 2560 (argmax) | note |", "|---|---|---|---|---|---|---|---|"]
    for r in result["trials"]:
        note = "exhausted the train split" if r["exhausted_split"] else ("budget spent" if not r["solved"] else "")
        lines.append(f"| {r['trial']} | {r['seed']} | {'yes' if r['solved'] else 'no'} | "
                     f"{_num(r['sequences_to_stop'])} | {r['sequences_trained']:,} | {r['wrong_of_2560']} | "
                     f"{r['wrong_of_2560_argmax']} | {note} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """An ECDF of the trials' sequences-to-stop with the paper's mean (and ours) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, paper = result["trials"], result["paper"]
    solved = sorted(r["sequences_to_stop"] for r in rows if r["solved"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if solved:
        xs = [solved[0], *solved]
        ys = [0.0, *[(i + 1) / len(rows) for i in range(len(solved))]]
        ax.step(xs, ys, where="post", label=f"this replication ({len(solved)}/{len(rows)} solved)")
        ax.axvline(statistics.fmean(solved), color="C0", linestyle=":", label=f"mean {statistics.fmean(solved):,.0f}")
    ax.axvline(paper["mean_sequences"], color="black", linestyle="--",
               label=f"paper's mean {paper['mean_sequences']:,} ({paper['trials']} trials)")
    ax.set_xlabel("training sequences until the stop rule held")
    ax.set_ylabel("fraction of trials")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Experiment {result['settings']['experiment']}, 1997 LSTM and protocol")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    reporting.save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m pipelines.replicate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="6a", choices=EXPERIMENTS, help="6a (2 relevant symbols, 4 classes) "
                   "or 6b (3, 8 classes)")
    p.add_argument("--trials", type=positive_int, default=None,
                   help="independent networks (default: the paper's, 20 for 6a, 10 for 6b)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="trial i uses seed SEED+i (initial weights "
                   "and its order of the train split); also seeds the bootstrap")
    p.add_argument("--gradient", default="truncated", choices=("truncated", "full"),
                   help="the paper's truncated gradient, or full backpropagation through time")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="training sequences per trial at most (default: the whole train split)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: 0.5 for 6a, 0.1 for 6b)")
    p.add_argument("--biased-gate", default="input", choices=("input", "output"),
                   help="which gate of each block starts with the bias -2, -4, -6 (default: input)")
    p.add_argument("--error-window", type=positive_int, default=2000,
                   help="the stop rule's mean training error is over this many most recent sequences (the paper "
                        "does not say; default 2000, the window of its other condition)")
    p.add_argument("--squash", default="text", choices=list(lstm1997.SQUASHES),
                   help="ranges of the squashing functions: text (g in [-2, 2], h in [-1, 1], as the paper's text "
                        "says) or table10 (swapped, as its Table 10's legend says)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="arithmetic precision of the trials (float64: the precision reading)")
    p.add_argument("--config", default=None, help="dataset config (default: hard for 6a, exp6b-train2000000 for "
                   "6b); built first if missing")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $QRSU_DATA_DIR, else ~/qrsu_data)")
    p.add_argument("--out", default=None, help="output folder (default: results/replicate-6a or -6b)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


KIND = "replicate"


def main(argv: list[str] | None = None) -> int:
    """Trains the trials, tests them and writes the results."""
    p = parser()
    args = p.parse_args(argv)
    exp = args.experiment
    config = args.config or DEFAULTS[exp]["config"]
    try:
        num_classes = trials.num_classes_of(config)
    except ValueError as e:
        p.error(f"--config: {e}")
    wanted = 4 if exp == "6a" else 8
    if num_classes != wanted:
        p.error(f"--config {config!r} has {num_classes} classes; experiment {exp} needs {wanted} "
                f"(e.g. {DEFAULTS[exp]['config']!r})")
    if args.error_window > trials.MAX_WINDOW:
        p.error(f"--error-window must be at most {trials.MAX_WINDOW:,}, got {args.error_window:,}")
    settings = {"experiment": exp, "config": config, "trials": args.trials or PAPER[exp]["trials"],
                "seed": args.seed, "gradient": args.gradient, "budget": args.budget,
                "lr": args.lr or DEFAULTS[exp]["lr"], "biased_gate": args.biased_gate,
                "error_window": args.error_window}
    # Readings added since the first version: in the settings only when asked, so that earlier studies resume.
    if args.squash != "text":
        settings["squash"] = args.squash
    if args.dtype != "float32":
        settings["dtype"] = args.dtype
        jax.config.update("jax_enable_x64", True)  # before any array is made
    study = Study(args.out or f"results/replicate-{exp}", KIND, settings)
    return guarded(lambda: replicate(study, args))


def replicate(study: Study, args: argparse.Namespace) -> int:
    """Trains the study's trials (unless its folder holds them already) and writes its table and plot."""
    settings = study.settings
    with study:
        result = study.records().get("trials")
        if result is not None:
            print(f"The trials are done already in {study.out}; rewriting the table and plot.", flush=True)
        else:
            result = _train_and_test(settings, args)
            study.save("trials", result)
    table = markdown(result)
    reporting.write_json(study.path("results.json"), result)
    reporting.write_text(study.path("results.md"), table)
    plot(result, study.path("sequences_to_solve.png"))
    print(f"\n{table}\nTraining took {result['timing']['train_s']:.1f} s ({result['timing']['total_s']:.1f} s in "
          f"all). Wrote {', '.join(RESULT_FILES)} to {study.out}")
    return 0


def _train_and_test(settings: dict, args: argparse.Namespace) -> dict:
    exp, config = settings["experiment"], settings["config"]
    rule = dataclasses.replace(trials.PAPER_STOP, error_window=settings["error_window"])
    t0 = time.perf_counter()
    ensure_built(SplitSpec.parse(config), args.data_dir)
    train = trials.load_split(config, "train", args.data_dir)
    test = trials.load_split(config, "test", args.data_dir)
    if len(test) < trials.PAPER_TEST:
        raise ValueError(f"--config {config!r} has {len(test)} test sequences; the paper's test needs "
                         f"{trials.PAPER_TEST}")
    test = test.head(trials.PAPER_TEST)
    budget = settings["budget"] or len(train)
    learner = trials.lstm1997_learner(
        num_classes=trials.num_classes_of(config), gradient=settings["gradient"],
        method="rtrl" if settings["gradient"] == "truncated" else "autodiff", loss="squared_error",
        tx=trials.optimizer("sgd", settings["lr"]), biased_gate=settings["biased_gate"],
        squash=lstm1997.SQUASHES[settings.get("squash", "text")], dtype=settings.get("dtype", "float32"))
    seeds = trials.trial_seeds(settings["seed"], settings["trials"])
    print(f"Experiment {exp}: {len(seeds)} trials side by side on {config!r} ({len(train):,} training sequences, "
          f"at most {min(budget, len(train)):,} per trial), lr {settings['lr']:g}, {settings['gradient']} gradient",
          flush=True)
    t_train = time.perf_counter()
    outcomes, params = trials.train_trials(learner, train, seeds, budget=budget, rule=rule,
                                           progress=not args.no_progress, desc=f"exp {exp}")
    train_s = time.perf_counter() - t_train
    wrong_rule, wrong_argmax = trials.wrong_answers(learner, params, test)
    rows = [{**dataclasses.asdict(o), "wrong_of_2560": int(a), "wrong_of_2560_argmax": int(b)}
            for o, a, b in zip(outcomes, wrong_rule, wrong_argmax)]
    for r in rows:
        if r["exhausted_split"]:
            print(f"trial {r['trial']} (seed {r['seed']}) exhausted the train split ({len(train):,} sequences) "
                  f"without meeting the stop rule", flush=True)
    return {"settings": settings, "stop_rule": rule.describe(), "paper": PAPER[exp],
            "summary": summarize(rows, settings["seed"]), "trials": rows,
            "timing": {"train_s": round(train_s, 1), "total_s": round(time.perf_counter() - t0, 1),
                       "load_average_1min": round(os.getloadavg()[0], 2)}}


if __name__ == "__main__":
    sys.exit(main())
