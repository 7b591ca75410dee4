"""Orbax checkpoints of a run: parameters, optimizer state, metrics, the data iterator's position, run metadata.

Each item is stored on its own (``params``, ``opt_state``, ``metrics``, ``data``, ``meta``), so evaluation and
prediction restore the parameters alone, without an optimizer. Saves are synchronous: a save has finished (and
was atomically renamed into place by Orbax) before training goes on, so an interrupt or a crash never leaves a
checkpoint half written; a checkpoint damaged later is skipped on resume in favour of the newest readable one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grain
import jax
import optax
import orbax.checkpoint as ocp

from pipelines.engine.errors import CommandError
from pipelines.engine.state import TrainState

STATE_ITEMS = ("params", "opt_state", "metrics")
_ITEM_NAMES = {"params": "params", "opt_state": "opt_state", "metrics": "train_metrics"}  # Orbax reserves "metrics"


class CheckpointError(CommandError):
    """No readable checkpoint where one was asked for; the message names the files and the other steps."""


def steps_in(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under ``directory``, oldest first (one being written has a suffix)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpointer:
    """Saves and restores a run's state under ``<workdir>/checkpoints/<step>/``, keeping the newest few."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self._max_to_keep = max_to_keep
        self._manager: ocp.CheckpointManager | None = None  # made on first use: no empty folder before a save

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(
                    max_to_keep=self._max_to_keep, create=True, enable_async_checkpointing=False))
        return self._manager

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return steps_in(self.directory)

    def save(self, step: int, state: TrainState, data_iterator: Any, meta: dict) -> None:
        """Saves ``state``, the iterator's position and ``meta`` (JSON) at ``step``, replacing one saved there."""
        if step in self.manager.all_steps():
            # An interrupt saved this step before its epoch ended; the epoch-end save carries more (the
            # epoch's history row), so it replaces that one.
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(
            **{_ITEM_NAMES[name]: ocp.args.StandardSave(getattr(state, name)) for name in STATE_ITEMS},
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        ), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, target: TrainState, data_iterator: Any) -> tuple[TrainState, dict]:
        """Checkpoint ``step``: (state shaped like ``target``, meta), ``data_iterator`` moved to its position."""
        try:
            return self._restore(step, target, data_iterator)
        except Exception as error:
            skip = target.opt_state
            if not isinstance(skip, optax.ApplyIfFiniteState):
                raise
            # A checkpoint written before the optimizer skipped non-finite gradients holds the inner optimizer's
            # state alone: restore that, with the skip's counters fresh (``target``'s, from a new state).
            try:
                state, meta = self._restore(step, target._replace(opt_state=skip.inner_state), data_iterator)
            except Exception:
                raise error from None  # not that layout either: the first error is the one that explains
            return state._replace(opt_state=skip._replace(inner_state=state.opt_state)), meta

    def _restore(self, step: int, target: TrainState, data_iterator: Any) -> tuple[TrainState, dict]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{_ITEM_NAMES[name]: ocp.args.StandardRestore(getattr(target, name)) for name in STATE_ITEMS},
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore(),
        ))
        return TrainState(*(restored[_ITEM_NAMES[name]] for name in STATE_ITEMS)), restored["meta"]

    def restore_newest(self, target: TrainState, data_iterator: Any
                       ) -> tuple[int, TrainState, dict, list[tuple[int, str]]]:
        """The newest readable checkpoint: (step, state, meta, [(unreadable newer step, why)])."""
        skipped = []
        for step in reversed(self.steps()):
            try:
                return (step, *self.restore(step, target, data_iterator), skipped)
            except Exception as e:  # noqa: BLE001 - Orbax, TensorStore and JSON raise many types for a damaged file
                skipped.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
        raise CheckpointError(f"no checkpoint in {self.directory} can be read: "
                              + "; ".join(f"step {s}: {why}" for s, why in skipped))

    def restore_params(self, step: int, target: dict) -> dict:
        """Only the parameters of checkpoint ``step`` (shaped like ``target``); CheckpointError if unreadable."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target)))["params"]
        except Exception as e:  # noqa: BLE001 - see restore_newest
            others = [s for s in self.steps() if s != step]
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}); other steps: "
                f"{', '.join(map(str, others)) or 'none'} (choose one with --step)") from None

    def close(self) -> None:
        """Releases the manager's resources."""
        if self._manager is not None:
            self._manager.close()


def abstract(tree: Any) -> Any:
    """Shape-and-dtype structs of ``tree``'s arrays: a restore target that allocates nothing."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
