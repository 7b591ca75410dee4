"""Fixed, disjoint splits: determinism, disjointness, the easy held-out partition, config names, feasibility."""

import hashlib
import json

import numpy as np
import pytest

from qrsu_data import codec, splits, task

# sha256 of the first 10,000 records (chunk 0) of train and test of each standard config as version 1.0.0
# (commit be2e9a7) stored them: each record's length as 4 little-endian bytes, then the record. Chunks are
# independently seeded, so equal first chunks mean the same generation; the records of version 1.1.0 must match.
DIGESTS_1_0_0 = {
    "easy/train": "59e69ee4dfd9a234d1c763da9e6e21f78146f97b7a6d4a45c5eb10423443fb23",
    "easy/test": "f68f28cc7c288c91acd94709db0446b566edf52310418823fa50fa553c6bd541",
    "normal/train": "a14ba450e087ccc05012795cd9efe3ad7b4e14c06c084e005a27285b2268c2ba",
    "normal/test": "23cf9bbfa495e7890c6644bf80adf5bc9b648aa93b2b616e49ceb42f4142612c",
    "moderate/train": "e80b82b86e2e85386c5540e6b1775c802b785ecef82dab9b6d29fbcee298bf67",
    "moderate/test": "2efafc84fbf0cd4a58e79ddaaa573162ced262410e11f1753aa6a31c4b2adddc",
    "hard/train": "ca8e82cb655fdbf371f762e6568768ddb567c37428962058af64ce849dd932ab",
    "hard/test": "cf0f3607b61a206afaf367cf9d29574d582e169733b1a013da41b5e904623747",
    "nightmare/train": "2ee57a86c943c875f4c38859ade4f383af9c32139fccbbbf80abdb229b043bbe",
    "nightmare/test": "09926e95fd550f129668d12dc305a88fe97b0cbb76714978e0ce3fe54d61301e",
    "exp6b/train": "0ea3ff399c7cc713aabd6fe852eb108be29ca4f71ea73d0aefb81b2ef30c5931",
    "exp6b/test": "05d2ed96fc812123c425f18955ecc8e2748ca32e77b0579954bef36da94afbe3",
}


def _keys(batch):
    return task.sequence_keys(batch)


def _digest(records):
    return hashlib.sha256(b"".join(len(r).to_bytes(4, "little") + r for r in records)).hexdigest()


@pytest.mark.parametrize("level", list(task.LEVELS))
def test_standard_train_and_test_records_are_those_of_version_1_0_0(level):
    spec = splits.SplitSpec(level)  # the standard config, with its 10,000 validation sequences
    for split in ("train", "test"):
        records = codec.serialize_batch(splits.chunk_examples(spec, split, 0))  # what the builder writes
        assert _digest(records) == DIGESTS_1_0_0[f"{level}/{split}"], split


def test_easy_full_size_splits_are_disjoint_from_train_and_use_the_whole_space():
    spec = splits.SplitSpec("easy")
    train = splits.split_examples(spec, "train")
    validation = splits.split_examples(spec, "validation")
    test = splits.split_examples(spec, "test")
    assert (len(train), len(validation), len(test)) == (100_000, 10_000, 10_000)
    held = splits.heldout_keys(spec)
    assert len(held) == 1024  # a fifth of 5,120
    train_keys, val_keys, test_keys = set(_keys(train)), set(_keys(validation)), set(_keys(test))
    assert not train_keys & test_keys and not train_keys & val_keys
    assert test_keys <= held and val_keys <= held and not train_keys & held
    assert len(train_keys) == 5120 - 1024  # train covers all of its part of the space
    # The documented choice: validation draws from test's held-out part, so the two share nearly all of it.
    assert len(test_keys) > 1000 and len(val_keys) > 1000 and len(val_keys & test_keys) > 1000
    # ... but from its own seed stream: other draws in another order.
    assert not np.array_equal(validation.tokens[:100], test.tokens[:100])


