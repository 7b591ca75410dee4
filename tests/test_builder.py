"""The temporal_order TFDS builder, the build command, and what happens on bad input or interruption."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from qrsu_data import incomplete, splits, store, task
from qrsu_data.temporal_order import Builder, TemporalOrderConfig

REPO = Path(__file__).resolve().parents[1]
TFDS = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main"]
"""The `tfds` command line, by this interpreter (a virtual environment need not be activated)."""
SMALL = {"train_size": 300, "validation_size": 100, "test_size": 100}
SMALL_NAME = "train300-validation100-test100"
VERSION = "1.1.0"
# Four relevant symbols (16 classes), a level of your own.
FOUR = {"length": [30, 40], "positions": [[2, 4], [8, 10], [14, 16], [20, 22]]}
FOUR_NAME = "len30to40_pos2to4_pos8to10_pos14to16_pos20to22"


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
    BUILDER_CONFIG_NAMES_TO_TEST = [TemporalOrderConfig(level="exp6b", **SMALL), TemporalOrderConfig(**FOUR, **SMALL)]
    SPLITS = {"train": 300, "validation": 100, "test": 100}
    SKIP_CHECKSUMS = True


class TemporalOrderEasyTest(TemporalOrderTest):
    """easy: validation draws from test's held-out part of the space (documented), so only those two overlap."""

    BUILDER_CONFIG_NAMES_TO_TEST = [TemporalOrderConfig(level="easy", **SMALL)]
    OVERLAPPING_SPLITS = ["validation"]


class TemporalOrderGenericWriterTest(TemporalOrderTest):
    """The same harness through TFDS's generic per-example writer."""

    BUILDER_CONFIG_NAMES_TO_TEST = [TemporalOrderConfig(level="hard", **SMALL)]

    def _make_builder(self, config=None):
        return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION, generic_writer=True)


def test_default_and_registered_configs():
    assert [c.name for c in Builder.BUILDER_CONFIGS] == list(task.LEVELS)
    assert Builder.DEFAULT_BUILDER_CONFIG_NAME == "hard"
    for c in Builder.BUILDER_CONFIGS:
        assert (c.spec.train_size, c.spec.validation_size, c.spec.test_size, c.spec.seed) == (100_000, 10_000,
                                                                                            10_000, 0)
    assert str(Builder.VERSION) == VERSION and {"1.0.0", VERSION} <= set(Builder.RELEASE_NOTES)


@pytest.mark.parametrize("level", [*task.LEVELS, FOUR_NAME, "hard-len5000", "exp6b-tail5000"])
def test_every_record_follows_the_task_rules(tmp_path, level):
    spec = splits.SplitSpec(level, **({"test_size": 100} if level.endswith("5000") else SMALL))
    path = store.build(spec.name, tmp_path)
    builder = tfds.builder_from_directory(os.fspath(path))
    assert builder.info.supervised_keys == ("tokens", "label")
    assert builder.info.features["label"].names == list(task.get_level(level).classes)
    assert tuple(builder.info.splits) == spec.splits  # a test-only config has just its test split
    for split in spec.splits:
        examples = _examples(path, split)
        assert len(examples) == spec.size(split)
        expected = splits.split_examples(spec, split)
        for ex, seq in zip(examples, expected.sequences()):
            assert ex["tokens"].dtype == np.uint8 and np.array_equal(ex["tokens"], seq)
            label, positions = task.check_sequence(ex["tokens"], level)
            assert ex["label"] == label and list(ex["positions"]) == positions
            assert ex["length"] == len(ex["tokens"])
    if level == FOUR_NAME:
        assert builder.info.features["label"].names[:3] == ["XXXX", "XXXY", "XXYX"]


