"""The stored record of a temporal_order example, in one place: its writer and its vectorised parser.

A record is a ``tf.train.Example`` as TFDS stores the builder's features:
``tokens`` bytes (uint8 ids, no padding), ``length`` int64, ``label`` int64, ``positions`` int64 list.

Writing: TFDS encodes each example feature by feature through Python protobuf objects (~100 us an example
here); writing the few bytes of this fixed, tiny schema directly is ~30x faster and yields records that every
TFDS reader decodes to the same example (``tests/test_builder.py`` checks it against TFDS's own serializer).

Reading: decoding records one at a time through TFDS (a few thousand a second here) is what makes a
straightforward Grain pipeline slower than generating the data on the fly. A split is small (100,000
sequences of at most 500 one-byte tokens: 11-50 MB), so its records are parsed all at once with NumPy, every
record walked in lockstep. The parser reads the fields by key (TFDS's generic writer does not fix the order of
a record's features) and hands any record whose layout it does not expect to TFDS's own decoder, so it never
depends on one writer. Every decoded example is then checked against the task's rules (:func:`check_examples`).
Nothing here needs JAX, Grain, PyTorch or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from qrsu_data import padding as padding_lib
from qrsu_data import task

PAD_ID = padding_lib.PAD_ID

_KEYS: tuple[bytes, ...] = (b"tokens", b"length", b"label", b"positions")
_TOKENS, _LENGTH, _LABEL, _POSITIONS = range(len(_KEYS))
# Feature kind of each key: bytes_list (Feature field 1) for tokens, int64_list (Feature field 3) otherwise.
_KIND_TAG = np.array([0x0A, 0x1A, 0x1A, 0x1A], np.uint8)
_LEN_DELIMITED_FIELD_1 = 0x0A  # (field 1 << 3) | wire type 2
_LEN_DELIMITED_FIELD_2 = 0x12  # (field 2 << 3) | wire type 2


class CorruptSplitError(RuntimeError):
    """A stored split's files are unreadable, truncated, or hold records that are not valid examples."""


# ------------------------------------------------------------------------------------------------- writing

_VARINT_CACHE = [bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(1 << 14)]


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if n < (1 << 14):
        return _VARINT_CACHE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with ``tag`` as its field number."""
    return bytes([(tag << 3) | 2]) + _varint(len(payload)) + payload


def _map_entry(key: bytes, feature: bytes) -> bytes:
    # Features.feature is map<string, Feature>: each entry is {1: key, 2: Feature} in field 1.
    return _field(1, _field(1, key) + _field(2, feature))


def _int64_feature(values: list[int]) -> bytes:
    # Feature.int64_list (field 3) -> Int64List.value (field 1, packed varints).
    return _field(3, _field(1, b"".join(_varint(v) for v in values)))


def _bytes_feature(value: bytes) -> bytes:
    # Feature.bytes_list (field 1) -> BytesList.value (field 1).
    return _field(1, _field(1, value))


def serialize(tokens: np.ndarray, length: int, label: int, positions: np.ndarray) -> bytes:
    """One example as a serialized ``tf.train.Example``, as TFDS stores it."""
    features = (
        _map_entry(b"tokens", _bytes_feature(tokens.tobytes()))
        + _map_entry(b"length", _int64_feature([length]))
        + _map_entry(b"label", _int64_feature([label]))
        + _map_entry(b"positions", _int64_feature([int(p) for p in positions]))
    )
    return _field(1, features)


def serialize_batch(batch: task.Batch) -> list[bytes]:
    """Every example of ``batch`` serialized, in order."""
    return [
        serialize(batch.tokens[i, :n], int(n), int(label), pos)
        for i, (n, label, pos) in enumerate(zip(batch.lengths.tolist(), batch.labels.tolist(), batch.positions))
    ]


# ------------------------------------------------------------------------------------------------- reading


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
        pre = padding_lib.right_align(self.tokens, self.lengths)
        pre.setflags(write=False)
        return pre

    def padded_tokens(self, padding: str) -> np.ndarray:
        """uint8 [N, max_length] tokens in the ``padding`` layout, PAD_ID beyond each sequence."""
        return self._pre_tokens if padding_lib.check_padding(padding) == "pre" else self.tokens

    def gather_tokens(self, index: np.ndarray | slice, padding: str, pad_id: int = PAD_ID) -> np.ndarray:
        """int32 [len(index), max_length] tokens of the examples at ``index``, padded with ``pad_id``."""
        raw = self.padded_tokens(padding)[index]
        tokens = raw.astype(np.int32)
        if pad_id != PAD_ID:
            tokens[raw == PAD_ID] = pad_id
        return tokens

    @classmethod
    def concatenate(cls, parts: Sequence[SplitArrays]) -> SplitArrays:
        """The examples of ``parts``, one after the other."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


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
    check_examples(tokens, length, label, positions, level, source)
    return SplitArrays(tokens, length.astype(np.int32), label.astype(np.int32), positions.astype(np.int32))


