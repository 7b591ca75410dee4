"""Mamba's selective scan on CPU: each method of ``mamba.selective_scan`` alone, and the whole model's gradient.

    python benchmarks/selective_scan.py [--cases 111,16 501,16 111,128] [--methods fused fused-adjoint]
                                        [--repeats 5] [--no-scan] [--no-model]

Side by side in one process, the fastest of ``--repeats`` interleaved timings (drift on a shared machine hits
every method alike), first calls (compilation included) in seconds:

* scan: forward + backward of :func:`qrsu_models.mamba.selective_scan` at the grid's Mamba (D = 96 channels,
  N = 16), every output (``last=False``, as a block under another one reads it) and the last step only
  (``last=True``, as the classifier's last block reads it), for each (time, batch) case;
* model: ``jax.value_and_grad`` of the training loss of the grid's Mamba (hidden 48, one block) and, as the
  control, of our LSTM, on one batch of real task sequences of the case's length and batch size (a batch of B
  here is what one of the train step's 2 gradient threads takes of a batch of 2B).

The ratio columns are the first method's time over each method's (above 1: faster).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from pipelines import steps  # noqa: E402
from qrsu_data import task  # noqa: E402
from qrsu_models import mamba, registry  # noqa: E402

LEVELS = {111: "hard", 501: "nightmare"}
"""Levels whose sequences the model cases use, by length (max_length + 1 steps of the model's loop)."""


def scan_inputs(steps: int, batch: int, channels: int = 96, state: int = 16, seed: int = 0):
    """(dt, x, b, c, a) of a selective scan at the grid's Mamba sizes, dt in the init's range, padding first."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(steps // 2, steps + 1, batch)
    real = (np.arange(steps)[:, None] >= steps - lengths[None, :])[..., None]
    dt = np.log1p(np.exp(rng.normal(-4.0, 1.0, (steps, batch, channels))))
    x = rng.normal(size=(steps, batch, channels)) * real
    b, c = rng.normal(size=(2, steps, batch, state))
    a = -np.arange(1, state + 1) * rng.uniform(0.5, 1.5, (channels, state))
    return tuple(jnp.asarray(v, jnp.float32) for v in (dt, x, b, c, a))


def _best(fns: dict, args: tuple, repeats: int) -> tuple[dict, dict]:
    """(first-call seconds, best seconds) of each function on args, timed interleaved."""
    first, best = {}, {k: float("inf") for k in fns}
    for k, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        first[k] = time.perf_counter() - t0
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            best[k] = min(best[k], time.perf_counter() - t0)
    return first, best


def _row(label: str, first: dict, best: dict) -> str:
    base = best[next(iter(best))]
    return label + "".join(f"{best[k] * 1e3:>14.1f}{first[k]:>7.1f}{base / best[k]:>7.2f}" for k in best)


def _header(label: str, names: list[str]) -> str:
    return label + "".join(f"{k:>14}{'first':>7}{'ratio':>7}" for k in names)


def scan_table(cases: list[tuple[int, int]], methods: list[str], repeats: int) -> None:
    """Forward + backward of the scan alone, per method, every output and the last step only."""
    print(_header(f"{'scan ms':<8}{'time':>6}{'batch':>6}", methods))
    for length, batch in cases:
        args = scan_inputs(length, batch)
        for last in (False, True):
            w = jnp.asarray(np.random.default_rng(1).normal(size=(batch, 96) if last else (length, batch, 96)),
                            jnp.float32)

            def grad(method, last=last, w=w):
                return jax.jit(jax.value_and_grad(
                    lambda *a: jnp.sum(mamba.selective_scan(*a, method=method, last=last) * w), argnums=range(5)))

            first, best = _best({m: grad(m) for m in methods}, args, repeats)
            print(_row(f"{'last' if last else 'all':<8}{length:>6}{batch:>6}", first, best), flush=True)


def model_table(cases: list[tuple[int, int]], methods: list[str], repeats: int) -> None:
    """The loss gradient of the grid's Mamba per scan method beside our LSTM's, on real task batches."""
    from train_throughput import make_batches

    names = ["lstm", *methods]
    print(_header(f"{'model ms':<8}{'time':>6}{'batch':>6}", names))
    for length, batch in cases:
        level = task.get_level(LEVELS[length])
        placed = {k: jnp.asarray(v) for k, v in make_batches(level, batch, 1)[0].items()}
        fns = {}
        for name in names:
            cell, options = ("lstm", {}) if name == "lstm" else ("mamba", {"hidden": 48, "scan": name})
            model = registry.get(cell).build(num_classes=level.num_classes, max_length=level.max_length, seed=0,
                                             options=options)
            split, params = steps.SplitModel.of(model, "pre")
            grad = jax.jit(lambda p, b, split=split: jax.value_and_grad(steps.loss_fn, has_aux=True)(p, split, b))
            fns[name] = lambda b, grad=grad, params=params: grad(params, b)
        first, best = _best(fns, (placed,), repeats)
        print(_row(f"{'':<8}{length:>6}{batch:>6}", first, best), flush=True)


def main() -> None:
    """Prints the scan table and the model table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["111,16", "501,16", "111,128", "501,128"], help="time,batch")
    p.add_argument("--methods", nargs="+", default=["fused", "fused-adjoint"], choices=list(mamba.SCANS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-scan", action="store_true", help="skip the scan-alone table")
    p.add_argument("--no-model", action="store_true", help="skip the whole-model table")
    args = p.parse_args()
    cases = [tuple(map(int, c.split(","))) for c in args.cases]
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; forward + backward, best of {args.repeats}, "
          f"ms; ratio: {args.methods[0]}'s time / each one's")
    if not args.no_scan:
        scan_table(cases, args.methods, args.repeats)
    if not args.no_model:
        model_table([c for c in cases if c[0] in LEVELS], args.methods, args.repeats)


if __name__ == "__main__":
    main()
