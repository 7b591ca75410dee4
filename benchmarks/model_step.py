"""Training-step throughput of qrsu_models.SequenceClassifier vs a plain nnx.RNN reference (and PyTorch).

One training step = value_and_grad of the mean softmax cross-entropy + an optax.adam update, jitted as a
pure function of (params, opt_state, batch), over random token ids of full length. For each cell, batch size
and length it prints sequences/s and the first-step time (compile + run) of

* ours: ``SequenceClassifier`` (one ``[h | onehot] @ [W_hh; W_in]`` matmul a step, fused gates, the
        hand-written backward pass of ``qrsu_models/recurrence.py``);
* autodiff: the same forward, differentiated by JAX's autodiff of the scan (``custom_grad=False``): the
        measurement that decides whether a hand-written backward pass is kept;
* ref:  the seed-style model, ``nnx.RNN(cell)`` over one-hot inputs, last output -> ``nnx.Linear``
        (LSTMCell / GRUCell / SimpleCell with relu(tanh)), autodiff through the scan;
* torch (LSTM only, if ``import torch`` works): ``nn.LSTM(8 -> 64, batch_first)`` on one-hot inputs +
  ``nn.Linear`` + ``torch.optim.Adam``, same shapes.

Steady-state timings are the best of ``--repeats`` rounds (ours and ref interleaved, so background load hits
them alike). Torch runs in a child process: in the same process the idle threads of XLA's and torch's
thread pools spin against each other on 2 cores (that measured torch 2-40x slower, so the ratio would have
flattered us). XLA and torch run with their default flags and thread counts.

    python benchmarks/model_step.py                      # everything (a few minutes on 2 cores)
    python benchmarks/model_step.py --cells lstm --batch 32 --length 111
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from qrsu_data import task
from qrsu_models import SequenceClassifier

HIDDEN = 64
NUM_CLASSES = 4
V = task.VOCAB_SIZE


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def ours_step(cell: str, seed: int = 0, custom_grad: bool = True) -> tuple[Callable, tuple]:
    """Jitted (params, opt_state, tokens, lengths, labels) -> (params, opt_state, loss) of the fast path.

    ``custom_grad=False`` runs the same forward with JAX's autodiff of the scan instead of the hand-written
    backward pass (``recurrence.last_hidden(custom_grad=False)``)."""
    graphdef, params = nnx.split(SequenceClassifier(cell, hidden=HIDDEN, num_classes=NUM_CLASSES, rngs=nnx.Rngs(seed)))

    def apply(p, tokens, lengths):
        model = nnx.merge(graphdef, p)
        return model.head(model.last_hidden(tokens, lengths, custom_grad=custom_grad))

    tx = optax.adam(1e-3)

    def step(params, opt_state, tokens, lengths, labels):
        loss, grads = jax.value_and_grad(lambda p: _loss(apply(p, tokens, lengths), labels))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), (params, tx.init(params))


class _Reference(nnx.Module):
    """The seed's model shape: flax cell in nnx.RNN over one-hot inputs, last output -> Linear."""

    def __init__(self, cell: str, rngs: nnx.Rngs):
        if cell == "lstm":
            c = nnx.LSTMCell(V, HIDDEN, rngs=rngs)
        elif cell == "gru":
            c = nnx.GRUCell(V, HIDDEN, rngs=rngs)
        else:  # the seed's SimpleRNN applies relu to SimpleCell's tanh output
            c = nnx.SimpleCell(V, HIDDEN, activation_fn=lambda x: jax.nn.relu(jnp.tanh(x)), rngs=rngs)
        self.cell_name = cell
        self.rnn = nnx.RNN(c)
        self.linear = nnx.Linear(HIDDEN, NUM_CLASSES, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = jax.nn.one_hot(tokens, V, dtype=jnp.float32)
        zeros = jnp.zeros((tokens.shape[0], HIDDEN), jnp.float32)
        carry = (zeros, zeros) if self.cell_name == "lstm" else zeros  # explicit carry: no rng use under jit
        return self.linear(self.rnn(x, initial_carry=carry)[:, -1])


def reference_step(cell: str, seed: int = 0) -> tuple[Callable, tuple]:
    """Jitted train step of the plain nnx.RNN reference (lengths ignored: random tokens fill every row)."""
    # nnx.RNN keeps an rng stream: only the Params are trained, the rest is a constant of the step.
    graphdef, params, rest = nnx.split(_Reference(cell, nnx.Rngs(seed)), nnx.Param, ...)
    tx = optax.adam(1e-3)

    def step(params, opt_state, tokens, lengths, labels):
        loss, grads = jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p, rest)(tokens), labels))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), (params, tx.init(params))


class _JaxRunner:
    def __init__(self, step: Callable, state: tuple, batch: tuple):
        self.step, self.state, self.batch = step, state, batch

    def __call__(self) -> None:
        params, opt_state, loss = self.step(*self.state, *self.batch)
        self.state = (params, opt_state)
        self._last = loss

    def sync(self) -> None:
        jax.block_until_ready(self._last)


