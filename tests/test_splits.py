"""Fixed, disjoint splits: determinism, disjointness, the easy held-out partition."""

import numpy as np
import pytest

from qrsu_data import splits, task


def _keys(batch):
    return task.sequence_keys(batch)


def test_easy_full_size_splits_are_disjoint_and_use_the_whole_space():
    spec = splits.SplitSpec("easy")
    train = splits.split_examples(spec, "train")
    test = splits.split_examples(spec, "test")
    assert (len(train), len(test)) == (100_000, 10_000)
    held = splits.heldout_keys(spec)
    assert len(held) == 1024  # a fifth of 5,120
    train_keys, test_keys = set(_keys(train)), set(_keys(test))
    assert not train_keys & test_keys
    assert test_keys <= held and not train_keys & held
    assert len(train_keys) == 5120 - 1024  # train covers all of its part of the space
    assert len(test_keys) > 1000


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


@pytest.mark.parametrize("level", ["normal", "hard", "exp6b"])
def test_large_level_splits_are_disjoint_and_valid(level):
    spec = splits.SplitSpec(level, train_size=3000, test_size=2000)
    train = splits.split_examples(spec, "train")
    test = splits.split_examples(spec, "test")
    assert (len(train), len(test)) == (3000, 2000)
    assert not set(_keys(train)) & set(_keys(test))
    for batch in (train, test):
        for seq, label, pos in zip(batch.sequences(), batch.labels, batch.positions):
            assert task.check_sequence(seq, level) == (label, list(pos))


def test_train_rejects_candidates_that_are_test_sequences(monkeypatch):
    """Force collisions: a train chunk whose draws repeat the test draws must drop them."""
    spec = splits.SplitSpec("hard", train_size=500, test_size=500)
    test = splits.split_examples(spec, "test")
    real_generate = task.generate

    def colliding_generate(level, n, rng):
        fresh = real_generate(level, n, rng)
        # The first candidates of every round are test sequences.
        k = min(len(test), n // 2)
        fresh.tokens[:k], fresh.lengths[:k] = test.tokens[:k], test.lengths[:k]
        fresh.positions[:k], fresh.labels[:k] = test.positions[:k], test.labels[:k]
        return fresh

    monkeypatch.setattr(task, "generate", colliding_generate)
    train = splits.split_examples(spec, "train")
    assert len(train) == 500
    assert not set(_keys(train)) & set(_keys(test))


def test_same_spec_gives_identical_examples_and_chunks_are_independent():
    spec = splits.SplitSpec("moderate", train_size=25_000, test_size=100)
    a = splits.split_examples(spec, "train")
    # Chunk 2 computed alone (as a separate worker would) equals the same rows of the whole split.
    c2 = splits.chunk_examples(splits.SplitSpec("moderate", train_size=25_000, test_size=100), "train", 2)
    assert np.array_equal(a.tokens[20_000:], c2.tokens)
    b = splits.split_examples(spec, "train")
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    other_seed = splits.split_examples(splits.SplitSpec("moderate", train_size=25_000, test_size=100, seed=1),
                                       "train")
    assert not np.array_equal(a.tokens, other_seed.tokens)


def test_smaller_split_is_a_prefix_of_a_larger_one():
    small = splits.split_examples(splits.SplitSpec("easy", train_size=300, test_size=50), "test")
    large = splits.split_examples(splits.SplitSpec("easy"), "test")
    assert np.array_equal(small.tokens, large.tokens[:50])


def test_spec_names_and_bad_input():
    assert splits.SplitSpec("hard").name == "hard"
    assert splits.SplitSpec("hard", train_size=1000, seed=3).name == "hard-train1000-seed3"
    with pytest.raises(ValueError, match="unknown level"):
        splits.SplitSpec("impossible")
    with pytest.raises(ValueError, match="train_size must be a positive integer"):
        splits.SplitSpec("hard", train_size=0)
    with pytest.raises(ValueError, match="unknown split 'validation'; choose one of: train, test"):
        splits.SplitSpec("hard").size("validation")
    with pytest.raises(ValueError, match="too large to enumerate"):
        splits.heldout_keys(splits.SplitSpec("hard"))
