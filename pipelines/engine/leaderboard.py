"""The leaderboard: every family on every level under one protocol, built from the experiment's saved runs.

For each (family, level) the learning rate is chosen on validation, from the runs of the seeds that every
learning rate of the grid was tried with: most runs solved, then the fewest training sequences to solve
(median), then the highest validation accuracy. The chosen learning rate's runs, every seed, give the row:
runs solved, median and range of the training sequences to solve, median test accuracy.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pipelines.engine import reporting
from pipelines.engine.trials import PAPER_TABLE_9
from pipelines.engine.solving import SOLVED_ERROR, RunResult
from qrsu_data import task
from qrsu_data.splits import SplitSpec

PAPER_1997 = {row["config"]: row["mean_sequences"] for row in PAPER_TABLE_9.values()}
"""Mean training sequences the 1997 LSTM needed (Table 9): Exp. 6a (= hard) and Exp. 6b."""


class Selection(NamedTuple):
    """A (family, level)'s chosen learning rate, the runs at it, and every candidate's figures."""

    lr: float | None
    runs: list[RunResult]
    candidates: dict[float | None, tuple[int, float, float]]  # lr -> (solved, median to solve, median val acc)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _rank(runs: list[RunResult]) -> tuple[int, float, float]:
    solved = [r.sequences_to_solve for r in runs if r.solved]
    val = [r.validation_accuracy if r.validation_accuracy is not None else r.test_accuracy for r in runs]
    return len(solved), _median(solved) if solved else math.inf, _median(val)


def select(results: list[RunResult], lrs: Sequence[float] | None = None) -> dict[tuple[str, str], Selection]:
    """Per (family, level): the learning rate chosen on validation (among ``lrs``, default all) and its runs."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        if lrs is None or r.lr is None or r.lr in lrs:
            groups.setdefault((r.cell, r.level), []).append(r)
    out = {}
    for key, runs in groups.items():
        final = [r for r in runs if r.role == "final"]
        if final:  # a tuned study: the search chose the configuration, its final seeds are the row
            out[key] = Selection(final[0].lr, sorted(final, key=lambda r: r.seed), {})
            continue
        runs = [r for r in runs if not r.role]  # a learning-rate grid's runs (a search's alone make no row)
        if not runs:
            continue
        by_lr: dict[float | None, list[RunResult]] = {}
        for r in runs:
            by_lr.setdefault(r.lr, []).append(r)
        # Only the seeds every candidate was tried with decide (the others ran at the chosen rate afterwards).
        common = set.intersection(*({r.seed for r in rs} for rs in by_lr.values()))
        candidates = {lr: _rank([r for r in rs if r.seed in common]) for lr, rs in by_lr.items()}
        best = max(candidates, key=lambda lr: (candidates[lr][0], -candidates[lr][1], candidates[lr][2]))
        out[key] = Selection(best, sorted(by_lr[best], key=lambda r: r.seed), candidates)
    return out


def _ordered_keys(selections: dict, families: Sequence[str]) -> tuple[list[str], list[str]]:
    cells = list(dict.fromkeys([*(f for f in families if any(c == f for c, _ in selections)),
                                *sorted(c for c, _ in selections)]))
    levels = [lv for lv in task.LEVELS if any(level == lv for _, level in selections)]
    levels += sorted({level for _, level in selections} - set(levels))
    return cells, levels


def _span(values: Sequence[int | None]) -> str:
    """'n' or 'lo-hi' of the known values, '' if none is known."""
    known = sorted({v for v in values if v})
    return "" if not known else f"{known[0]:,}" if len(known) == 1 else f"{known[0]:,}-{known[-1]:,}"


BOOTSTRAP_RESAMPLES = 10_000