@pytest.mark.slow
def test_direct_writer_equals_tfds_generic_writer(tmp_path):
    config = TemporalOrderConfig(level="nightmare", train_size=2000, test_size=500)
    for name, generic in (("direct", False), ("generic", True)):
        Builder(config=config, data_dir=os.fspath(tmp_path / name), generic_writer=generic).download_and_prepare(
            file_format="array_record")
    rel = Path("temporal_order") / config.name / VERSION
    for split in ("train", "validation", "test"):
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
    # Put this checkout's packages first (not another installed copy).
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([os.fspath(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.slow
def test_build_command_and_tfds_cli_give_the_same_dataset(tmp_path):
    """A level of your own with four relevant symbols, as --level JSON here and as tfds build --config JSON."""
    ours = _run([sys.executable, "-m", "pipelines.build_dataset", "--level", json.dumps(FOUR), "--data-dir",
                 os.fspath(tmp_path / "ours"), "--train-size", "300", "--validation-size", "300", "--test-size", "300"])
    assert ours.returncode == 0, ours.stderr
    name = f"{FOUR_NAME}-train300-validation300-test300"
    ours_path = tmp_path / "ours" / "temporal_order" / name / VERSION
    assert f"{name}: {ours_path}" in ours.stdout
    # The tfds command line needs tensorflow, apache-beam and mlcroissant (the tfds-cli extra). The full-size
    # config, cut to 300 per split by TFDS's generic writer: the same first 300 records.
    cli = _run([*TFDS, "build", "qrsu_data/temporal_order", "--config", json.dumps(FOUR), "--file_format",
                "array_record", "--data_dir", os.fspath(tmp_path / "cli"), "--max_examples_per_split", "300"])
    assert cli.returncode == 0, cli.stderr[-3000:]
    cli_path = tmp_path / "cli" / "temporal_order" / FOUR_NAME / VERSION
    for split in ("train", "validation", "test"):
        _assert_same_examples(_examples(ours_path, split), _examples(cli_path, split))
    for path in (ours_path, cli_path):  # both through the builder: Croissant metadata beside dataset_info.json
        assert (path / "croissant.json").is_file() and (path / "dataset_info.json").is_file()


def test_unknown_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config 'hardest' \(unknown level 'hardest'\); choose one of: "
                                         r"easy, normal, moderate, hard"):
        store.build("hardest", tmp_path)
    res = _run([sys.executable, "-m", "pipelines.build_dataset", "--config", "hardest", "--data-dir",
                os.fspath(tmp_path)])
    assert res.returncode == 2 and "unknown config 'hardest'" in res.stderr and "nightmare" in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.splitlines()[-1].startswith(
        "python -m pipelines.build_dataset: error: ")
    assert not tmp_path.joinpath("temporal_order").exists()
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


@pytest.mark.slow
def test_failed_build_leaves_nothing_readable_and_the_next_build_succeeds(tmp_path, monkeypatch):
    real = splits.chunk_examples
    spec_kwargs = {"train_size": 25_000, "validation_size": 100, "test_size": 100}

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
    assert not (config_dir / VERSION).exists()
    assert not list(config_dir.glob("incomplete.*"))  # TFDS removed its temporary folder
    monkeypatch.setattr(splits, "chunk_examples", real)
    path = store.build("moderate", tmp_path, **spec_kwargs)
    assert len(_examples(path, "train")) == 25_000


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_build_recovers(tmp_path, sig):
    """Ctrl-C (TFDS cleans up) or a kill (nothing runs): never a readable half dataset; the next build works."""
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.build_dataset", "--config", "nightmare",
                             "--data-dir", os.fspath(tmp_path), "--train-size", "100000", "--validation-size", "100",
                             "--test-size", "100"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # A shell's background job starts with SIGINT ignored, and a Python that starts so
                            # never raises KeyboardInterrupt: give the build a terminal's default disposition.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    config_dir = tmp_path / "temporal_order" / "nightmare-validation100-test100"
    deadline = time.time() + 120
    while not list(config_dir.glob("incomplete.*/*train*")) and time.time() < deadline:
        assert proc.poll() is None, "build finished before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not store.is_built("nightmare-validation100-test100", tmp_path)
    with pytest.raises(Exception):
        tfds.builder_from_directory(os.fspath(config_dir / VERSION))
    path = store.build("nightmare", tmp_path, train_size=100_000, validation_size=100, test_size=100)
    assert not list(config_dir.glob("incomplete.*"))  # what the killed build left is gone
    assert len(tfds.builder_from_directory(os.fspath(path)).as_data_source()["train"]) == 100_000


def test_config_names_round_trip_and_name_their_build_command(tmp_path):
    spec = splits.SplitSpec.from_name("hard-train1000-test100-seed3")
    assert (spec.level, spec.train_size, spec.test_size, spec.seed) == ("hard", 1000, 100, 3)
    assert splits.SplitSpec.from_name("exp6b") == splits.SplitSpec("exp6b")
    for bad in ("hard-train", "hard-foo1", "hard-train100000", "hardest", "hard-seed0"):
        with pytest.raises(ValueError, match="unknown config"):
            splits.SplitSpec.from_name(bad)
    name = "easy-train300-validation20-test50"
    cmd = store.build_command(name, tmp_path)
    assert cmd == (f"python -m pipelines.build_dataset --config easy --data-dir {tmp_path} --train-size 300 "
                   f"--validation-size 20 --test-size 50")
    res = _run(cmd.split())
    assert res.returncode == 0, res.stderr
    assert store.is_built(name, tmp_path)
    # store.build takes the same names, and JSON of the same fields.
    assert store.build(name, tmp_path) == store.dataset_dir(name, tmp_path)
    as_json = '{"level": "easy", "train_size": 300, "validation_size": 20, "test_size": 50}'
    assert store.dataset_dir(as_json, tmp_path) == store.dataset_dir(name, tmp_path)
    assert store.is_built(as_json, tmp_path)
    # Names the flags cannot spell are built by name.
    assert store.build_command("len20_pos2_pos5-holdout0.3", tmp_path) == (
        f"python -m pipelines.build_dataset --config len20_pos2_pos5-holdout0.3 --data-dir {tmp_path}")
    assert store.build_command(f"{FOUR_NAME}-seed2", tmp_path).endswith(f"--config {FOUR_NAME} --data-dir "
                                                                        f"{tmp_path} --seed 2")


def test_a_version_folder_without_dataset_info_is_rebuilt_not_reused(tmp_path):
    path = _build("easy", tmp_path)
    digest = _digest(path)
    (path / "dataset_info.json").unlink()
    name = f"easy-{SMALL_NAME}"
    assert not store.is_built(name, tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m pipelines.build_dataset --config easy"):
        store.open_builder(name, tmp_path)
    res = _run([sys.executable, "-m", "pipelines.build_dataset", "--config", name, "--data-dir", os.fspath(tmp_path)])
    assert res.returncode == 0, res.stderr
    assert "lacks dataset_info.json, so it is incomplete; rebuilding it" in res.stderr
    assert store.is_built(name, tmp_path) and _digest(path) == digest


def test_only_stale_incomplete_folders_are_removed(tmp_path):
    config_dir = tmp_path / "temporal_order" / f"easy-{SMALL_NAME}"
    live, killed, unmarked_new, unmarked_old = (config_dir / f"incomplete.{n}.{VERSION}" for n in "abcd")
    for p in (live, killed, unmarked_new, unmarked_old):
        p.mkdir(parents=True)
        (p / "temporal_order-train.array_record-00000-of-00001").write_bytes(b"x")
    # A live build (ours or `tfds build`, both run this builder) holds its marker's lock; a killed one does not.
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_SH); print('locked', flush=True); time.sleep(60)",
                               os.fspath(live / incomplete.BUILD_MARKER)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (killed / incomplete.BUILD_MARKER).write_text("")
        old = time.time() - 2 * incomplete.UNMARKED_STALE_S
        for f in (*unmarked_old.rglob("*"), unmarked_old):
            os.utime(f, (old, old))
        path = _build("easy", tmp_path)
        assert live.is_dir() and unmarked_new.is_dir()  # another process may be writing these
        assert not killed.exists() and not unmarked_old.exists()
        assert store.is_built(f"easy-{SMALL_NAME}", tmp_path) and not (path / incomplete.BUILD_MARKER).exists()
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
    with pytest.raises(ValueError, match=r"100,000,000,019,999 sequences, about 15,300,000.0 GB on disk.*h to "
                                         r"generate.*GB free"):
        store.build("hard", tmp_path / "data", train_size=99_999_999_999_999)
    assert not (tmp_path / "data").exists()


def test_the_time_estimate_counts_symbols_not_only_sequences():
    # 120,000 sequences of ~10.5M symbols: ~1.3 TB. Their time is the symbols' (hours), not the sequences' (seconds).
    long = splits.SplitSpec.parse('{"length": [10000000, 11000000], "positions": [[10, 20], [500, 600]]}')
    assert store.estimated_bytes(long) > 1e12
    assert store.estimated_seconds(long) > 3600
    assert store.estimated_seconds(splits.SplitSpec("hard")) < 60  # 120,000 short sequences: seconds


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        splits.SplitSpec("hard", seed=-1)


def test_croissant_json_is_written_inside_the_atomic_build(tmp_path, monkeypatch):
    from qrsu_data import croissant

    real, written = croissant.write, []

    def recording(folder, *args, **kwargs):
        written.append(Path(folder))
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(croissant, "write", recording)
    path = _build("hard", tmp_path)
    (folder,) = written
    assert folder.name.startswith("incomplete.") and folder.parent == path.parent  # TFDS's temporary folder
    assert json.loads((path / "croissant.json").read_text())["name"] == f"temporal_order-hard-{SMALL_NAME}"

    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(croissant, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        _build("easy", tmp_path)
    assert not store.is_built(f"easy-{SMALL_NAME}", tmp_path)
    assert not (tmp_path / "temporal_order" / f"easy-{SMALL_NAME}" / VERSION).exists()


def _cli(argv, capsys):
    """Runs the build command in-process; (exit code, stdout, stderr)."""
    from pipelines import build_dataset

    try:
        code = build_dataset.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["--seed", "x"], "argument --seed: must be an integer >= 0, got 'x'"),
    (["--num-processes", "0"], "argument --num-processes: must be an integer >= 1, got 0"),
    (["--train-size", "0"], "argument --train-size: must be an integer >= 1, got 0"),
    (["--test-size", "1.5"], "argument --test-size: must be an integer >= 1, got '1.5'"),
    (["--validation-size", "-3"], "argument --validation-size: must be an integer >= 0, got -3"),
    (["--train-size", "99999999999999"], "holds 100,000,000,019,999 sequences, about 15,300,000.0 GB on disk"),
    (["--config", "hardest"], "unknown config 'hardest' (unknown level 'hardest'); choose one of: easy, normal"),
    (["--config", "hard", "--config", "hard-seed0"], "that config is named 'hard': use that name"),
    (["--config", "hard-len5000", "--train-size", "10"], "argument --train-size: no config given has a train split"),
    (["--config", "len4_pos1_pos2"], "leaves the held-out part, which test and validation draw from, empty"),
    (["--file-format", "csv"], "argument --file-format: invalid choice: 'csv' (choose from"),
    (["--level", "{bad"], "argument --level: level JSON '{bad' does not parse"),
    (["--level", '{"length": [10, 20], "positions": [[1, 2]]}'],
     "has 1 relevant position range(s); a level needs 2 to 8"),
    (["--level", '{"length": [10, 20], "positions": [[1, 5], [4, 6]]}'], "ranges must be in order and not overlap"),
    (["--config", '{"level": "hard", "train_sizes": 3}'], "unknown config JSON key(s) ['train_sizes']"),
    (["--suite", "hard-len5000"], "argument --suite: level 'hard-len5000' is already lengthened"),
    (["--data-dir", ""], "the data dir is empty"),
    (["--data-dir", "FILE"], "is a file, not a folder"),
])
def test_build_command_refuses_bad_input_and_writes_nothing(tmp_path, capsys, args, message):
    data = tmp_path / "data"
    if "FILE" in args:
        data.write_text("x")
        args = [os.fspath(data) if a == "FILE" else a for a in args]
    code, out, err = _cli(["--data-dir", os.fspath(data), *args], capsys)
    assert code == 2 and not out
    assert "error: " in err and message in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == (["data"] if "FILE" in args or data.is_file() else [])
    assert not data.is_dir()


