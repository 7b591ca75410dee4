"""The temporal_order TFDS builder, the build command, and what happens on bad input or interruption."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from qrsu_data import splits, store, task
from qrsu_data.temporal_order import Builder, TemporalOrderConfig

REPO = Path(__file__).resolve().parents[1]
SMALL = {"train_size": 300, "test_size": 100}


def _build(level, data_dir, **kwargs):
    return store.build(level, data_dir, **{**SMALL, **kwargs})


def _examples(path, split):
    src = tfds.builder_from_directory(os.fspath(path)).as_data_source()[split]
    return [src[i] for i in range(len(src))]


def _assert_same_examples(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert np.asarray(x[k]).dtype == np.asarray(y[k]).dtype, k
            assert np.array_equal(x[k], y[k]), (k, x, y)


class TemporalOrderTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's own harness, on small configs, through the builder's direct record writer."""

    DATASET_CLASS = Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [TemporalOrderConfig(level="easy", **SMALL),
                                    TemporalOrderConfig(level="exp6b", **SMALL)]
    SPLITS = {"train": 300, "test": 100}
    SKIP_CHECKSUMS = True


class TemporalOrderGenericWriterTest(TemporalOrderTest):
    """The same harness through TFDS's generic per-example writer."""

    BUILDER_CONFIG_NAMES_TO_TEST = [TemporalOrderConfig(level="hard", **SMALL)]

    def _make_builder(self, config=None):
        return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION, generic_writer=True)


def test_default_and_registered_configs():
    assert [c.name for c in Builder.BUILDER_CONFIGS] == list(task.LEVELS)
    assert Builder.DEFAULT_BUILDER_CONFIG_NAME == "hard"
    for c in Builder.BUILDER_CONFIGS:
        assert (c.spec.train_size, c.spec.test_size, c.spec.seed) == (100_000, 10_000, 0)
    assert str(Builder.VERSION) == "1.0.0" and "1.0.0" in Builder.RELEASE_NOTES


@pytest.mark.parametrize("level", list(task.LEVELS))
def test_every_record_follows_the_task_rules(tmp_path, level):
    path = _build(level, tmp_path)
    builder = tfds.builder_from_directory(os.fspath(path))
    assert builder.info.supervised_keys == ("tokens", "label")
    assert builder.info.features["label"].names == list(task.get_level(level).classes)
    for split in ("train", "test"):
        examples = _examples(path, split)
        assert len(examples) == SMALL[f"{split}_size"]
        expected = splits.split_examples(splits.SplitSpec(level, **SMALL), split)
        for ex, seq in zip(examples, expected.sequences()):
            assert ex["tokens"].dtype == np.uint8 and np.array_equal(ex["tokens"], seq)
            label, positions = task.check_sequence(ex["tokens"], level)
            assert ex["label"] == label and list(ex["positions"]) == positions
            assert ex["length"] == len(ex["tokens"])


def test_direct_writer_equals_tfds_generic_writer(tmp_path):
    config = TemporalOrderConfig(level="nightmare", train_size=2000, test_size=500)
    for name, generic in (("direct", False), ("generic", True)):
        Builder(config=config, data_dir=os.fspath(tmp_path / name), generic_writer=generic).download_and_prepare(
            file_format="array_record")
    rel = Path("temporal_order") / config.name / "1.0.0"
    for split in ("train", "test"):
        _assert_same_examples(_examples(tmp_path / "direct" / rel, split), _examples(tmp_path / "generic" / rel, split))


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(path).glob("*.array_record*"))}


def test_building_twice_gives_identical_files(tmp_path):
    a = _build("hard", tmp_path / "a")
    b = _build("hard", tmp_path / "b")
    assert _digest(a) and _digest(a) == _digest(b)
    # Building again into the same dir keeps the dataset as it is.
    before = {p: p.stat().st_mtime_ns for p in Path(a).iterdir()}
    assert _build("hard", tmp_path / "a") == a
    assert {p: p.stat().st_mtime_ns for p in Path(a).iterdir()} == before


