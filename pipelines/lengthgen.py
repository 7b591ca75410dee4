"""Length generalisation: every family trained by each recipe, evaluated from length 200 to 10,000, and Pascanu et
al. (2013)'s experiment: ``python -m pipelines.lengthgen --help``.

A recipe is how a family is trained on sequences of at most 200 symbols (docs/length_generalisation.md):

* ``fixed``: on ``hard`` (lengths 100-110), the leaderboard's training;
* ``varied``: on ``hard-var50to200`` (every length from 50 to 200, the relevant symbols at ``hard``'s fractions of
  each), in batches bucketed by length;
* ``noise``: varied, each sequence starting from a Gaussian state (std ``NOISE_STD``) instead of zeros;
* ``passed``: varied, each sequence starting from the final state of the previous batch's sequence in its row
  (state passing, Buitrago Ruiz & Gu 2025);
* ``varied-through``, ``passed-through``: as ``varied`` and ``passed``, but every run trains its whole budget, the
  learning rate falling to 0 along a cosine, instead of stopping at the first check that solves (what carries
  to length 5,000 comes after solving within 200).

Each (family, recipe) is a learning-rate grid on seed 0, then seeds 1 and 2 at the best rate (the
leaderboard's protocol version 1, pipelines.engine.grid; its grid holds the family's rates of version 1 and,
with ``--fixed-from``, the rate the leaderboard's tuning chose for it on ``hard``), and every model of the chosen
rate is evaluated on ``hard-len200`` ... ``hard-len10000`` (the relevant symbols at the same fractions of the
length). The recipes that start from a given state need a family whose state can be set; the others are left out
of their rows and said so. ``--pascanu`` instead runs Pascanu et al.'s experiment: their RNN, their lengths (50-199, one
length per batch), SGD at 0.01 on batches of 20, clipping at 1, Omega at 4, 5 seeds, stopped as
their code stops (no validation sequence wrong), evaluated on 10,000 sequences at each length from 50 to 10,000
with their positions.

The ``fixed`` recipe is the leaderboard's own training, so ``--fixed-from DIR`` takes its rows from a
leaderboard study's models trained on ``hard`` (tuned, 5 seeds; docs/leaderboard2) instead of training them again.

Writes, into ``--out``: one study folder per recipe (its runs, models and evaluations, resumable), and
``matrix.md``, ``matrix.json`` and ``matrix.png`` (a heatmap of family x recipe x length).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
from pathlib import Path

from pipelines.engine import leaderboard, reporting
from pipelines.engine.errors import guarded
from pipelines.engine.grid import FAMILIES, KIND, Family, results_of, run_grid, saved_lengthgen, write_tables
from pipelines.engine.study import Study, has_runs
from qrsu_data import task
from qrsu_models import registry

RECIPES: dict[str, dict] = {
    "fixed": {"level": "hard", "bucket_width": 0, "initial_state": "zero"},
    "varied": {"level": "hard-var50to200", "bucket_width": 25, "initial_state": "zero"},
    "noise": {"level": "hard-var50to200", "bucket_width": 25, "initial_state": "noise"},
    "passed": {"level": "hard-var50to200", "bucket_width": 25, "initial_state": "passed"},
    "varied-through": {"level": "hard-var50to200", "bucket_width": 25, "initial_state": "zero", "through": True},
    "passed-through": {"level": "hard-var50to200", "bucket_width": 25, "initial_state": "passed", "through": True},
}
"""The training recipes, by name: the level trained on, the buckets of its batches, the initial state, and
whether a run trains through its whole budget (the learning rate falling to 0 along a cosine) rather than
stopping once solved."""
NOISE_STD = 0.5
"""Standard deviation of the noisy initial state (Buitrago Ruiz & Gu 2025 fit it to the final states' spread;
a fixed 0.5 is about the spread of an LSTM's or a GRU's final h on this task)."""
MATRIX_SEEDS, PASCANU_SEEDS = (0, 1, 2), (0, 1, 2, 3, 4)
"""The seeds of a (family, recipe) (the learning rate chosen on the first), and of Pascanu's experiment."""
LENGTHS = (200, 500, 1000, 2000, 5000, 10000)
BUDGET, CHECK_EVERY = 100_000, 1600
"""Training sequences per run, and between checks (the varied levels' validation holds lengths 50-200)."""
MATRIX_FAMILIES: dict[str, Family] = {**FAMILIES, "lstm1997": Family(
    "lstm1997", 64, (1e-3, 3e-3, 1e-2), "the paper's: weights uniform in [-0.1, 0.1], input gates biased -2, -4, ...",
    options=(("cells", 16),))}
