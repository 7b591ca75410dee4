"""The task specification: vocabulary, levels, generator, encodings."""

import numpy as np
import pytest

from qrsu_data import task

# The ranges of ../shared/REFERENCE.md (the seed generator's get_predefined_generator), inclusive.
EXPECTED_LEVELS = {
    "easy": ((7, 8), ((1, 2), (4, 5))),
    "normal": ((30, 40), ((2, 5), (20, 27))),
    "moderate": ((60, 80), ((10, 20), (45, 54))),
    "hard": ((100, 110), ((10, 20), (50, 60))),
    "nightmare": ((300, 500), ((10, 80), (250, 290))),
    "exp6b": ((100, 110), ((10, 20), (33, 43), (66, 76))),
}


def test_vocabulary_and_classes():
    assert task.SYMBOLS == ("X", "Y", "a", "b", "c", "d", "B", "E")
    assert (task.X, task.Y, task.START, task.END) == (0, 1, 6, 7)
    assert task.CLASSES_6A == ("Q", "R", "S", "U")
    assert task.CLASSES_6B == ("Q", "R", "S", "U", "V", "A", "B", "C")


def test_levels_match_reference():
    assert list(task.LEVELS) == list(EXPECTED_LEVELS)
    for name, (length, positions) in EXPECTED_LEVELS.items():
        lv = task.get_level(name)
        assert lv.length == length and lv.positions == positions
        assert lv.padded_length == length[1] + 1
    assert task.get_level("easy").padded_length == 9
    assert task.get_level("nightmare").padded_length == 501
    assert task.get_level("exp6b").classes == task.CLASSES_6B
    assert task.get_level("hard").num_classes == 4


def test_easy_space_size():
    assert task.get_level("easy").space_size() == 5120
    space = task.enumerate_space("easy")
    assert len(space) == 5120
    assert len(set(task.sequence_keys(space))) == 5120
    for seq, label, pos in zip(space.sequences(), space.labels, space.positions):
        assert task.check_sequence(seq, "easy") == (label, list(pos))


def test_unknown_level():
    with pytest.raises(ValueError, match="unknown level 'medium'.*easy, normal, moderate, hard, nightmare, exp6b"):
        task.get_level("medium")


@pytest.mark.parametrize("name", list(EXPECTED_LEVELS))
def test_generated_sequences_follow_the_rules(name):
    lv = task.get_level(name)
    batch = task.generate(lv, 2000, np.random.default_rng(1))
    assert batch.tokens.dtype == np.uint8
    for seq, length, label, pos in zip(batch.sequences(), batch.lengths, batch.labels, batch.positions):
        assert len(seq) == length
        assert lv.length[0] <= length <= lv.length[1]
        got_label, got_pos = task.check_sequence(seq, lv)  # B first, E last, relevant exactly at pos
        assert got_pos == list(pos) and got_label == label
        relevant = [task.SYMBOLS[seq[p]] for p in pos]
        assert lv.classes[label] == {
            "XX": "Q", "XY": "R", "YX": "S", "YY": "U",
            "XXX": "Q", "XXY": "R", "XYX": "S", "XYY": "U", "YXX": "V", "YXY": "A", "YYX": "B", "YYY": "C",
        }["".join(relevant)]
    # Beyond each length the padded array holds only PAD_ID.
    cols = np.arange(lv.max_length)[None, :]
    assert np.all(batch.tokens[cols >= batch.lengths[:, None]] == task.PAD_ID)


def _assert_uniform(values, lo, hi, n, rel_tol):
    counts = np.bincount(np.asarray(values) - lo, minlength=hi - lo + 1)
    assert len(counts) == hi - lo + 1, "value outside range"
    expected = n / (hi - lo + 1)
    assert counts.min() > 0, "some value never occurs"
    assert np.all(np.abs(counts - expected) < rel_tol * expected), (counts, expected)


@pytest.mark.parametrize("name", ["easy", "hard", "nightmare", "exp6b"])
def test_distribution_is_uniform(name):
    lv = task.get_level(name)
    n = 200_000
    batch = task.generate(lv, n, np.random.default_rng(7))
    # Tolerances are many standard deviations wide for these counts (the widest range, nightmare's
    # 201 lengths, gets ~1,000 draws each: sd ~3%).
    _assert_uniform(batch.labels, 0, lv.num_classes - 1, n, 0.05)
    _assert_uniform(batch.lengths, *lv.length, n, 0.2)
    for j, (lo, hi) in enumerate(lv.positions):
        _assert_uniform(batch.positions[:, j], lo, hi, n, 0.1)
    # Distractors: uniform over a b c d, and never X or Y outside the relevant positions.
    inner = batch.tokens[:, 1:].ravel()
    inner = inner[(inner != task.PAD_ID) & (inner != task.END)]
    distractors = inner[inner >= 2]
    _assert_uniform(distractors, 2, 5, len(distractors), 0.01)
    assert (inner <= 1).sum() == n * lv.num_relevant


def test_generator_is_deterministic_and_needs_a_generator():
    a = task.generate("hard", 100, np.random.default_rng(3))
    b = task.generate("hard", 100, np.random.default_rng(3))
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        task.generate("hard", 10, 3)


def test_encode_decode_roundtrip():
    ids = task.encode("BaXbcYdE")
    assert ids.tolist() == [6, 2, 0, 3, 4, 1, 5, 7]
    assert task.decode(ids) == "BaXbcYdE"
    assert task.check_sequence(ids) == (1, [2, 5])  # X then Y: class R
    with pytest.raises(ValueError, match=r"symbols \['Z', 'q'\] are not in the vocabulary"):
        task.encode("BaZqE")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        task.decode([6, 8])


@pytest.mark.parametrize("text, message", [
    ("aXbYE", "start with 'B'"),
    ("BXaBYE", "only appear at the start and the end"),
    ("BaXbcdE", "2 or 3 relevant symbols"),
])
def test_check_sequence_rejects_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        task.check_sequence(task.encode(text))


def test_one_hot_matches_seed_layout():
    seqs = [task.encode("BaXbYE"), task.encode("BXcdYdcE")]
    x = task.one_hot(seqs, 9)
    assert x.shape == (2, 9, 8) and x.dtype == np.float32
    # Pre-padding: all-zero vectors first, the last step is the last real symbol.
    assert np.all(x[0, :3] == 0) and np.all(x[0, 3:].sum(-1) == 1)
    assert x[0, 3:].argmax(-1).tolist() == seqs[0].tolist()
    assert x[1, 1:].argmax(-1).tolist() == seqs[1].tolist() and np.all(x[1, 0] == 0)
    y = task.one_hot_labels([0, 3], 4)
    assert y.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="padded_length"):
        task.one_hot(seqs, 5)
