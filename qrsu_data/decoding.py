"""A built split, named by config and split, read into padded NumPy arrays: batched ArrayRecord reads and a
vectorised record parser.

Decoding records one at a time through TFDS (a few thousand a second here) is what makes a straightforward
Grain pipeline slower than generating the data on the fly. A split is small (100,000 sequences of at most 500
one-byte tokens: 11-50 MB), so it is read once with batched ArrayRecord reads, its ``tf.train.Example``
records are parsed all at once with NumPy (every record walked in lockstep), and the result is kept per
process; loaders then serve batches by fancy indexing.

The parser reads the fields by key (TFDS's generic writer does not fix the order of a record's features) and
hands any record whose layout it does not expect to TFDS's own decoder, so it never depends on one writer.
Nothing here needs JAX, Grain, PyTorch or TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qrsu_data import splits, store, task

PAD_ID = task.PAD_ID
"""Token id of padding (255): never a valid id, and ``jax.nn.one_hot(tokens, 8)`` maps it to a zero vector."""

PADDINGS: tuple[str, ...] = ("pre", "post")
"""Padding layouts: ``pre`` right-aligns each sequence (the seed's layout: the last step is the last symbol),
``post`` left-aligns it (real symbols first)."""

_KEYS: tuple[bytes, ...] = (b"tokens", b"length", b"label", b"positions")
_TOKENS, _LENGTH, _LABEL, _POSITIONS = range(len(_KEYS))
# Feature kind of each key: bytes_list (Feature field 1) for tokens, int64_list (Feature field 3) otherwise.
_KIND_TAG = np.array([0x0A, 0x1A, 0x1A, 0x1A], np.uint8)
_LEN_DELIMITED_FIELD_1 = 0x0A  # (field 1 << 3) | wire type 2
_LEN_DELIMITED_FIELD_2 = 0x12  # (field 2 << 3) | wire type 2


class CorruptSplitError(RuntimeError):
    """A stored split's files are unreadable, truncated, or hold records that are not valid examples."""


def check_padding(padding: str) -> str:
    """Returns ``padding`` if it names a layout; raises ValueError listing the valid ones."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; choose one of: {', '.join(PADDINGS)}")
    return padding


@dataclasses.dataclass(frozen=True, eq=False)
class SplitArrays:
    """Every example of a split, in record order; arrays are read-only (shared by every loader of a process)."""

    tokens: np.ndarray  # uint8 [N, max_length], post-padded with PAD_ID
    lengths: np.ndarray  # int32 [N]
    labels: np.ndarray  # int32 [N]
    positions: np.ndarray  # int32 [N, num_relevant]

    def __post_init__(self):
        for f in dataclasses.fields(self):
            getattr(self, f.name).setflags(write=False)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_length(self) -> int:
        """The padded length T."""
        return self.tokens.shape[1]

    @functools.cached_property
    def _pre_tokens(self) -> np.ndarray:
        # Row-major boolean selections of the same number of cells per row line up row by row, so one masked
        # copy moves every sequence to the right end without an [N, T] integer index array.
        cols = np.arange(self.max_length)
        pre = np.full_like(self.tokens, PAD_ID)
        pre[cols >= (self.max_length - self.lengths)[:, None]] = self.tokens[cols < self.lengths[:, None]]
        pre.setflags(write=False)
        return pre

    def padded_tokens(self, padding: str) -> np.ndarray:
        """uint8 [N, max_length] tokens in the ``padding`` layout, PAD_ID beyond each sequence."""
        return self._pre_tokens if check_padding(padding) == "pre" else self.tokens


def gather_tokens(arrays: SplitArrays, index: np.ndarray | slice, padding: str, pad_id: int = PAD_ID) -> np.ndarray:
    """int32 [len(index), max_length] tokens of the examples at ``index``, padded with ``pad_id``."""
    raw = arrays.padded_tokens(padding)[index]
    tokens = raw.astype(np.int32)
    if pad_id != PAD_ID:
        tokens[raw == PAD_ID] = pad_id
    return tokens


def pad_sequences(sequences: Sequence[np.ndarray], max_length: int, padding: str = "pre",
                  pad_id: int = PAD_ID) -> np.ndarray:
    """int32 [len(sequences), max_length]: each sequence placed by ``padding``, the rest ``pad_id``."""
    check_padding(padding)
    out = np.full((len(sequences), max_length), pad_id, np.int32)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n > max_length:
            raise ValueError(f"sequence {i} has length {n} > max_length {max_length}")
        if n and padding == "pre":
            out[i, max_length - n:] = seq
        elif n:
            out[i, :n] = seq
    return out


class _Walker:
    """Reads protobuf wire format at one cursor per record, all records in lockstep; flags malformed ones."""

    def __init__(self, buf: np.ndarray, ends: np.ndarray):
        self.buf = buf
        self.ends = ends
        self.ok = np.ones(len(ends), bool)

    def byte(self, pos: np.ndarray) -> np.ndarray:
        self.ok &= pos < self.ends
        return self.buf[np.minimum(pos, len(self.buf) - 1)]

    def tag(self, pos: np.ndarray, expected: int | np.ndarray) -> np.ndarray:
        self.ok &= self.byte(pos) == expected
        return pos + 1

    def varint(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value = np.zeros(len(pos), np.int64)
        more = np.ones(len(pos), bool)
        for shift in range(0, 63, 7):
            b = self.byte(pos).astype(np.int64)
            value |= np.where(more, (b & 0x7F) << shift, 0)
            pos = pos + more
            more &= b >= 0x80
            if not more.any():
                return value, pos
        self.ok &= ~more  # longer than a 63-bit value: not one this schema writes
        return value, pos

    def length_delimited(self, pos: np.ndarray, tag: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(payload start, payload end) of a length-delimited field with ``tag`` at ``pos``."""
        size, start = self.varint(self.tag(pos, tag))
        end = start + size
        self.ok &= end <= self.ends
        return start, end


def _parse(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_length: int, num_relevant: int):
    """Fast path: the fields of every record laid out as TFDS writes them; returns arrays and an ok mask."""
    n = len(starts)
    w = _Walker(buf, ends)
    feats_start, feats_end = w.length_delimited(starts, _LEN_DELIMITED_FIELD_1)  # Example.features
    w.ok &= feats_end == ends
    payload_start = np.zeros((len(_KEYS), n), np.int64)
    payload_end = np.zeros((len(_KEYS), n), np.int64)
    seen = np.zeros(n, np.int64)
    pos = feats_start
    for _ in _KEYS:  # one map entry per feature, in whatever order the writer chose
        entry_start, entry_end = w.length_delimited(pos, _LEN_DELIMITED_FIELD_1)
        key_start, key_end = w.length_delimited(entry_start, _LEN_DELIMITED_FIELD_1)
        key_id = np.full(n, -1)
        for k, key in enumerate(_KEYS):
            cand = (key_end - key_start) == len(key)
            if cand.any():
                got = buf[np.minimum(key_start[cand, None] + np.arange(len(key)), len(buf) - 1)]
                match = np.zeros(n, bool)
                match[cand] = (got == np.frombuffer(key, np.uint8)).all(axis=1)
                key_id[match] = k
        w.ok &= key_id >= 0
        key_id = np.maximum(key_id, 0)
        feat_start, feat_end = w.length_delimited(key_end, _LEN_DELIMITED_FIELD_2)  # Feature
        list_start, list_end = w.length_delimited(feat_start, _KIND_TAG[key_id])  # BytesList / Int64List
        value_start, value_end = w.length_delimited(list_start, _LEN_DELIMITED_FIELD_1)  # value (packed)
        w.ok &= (feat_end == entry_end) & (list_end == feat_end) & (value_end == list_end)
        w.ok &= (seen >> key_id) & 1 == 0
        seen |= 1 << key_id
        rows = np.arange(n)
        payload_start[key_id, rows] = value_start
        payload_end[key_id, rows] = value_end
        pos = entry_end
    w.ok &= (pos == feats_end) & (seen == (1 << len(_KEYS)) - 1)

    def int64s(key: int, count: int) -> np.ndarray:
        values, p = [], payload_start[key]
        for _ in range(count):
            v, p = w.varint(p)
            values.append(v)
        w.ok &= p == payload_end[key]
        return np.stack(values, axis=1)

    length = int64s(_LENGTH, 1)[:, 0]
    label = int64s(_LABEL, 1)[:, 0]
    positions = int64s(_POSITIONS, num_relevant)
    n_tokens = payload_end[_TOKENS] - payload_start[_TOKENS]
    w.ok &= (n_tokens == length) & (n_tokens <= max_length)
    # Each record's tokens are contiguous bytes: copy a window of max_length bytes from each start (a strided
    # view of the buffer, so no [N, T] index array), then blank what lies beyond the sequence.
    windows = np.lib.stride_tricks.sliding_window_view(buf, max_length)
    tokens = windows[np.minimum(payload_start[_TOKENS], len(windows) - 1)]
    tokens[np.arange(max_length) >= n_tokens[:, None]] = PAD_ID
    return tokens, length, label, positions, w.ok


def decode_records(records: Sequence[bytes], level: task.Level | str,
                   fallback: Callable[[bytes], dict] | None = None, source: str = "records") -> SplitArrays:
    """Every record decoded and checked against ``level``; raises CorruptSplitError naming ``source``."""
    level = task.get_level(level) if isinstance(level, str) else level
    t, k = level.max_length, level.num_relevant
    sizes = np.fromiter((len(r) for r in records), np.int64, len(records))
    ends = np.cumsum(sizes)
    # Trailing zeros let the parser copy a full max_length window from any record's tokens.
    buf = np.frombuffer(b"".join([*records, bytes(t)]), np.uint8)
    tokens, length, label, positions, ok = _parse(buf, ends - sizes, ends, t, k)
    for i in np.flatnonzero(~ok):
        # A layout the fast path does not know (another writer, unknown fields): TFDS decodes it.
        problem = "its fields are not a temporal_order example"
        if fallback is not None:
            try:
                ex = fallback(records[i])
                seq = np.asarray(ex["tokens"], np.uint8)
                if len(seq) > t:
                    raise ValueError(f"it holds {len(seq)} tokens, more than the level's maximum {t}")
                tokens[i] = PAD_ID
                tokens[i, :len(seq)] = seq
                length[i], label[i] = int(ex["length"]), int(ex["label"])
                positions[i] = np.asarray(ex["positions"]).reshape(k)
                continue
            except Exception as e:  # noqa: BLE001 - any decoding failure means a corrupt record
                problem = f"{type(e).__name__}: {e}"
        raise CorruptSplitError(f"record {i} of {source} cannot be decoded ({problem}); the file is corrupt. "
                                f"Delete the config's folder and build it again.")
    _check_examples(tokens, length, label, positions, level, source)
    return SplitArrays(tokens, length.astype(np.int32), label.astype(np.int32), positions.astype(np.int32))


def _check_examples(tokens: np.ndarray, length: np.ndarray, label: np.ndarray, positions: np.ndarray,
                    level: task.Level, source: str) -> None:
    """Raises CorruptSplitError naming the first record that breaks the level's rules."""
    lo, hi = level.length
    bad = (length < lo) | (length > hi) | (label < 0) | (label >= level.num_classes)
    # Cells beyond a length are PAD_ID by construction, so a row is valid iff exactly `length` cells are ids.
    bad |= np.count_nonzero(tokens < task.VOCAB_SIZE, axis=1) != length
    bad |= (positions < 0).any(axis=1) | (positions >= length[:, None]).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CorruptSplitError(
            f"record {i} of {source} is not a valid {level.name!r} example (length {int(length[i])}, "
            f"label {int(label[i])}, positions {positions[i].tolist()}); the file is corrupt or belongs to "
            f"another level. Delete the config's folder and build it again.")


def level_of(config: str) -> task.Level:
    """The task level of a config name such as ``hard`` or ``hard-train1000``; ValueError if unknown."""
    return task.get_level(splits.SplitSpec.from_name(config).level)


def max_length(config: str) -> int:
    """T, the padded length of every batch of ``config``: its level's longest sequence."""
    return level_of(config).max_length


def num_classes(config: str) -> int:
    """The number of classes of ``config``'s level (4, or 8 for exp6b)."""
    return level_of(config).num_classes


def ensure_built(config: str, data_dir: str | os.PathLike | None = None, build_if_missing: bool = False) -> None:
    """Returns if ``config`` is built; else builds it if asked, or raises FileNotFoundError with the command."""
    if store.is_built(config, data_dir):
        return
    if build_if_missing:
        store.build(config, data_dir)
        return
    raise FileNotFoundError(
        f"dataset {store.DATASET_NAME}/{config} is not built in {store.resolve_data_dir(data_dir)}. Build it "
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
    splits = builder.info.splits
    if split not in splits:
        raise ValueError(f"unknown split {split!r} of config {config!r}; choose one of: {', '.join(splits)}")
    fmt = builder.info.file_format
    if fmt is None or fmt.value != "array_record":
        raise ValueError(
            f"config {config!r} in {store.dataset_dir(config, data_dir)} is stored as "
            f"{getattr(fmt, 'value', fmt)}; these loaders read array_record files (random access). Build it "
            f"into another data dir with --file-format array_record.")
    info = splits[split]
    return [(Path(os.fspath(p)), int(n)) for p, n in zip(info.filepaths, info.shard_lengths, strict=True)]


def read_records(path: Path, expected: int) -> list[bytes]:
    """All records of one ArrayRecord file; CorruptSplitError if it is unreadable or not ``expected`` long."""
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
        records = reader.read(0, n) if n == expected and n else []
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


def load_split(config: str, split: str, data_dir: str | os.PathLike | None = None) -> SplitArrays:
    """The decoded arrays of a built split, read once per process and reused while its files are unchanged."""
    files = split_files(config, split, data_dir)
    # Files' sizes and modification times are part of the key, so a rebuilt dataset is read again.
    key = tuple((os.fspath(p), n, *_stamp(p)) for p, n in files)
    return _load_cached(config.split("-", 1)[0], store.dataset_dir(config, data_dir), key)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_cached(level: str, folder: Path, files: tuple[tuple[str, int, int, int], ...]) -> SplitArrays:
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

        parts.append(decode_records(records, level, fallback=fallback, source=path))
    if not parts:
        raise CorruptSplitError(f"the split in {folder} lists no files; delete the folder and build it again")
    return SplitArrays(*(np.concatenate([getattr(p, f.name) for p in parts])
                         for f in dataclasses.fields(SplitArrays)))
