"""Fixed, disjoint train/test splits of a level, generated chunk by chunk from per-chunk seeds.

Every chunk of ``CHUNK_SIZE`` examples draws from its own generator seeded with
``(config seed, split id, chunk index)``, so a split's content and order depend only on the config, never on
how many processes or workers produce it. The test split is drawn first; train then rejects every
candidate that is also a test sequence, so the two splits never share a sequence:

* on a level whose space is small enough to enumerate (``easy`` holds 5,120 sequences), a fixed fraction of
  the space is held out (stratified by length, positions and class); test draws only held-out sequences and
  train only the rest;
* on the other levels test is a plain draw and train drops the (astronomically rare) candidates that
  already appear in test.

Within the allowed part of the space, the seed generator's distribution is kept (rejection sampling).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator

import numpy as np

from qrsu_data import task

CHUNK_SIZE = 10_000
"""Examples per independently seeded chunk; part of the dataset's definition (changing it changes data)."""

SPLIT_IDS: dict[str, int] = {"train": 0, "test": 1}
_HOLDOUT_STREAM = 2  # seed stream of the held-out partition, apart from both splits' streams
ENUMERABLE_LIMIT = 1_000_000
"""Levels with at most this many distinct sequences get a held-out partition of the whole space."""


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Everything that defines the splits of one config: level, sizes, seed, held-out fraction."""

    level: str
    train_size: int = 100_000
    test_size: int = 10_000
    seed: int = 0
    holdout_fraction: float = 0.2

    def __post_init__(self):
        task.get_level(self.level)
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie strictly between 0 and 1, got {self.holdout_fraction}")

    @property
    def name(self) -> str:
        """The config name: the level for the standard sizes and seed, else one naming every difference."""
        default = SplitSpec(self.level)
        parts = [self.level]
        if self.train_size != default.train_size:
            parts.append(f"train{self.train_size}")
        if self.test_size != default.test_size:
            parts.append(f"test{self.test_size}")
        if self.seed != default.seed:
            parts.append(f"seed{self.seed}")
        if self.holdout_fraction != default.holdout_fraction:
            parts.append(f"holdout{self.holdout_fraction:g}")
        return "-".join(parts)

    @classmethod
    def from_name(cls, name: str) -> SplitSpec:
        """The spec whose ``name`` is ``name`` (e.g. ``hard-train1000-seed3``); ValueError names the valid forms."""
        level, *parts = name.split("-") if isinstance(name, str) else [None]
        kwargs: dict = {}
        fields = {"train": "train_size", "test": "test_size", "seed": "seed"}
        try:
            for part in parts:
                m = re.fullmatch(r"(train|test|seed)(\d+)|holdout([0-9.e+-]+)", part)
                if m is None:
                    raise ValueError(part)
                if m.group(1):
                    kwargs[fields[m.group(1)]] = int(m.group(2))
                else:
                    kwargs["holdout_fraction"] = float(m.group(3))
            spec = cls(level, **kwargs)
            ok = spec.name == name
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"unknown config {name!r}; choose one of: {', '.join(task.LEVELS)}, or a level with "
                             f"other sizes or seed such as 'hard-train1000-test100-seed3'")
        return spec

    def size(self, split: str) -> int:
        """Number of examples of ``split``."""
        return self.train_size if _split_id(split) == 0 else self.test_size

    def num_chunks(self, split: str) -> int:
        """Number of independently seeded chunks of ``split``."""
        return -(-self.size(split) // CHUNK_SIZE)

    @property
    def enumerable(self) -> bool:
        """Whether the level's whole space is enumerated and partitioned into held-out and the rest."""
        return task.get_level(self.level).space_size() <= ENUMERABLE_LIMIT


def _split_id(split: str) -> int:
    try:
        return SPLIT_IDS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_IDS)}") from None


