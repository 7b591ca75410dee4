"""Evaluates a trained run's checkpoint per class and by lag: ``python -m pipelines.evaluate --help``."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pipelines.engine import reporting
from pipelines.engine import workdir as workdir_lib
from pipelines.engine.errors import guarded
from pipelines.engine.evaluator import Evaluator
from pipelines.engine.sharding import Sharding, is_primary
from pipelines.engine.state import SplitModel
from pipelines.engine.workdir import load_run
from qrsu_data import catalog, task
from qrsu_data.splits import SplitSpec

MAX_LAG_ROWS = 20
"""At most this many rows in the by-lag table and plot; wider lag ranges (nightmare) are binned."""


def lag_definition(level: task.Level) -> str:
    """What 'lag' means for ``level``: the distance between its first and last relevant symbol."""
    last = f"t{level.num_relevant}"
    return f"{last} - t1" + ("" if level.num_relevant == 2 else " (first to last relevant symbol)")


def lag_bins(lags: np.ndarray, max_bins: int = MAX_LAG_ROWS) -> list[tuple[int, int]]:
    """Inclusive (lo, hi) lag ranges holding examples: one per lag value, or equal-width bins if too many."""
    values = np.unique(lags)
    if len(values) <= max_bins:
        return [(int(v), int(v)) for v in values]
    lo, hi = int(values[0]), int(values[-1])
    width = math.ceil((hi - lo + 1) / max_bins)
    bins = [(a, min(a + width - 1, hi)) for a in range(lo, hi + 1, width)]
    return [(a, b) for a, b in bins if np.any((lags >= a) & (lags <= b))]


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [num_classes, num_classes]: how many examples of each true class (row) got each prediction (column)."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return confusion


def summarize(labels: np.ndarray, predicted: np.ndarray, positions: np.ndarray, level: task.Level) -> dict[str, Any]:
    """Overall and per-class accuracy, the confusion matrix and accuracy by lag, as a JSON-ready dict."""
    correct = predicted == labels
    confusion = confusion_counts(labels, predicted, level.num_classes)
    per_class = []
    for c, name in enumerate(level.classes):
        rows = labels == c
        count = int(rows.sum())
        per_class.append({"class": name, "id": c, "count": count, "correct": int(correct[rows].sum()),
                          "accuracy": float(correct[rows].mean()) if count else None})
    lags = positions[:, -1] - positions[:, 0]
    by_lag = []
    for lo, hi in lag_bins(lags):
        rows = (lags >= lo) & (lags <= hi)
        by_lag.append({"lag_min": lo, "lag_max": hi, "count": int(rows.sum()), "correct": int(correct[rows].sum()),
                       "accuracy": float(correct[rows].mean())})
    return {"num_examples": int(len(labels)), "correct": int(correct.sum()),
            "accuracy": float(correct.mean()) if len(labels) else None,
            "classes": list(level.classes), "per_class": per_class,
            "confusion_matrix": confusion.tolist(), "confusion_matrix_axes": "rows: true class, columns: predicted",
            "lag_definition": lag_definition(level), "by_lag": by_lag}


def plot_confusion_matrix(result: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """Saves the confusion matrix (counts annotated, class names on both axes) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(result["confusion_matrix"])
    classes = result["classes"]
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_title(title)
    fig.tight_layout()
    reporting.save_figure(fig, path)


