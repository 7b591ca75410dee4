"""The catalogue of built splits: which files hold a config's split, how many examples, and its decoded arrays.

A split is read once per process (batched ArrayRecord reads, then ``codec.decode_records``) and kept while
its files are unchanged; loaders then serve batches from those arrays by fancy indexing.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from qrsu_data import codec, splits, store, task
from qrsu_data.codec import CorruptSplitError, SplitArrays


def level_of(config: str) -> task.Level:
    """The task level of a config (a name such as ``hard`` or ``hard-train1000``, or JSON); ValueError if unknown."""
    return splits.SplitSpec.parse(config).level_def


def max_length(config: str) -> int:
    """T, the padded length of every batch of ``config``: its level's longest sequence."""
    return level_of(config).max_length


def num_classes(config: str) -> int:
    """The number of classes of ``config``'s level (2 ** its number of relevant symbols: 4, 8, ... 256)."""
    return level_of(config).num_classes


def split_names(config: str) -> tuple[str, ...]:
    """The splits ``config`` has, in the order train / validation / test (a test-only config: just test)."""
    return splits.SplitSpec.parse(config).splits


def is_test_only(config: str) -> bool:
    """Whether ``config`` has only a test split (a lengthened level of the length-generalisation suite)."""
    return splits.SplitSpec.parse(config).test_only


def suite(config: str, lengths: tuple[int, ...] = splits.DEFAULT_SUITE_LENGTHS) -> list[str]:
    """The test-only configs of the length-generalisation suite of ``config``'s level (see splits.suite)."""
    return splits.suite(splits.SplitSpec.parse(config).level, lengths)


def check_compatible(trained_on: str, evaluated_on: str) -> None:
    """Raises ValueError unless a model trained on one config can be evaluated on the other.

    Every config shares the vocabulary (``task.SYMBOLS``), and a recurrent model reads any length; what must
    match is the number of classes (the number of relevant symbols), so that label ids mean the same classes.
    """
    a, b = level_of(trained_on), level_of(evaluated_on)
    if a.classes != b.classes:
        raise ValueError(f"config {evaluated_on!r} has {b.num_classes} classes ({b.num_relevant} relevant symbols) "
                         f"but the model was trained on {trained_on!r}, with {a.num_classes} ({a.num_relevant}); "
                         f"evaluate it on a config whose level has {a.num_relevant} relevant symbols")


def ensure_built(config: str, data_dir: str | os.PathLike | None = None, build_if_missing: bool = False) -> None:
    """Returns if ``config`` is built; else builds it if asked, or raises FileNotFoundError with the command."""
    if store.is_built(config, data_dir):
        return
    if build_if_missing:
        store.build(config, data_dir)
        return
    raise FileNotFoundError(
        f"dataset {store.DATASET_NAME}/{store.check_config(config)} is not built in "
        f"{store.resolve_data_dir(data_dir)}. Build it "
        f"with:\n  {store.build_command(config, data_dir)}\nor pass build_if_missing=True.")


def split_size(config: str, split: str = "train", data_dir: str | os.PathLike | None = None) -> int:
    """Number of examples of a built split (from its metadata; nothing is decoded)."""
    return sum(n for _, n in split_files(config, split, data_dir))


def open_split(config: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
               build_if_missing: bool = False) -> SplitArrays:
    """The decoded arrays of a split (cached per process); clear errors if missing, unknown or corrupt."""
    ensure_built(config, data_dir, build_if_missing)
    return load_split(config, split, data_dir)


def split_files(config: str, split: str, data_dir: str | os.PathLike | None = None) -> list[tuple[Path, int]]:
    """(file, number of records) of every shard of a built split, in order; clear errors otherwise."""
    ensure_built(config, data_dir)
    builder = store.open_builder(config, data_dir)
    built = builder.info.splits
    if split not in built:
        raise ValueError(f"unknown split {split!r} of config {store.check_config(config)!r}; choose one of: "
                         f"{', '.join(built)}")
    fmt = builder.info.file_format
    if fmt is None or fmt.value != "array_record":
        raise ValueError(
            f"config {config!r} in {store.dataset_dir(config, data_dir)} is stored as "
            f"{getattr(fmt, 'value', fmt)}; these loaders read array_record files (random access). Build it "
            f"into another data dir with --file-format array_record.")
    info = built[split]
    return [(Path(os.fspath(p)), int(n)) for p, n in zip(info.filepaths, info.shard_lengths, strict=True)]


