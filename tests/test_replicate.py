"""The trials machinery (stop rule, freezing, budgets, per-trial orders) and python -m pipelines.replicate."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pipelines import replicate
from pipelines.engine import trials
from qrsu_data import store

# ---------------------------------------------------------------- the stop rule on constructed streams
# A fake learner: a sequence is one token, a code saying how the "network" answers it. Its one parameter
# counts the updates (gradient 1, plain SGD with lr 1), so freezing is visible.
RIGHT, WRONG, UNSURE, LOOSE = 0, 1, 2, 3
"""RIGHT: confidently right; WRONG: the wrong class; UNSURE: right by argmax, not within 0.3 of the targets;
LOOSE: within 0.3 of every target (right by the paper's rule) but with error 0.5 * 4 * 0.29^2 = 0.168."""


def _logits(code, label):
    onehot = jnp.eye(4)[label]
    right = jnp.where(onehot > 0, 5.0, -5.0)
    wrong = jnp.where(jnp.roll(onehot, 1) > 0, 5.0, -5.0)
    unsure = jnp.where(onehot > 0, 0.3, 0.0)
    loose = jnp.where(onehot > 0, jnp.log(0.71 / 0.29), jnp.log(0.29 / 0.71))
    return jnp.select([code == RIGHT, code == WRONG, code == UNSURE], [right, wrong, unsure], loose)


def _fake_learner(batch_size=1):
    def grad(params, tokens, lengths, labels):
        logits = jnp.stack([_logits(c, y) for c, y in zip(tokens[:, -1], labels)])
        return trials.sequence_loss("squared_error")(logits, labels), logits, {"w": jnp.ones(())}

    return trials.Learner(init=lambda seed: {"w": jnp.zeros(())}, grad=grad, predict=None,
                          tx=optax.sgd(1.0), batch_size=batch_size)


def _split_read_as(stream, seed):
    """A split that the trial of ``seed`` reads in the order ``stream`` (its seeded order placed back)."""
    n = len(stream)
    tokens = np.zeros((n, 1), np.uint8)
    tokens[np.random.default_rng(seed).permutation(n), 0] = stream
    return trials.Split(tokens, np.ones(n, np.int32), np.arange(n, dtype=np.int32) % 4)


def _run(stream, rule, *, seed=0, budget=10**6, batch_size=1, chunk_steps=16):
    """(outcome, final parameter) of one fake trial reading ``stream``."""
    out, params = trials.train_trials(_fake_learner(batch_size), _split_read_as(stream, seed), [seed],
                                      budget=budget, rule=rule, chunk_steps=chunk_steps, progress=False)
    return out[0], float(params["w"][0])


WINDOW = 50
PAPER_LIKE = trials.StopRule(window=WINDOW)
ARGMAX = trials.StopRule(window=WINDOW, correct_by="argmax", max_error=None)


def test_stops_once_the_window_is_all_correct_and_freezes():
    stream = np.array([WRONG] * 30 + [RIGHT] * 100 + [WRONG] + [RIGHT] * 400)
    o, w = _run(stream, PAPER_LIKE)
    assert o.solved and o.sequences_to_stop == 30 + WINDOW
    assert o.sequences_trained == 80 and w == -80  # no update after the stop
    # A wrong answer resets the count: stop WINDOW sequences after the last wrong one.
    stream = np.array([WRONG] * 30 + [RIGHT] * (WINDOW - 1) + [WRONG] + [RIGHT] * 400)
    assert _run(stream, PAPER_LIKE)[0].sequences_to_stop == 30 + WINDOW + WINDOW


def test_the_mean_error_condition_holds_the_stop_back():
    stream = np.array([LOOSE] * WINDOW + [RIGHT] * 200)
    o, _ = _run(stream, PAPER_LIKE)
    # The window is all correct from sequence WINDOW on, but its mean error stays >= 0.1 until enough LOOSE
    # answers (error 0.168) have left it.
    loose = float(trials.sequence_loss("squared_error")(_logits(LOOSE, 0)[None], jnp.array([0]))[0])
    right = float(trials.sequence_loss("squared_error")(_logits(RIGHT, 0)[None], jnp.array([0]))[0])
    k = next(k for k in range(WINDOW) if ((WINDOW - k) * loose + k * right) / WINDOW < 0.1)
    assert 0.165 < loose < 0.17 and k > 0
    assert o.sequences_to_stop == WINDOW + k
    # Over a longer error window (all sequences read while fewer), the LOOSE answers weigh longer.
    longer = trials.StopRule(window=WINDOW, error_window=4 * WINDOW)
    k = next(k for k in range(1, 4 * WINDOW) if (WINDOW * loose + k * right) / (WINDOW + k) < 0.1)
    assert k > 20 and _run(stream, longer)[0].sequences_to_stop == WINDOW + k
    # Without the error condition the window alone decides.
    no_error = trials.StopRule(window=WINDOW, max_error=None)
    assert _run(stream, no_error)[0].sequences_to_stop == WINDOW


def test_argmax_and_threshold_rules_judge_differently():
    stream = np.array([UNSURE] * 200)
    assert _run(stream, ARGMAX)[0].sequences_to_stop == WINDOW
    o, _ = _run(stream, PAPER_LIKE)
    assert not o.solved


def test_batches_count_the_streak_in_reading_order():
    # Batch 4, window 8: the last wrong answer is sequence 10, the 2nd of the 3rd batch; the streak after it is
    # 2 at that batch's end, 6 after the 4th and 10 after the 5th batch, which ends at sequence 20.
    stream = np.array([WRONG] * 8 + [RIGHT, WRONG, RIGHT, RIGHT] + [RIGHT] * 40)
    rule = trials.StopRule(window=8, correct_by="argmax", max_error=None)
    o, w = _run(stream, rule, batch_size=4, chunk_steps=3)
    assert o.sequences_to_stop == 20 and w == -5  # 5 updates of batch 4


def test_budget_and_an_exhausted_split():
    stream = np.array([WRONG] * 100)
    o, w = _run(stream, PAPER_LIKE, budget=40)
    assert not o.solved and o.sequences_trained == 40 and not o.exhausted_split and w == -40
    o, _ = _run(stream, PAPER_LIKE, budget=1000)
    assert not o.solved and o.sequences_trained == 100 and o.exhausted_split


def test_trials_side_by_side_each_read_their_own_order():
    # One split; trials 0 and 1 read it in different orders, and side by side each gives what it gives alone.
    n = 400
    rng = np.random.default_rng(5)
    tokens = np.where(rng.random(n) < 0.03, WRONG, RIGHT).astype(np.uint8)[:, None]
    split = trials.Split(tokens, np.ones(n, np.int32), np.arange(n, dtype=np.int32) % 4)
    rule = trials.StopRule(window=40, max_error=None)
    together, _ = trials.train_trials(_fake_learner(), split, [0, 1], budget=n, rule=rule, chunk_steps=7,
                                      progress=False)
    alone = [trials.train_trials(_fake_learner(), split, [s], budget=n, rule=rule, progress=False)[0][0]
             for s in (0, 1)]
    assert [o.sequences_to_stop for o in together] == [o.sequences_to_stop for o in alone]
    assert together[0].sequences_to_stop != together[1].sequences_to_stop  # the orders differ
    for seed, o in zip((0, 1), together):  # the rule held exactly where this trial's order says
        seen = tokens[np.random.default_rng(seed).permutation(n), 0]
        wrong_at = np.flatnonzero(seen == WRONG)
        last_wrong = wrong_at[wrong_at < o.sequences_to_stop].max()
        assert o.sequences_to_stop == last_wrong + 1 + 40


def test_bootstrap_and_summary():
    rows = [dict(solved=True, sequences_to_stop=v, exhausted_split=False, wrong_of_2560=1, wrong_of_2560_argmax=0)
            for v in (100, 200, 300, 400)] + [dict(solved=False, sequences_to_stop=None, exhausted_split=True,
                                                    wrong_of_2560=5, wrong_of_2560_argmax=3)]
    s = replicate.summarize(rows, seed=0)
    assert (s["trials"], s["solved"], s["exhausted_split"], s["mean"], s["median"], s["min"], s["max"]) == \
        (5, 4, 1, 250.0, 250.0, 100, 400)
    lo, hi = s["ci95"]
    assert 100 <= lo < 250 < hi <= 400 and s["ci95"] == replicate.summarize(rows, seed=0)["ci95"]
    assert s["mean_wrong_of_2560"] == 1.8 and s["mean_wrong_of_2560_argmax"] == 0.6


# ------------------------------------------------------------------------------------------ end to end

SOLVING = "easy-train6000-test2560"
"""On this config seed 3's trial meets the paper's stop rule within 5,000 sequences (seeds 0-2 do not)."""
SMALL = "easy-train500-test2560"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for config in (SOLVING, SMALL):
        store.build(config, d)
    return d


def _args(data, out, *extra, config=SMALL):
    return ["--experiment", "6a", "--config", config, "--data-dir", os.fspath(data), "--out", os.fspath(out),
            "--no-progress", *extra]


@pytest.mark.slow
def test_the_precision_and_squashing_readings_run_and_are_recorded(data, tmp_path):
    # float64 needs jax_enable_x64 from the process's start: a process of its own.
    code = ("import sys; from pipelines import replicate; sys.exit(replicate.main(sys.argv[1:]))")
    args = _args(data, tmp_path / "r", "--trials", "2", "--budget", "300", "--dtype", "float64",
                 "--squash", "table10")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert res.returncode == 0, res.stderr[-2000:]
    settings = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]
    assert settings["dtype"] == "float64" and settings["squash"] == "table10"
    assert "Table 10 legend, float64" in (tmp_path / "r" / "results.md").read_text()
    probe = ("import jax; jax.config.update('jax_enable_x64', True)\n"
             "from pipelines.engine import trials\n"
             "l = trials.lstm1997_learner(num_classes=4, tx=trials.optimizer('sgd', 0.5), dtype='float64')\n"
             "print(sorted({str(a.dtype) for a in jax.tree.leaves(l.init(0))}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "['float64']", out.stderr[-2000:]
    with pytest.raises(ValueError, match="needs jax.config.update"):
        trials.lstm1997_learner(num_classes=4, tx=trials.optimizer("sgd", 0.5), dtype="float64")


def test_replication_end_to_end_and_repeatable(data, tmp_path):
    args = ("--trials", "4", "--budget", "5000")
    assert replicate.main(_args(data, tmp_path / "a", *args, config=SOLVING)) == 0
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    assert result["settings"]["trials"] == 4 and result["paper"]["mean_sequences"] == 31_390
    rows = result["trials"]
    assert [r["seed"] for r in rows] == [0, 1, 2, 3] and [r["solved"] for r in rows] == [False] * 3 + [True]
    for r in rows[:3]:
        assert r["sequences_trained"] == 5000 and not r["exhausted_split"] and r["sequences_to_stop"] is None
    solved = rows[3]  # stopped when the rule held: at least the window read, nothing after it
    assert 2000 <= solved["sequences_to_stop"] == solved["sequences_trained"] < 5000
    assert solved["window_error"] < 0.1 and 0 <= solved["wrong_of_2560"] <= 2560
    summary = result["summary"]
    assert summary["solved"] == 1 and summary["mean"] == summary["min"] == solved["sequences_to_stop"]
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| paper (Table 9) | 20 | | 31,390 |" in table and "| this replication | 4 | 1 |" in table
    assert (tmp_path / "a" / "sequences_to_solve.png").stat().st_size > 0
    # Same seeds, same table.
    assert replicate.main(_args(data, tmp_path / "b", *args, config=SOLVING)) == 0
    assert (tmp_path / "b" / "results.md").read_text() == table


def test_a_trial_that_reads_its_whole_split_says_so(data, tmp_path, capsys):
    assert replicate.main(_args(data, tmp_path, "--trials", "2", "--budget", "1000")) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["trials"]
    assert all(r["exhausted_split"] and not r["solved"] and r["sequences_trained"] == 500 for r in rows)
    assert "trial 1 (seed 1) exhausted the train split (500 sequences)" in capsys.readouterr().out
    assert "exhausted the train split |" in (tmp_path / "results.md").read_text()


def test_refuses_an_out_of_other_settings_or_a_file(data, tmp_path, capsys):
    assert replicate.main(_args(data, tmp_path / "a", "--trials", "1", "--budget", "100")) == 0
    assert replicate.main(_args(data, tmp_path / "a", "--trials", "1", "--budget", "100")) == 0  # same: fine
    assert replicate.main(_args(data, tmp_path / "a", "--trials", "1", "--budget", "200")) == 1
    assert "already holds results of other settings: budget: saved 100, asked 200" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert replicate.main(_args(data, tmp_path / "file")) == 1
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--trials", "-2"], "argument --trials: must be a positive integer, got '-2'"),
    (["--trials", "0"], "argument --trials: must be a positive integer, got '0'"),
    (["--seed", "-1"], "argument --seed: must be a non-negative integer, got '-1'"),
    (["--budget", "0"], "argument --budget: must be a positive integer, got '0'"),
    (["--lr", "-0.5"], "argument --lr: must be a positive number, got '-0.5'"),
    (["--lr", "nan"], "argument --lr: must be a positive number, got 'nan'"),
    (["--experiment", "6c"], "argument --experiment: invalid choice: '6c' (choose from '6a', '6b')"),
    (["--gradient", "rtrl"], "argument --gradient: invalid choice: 'rtrl' (choose from 'truncated', 'full')"),
    (["--config", "hardest"],
     "--config: unknown config 'hardest' (unknown level 'hardest'); choose one of: easy, normal"),
    (["--config", "exp6b"], "--config 'exp6b' has 8 classes; experiment 6a needs 4"),
])
def test_bad_flags_exit_2_with_a_message(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        replicate.main(["--out", os.fspath(tmp_path / "out"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
