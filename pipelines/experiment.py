"""Every model family on every level, one protocol: ``python -m pipelines.experiment --help``.

The protocol, version 2 (docs/leaderboard.md): each family at its stated size; per (family, level) an Optuna
search over the learning rate, the weight decay (and the Transformer's warm-up), each configuration on 2 seeds
and scored on validation, then 5 seeds at the best configuration (pipelines.engine.tuning); batch 16,
gradients clipped at norm 1, one budget of training sequences per level for every family; each run stops when
solved on validation (at most 1% wrong) and reports its test accuracy (pipelines.engine.solving). Version 1
(``--protocol grid``) tries a learning-rate grid on the first seed instead. The models trained on ``hard`` are
then evaluated on the length-generalisation suite (``hard-len200`` to ``hard-len10000``). The runs go side by
side on Ray workers, one per core (pipelines.engine.pool); each is saved as it ends (pipelines.engine.study),
so the grid resumes where it stopped, and the tables and plots are rebuilt from every saved run.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from pipelines.engine.config import INITIAL_STATES
from pipelines.engine.errors import guarded
from pipelines.engine.grid import (BUDGETS, CHECK_EVERY, FAMILIES, LENGTHGEN_LENGTHS, PROTOCOLS, TUNED_BUDGETS,
                                   TUNED_CHECK_EVERY, TUNED_FINAL_BUDGETS, Grid, replot, run_grid)
from qrsu_data import store, task
from qrsu_models import registry

QUICK = {"cells": ["lstm", "gru"], "levels": ["easy"], "budget": 3200, "check_every": 320,
         "lengthgen_level": "easy", "lengthgen_lengths": [16, 32], "protocol": "grid"}
"""--quick: the learning-rate grid on two families and the easy level, for the tests."""


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m pipelines.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(FAMILIES), metavar="MODEL",
                   help=f"families to compare: any of {', '.join(registry.names())}, or package.module:Class "
                        f"(default: {' '.join(FAMILIES)})")
    p.add_argument("--levels", nargs="+", default=list(task.LEVELS), metavar="CONFIG",
                   help=f"dataset configs (default: {' '.join(task.LEVELS)})")
    p.add_argument("--protocol", default="tuned", choices=PROTOCOLS,
                   help="tuned (version 2, default): an Optuna search per family and level, then --seeds at the "
                        "best configuration; grid (version 1): --lrs on the first --lr-seeds seeds, then the other "
                        "seeds at the best rate")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="the seeds of the table's runs (default: 0 1 2 3 4 tuned, 0 1 2 grid)")
    p.add_argument("--configs", type=int, default=8, help="tuned: configurations the search tries (default 8)")
    p.add_argument("--search-seeds", nargs="+", type=int, default=[100, 101],
                   help="tuned: the seeds each configuration of the search runs on (default 100 101)")
    p.add_argument("--wave", type=int, default=2, help="tuned: configurations proposed at once (default 2)")
    p.add_argument("--confirm", type=int, default=2,
                   help="tuned: how many of the search's best configurations (those that solved a run) run on "
                        "--confirm-seeds too before one is chosen; 0: choose on the search seeds alone (default 2)")
    p.add_argument("--confirm-seeds", nargs="+", type=int, default=[102, 103],
                   help="tuned: the confirmation's seeds (default 102 103)")
    p.add_argument("--lr-seeds", type=int, default=1,
                   help="grid: how many of the first --seeds try every learning rate (the others run at the chosen "
                        "one)")
    p.add_argument("--lrs", nargs="+", type=float, default=None,
                   help="grid: learning rates to try (default: each family's grid, e.g. 1e-3 2e-3 4e-3 for the LSTM)")
    p.add_argument("--budget", type=int, default=None, help="training sequences per run (default: per level; "
                   "tuned: " + ", ".join(f"{k} {v:,}" for k, v in TUNED_BUDGETS.items()) + "; grid: "
                   + ", ".join(f"{k} {v:,}" for k, v in BUDGETS.items()) + ")")
    p.add_argument("--final-budget", type=int, default=None,
                   help="tuned: training sequences per final seed (default: --budget if given, else per level: "
                        + ", ".join(f"{k} {v:,}" for k, v in TUNED_FINAL_BUDGETS.items())
                        + ", the search's budget elsewhere)")
    p.add_argument("--check-every", type=int, default=None, help="training sequences between validation checks "
                   "(default: per level; tuned: " + ", ".join(f"{k} {v:,}" for k, v in TUNED_CHECK_EVERY.items())
                   + "; grid: " + ", ".join(f"{k} {v:,}" for k, v in CHECK_EVERY.items()) + ")")
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=None, help="width of every family (default: each family's)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="batch size; 16, not the training default 32: with more updates per sequence, fewer "
                        "training sequences solve a level (hard, Adam 3e-3: a median 3,840 at batch 16, "
                        "5,440 at 32)")
    p.add_argument("--grad-threads", type=int, default=1,
                   help="CPU gradient threads per run (see pipelines.train --help); 1, pinned: each worker holds "
                        "one core, and the thread count sets the order of a float sum, so results repeat only "
                        "at the same count")
    p.add_argument("--bucket-width", type=int, default=0, help="batches of similar lengths, from buckets of this "
                   "many lengths (levels of varied lengths such as hard-var50to200; see pipelines.train --help)")
    p.add_argument("--initial-state", default="zero", choices=INITIAL_STATES,
                   help="what each training sequence's state starts from: zero, noise or passed (state passing)")
    p.add_argument("--noise-std", type=float, default=1.0, help="standard deviation of a noisy initial state")
    p.add_argument("--omega", type=float, default=0.0, help="weight of Pascanu et al.'s regulariser (pascanu_rnn)")
    p.add_argument("--train-through", action="store_true",
                   help="train every run its whole budget, the learning rate falling to 0 along a cosine, instead "
                        "of stopping at the first check that solves (solved: the last check's verdict)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs side by side on this machine, each on one core (default: one per core)")
    p.add_argument("--address", default=None,
                   help="run on the existing Ray cluster at this address (e.g. HOST:6379 or ray://HOST:10001) "
                        "instead of a local Ray; its nodes need qrsu installed")
    p.add_argument("--lengthgen-level", default="hard", help="the level whose models are evaluated on longer "
                   "sequences (default: hard)")
    p.add_argument("--lengthgen-lengths", nargs="*", type=int, default=list(LENGTHGEN_LENGTHS),
                   help="longest sequences of the scaled configs evaluated (none: skip)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/experiment",
                   help="output folder; each finished run is saved in OUT/runs as it ends, and a rerun into the "
                        "same folder skips the runs done with the same settings")
    p.add_argument("--slow-cells", action="store_true",
                   help="no effect (kept for older command lines): since the CPU work on Mamba and the "
                        "Transformer, the default grid runs them on nightmare too")
    p.add_argument("--quick", action="store_true",
                   help="version 1 of the protocol, small: lstm and gru on easy (for a first look and the tests)")
    p.add_argument("--redo", metavar="LABEL", default=None,
                   help="first set aside every saved run of --cells on --levels (records, models, events, "
                        "evaluations at length) in OUT/superseded/LABEL, then run them again: after a fix to a model, "
                        "say. Name --cells or --levels; to continue an interrupted redo, run without --redo")
    p.add_argument("--replot", metavar="DIR", help="train nothing: rewrite the tables and plots of DIR's runs")
    return p


def _validate(args: argparse.Namespace) -> None:
    if args.seeds is None:
        args.seeds = [0, 1, 2, 3, 4] if args.protocol == "tuned" else [0, 1, 2]
    if args.protocol == "tuned" and (args.lrs or args.lr_seeds != 1):
        raise ValueError("--lrs and --lr-seeds belong to --protocol grid; the tuned protocol searches the learning "
                         "rate itself (docs/leaderboard.md)")
    for name in ("configs", "wave"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.protocol == "tuned" and (set(args.search_seeds) & set(args.seeds)
                                     or len(set(args.search_seeds)) != len(args.search_seeds)):
        raise ValueError(f"--search-seeds must be distinct and apart from --seeds (the final seeds run after the "
                         f"search chose on the others), got {args.search_seeds} and {args.seeds}")
    if args.protocol == "tuned" and ((set(args.confirm_seeds) & (set(args.search_seeds) | set(args.seeds)))
                                     or len(set(args.confirm_seeds)) != len(args.confirm_seeds)):
        raise ValueError(f"--confirm-seeds must be distinct and apart from --search-seeds and --seeds (a "
                         f"configuration's runs are told apart by their seeds), got {args.confirm_seeds}, "
                         f"{args.search_seeds} and {args.seeds}")
    if args.redo is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.redo):
            raise ValueError(f"--redo takes a label for the folder superseded/LABEL (letters, digits, '.', '_', '-'), "
                             f"got {args.redo!r}")
        if set(args.cells) >= set(FAMILIES) and set(args.levels) >= set(task.LEVELS):
            raise ValueError("--redo sets aside every saved run of --cells on --levels, and these are all of them; "
                             "name the --cells or --levels to redo")
    if args.confirm < 0:
        raise ValueError(f"--confirm must be 0 (no confirmation) or more, got {args.confirm}")
    for cell in args.cells:
        registry.get(cell)  # ValueError naming the valid models
    for i, level in enumerate(args.levels):
        args.levels[i] = store.check_config(level)  # ValueError naming the valid configs
    for name in ("budget", "final_budget", "check_every", "batch_size", "hidden", "workers"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if not 1 <= args.lr_seeds <= len(args.seeds):
        raise ValueError(f"--lr-seeds must lie in 1..{len(args.seeds)} (the number of --seeds), got {args.lr_seeds}")
    for lr in args.lrs or []:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"--lrs must be positive numbers, got {lr}")
    if not (0 <= args.clip_norm and math.isfinite(args.clip_norm)):
        raise ValueError(f"--clip-norm must be >= 0 (0 disables clipping), got {args.clip_norm}")
    if args.grad_threads < 1 or args.batch_size % args.grad_threads:
        raise ValueError(f"--grad-threads must be >= 1 and divide --batch-size {args.batch_size}, "
                         f"got {args.grad_threads}")
    if args.lengthgen_lengths:
        for n in args.lengthgen_lengths:
            store.check_config(f"{args.lengthgen_level}-len{n}")  # ValueError for an impossible length
    if args.data_dir is not None:
        store.resolve_data_dir(args.data_dir)
    if args.address is not None and not args.address.strip():
        raise ValueError("--address must name a Ray cluster such as HOST:6379 or ray://HOST:10001, got ''")
    for cell in args.cells:  # every run's settings, checked as the run will check them, before anything starts
        for level in args.levels:
            Grid(args).spec(cell, level, 1e-3, args.seeds[0]).config(args.data_dir)


def main(argv: list[str] | None = None) -> int:
    """Runs the grid (the runs not done yet) and writes its results."""
    args = parser().parse_args(argv)

    def go() -> int:
        if args.replot:
            if args.redo is not None:  # a replot only redraws: it would silently redo nothing
                raise ValueError("--redo does nothing with --replot, which only redraws the tables of a study; run "
                                 "the --redo command without --replot")
            return replot(Path(args.replot))
        if args.quick:  # its settings, except those given on the command line
            defaults = parser().parse_args([])
            for key, value in QUICK.items():
                if getattr(args, key) == getattr(defaults, key):
                    setattr(args, key, value)
        _validate(args)
        return run_grid(args)

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
