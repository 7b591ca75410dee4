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


@dataclasses.dataclass(frozen=True)
class Level:
    """A difficulty level: inclusive ranges of the length and of each relevant position."""

    name: str
    length: tuple[int, int]
    positions: tuple[tuple[int, int], ...]
    description: str = ""

    def __post_init__(self):
        lo, hi = self.length
        if not 3 <= lo <= hi:
            raise ValueError(f"level {self.name!r}: length range {self.length} must satisfy 3 <= lo <= hi")
        prev_hi = 0
        for i, (plo, phi) in enumerate(self.positions):
            if not prev_hi < plo <= phi:
                raise ValueError(
                    f"level {self.name!r}: position range {i} {(plo, phi)} must start after the previous "
                    f"range (which ends at {prev_hi}) and satisfy lo <= hi")
            prev_hi = phi
        if prev_hi > lo - 2:
            raise ValueError(f"level {self.name!r}: the last relevant position ({prev_hi}) must lie before the "
                             f"end symbol of the shortest sequence (position {lo - 1})")

    @property
    def num_relevant(self) -> int:
        """How many relevant symbols a sequence holds (2 for Exp. 6a, 3 for Exp. 6b)."""
        return len(self.positions)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in label-id order."""
        return CLASSES_6A if self.num_relevant == 2 else CLASSES_6B

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
        n_pos = 1
        for lo, hi in self.positions:
            n_pos *= hi - lo + 1
        total = 0
        for length in range(self.length[0], self.length[1] + 1):
            total += n_pos * self.num_classes * len(DISTRACTOR_IDS) ** (length - 2 - self.num_relevant)
        return total


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
"""Every level by name, in order of difficulty (exp6b last)."""


def get_level(name: str) -> Level:
    """Returns the level called ``name``; raises ValueError naming the valid levels otherwise."""
    try:
        return LEVELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown level {name!r}; choose one of: {', '.join(LEVELS)}") from None


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
    positions = np.stack(
        [rng.integers(lo, hi + 1, size=n, dtype=np.int32) for lo, hi in level.positions], axis=1
    ) if n else np.zeros((0, k), np.int32)
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
        for p, (lo, hi) in zip(positions, level.positions):
            if not lo <= p <= hi:
                raise ValueError(f"relevant position {p} is outside level {level.name!r}'s ranges {level.positions}")
    elif len(positions) not in (2, 3):
        raise ValueError(f"a sequence needs 2 or 3 relevant symbols (X or Y), found {len(positions)}")
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
    """Every distinct sequence of a small level (easy has 5,120), in a fixed canonical order."""
    level = get_level(level) if isinstance(level, str) else level
    size = level.space_size()
    if size > 1_000_000:
        raise ValueError(f"level {level.name!r} holds {size:.3g} distinct sequences: too many to enumerate")
    k = level.num_relevant
    toks, lens, poss, labs = [], [], [], []
    for length in range(level.length[0], level.length[1] + 1):
        for pos in itertools.product(*[range(lo, hi + 1) for lo, hi in level.positions]):
            free = [p for p in range(1, length - 1) if p not in pos]
            for label in range(level.num_classes):
                for fill in itertools.product(DISTRACTOR_IDS, repeat=len(free)):
                    row = np.full(level.max_length, PAD_ID, np.uint8)
                    row[0], row[length - 1] = START, END
                    row[free] = fill
                    for j, p in enumerate(pos):
                        row[p] = X + ((label >> (k - 1 - j)) & 1)
                    toks.append(row)
                    lens.append(length)
                    poss.append(pos)
                    labs.append(label)
    return Batch(np.stack(toks), np.array(lens, np.int32), np.array(poss, np.int32).reshape(-1, k),
                 np.array(labs, np.int32))


def sequence_keys(batch: Batch) -> list[bytes]:
    """A hashable key per sequence (its token bytes), for membership tests between splits."""
    return [row[:n].tobytes() for row, n in zip(batch.tokens, batch.lengths)]