def plot_accuracy_by_lag(result: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """Saves accuracy per lag (or lag bin) as a bar chart, with each bar's example count and chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["by_lag"]
    names = [str(r["lag_min"]) if r["lag_min"] == r["lag_max"] else f"{r['lag_min']}-{r['lag_max']}" for r in rows]
    accuracy = [r["accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.5))
    bars = ax.bar(range(len(rows)), accuracy, color="tab:blue")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"n={r['count']}", ha="center",
                va="bottom", fontsize=8)
    chance = 1 / len(result["classes"])
    ax.axhline(chance, color="gray", linestyle="--")
    ax.text(len(rows) - 0.5, chance + 0.01, "chance", ha="right", va="bottom", color="gray", fontsize=8)
    ax.set_xticks(range(len(rows)), names, rotation=45 if len(rows) > 8 else 0)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel(f"lag ({result['lag_definition']})")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    reporting.save_figure(fig, path)


def evaluate_run(workdir: str | os.PathLike, split: str = "test", step: int | None = None,
                 data_dir: str | os.PathLike | None = None, write: bool = True,
                 config: str | None = None) -> dict[str, Any]:
    """Evaluates checkpoint ``step`` of the run in ``workdir`` on every example of a split; writes the report.

    ``config`` evaluates on another dataset config than the run's own (e.g. longer sequences), which must have
    the same classes."""
    workdir = Path(workdir).expanduser().absolute()
    run = load_run(workdir, step)
    data_dir = run.config.data_dir if data_dir is None else os.fspath(data_dir)
    dataset = run.config.dataset if config is None else SplitSpec.parse(config)  # resolved once
    level = dataset.level_def
    if level.num_classes != run.config.num_classes:
        raise ValueError(f"config {dataset.name!r} has {level.num_classes} classes but the run was trained on "
                         f"{run.config.difficulty!r} with {run.config.num_classes}; choose a config of the same level "
                         f"family")
    catalog.ensure_built(dataset, data_dir, build_if_missing=config is not None)
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r} of config {dataset.name!r}; choose one of: "
                         f"{', '.join(dataset.splits)}")
    sharding = Sharding.create()
    model, params = SplitModel.of(run.model, run.config.padding)
    batch_size = _eval_batch_size(run.config.eval_batch_size, level.max_length, sharding)
    predictions = Evaluator(model, sharding, batch_size).predict(params, dataset, split, data_dir=data_dir)
    positions = catalog.open_split(dataset, split, data_dir).positions
    result = {"workdir": str(workdir), "step": run.step, "split": split, "model": run.config.model,
              "difficulty": run.config.difficulty, "config": dataset.name, "data_dir": data_dir,
              **summarize(predictions.labels, predictions.predicted, positions, level)}
    if write and is_primary():
        suffix = "" if config is None or dataset.name == run.config.difficulty else f"-{dataset.name}"
        title = f"{run.config.model} on {dataset.name}, {split} split, step {run.step}"
        reporting.write_json(workdir / f"evaluation{suffix}.json", result)
        plot_confusion_matrix(result, workdir / f"confusion_matrix{suffix}.png", title)
        plot_accuracy_by_lag(result, workdir / f"accuracy_by_lag{suffix}.png", title)
    return result


def _eval_batch_size(configured: int, length: int, sharding: Sharding) -> int:
    """The run's eval batch size, made smaller for long sequences so a batch holds at most ~2M tokens."""
    cap = max(sharding.num_devices * jax.process_count(), 2_000_000 // max(length, 1))
    size = min(configured, cap)
    step = sharding.num_devices
    return max(step, size // step * step)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_report(result: dict[str, Any]) -> str:
    """The human-readable report: overall accuracy, a per-class table and an accuracy-by-lag table."""
    lines = [f"{result['model']} on {result['difficulty']!r}, checkpoint step {result['step']}, "
             f"{result['split']} split: accuracy {_pct(result['accuracy'])} "
             f"({result['correct']:,} / {result['num_examples']:,})", "",
             "class  count  accuracy"]
    for r in result["per_class"]:
        lines.append(f"{r['class']:<5}  {r['count']:>5}  {_pct(r['accuracy']):>8}")
    lines += ["", f"lag ({result['lag_definition']})", "lag      count  accuracy"]
    for r in result["by_lag"]:
        name = str(r["lag_min"]) if r["lag_min"] == r["lag_max"] else f"{r['lag_min']}-{r['lag_max']}"
        lines.append(f"{name:<7}  {r['count']:>5}  {_pct(r['accuracy']):>8}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate",
                                description="Evaluate a trained run's checkpoint: accuracy overall, per class and "
                                            "by lag between the relevant symbols; writes evaluation.json, "
                                            "confusion_matrix.png and accuracy_by_lag.png into the workdir.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    workdir_lib.add_run_flags(p)
    p.add_argument("--split", default="test", help="which split to evaluate, every example once (test, train, ...)")
    p.add_argument("--data-dir", default=None, help="dataset dir (default: the one the run was trained with)")
    p.add_argument("--config", default=None,
                   help="evaluate on another dataset config of the same classes, e.g. longer sequences (built first "
                        "if missing; the report goes to evaluation-CONFIG.json). Default: the run's own")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = parser().parse_args(argv)

    def go() -> int:
        result = evaluate_run(args.workdir, args.split, args.step, args.data_dir, config=args.config)
        print(format_report(result))
        suffix = "" if result["config"] == result["difficulty"] else f"-{result['config']}"
        print(f"\nWrote evaluation{suffix}.json, confusion_matrix{suffix}.png and accuracy_by_lag{suffix}.png "
              f"to {result['workdir']}")
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
