"""The task specification: vocabulary, levels, generator, encodings."""

import json
import re

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
    ("BaXbcdE", "2 to 8 relevant symbols"),
    ("BXXXXXXXXXE", "2 to 8 relevant symbols"),
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


# --- levels of your own, the name scheme, the length-generalisation suite ------------------------------------------

def test_class_names_follow_the_documented_scheme():
    assert task.class_names(2) == task.CLASSES_6A and task.class_names(3) == task.CLASSES_6B
    four = task.class_names(4)
    assert len(four) == 16 and four[:3] == ("XXXX", "XXXY", "XXYX") and four[-1] == "YYYY"
    assert len(set(task.class_names(8))) == 256 and task.class_names(8)[5] == "XXXXXYXY"
    for k in (1, 9):
        with pytest.raises(ValueError, match="2 to 8 relevant symbols"):
            task.class_names(k)


def test_four_relevant_symbols_generate_labelled_by_their_order():
    lv = task.get_level("len30to40_pos2to4_pos8to10_pos14to16_pos20to22")
    assert lv.num_classes == 16 and lv.classes == task.class_names(4)
    batch = task.generate(lv, 500, np.random.default_rng(0))
    for seq, label, pos in zip(batch.sequences(), batch.labels, batch.positions):
        assert task.check_sequence(seq, lv) == (label, list(pos))
        assert lv.classes[label] == "".join(task.SYMBOLS[seq[p]] for p in pos)


@pytest.mark.parametrize("name, length, positions", [
    ("len1000to1100_pos10to20_pos500to600", (1000, 1100), ((10, 20), (500, 600))),
    ("len9_pos1_pos3_pos5_pos7", (9, 9), ((1, 1), (3, 3), (5, 5), (7, 7))),
    ("len20to30_pos1to2_pos4_pos6to8", (20, 30), ((1, 2), (4, 4), (6, 8))),
])
def test_custom_level_names_and_json_round_trip(name, length, positions):
    lv = task.get_level(name)
    assert (lv.name, lv.length, lv.positions, lv.base) == (name, length, positions, None)
    assert task.level_name(length, positions) == name
    assert task.level_from_json(json.dumps(lv.to_json())) == lv
    assert task.custom_level(list(length), [list(p) for p in positions]) == lv
    assert re.fullmatch(r"[\w+\-.]+", name)  # a valid TFDS config name


def test_a_custom_level_with_the_ranges_of_a_standard_level_is_that_level():
    assert task.level_from_json('{"length": [100, 110], "positions": [[10, 20], [50, 60]]}') is task.LEVELS["hard"]
    with pytest.raises(ValueError, match="that level is named 'hard'; use that name"):
        task.get_level("len100to110_pos10to20_pos50to60")
    with pytest.raises(ValueError, match="that level is named 'len10_pos1_pos3'"):
        task.get_level("len010_pos1_pos3")
    with pytest.raises(ValueError, match="that level is named 'len9_pos1_pos3'"):
        task.get_level("len9to9_pos1_pos3")


@pytest.mark.parametrize("spec, message", [
    ('{"length": [10, 20], "positions": [[1, 2]]}', r"has 1 relevant position range\(s\); a level needs 2 to 8"),
    ('{"length": [30, 40], "positions": [[1,1],[2,2],[3,3],[4,4],[5,5],[6,6],[7,7],[8,8],[9,9]]}',
     r"has 9 relevant position range\(s\); a level needs 2 to 8 \(4 to 256 classes\)"),
    ('{"length": [10, 20], "positions": [[1, 5], [5, 6]]}', r"range 2 \(5, 6\) must start after range 1 .*not overlap"),
    ('{"length": [10, 20], "positions": [[5, 6], [1, 2]]}', r"range 2 \(1, 2\) must start after range 1 .*in order"),
    ('{"length": [10, 20], "positions": [[4, 2], [6, 7]]}', r"range 1 \(4, 2\) is unordered"),
    ('{"length": [10, 20], "positions": [[0, 2], [6, 7]]}', r"must start after the start symbol B"),
    ('{"length": [10, 20], "positions": [[1, 2], [6, 9]]}', r"last relevant position \(9\) must lie before the end "
                                                            r"symbol of the shortest sequence \(position 9\)"),
    ('{"length": [20, 10], "positions": [[1, 2], [4, 5]]}', r"length range \(20, 10\) must satisfy 3 <= lo <= hi"),
    ('{"length": [10, 20], "positions": [[1, "a"], [4, 5]]}', r"position range 1 must be \[lo, hi\]"),
    ('{"length": [10, 20]}', r"needs the keys length, positions and may have scale.*missing: \['positions'\]"),
    ('{"length": [10, 20], "positions": [[1, 2], [4, 5]], "name": "mine"}', r"unknown: \['name'\]"),
    ('{"length": [10, 20], ', r"does not parse"),
    ('[10, 20]', r"must be an object with keys length, positions"),
])
def test_bad_levels_are_refused_naming_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        task.level_from_json(spec)


