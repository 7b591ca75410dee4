"""The temporal-order task (Hochreiter & Schmidhuber 1997, Experiment 6): vocabulary, levels, generator.

A sequence starts with ``B`` and ends with ``E``; every position in between holds a random distractor
(``a b c d``) except two (Exp. 6a) or three (Exp. 6b) relevant positions holding ``X`` or ``Y``. The class
is the order of the relevant symbols: for two, ``XX->Q  XY->R  YX->S  YY->U``.

Positions are 0-based offsets from the start symbol and the length counts ``B`` and ``E``, exactly as the
seed notebook's generator (``TemporalOrderExp6aSequence.get_predefined_generator``) draws them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

SYMBOLS: tuple[str, ...] = ("X", "Y", "a", "b", "c", "d", "B", "E")
"""The vocabulary; a symbol's token id is its index here."""
X, Y, START, END = 0, 1, 6, 7
RELEVANT_IDS: tuple[int, ...] = (X, Y)
DISTRACTOR_IDS: tuple[int, ...] = (2, 3, 4, 5)
VOCAB_SIZE = len(SYMBOLS)
_SYMBOL_TO_ID = {s: i for i, s in enumerate(SYMBOLS)}

CLASSES_6A: tuple[str, ...] = ("Q", "R", "S", "U")
CLASSES_6B: tuple[str, ...] = ("Q", "R", "S", "U", "V", "A", "B", "C")
MIN_RELEVANT, MAX_RELEVANT = 2, 8
"""A level holds 2 to 8 relevant symbols, hence 4 to 256 classes."""


def class_names(num_relevant: int) -> tuple[str, ...]:
    """The class names of a level with ``num_relevant`` relevant symbols, in label-id order.

    Two: the paper's ``Q R S U``; three: its ``Q R S U V A B C``; four to eight: the relevant symbols
    themselves in order of appearance, e.g. ``XXYX`` (label id = the X/Y string read as binary, X = 0).
    """
    if not MIN_RELEVANT <= num_relevant <= MAX_RELEVANT:
        raise ValueError(f"a level holds {MIN_RELEVANT} to {MAX_RELEVANT} relevant symbols, got {num_relevant}")
    if num_relevant == 2:
        return CLASSES_6A
    if num_relevant == 3:
        return CLASSES_6B
    return tuple(format(i, f"0{num_relevant}b").replace("0", "X").replace("1", "Y") for i in range(2 ** num_relevant))


LEVEL_FORMS = ("a standard level ({standard}); a level of your own named "
               "len<LO>to<HI>_pos<LO>to<HI>_pos<LO>to<HI>... (2 to 8 inclusive position ranges, 'len<N>' or "
               "'pos<N>' for a single value; e.g. len1000to1100_pos10to20_pos500to600); or a lengthened level of "
               "the length-generalisation suite, <level>-len<N> (lengths and positions scaled to a longest "
               "sequence of N) or <level>-tail<N> (positions kept, the tail after the last relevant symbol "
               "lengthened to a longest sequence of N), e.g. hard-len5000; or a level of varied lengths for "
               "training, <level>-var<LO>to<HI> (every length from LO to HI, the relevant positions at the "
               "level's fractions of each), e.g. hard-var50to200")
"""The valid forms of a level name, for error messages (format with standard=...)."""