def median_summary(runs: Sequence[RunResult], seed: int = 0) -> dict:
    """Over runs (an unsolved one counts as more than any budget): the median of the sequences to solve, its
    interquartile range and a percentile-bootstrap 95% interval (None where it lies beyond the budget)."""
    import numpy as np

    values = np.array([r.sequences_to_solve if r.solved else np.inf for r in runs], np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))], axis=1)

    def finite(x: float) -> float | None:
        return None if not np.isfinite(x) else float(x)

    return {"median": finite(np.median(values)), "q1": finite(np.percentile(values, 25, method="lower")),
            "q3": finite(np.percentile(values, 75, method="higher")),
            "ci95": (finite(np.percentile(medians, 2.5, method="lower")),
                     finite(np.percentile(medians, 97.5, method="higher")))}


def _count(x: float | None, budget: int | None) -> str:
    return f"{x:,.0f}" if x is not None else (f"> {budget:,}" if budget else "-")


def _final_text(sel: Selection, compact: bool) -> str:
    runs = sel.runs
    solved = sum(r.solved for r in runs)
    budget = max((r.budget or r.sequences_trained for r in runs), default=None)
    m = median_summary(runs)
    text = f"{solved}/{len(runs)}, {_count(m['median'], budget)} [{_count(m['ci95'][0], budget)}-" \
           f"{_count(m['ci95'][1], budget)}]"
    if solved < len(runs):
        text += f", budget {budget:,}"
    if compact:
        return text
    acc = _median([r.test_accuracy for r in runs])
    return (text + f", IQR {_count(m['q1'], budget)}-{_count(m['q3'], budget)}, acc {acc:.3f}"
            + (f", lr {sel.lr:.2g}" if sel.lr is not None else ""))


def _cell_text(sel: Selection, compact: bool = False) -> str:
    if sel.runs and sel.runs[0].role == "final":
        return _final_text(sel, compact)
    solved = [r.sequences_to_solve for r in sel.runs if r.solved]
    acc = _median([r.test_accuracy for r in sel.runs])
    text = f"{len(solved)}/{len(sel.runs)}"
    if compact:
        return text + (f", {statistics.median(solved):,.0f}" if solved else ", -") + f", {acc:.3f}"
    if solved:
        spread = f" ({min(solved):,}-{max(solved):,})" if len(solved) > 1 else ""
        text += f", {statistics.median(solved):,.0f}{spread}"
    return text + f", acc {acc:.3f}" + (f", lr {sel.lr:g}" if sel.lr is not None else "")


def markdown_table(results: list[RunResult], families: Sequence[str] = (), lrs: Sequence[float] | None = None,
                   compact: bool = False) -> str:
    """Families x levels: runs solved at the chosen learning rate, median (range) sequences to solve, median test
    accuracy, the learning rate; each family's parameter count and state size; the 1997 LSTM's figures.
    ``compact``: only solved runs, median sequences to solve and median test accuracy (the README's headline)."""
    selections = select(results, lrs)
    cells, levels = _ordered_keys(selections, families)
    lines = ["| family | parameters | state | " + " | ".join(levels) + " |", "|---" * (len(levels) + 3) + "|"]
    for cell in cells:
        runs = [r for r in results if r.cell == cell]
        # Both can differ between levels (exp6b's 8-class head, a Transformer's cache at the level's length).
        row = [cell, _span([r.parameters for r in runs]), _span([r.state_size for r in runs])]
        row += [_cell_text(selections[(cell, lv)], compact) if (cell, lv) in selections else "" for lv in levels]
        lines.append("| " + " | ".join(row) + " |")
    if any(lv in PAPER_1997 for lv in levels):
        row = ["1997 LSTM (paper, mean)", "156 / 308", ""]
        row += [f"{PAPER_1997[lv]:,}" if lv in PAPER_1997 else "" for lv in levels]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _longest(config: str) -> int:
    return SplitSpec.parse(config).level_def.max_length


