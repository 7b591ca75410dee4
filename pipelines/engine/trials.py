"""Independent training trials side by side in one program, each until a stop rule holds.

A trial is one network trained from its own seed on the train split read in its own seeded order (so no
trial sees a sequence twice). All trials run in lockstep under ``jax.vmap``: one jitted call trains every
trial on ``chunk`` optimizer steps (``lax.scan``), and a trial whose stop rule held is frozen (its
parameters, optimizer state and counters stop changing) while the others go on. Predictions used by the stop
rule are made on each training sequence before the update it causes (the online training error).

What a trial learns with is a :class:`Learner`: its initial parameters, the gradient of one batch, its
optimizer, its batch size. :func:`lstm1997_learner` is the 1997 LSTM (``qrsu_models.lstm1997``),
:func:`classifier_learner` today's ``SequenceClassifier``. Used by ``pipelines.replicate`` (the 1997 protocol)
and ``pipelines.factors`` (from the 1997 protocol to today's training, one factor at a time).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from qrsu_data import interop, splits, store, task
from qrsu_models import SequenceClassifier, apply_fn, layout, lstm1997

PAPER_TEST = 2560
"""The 1997 paper's test set: its figure is wrong answers among this many fresh sequences."""
PAPER_TABLE_9 = {"6a": {"config": "hard", "mean_sequences": 31_390, "trials": 20, "wrong_of_2560": 1},
                 "6b": {"config": "exp6b", "mean_sequences": 571_100, "trials": 10, "wrong_of_2560": 2}}
"""Table 9 of the 1997 paper: per experiment, its level, the mean training sequences until the stop rule held,
the trials, the test errors."""
LOSSES: tuple[str, ...] = ("squared_error", "cross_entropy")
"""'squared_error': the paper's 0.5 sum (sigmoid(logit) - 0/1 target)^2; 'cross_entropy': softmax CE."""
CORRECT_BY: tuple[str, ...] = ("threshold", "argmax")
"""A sequence is correct: 'threshold', every output's absolute error below the threshold (the paper's rule,
on sigmoid outputs); 'argmax', the largest logit is the label's."""
MAX_WINDOW = 100_000
"""The largest window a stop rule may keep (each trial carries its errors in a ring buffer of that size)."""
CHUNK_STEPS = 250
"""Optimizer steps per jitted call (one host round trip per chunk; the call itself is ~0.1-1 s)."""


