"""Where built temporal_order datasets live on disk, and how to build or open one without TensorFlow."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from qrsu_data import splits
from qrsu_data.incomplete import remove_stale_incomplete

DATASET_NAME = "temporal_order"
DATA_DIR_ENV = "QRSU_DATA_DIR"
FILE_FORMATS = ("array_record", "tfrecord")


def default_data_dir() -> Path:
    """The data dir used when none is given: $QRSU_DATA_DIR, else ~/qrsu_data."""
    return Path(os.environ.get(DATA_DIR_ENV) or "~/qrsu_data").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` expanded and absolute, or the default data dir when None; ValueError if empty or a file."""
    if data_dir is None:
        return default_data_dir()
    if not os.fspath(data_dir).strip():
        # Path("") is the current folder: a dataset silently built wherever the command happened to run.
        raise ValueError(f"the data dir is empty ({os.fspath(data_dir)!r}); give a folder, or leave it out to "
                         f"use ${DATA_DIR_ENV} or ~/qrsu_data")
    path = Path(data_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"the data dir {str(path)!r} is a file, not a folder; give a folder")
    return path


def check_config(config: str) -> str:
    """The name of the config given by name or JSON (e.g. ``hard-train1000``); ValueError listing the valid forms."""
    return splits.SplitSpec.parse(config).name


def dataset_dir(config: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will hold) the built files of ``config``."""
    from qrsu_data.temporal_order import VERSION

    return resolve_data_dir(data_dir) / DATASET_NAME / check_config(config) / str(VERSION)


def is_built(config: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``config`` is completely built in ``data_dir`` (TFDS writes dataset_info.json last)."""
    return (dataset_dir(config, data_dir) / "dataset_info.json").is_file()


def build_command(config: str, data_dir: str | os.PathLike | None = None) -> str:
    """The shell command that builds ``config`` into ``data_dir``."""
    spec = splits.SplitSpec.parse(config)
    default = splits.SplitSpec(spec.level)
    if spec.holdout_fraction != default.holdout_fraction:
        # No flag for it: the build command takes the whole name.
        return f"python -m pipelines.build_dataset --config {spec.name} --data-dir {resolve_data_dir(data_dir)}"
    flags = [f"--{flag} {getattr(spec, field)}" for flag, field in
             (("train-size", "train_size"), ("validation-size", "validation_size"), ("test-size", "test_size"),
              ("seed", "seed"))
             if getattr(spec, field) != getattr(default, field)]
    return " ".join([f"python -m pipelines.build_dataset --config {spec.level} "
                     f"--data-dir {resolve_data_dir(data_dir)}", *flags])