"""The matrix's families: the leaderboard's, and the 1997 LSTM (16 cells, 8 blocks; no forget gate)."""

PASCANU_LEVEL = "len50to199_pos10to19_pos50to59_per100"
"""Their task's layout: lengths 50-199, the first relevant symbol at [L/10, 2L/10), the second at [L/2, 6L/10)."""
PASCANU_LENGTHS = (50, 100, 150, 200, 250, 500, 1000, 2000, 3000, 5000, 10000)
PASCANU_SOLVED_ERROR = 0.0
"""Their code's stop rule: no sequence of the 10,000 of validation wrong (``error < .0001`` percent), where the
paper's success rate counts under 1%. A model stopped at 1% (the leaderboard's rule) does not generalise: seed
0, stopped there after 1,760,000 sequences, was 96.5% right at length 200 and at chance from 1,000."""


def pascanu_config(length: int) -> str:
    """A test config of Pascanu et al.'s task at one ``length``: their positions exactly, 10,000 test sequences."""
    tenth = length // 10
    return f"len{length}_pos{tenth}to{2 * tenth - 1}_pos{length // 2}to{length // 2 + tenth - 1}-train1-validation0"


def leaderboard_rates(study: Path) -> dict[str, float]:
    """family -> the learning rate a leaderboard study's tuning chose for it on ``hard`` (2 significant figures)."""
    results = results_of(Study(study, KIND)) if has_runs(study) else {}
    chosen = leaderboard.select([r for r in results.values() if r.level == "hard"])
    return {cell: float(f"{s.lr:.2g}") for (cell, _), s in chosen.items() if s.lr is not None}


def matrix_families(rates: dict[str, float]) -> dict[str, Family]:
    """The matrix's families, each with ``rates``' rate for it (a leaderboard's tuned one) added to its grid."""
    return {name: dataclasses.replace(f, lrs=tuple(sorted({*f.lrs, rates[name]}))) if name in rates else f
            for name, f in MATRIX_FAMILIES.items()}


def study_args(recipe: str, cells: list[str], out: Path, args: argparse.Namespace,
               rates: dict[str, float] | None = None) -> argparse.Namespace:
    """The grid's settings for one recipe's study (``rates``: a tuned rate per family, added to its grid)."""
    r = RECIPES[recipe]
    return argparse.Namespace(
        cells=cells, levels=[r["level"]], seeds=list(args.seeds or MATRIX_SEEDS), lr_seeds=1, lrs=args.lrs,
        protocol="grid",
        budget=args.budget, check_every=args.check_every, clip_norm=1.0, hidden=args.hidden, batch_size=16,
        grad_threads=1,
        bucket_width=r["bucket_width"], initial_state=r["initial_state"], noise_std=NOISE_STD, omega=0.0,
        train_through=r.get("through", False),
        workers=args.workers, address=args.address, lengthgen_level="hard", lengthgen_lengths=list(args.lengths),
        data_dir=args.data_dir, out=str(out / recipe), configs=8, search_seeds=[100, 101], wave=2,
        families=matrix_families(rates or {}), eval_limit=args.eval_sequences)


def pascanu_level(train_size: int | None) -> str:
    """The dataset config Pascanu's runs train on: their level, with ``train_size`` training sequences."""
    return PASCANU_LEVEL if train_size is None else f"{PASCANU_LEVEL}-train{train_size}"


def pascanu_folder(out: Path, train_size: int | None, buckets: int = 1) -> Path:
    """The study folder of Pascanu's runs (one per training-split size and bucket width)."""
    return out / ("pascanu" + ("" if train_size is None else f"-train{train_size}")
                  + ("" if buckets == 1 else f"-buckets{buckets}"))


