"""Fixed, disjoint train/validation/test splits of a level, generated chunk by chunk from per-chunk seeds.

Every chunk of ``CHUNK_SIZE`` examples draws from its own generator seeded with
``(config seed, split id, chunk index)``, so a split's content and order depend only on the config, never on
how many processes or workers produce it. Test is drawn first, then validation, then train; each later split
rejects every candidate that is already a sequence of an earlier split it must stay apart from:

* on a level whose space is small enough to enumerate (``easy`` holds 5,120 sequences), a fixed fraction of
  the space is held out (stratified by length, positions and class); test and validation both draw only
  held-out sequences and train only the rest. Validation is then disjoint from train but shares test's
  part of the space: taking a part of its own from either side would change train's or test's records, and a
  space this small holds too few sequences for three useful disjoint parts;
* on the other levels test is a plain draw, validation drops the (astronomically rare) candidates that are
  test sequences, and train those that are test or validation sequences: all three are pairwise disjoint.

Within the allowed part of the space, the seed generator's distribution is kept (rejection sampling).

A config of the length-generalisation suite (a lengthened level such as ``hard-len5000``, see
``task.scaled_level``) is test-only: it has only a test split, a plain draw, all of whose sequences are longer
than any of the level it lengthens.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterator

import numpy as np

from qrsu_data import task

CHUNK_SIZE = 10_000
"""Examples per independently seeded chunk; part of the dataset's definition (changing it changes data)."""

SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 3, "test": 1}
"""Every split name, in the order train / validation / test, with the seed stream it draws from."""
_HOLDOUT_STREAM = 2  # seed stream of the held-out partition, apart from every split's stream
ENUMERABLE_LIMIT = 1_000_000
"""Levels with at most this many distinct sequences get a held-out partition of the whole space."""
MIN_ACCEPTANCE = 0.01
"""Rejection sampling must keep at least this share of the generator's draws, or a split would take too long."""
MAX_EXCLUDED_SHARE = 0.5
"""The earlier splits a later one must avoid may cover at most this share of the generator's draws."""

DEFAULT_TRAIN_SIZE = 100_000
DEFAULT_VALIDATION_SIZE = 10_000
DEFAULT_TEST_SIZE = 10_000
DEFAULT_SUITE_LENGTHS: tuple[int, ...] = (200, 500, 1000, 2000, 5000, 10000)
"""Longest lengths of a level's length-generalisation suite (those longer than the level's own)."""

CONFIG_JSON_KEYS = ("level", "length", "positions", "scale", "train_size", "validation_size", "test_size", "seed",
                    "holdout_fraction")


def config_forms() -> str:
    """The valid forms of a config, for error messages."""
    return (f"{', '.join(task.LEVELS)}, a level of your own such as len1000to1100_pos10to20_pos500to600, or a "
            f"lengthened level such as hard-len5000; each optionally with suffixes -train<N> -validation<N> "
            f"-test<N> -seed<N> -holdout<F> naming what differs from the defaults (e.g. "
            f"'hard-train1000-test100-seed3'); or JSON of the config's fields (keys: {', '.join(CONFIG_JSON_KEYS)}; "
            f"e.g. '{{\"length\": [1000, 1100], \"positions\": [[10, 20], [500, 600]], \"train_size\": 1000}}')")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _config_error(name, why: str = "") -> ValueError:
    return ValueError(f"unknown config {name!r}{f' ({why})' if why else ''}; choose one of: {config_forms()}")