@dataclasses.dataclass(frozen=True)
class Level:
    """A difficulty level: inclusive ranges of the length and of each relevant position."""

    name: str
    length: tuple[int, int]
    positions: tuple[tuple[int, int], ...]
    description: str = ""
    base: str | None = None
    """For a lengthened level of the length-generalisation suite (test-only), the level it lengthens."""
    scale: int | None = None
    """For a level of varied lengths: ``positions`` are those of a sequence of this length, and a sequence of
    length L has each range scaled by L / scale (rounded half up, as the suite's ``len<N>`` scaling), so the
    relevant symbols sit at the same fractions of every length. None: the same ranges at every length."""

    def __post_init__(self):
        # Tuples, so that a level built from lists (e.g. parsed JSON) is hashable and compares equal.
        object.__setattr__(self, "length", tuple(self.length))
        object.__setattr__(self, "positions", tuple(tuple(p) for p in self.positions))
        lo, hi = self.length
        if not 3 <= lo <= hi:
            raise ValueError(f"level {self.name!r}: length range {self.length} must satisfy 3 <= lo <= hi")
        k = len(self.positions)
        if not MIN_RELEVANT <= k <= MAX_RELEVANT:
            raise ValueError(f"level {self.name!r} has {k} relevant position range(s); a level needs "
                             f"{MIN_RELEVANT} to {MAX_RELEVANT} (4 to 256 classes)")
        if self.scale is not None:
            if isinstance(self.scale, bool) or not isinstance(self.scale, (int, np.integer)) or self.scale < 3:
                raise ValueError(f"level {self.name!r}: scale must be an integer length >= 3, got {self.scale!r}")
            object.__setattr__(self, "scale", int(self.scale))
            # Scaling is monotone: the shortest and the longest sequences are the tightest cases.
            for length in sorted({lo, hi}):
                self._check_ranges(self.ranges_at(length), length, f" at length {length}")
            return
        self._check_ranges(self.positions, lo)

    def ranges_at(self, length: int) -> tuple[tuple[int, int], ...]:
        """The relevant-position ranges of a sequence of ``length``."""
        if self.scale is None:
            return self.positions
        return tuple((_round_ratio(a, length, self.scale), _round_ratio(b, length, self.scale))
                     for a, b in self.positions)

    def position_bounds(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) int64 [N, num_relevant]: each sequence's inclusive relevant-position ranges, by its length."""
        ranges = np.asarray(self.positions, np.int64)
        lengths = np.asarray(lengths, np.int64)[:, None]
        if self.scale is None:
            return (np.broadcast_to(ranges[:, 0], (len(lengths), len(ranges))),
                    np.broadcast_to(ranges[:, 1], (len(lengths), len(ranges))))
        # a * L / scale rounded half up, in exact integers (as _round_ratio).
        return ((2 * ranges[:, 0] * lengths + self.scale) // (2 * self.scale),
                (2 * ranges[:, 1] * lengths + self.scale) // (2 * self.scale))

    def _check_ranges(self, positions: tuple[tuple[int, int], ...], lo: int, where: str = "") -> None:
        prev_hi = 0
        for i, (plo, phi) in enumerate(positions):
            if not plo <= phi:
                raise ValueError(f"level {self.name!r}: position range {i + 1} {(plo, phi)}{where} is unordered; "
                                 f"write it as [lo, hi] with lo <= hi")
            if not prev_hi < plo:
                after = ("after the start symbol B (position 0)" if i == 0 else
                         f"after range {i} (which ends at {prev_hi}): ranges must be in order and not overlap")
                raise ValueError(f"level {self.name!r}: position range {i + 1} {(plo, phi)}{where} must start "
                                 f"{after}")
            prev_hi = phi
        if prev_hi > lo - 2:
            raise ValueError(f"level {self.name!r}: the last relevant position ({prev_hi}){where} must lie before "
                             f"the end symbol of the shortest sequence (position {lo - 1}): raise the shortest "
                             f"length to at least {prev_hi + 2} or end the last position range by {lo - 2}")

    @property
    def num_relevant(self) -> int:
        """How many relevant symbols a sequence holds (2 for Exp. 6a, 3 for Exp. 6b, up to 8)."""
        return len(self.positions)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in label-id order (see class_names)."""
        return class_names(self.num_relevant)

    @property
    def num_classes(self) -> int:
        """The number of classes (2 ** num_relevant)."""
        return 2 ** self.num_relevant

    @property
    def max_length(self) -> int:
        """The longest sequence of the level, start and end symbols included."""
        return self.length[1]

    @property
    def padded_length(self) -> int:
        """The seed's one-hot width in time: max length + 1 (e.g. 9 for easy, 111 for hard)."""
        return self.length[1] + 1

    def space_size(self) -> int:
        """How many distinct sequences the level can produce."""
        total = 0
        for length in range(self.length[0], self.length[1] + 1):
            total += self.position_choices(length) * self.num_classes * len(DISTRACTOR_IDS) ** self.free_cells(length)
        return total

    def space_at_most(self, limit: int) -> bool:
        """Whether the level produces at most ``limit`` distinct sequences (without summing a huge space)."""
        total = 0
        for length in range(self.length[0], self.length[1] + 1):
            if self.free_cells(length) > limit.bit_length():  # 4^m alone exceeds the limit
                return False
            total += self.position_choices(length) * self.num_classes * len(DISTRACTOR_IDS) ** self.free_cells(length)
            if total > limit:
                return False
        return True

    def position_choices(self, length: int | None = None) -> int:
        """How many combinations of relevant positions a sequence of ``length`` allows (any length, if the
        ranges do not depend on it)."""
        if self.scale is not None and length is None:
            raise ValueError(f"level {self.name!r} has ranges that depend on the length: give the length")
        n = 1
        for lo, hi in self.ranges_at(length) if length is not None else self.positions:
            n *= hi - lo + 1
        return n

    def free_cells(self, length: int) -> int:
        """Distractor cells of a sequence of ``length`` (all but B, E and the relevant symbols)."""
        return length - 2 - self.num_relevant

    def to_json(self) -> dict:
        """The level's ranges as JSON-ready lists: {"length": [lo, hi], "positions": [[lo, hi], ...]} (and
        "scale" for a level of varied lengths)."""
        out = {"length": list(self.length), "positions": [list(p) for p in self.positions]}
        return out if self.scale is None else {**out, "scale": self.scale}

    def summary(self) -> str:
        """A one-line account of the ranges, e.g. ``length 100-110, t1 10-20, t2 50-60, 4 classes``."""
        ranges = ", ".join(f"t{i + 1} {_span(p)}" for i, p in enumerate(self.positions))
        per = f" (at length {self.scale}; scaled with each sequence's length)" if self.scale is not None else ""
        return f"length {_span(self.length)}, {ranges}{per}, {self.num_classes} classes"


def _span(r: tuple[int, int]) -> str:
    return f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}"