def pascanu_args(args: argparse.Namespace) -> argparse.Namespace:
    """The settings of Pascanu et al.'s experiment, as a grid of one family at one learning rate."""
    seeds = args.seeds or PASCANU_SEEDS
    buckets = args.pascanu_buckets or 1  # their code: one length per minibatch
    return argparse.Namespace(
        cells=["pascanu_rnn"], levels=[pascanu_level(args.pascanu_train)], seeds=list(seeds),
        lr_seeds=len(seeds), lrs=[0.01],
        protocol="grid", budget=args.budget, check_every=args.check_every, clip_norm=1.0, hidden=None, batch_size=20,
        grad_threads=1, optimizer="sgd", bucket_width=buckets, initial_state="zero", noise_std=1.0, omega=4.0,
        workers=args.workers, address=args.address, lengthgen_level=None, lengthgen_lengths=[],
        solved_error=PASCANU_SOLVED_ERROR,
        eval_configs=[pascanu_config(n) for n in PASCANU_LENGTHS], eval_limit=10_000, data_dir=args.data_dir,
        out=os.fspath(pascanu_folder(Path(args.out), args.pascanu_train, buckets)), configs=8, search_seeds=[100, 101],
        wave=2,
        families={"pascanu_rnn": Family("pascanu_rnn", 50, (0.01,), "basic tanh: every weight N(0, 0.1^2)")})


def applicable(cell: str, recipe: str) -> bool:
    """Whether ``cell`` can be trained by ``recipe`` (a given initial state needs a settable state)."""
    return RECIPES[recipe]["initial_state"] == "zero" or registry.get(cell).supports("forward_state")


def matrix(out: Path, recipes: list[str], fixed_rows: dict[str, dict[str, list[float]]] | None = None
           ) -> dict[str, dict[str, dict[str, list[float]]]]:
    """family -> recipe -> suite config -> the accuracies of its seeds, from every recipe's study in ``out`` (and
    the ``fixed`` rows of the families it lacks from ``fixed_rows``, a leaderboard's: :func:`fixed_source`)."""
    found: dict[str, dict[str, dict[str, list[float]]]] = {}
    for recipe in recipes:
        table = saved_lengthgen(out / recipe)[0] if has_runs(out / recipe) else {}
        if recipe == "fixed":
            table = {**(fixed_rows or {}), **table}
        for cell, per in table.items():
            found.setdefault(cell, {})[recipe] = per
    return {cell: found[cell] for cell in sorted(found, key=_family_order)}


def _family_order(cell: str) -> int:
    return list(MATRIX_FAMILIES).index(cell) if cell in MATRIX_FAMILIES else len(MATRIX_FAMILIES)


FIXED_FROM = "fixed-from.json"
"""Where --out records the leaderboard study whose models give the ``fixed`` rows, for later commands."""


def leaderboard_fixed(study: Path) -> dict[str, dict[str, list[float]]]:
    """family -> suite config -> accuracies by seed of a leaderboard study's models trained on ``hard`` (the
    ``fixed`` recipe: the same level, zero states, stopped at solving); ValueError if ``study`` holds none."""
    table, trained_on = saved_lengthgen(study) if has_runs(study) else ({}, "")
    if trained_on != "hard" or not table:
        raise ValueError(f"--fixed-from {study}: no evaluations at length of models trained on hard there; give "
                         f"the --out folder of a pipelines.experiment study (docs/leaderboard2, say)")
    return table


def fixed_source(out: Path, asked: str | None) -> tuple[Path | None, dict[str, dict[str, list[float]]]]:
    """The leaderboard study that gives ``out``'s fixed rows, and those rows (:func:`leaderboard_fixed`):
    ``asked`` (recorded in ``out`` for later commands), else the one recorded, else none."""
    record = out / FIXED_FROM
    if asked is not None:
        source = Path(asked).expanduser().absolute()
        return source, leaderboard_fixed(source)  # checked before anything is written
    if not record.is_file():
        return None, {}
    try:  # relative to out, so that a checkout elsewhere finds it
        source = (out / json.loads(record.read_text())["study"]).resolve()
        return source, leaderboard_fixed(source)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{record} names the study of the fixed rows, and it cannot be read ({e}); give "
                         f"--fixed-from DIR again") from None


