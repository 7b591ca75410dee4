"""A run's workdir: what it holds, the one process that may write it, and the trained model read back from it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

from flax import nnx

from pipelines.engine.checkpoints import CheckpointError, Checkpointer, abstract, steps_in
from pipelines.engine.config import TrainConfig, load
from pipelines.engine.errors import CommandError
from pipelines.engine.locks import FolderLock
from pipelines.engine.model import create_model

RUN_FILES = ("config.json", "history.json", "curves.png", "checkpoints", "events", "evaluation*.json",
             "confusion_matrix*.png", "accuracy_by_lag*.png")
"""What a run and its evaluations write into a workdir (glob patterns); --overwrite removes exactly these."""


class RunError(CommandError):
    """A workdir that holds no usable run, or is in use; the message says what to do."""


def _train_hint(workdir: Path) -> str:
    return f"train one with: python -m pipelines.train --workdir {workdir}"


def resolve(workdir: str | os.PathLike) -> Path:
    """``workdir`` expanded and absolute; RunError if it is empty or a file."""
    if not os.fspath(workdir).strip():
        raise RunError("the workdir is empty; give a folder")
    path = Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise RunError(f"the workdir {path} is a file, not a folder; give a folder")
    return path


def holds_run(workdir: Path) -> bool:
    """Whether ``workdir`` holds something trained: a checkpoint or a history (a config alone is not a run)."""
    return bool(steps_in(workdir / "checkpoints")) or (workdir / "history.json").exists()


def run_files(workdir: Path) -> list[Path]:
    """The files and folders of a run (and of its evaluations) in ``workdir``."""
    return sorted({p for pattern in RUN_FILES for p in workdir.glob(pattern)})


def remove_run(workdir: Path) -> None:
    """Deletes the run in ``workdir`` and its evaluations (nothing else in the folder)."""
    for p in run_files(workdir):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


class WorkdirLock(FolderLock):
    """One writer per workdir: an exclusive lock held while training, naming its holder to anyone else."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, error=RunError, what="the workdir", user="another training",
                         hint="choose another --workdir")


def _step(text: str) -> int:
    try:
        step = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if step < 0:
        raise argparse.ArgumentTypeError(f"must be a checkpoint step >= 0, got {step}")
    return step


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """``--workdir`` and ``--step``, as every command that reads a trained run takes them."""
    p.add_argument("--workdir", required=True, help="the run's workdir (made by python -m pipelines.train)")
    p.add_argument("--step", type=_step, default=None, help="checkpoint step (default: the latest)")


class Run(NamedTuple):
    """A trained model with the config it was trained under and the step of its checkpoint."""

    config: TrainConfig
    model: nnx.Module
    step: int


def load_config(workdir: str | os.PathLike) -> TrainConfig:
    """The config saved in ``workdir``/config.json; RunError when the workdir holds no run or the file is bad."""
    workdir = resolve(workdir)
    if not workdir.is_dir():
        raise RunError(f"{workdir} does not exist; {_train_hint(workdir)}")
    path = workdir / "config.json"
    if not path.is_file():
        raise RunError(f"{workdir} holds no trained run (no config.json); {_train_hint(workdir)}")
    try:
        return load(path)
    except ValueError as e:
        raise RunError(str(e)) from None


def saved_record(workdir: Path) -> dict:
    """config.json as saved, with the run's recorded amendments (``resumes``) and model size."""
    try:
        return json.loads((workdir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under ``workdir``/checkpoints, oldest first."""
    return steps_in(resolve(workdir) / "checkpoints")


def load_run(workdir: str | os.PathLike, step: int | None = None) -> Run:
    """The model of checkpoint ``step`` (default: the latest) of the run in ``workdir``: parameters only."""
    workdir = resolve(workdir)
    config = load_config(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise RunError(f"{workdir} holds no checkpoint (checkpoints/ is missing or empty); {_train_hint(workdir)}")
    if step is not None and step not in steps:
        raise RunError(f"{workdir} has no checkpoint at step {step}; available steps: {', '.join(map(str, steps))}")
    step = steps[-1] if step is None else step
    try:
        model = create_model(config)
    except (ValueError, TypeError) as e:
        raise RunError(f"the model saved in {workdir / 'config.json'} cannot be built: {e}") from None
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    checkpointer = Checkpointer(workdir)
    try:
        restored = checkpointer.restore_params(step, abstract(nnx.to_pure_dict(params)))
    except CheckpointError as e:
        raise RunError(str(e)) from None
    finally:
        checkpointer.close()
    return Run(config, nnx.merge(graphdef, restored, nnx.to_pure_dict(rest)), int(step))