LEVELS: dict[str, Level] = {
    lv.name: lv
    for lv in (
        Level("easy", (7, 8), ((1, 2), (4, 5)), "The seed notebook's default level."),
        Level("normal", (30, 40), ((2, 5), (20, 27))),
        Level("moderate", (60, 80), ((10, 20), (45, 54))),
        Level("hard", (100, 110), ((10, 20), (50, 60)), "The 1997 paper's Experiment 6a."),
        Level("nightmare", (300, 500), ((10, 80), (250, 290))),
        Level("exp6b", (100, 110), ((10, 20), (33, 43), (66, 76)),
              "The 1997 paper's Experiment 6b: three relevant symbols, eight classes."),
    )
}
"""The six standard levels by name, in order of difficulty (exp6b last). Any other level is named by its
ranges (``custom_level``) or lengthens one (``scaled_level``, ``tail_level``); ``get_level`` resolves every name."""

SUITE_KINDS: tuple[str, ...] = ("len", "tail")
"""The lengthenings of the length-generalisation suite: ``len`` scales lengths and positions, ``tail`` only
lengthens the part after the last relevant symbol."""


def _range_name(prefix: str, r: tuple[int, int]) -> str:
    return f"{prefix}{r[0]}" if r[0] == r[1] else f"{prefix}{r[0]}to{r[1]}"


def level_name(length: tuple[int, int], positions: Sequence[tuple[int, int]], scale: int | None = None) -> str:
    """The name of the level with these ranges: a standard level's name, else one such as
    ``len1000to1100_pos10to20_pos500to600``; with ``scale``, a standard level's positions at its longest length
    give ``<level>-var<LO>to<HI>``, others ``len50to200_pos10to20_pos50to60_per110``."""
    length, positions = tuple(length), tuple(tuple(p) for p in positions)
    for lv in LEVELS.values():
        if scale is None and lv.length == length and lv.positions == positions:
            return lv.name
        if scale is not None and lv.positions == positions and lv.max_length == scale:
            return f"{lv.name}-{_range_name('var', length)}"
    name = "_".join([_range_name("len", length), *(_range_name("pos", p) for p in positions)])
    return name if scale is None else f"{name}_per{scale}"