def _defaults(test_only: bool) -> dict:
    """The default sizes, seed and held-out fraction of a config (train and validation 0 when test-only)."""
    return {"train_size": 0 if test_only else DEFAULT_TRAIN_SIZE,
            "validation_size": 0 if test_only else DEFAULT_VALIDATION_SIZE,
            "test_size": DEFAULT_TEST_SIZE, "seed": 0, "holdout_fraction": 0.2}


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Everything that defines the splits of one config: level, sizes, seed, held-out fraction.

    ``train_size`` and ``validation_size`` default to 100,000 and 10,000, or to 0 on a test-only level (a
    lengthened one such as ``hard-len5000``); a validation size of 0 means no validation split.
    """

    level: str
    train_size: int | None = None
    test_size: int = DEFAULT_TEST_SIZE
    seed: int = 0
    holdout_fraction: float = 0.2
    validation_size: int | None = None

    def __post_init__(self):
        level = task.get_level(self.level)  # ValueError naming the valid level names
        test_only = level.base is not None
        for name in ("train_size", "validation_size"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, _defaults(test_only)[name])
        for name in ("train_size", "validation_size", "test_size"):
            value = getattr(self, name)
            low = 1 if name != "validation_size" else 0
            if test_only and name != "test_size":
                low = 0
            if not _is_int(value) or value < low:
                need = "a positive integer" if low else "an integer >= 0"
                raise ValueError(f"{name} must be {need}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if test_only and (self.train_size or self.validation_size):
            which = "train" if self.train_size else "validation"
            raise ValueError(f"config {self.level!r} is test-only (a lengthened level of the length-generalisation "
                             f"suite): it has no {which} split; give only a test size")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if isinstance(self.holdout_fraction, bool) or not isinstance(self.holdout_fraction, (int, float)) \
                or not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie strictly between 0 and 1, got {self.holdout_fraction!r}")
        self._check_feasible()

    # ------------------------------------------------------------------------------------------ identity

    @property
    def level_def(self) -> task.Level:
        """The task level of this config."""
        return task.get_level(self.level)

    @property
    def test_only(self) -> bool:
        """Whether the config has only a test split (a lengthened level of the length-generalisation suite)."""
        return self.level_def.base is not None

    @property
    def splits(self) -> tuple[str, ...]:
        """The config's split names, in the order train / validation / test; only those it has."""
        return tuple(s for s in SPLIT_IDS if self.size(s, _check=False) > 0)

    @property
    def name(self) -> str:
        """The config name: the level for the standard sizes and seed, else one naming every difference."""
        default = _defaults(self.test_only)
        parts = [self.level]
        for field, tag in (("train_size", "train"), ("validation_size", "validation"), ("test_size", "test"),
                           ("seed", "seed")):
            if getattr(self, field) != default[field]:
                parts.append(f"{tag}{getattr(self, field)}")
        if self.holdout_fraction != default["holdout_fraction"]:
            parts.append(f"holdout{self.holdout_fraction:g}")
        return "-".join(parts)

    def to_json(self) -> dict:
        """The config's fields as JSON (the level by name); ``SplitSpec.parse`` of its dump gives it back."""
        return {"level": self.level, **{f: getattr(self, f) for f in
                                        ("train_size", "validation_size", "test_size", "seed", "holdout_fraction")}}

    @classmethod
    def from_name(cls, name: str) -> SplitSpec:
        """The spec whose ``name`` is ``name`` (e.g. ``hard-train1000-seed3``); ValueError names the valid forms."""
        if not isinstance(name, str) or not name:
            raise _config_error(name, "a config is named by a non-empty string")
        parts = name.split("-")
        # The level: its first part, and a lengthening (len<N>, tail<N>) if one follows.
        n_level = 2 if len(parts) > 1 and re.fullmatch(r"(len|tail)\d+|var\d+to\d+", parts[1]) else 1
        level = "-".join(parts[:n_level])
        try:
            task.get_level(level)
        except ValueError as e:
            if str(e).startswith("unknown level"):
                raise _config_error(name, str(e).split(";")[0]) from None
            raise ValueError(f"config {name!r}: {e}") from None  # a level name with a bad range
        kwargs: dict = {}
        fields = {"train": "train_size", "validation": "validation_size", "test": "test_size", "seed": "seed"}
        for part in parts[n_level:]:
            m = re.fullmatch(r"(train|validation|test|seed)(\d+)|holdout([0-9.e+-]+)", part)
            value = None
            if m is not None:
                try:
                    value = int(m.group(2)) if m.group(1) else float(m.group(3))
                except ValueError:
                    pass
            if value is None:
                raise _config_error(name, f"{part!r} is not a suffix train<N>, validation<N>, test<N>, seed<N> or "
                                          f"holdout<F>")
            key = fields[m.group(1)] if m.group(1) else "holdout_fraction"
            if key in kwargs:
                raise _config_error(name, f"{part!r} repeats a suffix")
            kwargs[key] = value
        spec = cls(level, **kwargs)  # ValueError naming a bad size, seed or fraction
        if spec.name != name:
            # One name per config, so that one dataset never lives in two folders.
            raise _config_error(name, f"that config is named {spec.name!r}: use that name")
        return spec

    @classmethod
    def from_json(cls, config: str | dict) -> SplitSpec:
        """The spec of JSON fields: a level by name (``"level"``) or by ranges (``"length"``, ``"positions"``)
        plus sizes, seed and held-out fraction; ValueError names the problem and the valid keys."""
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except json.JSONDecodeError as e:
                raise ValueError(f"config JSON {config!r} does not parse ({e.msg} at character {e.pos}); write it "
                                 f'as e.g. \'{{"level": "hard", "train_size": 1000}}\' or '
                                 f'\'{{"length": [1000, 1100], "positions": [[10, 20], [500, 600]]}}\'') from None
        if not isinstance(config, dict):
            raise ValueError(f"config JSON must be an object with keys among {', '.join(CONFIG_JSON_KEYS)}, got "
                             f"{config!r}")
        unknown = sorted(set(config) - set(CONFIG_JSON_KEYS))
        if unknown:
            raise ValueError(f"unknown config JSON key(s) {unknown}; valid keys: {', '.join(CONFIG_JSON_KEYS)}")
        kwargs = dict(config)
        by_ranges = {k: kwargs.pop(k) for k in (*task.LEVEL_JSON_KEYS, *task.LEVEL_JSON_OPTIONAL) if k in kwargs}
        if by_ranges and "level" in kwargs:
            raise ValueError("config JSON gives both 'level' and ranges ('length', 'positions'); give one of them")
        if by_ranges:
            kwargs["level"] = task.level_from_json(by_ranges).name
        if "level" not in kwargs:
            raise ValueError("config JSON needs a level: 'level' (a level name) or 'length' and 'positions'")
        if not isinstance(kwargs["level"], str):
            raise ValueError(f"config JSON 'level' must be a level name (a string), got {kwargs['level']!r}")
        return cls(**kwargs)

    @classmethod
    def parse(cls, config: str | dict | SplitSpec) -> SplitSpec:
        """The spec of a config given by name or by JSON (a string starting with ``{``, or a dict); a spec is itself."""
        if isinstance(config, SplitSpec):
            return config  # resolved once by the caller: every function taking a config takes its spec too
        if isinstance(config, dict) or (isinstance(config, str) and config.lstrip().startswith("{")):
            return cls.from_json(config)
        return cls.from_name(config)

    # ------------------------------------------------------------------------------------------ sizes

    def size(self, split: str, _check: bool = True) -> int:
        """Number of examples of ``split``."""
        n = {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}.get(split)
        if n is None:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(self.splits)}")
        if _check and n == 0:
            raise ValueError(f"config {self.name!r} has no {split!r} split; its splits: {', '.join(self.splits)}")
        return n

    def num_chunks(self, split: str) -> int:
        """Number of independently seeded chunks of ``split``."""
        return -(-self.size(split) // CHUNK_SIZE)

    @property
    def enumerable(self) -> bool:
        """Whether the level's whole space is enumerated and partitioned into held-out and the rest.

        Only a config with a train split holds part of the space out: a test-only config draws freely.
        """
        return not self.test_only and self.level_def.space_at_most(ENUMERABLE_LIMIT)

    # ------------------------------------------------------------------------------------------ feasibility

    def heldout_share(self) -> float:
        """The share of the generator's draws that fall in the held-out part of an enumerable level.

        Every stratum (length, positions, class) has the same probability and ``4 ** free_cells`` members, of
        which ``round(members * holdout_fraction)`` are held out (as ``heldout_keys`` chooses them).
        """
        level = self.level_def
        shares = []
        for length in range(level.length[0], level.length[1] + 1):
            members = len(task.DISTRACTOR_IDS) ** level.free_cells(length)
            shares.append(int(round(members * self.holdout_fraction)) / members)
        return float(np.mean(shares))

    def _check_feasible(self) -> None:
        """Raises ValueError if rejection sampling could not fill a split (or not in reasonable time)."""
        level = self.level_def
        if self.enumerable:
            held = self.heldout_share()
            for side, share, splits in (("held-out", held, "test and validation draw"),
                                        ("remaining", 1 - held, "train draws")):
                if share < MIN_ACCEPTANCE:
                    raise ValueError(
                        f"config {self.name!r}: level {self.level!r} holds only {level.space_size():,} distinct "
                        f"sequences, and holding out {self.holdout_fraction:g} of each stratum (equal length, "
                        f"positions and class) leaves the {side} part, which {splits} from, "
                        f"{'empty' if share == 0 else f'with {share:.2%} of the draws'}; it needs at least "
                        f"{MIN_ACCEPTANCE:.0%}. Use a level with more distractor cells (longer sequences) or "
                        f"another held-out fraction (-holdout<F>)")
            return
        if self.test_only:
            return
        # Drawn sequences cover at most n * sum(p^2) of the generator's mass (p: a sequence's probability).
        collision = self.collision_probability()
        for later, earlier, n in (("validation", "test", self.test_size),
                                  ("train", "test and validation", self.test_size + self.validation_size)):
            share = n * collision
            if share > MAX_EXCLUDED_SHARE:
                raise ValueError(
                    f"config {self.name!r}: the {earlier} sequences ({n:,} draws) would cover about "
                    f"{min(share, 1):.0%} of what level {self.level!r} generates, so {later}, which must avoid "
                    f"them, could not be drawn (at most {MAX_EXCLUDED_SHARE:.0%}); choose smaller test/validation "
                    f"sizes or a level with more distinct sequences (it has {level.space_size():,})")

    def collision_probability(self) -> float:
        """The probability that two independent draws of the level are the same sequence (sum of p^2)."""
        level = self.level_def
        n_lengths = level.length[1] - level.length[0] + 1
        total = 0.0
        for length in range(level.length[0], level.length[1] + 1):
            # Each of the count = choices * classes * 4^m sequences of this length has p = 1 / (n_lengths * count);
            # 4^-m as a power of two underflows to 0 instead of overflowing for long sequences.
            total += math.ldexp(1.0, -2 * level.free_cells(length)) / (
                n_lengths ** 2 * level.position_choices(length) * level.num_classes)
        return total


def suite(level: str, lengths: tuple[int, ...] = DEFAULT_SUITE_LENGTHS) -> list[str]:
    """The test-only configs of ``level``'s length-generalisation suite: ``<level>-len<N>`` for each length N
    longer than the level allows, then ``<level>-tail<N>`` likewise (see ``task.scaled_level``)."""
    lv = task.get_level(level)
    if lv.base is not None:
        raise ValueError(f"level {level!r} is already lengthened; list the suite of {lv.base!r}")
    names = []
    for kind in task.SUITE_KINDS:
        least = task.shortest_suite_length(lv, kind)
        names += [f"{lv.name}-{kind}{n}" for n in lengths if n >= least]
    return names


def _split_id(split: str) -> int:
    try:
        return SPLIT_IDS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_IDS)}") from None