class _TorchRunner:
    def __init__(self, batch: int, length: int, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.torch = torch
        self.lstm = torch.nn.LSTM(V, HIDDEN, batch_first=True)
        self.linear = torch.nn.Linear(HIDDEN, NUM_CLASSES)
        self.opt = torch.optim.Adam([*self.lstm.parameters(), *self.linear.parameters()], lr=1e-3)
        rng = np.random.default_rng(seed)
        self.tokens = torch.from_numpy(rng.integers(0, V, (batch, length)))
        self.labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch))

    def __call__(self) -> None:
        f = self.torch.nn.functional
        x = f.one_hot(self.tokens, V).float()
        out, _ = self.lstm(x)
        loss = f.cross_entropy(self.linear(out[:, -1]), self.labels)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def sync(self) -> None:
        pass


def _first_step(runner) -> float:
    t = time.perf_counter()
    runner()
    runner.sync()
    return time.perf_counter() - t


def _timed(runner, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        runner()
    runner.sync()
    return (time.perf_counter() - t) / n


def measure(runners: dict[str, object], repeats: int, round_seconds: float) -> tuple[dict, dict]:
    """First-step seconds and best steady-state seconds/step of each runner, rounds interleaved."""
    first = {k: _first_step(r) for k, r in runners.items()}
    est = {}
    for k, r in runners.items():  # warm up, then size the rounds to ~round_seconds each
        r()
        est[k] = _timed(r, 1)
    n = {k: max(1, int(round_seconds / max(est[k], 1e-6))) for k in runners}
    best = dict(est)
    for _ in range(repeats):
        for k, r in runners.items():
            best[k] = min(best[k], _timed(r, n[k]))
    return first, best


def torch_in_child(batch: int, length: int, repeats: int, round_seconds: float) -> tuple[float, float]:
    """(first-step seconds, best seconds/step) of the torch LSTM step, measured in a fresh child process."""
    cmd = [sys.executable, __file__, "--torch-worker", f"{batch},{length},{repeats},{round_seconds}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    return res["first"], res["best"]


def _torch_worker(spec: str) -> None:
    batch, length, repeats, round_seconds = spec.split(",")
    first, best = measure({"torch": _TorchRunner(int(batch), int(length))}, int(repeats), float(round_seconds))
    print(json.dumps({"first": first["torch"], "best": best["torch"]}))


def main() -> None:
    """Runs the benchmark grid and prints one line per (cell, batch, length)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--batch", default="32,256")
    ap.add_argument("--length", default="111,501")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--round-seconds", type=float, default=1.0)
    ap.add_argument("--no-reference", action="store_true", help="skip the nnx.RNN reference")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: B,T,repeats,round_seconds
    args = ap.parse_args()
    if args.torch_worker:
        _torch_worker(args.torch_worker)
        return

    torch_ok = False
    if not args.no_torch:
        try:
            import torch

            torch_ok = True
            print(f"torch {torch.__version__} (threads={torch.get_num_threads()})")
        except Exception as e:  # noqa: BLE001 - any import failure just means "no torch column"
            print(f"torch unavailable ({type(e).__name__}: {e}); skipping the PyTorch comparison")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, hidden={HIDDEN}, adam, full-length random tokens")
    header = (f"{'cell':5s} {'B':>4s} {'T':>4s} | {'ours seq/s':>10s} {'first s':>7s} | {'autodiff':>8s} "
              f"{'ours/auto':>9s} | {'ref seq/s':>9s} {'first s':>7s} | {'ours/ref':>8s} | {'torch seq/s':>11s} "
              f"{'ours/torch':>10s}")
    print(header)
    print("-" * len(header))
    for cell in args.cells.split(","):
        for batch in map(int, args.batch.split(",")):
            for length in map(int, args.length.split(",")):
                rng = np.random.default_rng(0)
                data = (jnp.asarray(rng.integers(0, V, (batch, length)), jnp.int32),
                        jnp.full((batch,), length, jnp.int32),
                        jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32))
                runners = {"ours": _JaxRunner(*ours_step(cell), data),
                           "autodiff": _JaxRunner(*ours_step(cell, custom_grad=False), data)}
                if not args.no_reference:
                    runners["ref"] = _JaxRunner(*reference_step(cell), data)
                first, best = measure(runners, args.repeats, args.round_seconds)
                del runners  # free the JAX buffers before torch runs
                if torch_ok and cell == "lstm":
                    first["torch"], best["torch"] = torch_in_child(batch, length, args.repeats, args.round_seconds)
                sps = {k: batch / v for k, v in best.items()}
                ref = (f"{sps['ref']:9.0f} {first['ref']:7.2f} | {sps['ours'] / sps['ref']:7.2f}x"
                       if "ref" in sps else f"{'-':>9s} {'-':>7s} | {'-':>8s}")
                tor = (f"{sps['torch']:11.0f} {sps['ours'] / sps['torch']:9.2f}x" if "torch" in sps
                       else f"{'-':>11s} {'-':>10s}")
                auto = f"{sps['autodiff']:8.0f} {sps['ours'] / sps['autodiff']:8.2f}x"
                print(f"{cell:5s} {batch:4d} {length:4d} | {sps['ours']:10.0f} {first['ours']:7.2f} | {auto} | {ref} | "
                      f"{tor}", flush=True)


if __name__ == "__main__":
    main()