def _as_range(value, what: str) -> tuple[int, int]:
    """``[lo, hi]`` (or a single int n, meaning [n, n]) as a tuple of two ints; ValueError otherwise."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if is_int(value):
        return int(value), int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{what} must be [lo, hi] (two integers) or one integer, got {value!r}")


def custom_level(length, positions, scale: int | None = None) -> Level:
    """The level with these inclusive ranges (``[lo, hi]`` or one int each), named by ``level_name``; with
    ``scale``, a level of varied lengths whose positions are those of a sequence of that length (Level.scale)."""
    length = _as_range(length, "length")
    if not isinstance(positions, (list, tuple)):
        raise ValueError(f"positions must be a list of 2 to 8 ranges [lo, hi], got {positions!r}")
    positions = tuple(_as_range(p, f"position range {i + 1}") for i, p in enumerate(positions))
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 3):
        raise ValueError(f"scale must be an integer length >= 3 (the length the positions are given at), "
                         f"got {scale!r}")
    name = level_name(length, positions, scale)
    if name in LEVELS:
        return LEVELS[name]
    desc = "" if scale is None else (f"lengths {length[0]}-{length[1]}, the relevant positions at the fractions "
                                     f"of the length they have at length {scale}")
    return Level(name, length, positions, desc, scale=scale)


def varied_level(level: Level | str, shortest: int, longest: int) -> Level:
    """``level``'s relevant positions at the same fractions of every length in [shortest, longest]
    (``<level>-var<LO>to<HI>``): training data of varied length, e.g. ``hard-var50to200``."""
    level = get_level(level) if isinstance(level, str) else level
    if level.base is not None or level.scale is not None:
        raise ValueError(f"level {level.name!r} is already lengthened or varied; vary a level of fixed ranges")
    return custom_level((shortest, longest), level.positions, level.max_length)


LEVEL_JSON_KEYS = ("length", "positions")
LEVEL_JSON_OPTIONAL = ("scale",)


def level_from_json(spec: str | dict) -> Level:
    """The level of JSON such as ``{"length": [1000, 1100], "positions": [[10, 20], [500, 600]]}``."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"level JSON {spec!r} does not parse ({e.msg} at character {e.pos}); write it as "
                             f'{{"length": [1000, 1100], "positions": [[10, 20], [500, 600]]}}') from None
    if not isinstance(spec, dict):
        raise ValueError(f"level JSON must be an object with keys {', '.join(LEVEL_JSON_KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(LEVEL_JSON_KEYS) - set(LEVEL_JSON_OPTIONAL))
    missing = [k for k in LEVEL_JSON_KEYS if k not in spec]
    if unknown or missing:
        raise ValueError(f"level JSON needs the keys {', '.join(LEVEL_JSON_KEYS)} and may have "
                         f"{', '.join(LEVEL_JSON_OPTIONAL)} (the name follows from the ranges); unknown: "
                         f"{unknown or 'none'}, missing: {missing or 'none'}")
    return custom_level(spec["length"], spec["positions"], spec.get("scale"))


def _round_ratio(a: int, num: int, den: int) -> int:
    """a * num / den rounded half up, in exact integer arithmetic (so the same on every machine)."""
    return (2 * a * num + den) // (2 * den)


def scaled_level(level: Level | str, max_length: int) -> Level:
    """``level`` with lengths and positions scaled so its longest sequence is ``max_length`` (``<level>-len<N>``)."""
    return _lengthened(level, "len", max_length)


def tail_level(level: Level | str, max_length: int) -> Level:
    """``level`` with positions kept, lengths shifted to a longest sequence of ``max_length`` (``<level>-tail<N>``)."""
    return _lengthened(level, "tail", max_length)


def _lengthened_ranges(level: Level, kind: str, n: int) -> tuple[tuple[int, int], tuple[tuple[int, int], ...]]:
    lo, hi = level.length
    if kind == "len":
        return (_round_ratio(lo, n, hi), n), tuple((_round_ratio(a, n, hi), _round_ratio(b, n, hi))
                                                   for a, b in level.positions)
    return (lo + n - hi, n), level.positions


def shortest_suite_length(level: Level | str, kind: str) -> int:
    """The smallest N for which ``<level>-<kind><N>`` is valid: every sequence longer than any of ``level``."""
    level = get_level(level) if isinstance(level, str) else level
    if kind == "tail":
        return 2 * level.length[1] - level.length[0] + 1
    n = level.length[1] + 1
    while _lengthened_ranges(level, "len", n)[0][0] <= level.length[1]:
        n += 1
    return n


def _lengthened(level: Level | str, kind: str, n: int) -> Level:
    level = get_level(level) if isinstance(level, str) else level
    if kind not in SUITE_KINDS:
        raise ValueError(f"unknown lengthening {kind!r}; choose one of: {', '.join(SUITE_KINDS)}")
    if level.base is not None:
        raise ValueError(f"level {level.name!r} is already lengthened; lengthen {level.base!r} instead")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"the longest length of {level.name}-{kind}<N> must be an integer, got {n!r}")
    name = f"{level.name}-{kind}{n}"
    least = shortest_suite_length(level, kind)
    if n < least:
        raise ValueError(f"level {name!r}: every sequence of a lengthened level must be longer than the longest "
                         f"of {level.name!r} ({level.length[1]}), so that none is one of its sequences; choose "
                         f"N >= {least}")
    length, positions = _lengthened_ranges(level, kind, int(n))
    how = (f"lengths and relevant positions scaled by {n}/{level.length[1]}" if kind == "len" else
           "relevant positions kept, the tail after the last one lengthened")
    return Level(name, length, positions, f"{level.name!r} lengthened to a longest sequence of {n} ({how}); "
                 f"test only.", base=level.name)