def _run(args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def test_build_command_and_tfds_cli_give_the_same_dataset(tmp_path):
    ours = _run([sys.executable, "-m", "pipelines.build_dataset", "--config", "easy", "--data-dir",
                 os.fspath(tmp_path / "ours"), "--train-size", "300", "--test-size", "300"])
    assert ours.returncode == 0, ours.stderr
    ours_path = tmp_path / "ours" / "temporal_order" / "easy-train300-test300" / "1.0.0"
    assert f"easy: {ours_path}" in ours.stdout
    # The tfds command line needs tensorflow, apache-beam and mlcroissant (the tfds-cli extra).
    cli = _run(["tfds", "build", "qrsu_data/temporal_order", "--config", "easy", "--file_format", "array_record",
                "--data_dir", os.fspath(tmp_path / "cli"), "--max_examples_per_split", "300"])
    assert cli.returncode == 0, cli.stderr[-3000:]
    cli_path = tmp_path / "cli" / "temporal_order" / "easy" / "1.0.0"
    for split in ("train", "test"):
        _assert_same_examples(_examples(ours_path, split), _examples(cli_path, split))


def test_unknown_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown config 'hardest'; choose one of: easy, normal, moderate, hard"):
        store.build("hardest", tmp_path)
    res = _run([sys.executable, "-m", "pipelines.build_dataset", "--config", "hardest", "--data-dir",
                os.fspath(tmp_path)])
    assert res.returncode == 2 and "unknown config 'hardest'" in res.stderr and "nightmare" in res.stderr
    with pytest.raises(ValueError, match="unknown config"):
        store.dataset_dir("medium")


def test_unwritable_data_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=f"cannot write the dataset into data dir '{blocker}/data'"):
        _build("easy", blocker / "data")
    res = _run([sys.executable, "-m", "pipelines.build_dataset", "--config", "easy", "--data-dir",
                os.fspath(blocker / "data")])
    assert res.returncode == 2 and "cannot write the dataset into data dir" in res.stderr


def test_missing_dataset_error_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m pipelines.build_dataset --config hard --data-dir"):
        store.open_builder("hard", tmp_path)