def check_writable(data_dir: Path) -> None:
    """Raises PermissionError naming ``data_dir`` if files cannot be created in it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".qrsu-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write the dataset into data dir {str(data_dir)!r}: {e.strerror or e}. "
                              f"Pass a writable --data-dir or set ${DATA_DIR_ENV}.") from e


@contextlib.contextmanager
def _build_lock(config_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on a config's folder, so that concurrent builds take turns."""
    config_dir.mkdir(parents=True, exist_ok=True)
    with open(config_dir / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


RECORD_OVERHEAD_BYTES = 48
"""Bytes a stored record takes beyond its tokens (protobuf framing, the other features, ArrayRecord's index)."""
GENERATION_RATE = 30_000
"""Sequences per second a build writes on one core here at short lengths (benchmarks/build_dataset.py: hard)."""
SYMBOL_RATE = 20_000_000
"""Symbols per second a build writes on one core here at long lengths (measured: 20,000-symbol sequences at
~940/s); a build's time is about sequences / GENERATION_RATE + symbols / SYMBOL_RATE."""


def estimated_seconds(spec: splits.SplitSpec) -> float:
    """About how long building ``spec`` takes on one core here."""
    sequences = sum(spec.size(s) for s in spec.splits)
    return sequences / GENERATION_RATE + sequences * sum(spec.level_def.length) / 2 / SYMBOL_RATE


def estimated_bytes(spec: splits.SplitSpec) -> int:
    """About how many bytes the built files of ``spec`` take on disk."""
    mean_length = sum(spec.level_def.length) / 2
    return int(sum(spec.size(s) for s in spec.splits) * (mean_length + RECORD_OVERHEAD_BYTES))


def check_fits(spec: splits.SplitSpec, root: Path) -> None:
    """Raises ValueError if the files of ``spec`` cannot fit in the free space under ``root``."""
    need = estimated_bytes(spec)
    existing = root
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if need > 0.9 * free:
        sequences = sum(spec.size(s) for s in spec.splits)
        hours = estimated_seconds(spec) / 3600
        raise ValueError(f"config {spec.name!r} holds {sequences:,} sequences, about {need / 1e9:,.1f} GB on disk "
                         f"(and about {hours:,.1f} h to generate), but {existing} has {free / 1e9:,.1f} GB free; "
                         f"choose smaller --train-size / --validation-size / --test-size or another --data-dir")


def spec_of(config: str, **spec_kwargs) -> splits.SplitSpec:
    """The spec of ``config`` (a name or JSON) with the fields in ``spec_kwargs`` replaced; ValueError if invalid."""
    spec = splits.SplitSpec.parse(config)
    unknown = sorted(set(spec_kwargs) - ({f.name for f in dataclasses.fields(splits.SplitSpec)} - {"level"}))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid: train_size, validation_size, test_size, seed, "
                         f"holdout_fraction")
    return dataclasses.replace(spec, **spec_kwargs)


def build(config: str, data_dir: str | os.PathLike | None = None, file_format: str = "array_record",
          **spec_kwargs) -> Path:
    """Builds a config (a name like ``hard-train1000``, or JSON) unless already built; returns its folder.

    ``spec_kwargs`` (train_size, validation_size, test_size, seed, holdout_fraction) replace the config's own.
    """
    from qrsu_data.temporal_order import Builder

    spec = spec_of(config, **spec_kwargs)
    if file_format not in FILE_FORMATS:
        raise ValueError(f"unknown file_format {file_format!r}; choose one of: {', '.join(FILE_FORMATS)}")
    root = resolve_data_dir(data_dir)
    if is_built(spec.name, root):
        return dataset_dir(spec.name, root)
    check_fits(spec, root)
    check_writable(root)
    # The builder resolves a config name (e.g. "hard-train1000") to its config.
    builder = Builder(config=spec.name, data_dir=os.fspath(root), file_format=file_format)
    version_dir = Path(builder.data_dir)
    with _build_lock(version_dir.parent):
        # TFDS builds into incomplete.* and renames at the end, so a crash never leaves a readable
        # half dataset; a killed process (no cleanup ran) leaves that folder behind, removed here.
        _, busy = remove_stale_incomplete(version_dir.parent)
        for p in busy:
            print(f"note: {p} is being written by another build; left alone", file=sys.stderr)
        if version_dir.exists() and not is_built(spec.name, root):
            # TFDS writes dataset_info.json last, so a version folder without it is damaged (e.g. the file was
            # deleted). TFDS would "reuse" it and build nothing; the records are regenerated exactly instead.
            print(f"note: {version_dir} lacks dataset_info.json, so it is incomplete; rebuilding it",
                  file=sys.stderr)
            shutil.rmtree(version_dir)
        # TFDS prints "Downloading and preparing ..." to stdout (nothing is downloaded): stdout is the caller's,
        # so its chatter goes where progress bars go.
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(file_format=file_format)
    return version_dir


def open_builder(config: str, data_dir: str | os.PathLike | None = None):
    """A read-only TFDS builder of a built config; raises FileNotFoundError with the build command."""
    import tensorflow_datasets as tfds

    path = dataset_dir(config, data_dir)
    if not is_built(config, data_dir):
        raise FileNotFoundError(f"dataset {DATASET_NAME}/{check_config(config)} is not built in "
                                f"{path.parent.parent.parent}. "
                                f"Build it with:\n  {build_command(config, data_dir)}")
    return tfds.builder_from_directory(os.fspath(path))