def _parse_range(token: str, prefix: str) -> tuple[int, int] | None:
    m = re.fullmatch(rf"{prefix}(\d+)(?:to(\d+))?", token)
    if m is None:
        return None
    lo = int(m.group(1))
    return lo, int(m.group(2)) if m.group(2) is not None else lo


def _unknown_level(name, why: str = "") -> ValueError:
    forms = LEVEL_FORMS.format(standard=", ".join(LEVELS))
    return ValueError(f"unknown level {name!r}{why}; choose one of: {forms}")


def _base_level(name: str) -> Level:
    if name in LEVELS:
        return LEVELS[name]
    tokens = name.split("_")
    scale = None
    if len(tokens) > 1 and re.fullmatch(r"per[1-9]\d*", tokens[-1]):
        scale = int(tokens.pop()[3:])
    length = _parse_range(tokens[0], "len")
    positions = [_parse_range(t, "pos") for t in tokens[1:]]
    if length is None or any(p is None for p in positions):
        raise _unknown_level(name)
    level = custom_level(length, positions, scale)  # ValueError naming a bad range
    if level.name != name:
        # One name per level, so that one level never lives in two dataset folders.
        raise _unknown_level(name, f" (that level is named {level.name!r}; use that name)")
    return level


def get_level(name: str) -> Level:
    """The level called ``name`` (standard, of your own, or lengthened); ValueError naming the valid forms."""
    if not isinstance(name, str):
        raise _unknown_level(name)
    if name in LEVELS:
        return LEVELS[name]
    base, sep, modifier = name.partition("-")
    if not sep:
        return _base_level(name)
    m = re.fullmatch(r"var([1-9]\d*)to([1-9]\d*)", modifier)
    if m is not None:
        level = varied_level(_base_level(base), int(m.group(1)), int(m.group(2)))
        if level.name != name:
            raise _unknown_level(name, f" (that level is named {level.name!r}; use that name)")
        return level
    m = re.fullmatch(r"(len|tail)([1-9]\d*)", modifier)
    if m is None:
        raise _unknown_level(name, f" ({modifier!r} is not a lengthening len<N> or tail<N>, nor var<LO>to<HI>)")
    return _lengthened(_base_level(base), m.group(1), int(m.group(2)))


@dataclasses.dataclass
class Batch:
    """A batch of generated sequences: padded tokens plus what defines each sequence."""

    tokens: np.ndarray  # uint8 [N, max_length], post-padded with PAD_ID beyond each length
    lengths: np.ndarray  # int32 [N]
    positions: np.ndarray  # int32 [N, num_relevant]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.lengths)

    def sequences(self) -> list[np.ndarray]:
        """Each sequence's tokens without padding."""
        return [self.tokens[i, :n] for i, n in enumerate(self.lengths)]

    def take(self, index: np.ndarray) -> Batch:
        """The rows selected by ``index`` (a boolean mask or integer indices)."""
        return Batch(self.tokens[index], self.lengths[index], self.positions[index], self.labels[index])


