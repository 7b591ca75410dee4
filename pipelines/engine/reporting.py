"""What a run leaves for people to read: history.json, config.json, the learning-curve plot, TensorBoard events."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")
"""Per-epoch curves: the train split's running figures and the validation split's (``eval_split``, which is
the test split for a config without validation). The test split is evaluated once, at the end (``test``)."""


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` atomically: readers see the old file or the new one, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_figure(fig, path: str | os.PathLike) -> None:
    """Saves a matplotlib figure as a PNG atomically (temp file, then rename) and closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def new_history(eval_split: str = "validation") -> dict:
    """An empty history: per-epoch train and validation loss and accuracy, the final test figures once known."""
    return {**{k: [] for k in (*HISTORY_KEYS, "epoch", "sequences_seen", "wall_time_s")}, "eval_split": eval_split,
            "test": None}


def plot_curves(history: dict[str, list], path: str | os.PathLike, title: str = "") -> None:
    """Saves train and validation loss and accuracy per epoch, and the final test figures, side by side (the seed
    notebook's step 7) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = history.get("epoch") or list(range(1, len(history["train_loss"]) + 1))
    split = history.get("eval_split", "validation")
    test = history.get("test")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, name in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        ax.plot(epochs, history[f"train_{key}"], marker="o", label=f"Train {name.lower()}")
        ax.plot(epochs, history[f"val_{key}"], marker="o", label=f"{split.capitalize()} {name.lower()}")
        if test and split != "test":
            ax.plot([epochs[-1]], [test["loss" if key == "loss" else "accuracy"]], marker="*", markersize=14,
                    linestyle="none", label=f"Test {name.lower()} (final)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(0, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


class Events:
    """A run's TensorBoard event files (tensorboardX), so that ``tensorboard --logdir`` compares runs."""

    def __init__(self, logdir: str | os.PathLike, purge_step: int | None = None, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            # purge_step: a resumed run's events replace those a crash left after its restored checkpoint.
            self._writer = SummaryWriter(os.fspath(logdir), purge_step=purge_step, flush_secs=10)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes ``values`` (tag -> number, e.g. ``"validation/accuracy"``) at ``step``."""
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, float(value), global_step=step)

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