def example_problems(tokens: np.ndarray, length: np.ndarray, label: np.ndarray, positions: np.ndarray,
                     level: task.Level) -> dict[str, np.ndarray]:
    """Per rule of the task, a bool [N] of the examples that break it (tokens post-padded with PAD_ID)."""
    n, width = tokens.shape
    k = level.num_relevant
    rows = np.arange(n)
    lo, hi = level.length
    in_range = (length >= lo) & (length <= hi)
    last = tokens[rows, np.clip(length - 1, 0, width - 1)]
    # Ids are ordered X Y | a b c d | B E (task.SYMBOLS), so three threshold counts per row classify every cell.
    ids = np.count_nonzero(tokens < task.VOCAB_SIZE, axis=1)
    relevant = np.count_nonzero(tokens < 2, axis=1)
    start_end = ids - np.count_nonzero(tokens < task.START, axis=1)
    at = tokens[rows[:, None], np.clip(positions, 0, width - 1)]
    bits = (at.astype(np.int64) - task.X) << np.arange(k - 1, -1, -1)
    lo_pos, hi_pos = level.position_bounds(length)
    return {
        f"its length is outside {level.length}": ~in_range,
        "a cell within its length is not a token id": ids != length,
        "it does not start with B": tokens[:, 0] != task.START,
        "it does not end with E": last != task.END,
        "B or E appears inside it": start_end != 2,
        f"it does not hold exactly {k} relevant symbols (X or Y)": relevant != k,
        f"a relevant position lies outside the level's ranges {level.positions}"
        + (f" (at length {level.scale}, scaled with its length)" if level.scale is not None else ""):
            ((positions < lo_pos) | (positions > hi_pos)).any(axis=1),
        "a recorded position does not hold X or Y": ((at != task.X) & (at != task.Y)).any(axis=1),
        f"its label is not a class id 0..{level.num_classes - 1}": (label < 0) | (label >= level.num_classes),
        "its label is not the order of its relevant symbols": bits.sum(axis=1) != label,
    }


def check_examples(tokens: np.ndarray, length: np.ndarray, label: np.ndarray, positions: np.ndarray,
                   level: task.Level, source: str) -> None:
    """Raises CorruptSplitError naming the first record that breaks the task's rules, and the rule."""
    problems = example_problems(tokens, length, label, positions, level)
    bad = np.zeros(len(length), bool)
    for mask in problems.values():
        bad |= mask
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        why = "; ".join(rule for rule, mask in problems.items() if mask[i])
        raise CorruptSplitError(
            f"record {i} of {source} is not a valid {level.name!r} example: {why} (length {int(length[i])}, "
            f"label {int(label[i])}, positions {positions[i].tolist()}); the file is corrupt or belongs to "
            f"another level. Delete the config's folder and build it again.")
