"""What made the difference: from the 1997 protocol to today's training, one factor at a time, on Exp. 6a.

``python -m pipelines.factors`` trains, on ``hard``, a row of trials per step of a path that starts at the
1997 protocol (the 1997 LSTM with its truncated gradient, squared error on sigmoid outputs, online SGD with
learning rate 0.5) and changes one factor per row until it reaches ``pipelines.experiment``'s defaults
(today's LSTM cell with a forget gate, chrono gate biases, hidden 64, full gradient, softmax cross-entropy,
Adam 2e-3 with gradients clipped at norm 1 on batches of 16). Each row keeps every change of the rows above.

One stop rule for every row: the 2,000 most recent training sequences all classified correctly by argmax,
each judged before the update it takes part in. A row's figure is the median and range of the training
sequences until that held, over its trials (seeds SEED..SEED+TRIALS-1).

The rows are independent: they train side by side on Ray workers, one per core (pipelines.engine.pool), and
each is saved as it ends (pipelines.engine.study), so an interrupted study resumes where it stopped. Writes
results.json, results.md and factors.png to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

from pipelines.engine import reporting, trials
from pipelines.engine.errors import guarded
from pipelines.engine.flags import non_negative_int, positive_int
from pipelines.engine.pool import Finished, Job, Pool
from pipelines.engine.session import ensure_built
from pipelines.engine.study import Study, StudyError
from qrsu_data.splits import SplitSpec


@dataclasses.dataclass(frozen=True)
class Row:
    """One step of the path: a learner's settings, and the factor it changes from the row above."""

    name: str
    change: str
    cell: str = "lstm1997"  # or "lstm": qrsu_models.SequenceClassifier("lstm", ...)
    gradient: str = "truncated"
    loss: str = "squared_error"
    optimizer: str = "sgd"
    lr: float = 0.5
    clip_norm: float = 0.0
    batch_size: int = 1
    hidden: int = 4  # memory cells: the 1997 net's 2 blocks of 2
    lstm_init: str = "default"

    def settings(self) -> dict:
        """The fields that decide the row's results."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "change")}


def _path() -> tuple[Row, ...]:
    base = Row("1997", "the 1997 protocol: 1997 LSTM (2 blocks of 2 cells), truncated gradient, squared error, "
                       "online SGD lr 0.5")
    full = dataclasses.replace(base, name="full-gradient", change="full gradient (BPTT) instead of truncated",
                               gradient="full")
    ce = dataclasses.replace(full, name="cross-entropy", change="softmax cross-entropy instead of squared error "
                             "on sigmoid outputs", loss="cross_entropy")
    adam = dataclasses.replace(ce, name="adam", change="Adam 2e-3, clipped at norm 1, instead of SGD 0.5 (still "
                               "online)", optimizer="adam", lr=2e-3, clip_norm=1.0)
    batch = dataclasses.replace(adam, name="batch-16", change="batches of 16 instead of one sequence per update",
                                batch_size=16)
    cell = dataclasses.replace(batch, name="forget-gate", change="today's LSTM cell (forget gate, a gate set per "
                               "cell, tanh), 4 cells, flax's initialisation (zero gate biases)", cell="lstm")
    chrono = dataclasses.replace(cell, name="chrono", change="chrono gate biases instead of zeros",
                                 lstm_init="chrono")
    wide = dataclasses.replace(chrono, name="hidden-64", change="hidden 64 instead of 4 (= pipelines.experiment's "
                               "defaults)", hidden=64)
    return (base, full, ce, adam, batch, cell, chrono, wide)


PATH: tuple[Row, ...] = _path()
"""The rows, from the 1997 protocol to today's defaults; the truncated gradient exists for the 1997 cell
only, so the gradient changes before the cell, and width comes last (the 1997 gate-bias scheme, -2 per
block, does not extend to 32 blocks)."""
ROWS = {r.name: r for r in PATH}
STOP = trials.StopRule(window=2000, correct_by="argmax", max_error=None)
"""The one stop rule of every row."""
PAPER_MEAN = trials.PAPER_TABLE_9["6a"]["mean_sequences"]
CONFIG = "hard"
DEFAULT_BUDGET = 100_000
RESULT_FILES = ("results.json", "results.md", "factors.png")


def learner_for(row: Row, num_classes: int) -> trials.Learner:
    """The row's learner."""
    tx = trials.optimizer(row.optimizer, row.lr, row.clip_norm)
    if row.cell == "lstm1997":
        method = "rtrl" if row.gradient == "truncated" else "autodiff"
        return trials.lstm1997_learner(num_classes=num_classes, blocks=row.hidden // 2, gradient=row.gradient,
                                       method=method, loss=row.loss, tx=tx, batch_size=row.batch_size)
    return trials.classifier_learner(num_classes=num_classes, hidden=row.hidden, lstm_init=row.lstm_init,
                                     loss=row.loss, tx=tx, batch_size=row.batch_size)