@dataclasses.dataclass(frozen=True)
class StopRule:
    """A trial stops once its ``window`` most recent training sequences were all correct (and, with
    ``max_error``, their mean error was below it)."""

    window: int = 2000
    correct_by: str = "threshold"
    threshold: float = 0.3
    max_error: float | None = 0.1
    error_window: int | None = None
    """The mean error is over this many most recent sequences (all of them while fewer were read); None: the
    correctness window. The paper does not say."""

    def __post_init__(self):
        if self.correct_by not in CORRECT_BY:
            raise ValueError(f"unknown correct_by {self.correct_by!r}; choose one of: {', '.join(CORRECT_BY)}")
        for name in ("window", "error_window"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= MAX_WINDOW:
                raise ValueError(f"{name} must be in 1..{MAX_WINDOW:,}, got {value}")

    @property
    def errors_kept(self) -> int:
        """How many recent errors the rule needs (0 without an error condition)."""
        return 0 if self.max_error is None else (self.error_window or self.window)

    def describe(self) -> str:
        """The rule in words."""
        correct = (f"every output's absolute error < {self.threshold:g}" if self.correct_by == "threshold"
                   else "the largest output is the label's (argmax)")
        error = ""
        if self.max_error is not None:
            over = "their" if self.errors_kept == self.window else f"the {self.errors_kept:,} most recent sequences'"
            error = f" and {over} mean error (0.5 sum of squared output errors) < {self.max_error:g}"
        return (f"the {self.window:,} most recent training sequences all correct ({correct}, judged before "
                f"each update){error}")


PAPER_STOP = StopRule()
"""The 1997 paper's stop rule (Table 9): the 2,000 most recent sequences correct by the 0.3 rule, mean error
below 0.1."""


def correct(logits: jax.Array, labels: jax.Array, rule: StopRule) -> jax.Array:
    """bool [...]: whether each prediction is correct under ``rule.correct_by``."""
    if rule.correct_by == "argmax":
        return jnp.argmax(logits, axis=-1) == labels
    target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.all(jnp.abs(jax.nn.sigmoid(logits) - target) < rule.threshold, axis=-1)


def sequence_loss(loss: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(logits [..., C], label [...]) -> per-sequence loss [...]`` for a name in LOSSES."""
    if loss == "squared_error":
        return lstm1997.squared_error
    if loss == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels
    raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")


GradFn = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, Any]]
"""``(params, tokens [bs, T], lengths [bs], labels [bs]) -> (loss [bs], logits [bs, C], grads of the mean)``."""


@dataclasses.dataclass(frozen=True)
class Learner:
    """How a trial learns: initial parameters from a seed, the gradient of one batch, the optimizer."""

    init: Callable[[int], Any]
    grad: GradFn
    predict: Callable[[Any, jax.Array, jax.Array], jax.Array]
    tx: optax.GradientTransformation
    batch_size: int = 1


@functools.lru_cache(maxsize=32)
def optimizer(name: str, lr: float, clip_norm: float = 0.0) -> optax.GradientTransformation:
    """'sgd' (plain gradient descent, no momentum: the paper's) or 'adam', optionally clipped at a global norm.

    Cached, like the learners: the same settings give the same objects, so compiled trainers are reused."""
    if name == "sgd":
        tx = optax.sgd(lr)
    elif name == "adam":
        tx = optax.adam(lr)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: sgd, adam")
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


def _mean_over_batch(tree: Any) -> Any:
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), tree)


@functools.lru_cache(maxsize=32)
def lstm1997_learner(*, num_classes: int, blocks: int | None = None, gradient: str = "truncated",
                     method: str = "rtrl", loss: str = "squared_error", tx: optax.GradientTransformation,
                     batch_size: int = 1, biased_gate: str = "input",
                     squash: tuple[float, float] = lstm1997.SQUASH, dtype: str = "float32") -> Learner:
    """The 1997 LSTM; ``method`` 'rtrl' (forward partials, truncated only) or 'autodiff' computes the gradient;
    ``squash`` the half-ranges of g and h; ``dtype`` 'float64' (needs ``jax_enable_x64``) the precision."""
    if method not in ("rtrl", "autodiff"):
        raise ValueError(f"unknown method {method!r}; choose one of: rtrl, autodiff")
    if method == "rtrl" and gradient != "truncated":
        raise ValueError(f"method 'rtrl' computes the truncated gradient only, got gradient={gradient!r}")
    blocks = blocks or lstm1997.default_blocks(num_classes)
    loss_of = sequence_loss(loss)

    if dtype not in ("float32", "float64"):
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: float32, float64")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype 'float64' needs jax.config.update('jax_enable_x64', True) before any array is made")

    def init(seed: int):
        # The same initial weights at either precision: drawn in float32, then cast.
        params = lstm1997.init_params(jax.random.key(seed), blocks=blocks, num_classes=num_classes,
                                      biased_gate=biased_gate)
        return jax.tree.map(lambda a: a.astype(dtype), params)

    def one(params, ids, mask, label):
        fn = lambda logits: loss_of(logits, label)  # noqa: E731
        if method == "rtrl":
            return lstm1997.truncated_loss_and_grad_rtrl(params, ids, mask, fn, squash)
        return lstm1997.loss_and_grad(params, ids, mask, fn, gradient, squash)

    def grad(params, tokens, lengths, labels):
        ids, mask = layout.right_aligned(tokens, lengths, "pre")
        losses, logits, grads = jax.vmap(one, in_axes=(None, 0, 0, 0))(params, ids, mask, labels)
        return losses, logits, _mean_over_batch(grads)

    def predict(params, tokens, lengths):
        return lstm1997.apply(params, tokens, lengths, "pre", gradient, squash)

    return Learner(init, grad, predict, tx, batch_size)


@functools.lru_cache(maxsize=32)
def classifier_learner(*, num_classes: int, hidden: int, lstm_init: str, loss: str = "cross_entropy",
                       tx: optax.GradientTransformation, batch_size: int = 16) -> Learner:
    """Today's LSTM, ``qrsu_models.SequenceClassifier('lstm', ...)`` (forget gate), trained by full BPTT."""

    def build(seed: int):
        return nnx.split(SequenceClassifier("lstm", hidden=hidden, num_classes=num_classes, lstm_init=lstm_init,
                                            rngs=nnx.Rngs(seed)))

    graphdef, _ = build(0)
    apply = apply_fn(graphdef)
    loss_of = sequence_loss(loss)

    def grad(params, tokens, lengths, labels):
        def f(p):
            logits = apply(p, tokens, lengths, "pre")
            losses = loss_of(logits, labels)
            return jnp.mean(losses), (losses, logits)

        (_, (losses, logits)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return losses, logits, grads

    return Learner(lambda seed: build(seed)[1], grad, lambda p, t, n: apply(p, t, n, "pre"), tx, batch_size)


@dataclasses.dataclass(frozen=True)
class Split:
    """A split in host memory: tokens uint8 [N, T] pre-padded, lengths [N], labels [N]."""

    tokens: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        """The first ``n`` sequences."""
        return Split(self.tokens[:n], self.lengths[:n], self.labels[:n])


def load_split(config: str, split: str, data_dir: str | os.PathLike | None) -> Split:
    """A built config's split as a :class:`Split` (tokens kept as uint8: 2M exp6b sequences are 220 MB)."""
    d = interop.numpy_split(config, split, data_dir=data_dir, padding="pre")
    return Split(d["tokens"].astype(np.uint8), d["lengths"].astype(np.int32), d["label"].astype(np.int32))


def num_classes_of(config: str) -> int:
    """The class count of a config's level; ValueError naming the valid forms for an unknown config."""
    name = store.check_config(config)  # the config's canonical name
    return task.get_level(splits.SplitSpec.from_name(name).level).num_classes


@dataclasses.dataclass
class TrialOutcome:
    """How one trial's training ended."""

    trial: int
    seed: int
    solved: bool
    sequences_to_stop: int | None
    sequences_trained: int
    exhausted_split: bool
    window_error: float | None
    """Mean error over the error window's sequences at the end (None when the rule has no error condition)."""
    final_streak: int
    """Consecutive correct training sequences at the end (how close an unsolved trial came)."""


def trial_seeds(seed: int, trials: int) -> list[int]:
    """Trial i's seed: ``seed + i`` (so the first trials of a larger run are a smaller run's trials)."""
    return [seed + i for i in range(trials)]


def _where(cond: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


@functools.lru_cache(maxsize=16)
def _make_chunk_fn(learner: Learner, rule: StopRule):
    """The jitted ``(state, tokens, lengths, labels, pos0, limit) -> state`` over every trial and a chunk of
    steps (cached, so that runs with the same learner and rule compile once per shape)."""
    bs, window, kept = learner.batch_size, rule.window, rule.errors_kept

    def trial(state, tokens, lengths, labels, pos0, limit):
        def step(state, inputs):
            tok, lens, labs, k = inputs
            losses, logits, grads = learner.grad(state["params"], tok.astype(jnp.int32), lens, labs)
            ok = correct(logits, labs, rule)
            updates, opt_state = learner.tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            # The streak of consecutive correct sequences, in reading order.
            last_wrong = jnp.max(jnp.where(ok, -1, jnp.arange(bs, dtype=jnp.int32)))
            streak = jnp.where(last_wrong < 0, state["streak"] + bs, bs - 1 - last_wrong).astype(jnp.int32)
            seen = state["seen"] + bs
            holds = streak >= window
            new = {"params": params, "opt_state": opt_state, "streak": streak, "seen": seen}
            if kept:
                slots = (state["seen"] + jnp.arange(bs)) % kept
                errors = state["errors"].at[slots].set(losses.astype(state["errors"].dtype))
                holds &= jnp.sum(errors) / jnp.minimum(seen, kept) < rule.max_error  # unread slots hold 0
                new["errors"] = errors
            new["stopped"] = holds
            active = ~state["stopped"] & (pos0 + (k + 1) * bs <= limit)
            return _where(active, new, state), None

        steps = jnp.arange(tokens.shape[0])
        state, _ = jax.lax.scan(step, state, (tokens, lengths, labels, steps))
        return state

    return jax.jit(jax.vmap(trial, in_axes=(0, 0, 0, 0, None, None)), donate_argnums=0)


def train_trials(learner: Learner, train: Split, seeds: Sequence[int], *, budget: int, rule: StopRule,
                 chunk_steps: int = CHUNK_STEPS, progress: bool = True, desc: str = "training"
                 ) -> tuple[list[TrialOutcome], Any]:
    """Trains one trial per seed side by side until each one's stop rule holds or it has read
    ``min(budget, len(train))`` sequences; returns the outcomes and the stacked final parameters."""
    from tqdm import tqdm

    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    n, bs = len(seeds), learner.batch_size
    limit = min(budget, len(train))
    # Every trial reads the split in its own seeded order, at most once.
    orders = np.stack([np.random.default_rng(s).permutation(len(train)).astype(np.int64)[:limit] for s in seeds])
    params = jax.tree.map(lambda *a: jnp.stack(a), *[learner.init(s) for s in seeds])
    state = {"params": params, "opt_state": jax.vmap(learner.tx.init)(params),
             "streak": jnp.zeros((n,), jnp.int32), "seen": jnp.zeros((n,), jnp.int32),
             "stopped": jnp.zeros((n,), bool)}
    if rule.errors_kept:
        state["errors"] = jnp.zeros((n, rule.errors_kept), jnp.float32)
    chunk_fn = _make_chunk_fn(learner, rule)
    per_chunk = chunk_steps * bs
    steps_total = limit // bs
    with tqdm(total=steps_total * bs, desc=desc, unit="seq", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for pos0 in range(0, steps_total * bs, per_chunk):
            idx = orders[:, pos0:pos0 + per_chunk]
            if idx.shape[1] < per_chunk:  # the last chunk: pad with sequence 0, read by no active trial
                idx = np.pad(idx, ((0, 0), (0, per_chunk - idx.shape[1])))
            shape = (n, chunk_steps, bs)
            state = chunk_fn(state, jnp.asarray(train.tokens[idx].reshape(*shape, -1)),
                             jnp.asarray(train.lengths[idx].reshape(shape)),
                             jnp.asarray(train.labels[idx].reshape(shape)), pos0, limit)
            stopped = np.asarray(state["stopped"])
            bar.update(min(per_chunk, steps_total * bs - pos0))
            bar.set_postfix(stopped=f"{int(stopped.sum())}/{n}")
            if stopped.all():
                break
    seen = np.asarray(state["seen"])
    stopped, streak = np.asarray(state["stopped"]), np.asarray(state["streak"])
    window_error = (np.asarray(jnp.sum(state["errors"], axis=1)) / np.maximum(1, np.minimum(seen, rule.errors_kept))
                    if rule.errors_kept else [None] * n)
    outcomes = [TrialOutcome(trial=i, seed=int(s), solved=bool(stopped[i]),
                             sequences_to_stop=int(seen[i]) if stopped[i] else None,
                             sequences_trained=int(seen[i]),
                             exhausted_split=bool(not stopped[i] and limit == len(train)
                                                  and seen[i] == steps_total * bs),
                             window_error=None if window_error[i] is None else round(float(window_error[i]), 6),
                             final_streak=int(streak[i]))
                for i, s in enumerate(seeds)]
    return outcomes, state["params"]


def wrong_answers(learner: Learner, params: Any, test: Split, threshold: float = 0.3
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per trial, wrong answers on ``test``: (by the paper's rule, every output within ``threshold`` of its
    0/1 target, on sigmoid outputs; by argmax)."""
    by_rule, by_argmax = _wrong_answers(learner.predict, threshold, params, jnp.asarray(test.tokens, jnp.int32),
                                        jnp.asarray(test.lengths), jnp.asarray(test.labels))
    return np.asarray(by_rule), np.asarray(by_argmax)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _wrong_answers(predict, threshold, params, tokens, lengths, labels):
    rule = StopRule(correct_by="threshold", threshold=threshold)

    def wrong(p):
        logits = predict(p, tokens, lengths)
        return jnp.sum(~correct(logits, labels, rule)), jnp.sum(jnp.argmax(logits, axis=-1) != labels)

    return jax.lax.map(wrong, params)  # one trial at a time: one trial's forward pass is big enough
