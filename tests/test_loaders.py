"""The Grain loaders and the split decoder: batch layout, shuffling, exactly-once evaluation, checkpoints, bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from qrsu_data import catalog, codec, loaders, splits, store, task
from qrsu_data.temporal_order import Builder, TemporalOrderConfig

SIZES = {"train_size": 1000, "validation_size": 200, "test_size": 250}
HARD = "hard-train1000-validation200-test250"
EXP6B = "exp6b-train1000-validation200-test250"
# The length-generalisation suite at length 5,000 (test-only), and a level of your own with 4 relevant symbols.
LONG = ("hard-len5000-test300", "hard-tail5000-test300")
FOUR = "len30to40_pos2to4_pos8to10_pos14to16_pos20to22-train500-validation100-test100"
ONE_SHARD = {"shard_index": 0, "shard_count": 1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    store.build("hard", d, **SIZES)
    store.build("exp6b", d, **SIZES)
    for config in (*LONG, FOUR):
        store.build(config, d)
    return d


def _examples(data_dir, config, split):
    src = tfds.builder_from_directory(os.fspath(store.dataset_dir(config, data_dir))).as_data_source()[split]
    return [src[i] for i in range(len(src))]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same_batches(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def _row_ids(data_dir, config, split, padding="pre"):
    """Maps a padded token row to its record index (every hard sequence is distinct)."""
    arrays = loaders.open_split(config, split, data_dir)
    rows = arrays.gather_tokens(np.arange(len(arrays)), padding)
    ids = {r.tobytes(): i for i, r in enumerate(rows)}
    assert len(ids) == len(arrays)
    return ids


def _copy_dataset(data_dir, tmp_path, config=HARD):
    """A private copy of a built config, to damage without touching the shared one."""
    dst = tmp_path / "copy"
    shutil.copytree(store.dataset_dir(config, data_dir).parent.parent, dst / store.DATASET_NAME)
    return dst


def _train_file(data_dir, config=HARD):
    (path, n), = catalog.split_files(config, "train", data_dir)
    return path, n


# --- batch layout ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,t", [(HARD, 110), (EXP6B, 110)])
def test_train_batches_have_static_shapes_and_dtypes(data_dir, config, t):
    assert loaders.max_length(config) == t
    for batch in _take(loaders.train_loader(config, batch_size=48, seed=0, data_dir=data_dir, **ONE_SHARD), 25):
        assert set(batch) == {"tokens", "lengths", "label", "mask"}
        assert batch["tokens"].shape == (48, t) and batch["tokens"].dtype == np.int32
        for k, dtype in (("lengths", np.int32), ("label", np.int32), ("mask", np.bool_)):
            assert batch[k].shape == (48,) and batch[k].dtype == dtype, k
        assert batch["mask"].all()
        assert batch["label"].max() < loaders.num_classes(config)


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("pad_id", [loaders.PAD_ID, -1, 8])
def test_padding_layouts_hold_the_stored_sequences(data_dir, padding, pad_id):
    examples = _examples(data_dir, HARD, "test")
    batches = list(loaders.eval_loader(HARD, batch_size=64, data_dir=data_dir, padding=padding, pad_id=pad_id,
                                       **ONE_SHARD))
    tokens = np.concatenate([b["tokens"] for b in batches])
    lengths = np.concatenate([b["lengths"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    t = loaders.max_length(HARD)
    for i, ex in enumerate(examples):
        n = ex["length"]
        assert lengths[i] == n and labels[i] == ex["label"]
        real, pad = (tokens[i, t - n:], tokens[i, :t - n]) if padding == "pre" else (tokens[i, :n], tokens[i, n:])
        assert np.array_equal(real, ex["tokens"]) and (pad == pad_id).all()
    if padding == "pre":  # the seed's layout: the last time step is the end symbol of every sequence
        assert (tokens[:len(examples), -1] == task.END).all()


def test_exp6b_labels_and_positions_round_trip(data_dir):
    arrays = loaders.open_split(EXP6B, "train", data_dir)
    expected = splits.split_examples(splits.SplitSpec("exp6b", **SIZES), "train")
    assert np.array_equal(arrays.labels, expected.labels) and np.array_equal(arrays.lengths, expected.lengths)
    assert np.array_equal(arrays.positions, expected.positions)
    assert np.array_equal(arrays.tokens, expected.tokens)  # both post-padded with 255


def test_validation_split_is_served_like_any_other(data_dir):
    assert loaders.split_names(HARD) == ("train", "validation", "test")
    assert loaders.split_size(HARD, "validation", data_dir) == 200
    expected = splits.split_examples(splits.SplitSpec("hard", **SIZES), "validation")
    batches = list(loaders.eval_loader(HARD, "validation", batch_size=64, data_dir=data_dir, padding="post",
                                       **ONE_SHARD))
    tokens = np.concatenate([b["tokens"][b["mask"]] for b in batches])
    assert len(tokens) == 200 and np.array_equal(tokens, expected.tokens.astype(np.int32))
    batch = next(loaders.train_loader(HARD, split="validation", batch_size=50, seed=0, data_dir=data_dir, **ONE_SHARD))
    assert batch["tokens"].shape == (50, 110)


@pytest.mark.parametrize("config", LONG)
def test_the_suite_loads_at_length_5000(data_dir, config):
    """No per-level assumption in the loaders: 5,000-step batches of a test-only config, records as generated."""
    spec = splits.SplitSpec.parse(config)
    assert loaders.split_names(config) == ("test",) and loaders.max_length(config) == 5000
    assert loaders.num_classes(config) == 4 and loaders.level_of(config).base == "hard"
    expected = splits.split_examples(spec, "test")
    batches = list(loaders.eval_loader(config, batch_size=128, data_dir=data_dir, **ONE_SHARD))
    assert [b["tokens"].shape for b in batches] == [(128, 5000)] * 3
    tokens = np.concatenate([b["tokens"][b["mask"]] for b in batches])
    lengths = np.concatenate([b["lengths"][b["mask"]] for b in batches])
    assert np.array_equal(lengths, expected.lengths) and (lengths >= spec.level_def.length[0]).all()
    assert (tokens[:, -1] == task.END).all()  # pre-padded: every sequence ends at the last step
    for row, n, seq in zip(tokens, lengths, expected.sequences()):
        assert np.array_equal(row[5000 - n:], seq)


def test_a_level_of_your_own_with_four_relevant_symbols_loads(data_dir):
    assert loaders.num_classes(FOUR) == 16 and loaders.max_length(FOUR) == 40
    arrays = loaders.open_split(FOUR, "train", data_dir)
    for seq_tokens, n, label, pos in zip(arrays.tokens, arrays.lengths, arrays.labels, arrays.positions):
        assert task.check_sequence(seq_tokens[:n], loaders.level_of(FOUR)) == (label, list(pos))
    assert len(set(arrays.labels.tolist())) == 16


def test_configs_are_compatible_when_their_classes_are():
    from qrsu_data import catalog

    catalog.check_compatible("hard", "hard-len5000")
    catalog.check_compatible("hard-train1000", "len1000to1100_pos10to20_pos500to600-tail5000")
    with pytest.raises(ValueError, match=r"config 'exp6b-len1000' has 8 classes \(3 relevant symbols\) but the "
                                         r"model was trained on 'hard', with 4"):
        catalog.check_compatible("hard", "exp6b-len1000")
    assert catalog.suite("hard-train1000") == splits.suite("hard")
    assert catalog.is_test_only("hard-tail500") and not catalog.is_test_only("hard")


# --- shuffling and epochs ---------------------------------------------------------------------------------------

def test_every_epoch_is_a_fresh_permutation_without_remainder(data_dir):
    ids = _row_ids(data_dir, HARD, "train")
    per_epoch = 1000 // 64  # 15 full batches; the 40 examples left over are dropped, differently each epoch
    it = loaders.train_loader(HARD, batch_size=64, seed=7, data_dir=data_dir, **ONE_SHARD)
    epochs = []
    for _ in range(3):
        order = [ids[row.tobytes()] for b in _take(it, per_epoch) for row in b["tokens"]]
        assert len(order) == len(set(order)) == per_epoch * 64
        epochs.append(order)
    assert epochs[0] != epochs[1] != epochs[2]
    assert set(epochs[0]) != set(epochs[1])  # a different remainder is dropped
    assert len(set().union(*epochs)) > 960


def test_same_seed_same_batches_other_seed_other_batches(data_dir):
    kw = dict(batch_size=32, data_dir=data_dir, **ONE_SHARD)
    a = _take(loaders.train_loader(HARD, seed=1, **kw), 40)
    assert _same_batches(a, _take(loaders.train_loader(HARD, seed=1, **kw), 40))
    assert not _same_batches(a, _take(loaders.train_loader(HARD, seed=2, **kw), 40))


def test_batches_do_not_depend_on_reading_threads(data_dir):
    kw = dict(batch_size=32, seed=3, data_dir=data_dir, **ONE_SHARD)
    assert _same_batches(_take(loaders.train_loader(HARD, num_threads=0, **kw), 70),
                         _take(loaders.train_loader(HARD, num_threads=3, prefetch=5, **kw), 70))


@pytest.mark.slow
def test_worker_processes_yield_the_same_batches(data_dir):
    kw = dict(batch_size=100, seed=3, data_dir=data_dir, **ONE_SHARD)
    it = loaders.train_loader(HARD, worker_count=2, **kw)
    try:
        got = _take(it, 12)
    finally:
        it.close()
    assert _same_batches(got, _take(loaders.train_loader(HARD, **kw), 12))


def test_train_shards_are_disjoint_and_equal(data_dir):
    ids = _row_ids(data_dir, HARD, "train")
    seen = []
    for index in range(3):
        it = loaders.train_loader(HARD, batch_size=111, seed=0, data_dir=data_dir, shard_index=index, shard_count=3)
        seen.append({ids[row.tobytes()] for b in _take(it, 3) for row in b["tokens"]})
        assert len(seen[-1]) == 333  # 1000 // 3 examples a shard, all of them in 3 batches of 111
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_default_shard_is_the_jax_process(data_dir):
    import jax

    assert (jax.process_index(), jax.process_count()) == (0, 1)
    kw = dict(batch_size=50, seed=0, data_dir=data_dir)
    assert _same_batches(_take(loaders.train_loader(HARD, **kw), 5), _take(loaders.train_loader(HARD, **kw,
                                                                                              **ONE_SHARD), 5))


# --- evaluation -------------------------------------------------------------------------------------------------

def test_eval_sees_every_example_exactly_once_and_masks_the_filler(data_dir):
    ids = _row_ids(data_dir, HARD, "test")
    loader = loaders.eval_loader(HARD, batch_size=64, data_dir=data_dir, **ONE_SHARD)
    for _ in range(2):  # re-iterable: every pass is whole
        batches = list(loader)
        assert len(batches) == 4 == loaders.num_eval_batches(250, 64)
        assert all(b["tokens"].shape == (64, 110) for b in batches)
        assert [int(b["mask"].sum()) for b in batches] == [64, 64, 64, 58]
        real = [ids[row.tobytes()] for b in batches for row in b["tokens"][b["mask"]]]
        assert real == list(range(250))


def test_eval_from_an_example_on_goes_on_where_an_earlier_pass_stopped(data_dir):
    # A stopped evaluation at length resumes so (pipelines.engine.snapshots.Tally).
    ids = _row_ids(data_dir, HARD, "test")
    batches = list(loaders.eval_loader(HARD, batch_size=64, data_dir=data_dir, start=100, limit=230, **ONE_SHARD))
    assert [int(b["mask"].sum()) for b in batches] == [64, 64, 2] and len(batches) == loaders.num_eval_batches(130, 64)
    assert [ids[row.tobytes()] for b in batches for row in b["tokens"][b["mask"]]] == list(range(100, 230))
    assert [int(i) for b in batches for i in b["index"][b["mask"]]] == list(range(100, 230))
    for start in (-1, 230):
        with pytest.raises(ValueError, match=r"start must be in \[0, 230\)"):
            loaders.eval_loader(HARD, batch_size=64, data_dir=data_dir, start=start, limit=230, **ONE_SHARD)


@pytest.mark.parametrize("count", [2, 3, 7])
def test_sharded_eval_covers_the_split_once_in_lockstep(data_dir, count):
    ids = _row_ids(data_dir, HARD, "test")
    seen, lengths = [], set()
    for index in range(count):
        batches = list(loaders.eval_loader(HARD, batch_size=16, data_dir=data_dir, shard_index=index,
                                           shard_count=count))
        lengths.add(len(batches))
        seen += [ids[row.tobytes()] for b in batches for row in b["tokens"][b["mask"]]]
    assert lengths == {loaders.num_eval_batches(250, 16, count)}
    assert sorted(seen) == list(range(250))


def test_masked_accuracy_counts_each_test_example_once(data_dir):
    labels = [ex["label"] for ex in _examples(data_dir, HARD, "test")]
    correct = total = 0
    for b in loaders.eval_loader(HARD, batch_size=96, data_dir=data_dir, **ONE_SHARD):
        correct += int(((b["label"] == 0) & b["mask"]).sum())  # a model that always answers class 0
        total += int(b["mask"].sum())
    assert total == loaders.split_size(HARD, "test", data_dir) == 250
    assert correct == labels.count(0)


# --- checkpointing ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [3, 15, 31])  # inside the first epoch, at its end, inside the third
def test_restored_iterator_yields_the_batches_the_original_would(data_dir, steps):
    kw = dict(batch_size=64, seed=5, data_dir=data_dir, **ONE_SHARD)
    it = loaders.train_loader(HARD, **kw)
    _take(it, steps)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 20)
    restored = loaders.train_loader(HARD, **kw)
    restored.set_state(state)
    assert _same_batches(_take(restored, 20), expected)


def test_orbax_saves_and_restores_the_iterator(data_dir, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    kw = dict(batch_size=32, seed=0, data_dir=data_dir, **ONE_SHARD)
    it = loaders.train_loader(HARD, **kw)
    _take(it, 40)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(40, args=ocp.args.Composite(loader=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, 10)
        restored = loaders.train_loader(HARD, **kw)
        mngr.restore(40, args=ocp.args.Composite(loader=grain.checkpoint.CheckpointRestore(restored)))
    assert _same_batches(_take(restored, 10), expected)


# --- the decoder ------------------------------------------------------------------------------------------------

def _entries(tokens, length, label, positions):
    return {
        b"tokens": codec._map_entry(b"tokens", codec._bytes_feature(np.asarray(tokens, np.uint8).tobytes())),
        b"length": codec._map_entry(b"length", codec._int64_feature([length])),
        b"label": codec._map_entry(b"label", codec._int64_feature([label])),
        b"positions": codec._map_entry(b"positions", codec._int64_feature(list(positions))),
    }


def test_decoder_reads_features_in_any_order():
    batch = splits.split_examples(splits.SplitSpec("hard", train_size=300, test_size=100), "test")
    rng = np.random.default_rng(0)
    recs = []
    for seq, label, pos in zip(batch.sequences(), batch.labels, batch.positions):
        entries = list(_entries(seq, len(seq), int(label), pos).values())
        recs.append(codec._field(1, b"".join(entries[i] for i in rng.permutation(4))))
    arrays = codec.decode_records(recs, "hard")
    assert np.array_equal(arrays.lengths, batch.lengths) and np.array_equal(arrays.labels, batch.labels)
    assert np.array_equal(arrays.positions, batch.positions) and np.array_equal(arrays.tokens, batch.tokens)


def test_decoder_hands_unknown_layouts_to_the_fallback_and_rejects_garbage():
    seq = task.encode("BaXbcYdE").astype(np.uint8)
    canonical = codec.serialize(seq, 8, 1, np.array([2, 5]))
    # The same example with `length` as an unpacked int64 (wire type 0): valid protobuf, not the fast layout.
    e = _entries(seq, 8, 1, [2, 5])
    e[b"length"] = codec._map_entry(b"length", codec._field(3, bytes([0x08, 8])))
    unpacked = codec._field(1, e[b"tokens"] + e[b"length"] + e[b"label"] + e[b"positions"])
    calls = []

    def fallback(record):
        calls.append(record)
        return {"tokens": seq, "length": 8, "label": 1, "positions": [2, 5]}

    arrays = codec.decode_records([canonical, unpacked], "easy", fallback=fallback)
    assert calls == [unpacked]
    assert np.array_equal(arrays.tokens[0], arrays.tokens[1]) and list(arrays.lengths) == [8, 8]
    with pytest.raises(codec.CorruptSplitError, match=r"record 1 of some\.file cannot be decoded"):
        codec.decode_records([canonical, b"\x0a\x05garbage"], "easy", source="some.file")
    with pytest.raises(codec.CorruptSplitError, match="not a valid 'easy' example"):
        bad = codec.serialize(np.array([6, 2, 9, 2, 2, 1, 2, 7], np.uint8), 8, 1, np.array([2, 5]))
        codec.decode_records([bad], "easy")


@pytest.mark.parametrize("text, positions, label, rule", [
    ("aaXbcYdE", [2, 5], 1, "it does not start with B"),
    ("BaXbcYdd", [2, 5], 1, "it does not end with E"),
    ("BaXBcYdE", [2, 5], 1, "B or E appears inside it"),
    ("BaXbXYdE", [2, 5], 1, "it does not hold exactly 2 relevant symbols"),
    ("BaaXbYdE", [3, 5], 1, "a relevant position lies outside the level's ranges"),
    ("BaXbcYdE", [1, 5], 1, "a recorded position does not hold X or Y"),
    ("BaXbcYdE", [2, 5], 0, "its label is not the order of its relevant symbols"),
    ("BaXbcYdE", [2, 5], 7, "its label is not a class id 0..3"),
    ("BaXcYE", [2, 4], 1, r"its length is outside \(7, 8\)"),
])
def test_decoder_rejects_every_broken_task_rule_and_names_it(text, positions, label, rule):
    good = codec.serialize(task.encode("BaXbcYdE").astype(np.uint8), 8, 1, np.array([2, 5]))
    codec.decode_records([good], "easy")  # the valid example passes every rule
    seq = task.encode(text).astype(np.uint8)
    bad = codec.serialize(seq, len(seq), label, np.array(positions))
    with pytest.raises(codec.CorruptSplitError, match=rf"record 1 of f\.rec is not a valid 'easy' example: .*{rule}"):
        codec.decode_records([good, bad], "easy", source="f.rec")


def test_files_of_tfds_generic_writer_decode_as_tfds_does(tmp_path):
    cfg = TemporalOrderConfig(level="hard", train_size=200, test_size=50)
    Builder(config=cfg, data_dir=os.fspath(tmp_path), generic_writer=True).download_and_prepare(
        file_format="array_record")
    for split in ("train", "test"):
        ((path, n),) = catalog.split_files(cfg.name, split, tmp_path)
        recs = array_record_module.ArrayRecordReader(os.fspath(path)).read(0, n)
        codec.decode_records(recs, "hard", fallback=None)  # the fast path reads them all (no fallback)
        arrays = loaders.open_split(cfg.name, split, tmp_path)
        for i, ex in enumerate(_examples(tmp_path, cfg.name, split)):
            n = ex["length"]
            assert np.array_equal(arrays.tokens[i, :n], ex["tokens"]) and arrays.lengths[i] == n
            assert arrays.labels[i] == ex["label"] and np.array_equal(arrays.positions[i], ex["positions"])


# --- bad input --------------------------------------------------------------------------------------------------

def test_unknown_config_split_padding_and_sizes_are_named(data_dir):
    kw = dict(batch_size=32, seed=0, data_dir=data_dir, **ONE_SHARD)
    with pytest.raises(ValueError, match=r"unknown config 'impossible' \(unknown level 'impossible'\); choose one "
                                         r"of: easy, normal"):
        loaders.train_loader("impossible", **kw)
    with pytest.raises(ValueError, match=r"unknown split 'dev' of config 'hard-train1000-validation200-test250'; "
                                         r"choose one of: train, validation, test"):
        loaders.train_loader(HARD, split="dev", **kw)
    with pytest.raises(ValueError, match=r"unknown split 'train' of config 'hard-len5000-test300'; choose one of: "
                                         r"test"):
        loaders.train_loader(LONG[0], **kw)
    with pytest.raises(ValueError, match=r"unknown split 'dev'"):
        loaders.eval_loader(HARD, "dev", batch_size=8, data_dir=data_dir)
    with pytest.raises(ValueError, match=r"unknown padding 'left'; choose one of: pre, post"):
        loaders.train_loader(HARD, padding="left", **kw)
    with pytest.raises(ValueError, match=r"batch_size 2000 is larger than the 1000 examples of split 'train'"):
        loaders.train_loader(HARD, **{**kw, "batch_size": 2000})
    with pytest.raises(ValueError, match=r"larger than the 500 examples of shard 1 of 2"):
        loaders.train_loader(HARD, **{**kw, "batch_size": 501, "shard_index": 1, "shard_count": 2})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        loaders.eval_loader(HARD, batch_size=0, data_dir=data_dir)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        loaders.train_loader(HARD, **{**kw, "seed": -1})
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\)"):
        loaders.train_loader(HARD, **{**kw, "shard_index": 2, "shard_count": 2})
    with pytest.raises(ValueError, match="give both shard_index and shard_count"):
        loaders.train_loader(HARD, batch_size=8, seed=0, data_dir=data_dir, shard_index=0)
    # A pad id that is a token id would read as that symbol wherever lengths are ignored.
    for pad_id in (0, 3, 7):
        with pytest.raises(ValueError, match=f"pad_id {pad_id} is the token id of .*outside the vocabulary 0..7"):
            loaders.train_loader(HARD, **{**kw, "pad_id": pad_id})
        with pytest.raises(ValueError, match=f"pad_id {pad_id} is the token id"):
            loaders.eval_loader(HARD, batch_size=8, data_dir=data_dir, pad_id=pad_id)
    # Larger than the split is fine for evaluation: one batch, mostly masked.
    (b,) = list(loaders.eval_loader(HARD, batch_size=400, data_dir=data_dir, **ONE_SHARD))
    assert b["mask"].sum() == 250


def test_missing_dataset_error_gives_the_build_command_or_builds(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        loaders.train_loader("easy-train300-test100", batch_size=8, seed=0, data_dir=tmp_path, **ONE_SHARD)
    assert "not built" in str(e.value)
    assert (f"python -m pipelines.build_dataset --config easy --data-dir {tmp_path} --train-size 300 --test-size 100"
            in str(e.value))
    with pytest.raises(FileNotFoundError, match="--config hard --data-dir"):
        loaders.split_size("hard", "test", tmp_path)
    batch = next(loaders.train_loader("easy-train300-test100", batch_size=8, seed=0, data_dir=tmp_path,
                                      build_if_missing=True, **ONE_SHARD))
    assert batch["tokens"].shape == (8, 8)
    assert store.is_built("easy-train300-test100", tmp_path)


def test_truncated_file_is_named_never_a_short_epoch(data_dir, tmp_path):
    copy = _copy_dataset(data_dir, tmp_path)
    path, _ = _train_file(copy)
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 10, 100, 0):
        path.write_bytes(data[:size])
        # A damaged file may fail to open, fail to read, or open with fewer records: each is an error.
        with pytest.raises(codec.CorruptSplitError,
                           match=r"cannot open|cannot read|holds \d+ records but dataset_info.json says 1000") as e:
            loaders.train_loader(HARD, batch_size=8, seed=0, data_dir=copy, **ONE_SHARD)
        assert str(path) in str(e.value)
    path.unlink()
    with pytest.raises(codec.CorruptSplitError, match="is missing"):
        loaders.eval_loader(HARD, "train", batch_size=8, data_dir=copy)


def test_corrupted_bytes_are_named(data_dir, tmp_path):
    copy = _copy_dataset(data_dir, tmp_path)
    path, _ = _train_file(copy)
    data = bytearray(path.read_bytes())
    data[5000:5100] = bytes(b ^ 0xFF for b in data[5000:5100])
    path.write_bytes(bytes(data))
    with pytest.raises(codec.CorruptSplitError, match="corrupt") as e:
        loaders.train_loader(HARD, batch_size=8, seed=0, data_dir=copy, **ONE_SHARD)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("bad", [b"not a tf.train.Example", "token 9"])
def test_readable_file_with_invalid_records_is_named(data_dir, tmp_path, bad):
    copy = _copy_dataset(data_dir, tmp_path)
    path, n = _train_file(copy)
    good = array_record_module.ArrayRecordReader(os.fspath(path)).read(0, n)
    if bad == "token 9":
        bad = codec.serialize(np.array([6, *[2] * 11, 0, *[3] * 40, 1, 9, *[4] * 44, 7], np.uint8), 100, 1,
                                np.array([12, 53]))
    path.unlink()
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
    for i, rec in enumerate(good):
        writer.write(bad if i == 123 else rec)
    writer.close()
    with pytest.raises(codec.CorruptSplitError, match=r"record 123 of .*temporal_order-train") as e:
        loaders.eval_loader(HARD, "train", batch_size=8, data_dir=copy)
    assert str(path) in str(e.value)


def test_tfrecord_dataset_gets_a_clear_error(data_dir, tmp_path):
    copy = _copy_dataset(data_dir, tmp_path)
    info = store.dataset_dir(HARD, copy) / "dataset_info.json"
    info.write_text(info.read_text().replace('"fileFormat": "array_record"', '"fileFormat": "tfrecord"'))
    with pytest.raises(ValueError, match="stored as tfrecord; these loaders read array_record"):
        loaders.eval_loader(HARD, batch_size=8, data_dir=copy)
