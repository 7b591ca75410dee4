"""A study's output folder: the settings it was made with, one record per finished run, one writer at a time.

``pipelines.experiment``, ``pipelines.replicate`` and ``pipelines.factors`` each write a study: a folder with
``study.json`` (what kind of study, and the settings every run of it shares) and ``runs/KEY.json`` (each
finished run's own settings and result, written atomically by the one process that holds the folder's lock,
as the run ends). Reopening a folder continues the study: runs done with the same settings are kept, a run of
the same key with other settings or a study of other shared settings is refused before anything trains, and
a second command writing the same folder is refused with the name of the one that holds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.engine import reporting
from pipelines.engine.errors import CommandError
from pipelines.engine.locks import FolderLock

STUDY_FILE = "study.json"
RUNS = "runs"


def has_runs(out: str | os.PathLike) -> bool:
    """Whether the folder ``out`` holds a study's saved runs (its ``runs/`` folder)."""
    return (Path(out) / RUNS).is_dir()


class StudyError(CommandError):
    """An output folder that cannot take this study's results; the message says why and what to do."""


def _differences(saved: dict, asked: dict) -> list[str]:
    keys = list(dict.fromkeys([*asked, *saved]))
    return [f"{k}: saved {saved.get(k)!r}, asked {asked.get(k)!r}" for k in keys if saved.get(k) != asked.get(k)]


class Study:
    """The output folder ``out`` of a study of ``kind`` whose runs share ``settings``; a context that holds it."""

    def __init__(self, out: str | os.PathLike, kind: str, settings: dict[str, Any] | None = None):
        self.out = Path(out).expanduser().absolute()
        self.kind, self.settings = kind, dict(settings or {})
        self._lock: FolderLock | None = None

    # ------------------------------------------------------------------------------------------ opening

    def check(self) -> Study:
        """Self, if ``out`` can hold this study (nothing is written); StudyError naming the problem otherwise."""
        if self.out.exists() and not self.out.is_dir():
            raise StudyError(f"--out {self.out} is a file, not a folder; give a folder for the results")
        path = self.out / STUDY_FILE
        if path.is_file():
            try:
                held = json.loads(path.read_text())
                kind, settings = held["kind"], held["settings"]
            except (ValueError, KeyError, TypeError) as e:
                raise StudyError(f"{path} is damaged ({type(e).__name__}: {e}); restore it or choose another "
                                 f"--out") from None
            if kind != self.kind:
                raise StudyError(f"--out {self.out} holds a {kind} study, not a {self.kind} one; choose another --out")
            diffs = _differences(settings, self.settings)
            if diffs:
                raise StudyError(f"--out {self.out} already holds results of other settings: {'; '.join(diffs)}. "
                                 f"Rerun with the saved settings to extend it, or choose another --out")
        elif self.out.is_dir() and any(self.out.iterdir()) and self.kind != "experiment":
            # Experiments of earlier versions wrote runs/ the same way; other studies wrote one results.json.
            if (self.out / "results.json").exists():
                raise StudyError(f"--out {self.out} holds results of an earlier version of this command (no "
                                 f"{STUDY_FILE}); choose another --out")
        return self

    def __enter__(self) -> Study:
        self.check()
        self._lock = FolderLock(self.out, error=StudyError, what="--out", user=f"another {self.kind}",
                                hint="choose another --out")
        self._lock.__enter__()
        try:
            self.check()  # again, now that no other writer can change it
            (self.out / RUNS).mkdir(exist_ok=True)
            probe = self.out / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            reporting.write_json(self.out / STUDY_FILE, {"kind": self.kind, "settings": self.settings})
        except OSError as e:
            self.__exit__(None, None, None)
            raise StudyError(f"cannot write the results into --out {self.out}: {e.strerror or e}") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.__exit__(*exc)
            self._lock = None

    # ------------------------------------------------------------------------------------------ runs

    def records(self) -> dict[str, dict]:
        """Every finished run's record, by key (``{"settings": ..., ...}``); StudyError for a damaged one."""
        found = {}
        for path in sorted((self.out / RUNS).glob("*.json")):
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
                    raise ValueError("no settings")
            except ValueError as e:
                raise StudyError(f"{path} is not a finished run of this study ({type(e).__name__}: {e}); move it "
                                 f"away and run again (the run is then redone)") from None
            found[path.stem] = record
        return found

    def check_runs(self, asked: dict[str, dict], defaults: dict | None = None) -> None:
        """StudyError if a run of one of ``asked``'s keys (key -> settings) was saved with other settings.

        A setting that a saved record lacks (it was added since) counts as its value in ``defaults``."""
        asked = json.loads(json.dumps(asked))  # as a record holds them (tuples become lists)
        defaults = json.loads(json.dumps(defaults or {}))
        saved = {key: {**defaults, **record["settings"]} for key, record in self.records().items()}
        conflicts = [f"{key} ({'; '.join(_differences(saved[key], settings))})"
                     for key, settings in asked.items() if key in saved and saved[key] != settings]
        if conflicts:
            raise StudyError(f"{self.out} holds runs of other settings: {'; '.join(conflicts[:5])}"
                             f"{' ...' if len(conflicts) > 5 else ''}. Rerun with the saved settings to extend the "
                             f"study, or choose another --out")

    def save(self, key: str, record: dict) -> None:
        """Writes one finished run's record (it must hold its ``settings``), atomically."""
        if self._lock is None:
            raise RuntimeError("a study saves runs only while it is open (with Study(...) as study)")
        reporting.write_json(self.out / RUNS / f"{key}.json", record)

    def set_aside(self, entries: list[tuple[str, str]], label: str) -> bool:
        """Moves each (folder, name) of the study that exists into superseded/``label``/folder/name; whether any
        did. A run's record moves last, so that an interrupted move leaves it where a rerun finds it again."""
        if self._lock is None:
            raise RuntimeError("a study sets runs aside only while it is open (with Study(...) as study)")
        moved = False
        for folder, name in sorted(entries, key=lambda e: e[0] == RUNS):
            source = self.out / folder / name
            if not source.exists():
                continue
            target = self.out / "superseded" / label / folder / name
            if target.exists():
                raise StudyError(f"cannot set {source} aside: {target} exists already; move one of them away")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            moved = True
        return moved

    def path(self, *parts: str) -> Path:
        """A path inside the study's folder."""
        return self.out.joinpath(*parts)
