"""Croissant metadata: every build and export writes a croissant.json that mlcroissant loads without issues."""

import os

import numpy as np
import pytest

from qrsu_data import catalog, croissant, export, store

mlc = pytest.importorskip("mlcroissant")

CONFIGS = ("hard-train200-validation50-test50", "len30to40_pos2to4_pos8to10_pos14to16_pos20to22-train200-"
           "validation50-test50", "exp6b-tail1000-test50")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for config in CONFIGS:
        store.build(config, d)
    return d


def _load(folder):
    dataset = mlc.Dataset(os.fspath(folder / croissant.FILENAME))  # raises ValidationError on any error
    issues = dataset.metadata.issues
    assert not issues.errors and not issues.warnings, issues.report()
    return dataset


@pytest.mark.parametrize("config", CONFIGS)
def test_every_build_writes_croissant_metadata_that_loads_without_issues(data_dir, config):
    path = store.dataset_dir(config, data_dir)
    dataset = _load(path)
    md = dataset.metadata
    splits = catalog.split_names(config)
    assert md.name == f"temporal_order-{config}" and md.version == "1.1.0"
    assert [r.id for r in md.record_sets] == [*splits, "classes"]
    for record_set in md.record_sets[:-1]:
        assert [f.name for f in record_set.fields] == ["tokens", "length", "label", "positions"]
    # Each split's file object is exactly the file TFDS wrote for it, with its size and checksum.
    for file_object, split in zip(md.distribution, splits):
        ((filepath, _),) = catalog.split_files(config, split, data_dir)
        assert file_object.content_url == filepath.name
        assert croissant.file_digest(filepath) == (int(file_object.content_size.split()[0]), file_object.sha256)
    names = [r["classes/name"] for r in dataset.records("classes")]  # inline data: readable from any build
    assert [n.decode() if isinstance(n, bytes) else n for n in names] == list(catalog.level_of(config).classes)


def test_a_tfrecord_build_writes_croissant_metadata_too(tmp_path):
    path = store.build("easy-train100-validation20-test20", tmp_path, file_format="tfrecord")
    md = _load(path).metadata
    assert {d.encoding_formats[0] for d in md.distribution} == {croissant.ENCODING_FORMATS["tfrecord"]}


@pytest.mark.parametrize("config", CONFIGS)
def test_mlcroissant_reads_the_records_of_the_parquet_export(data_dir, tmp_path, config):
    out = export.export(config, tmp_path / "export", data_dir=data_dir)
    dataset = _load(out)
    for split in catalog.split_names(config):
        arrays = catalog.open_split(config, split, data_dir)
        records = list(dataset.records(split))  # checks each file's sha256 first
        assert len(records) == len(arrays)
        for i, r in enumerate(records):
            n = int(r[f"{split}/length"])
            assert n == arrays.lengths[i] and int(r[f"{split}/label"]) == arrays.labels[i]
            assert np.array_equal(np.asarray(r[f"{split}/tokens"], np.uint8), arrays.tokens[i, :n])
            assert np.array_equal(np.asarray(r[f"{split}/positions"]), arrays.positions[i])


def test_a_changed_parquet_file_fails_its_checksum(data_dir, tmp_path):
    out = export.export(CONFIGS[0], tmp_path / "export", data_dir=data_dir)
    data = bytearray((out / "test.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "test.parquet").write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"Download\(test-file\)") as e:
        list(_load(out).records("test"))
    assert "is not identical with the reference" in str(e.value.__cause__)