@functools.lru_cache(maxsize=8)
def _heldout_keys(level: str, seed: int, holdout_fraction: float) -> frozenset[bytes]:
    space = task.enumerate_space(level)
    rng = np.random.default_rng([seed, _HOLDOUT_STREAM])
    # Strata: (length, positions, label); each loses the same fraction of its sequences to the test side,
    # so test keeps the seed's joint distribution of length, positions and class.
    strata = np.concatenate([space.lengths[:, None], space.positions, space.labels[:, None]], axis=1)
    _, inverse = np.unique(strata, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    keys = task.sequence_keys(space)
    # Members of each stratum in space order (a stable sort), strata in increasing order.
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse))])
    chosen: list[bytes] = []
    for s in range(len(bounds) - 1):
        members = order[bounds[s]:bounds[s + 1]]
        n_out = int(round(len(members) * holdout_fraction))
        chosen.extend(keys[i] for i in rng.permutation(members)[:n_out])
    return frozenset(chosen)


def heldout_keys(spec: SplitSpec) -> frozenset[bytes]:
    """The held-out part of an enumerable level's space: ``holdout_fraction`` of every stratum."""
    if not spec.enumerable:
        why = "a test-only config holds nothing out" if spec.test_only else "it is too large to enumerate"
        raise ValueError(f"level {spec.level!r} has no held-out partition: {why}")
    return _heldout_keys(spec.level, spec.seed, spec.holdout_fraction)


