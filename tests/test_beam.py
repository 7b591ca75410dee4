"""Generating temporal_order on Apache Beam, and configs of any size without editing code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from qrsu_data import splits, store
from qrsu_data.temporal_order import Builder, TemporalOrderConfig

pytestmark = pytest.mark.slow  # end to end: see docs/development.md for the fast tier

beam = pytest.importorskip("apache_beam")

REPO = Path(__file__).resolve().parents[1]
TFDS = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main"]
"""The `tfds` command line, by this interpreter (a virtual environment need not be activated)."""
CONFIG = "hard-train25000-validation500-test500"
SIZES = {"train": 25_000, "validation": 500, "test": 500}
DIRECT_RUNNER = ["--runner=DirectRunner"]


def _examples(path, split):
    src = tfds.builder_from_directory(os.fspath(path)).as_data_source()[split]
    return [src[i] for i in range(len(src))]


def _assert_same_dataset(a, b, sizes):
    for split, size in sizes.items():
        xs, ys = _examples(a, split), _examples(b, split)
        assert len(xs) == len(ys) == size
        for x, y in zip(xs, ys):
            assert x.keys() == y.keys()
            for k in x:
                assert np.asarray(x[k]).dtype == np.asarray(y[k]).dtype, k
                assert np.array_equal(x[k], y[k]), (split, k, x, y)


def _beam_build(config, data_dir, flags, **download_kwargs):
    builder = Builder(config=config, data_dir=os.fspath(data_dir))
    options = beam.options.pipeline_options.PipelineOptions(flags)
    builder.download_and_prepare(file_format="array_record", download_config=tfds.download.DownloadConfig(
        beam_options=options, **download_kwargs))
    return Path(builder.data_dir)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The config built by the default in-process writer: three train chunks (the last partial), one test."""
    return store.build(CONFIG, tmp_path_factory.mktemp("in_process"))


def test_beam_in_one_process_gives_the_in_process_records(tmp_path, in_process):
    path = _beam_build(CONFIG, tmp_path, DIRECT_RUNNER)
    assert path == store.dataset_dir(CONFIG, tmp_path)
    assert store.is_built(CONFIG, tmp_path)
    _assert_same_dataset(in_process, path, SIZES)
    # The Croissant metadata is written on Beam too, and names the files TFDS's Beam writer made.
    doc = json.loads((path / "croissant.json").read_text())
    listed = {d["contentUrl"]: int(d["contentSize"].split()[0]) for d in doc["distribution"]
              if d["@type"] == "cr:FileObject"}
    assert listed == {p.name: p.stat().st_size for p in path.glob("*.array_record*")}


def test_max_examples_per_split_on_beam_builds_in_process(tmp_path):
    path = _beam_build("easy-train300-test50", tmp_path, DIRECT_RUNNER, max_examples_per_split=40)
    expected = splits.split_examples(splits.SplitSpec.from_name("easy-train300-test50"), "train").sequences()[:40]
    got = _examples(path, "train")
    assert len(got) == 40 and all(np.array_equal(g["tokens"], e) for g, e in zip(got, expected))


def test_nondeterministic_order_on_beam_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nondeterministic_order would store the records in an arbitrary order"):
        _beam_build("easy-train300-test50", tmp_path, DIRECT_RUNNER, nondeterministic_order=True)
    assert not store.is_built("easy-train300-test50", tmp_path)


def test_config_family_by_name_and_by_kwargs():
    builder = Builder(config="nightmare-train10000000", data_dir="/nonexistent")
    assert builder.builder_config.name == "nightmare-train10000000"
    assert builder.builder_config.spec == splits.SplitSpec("nightmare", train_size=10_000_000)
    assert builder.data_dir.endswith("temporal_order/nightmare-train10000000/1.1.0")
    # What `tfds build --config '{"level": "nightmare", "train_size": 10000000}'` constructs: the same config.
    kwargs = json.loads('{"level": "nightmare", "train_size": 10000000}')
    by_kwargs = Builder(config=Builder.builder_config_cls(**kwargs), data_dir="/nonexistent")
    assert by_kwargs.builder_config.spec == builder.builder_config.spec
    assert by_kwargs.data_dir == builder.data_dir
    # Kwargs that name a registered config give the registered config (TFDS would refuse a look-alike).
    assert Builder(config=TemporalOrderConfig(level="easy")).builder_config is Builder.builder_configs["easy"]
    assert Builder(config="easy").builder_config is Builder.builder_configs["easy"]
    with pytest.raises(ValueError, match=r"unknown config 'nightmare-train' \('train' is not a suffix.*choose one "
                                         r"of: easy"):
        Builder(config="nightmare-train")
    # A level of your own, by JSON (what `tfds build --config '{...}'` passes) or by name: one config.
    four = {"length": [30, 40], "positions": [[2, 4], [8, 10], [14, 16], [20, 22]], "test_size": 100}
    by_json = Builder(config=Builder.builder_config_cls(**four), data_dir="/nonexistent")
    by_name = Builder(config="len30to40_pos2to4_pos8to10_pos14to16_pos20to22-test100", data_dir="/nonexistent")
    assert by_json.builder_config.spec == by_name.builder_config.spec and by_json.data_dir == by_name.data_dir
    assert Builder(config=json.dumps(four), data_dir="/nonexistent").data_dir == by_name.data_dir
    assert by_name.info.features["label"].num_classes == 16
    with pytest.raises(ValueError, match=r"ranges must be in order and not overlap"):
        Builder.builder_config_cls(length=[30, 40], positions=[[2, 9], [8, 10]])


def test_tfds_cli_on_two_worker_processes_gives_the_in_process_records(tmp_path, in_process):
    """A config named by its sizes, on two Beam worker processes: the in-process records, whatever the workers."""
    # Put this checkout's packages first (not another installed copy).
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([os.fspath(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # `tfds build` imports the builder from its file; Beam's worker processes must still find the generator.
    res = subprocess.run([*TFDS, "build", "qrsu_data/temporal_order", "--config", CONFIG, "--file_format",
                          "array_record", "--data_dir", os.fspath(tmp_path), "--beam_pipeline_options",
                          "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_dataset(in_process, store.dataset_dir(CONFIG, tmp_path), SIZES)