@functools.lru_cache(maxsize=8)
def heldout_keys(spec: SplitSpec) -> frozenset[bytes]:
    """The held-out part of an enumerable level's space: ``holdout_fraction`` of every stratum."""
    if not spec.enumerable:
        raise ValueError(f"level {spec.level!r} is too large to enumerate; it has no held-out partition")
    space = task.enumerate_space(spec.level)
    rng = np.random.default_rng([spec.seed, _HOLDOUT_STREAM])
    # Strata: (length, positions, label); each loses the same fraction of its sequences to the test side,
    # so test keeps the seed's joint distribution of length, positions and class.
    strata = np.concatenate([space.lengths[:, None], space.positions, space.labels[:, None]], axis=1)
    _, inverse = np.unique(strata, axis=0, return_inverse=True)
    keys = task.sequence_keys(space)
    chosen: list[bytes] = []
    for s in range(inverse.max() + 1):
        members = np.flatnonzero(inverse == s)
        n_out = int(round(len(members) * spec.holdout_fraction))
        chosen.extend(keys[i] for i in rng.permutation(members)[:n_out])
    return frozenset(chosen)


def _draw_chunk(spec: SplitSpec, split: str, chunk: int, excluded: frozenset[bytes] | set[bytes],
                heldout_side: bool | None) -> task.Batch:
    """Draws chunk ``chunk`` of ``split``: rejection sampling until the chunk is full."""
    level = task.get_level(spec.level)
    want = min(CHUNK_SIZE, spec.size(split) - chunk * CHUNK_SIZE)
    rng = np.random.default_rng([spec.seed, _split_id(split), chunk])
    parts: list[task.Batch] = []
    have = 0
    while have < want:
        # Rounds of a fixed size, whatever the split size: a smaller split is then a prefix of a larger
        # one (also what `tfds build --max_examples_per_split` produces).
        cand = task.generate(level, CHUNK_SIZE, rng)
        keys = task.sequence_keys(cand)
        if heldout_side is None:
            keep = np.array([k not in excluded for k in keys], dtype=bool)
        else:
            keep = np.array([(k in excluded) == heldout_side for k in keys], dtype=bool)
        kept = cand.take(np.flatnonzero(keep)[: want - have])
        parts.append(kept)
        have += len(kept)
    return task.Batch(*(np.concatenate([getattr(p, f.name) for p in parts])
                        for f in dataclasses.fields(task.Batch)))


@functools.lru_cache(maxsize=8)
def _test_keys(spec: SplitSpec) -> frozenset[bytes]:
    keys: set[bytes] = set()
    for c in range(spec.num_chunks("test")):
        keys.update(task.sequence_keys(chunk_examples(spec, "test", c)))
    return frozenset(keys)


def chunk_examples(spec: SplitSpec, split: str, chunk: int) -> task.Batch:
    """The examples of chunk ``chunk`` of ``split``, in their fixed order."""
    if not 0 <= chunk < spec.num_chunks(split):
        raise ValueError(f"chunk {chunk} out of range: split {split!r} has {spec.num_chunks(split)} chunks")
    if spec.enumerable:
        return _draw_chunk(spec, split, chunk, heldout_keys(spec), heldout_side=_split_id(split) == 1)
    if _split_id(split) == 1:
        return _draw_chunk(spec, split, chunk, frozenset(), heldout_side=None)
    return _draw_chunk(spec, split, chunk, _test_keys(spec), heldout_side=None)


def iter_chunks(spec: SplitSpec, split: str) -> Iterator[tuple[int, task.Batch]]:
    """Yields (chunk index, examples) for every chunk of ``split``, in order."""
    for c in range(spec.num_chunks(split)):
        yield c, chunk_examples(spec, split, c)


def split_examples(spec: SplitSpec, split: str) -> task.Batch:
    """The whole of ``split`` as one batch (example i is the split's i-th record)."""
    chunks = [b for _, b in iter_chunks(spec, split)]
    return task.Batch(*(np.concatenate([getattr(b, f.name) for b in chunks])
                        for f in dataclasses.fields(task.Batch)))
