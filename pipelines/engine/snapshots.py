"""A study's runs saved mid-way, so that a stopped or killed study resumes each run in flight where it was.

At a check, once SNAPSHOT_EVERY_S seconds have passed since the run started or last saved, a grid run saves its
state under ``<study>/inflight/<run key>/``: parameters, optimizer state and data position (a
:class:`~pipelines.engine.checkpoints.Checkpointer`, written atomically), its settings, and its checks so far.
Started again, the run restores it and goes on: the same steps on the same batches, so the same result as a run
never stopped. The driver removes the snapshot once the run's record is written. A snapshot of other settings,
or one that cannot be read, is discarded and the run starts afresh. A run with state passing takes none: the
states it carries between batches are not saved, so it restarts.

An evaluation at length keeps a :class:`Tally` in ``<study>/inflight/<run key>@<config>/``: the examples it has
scored and how many were wrong, saved after every batch (a Transformer's batch at length 10,000 is minutes of
work), so a stopped evaluation goes on from its next batch with the same count as one never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pipelines.engine import reporting
from pipelines.engine.checkpoints import CheckpointError, Checkpointer

INFLIGHT = "inflight"
"""The study's folder of snapshots (not results: nothing in it is committed or tabled)."""
SNAPSHOT_EVERY_S = 300.0
"""Seconds between two snapshots of a run: what a stop may cost a run, against a save's cost (under a second)."""
SETTINGS = "settings.json"


class Snapshots:
    """The snapshots of one run, of ``settings`` (its RunSpec as JSON), in ``directory``."""

    def __init__(self, directory: str | os.PathLike, settings: dict[str, Any]):
        self.directory = Path(directory)
        self.settings = json.loads(json.dumps(settings))  # as it reads back: tuples are lists
        self.checkpointer = Checkpointer(self.directory, max_to_keep=1)
        self._last = time.monotonic()

    def restore(self, session) -> dict | None:
        """The saved checks of this run, its ``session`` moved to the snapshot; None (nothing changed) if there
        is no usable snapshot."""
        if not self.checkpointer.steps():
            return None
        if settings_of(self.directory) == self.settings:
            try:
                step, state, meta, _ = self.checkpointer.restore_newest(session.state, session.train_iter)
            except CheckpointError:
                pass
            else:
                session.step, session.state = step, state
                return meta
        discard(self.directory)  # another run's, or damaged: this run starts afresh
        self.checkpointer.close()
        self.checkpointer = Checkpointer(self.directory, max_to_keep=1)
        return None

    def due(self) -> bool:
        """Whether the next check should save."""
        return time.monotonic() - self._last >= SNAPSHOT_EVERY_S

    def save(self, session, meta: dict[str, Any]) -> None:
        """Saves ``session``'s state and ``meta`` (JSON), replacing the previous snapshot."""
        self.directory.mkdir(parents=True, exist_ok=True)
        reporting.write_json(self.directory / SETTINGS, self.settings)
        self.checkpointer.save(session.step, session.state, session.train_iter, meta)
        self._last = time.monotonic()

    def close(self) -> None:
        """Releases the checkpointer."""
        self.checkpointer.close()


def discard(directory: str | os.PathLike) -> None:
    """Removes a run's snapshots (its record is written, or they are of no use)."""
    shutil.rmtree(directory, ignore_errors=True)


def settings_of(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The settings of the run whose snapshots are in ``directory`` (None if unreadable)."""
    try:
        return json.loads((Path(directory) / SETTINGS).read_text())
    except (OSError, ValueError):
        return None


class Tally:
    """The examples an evaluation of ``settings`` has scored and how many were wrong, kept in ``directory``."""

    FILE = "tally.json"

    def __init__(self, directory: str | os.PathLike, settings: dict[str, Any]):
        self.directory = Path(directory)
        self.settings = json.loads(json.dumps(settings))  # as it reads back: tuples are lists

    def restore(self) -> tuple[int, int]:
        """(examples scored, wrong) so far: (0, 0) without a saved tally of these settings."""
        if settings_of(self.directory) == self.settings:
            try:
                saved = json.loads((self.directory / self.FILE).read_text())
                return int(saved["scored"]), int(saved["wrong"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        discard(self.directory)  # another evaluation's, or damaged: start afresh
        return 0, 0

    def save(self, scored: int, wrong: int) -> None:
        """Records that the first ``scored`` examples are done, ``wrong`` of them wrong."""
        if not self.directory.is_dir():  # the first save: restore() removed any folder of other settings
            reporting.write_json(self.directory / SETTINGS, self.settings)
        reporting.write_json(self.directory / self.FILE, {"scored": scored, "wrong": wrong})