PAD_ID = 255
"""Filler of ``Batch.tokens`` beyond a sequence's length; never a valid token id."""


def generate(level: Level | str, n: int, rng: np.random.Generator) -> Batch:
    """Draws ``n`` sequences of ``level`` with the seed generator's distribution, all draws from ``rng``."""
    if isinstance(level, str):
        level = get_level(level)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    k = level.num_relevant
    lengths = rng.integers(level.length[0], level.length[1] + 1, size=n, dtype=np.int32)
    if level.scale is None:
        positions = np.stack(
            [rng.integers(lo, hi + 1, size=n, dtype=np.int32) for lo, hi in level.positions], axis=1
        ) if n else np.zeros((0, k), np.int32)
    else:  # each sequence's ranges follow its length
        lo, hi = level.position_bounds(lengths)
        positions = np.stack([rng.integers(lo[:, j], hi[:, j] + 1, dtype=np.int64) for j in range(k)],
                             axis=1).astype(np.int32) if n else np.zeros((0, k), np.int32)
    labels = rng.integers(0, level.num_classes, size=n, dtype=np.int32)
    tokens = rng.integers(DISTRACTOR_IDS[0], DISTRACTOR_IDS[-1] + 1, size=(n, level.max_length), dtype=np.uint8)
    rows = np.arange(n)
    tokens[:, 0] = START
    tokens[rows, lengths - 1] = END
    # The most significant bit of the label is the first relevant symbol: Q=XX.. (0) .. U=YY (3).
    for j in range(k):
        bit = (labels >> (k - 1 - j)) & 1
        tokens[rows, positions[:, j]] = np.where(bit == 0, X, Y)
    tokens[np.arange(level.max_length)[None, :] >= lengths[:, None]] = PAD_ID
    return Batch(tokens, lengths, positions, labels)


def label_of(relevant: Sequence[int]) -> int:
    """The class id of relevant symbols in order of appearance, e.g. (X, Y) -> 1 (R)."""
    label = 0
    for tok in relevant:
        if tok not in RELEVANT_IDS:
            raise ValueError(f"relevant symbols must be X ({X}) or Y ({Y}), got token id {tok}")
        label = 2 * label + (tok - X)
    return label


def check_sequence(tokens: Sequence[int] | np.ndarray, level: Level | str | None = None) -> tuple[int, list[int]]:
    """Validates one sequence of token ids and returns its (label, relevant positions); raises ValueError."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) < 3:
        raise ValueError(f"a sequence is a 1-D run of at least 3 symbols, got shape {tokens.shape}")
    if np.any((tokens < 0) | (tokens >= VOCAB_SIZE)):
        raise ValueError(f"token ids must lie in 0..{VOCAB_SIZE - 1} ({' '.join(SYMBOLS)})")
    if tokens[0] != START or tokens[-1] != END:
        raise ValueError("a sequence must start with 'B' and end with 'E'")
    inner = tokens[1:-1]
    if np.any((inner == START) | (inner == END)):
        raise ValueError("'B' and 'E' may only appear at the start and the end")
    positions = [int(p) + 1 for p in np.flatnonzero((inner == X) | (inner == Y))]
    if level is not None:
        level = get_level(level) if isinstance(level, str) else level
        if not level.length[0] <= len(tokens) <= level.length[1]:
            raise ValueError(f"length {len(tokens)} is outside level {level.name!r}'s range {level.length}")
        if len(positions) != level.num_relevant:
            raise ValueError(f"level {level.name!r} needs {level.num_relevant} relevant symbols (X or Y), "
                             f"found {len(positions)}")
        ranges = level.ranges_at(len(tokens))
        for p, (lo, hi) in zip(positions, ranges):
            if not lo <= p <= hi:
                raise ValueError(f"relevant position {p} is outside level {level.name!r}'s ranges {ranges}"
                                 + (f" at length {len(tokens)}" if level.scale is not None else ""))
    elif not MIN_RELEVANT <= len(positions) <= MAX_RELEVANT:
        raise ValueError(f"a sequence needs {MIN_RELEVANT} to {MAX_RELEVANT} relevant symbols (X or Y), "
                         f"found {len(positions)}")
    return label_of([int(tokens[p]) for p in positions]), positions


def encode(text: str) -> np.ndarray:
    """Token ids (int32) of a string like ``"BaXbcYdE"``; raises ValueError on symbols outside the vocabulary."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string of symbols, got {type(text).__name__}")
    bad = sorted({ch for ch in text if ch not in _SYMBOL_TO_ID})
    if bad:
        raise ValueError(f"symbols {bad} are not in the vocabulary; valid symbols: {' '.join(SYMBOLS)}")
    return np.array([_SYMBOL_TO_ID[ch] for ch in text], dtype=np.int32)


