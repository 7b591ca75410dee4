"""RNN vs LSTM vs GRU on every level until solved: ``python -m pipelines.experiment --help``.

Each run trains one model on one level from one seed (batch 16, Adam 2e-3, gradients clipped at norm 1,
chrono-initialised LSTM gate biases) and checks the validation split every ``--check-every`` training
sequences (its first 2,560 sequences first, the whole split once those are at most 2% wrong); it stops when
solved (at most 1% of the validation split misclassified, the criterion of Pascanu et al. 2013) or when its
budget of training sequences is spent, and then reports the test split's accuracy, with the 1997 paper's
figure: wrong answers among the first 2,560 test sequences.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from pipelines import cli, reporting
from pipelines.config import TrainConfig
from pipelines.evaluator import Evaluator
from pipelines.sharding import Sharding
from pipelines.steps import create_model, create_tx, init_state, make_train_step
from qrsu_data import loaders, store, task
from qrsu_models import CELLS, registry

SOLVED_ERROR = 0.01
"""Solved: at most this fraction of the validation split misclassified (Pascanu et al. 2013)."""
SCREEN_ERROR = 0.02
"""A check evaluates the whole validation split only once its first 2,560 sequences are at most this wrong."""
PAPER_TEST = 2560
"""The 1997 paper's test set size; its figure is wrong answers out of this many."""
PAPER_1997 = {"hard": 31_390, "exp6b": 571_100}
"""Mean training sequences the 1997 LSTM needed (Table 9): Exp. 6a (= hard) and Exp. 6b."""
BUDGETS = {"easy": 16_000, "normal": 32_000, "moderate": 32_000, "hard": 32_000, "nightmare": 36_000,
           "exp6b": 48_000}
"""Default training-sequence budget of a run, per level."""
CHECK_EVERY = {"easy": 320, "normal": 320, "moderate": 320, "hard": 320, "nightmare": 960, "exp6b": 640}
"""Default training sequences between two checks, per level (nightmare's checks cost 5x hard's)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one (cell, level, seed) run depends on: a run is redone only if one of these differs."""

    cell: str
    level: str
    seed: int
    budget: int
    check_every: int
    batch_size: int = 16
    lr: float = 2e-3
    clip_norm: float = 1.0
    hidden: int = 64
    padding: str = "pre"
    grad_threads: int = 2

    @property
    def key(self) -> str:
        """The run's file name in the output folder's runs/."""
        return f"{self.cell.replace(':', '.')}-{self.level}-seed{self.seed}"


@dataclasses.dataclass
class RunResult:
    """What one (cell, level, seed) run ended with."""

    cell: str
    level: str
    seed: int
    solved: bool
    sequences_to_solve: int | None
    sequences_trained: int
    test_accuracy: float
    wrong_of_2560: int
    wall_time_s: float
    curve: list[tuple[int, float]]
    parameters: int | None = None
    state_size: int | None = None
    validation_accuracy: float | None = None  # at the last check (the stop decision's figure)