def test_build_command_builds_named_json_and_suite_configs(tmp_path, capsys):
    from pipelines import build_dataset

    args = build_dataset.parse_args(["--data-dir", os.fspath(tmp_path), "--config", "all", "--suite", "hard",
                                     "--validation-size", "10"])
    # Sizes of splits a config lacks do not apply to it: the suite's configs are test-only.
    assert [s.name for s in args.specs] == [*(f"{lv}-validation10" for lv in task.LEVELS), *splits.suite("hard")]
    code, out, err = _cli(["--data-dir", os.fspath(tmp_path), "--config", '{"level": "easy", "train_size": 50}',
                           "--config", "easy-tail200", "--test-size", "20", "--validation-size", "10"], capsys)
    assert code == 0, err
    # (TFDS prints its own progress lines too.)
    built = [m.group(1) for m in re.finditer(r"^(\S+): \S+ \(\d+\.\d s\)$", out, re.M)]
    assert built == ["easy-train50-validation10-test20", "easy-tail200-test20"]
    for name in built:
        assert store.is_built(name, tmp_path)
    info = tfds.builder_from_directory(os.fspath(store.dataset_dir("easy-tail200-test20", tmp_path))).info
    assert list(info.splits) == ["test"] and info.splits["test"].num_examples == 20
