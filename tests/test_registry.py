"""The models package's one interface: every registered model and a user's own, through the registry and the
pipelines (train, checkpoint, resume, evaluate, predict)."""

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from pipelines import evaluate, predict, train
from qrsu_data import store, task
from qrsu_models import registry

REPO = Path(__file__).resolve().parents[1]
CUSTOM = "examples.custom_model:TinyGRU"


def _padded(seqs, width, padding, rng):
    """Rows of ``width`` holding ``seqs`` pre- or post-padded with RANDOM valid ids (which must not matter)."""
    tokens = rng.integers(0, task.VOCAB_SIZE, (len(seqs), width)).astype(np.int32)
    for i, s in enumerate(seqs):
        if padding == "pre":
            tokens[i, width - len(s):] = s
        else:
            tokens[i, :len(s)] = s
    return jnp.asarray(tokens), jnp.asarray([len(s) for s in seqs], jnp.int32)


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch):
    monkeypatch.syspath_prepend(os.fspath(REPO))  # examples/ is importable as from the repository root


@pytest.mark.slow
@pytest.mark.parametrize("name", [*registry.names(), CUSTOM])
def test_a_sequences_logits_do_not_depend_on_its_batchs_padding(name):
    model = registry.get(name).build(num_classes=4, max_length=12, seed=0)
    rng = np.random.default_rng(0)
    batch = task.generate(task.Level("t", (6, 12), ((1, 2), (3, 4))), 6, rng)
    seqs = batch.sequences()
    reference = np.asarray(model(*_padded(seqs, 12, "pre", rng), "pre"))
    for padding, width in (("pre", 20), ("post", 12), ("post", 17)):
        got = np.asarray(model(*_padded(seqs, width, padding, rng), padding))
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5, err_msg=f"{name} {padding} {width}")
    alone = np.asarray(model(*_padded(seqs[:1], 12, "pre", rng), "pre"))
    np.testing.assert_allclose(alone[0], reference[0], rtol=1e-5, atol=1e-5)  # its batch-mates do not matter


@pytest.mark.parametrize("name", registry.names())
def test_every_model_reports_its_size_and_meets_the_interface(name):
    spec = registry.get(name)
    model = spec.build(num_classes=8, max_length=110, seed=1)
    assert registry.parameter_count(model) > 0 and registry.state_size(model, 110) > 0
    tokens, lengths = _padded([task.encode("BaXbcYdE")], 9, "pre", np.random.default_rng(0))
    logits = model(tokens, lengths)
    assert logits.shape == (1, 8) and logits.dtype == jnp.float32
    again = spec.build(num_classes=8, max_length=110, seed=1)
    np.testing.assert_array_equal(np.asarray(again(tokens, lengths)), np.asarray(logits))  # seeded


def test_the_lstms_size_is_the_seeds():
    lstm = registry.get("lstm").build(num_classes=4, max_length=110, seed=0)
    assert registry.parameter_count(lstm) == 4 * 64 * (8 + 64 + 1) + 64 * 4 + 4 == 18_948
    assert registry.state_size(lstm, 110) == 128  # h and c


def test_unknown_models_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'cnn'; choose one of: rnn, lstm, gru"):
        registry.get("cnn")
    with pytest.raises(ValueError, match="cannot load model 'no_such.module:X': ModuleNotFoundError"):
        registry.get("no_such.module:X")
    with pytest.raises(ValueError, match="model 'lstm' has no option 'layers'; its options: hidden, lstm_init"):
        registry.get("lstm").build(num_classes=4, max_length=8, seed=0, options={"layers": 2})
    assert registry.get(CUSTOM).options() == {"hidden": 32}


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        code = fn(*args)
    return code, out.getvalue()


@pytest.mark.slow
def test_a_model_of_your_own_trains_checkpoints_resumes_evaluates_and_predicts(tmp_path):
    data = tmp_path / "data"
    store.build("easy", data)
    w = tmp_path / "run"
    common = ["--model", CUSTOM, "--model-options", '{"hidden": 16}', "--data-dir", os.fspath(data),
              "--workdir", os.fspath(w), "--steps-per-epoch", "60", "--eval-batch-size", "2000", "--lr", "1e-2"]
    assert _quiet(train.main, [*common, "--epochs", "1"])[0] == 0
    saved = json.loads((w / "config.json").read_text())
    assert saved["model"] == CUSTOM and saved["parameters"] == 8 * 16 + 3 * (16 * 16 + 16 * 16 + 16) + 16 * 4 + 4
    assert saved["state_size"] == 16
    assert _quiet(train.main, ["--workdir", os.fspath(w), "--resume", "--epochs", "2"])[0] == 0
    history = json.loads((w / "history.json").read_text())
    assert history["epoch"] == [1, 2] and history["test"]["accuracy"] > 0.5
    code, out = _quiet(evaluate.main, ["--workdir", os.fspath(w)])
    assert code == 0 and f"{CUSTOM} on 'easy', checkpoint step 120" in out
    assert json.loads((w / "evaluation.json").read_text())["accuracy"] == pytest.approx(history["test"]["accuracy"])
    code, out = _quiet(predict.main, ["--workdir", os.fspath(w), "BaXbcYdE"])
    assert code == 0 and out.startswith("BaXbcYdE -> ")
    assert sys.modules["examples.custom_model"].__file__ == os.fspath(REPO / "examples" / "custom_model.py")