def decode(tokens: Iterable[int]) -> str:
    """The string of token ids, e.g. [6, 2, 0, 7] -> "BaXE"; raises ValueError on ids outside the vocabulary."""
    out = []
    for t in tokens:
        t = int(t)
        if not 0 <= t < VOCAB_SIZE:
            raise ValueError(f"token id {t} is outside the vocabulary 0..{VOCAB_SIZE - 1}")
        out.append(SYMBOLS[t])
    return "".join(out)


def one_hot(sequences: Sequence[Sequence[int] | np.ndarray], padded_length: int) -> np.ndarray:
    """Seed layout: float32 [N, padded_length, 8] one-hot, pre-padded with all-zero vectors."""
    out = np.zeros((len(sequences), padded_length, VOCAB_SIZE), dtype=np.float32)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        if len(seq) > padded_length:
            raise ValueError(f"sequence {i} has length {len(seq)} > padded_length {padded_length}")
        out[i, padded_length - len(seq) + np.arange(len(seq)), seq] = 1.0
    return out


def one_hot_labels(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Seed layout: float32 [N, num_classes] one-hot labels."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def enumerate_space(level: Level | str) -> Batch:
    """Every distinct sequence of a small level (easy has 5,120), in a fixed canonical order.

    The order: by length, then positions (lexicographic), then label, then distractor fill (lexicographic,
    the last cell varying fastest); splits.heldout_keys depends on it.
    """
    level = get_level(level) if isinstance(level, str) else level
    if not level.space_at_most(1_000_000):
        raise ValueError(f"level {level.name!r} holds over 1,000,000 distinct sequences: too many to enumerate")
    k, n_classes = level.num_relevant, level.num_classes
    labels_of_block, toks, lens, poss, labs = None, [], [], [], []
    for length in range(level.length[0], level.length[1] + 1):
        m = level.free_cells(length)
        # Every distractor fill in lexicographic order: row-major digits of 0 .. 4^m - 1.
        fills = (np.indices((len(DISTRACTOR_IDS),) * m).reshape(m, -1).T if m else np.zeros((1, 0), np.int64))
        fills = (fills + DISTRACTOR_IDS[0]).astype(np.uint8)
        labels_of_block = np.repeat(np.arange(n_classes, dtype=np.int32), len(fills))
        for pos in itertools.product(*[range(lo, hi + 1) for lo, hi in level.ranges_at(length)]):
            free = [p for p in range(1, length - 1) if p not in pos]
            block = np.full((len(labels_of_block), level.max_length), PAD_ID, np.uint8)
            block[:, 0], block[:, length - 1] = START, END
            block[:, free] = np.tile(fills, (n_classes, 1))
            for j, p in enumerate(pos):
                block[:, p] = X + ((labels_of_block >> (k - 1 - j)) & 1)
            toks.append(block)
            lens.append(np.full(len(block), length, np.int32))
            poss.append(np.tile(np.array(pos, np.int32), (len(block), 1)))
            labs.append(labels_of_block)
    return Batch(np.concatenate(toks), np.concatenate(lens), np.concatenate(poss).reshape(-1, k),
                 np.concatenate(labs))


def sequence_keys(batch: Batch) -> list[bytes]:
    """A hashable key per sequence (its token bytes), for membership tests between splits."""
    return [row[:n].tobytes() for row, n in zip(batch.tokens, batch.lengths)]
