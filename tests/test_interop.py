"""The dataset from NumPy, PyTorch and tf.data: the same examples as TFDS's reader, in the loaders' layout."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from qrsu_data import interop, loaders, store

REPO = Path(__file__).resolve().parents[1]
CONFIG = "hard-train300-validation100-test100"
LONG = "hard-len5000-test100"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    store.build(CONFIG, d)
    store.build(LONG, d)
    return d


def _examples(data_dir, split, config=CONFIG):
    src = tfds.builder_from_directory(os.fspath(store.dataset_dir(config, data_dir))).as_data_source()[split]
    return [src[i] for i in range(len(src))]


def _check_padded(tokens, lengths, labels, examples, padding, pad_id):
    assert len(tokens) == len(lengths) == len(labels) == len(examples)
    t = tokens.shape[1]
    for row, n, label, ex in zip(tokens, lengths, labels, examples):
        assert n == ex["length"] and label == ex["label"]
        real, pad = (row[t - n:], row[:t - n]) if padding == "pre" else (row[:n], row[n:])
        assert np.array_equal(real, ex["tokens"]) and (pad == pad_id).all()


def test_a_pad_id_in_the_vocabulary_is_refused(data_dir):
    with pytest.raises(ValueError, match="pad_id 0 is the token id of 'X'"):
        interop.numpy_split(CONFIG, "train", data_dir=data_dir, pad_id=0)
    with pytest.raises(ValueError, match="pad_id 6 is the token id of 'B'"):
        interop.torch_collate("post", pad_id=6)


@pytest.mark.parametrize("padding,pad_id", [("pre", interop.PAD_ID), ("post", -1)])
def test_numpy_split_holds_every_example(data_dir, padding, pad_id):
    arrays = interop.numpy_split(CONFIG, "train", data_dir=data_dir, padding=padding, pad_id=pad_id)
    assert {k: (v.dtype, v.shape) for k, v in arrays.items()} == {
        "tokens": (np.int32, (300, 110)), "lengths": (np.int32, (300,)), "label": (np.int32, (300,)),
        "positions": (np.int32, (300, 2))}
    examples = _examples(data_dir, "train")
    _check_padded(arrays["tokens"], arrays["lengths"], arrays["label"], examples, padding, pad_id)
    assert np.array_equal(arrays["positions"], np.stack([ex["positions"] for ex in examples]))
    arrays["tokens"][:] = 0  # fresh arrays: changing them leaves the loaders' cached split alone
    assert loaders.open_split(CONFIG, "train", data_dir).tokens[0, 0] == 6


@pytest.mark.parametrize("config, split, shape", [(CONFIG, "validation", (100, 110)), (LONG, "test", (100, 5000))])
def test_numpy_split_of_any_split_and_length(data_dir, config, split, shape):
    arrays = interop.numpy_split(config, split, data_dir=data_dir, padding="post")
    assert arrays["tokens"].shape == shape
    _check_padded(arrays["tokens"], arrays["lengths"], arrays["label"], _examples(data_dir, split, config), "post",
                  interop.PAD_ID)


def test_hf_dataset_holds_the_split_with_class_names(data_dir):
    datasets = pytest.importorskip("datasets")
    for config, split in ((CONFIG, "validation"), (CONFIG, "train"), (LONG, "test")):
        ds = interop.hf_dataset(config, split, data_dir=data_dir)
        assert isinstance(ds, datasets.Dataset) and str(ds.split) == split
        assert ds.features["label"] == datasets.ClassLabel(names=["Q", "R", "S", "U"])
        assert str(ds.data.schema.field("tokens").type) == "list<item: uint8>"  # one byte a token, in memory too
        examples = _examples(data_dir, split, config)
        assert len(ds) == len(examples)
        got = ds.with_format("numpy")
        for i, ex in enumerate(examples):
            row = got[i]
            assert np.array_equal(row["tokens"], ex["tokens"])
            assert row["length"] == ex["length"] and row["label"] == ex["label"]
            assert np.array_equal(row["positions"], ex["positions"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        interop.hf_dataset(CONFIG, "dev", data_dir=data_dir)


def test_numpy_split_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown padding"):
        interop.numpy_split(CONFIG, data_dir=data_dir, padding="middle")
    with pytest.raises(FileNotFoundError, match="pipelines.build_dataset --config easy"):
        interop.numpy_split("easy", data_dir=tmp_path)


def test_module_imports_without_torch_tensorflow_jax_or_grain():
    code = ("import sys\nfor m in ('torch', 'tensorflow', 'jax', 'grain', 'datasets'):\n    sys.modules[m] = None\n"
            "from qrsu_data import interop\n"
            "try:\n    interop.TorchDataset\nexcept ImportError:\n    print('no torch')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no torch"


@pytest.mark.slow
def test_torch_dataloader_with_workers_covers_the_split(data_dir):
    torch = pytest.importorskip("torch")
    dataset = interop.TorchDataset(CONFIG, "test", data_dir)
    assert isinstance(dataset, torch.utils.data.Dataset) and len(dataset) == 100
    examples = _examples(data_dir, "test")
    assert np.array_equal(dataset[-1]["tokens"], examples[-1]["tokens"])
    with pytest.raises(IndexError):
        dataset[100]
    copy = pickle.loads(pickle.dumps(dataset))  # what a spawned worker receives: no open reader
    assert copy._source is None
    assert np.array_equal(copy[5]["tokens"], examples[5]["tokens"])
    assert dataset.max_length == loaders.max_length(CONFIG) == 110
    collate = interop.torch_collate("pre", max_length=dataset.max_length)
    # Spawned workers: each gets a pickled dataset and opens its own reader (JAX, imported by other tests in
    # this process, makes forking risky here; the README snippet runs without JAX and forks).
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=2, collate_fn=collate,
                                         multiprocessing_context="spawn")
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [32, 32, 32, 4]
    assert all(v.dtype == torch.int64 for b in batches for v in b.values())
    cat = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    _check_padded(cat["tokens"], cat["lengths"], cat["label"], examples, "pre", interop.PAD_ID)
    shuffled = torch.utils.data.DataLoader(dataset, batch_size=10, shuffle=True, collate_fn=collate,
                                           generator=torch.Generator().manual_seed(0))
    labels = torch.cat([b["label"] for b in shuffled]).numpy()
    assert sorted(labels.tolist()) == sorted(ex["label"] for ex in examples)


def test_torch_dataloader_with_forked_workers_reads_the_split(data_dir):
    """As the README's snippet runs it: forked workers, no JAX. Making the dataset must not open an ArrayRecord
    reader in the parent, or the forked workers deadlock or crash when they open theirs."""
    pytest.importorskip("torch")
    code = ("import torch\nfrom qrsu_data import interop\n"
            f"ds = interop.TorchDataset({CONFIG!r}, 'validation', {os.fspath(data_dir)!r})\n"
            "loader = torch.utils.data.DataLoader(ds, batch_size=25, num_workers=2, multiprocessing_context='fork', "
            "collate_fn=interop.torch_collate('pre', max_length=ds.max_length))\n"
            "print(sum(len(b['label']) for b in loader))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "100"


def test_torch_collate_pads_to_the_longest_without_max_length():
    pytest.importorskip("torch")
    examples = [{"tokens": np.array([6, 2, 7], np.uint8), "label": 1},
                {"tokens": np.array([6, 2, 3, 4, 7], np.uint8), "label": 3}]
    batch = interop.torch_collate("post", pad_id=8)(examples)
    assert batch["tokens"].tolist() == [[6, 2, 7, 8, 8], [6, 2, 3, 4, 7]]
    assert batch["lengths"].tolist() == [3, 5] and batch["label"].tolist() == [1, 3]
    assert interop.torch_collate("pre", pad_id=8)(examples)["tokens"].tolist()[0] == [8, 8, 6, 2, 7]
    with pytest.raises(ValueError, match="unknown padding"):
        interop.torch_collate("both")


def test_tf_dataset_yields_the_split(data_dir):
    tf = pytest.importorskip("tensorflow")
    ds = interop.tf_dataset(CONFIG, "test", data_dir=data_dir)
    assert isinstance(ds, tf.data.Dataset)
    assert ds.element_spec["tokens"].shape == (110,) and ds.element_spec["tokens"].dtype == tf.int32
    batches = list(ds.batch(32).as_numpy_iterator())
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    _check_padded(cat["tokens"], cat["lengths"], cat["label"], _examples(data_dir, "test"), "pre", interop.PAD_ID)


def test_tfds_reads_arrayrecord_only_as_a_data_source_and_tfrecord_recipe_works(data_dir, tmp_path):
    pytest.importorskip("tensorflow")
    builder = tfds.builder_from_directory(os.fspath(store.dataset_dir(CONFIG, data_dir)))
    with pytest.raises(NotImplementedError):
        builder.as_dataset(split="test")
    # The documented alternative: the TFRecord format, in a separate data dir, read by TFDS's tf.data reader.
    path = store.build("hard", tmp_path / "tfrecord", file_format="tfrecord", train_size=300, test_size=100)
    got = list(tfds.builder_from_directory(os.fspath(path)).as_dataset(split="test").as_numpy_iterator())
    want = _examples(data_dir, "test")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.array_equal(g["tokens"], w["tokens"]) and g["label"] == w["label"]


@pytest.mark.parametrize("damage", ["truncate", "scramble"])
def test_torch_dataset_names_a_corrupt_file(data_dir, tmp_path, damage):
    pytest.importorskip("torch")
    import shutil

    from qrsu_data import catalog

    copy = tmp_path / "copy"
    shutil.copytree(store.dataset_dir(CONFIG, data_dir).parent.parent, copy / store.DATASET_NAME)
    ((path, _),) = catalog.split_files(CONFIG, "train", copy)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
        with pytest.raises(catalog.CorruptSplitError,
                           match=f"{path} holds .* but .* says .*: the file is truncated or corrupt"):
            interop.TorchDataset(CONFIG, "train", copy)[0]
        return
    # Same size and record count, garbage inside the records' chunk: only a read finds it.
    data[1000:1100] = bytes(100)
    path.write_bytes(bytes(data))
    dataset = interop.TorchDataset(CONFIG, "train", copy)
    with pytest.raises(catalog.CorruptSplitError, match=f"from {path}: the file is corrupt"):
        dataset.__getitems__(list(range(20)))
