"""Every command, given bad input as a careless user would: a clear message, an exit code, no traceback, and
nothing already on disk changed. One table, one test."""

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest

from pipelines import build_dataset, evaluate, experiment, export, lengthgen, predict, replicate, train
from pipelines.engine.config import TrainConfig
from qrsu_data import store

COMMANDS = {"train": train.main, "evaluate": evaluate.main, "predict": predict.main, "experiment": experiment.main,
            "build": build_dataset.main, "export": export.main, "replicate": replicate.main,
            "lengthgen": lengthgen.main}

# (command, arguments, exit code, text stderr must hold). In arguments, DATA is a built data dir, RUN a workdir
# holding a trained run, FILE a plain file, EMPTY an empty folder, BADCONFIG a run whose config.json is damaged,
# NEW a folder that does not exist yet.
CASES = [
    ("train", ["--model", "cnn"], 2, "unknown model 'cnn'; choose one of: rnn, lstm, gru"),
    ("train", ["--model", "no_such_module:Model"], 2, "cannot load model 'no_such_module:Model'"),
    ("train", ["--difficulty", "medium"], 2, "unknown difficulty 'medium'; choose one of: easy, normal"),
    ("train", ["--difficulty", "hard-var300to200"], 2, "length range (300, 200) must satisfy 3 <= lo <= hi"),
    ("train", ["--model", "lru", "--initial-state", "passed"], 2, "Models with one: rnn, lstm, gru"),
    ("train", ["--model", "lstm", "--omega", "4"], 2, "Models that do: pascanu_rnn"),
    ("lengthgen", ["--cells", "foo"], 2, "unknown family 'foo'; choose among: lstm, gru"),
    ("lengthgen", ["--seeds", "1", "1"], 2, "--seeds must be distinct and non-negative, got [1, 1]"),
    ("lengthgen", ["--lrs", "0"], 2, "--lrs must be positive, got [0.0]"),
    ("lengthgen", ["--hidden", "0"], 2, "--hidden must be positive, got 0"),
    ("lengthgen", ["--pascanu", "--hidden", "64"], 2, "--lrs and --hidden belong to the matrix"),
    ("lengthgen", ["--pascanu-train", "100"], 2, "--pascanu-train belongs to --pascanu"),
    ("lengthgen", ["--pascanu-buckets", "10"], 2, "--pascanu-buckets belongs to --pascanu"),
    ("lengthgen", ["--pascanu", "--pascanu-buckets", "0"], 2, "--pascanu-buckets must be positive, got 0"),
    ("train", ["--batch-size", "0"], 2, "batch_size must be a positive integer, got 0"),
    ("train", ["--batch-size", "abc"], 2, "invalid int value: 'abc'"),
    ("train", ["--batch-size", "200000", "--grad-threads", "1", "--data-dir", "DATA", "--workdir", "NEW"], 2,
     "batch_size 200000 is larger than the 100000 examples"),
    ("train", ["--hidden", "-3"], 2, "hidden must be a positive integer, got -3"),
    ("train", ["--hidden", "100000", "--data-dir", "DATA", "--workdir", "NEW"], 1,
     "has 40,004,000,004 parameters, which need at least"),
    ("train", ["--lr", "0"], 2, "lr must be a positive number, got 0.0"),
    ("train", ["--lr=-1e-3"], 2, "lr must be a positive number, got -0.001"),
    ("train", ["--lr", "nan"], 2, "lr must be a positive number, got nan"),
    ("train", ["--lr", "inf"], 2, "lr must be a positive number, got inf"),
    ("train", ["--clip-norm", "-1"], 2, "clip_norm must be >= 0"),
    ("train", ["--seed", "-1"], 2, "seed must be an integer >= 0, got -1"),
    ("train", ["--seed", "1.5"], 2, "invalid int value: '1.5'"),
    ("train", ["--epochs", "0"], 2, "epochs must be a positive integer, got 0"),
    ("train", ["--steps-per-epoch", "-5"], 2, "steps_per_epoch must be an integer >= 0"),
    ("train", ["--padding", "middle"], 2, "unknown padding 'middle'; choose one of: pre, post"),
    ("train", ["--model", "gru", "--lstm-init", "chrono"], 2, "lstm_init 'chrono' applies to --model lstm only"),
    ("train", ["--lstm-init", "banana"], 2, "unknown lstm_init 'banana'; choose one of: default, forget_bias, chrono"),
    ("train", ["--grad-threads", "3"], 2, "batch_size 32 is not divisible by grad_threads 3"),
    ("train", ["--unroll", "-1"], 2, "unroll must be an integer >= 0"),
    ("train", ["--eval-batch-size", "0"], 2, "eval_batch_size must be a positive integer, got 0"),
    ("train", ["--checkpoint-every", "0"], 2, "checkpoint_every must be a positive integer, got 0"),
    ("train", ["--log-every", "-1"], 2, "log_every must be a positive integer, got -1"),
    ("train", ["--init-timeout", "0"], 2, "init_timeout must be a positive integer, got 0"),
    ("train", ["--num-processes", "0"], 2, "num_processes must be a positive integer, got 0"),
    ("train", ["--num-processes", "2"], 2, "--num-processes > 1 needs --coordinator-address"),
    ("train", ["--num-processes", "2", "--process-id", "5", "--coordinator-address", "localhost:1"], 2,
     "process_id must lie in 0..1, got 5"),
    ("train", ["--model-options", "{bad"], 2, "not JSON"),
    ("train", ["--model-options", "[1, 2]"], 2, "not a JSON object"),
    ("train", ["--model-options", '{"layers": 2}', "--data-dir", "DATA", "--workdir", "NEW"], 2,
     "model 'lstm' has no option 'layers'; its options: hidden, lstm_init, unroll"),
    # A family's own options are checked before anything is built, so a bad one costs no dataset build.
    *[("train", ["--model", model, "--model-options", options, "--data-dir", "NEW/data", "--workdir", "NEW/run"], 2,
       message) for model, options, message in [
        ("mamba", '{"state": 0}', "state must be a positive integer, got 0"),
        ("mingru", '{"scan": "fast"}', "unknown scan 'fast'; choose one of: auto, sequential, adjoint, parallel"),
        ("lru", '{"r_min": 1.5}', "the ring needs 0 <= r_min < r_max < 1, got r_min=1.5"),
        ("transformer", '{"heads": 5}', "hidden 64 must be a multiple of heads 5"),
        ("transformer", '{"positions": "alibi"}', "unknown positions 'alibi'; choose one of: rotary, sinusoidal"),
    ]],
    ("train", ["--workdir", "FILE"], 1, "is a file, not a folder"),
    ("train", ["--workdir", "FILE/run"], 1, "cannot use the workdir"),
    ("train", ["--workdir", ""], 2, "workdir must name a folder"),
    ("train", ["--data-dir", ""], 2, "the data dir is empty"),
    ("train", ["--data-dir", "FILE"], 2, "is a file, not a folder"),
    ("train", ["--workdir", "RUN", "--data-dir", "DATA"], 1, "already holds a run; pass --resume"),
    ("train", ["--workdir", "RUN", "--resume", "--lr", "0.1"], 2, "lr: saved 0.003, asked 0.1"),
    ("train", ["--workdir", "RUN", "--resume", "--overwrite"], 2, "--resume and --overwrite exclude each other"),
    ("train", ["--workdir", "EMPTY", "--resume"], 1, "holds no trained run (no config.json)"),
    ("train", ["--workdir", "BADCONFIG", "--resume"], 1, "config.json is not a run's config"),
    ("train", ["--workdir", "RUN", "--resume"], 1, "has trained 1 of its epochs already; pass --epochs"),
    ("train", ["--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    ("evaluate", ["--workdir", "NEW"], 1, "does not exist; train one with: python -m pipelines.train"),
    ("evaluate", ["--workdir", "FILE"], 1, "is a file, not a folder"),
    ("evaluate", ["--workdir", "EMPTY"], 1, "holds no trained run (no config.json)"),
    ("evaluate", ["--workdir", "BADCONFIG"], 1, "config.json is not a run's config"),
    ("evaluate", ["--workdir", "RUN", "--step", "7"], 1, "no checkpoint at step 7; available steps: 5"),
    ("evaluate", ["--workdir", "RUN", "--step", "-1"], 2, "argument --step: must be a checkpoint step >= 0, got -1"),
    ("evaluate", ["--workdir", "RUN", "--step", "abc"], 2, "invalid int value: 'abc'"),
    ("evaluate", ["--workdir", "RUN", "--split", "val"], 2, "unknown split 'val' of config 'easy'"),
    ("evaluate", ["--workdir", "RUN", "--data-dir", ""], 2, "the data dir is empty"),
    ("evaluate", ["--workdir", "RUN", "--config", "medium"], 2, "unknown config 'medium'"),
    ("evaluate", ["--workdir", "RUN", "--config", "exp6b"], 2,
     "has 8 classes but the run was trained on 'easy' with 4"),
    ("evaluate", [], 2, "the following arguments are required: --workdir"),
    ("predict", ["--workdir", "RUN", "BaXbcYdZ"], 2, "symbols ['Z'] are not in the vocabulary"),
    ("predict", ["--workdir", "RUN", "BXaYbXdE"], 2, "takes 2 relevant symbols (X or Y), found 3"),
    ("predict", ["--workdir", "RUN"], 2, "the following arguments are required: SEQ"),
    ("predict", ["--workdir", "EMPTY", "BaXbcYdE"], 1, "holds no trained run"),
    ("predict", ["--workdir", "RUN", "--step", "999", "BaXbcYdE"], 1, "no checkpoint at step 999"),
    ("predict", ["--workdir", "BADCONFIG", "BaXbcYdE"], 1, "config.json is not a run's config"),
    ("experiment", ["--cells", "cnn"], 2, "unknown model 'cnn'"),
    ("experiment", ["--levels", "medium"], 2, "unknown config 'medium'"),
    ("experiment", ["--seeds", "-1"], 2, "--seeds must be distinct integers >= 0, got [-1]"),
    ("experiment", ["--seeds", "1", "1"], 2, "--seeds must be distinct integers >= 0, got [1, 1]"),
    ("experiment", ["--protocol", "grid", "--lr-seeds", "4"], 2, "--lr-seeds must lie in 1..3"),
    ("experiment", ["--protocol", "grid", "--lrs", "-1"], 2, "--lrs must be positive numbers, got -1.0"),
    ("experiment", ["--protocol", "grid", "--lrs", "nan"], 2, "--lrs must be positive numbers, got nan"),
    ("experiment", ["--lrs", "1e-3"], 2, "--lrs and --lr-seeds belong to --protocol grid"),
    ("experiment", ["--protocol", "bayes"], 2, "invalid choice: 'bayes'"),
    ("experiment", ["--confirm-seeds", "100", "104"], 2, "--confirm-seeds must be distinct and apart from"),
    ("experiment", ["--cells", "gru", "--redo", "../x"], 2, "--redo takes a label for the folder superseded/LABEL"),
    ("experiment", ["--redo", "fix"], 2, "--redo sets aside every saved run of --cells on --levels, and these are all"),
    ("experiment", ["--replot", "NEW", "--cells", "gru", "--redo", "fix"], 2, "--redo does nothing with --replot"),
    ("experiment", ["--confirm", "-1"], 2, "--confirm must be 0 (no confirmation) or more, got -1"),
    ("experiment", ["--lengthgen-lengths", "50"], 2, "hard-len50"),
    ("experiment", ["--budget", "0"], 2, "--budget must be positive, got 0"),
    ("experiment", ["--check-every", "-5"], 2, "--check-every must be positive, got -5"),
    ("experiment", ["--batch-size", "0"], 2, "--batch-size must be positive, got 0"),
    ("experiment", ["--grad-threads", "3"], 2, "--grad-threads must be >= 1 and divide --batch-size 16"),
    ("experiment", ["--clip-norm", "-1"], 2, "--clip-norm must be >= 0"),
    ("experiment", ["--data-dir", ""], 2, "the data dir is empty"),
    ("experiment", ["--out", "FILE"], 1, "is a file, not a folder"),
    ("experiment", ["--workers", "0"], 2, "--workers must be positive, got 0"),
    ("experiment", ["--address", " "], 2, "--address must name a Ray cluster"),
    ("experiment", ["--replot", "EMPTY"], 1, "results.json does not exist"),
    ("build", ["--config", "medium", "--data-dir", "DATA"], 2, "unknown config 'medium'"),
    ("build", ["--seed", "-1", "--data-dir", "DATA"], 2, "argument --seed: must be an integer >= 0, got -1"),
    ("build", ["--num-processes", "0"], 2, "argument --num-processes: must be an integer >= 1, got 0"),
    ("build", ["--data-dir", "FILE"], 2, "is a file, not a folder"),
    ("build", ["--data-dir", ""], 2, "the data dir is empty"),
    ("build", ["--train-size", "99999999999999", "--data-dir", "DATA"], 2, "GB on disk"),
    ("build", ["--train-size", "-5"], 2, "argument --train-size: must be an integer >= 1, got -5"),
    ("build", ["--file-format", "csv"], 2, "invalid choice: 'csv'"),
    ("build", ["--level", "{bad"], 2, "level JSON '{bad' does not parse"),
    ("build", ["--level", '{"length": [10, 20], "positions": [[5, 8], [6, 9]]}'], 2, "overlap"),
    ("export", ["--config", "hard", "--format", "csv", "--out", "NEW"], 2, "invalid choice: 'csv'"),
    ("export", ["--config", "easy", "--out", "FILE", "--data-dir", "DATA"], 2, "is a file"),
    ("export", ["--config", "medium", "--out", "NEW"], 2, "unknown config 'medium'"),
    ("export", ["--config", "easy", "--out", ""], 2, "the export folder is empty"),
    ("replicate", ["--experiment", "6c"], 2, "invalid choice: '6c'"),
    ("replicate", ["--trials", "0"], 2, "--trials"),
    ("replicate", ["--seed", "-1"], 2, "--seed"),
    ("replicate", ["--out", "FILE"], 1, "is a file"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a built dataset, a trained run, a file, an empty folder and a run with a damaged config."""
    root = tmp_path_factory.mktemp("world")
    store.build("easy", root / "data")
    train.run(TrainConfig(data_dir=os.fspath(root / "data"), workdir=os.fspath(root / "run"), epochs=1,
                          steps_per_epoch=5, eval_batch_size=2000))
    (root / "afile").write_text("a file, not a folder")
    (root / "empty").mkdir()
    shutil.copytree(root / "run", root / "badconfig")
    (root / "badconfig" / "config.json").write_text("{not json")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    # The workdir lock's holder note changes while a command holds it; it is not part of any run.
    return {os.fspath(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if p.name != ".lock"}


def _args(args: list[str], root: Path) -> list[str]:
    names = {"DATA": "data", "RUN": "run", "FILE": "afile", "EMPTY": "empty", "BADCONFIG": "badconfig", "NEW": "new"}
    out = []
    for a in args:
        head, _, tail = a.partition("/")
        out.append(os.fspath(root / names[head] / tail) if head in names else a)
    return out


@pytest.mark.parametrize("command, args, code, message", CASES,
                         ids=[f"{c}-{' '.join(a)[:40]}" for c, a, _, _ in CASES])
def test_bad_input_is_a_clear_message_and_changes_nothing(world, monkeypatch, command, args, code, message):
    monkeypatch.chdir(world)  # defaults such as runs/lstm-easy-seed42 land here, and must not appear
    monkeypatch.setenv(store.DATA_DIR_ENV, os.fspath(world / "data"))
    before = _snapshot(world)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            got = COMMANDS[command](_args(args, world))
        except SystemExit as e:  # argparse's own errors
            got = e.code
    stderr = err.getvalue()
    assert got == code, (got, stderr[-2000:])
    assert message in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    assert _snapshot(world) == before


def test_sigterm_stops_a_command_as_ctrl_c_does(capsys):
    # kill, timeout and job schedulers send SIGTERM: the command stops through its Ctrl-C path (finished work
    # kept, workers stopped), says so, and exits 130, instead of dying where it stands.
    import signal
    import time

    from pipelines.engine import errors

    def main() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert errors.guarded(main) == errors.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "error: interrupted" in err and "run the same command again" in err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only
