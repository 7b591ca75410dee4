"""The Parquet export: read back identically by pandas, Polars and Hugging Face datasets; atomic; its command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qrsu_data import catalog, croissant, export, store

pytest.importorskip("pyarrow")

REPO = Path(__file__).resolve().parents[1]
CONFIG = "exp6b-train300-validation100-test100"
SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    store.build(CONFIG, d)
    return d


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    return export.export(CONFIG, tmp_path_factory.mktemp("exports") / "exp6b", data_dir=data_dir)


def _expected(data_dir, split):
    a = catalog.open_split(CONFIG, split, data_dir)
    return a, [a.tokens[i, :n] for i, n in enumerate(a.lengths)]


def test_export_holds_every_split_and_its_croissant_metadata(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["croissant.json", "test.parquet", "train.parquet",
                                                          "validation.parquet"]
    assert not list(exported.parent.glob(".*incomplete*"))  # the temporary folder was renamed into place
    doc = croissant.read(exported)
    assert doc["name"] == f"temporal_order-{CONFIG}" and [r["@id"] for r in doc["recordSet"]] == [*SPLITS, "classes"]


def test_pandas_reads_the_records_back(exported, data_dir):
    pd = pytest.importorskip("pandas")
    for split in SPLITS:
        df = pd.read_parquet(exported / f"{split}.parquet")
        arrays, seqs = _expected(data_dir, split)
        assert list(df.columns) == ["tokens", "length", "label", "positions"] and len(df) == len(seqs)
        assert all(np.array_equal(t, s) and t.dtype == np.uint8 for t, s in zip(df["tokens"], seqs))
        assert np.array_equal(df["length"], arrays.lengths) and np.array_equal(df["label"], arrays.labels)
        assert np.array_equal(np.stack(df["positions"]), arrays.positions)


def test_polars_reads_the_records_back(exported, data_dir):
    pl = pytest.importorskip("polars")
    for split in SPLITS:
        df = pl.read_parquet(exported / f"{split}.parquet")
        arrays, seqs = _expected(data_dir, split)
        assert df.schema["tokens"] == pl.List(pl.UInt8) and df.height == len(seqs)
        assert all(np.array_equal(np.asarray(t), s) for t, s in zip(df["tokens"].to_list(), seqs))
        assert np.array_equal(df["length"].to_numpy(), arrays.lengths)
        assert np.array_equal(df["label"].to_numpy(), arrays.labels)
        assert np.array_equal(np.array(df["positions"].to_list()), arrays.positions)


def test_hugging_face_datasets_reads_the_records_back_offline(exported, data_dir, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = datasets.load_dataset("parquet", data_files={s: os.fspath(exported / f"{s}.parquet") for s in SPLITS},
                               cache_dir=os.fspath(tmp_path / "hf"))
    assert list(ds) == list(SPLITS)
    for split in SPLITS:
        arrays, seqs = _expected(data_dir, split)
        d = ds[split]
        # The schema's metadata gives label its class names.
        assert d.features["label"] == datasets.ClassLabel(names=list(catalog.level_of(CONFIG).classes))
        rows = d.with_format("numpy")
        assert len(d) == len(seqs)
        assert all(np.array_equal(rows[i]["tokens"], s) for i, s in enumerate(seqs))
        assert np.array_equal(rows["length"], arrays.lengths) and np.array_equal(rows["label"], arrays.labels)
        assert np.array_equal(np.stack(rows["positions"]), arrays.positions)


def test_an_export_of_a_config_not_built_builds_it_first_and_says_so(tmp_path):
    messages = []
    out = export.export("easy-tail20-test50", tmp_path / "out", data_dir=tmp_path / "data", log=messages.append)
    assert messages == [f"note: easy-tail20-test50 is not built in {tmp_path / 'data'}; building it first"]
    assert store.is_built("easy-tail20-test50", tmp_path / "data")
    assert sorted(p.name for p in out.iterdir()) == ["croissant.json", "test.parquet"]  # test-only: one split
    # The same export again is left as it is.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert export.export("easy-tail20-test50", out, data_dir=tmp_path / "data", log=messages.append) == out
    assert "already holds the parquet export of 'easy-tail20-test50'; left as it is" in messages[-1]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(FileNotFoundError, match="is not built"):
        export.export("easy-tail30-test50", tmp_path / "out2", data_dir=tmp_path / "data", build_if_missing=False)
    assert not (tmp_path / "out2").exists()


def test_the_export_refuses_a_file_another_export_or_other_files(exported, data_dir, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder that is new or empty"):
        export.export(CONFIG, tmp_path / "f", data_dir=data_dir)
    with pytest.raises(ValueError, match=rf"already holds another export \(temporal_order-{CONFIG}, version"):
        export.export("hard-train300-validation100-test100", exported, data_dir=data_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds other files"):
        export.export(CONFIG, tmp_path / "busy", data_dir=data_dir)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="unknown export format 'csv'; choose one of: parquet"):
        export.export(CONFIG, tmp_path / "x", file_format="csv", data_dir=data_dir)
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert (export.export(CONFIG, tmp_path / "empty", data_dir=data_dir) / "train.parquet").is_file()


def test_a_failed_export_leaves_nothing(data_dir, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    real, calls = pq.write_table, []

    def failing(table, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(table, path, **kwargs)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        export.export(CONFIG, tmp_path / "out", data_dir=data_dir)
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temporary folder


def _run(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "pipelines.export", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_the_export_command(data_dir, tmp_path):
    res = _run("--config", CONFIG, "--format", "parquet", "--out", os.fspath(tmp_path / "out"), "--data-dir",
               os.fspath(data_dir))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{CONFIG}: {tmp_path / 'out'}"
    assert json.loads((tmp_path / "out" / "croissant.json").read_text())["version"] == "1.1.0"
    for args, message in (
        (["--config", "hardest", "--out", "o"], "unknown config 'hardest'"),
        (["--config", CONFIG, "--format", "csv", "--out", "o"], "argument --format: invalid choice: 'csv'"),
        (["--config", CONFIG], "the following arguments are required: --out"),
        (["--config", CONFIG, "--out", os.fspath(tmp_path / "out" / "train.parquet")], "is a file"),
        (["--config", "easy", "--out", os.fspath(tmp_path / "out")], "already holds another export"),
        (["--config", CONFIG, "--out", "o", "--data-dir", ""], "the data dir is empty"),
    ):
        res = _run(*args, *([] if "--data-dir" in args else ["--data-dir", os.fspath(data_dir)]))
        assert res.returncode == 2, (args, res.stderr)
        assert "error: " in res.stderr and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (REPO / "o").exists()