def summarize(trial_rows: list[dict]) -> dict:
    """Solved count, and median, min and max of sequences-to-solve over the solved trials."""
    solved = [r["sequences_to_stop"] for r in trial_rows if r["solved"]]
    out = {"trials": len(trial_rows), "solved": len(solved)}
    if solved:
        out.update(median=statistics.median(solved), min=min(solved), max=max(solved))
    out["median_wrong_of_2560"] = statistics.median(r["wrong_of_2560_argmax"] for r in trial_rows)
    return out


def markdown(result: dict) -> str:
    """The factor table."""
    s = result["settings"]
    lines = [f"# From the 1997 protocol to today's training, one factor at a time (`{s['config']}`)", "",
             f"{s['trials']} trials per row (seeds {s['seed']}..{s['seed'] + s['trials'] - 1}), budget "
             f"{s['budget']:,} training sequences per trial. Stop rule (every row): {result['stop_rule']}.", "",
             "| row | change from the row above | solved | median sequences to solve | range | "
             "x the 1997 row | median wrong of 2560 (argmax) |", "|---|---|---|---|---|---|---|"]
    base = None
    for row in result["rows"]:
        m = row["summary"]
        if base is None:
            base = m.get("median")
        ratio = f"{m['median'] / base:.2f}" if m.get("median") and base else "-"
        med = f"{m['median']:,.0f}" if m.get("median") else "not solved"
        rng = f"{m['min']:,}-{m['max']:,}" if m.get("median") else f"> {s['budget']:,}"
        lines.append(f"| {row['name']} | {row['change']} | {m['solved']}/{m['trials']} | {med} | {rng} | {ratio} | "
                     f"{m['median_wrong_of_2560']:g} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Every trial's sequences-to-solve per row (x at the budget when unsolved), medians marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows, budget = result["rows"], result["settings"]["budget"]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 2.0))
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        solved = [t["sequences_to_stop"] for t in row["trials"] if t["solved"]]
        unsolved = len(row["trials"]) - len(solved)
        ax.scatter(solved, [y] * len(solved), color="C0", s=18, alpha=0.7, zorder=3)
        if unsolved:  # spread vertically a little, so that each unsolved trial shows
            ax.scatter([budget] * unsolved, [y + 0.08 * (k - (unsolved - 1) / 2) for k in range(unsolved)],
                       color="C3", marker="x", s=24, zorder=3)
        if solved:
            ax.scatter([statistics.median(solved)], [y], color="black", marker="|", s=300, zorder=4)
        ax.annotate(f"{len(solved)}/{len(row['trials'])}", (1.01, y), xycoords=("axes fraction", "data"),
                    va="center", fontsize=8)
    ax.axvline(PAPER_MEAN, color="grey", linestyle="--", linewidth=1)
    ax.annotate(f"paper's mean under its own stop rule ({PAPER_MEAN:,})", (PAPER_MEAN, len(rows) - 0.45),
                fontsize=7, color="grey", ha="center")
    ax.set_yticks(range(len(rows)), [r["name"] for r in reversed(rows)])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    ax.set_xlabel("training sequences until the 2,000 most recent were all classified right (log scale)")
    ax.set_ylim(-0.6, len(rows) - 0.2)
    handles = [plt.Line2D([], [], color="C0", marker="o", linestyle="", label="a trial"),
               plt.Line2D([], [], color="black", marker="|", markersize=12, linestyle="", label="median of solved"),
               plt.Line2D([], [], color="C3", marker="x", linestyle="", label=f"not solved in {budget:,}")]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.set_title("From the 1997 protocol (top) to today's training (bottom), one change per row; solved at right",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    reporting.save_figure(fig, path)


def write(result: dict, out: Path) -> None:
    """results.json, results.md and factors.png."""
    reporting.write_json(out / "results.json", result)
    reporting.write_text(out / "results.md", markdown(result))
    plot(result, out / "factors.png")


KIND = "factors"


def train_row(row: Row, config: str, seeds: list[int], budget: int, data_dir, monitor=None) -> dict:
    """One row's trials, trained and tested: its record (a task of the pool)."""
    t0 = time.perf_counter()
    train = trials.load_split(config, "train", data_dir)
    test = trials.load_split(config, "test", data_dir).head(trials.PAPER_TEST)
    learner = learner_for(row, trials.num_classes_of(config))
    outcomes, params = trials.train_trials(learner, train, seeds, budget=budget, rule=STOP, progress=False,
                                           desc=row.name)
    _, wrong = trials.wrong_answers(learner, params, test)
    rows = [{**dataclasses.asdict(o), "wrong_of_2560_argmax": int(w)} for o, w in zip(outcomes, wrong)]
    return {"name": row.name, "change": row.change, "settings": row.settings(), "summary": summarize(rows),
            "trials": rows, "wall_s": round(time.perf_counter() - t0, 1)}


class RowsPlan:
    """The factor study's rows not done yet, each one task."""

    def __init__(self, rows: list[Row], args: argparse.Namespace, seeds: list[int]):
        self.jobs = [Job(r.name, train_row, (r, args.config, seeds, args.budget, args.data_dir)) for r in rows]
        self.left = {j.key for j in self.jobs}

    def ready(self) -> list[Job]:
        """Every row at once: they are independent."""
        jobs, self.jobs = self.jobs, []
        return jobs

    def finished(self, job: Job, outcome: dict) -> None:
        """Marks a row done."""
        self.left.discard(job.key)

    @property
    def done(self) -> bool:
        """Whether every row has finished."""
        return not self.left


def _result(study: Study) -> dict:
    records = study.records()
    return {"settings": study.settings, "stop_rule": STOP.describe(),
            "rows": [records[r.name] for r in PATH if r.name in records]}


def main(argv: list[str] | None = None) -> int:
    """Trains every row (or the rows not yet in --out) and writes the table and plot."""
    p = argparse.ArgumentParser(prog="python -m pipelines.factors", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=positive_int, default=10, help="trials (seeds) per row (default 10)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="trial i of a row uses seed SEED+i")
    p.add_argument("--budget", type=positive_int, default=DEFAULT_BUDGET,
                   help=f"training sequences per trial at most (default {DEFAULT_BUDGET:,}, the whole hard split)")
    p.add_argument("--rows", nargs="+", default=[r.name for r in PATH], choices=[r.name for r in PATH],
                   metavar="ROW", help="rows to run, of: " + ", ".join(r.name for r in PATH) + " (default: all)")
    p.add_argument("--config", default=CONFIG, help="dataset config with 4 classes (default: hard); built first if "
                   "missing")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $QRSU_DATA_DIR, else ~/qrsu_data)")
    p.add_argument("--out", default="results/factors", help="output folder (default: results/factors)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="rows trained side by side on this machine, each on one core (default: one per core)")
    p.add_argument("--address", default=None, help="run on the existing Ray cluster at this address instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        num_classes = trials.num_classes_of(args.config)
    except ValueError as e:
        p.error(f"--config: {e}")
    if num_classes != 4:
        p.error(f"--config {args.config!r} has {num_classes} classes; the factor study runs on Exp. 6a (4 classes)")
    settings = {"config": args.config, "trials": args.trials, "seed": args.seed, "budget": args.budget}
    return guarded(lambda: run(Study(args.out, KIND, settings), args))


def run(study: Study, args: argparse.Namespace) -> int:
    """Trains the asked rows not in the study yet, then writes its table and plot."""
    seeds = trials.trial_seeds(args.seed, args.trials)
    with study:
        study.check_runs({r.name: r.settings() for r in PATH if r.name in args.rows})
        done = study.records()
        for name in done:
            print(f"{name}: kept from {study.out}", flush=True)
        todo = [r for r in PATH if r.name in args.rows and r.name not in done]
        ensure_built(SplitSpec.parse(args.config), args.data_dir)

        def on_done(finished: Finished) -> None:
            entry = finished.outcome
            study.save(entry["name"], entry)
            m = entry["summary"]
            med = f"median {m['median']:,.0f} (range {m['min']:,}-{m['max']:,})" if m.get("median") else "none solved"
            print(f"{entry['name']}: {m['solved']}/{m['trials']} solved, {med}, {entry['wall_s']:.0f} s", flush=True)
            reporting.write_json(study.path("results.json"), _result(study))  # after every row

        failed = []
        if todo:
            with Pool(args.workers, args.address) as pool:
                failed = pool.run([RowsPlan(todo, args, seeds)], on_done, total=len(todo), desc="rows")
        result = _result(study)
    write(result, study.out)
    print(f"\n{markdown(result)}\nWrote {', '.join(RESULT_FILES)} to {study.out}")
    if failed:
        raise StudyError(f"rows failed and were not saved: {'; '.join(f'{j.key}: {why}' for j, why in failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
