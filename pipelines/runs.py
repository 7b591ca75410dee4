"""A trained run, read back from its workdir: the saved config and the model of one of its checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from pipelines.config import TrainConfig, load
from pipelines.sharding import Sharding
from qrsu_models import SequenceClassifier


class RunError(RuntimeError):
    """A workdir that holds no usable run, or a checkpoint it lacks; the message says what to do."""


class Run(NamedTuple):
    """A trained model with the config it was trained under and the step of its checkpoint."""

    config: TrainConfig
    model: SequenceClassifier
    step: int


def _train_hint(workdir: Path) -> str:
    return f"train one with: python -m pipelines.train --workdir {workdir}"


def load_config(workdir: str | os.PathLike) -> TrainConfig:
    """The config saved in ``workdir``/config.json; RunError when the workdir holds no run."""
    workdir = Path(workdir).expanduser().absolute()
    if not workdir.is_dir():
        raise RunError(f"{workdir} does not exist; {_train_hint(workdir)}")
    path = workdir / "config.json"
    if not path.is_file():
        raise RunError(f"{workdir} holds no trained run (no config.json); {_train_hint(workdir)}")
    return load(path)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under ``workdir``/checkpoints, oldest first."""
    directory = Path(workdir).expanduser().absolute() / "checkpoints"
    if not directory.is_dir():
        return []
    # Orbax names a finished checkpoint by its step; one being written carries a temporary suffix.
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def load_run(workdir: str | os.PathLike, step: int | None = None) -> Run:
    """The model of checkpoint ``step`` (default: the latest) of the run in ``workdir``; RunError if absent."""
    # Imported here: TrainState pulls in optax and the jitted steps, which config-only callers don't need.
    from pipelines.checkpoints import Checkpointer
    from pipelines.steps import TrainState

    workdir = Path(workdir).expanduser().absolute()
    config = load_config(workdir)
    steps = checkpoint_steps(workdir)
    # Checked before making a Checkpointer, which would create an empty checkpoints/ folder in the workdir.
    if not steps:
        raise RunError(f"{workdir} holds no checkpoint (checkpoints/ is missing or empty); {_train_hint(workdir)}")
    if step is not None and step not in steps:
        raise RunError(f"{workdir} has no checkpoint at step {step}; available steps: "
                       f"{', '.join(map(str, steps))}")
    checkpointer = Checkpointer(workdir)
    try:
        step = checkpointer.latest_step() if step is None else step
        # The checkpoint holds the whole training state; it is restored into a same-structured fresh one
        # (built from the saved config, as training built it) and the model is taken out of it.
        ts = TrainState.create(config, Sharding.create())
        ts.load_pure_state(checkpointer.restore_state(step, ts.pure_state()))
    finally:
        checkpointer.close()
    model = ts.objects()[0]
    return Run(config, model, int(step))