def lengthgen_table(lengthgen: dict[str, dict[str, list[float]]], trained_on: str) -> str:
    """Families x evaluated configs: median test accuracy over seeds of the models trained on ``trained_on``."""
    configs = sorted({c for per in lengthgen.values() for c in per}, key=lambda c: _longest(c))
    lines = [f"| family (trained on {trained_on}) | " + " | ".join(
        f"{c} (T {_longest(c):,})" for c in configs) + " |", "|---" * (len(configs) + 1) + "|"]
    for cell, per in lengthgen.items():
        lines.append(f"| {cell} | " + " | ".join(f"{_median(per[c]):.3f}" if c in per else "" for c in configs) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[RunResult], out: Path, families: Sequence[str] = (), lrs: Sequence[float] | None = None,
         lengthgen: dict[str, dict[str, list[float]]] | None = None, trained_on: str = "") -> None:
    """sequences_to_solve.png, learning_curves.png and (with ``lengthgen``) lengthgen.png, in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    selections = select(results, lrs)
    cells, levels = _ordered_keys(selections, families)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3
    colors = dict(zip(cells, palette))

    # Training sequences to solve at the chosen learning rate: the median of the solved runs (with its range),
    # an empty hatched bar up to the budget where none solved, and the 1997 LSTM's figures beside them.
    fig, ax = plt.subplots(figsize=(max(10, 1.6 * len(levels) * (len(cells) + 1) / 4), 5))
    width = 0.8 / (len(cells) + 1)
    for i, cell in enumerate(cells):
        for j, level in enumerate(levels):
            sel = selections.get((cell, level))
            if sel is None:
                continue
            solved = [r.sequences_to_solve for r in sel.runs if r.solved]
            x = j + (i - len(cells) / 2) * width
            if solved:
                med = statistics.median(solved)
                ax.bar(x, med, width, color=colors[cell], yerr=[[med - min(solved)], [max(solved) - med]],
                       error_kw={"elinewidth": 0.8, "capsize": 1.5})
            else:
                ax.bar(x, max(r.sequences_trained for r in sel.runs), width, fill=False, hatch="//",
                       edgecolor=colors[cell])
    for j, level in enumerate(levels):
        if level in PAPER_1997:
            x = j + (len(cells) / 2) * width
            ax.bar(x, PAPER_1997[level], width, color="black")
            ax.annotate(f"{PAPER_1997[level]:,}", (x, PAPER_1997[level]), ha="center", va="bottom", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[c]) for c in cells]
    handles += [plt.Rectangle((0, 0), 1, 1, fill=False, hatch="//"), plt.Rectangle((0, 0), 1, 1, color="black")]
    ax.legend(handles, [*cells, "not solved (bar: budget)", "1997 LSTM (paper)"], fontsize=7, ncol=2)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_yscale("log")
    ax.set_ylabel("training sequences to solve (median, range over seeds)")
    fig.tight_layout()
    reporting.save_figure(fig, out / "sequences_to_solve.png")

    thousands = FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0")
    ncols = min(3, len(levels))
    nrows = -(-len(levels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.5 * nrows), squeeze=False)
    for ax, level in zip(axes.flat, levels):
        for cell in cells:
            sel = selections.get((cell, level))
            for k, r in enumerate(sel.runs if sel else []):
                xs, ys = zip(*r.curve)
                ax.plot(xs, ys, color=colors[cell], alpha=0.8, label=cell if k == 0 else None, linewidth=1)
        ax.axhline(1 - SOLVED_ERROR, color="grey", linestyle=":", linewidth=0.8)
        ax.legend(fontsize=6)
        ax.set_title(level)
        ax.set_xlabel("training sequences")
        ax.set_ylabel("validation accuracy")
        ax.xaxis.set_major_formatter(thousands)
        ax.set_ylim(0, 1.02)
    for ax in list(axes.flat)[len(levels):]:
        ax.set_visible(False)
    fig.tight_layout()
    reporting.save_figure(fig, out / "learning_curves.png")

    if lengthgen:
        configs = sorted({c for per in lengthgen.values() for c in per}, key=lambda c: _longest(c))
        names = list(lengthgen)
        grid = [[_median(lengthgen[n].get(c, [])) for c in configs] for n in names]
        fig, ax = plt.subplots(figsize=(1.3 * len(configs) + 3, 0.5 * len(names) + 1.8))
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label="test accuracy (median over seeds)")
        ax.set_xticks(range(len(configs)), [f"{_longest(c):,}" for c in configs])
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"longest sequence (trained on {trained_on}: {_longest(trained_on.split(', ')[0])})")
        for i in range(len(names)):
            for j in range(len(configs)):
                if not math.isnan(grid[i][j]):
                    ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if grid[i][j] > 0.6 else "white")
        fig.tight_layout()
        reporting.save_figure(fig, out / "lengthgen.png")


def time_table(results: list[RunResult]) -> str:
    """Per level, the runs and the worker-hours they took (each run's own wall time, summed), search and final."""
    levels = [lv for lv in task.LEVELS if any(r.level == lv for r in results)]
    levels += sorted({r.level for r in results} - set(levels))
    lines = ["| level | runs | search and confirmation, worker-h | final seeds, worker-h | all, worker-h |",
             "|---|---|---|---|---|"]

    def hours(runs: list[RunResult]) -> float:
        return sum(r.wall_time_s for r in runs) / 3600

    for level in [*levels, None]:
        runs = [r for r in results if level is None or r.level == level]
        final = [r for r in runs if r.role in ("final", "")]
        search = [r for r in runs if r.role not in ("final", "")]
        lines.append(f"| {level or 'all'} | {len(runs):,} | {hours(search):.2f} | {hours(final):.2f} | "
                     f"{hours(runs):.2f} |")
    return "\n".join(lines) + "\n"


BUDGET_RULE = 5
"""Version 2's budget rule: a level's budget is at least this many times the slowest solved median on it."""


def budget_check(results: list[RunResult]) -> str:
    """Per level of a tuned study, its budget against the rule: BUDGET_RULE x the slowest median of the final
    seeds that solved (a row whose median is unsolved has none), and whether the budget meets it."""
    selections = {key: sel for key, sel in select(results).items() if sel.runs and sel.runs[0].role == "final"}
    _, levels = _ordered_keys(selections, ())
    lines = ["| level | budget | slowest solved median | x" + f"{BUDGET_RULE} | met |", "|---|---|---|---|---|"]
    for level in levels:
        rows = [(median_summary(sel.runs)["median"], cell, sum(r.solved for r in sel.runs), len(sel.runs))
                for (cell, lv), sel in selections.items() if lv == level]
        budget = max(r.budget or 0 for (_, lv), sel in selections.items() if lv == level for r in sel.runs)
        solved = [row for row in rows if row[0] is not None]
        if not solved:
            lines.append(f"| {level} | {budget:,} | none | - | - |")
            continue
        median, cell, k, n = max(solved)
        need = BUDGET_RULE * median
        lines.append(f"| {level} | {budget:,} | {median:,.0f} ({cell}, {k}/{n} solved) | {need:,.0f} | "
                     f"{'yes' if budget >= need else 'no'} |")
    return "\n".join(lines) + "\n"


def write(results: list[RunResult], out: Path, families: Sequence[str] = (), lrs: Sequence[float] | None = None,
          lengthgen: dict[str, dict[str, list[float]]] | None = None, trained_on: str = "") -> str:
    """results.json, results.csv, results.md, time.md (and a tuned study's budget.md, a lengthgen.md), and the
    plots, in ``out``; returns the table."""
    rows = [dataclasses.asdict(r) for r in results]
    reporting.write_json(out / "results.json", rows)
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(RunResult) if f.name != "curve"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    reporting.write_text(out / "results.csv", buf.getvalue())
    table = markdown_table(results, families, lrs)
    reporting.write_text(out / "results.md", table)
    reporting.write_text(out / "headline.md", markdown_table(results, families, lrs, compact=True))
    reporting.write_text(out / "time.md", time_table(results))
    if any(r.role == "final" for r in results):
        reporting.write_text(out / "budget.md", budget_check(results))
    if lengthgen:
        reporting.write_json(out / "lengthgen.json", {"trained_on": trained_on, "accuracy": lengthgen})
        reporting.write_text(out / "lengthgen.md", lengthgen_table(lengthgen, trained_on))
    plot(results, out, families, lrs, lengthgen, trained_on)
    return table