def test_unknown_level_names_list_every_valid_form():
    for name in ("medium", "hard-foo", "len", "len10_pos1_posX", "hard-len5000-tail6000", "hard-len0"):
        with pytest.raises(ValueError, match=r"unknown level .*choose one of: a standard level \(easy, normal, "
                                             r"moderate, hard, nightmare, exp6b\); a level of your own named "
                                             r"len<LO>to<HI>_pos.*<level>-len<N>.*<level>-tail<N>"):
            task.get_level(name)


def test_scaled_level_keeps_the_positions_fractions_of_the_sequence():
    lv = task.get_level("hard-len5000")
    assert lv.name == "hard-len5000" and lv.base == "hard" and lv.max_length == 5000
    # hard: length 100-110, t1 10-20, t2 50-60; scaled by 5000/110, rounded half up.
    assert lv.length == (4545, 5000) and lv.positions == ((455, 909), (2273, 2727))
    assert task.scaled_level("hard", 5000) == lv
    for (a, b), (sa, sb) in zip(task.LEVELS["hard"].positions, lv.positions):
        assert abs(sa / 5000 - a / 110) < 1e-3 and abs(sb / 5000 - b / 110) < 1e-3
    assert task.get_level("exp6b-len1000").positions == ((91, 182), (300, 391), (600, 691))


def test_tail_level_keeps_the_positions_and_lengthens_the_tail():
    lv = task.get_level("hard-tail5000")
    assert lv.length == (4990, 5000) and lv.positions == task.LEVELS["hard"].positions and lv.base == "hard"
    custom = task.get_level("len1000to1100_pos10to20_pos500to600-tail5000")
    assert custom.length == (4900, 5000) and custom.positions == ((10, 20), (500, 600))


def test_lengthened_levels_must_be_longer_than_their_base():
    assert task.shortest_suite_length("hard", "len") == 122  # round(100 * 122 / 110) = 111 > 110
    assert task.shortest_suite_length("hard", "tail") == 121
    task.get_level("hard-len122")
    with pytest.raises(ValueError, match=r"longer than the longest of 'hard' \(110\).*choose N >= 122"):
        task.get_level("hard-len121")
    with pytest.raises(ValueError, match="choose N >= 121"):
        task.get_level("hard-tail120")
    with pytest.raises(ValueError, match="already lengthened; lengthen 'hard' instead"):
        task.scaled_level("hard-len5000", 6000)


def test_enumerate_space_keeps_its_canonical_order():
    """The vectorised enumeration yields exactly the order of the original nested loops (the held-out partition
    of easy, hence its records, depends on it)."""
    import itertools

    lv = task.get_level("len6to7_pos1_pos3to4")
    rows = []
    for length in range(lv.length[0], lv.length[1] + 1):
        for pos in itertools.product(*[range(lo, hi + 1) for lo, hi in lv.positions]):
            free = [p for p in range(1, length - 1) if p not in pos]
            for label in range(lv.num_classes):
                for fill in itertools.product(task.DISTRACTOR_IDS, repeat=len(free)):
                    row = np.full(lv.max_length, task.PAD_ID, np.uint8)
                    row[0], row[length - 1] = task.START, task.END
                    row[free] = fill
                    for j, p in enumerate(pos):
                        row[p] = task.X + ((label >> (lv.num_relevant - 1 - j)) & 1)
                    rows.append(row)
    space = task.enumerate_space(lv)
    assert len(space) == lv.space_size() == len(rows)
    assert np.array_equal(space.tokens, np.stack(rows))
    for seq, label, pos in zip(space.sequences(), space.labels, space.positions):
        assert task.check_sequence(seq, lv) == (label, list(pos))