def test_easy_holdout_is_stratified():
    spec = splits.SplitSpec("easy")
    space = task.enumerate_space("easy")
    held = splits.heldout_keys(spec)
    in_held = np.array([k in held for k in _keys(space)])
    for length in (7, 8):
        for label in range(4):
            members = (space.lengths == length) & (space.labels == label)
            frac = in_held[members].mean()
            assert abs(frac - 0.2) < 0.01, (length, label, frac)
    assert abs(spec.heldout_share() - in_held.mean()) < 0.01


@pytest.mark.parametrize("level", [lv for lv in task.LEVELS if lv != "easy"])
def test_large_level_splits_are_pairwise_disjoint_and_valid(level):
    spec = splits.SplitSpec(level, train_size=3000, validation_size=1500, test_size=2000)
    parts = {s: splits.split_examples(spec, s) for s in spec.splits}
    assert {s: len(b) for s, b in parts.items()} == {"train": 3000, "validation": 1500, "test": 2000}
    keys = {s: set(_keys(b)) for s, b in parts.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]
    for batch in parts.values():
        for seq, label, pos in zip(batch.sequences(), batch.labels, batch.positions):
            assert task.check_sequence(seq, level) == (label, list(pos))


def test_later_splits_reject_candidates_of_earlier_ones(monkeypatch):
    """Force collisions: validation candidates that repeat test, train candidates that repeat validation."""
    spec = splits.SplitSpec("hard", train_size=500, validation_size=300, test_size=500)
    test = splits.split_examples(spec, "test")
    validation = splits.split_examples(spec, "validation")
    real_generate = task.generate

    def colliding(source):
        def generate(level, n, rng):
            fresh = real_generate(level, n, rng)
            k = min(len(source), n // 2)  # the first candidates of every round repeat the source split
            fresh.tokens[:k], fresh.lengths[:k] = source.tokens[:k], source.lengths[:k]
            fresh.positions[:k], fresh.labels[:k] = source.positions[:k], source.labels[:k]
            return fresh
        return generate

    monkeypatch.setattr(task, "generate", colliding(test))
    other = splits.SplitSpec("hard", train_size=500, validation_size=301, test_size=500)  # a fresh cache key
    got = splits.split_examples(other, "validation")
    assert len(got) == 301 and not set(_keys(got)) & set(_keys(test))
    monkeypatch.setattr(task, "generate", colliding(validation))
    train = splits.split_examples(spec, "train")
    assert len(train) == 500
    assert not set(_keys(train)) & set(_keys(test)) and not set(_keys(train)) & set(_keys(validation))


def test_same_spec_gives_identical_examples_and_chunks_are_independent():
    spec = splits.SplitSpec("moderate", train_size=25_000, validation_size=100, test_size=100)
    a = splits.split_examples(spec, "train")
    # Chunk 2 computed alone (as a separate worker would) equals the same rows of the whole split.
    c2 = splits.chunk_examples(splits.SplitSpec("moderate", train_size=25_000, validation_size=100, test_size=100),
                               "train", 2)
    assert np.array_equal(a.tokens[20_000:], c2.tokens)
    b = splits.split_examples(spec, "train")
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    other_seed = splits.split_examples(dataclass_replace(spec, seed=1), "train")
    assert not np.array_equal(a.tokens, other_seed.tokens)


def dataclass_replace(spec, **kwargs):
    import dataclasses

    return dataclasses.replace(spec, **kwargs)


def test_smaller_split_is_a_prefix_of_a_larger_one():
    for split in ("test", "validation"):
        small = splits.split_examples(splits.SplitSpec("easy", train_size=300, validation_size=50, test_size=50), split)
        large = splits.split_examples(splits.SplitSpec("easy"), split)
        assert np.array_equal(small.tokens, large.tokens[:50])


def test_spec_names_and_bad_input():
    assert splits.SplitSpec("hard").name == "hard"
    assert splits.SplitSpec("hard", train_size=1000, seed=3).name == "hard-train1000-seed3"
    assert splits.SplitSpec("hard", validation_size=0).splits == ("train", "test")
    with pytest.raises(ValueError, match="unknown level"):
        splits.SplitSpec("impossible")
    with pytest.raises(ValueError, match="train_size must be a positive integer"):
        splits.SplitSpec("hard", train_size=0)
    with pytest.raises(ValueError, match="validation_size must be an integer >= 0, got -1"):
        splits.SplitSpec("hard", validation_size=-1)
    with pytest.raises(ValueError, match="unknown split 'dev'; choose one of: train, validation, test"):
        splits.SplitSpec("hard").size("dev")
    with pytest.raises(ValueError, match="config 'hard-validation0' has no 'validation' split; its splits: "
                                         "train, test"):
        splits.SplitSpec("hard", validation_size=0).size("validation")
    with pytest.raises(ValueError, match="too large to enumerate"):
        splits.heldout_keys(splits.SplitSpec("hard"))


@pytest.mark.parametrize("name, fields", [
    ("hard-train1000-test100-seed3", {"level": "hard", "train_size": 1000, "test_size": 100, "seed": 3}),
    ("exp6b", {"level": "exp6b"}),
    ("easy-validation500-holdout0.3", {"level": "easy", "validation_size": 500, "holdout_fraction": 0.3}),
    ("len1000to1100_pos10to20_pos500to600-train1000",
     {"length": [1000, 1100], "positions": [[10, 20], [500, 600]], "train_size": 1000}),
    ("hard-len5000", {"level": "hard-len5000"}),
    ("hard-tail2000-test100-seed7", {"level": "hard-tail2000", "test_size": 100, "seed": 7}),
    ("len20to30_pos2_pos5_pos9_pos12-train600-validation0",
     {"length": [20, 30], "positions": [2, 5, 9, 12], "train_size": 600, "validation_size": 0}),
])
def test_config_names_and_json_round_trip(name, fields):
    spec = splits.SplitSpec.parse(name)
    assert spec.name == name
    assert splits.SplitSpec.parse(json.dumps(fields)) == spec == splits.SplitSpec.parse(fields)
    assert splits.SplitSpec.parse(json.dumps(spec.to_json())) == spec


@pytest.mark.parametrize("name, message", [
    ("hard-train", r"unknown config 'hard-train' \('train' is not a suffix train<N>"),
    ("hard-foo1", r"'foo1' is not a suffix"),
    ("hard-train100000", r"that config is named 'hard': use that name"),
    ("hard-seed0", r"that config is named 'hard'"),
    ("hard-test100-train1000", r"that config is named 'hard-train1000-test100'"),
    ("hard-train5-train6", r"'train6' repeats a suffix"),
    ("hardest", r"unknown config 'hardest' \(unknown level 'hardest'\); choose one of: easy, normal, moderate, "
                r"hard, nightmare, exp6b, a level of your own.*-validation<N>.*JSON"),
    ("len100to110_pos10to20_pos50to60", r"that level is named 'hard'"),
    ("len10_pos1", r"config 'len10_pos1': level 'len10_pos1' has 1 relevant position range"),
    ("hard-len5000-train1000", r"config 'hard-len5000' is test-only .* it has no train split"),
    ("hard-len5000-validation10", r"it has no validation split"),
    ("hard-len120", r"choose N >= 122"),
    ('{"level": "hard", "train_sizes": 5}', r"unknown config JSON key\(s\) \['train_sizes'\]; valid keys: level"),
    ('{"level": "hard", "length": [100, 110], "positions": [[1, 2], [4, 5]]}', r"gives both 'level' and ranges"),
    ('{"train_size": 5}', r"config JSON needs a level"),
    ('{"level": "hard", "seed": -2}', r"seed must be a non-negative integer, got -2"),
    ('{"level": "hard", "test_size": "10"}', r"test_size must be a positive integer, got '10'"),
    ('{"level": "hard",', r"config JSON .* does not parse"),
])
def test_bad_config_names_and_json_are_refused_naming_the_problem(name, message):
    with pytest.raises(ValueError, match=message):
        splits.SplitSpec.parse(name)


def test_sizes_the_space_cannot_hold_are_refused():
    # Four sequences, one per stratum: a fifth of a stratum of one rounds to none, so nothing is held out.
    with pytest.raises(ValueError, match=r"holds only 4 distinct sequences.*leaves the held-out part, which test "
                                         r"and validation draw from, empty"):
        splits.SplitSpec.parse("len4_pos1_pos2")
    # Held out 0.9: strata of four keep none for train.
    with pytest.raises(ValueError, match=r"leaves the remaining part, which train draws from, empty"):
        splits.SplitSpec.parse("len5_pos1_pos2-holdout0.9")
    # 1,048,576 sequences (too many to enumerate): 600,000 test draws would cover over half of the space.
    with pytest.raises(ValueError, match=r"the test sequences \(600,000 draws\) would cover about 57% .*so "
                                         r"validation, which must avoid them, could not be drawn"):
        splits.SplitSpec.parse("len13_pos1_pos2-test600000")
    with pytest.raises(ValueError, match=r"the test and validation sequences \(600,000 draws\).*so train"):
        splits.SplitSpec.parse("len13_pos1_pos2-validation300000-test300000")
    splits.SplitSpec.parse("len13_pos1_pos2-validation100000-test100000")  # 19%: fine


def test_a_tiny_enumerable_level_builds_its_three_splits():
    spec = splits.SplitSpec.parse("len6_pos1_pos3-train200-validation50-test50")
    assert spec.enumerable and spec.level_def.space_size() == 64
    got = {s: splits.split_examples(spec, s) for s in spec.splits}
    assert {s: len(b) for s, b in got.items()} == {"train": 200, "validation": 50, "test": 50}
    held = splits.heldout_keys(spec)
    assert set(_keys(got["test"])) | set(_keys(got["validation"])) <= held
    assert not set(_keys(got["train"])) & held


def test_the_suite_lists_test_only_configs_longer_than_the_level():
    assert splits.suite("hard") == [f"hard-{k}{n}" for k in ("len", "tail")
                                    for n in (200, 500, 1000, 2000, 5000, 10000)]
    # nightmare's sequences reach 500: only lengthenings whose every sequence is longer.
    assert splits.suite("nightmare") == [f"nightmare-{k}{n}" for k in ("len", "tail")
                                         for n in (1000, 2000, 5000, 10000)]
    assert splits.suite("len10_pos1_pos3", lengths=(50,)) == ["len10_pos1_pos3-len50", "len10_pos1_pos3-tail50"]
    with pytest.raises(ValueError, match="already lengthened"):
        splits.suite("hard-len5000")
    for name in splits.suite("exp6b"):
        spec = splits.SplitSpec.parse(name)
        assert spec.test_only and spec.splits == ("test",) and spec.size("test") == 10_000
        assert spec.level_def.length[0] > task.LEVELS["exp6b"].max_length
        assert spec.level_def.classes == task.LEVELS["exp6b"].classes


def test_a_test_only_config_draws_a_plain_test_split():
    spec = splits.SplitSpec.parse("easy-tail20-test300")
    assert not spec.enumerable  # nothing held out without a train split, even where the space is small
    test = splits.split_examples(spec, "test")
    assert len(test) == 300 and (test.lengths >= 19).all()
    for seq, label, pos in zip(test.sequences(), test.labels, test.positions):
        assert task.check_sequence(seq, spec.level_def) == (label, list(pos))
    with pytest.raises(ValueError, match="has no 'train' split; its splits: test"):
        splits.chunk_examples(spec, "train", 0)
