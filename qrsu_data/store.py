"""Where built temporal_order datasets live on disk, and how to build or open one without TensorFlow."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from qrsu_data import splits

DATASET_NAME = "temporal_order"
DATA_DIR_ENV = "QRSU_DATA_DIR"
FILE_FORMATS = ("array_record", "tfrecord")


def default_data_dir() -> Path:
    """The data dir used when none is given: $QRSU_DATA_DIR, else ~/qrsu_data."""
    return Path(os.environ.get(DATA_DIR_ENV) or "~/qrsu_data").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` expanded and absolute, or the default data dir when None."""
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser().absolute()


def check_config(config: str) -> str:
    """Returns ``config`` if it names a dataset config; raises ValueError listing the valid ones."""
    splits.SplitSpec.from_name(config)  # a level, or a level with sizes/seed like "hard-train1000000-seed3"
    return config


def dataset_dir(config: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will hold) the built files of ``config``."""
    from qrsu_data.temporal_order import VERSION

    return resolve_data_dir(data_dir) / DATASET_NAME / check_config(config) / str(VERSION)


def is_built(config: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``config`` is completely built in ``data_dir`` (TFDS writes dataset_info.json last)."""
    return (dataset_dir(config, data_dir) / "dataset_info.json").is_file()


def build_command(config: str, data_dir: str | os.PathLike | None = None) -> str:
    """The shell command that builds ``config`` into ``data_dir``."""
    spec = splits.SplitSpec.from_name(config)
    default = splits.SplitSpec(spec.level)
    if spec.holdout_fraction != default.holdout_fraction:
        return (f"python -c \"from qrsu_data import store; store.build({config!r}, "
                f"{str(resolve_data_dir(data_dir))!r})\"")
    flags = [f"--{flag} {getattr(spec, field)}" for flag, field in
             (("train-size", "train_size"), ("test-size", "test_size"), ("seed", "seed"))
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


def remove_stale_incomplete(config_dir: Path) -> list[Path]:
    """Deletes what killed builds left behind (TFDS's ``incomplete.*`` folders); returns what it removed."""
    stale = [p for p in config_dir.glob("incomplete.*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def build(config: str, data_dir: str | os.PathLike | None = None, file_format: str = "array_record",
          **spec_kwargs) -> Path:
    """Builds a config (a level or a name like ``hard-train1000``) unless already built; returns its folder."""
    from qrsu_data.temporal_order import Builder

    spec = dataclasses.replace(splits.SplitSpec.from_name(config), **spec_kwargs)
    if file_format not in FILE_FORMATS:
        raise ValueError(f"unknown file_format {file_format!r}; choose one of: {', '.join(FILE_FORMATS)}")
    root = resolve_data_dir(data_dir)
    check_writable(root)
    # The builder resolves a config name (a level, or e.g. "hard-train1000") to its config.
    builder = Builder(config=spec.name, data_dir=os.fspath(root), file_format=file_format)
    config_dir = Path(builder.data_dir).parent
    with _build_lock(config_dir):
        # TFDS builds into incomplete.* and renames at the end, so a crash never leaves a readable
        # half dataset; a killed process (no cleanup ran) leaves that folder behind, removed here.
        remove_stale_incomplete(config_dir)
        builder.download_and_prepare(file_format=file_format)
    return Path(builder.data_dir)


def open_builder(config: str, data_dir: str | os.PathLike | None = None):
    """A read-only TFDS builder of a built config; raises FileNotFoundError with the build command."""
    import tensorflow_datasets as tfds

    path = dataset_dir(config, data_dir)
    if not is_built(config, data_dir):
        raise FileNotFoundError(f"dataset {DATASET_NAME}/{config} is not built in {path.parent.parent.parent}. "
                                f"Build it with:\n  {build_command(config, data_dir)}")
    return tfds.builder_from_directory(os.fspath(path))
