"""Orbax checkpoints of a run: model, optimizer and metric state, the data iterator, and run metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores a run's state under ``<workdir>/checkpoints/<step>/``, keeping the newest few."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        # Synchronous saves: a save has finished (and is atomically renamed into place) before training
        # goes on, so an interrupt or a crash never leaves a checkpoint half written.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: dict, data_iterator: Any, meta: dict) -> None:
        """Saves ``state`` (a pure dict of arrays), the iterator's position and ``meta`` (JSON) at ``step``."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        ), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, target_state: dict, data_iterator: Any) -> tuple[dict, dict]:
        """Restores checkpoint ``step``: returns (state, meta) and moves ``data_iterator`` to its position."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["meta"]

    def restore_state(self, step: int, target_state: dict) -> dict:
        """Only the model, optimizer and metric state of checkpoint ``step``."""
        return self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target_state)))["state"]

    def close(self) -> None:
        """Releases the manager's resources."""
        self._manager.close()