def markdown(found: dict, lengths: tuple[int, ...]) -> str:
    """The matrix as a table: median (min-max) test accuracy over seeds, per family, recipe and length, and the
    number of seeds (a row still being filled has fewer)."""
    configs = [f"hard-len{n}" for n in lengths]
    lines = ["| family | recipe | seeds | " + " | ".join(f"{n:,}" for n in lengths) + " |",
             "|---|---|---" + "|---" * len(lengths) + "|"]
    for cell, per_recipe in found.items():
        for recipe, per in per_recipe.items():
            cells = []
            for c in configs:
                acc = per.get(c, [])
                cells.append(f"{statistics.median(acc):.3f} ({min(acc):.2f}-{max(acc):.2f})" if acc else "")
            seeds = max((len(per.get(c, [])) for c in configs), default=0)
            lines.append(f"| {cell} | {recipe} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(found: dict, lengths: tuple[int, ...], path: Path) -> None:
    """A heatmap: a row per (family, recipe), a column per length, the median accuracy over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(cell, recipe) for cell, per in found.items() for recipe in per]
    grid = [[statistics.median(found[c][r].get(f"hard-len{n}", [math.nan])) for n in lengths] for c, r in rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3.5, 0.32 * len(rows) + 1.8))
    image = ax.imshow(grid, vmin=0.25, vmax=1, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="median test accuracy\n(chance 0.25)")
    ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths])
    ax.set_yticks(range(len(rows)), [f"{c} / {r}" for c, r in rows], fontsize=7)
    ax.set_xlabel("sequence length at test (trained on lengths <= 200)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if v > 0.7 else "white")
    fig.tight_layout()
    reporting.save_figure(fig, path)


def pascanu_table(folder: Path) -> str:
    """Per seed of the study in ``folder``, the wrong answers of 10,000 at each of Pascanu et al.'s lengths."""
    if not (folder / "lengthgen").is_dir():
        return ""
    lines = ["| seed | solved after | " + " | ".join(f"{n:,}" for n in PASCANU_LENGTHS) + " |",
             "|---|---" + "|---" * len(PASCANU_LENGTHS) + "|"]
    for path in sorted((folder / "lengthgen").glob("*.json")):
        acc = json.loads(path.read_text())
        run = json.loads((folder / "runs" / path.name).read_text())["result"]
        solved = f"{run['sequences_to_solve']:,}" if run["solved"] else f"not in {run['sequences_trained']:,}"
        lines.append(f"| {run['seed']} | {solved} | " + " | ".join(
            f"{round((1 - acc[pascanu_config(n)]) * 10_000)} wrong" if pascanu_config(n) in acc else ""
            for n in PASCANU_LENGTHS) + " |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m pipelines.lengthgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(MATRIX_FAMILIES), metavar="MODEL",
                   help=f"families (default: {' '.join(MATRIX_FAMILIES)})")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE",
                   help=f"training recipes (default: {' '.join(RECIPES)})")
    p.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS), help="test lengths of hard-len<N>")
    p.add_argument("--budget", type=int, default=None, help=f"training sequences per run (default {BUDGET:,}; "
                   "--pascanu: 10,000,000)")
    p.add_argument("--check-every", type=int, default=None, help=f"sequences between checks (default "
                   f"{CHECK_EVERY:,}; --pascanu: 20,000)")
    p.add_argument("--eval-sequences", type=int, default=1024, help="test sequences per length (default 1024)")
    p.add_argument("--pascanu", action="store_true", help="reproduce Pascanu et al. 2013 instead of the matrix")
    p.add_argument("--pascanu-train", type=int, default=None, metavar="N",
                   help="--pascanu: train on a split of N sequences (default 100,000; they drew fresh sequences for "
                        "every minibatch), in OUT/pascanu-trainN")
    p.add_argument("--pascanu-buckets", type=int, default=None, metavar="W",
                   help="--pascanu: minibatches drawn from buckets of W lengths (default 1: one length per minibatch, "
                        "as their code does), in OUT/pascanu[-trainN]-bucketsW for W > 1")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="the seeds: the learning rate is chosen on the first (default: 0 1 2; --pascanu: 0-4)")
    p.add_argument("--lrs", nargs="+", type=float, default=None,
                   help="learning rates tried on the first seed (default: each family's of the leaderboard's "
                        "version 1, and with --fixed-from the rate its tuning chose on hard)")
    p.add_argument("--hidden", type=int, default=None, help="width of every family (default: each family's)")
    p.add_argument("--workers", type=int, default=None, help="runs side by side (default: one per core)")
    p.add_argument("--address", default=None, help="an existing Ray cluster to run on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/lengthgen", help="output folder (a study per recipe inside)")
    p.add_argument("--fixed-from", metavar="DIR", default=None,
                   help="the fixed recipe's rows from a leaderboard study's models trained on hard (DIR: its --out, "
                        "docs/leaderboard2 say; tuned, 5 seeds, evaluated at the same lengths) instead of training "
                        "them; families it lacks are trained. Its tuned rates on hard join the other recipes' grids. "
                        "Recorded in --out for later commands")
    p.add_argument("--replot", action="store_true",
                   help="train nothing: rewrite the matrix, and each recipe's tables, from --out's studies")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the recipes' studies (or Pascanu's) and writes the matrix."""
    args = parser().parse_args(argv)

    def go() -> int:
        out = Path(args.out)
        if args.pascanu and args.fixed_from is not None:
            raise ValueError("--fixed-from belongs to the matrix, not to --pascanu")
        for name in ("pascanu_train", "pascanu_buckets"):
            if not args.pascanu and getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} belongs to --pascanu")
        if args.pascanu and (args.lrs is not None or args.hidden is not None):
            raise ValueError("--lrs and --hidden belong to the matrix; --pascanu is their setting (lr 0.01, 50 units)")
        if args.seeds is not None and (any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds)):
            raise ValueError(f"--seeds must be distinct and non-negative, got {args.seeds}")
        if args.lrs is not None and any(not lr > 0 for lr in args.lrs):
            raise ValueError(f"--lrs must be positive, got {args.lrs}")
        for name in ("budget", "check_every", "eval_sequences", "workers", "pascanu_train", "pascanu_buckets",
                     "hidden"):
            value = getattr(args, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for cell in args.cells:
            if cell not in MATRIX_FAMILIES:
                raise ValueError(f"unknown family {cell!r}; choose among: {', '.join(MATRIX_FAMILIES)}")
        for n in args.lengths:
            task.scaled_level("hard", n)  # ValueError for a length the suite cannot have
        if args.pascanu:
            args.budget = args.budget or 10_000_000
            args.check_every = args.check_every or 20_000
            study = pascanu_args(args)
            if args.replot and not has_runs(study.out):
                raise ValueError(f"--replot: no Pascanu study in {study.out}; give the --out of an earlier "
                                 f"--pascanu command (with its --pascanu-train and --pascanu-buckets)")
            if not args.replot:
                run_grid(study)
            print(pascanu_table(Path(study.out)))
            return 0
        args.budget, args.check_every = args.budget or BUDGET, args.check_every or CHECK_EVERY
        fixed_from, given = fixed_source(out, args.fixed_from)
        studied = [r for r in RECIPES if has_runs(out / r)]
        if args.replot and not given and not studied:
            raise ValueError(f"--replot: no recipe's study in {out} (folders {', '.join(RECIPES)}); give the --out "
                             f"of an earlier lengthgen command (docs/lengthgen, say)")
        if args.fixed_from is not None:
            out.mkdir(parents=True, exist_ok=True)
            reporting.write_json(out / FIXED_FROM, {"study": os.path.relpath(fixed_from, out.absolute())})
        if not args.replot:
            # The other recipes try each family's rate tuned on hard as well as its grid: the grid alone is version
            # 1's, below the rates the tuning found (minGRU: 0.023 against at most 0.01). Read only when training.
            rates = leaderboard_rates(fixed_from) if fixed_from is not None else {}
            for recipe in args.recipes:
                cells = [c for c in args.cells if applicable(c, recipe)]
                skipped = sorted(set(args.cells) - set(cells))
                if skipped:
                    print(f"{recipe}: left out {', '.join(skipped)} (no settable state)", flush=True)
                taken = [c for c in cells if recipe == "fixed" and c in given]
                if taken:
                    print(f"fixed: {', '.join(taken)} taken from {fixed_from}", flush=True)
                    cells = [c for c in cells if c not in taken]
                if not cells:
                    continue
                print(f"Recipe {recipe!r}: {', '.join(cells)}", flush=True)
                run_grid(study_args(recipe, cells, out, args, rates))
        else:  # a study stopped mid-way left its folder's tables at its last finish; the matrix reads the runs
            for recipe in studied:
                write_tables(out / recipe)
        found = matrix(out, list(RECIPES), given)  # every recipe studied in --out, not only this command's
        lengths = tuple(args.lengths)
        table = markdown(found, lengths)
        reporting.write_text(out / "matrix.md", table)
        reporting.write_json(out / "matrix.json", found)
        if found:
            plot(found, lengths, out / "matrix.png")
        print(table)
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
