"""One writer per folder: an exclusive lock held while a command writes a workdir or a study's folder."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import sys
from pathlib import Path

LOCK_FILE = ".lock"


class FolderLock:
    """An exclusive ``flock`` on ``folder``/.lock that names its holder (pid, host, start, command) to anyone else.

    The kernel releases it when the holder dies, so a killed command never leaves a folder locked. ``error``
    is raised for a folder in use (naming ``user``, the holder and ``hint``) or one that cannot be written
    (naming it as ``what``)."""

    def __init__(self, folder: Path, *, error: type[Exception], what: str, user: str, hint: str):
        self.folder, self._error, self._what, self._user, self._hint = folder, error, what, user, hint
        self._file = None
        self._made: list[Path] = []  # folders this lock created, removed again if they stay empty

    def __enter__(self) -> FolderLock:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._made = missing
            f = open(self.folder / LOCK_FILE, "a+")
        except OSError as e:
            raise self._error(f"cannot use {self._what} {self.folder}: {e.strerror or e}; "
                              "give a writable folder") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise self._error(f"{self.folder} is in use by {self._user} ({holder}); wait for it to end, or "
                              f"{self._hint}") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(sys.argv)}")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is None:
            return
        self._file.truncate(0)
        if self._made and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            # A command that stopped before writing anything leaves no trace (nobody else can hold this new lock).
            (self.folder / LOCK_FILE).unlink()
            for p in self._made:
                with contextlib.suppress(OSError):
                    p.rmdir()  # only if empty
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None