def _draw_chunk(spec: SplitSpec, split: str, chunk: int, excluded: frozenset[bytes] | set[bytes],
                heldout_side: bool | None) -> task.Batch:
    """Draws chunk ``chunk`` of ``split``: rejection sampling until the chunk is full."""
    level = spec.level_def
    want = min(CHUNK_SIZE, spec.size(split) - chunk * CHUNK_SIZE)
    rng = np.random.default_rng([spec.seed, _split_id(split), chunk])
    parts: list[task.Batch] = []
    have = 0
    while have < want:
        # Rounds of a fixed size, whatever the split size: a smaller split is then a prefix of a larger
        # one (also what `tfds build --max_examples_per_split` produces).
        cand = task.generate(level, CHUNK_SIZE, rng)
        if heldout_side is None and not excluded:
            keep = np.ones(len(cand), bool)
        else:
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
def _split_keys(spec: SplitSpec, split: str) -> frozenset[bytes]:
    keys: set[bytes] = set()
    if spec.size(split, _check=False):
        for c in range(spec.num_chunks(split)):
            keys.update(task.sequence_keys(chunk_examples(spec, split, c)))
    return frozenset(keys)


def chunk_examples(spec: SplitSpec, split: str, chunk: int) -> task.Batch:
    """The examples of chunk ``chunk`` of ``split``, in their fixed order."""
    if not 0 <= chunk < spec.num_chunks(split):
        raise ValueError(f"chunk {chunk} out of range: split {split!r} has {spec.num_chunks(split)} chunks")
    if spec.enumerable:
        return _draw_chunk(spec, split, chunk, heldout_keys(spec), heldout_side=split != "train")
    if split == "test":
        return _draw_chunk(spec, split, chunk, frozenset(), heldout_side=None)
    if split == "validation":
        return _draw_chunk(spec, split, chunk, _split_keys(spec, "test"), heldout_side=None)
    return _draw_chunk(spec, split, chunk, _train_excluded(spec), heldout_side=None)


@functools.lru_cache(maxsize=8)
def _train_excluded(spec: SplitSpec) -> frozenset[bytes]:
    return _split_keys(spec, "test") | _split_keys(spec, "validation")


def iter_chunks(spec: SplitSpec, split: str) -> Iterator[tuple[int, task.Batch]]:
    """Yields (chunk index, examples) for every chunk of ``split``, in order."""
    for c in range(spec.num_chunks(split)):
        yield c, chunk_examples(spec, split, c)


def split_examples(spec: SplitSpec, split: str) -> task.Batch:
    """The whole of ``split`` as one batch (example i is the split's i-th record)."""
    chunks = [b for _, b in iter_chunks(spec, split)]
    return task.Batch(*(np.concatenate([getattr(b, f.name) for b in chunks])
                        for f in dataclasses.fields(task.Batch)))
