"""A build's temporary folder: marked as in use while a build writes it, removed when a killed build left it.

TFDS builds into an ``incomplete.*`` folder and renames it into place at the end, so a crash never leaves a
readable half dataset; a killed process leaves that folder behind. The builder marks its folder while it
writes (:func:`building_in`) and ``store.build`` removes the unmarked and stale ones
(:func:`remove_stale_incomplete`). Apart from both, so that the builder and the store need not import each
other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

BUILD_MARKER = ".qrsu-build-in-progress"
"""A file the builder holds a shared lock on inside TFDS's ``incomplete.*`` folder while it writes there."""
UNMARKED_STALE_S = 600
"""An ``incomplete.*`` folder without a marker is left alone until it has been unmodified this long."""


@contextlib.contextmanager
def building_in(folder: str | os.PathLike) -> Iterator[None]:
    """Marks ``folder`` (a build's temporary folder) as being written by this process until the block ends."""
    marker = Path(folder) / BUILD_MARKER
    with open(marker, "w") as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # released by the kernel if this process dies: a killed build is stale
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)  # not part of the dataset that TFDS renames into place


def _in_use(folder: Path) -> bool:
    """Whether a live build writes into ``folder``: its marker is locked, or it is unmarked and recent."""
    marker = folder / BUILD_MARKER
    try:
        with open(marker, "r+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        # No marker: a build just starting, or one not made by this builder's code; judge by its age.
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
        return time.time() - max(newest, folder.stat().st_mtime) < UNMARKED_STALE_S


def remove_stale_incomplete(config_dir: Path) -> tuple[list[Path], list[Path]]:
    """Deletes what killed builds left behind (TFDS's ``incomplete.*`` folders); returns (removed, in use)."""
    removed, busy = [], []
    for p in sorted(config_dir.glob("incomplete.*")):
        if not p.is_dir():
            continue
        if _in_use(p):
            busy.append(p)  # another process (our build command or `tfds build`) is writing it
        else:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed, busy