def read_records(path: Path, expected: int, count_only: bool = False) -> list[bytes]:
    """All records of one ArrayRecord file (none if ``count_only``); CorruptSplitError if it is unreadable or
    not ``expected`` long."""
    from array_record.python import array_record_module

    if not path.is_file():
        raise CorruptSplitError(f"{path} is missing: the dataset folder is incomplete. Delete the config's "
                                f"folder and build it again.")
    try:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
    except RuntimeError as e:
        raise CorruptSplitError(f"cannot open {path}: it is truncated or corrupt ({e}). "
                                f"Delete the config's folder and build it again.") from e
    try:
        n = reader.num_records()
        records = reader.read(0, n) if n == expected and n and not count_only else []
    except RuntimeError as e:
        raise CorruptSplitError(f"cannot read {path}: it is corrupt ({e}). "
                                f"Delete the config's folder and build it again.") from e
    finally:
        # Closing a damaged file can raise too; the error that matters was raised (or is checked) here.
        with contextlib.suppress(RuntimeError):
            reader.close()
    if n != expected:
        # A truncated file can open cleanly with fewer (even zero) records: never a silent short epoch.
        raise CorruptSplitError(f"{path} holds {n} records but dataset_info.json says {expected}: the file "
                                f"is truncated or corrupt. Delete the config's folder and build it again.")
    return records


def check_files(config: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files of a built split after checking that each opens and holds its records; CorruptSplitError."""
    files = split_files(config, split, data_dir)
    for path, n in files:
        read_records(path, n, count_only=True)
    return [path for path, _ in files]


def check_sizes(config: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files of a built split after checking that each exists and has the size its croissant.json lists;
    CorruptSplitError otherwise. Pure Python: unlike ``check_files`` it never opens an ArrayRecord reader,
    which in a parent process leaves forked children (DataLoader workers) deadlocking or crashing when they
    open one."""
    from qrsu_data import croissant

    files = split_files(config, split, data_dir)
    folder = store.dataset_dir(config, data_dir)
    try:
        sizes = croissant.file_sizes(folder)
    except (FileNotFoundError, ValueError):
        sizes = {}  # a dataset built without its metadata: only existence is checked here
    for path, _ in files:
        if not path.is_file():
            raise CorruptSplitError(f"{path} is missing: the dataset folder is incomplete. Delete the config's "
                                    f"folder and build it again.")
        want, got = sizes.get(path.name), path.stat().st_size
        if want is not None and want != got:
            raise CorruptSplitError(f"{path} holds {got:,} bytes but {croissant.FILENAME} says {want:,}: the file "
                                    f"is truncated or corrupt. Delete the config's folder and build it again.")
    return [path for path, _ in files]


def load_split(config: str, split: str, data_dir: str | os.PathLike | None = None) -> SplitArrays:
    """The decoded arrays of a built split, read once per process and reused while its files are unchanged."""
    files = split_files(config, split, data_dir)
    # Files' sizes and modification times are part of the key, so a rebuilt dataset is read again.
    key = tuple((os.fspath(p), n, *_stamp(p)) for p, n in files)
    return _load_cached(level_of(config), store.dataset_dir(config, data_dir), key)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_cached(level: task.Level, folder: Path, files: tuple[tuple[str, int, int, int], ...]) -> SplitArrays:
    import tensorflow_datasets as tfds

    features = None
    parts = []
    for path, expected, _, _ in files:
        records = read_records(Path(path), expected)

        def fallback(record: bytes) -> dict:
            nonlocal features
            if features is None:
                features = tfds.builder_from_directory(os.fspath(folder)).info.features
            return features.deserialize_example_np(record)

        parts.append(codec.decode_records(records, level, fallback=fallback, source=path))
    if not parts:
        raise CorruptSplitError(f"the split in {folder} lists no files; delete the folder and build it again")
    return SplitArrays.concatenate(parts)