def test_failed_build_leaves_nothing_readable_and_the_next_build_succeeds(tmp_path, monkeypatch):
    real = splits.chunk_examples
    spec_kwargs = {"train_size": 25_000, "test_size": 100}

    def failing(spec, split, chunk):
        if split == "train" and chunk == 1:
            raise RuntimeError("disk on fire")
        return real(spec, split, chunk)

    monkeypatch.setattr(splits, "chunk_examples", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.build("moderate", tmp_path, **spec_kwargs)
    name = splits.SplitSpec("moderate", **spec_kwargs).name
    config_dir = tmp_path / "temporal_order" / name
    assert not store.is_built(name, tmp_path)
    assert not (config_dir / "1.0.0").exists()
    assert not list(config_dir.glob("incomplete.*"))  # TFDS removed its temporary folder
    monkeypatch.setattr(splits, "chunk_examples", real)
    path = store.build("moderate", tmp_path, **spec_kwargs)
    assert len(_examples(path, "train")) == 25_000


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_build_recovers(tmp_path, sig):
    """Ctrl-C (TFDS cleans up) or a kill (nothing runs): never a readable half dataset; the next build works."""
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.build_dataset", "--config", "nightmare",
                             "--data-dir", os.fspath(tmp_path), "--train-size", "100000", "--test-size", "100"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # A shell's background job starts with SIGINT ignored, and a Python that starts so
                            # never raises KeyboardInterrupt: give the build a terminal's default disposition.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    config_dir = tmp_path / "temporal_order" / "nightmare-test100"
    deadline = time.time() + 120
    while not list(config_dir.glob("incomplete.*/*train*")) and time.time() < deadline:
        assert proc.poll() is None, "build finished before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not store.is_built("nightmare-test100", tmp_path)
    with pytest.raises(Exception):
        tfds.builder_from_directory(os.fspath(config_dir / "1.0.0"))
    path = store.build("nightmare", tmp_path, train_size=100_000, test_size=100)
    assert not list(config_dir.glob("incomplete.*"))  # what the killed build left is gone
    assert len(tfds.builder_from_directory(os.fspath(path)).as_data_source()["train"]) == 100_000


def test_config_names_round_trip_and_name_their_build_command(tmp_path):
    spec = splits.SplitSpec.from_name("hard-train1000-test100-seed3")
    assert (spec.level, spec.train_size, spec.test_size, spec.seed) == ("hard", 1000, 100, 3)
    assert splits.SplitSpec.from_name("exp6b") == splits.SplitSpec("exp6b")
    for bad in ("hard-train", "hard-foo1", "hard-train100000", "hardest", "hard-seed0"):
        with pytest.raises(ValueError, match="unknown config"):
            splits.SplitSpec.from_name(bad)
    cmd = store.build_command("easy-train300-test50", tmp_path)
    assert cmd == f"python -m pipelines.build_dataset --config easy --data-dir {tmp_path} --train-size 300 --test-size 50"
    res = _run(cmd.split())
    assert res.returncode == 0, res.stderr
    assert store.is_built("easy-train300-test50", tmp_path)
    # store.build takes the same names.
    assert store.build("easy-train300-test50", tmp_path) == store.dataset_dir("easy-train300-test50", tmp_path)


def test_a_version_folder_without_dataset_info_is_rebuilt_not_reused(tmp_path):
    path = _build("easy", tmp_path)
    digest = _digest(path)
    (path / "dataset_info.json").unlink()
    assert not store.is_built("easy-train300-test100", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m pipelines.build_dataset --config easy"):
        store.open_builder("easy-train300-test100", tmp_path)
    res = _run([sys.executable, "-m", "pipelines.build_dataset", "--config", "easy", "--data-dir",
                os.fspath(tmp_path), "--train-size", "300", "--test-size", "100"])
    assert res.returncode == 0, res.stderr
    assert "lacks dataset_info.json, so it is incomplete; rebuilding it" in res.stderr
    assert store.is_built("easy-train300-test100", tmp_path) and _digest(path) == digest


def test_only_stale_incomplete_folders_are_removed(tmp_path):
    config_dir = tmp_path / "temporal_order" / "easy-train300-test100"
    live, killed, unmarked_new, unmarked_old = (config_dir / f"incomplete.{n}.1.0.0" for n in "abcd")
    for p in (live, killed, unmarked_new, unmarked_old):
        p.mkdir(parents=True)
        (p / "temporal_order-train.array_record-00000-of-00001").write_bytes(b"x")
    # A live build (ours or `tfds build`, both run this builder) holds its marker's lock; a killed one does not.
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_SH); print('locked', flush=True); time.sleep(60)",
                               os.fspath(live / store.BUILD_MARKER)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (killed / store.BUILD_MARKER).write_text("")
        old = time.time() - 2 * store.UNMARKED_STALE_S
        for f in (*unmarked_old.rglob("*"), unmarked_old):
            os.utime(f, (old, old))
        path = _build("easy", tmp_path)
        assert live.is_dir() and unmarked_new.is_dir()  # another process may be writing these
        assert not killed.exists() and not unmarked_old.exists()
        assert store.is_built("easy-train300-test100", tmp_path) and not (path / store.BUILD_MARKER).exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("data_dir, message", [
    ("", "the data dir is empty"),
    (" ", "the data dir is empty"),
    ("FILE", "is a file, not a folder"),
])
def test_empty_or_file_data_dir_is_refused(tmp_path, monkeypatch, data_dir, message):
    monkeypatch.chdir(tmp_path)
    if data_dir == "FILE":
        data_dir = tmp_path / "f"
        data_dir.write_text("x")
    with pytest.raises(ValueError, match=message):
        _build("easy", data_dir)
    assert not (tmp_path / "temporal_order").exists()  # nothing built into the current folder


def test_a_config_that_cannot_fit_on_disk_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError,
                       match=r"100,000,000,009,999 sequences, about 15,300,000.0 GB on disk.*h to generate.*GB free"):
        store.build("hard", tmp_path / "data", train_size=99_999_999_999_999)
    assert not (tmp_path / "data").exists()


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        splits.SplitSpec("hard", seed=-1)