def run_one(spec: RunSpec, data_dir=None, events_dir: Path | None = None) -> RunResult:
    """Trains ``spec.cell`` on ``spec.level`` from ``spec.seed`` until solved or ``spec.budget`` training sequences.

    With ``events_dir``, each check's accuracy goes to TensorBoard event files there (step: sequences seen)."""
    if spec.budget <= 0 or spec.check_every <= 0:
        raise ValueError(f"budget and check_every must be positive, got {spec.budget} and {spec.check_every}")
    config = TrainConfig(model=spec.cell, difficulty=spec.level, batch_size=spec.batch_size, lr=spec.lr,
                         clip_norm=spec.clip_norm, hidden=spec.hidden, seed=spec.seed, data_dir=data_dir,
                         padding=spec.padding, grad_threads=spec.grad_threads, workdir=os.devnull).validate()
    store.build(spec.level, data_dir)
    sharding = Sharding.create()
    model = create_model(config)
    parameters = registry.parameter_count(model)
    state_size = registry.state_size(model, loaders.max_length(spec.level))
    tx = create_tx(config)
    split, state = init_state(model, tx, config, sharding)
    evaluator = Evaluator(split, sharding, batch_size=1280)
    train_iter = loaders.train_loader(spec.level, batch_size=spec.batch_size, seed=spec.seed, data_dir=data_dir,
                                      padding=spec.padding)
    steps_per_check = max(1, spec.check_every // spec.batch_size)
    check_split = "validation" if "validation" in loaders.split_names(spec.level) else "test"
    t0 = time.perf_counter()
    seen, curve, solved_at = 0, [], None
    if events_dir is not None and events_dir.exists():
        shutil.rmtree(events_dir)  # a run killed before it was saved left these; the run is redone whole
    events = reporting.Events(events_dir or ".", enabled=events_dir is not None)
    with make_train_step(config, split, tx, sharding) as step_fn, contextlib.closing(events):
        while seen < spec.budget:  # at least one check runs
            for _ in range(steps_per_check):
                state, _ = step_fn(state, sharding.put_batch(next(train_iter)))
            seen += steps_per_check * spec.batch_size
            # A check first screens 2,560 validation sequences (a quarter of the split, so a quarter of the
            # time); only a screen with at most SCREEN_ERROR wrong is followed by the whole split, which
            # decides. A model at 1% error on the split fails the screen with probability ~1e-6 (5 sd).
            wrong = evaluator.predict(state.params, spec.level, check_split, data_dir=data_dir, limit=PAPER_TEST).wrong
            accuracy = 1.0 - wrong / PAPER_TEST
            if wrong <= SCREEN_ERROR * PAPER_TEST:
                accuracy = evaluator.evaluate(state.params, spec.level, check_split, data_dir=data_dir)["accuracy"]
            curve.append((seen, accuracy))
            events.scalars(seen, {f"{check_split}/accuracy": accuracy})
            if 1.0 - accuracy <= SOLVED_ERROR:
                solved_at = seen
                break
        # The model that stopped, on the test split it never chose by: the whole split, and the 1997 figure.
        test = evaluator.predict(state.params, spec.level, "test", data_dir=data_dir)
        events.scalars(seen, {"test/accuracy": test.metrics()["accuracy"]})
    wrong_of_2560 = int((test.predicted[:PAPER_TEST] != test.labels[:PAPER_TEST]).sum())
    return RunResult(spec.cell, spec.level, spec.seed, solved_at is not None, solved_at, seen,
                     test.metrics()["accuracy"], wrong_of_2560, round(time.perf_counter() - t0, 1), curve,
                     parameters, state_size, accuracy)


class ExperimentError(cli.CommandError):
    """An output folder that cannot take this grid's results; the message says why."""


def check_out(out: Path) -> Path:
    """``out`` made and writable, before anything trains; ExperimentError otherwise."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} is a file, not a folder; give a folder for the results")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ExperimentError(f"cannot write the results into --out {out}: {e.strerror or e}") from None
    return out


def saved_runs(out: Path) -> dict[str, tuple[dict, RunResult]]:
    """The finished runs in ``out``/runs, by key: (their settings, their result)."""
    found = {}
    for path in sorted((out / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            result = RunResult(**{**record["result"], "curve": [tuple(p) for p in record["result"]["curve"]]})
            found[path.stem] = (record["settings"], result)
        except (ValueError, TypeError, KeyError) as e:
            raise ExperimentError(f"{path} is not a finished run of this experiment ({type(e).__name__}: {e}); "
                                  f"move it away and run again (the run is then redone)") from None
    return found


def plan(specs: list[RunSpec], out: Path) -> tuple[list[RunSpec], dict[str, RunResult]]:
    """(runs still to do, runs done with these settings); ExperimentError if ``out`` holds runs of other settings."""
    saved = saved_runs(out)
    todo, done, conflicts = [], {}, []
    for spec in specs:
        if spec.key not in saved:
            todo.append(spec)
            continue
        settings, result = saved[spec.key]
        asked = dataclasses.asdict(spec)
        diffs = {k: (settings.get(k), v) for k, v in asked.items() if settings.get(k) != v}
        if diffs:
            listed = ", ".join(f"{k}: saved {a!r}, asked {b!r}" for k, (a, b) in diffs.items())
            conflicts.append(f"{spec.key} ({listed})")
        else:
            done[spec.key] = result
    if conflicts:
        raise ExperimentError(f"{out} holds runs of other settings: {'; '.join(conflicts[:5])}"
                              f"{' ...' if len(conflicts) > 5 else ''}. Rerun with the saved settings to extend "
                              f"the grid, or choose another --out")
    return todo, done


def save_run(spec: RunSpec, result: RunResult, out: Path) -> None:
    """Writes one finished run into ``out``/runs, atomically."""
    reporting.write_json(out / "runs" / f"{spec.key}.json",
                         {"settings": dataclasses.asdict(spec), "result": dataclasses.asdict(result)})


def markdown_table(results: list[RunResult]) -> str:
    """Cells x levels: runs solved, median training sequences to solve, median final test accuracy."""
    cells = list(dict.fromkeys(r.cell for r in results))
    levels = list(dict.fromkeys(r.level for r in results))
    lines = ["| level | " + " | ".join(cells) + " | 1997 LSTM |", "|---" * (len(cells) + 2) + "|"]
    for level in levels:
        row = [level]
        for cell in cells:
            runs = [r for r in results if r.cell == cell and r.level == level]
            solved = [r.sequences_to_solve for r in runs if r.solved]
            acc = statistics.median(r.test_accuracy for r in runs)
            med = f"{statistics.median(solved):,.0f} seq" if solved else "not solved"
            row.append(f"{len(solved)}/{len(runs)} solved, {med}, acc {acc:.3f}")
        row.append(f"{PAPER_1997[level]:,} seq" if level in PAPER_1997 else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_results(results: list[RunResult], out: Path) -> None:
    """sequences_to_solve.png, accuracy_by_level.png and learning_curves.png (one panel a level), in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    cells = list(dict.fromkeys(r.cell for r in results))
    levels = list(dict.fromkeys(r.level for r in results))
    colors = dict(zip(cells, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    thousands = FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0")

    # Training sequences to solve: the median of the solved runs, an empty hatched bar up to the budget where
    # none solved, and the 1997 LSTM's figures beside them.
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / (len(cells) + 1)
    for i, cell in enumerate(cells):
        for j, level in enumerate(levels):
            runs = [r for r in results if r.cell == cell and r.level == level]
            solved = [r.sequences_to_solve for r in runs if r.solved]
            x = j + (i - len(cells) / 2) * width
            if solved:
                ax.bar(x, statistics.median(solved), width, color=colors[cell])
            else:
                ax.bar(x, max(r.sequences_trained for r in runs), width, fill=False, hatch="//",
                       edgecolor=colors[cell])
    for j, level in enumerate(levels):
        if level in PAPER_1997:
            x = j + (len(cells) / 2) * width
            ax.bar(x, PAPER_1997[level], width, color="black")
            ax.annotate(f"{PAPER_1997[level]:,}", (x, PAPER_1997[level]), ha="center", va="bottom", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[c]) for c in cells]
    handles += [plt.Rectangle((0, 0), 1, 1, fill=False, hatch="//"), plt.Rectangle((0, 0), 1, 1, color="black")]
    ax.legend(handles, [*cells, "not solved (bar: budget)", "1997 LSTM"], fontsize=8)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_yscale("log")
    ax.set_ylabel("training sequences to solve (median over seeds)")
    fig.tight_layout()
    reporting.save_figure(fig, out / "sequences_to_solve.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for cell in cells:
        ax.plot(levels, [statistics.median(r.test_accuracy for r in results if r.cell == cell and r.level == lv)
                         for lv in levels], marker="o", label=cell, color=colors[cell])
    ax.axhline(1 - SOLVED_ERROR, color="grey", linestyle="--", label="solved (99%)")
    ax.set_ylabel("final test accuracy (median over seeds)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    reporting.save_figure(fig, out / "accuracy_by_level.png")

    ncols = min(3, len(levels))
    nrows = -(-len(levels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.4 * nrows), squeeze=False)
    for ax, level in zip(axes.flat, levels):
        for r in results:
            if r.level == level:
                xs, ys = zip(*r.curve)
                ax.plot(xs, ys, color=colors[r.cell], alpha=0.8, label=r.cell)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8)
        ax.set_title(level)
        ax.set_xlabel("training sequences")
        ax.set_ylabel("test accuracy")
        ax.xaxis.set_major_formatter(thousands)
        ax.set_ylim(0, 1.02)
    for ax in list(axes.flat)[len(levels):]:
        ax.set_visible(False)
    fig.tight_layout()
    reporting.save_figure(fig, out / "learning_curves.png")


def write_results(results: list[RunResult], out: Path) -> None:
    """results.json, results.csv, results.md and the three plots, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [dataclasses.asdict(r) for r in results]
    reporting.write_json(out / "results.json", rows)
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(RunResult) if f.name != "curve"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    reporting.write_text(out / "results.csv", buf.getvalue())
    reporting.write_text(out / "results.md", markdown_table(results))
    plot_results(results, out)


def load_results(out: Path) -> list[RunResult]:
    """Every finished run saved in ``out`` (its runs/ folder, or a results.json of an earlier version)."""
    if (out / "runs").is_dir():
        return [result for _, result in saved_runs(out).values()]
    path = out / "results.json"
    try:
        rows = json.loads(path.read_text())
        return [RunResult(**{**row, "curve": [tuple(point) for point in row["curve"]]}) for row in rows]
    except FileNotFoundError:
        raise ExperimentError(f"{path} does not exist: give the --out folder of an earlier experiment") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ExperimentError(f"{path} is not an experiment's results.json ({e})") from None


def _ordered(results: list[RunResult], cells: list[str]) -> list[RunResult]:
    """Results by level (task order), then cell (the grid's order, others after), then seed."""
    levels = list(task.LEVELS)
    known = list(dict.fromkeys([*cells, *CELLS, *sorted(r.cell for r in results)]))
    return sorted(results, key=lambda r: (levels.index(r.level) if r.level in levels else len(levels), r.level,
                                          known.index(r.cell), r.seed))


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m pipelines.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(CELLS), metavar="MODEL",
                   help=f"models to compare: any of {', '.join(registry.names())}, or package.module:Class "
                        f"(default: {' '.join(CELLS)})")
    p.add_argument("--levels", nargs="+", default=list(task.LEVELS), choices=list(task.LEVELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=None, help="training sequences per run (default: per level, "
                   + ", ".join(f"{k} {v:,}" for k, v in BUDGETS.items()) + ")")
    p.add_argument("--check-every", type=int, default=None, help="training sequences between test checks "
                   "(default: per level, " + ", ".join(f"{k} {v:,}" for k, v in CHECK_EVERY.items()) + ")")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (2e-3 at batch 16; at 3e-3 "
                   "batch 16 solved hard sooner but left nightmare at chance within 48,000 sequences)")
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16,
                   help="batch size; 16, not the training default 32: with more updates per sequence, fewer "
                        "training sequences solve a level (hard, Adam 3e-3: a median 3,840 at batch 16, "
                        "5,440 at 32)")
    p.add_argument("--grad-threads", type=int, default=2,
                   help="CPU gradient threads (see pipelines.train --help); pinned, not automatic, because the "
                        "thread count sets the order of a float sum: the published table used 2")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/experiment",
                   help="output folder; each finished run is saved in OUT/runs as it ends, and a rerun into the "
                        "same folder skips the runs done with the same settings")
    p.add_argument("--quick", action="store_true", help="a small grid for tests: lstm and rnn on easy, one seed")
    p.add_argument("--replot", metavar="DIR", help="train nothing: rewrite the table and plots of DIR's runs")
    return p


def _validate(args: argparse.Namespace) -> None:
    for cell in args.cells:
        registry.get(cell)  # ValueError naming the valid models
    for name in ("budget", "check_every", "batch_size", "hidden"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for seed in args.seeds:
        if seed < 0:
            raise ValueError(f"--seeds must be >= 0, got {seed}")
    if not args.lr > 0 or args.lr != args.lr or args.lr == float("inf"):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not 0 <= args.clip_norm < float("inf"):
        raise ValueError(f"--clip-norm must be >= 0 (0 disables clipping), got {args.clip_norm}")
    if args.grad_threads < 1 or args.batch_size % args.grad_threads:
        raise ValueError(f"--grad-threads must be >= 1 and divide --batch-size {args.batch_size}, "
                         f"got {args.grad_threads}")
    if args.data_dir is not None:
        store.resolve_data_dir(args.data_dir)


def main(argv: list[str] | None = None) -> int:
    """Runs the grid (the runs not done yet) and writes its results."""
    args = parser().parse_args(argv)

    def go() -> int:
        if args.replot:
            out = Path(args.replot)
            results = _ordered(load_results(out), [])
            write_results(results, out)
            print(markdown_table(results))
            return 0
        if args.quick:
            args.cells, args.levels, args.seeds = ["rnn", "lstm"], ["easy"], args.seeds[:1]
            args.budget, args.check_every = args.budget or 3200, args.check_every or 320
        _validate(args)
        out = check_out(Path(args.out))
        specs = [RunSpec(cell, level, seed, budget=args.budget or BUDGETS[level],
                         check_every=args.check_every or CHECK_EVERY[level], batch_size=args.batch_size, lr=args.lr,
                         clip_norm=args.clip_norm, hidden=args.hidden, grad_threads=args.grad_threads)
                 for level in args.levels for cell in args.cells for seed in args.seeds]
        todo, done = plan(specs, out)
        if done:
            print(f"{len(done)} of the {len(specs)} runs are done already in {out}; {len(todo)} to go.", flush=True)
        for spec in todo:
            r = run_one(spec, args.data_dir, events_dir=out / "events" / spec.key)
            save_run(spec, r, out)
            outcome = f"solved after {r.sequences_to_solve:,} sequences" if r.solved else "not solved"
            print(f"{spec.cell:<5} {spec.level:<10} seed {spec.seed}: {outcome}; test accuracy {r.test_accuracy:.4f}, "
                  f"{r.wrong_of_2560} of 2560 wrong, {r.wall_time_s:.0f} s", flush=True)
        results = _ordered(load_results(out), args.cells)  # every run in the folder, this grid's and earlier ones'
        write_results(results, out)
        print(f"\n{markdown_table(results)}\nWrote results.json, results.csv, results.md, sequences_to_solve.png, "
              f"accuracy_by_level.png and learning_curves.png to {out}")
        return 0

    return cli.guarded(go)


if __name__ == "__main__":
    sys.exit(main())
