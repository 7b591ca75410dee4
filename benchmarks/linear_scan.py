"""The diagonal linear recurrence h_t = a_t h_{t-1} + b_t: sequential (lax.scan) vs parallel (associative) scan.

    python benchmarks/linear_scan.py [--cases 32,501,128 32,1001,128] [--repeats 5]

For each case (batch, time, width) and dtype (float32, complex64), side by side in one process: the fastest of
``--repeats`` interleaved timings of forward plus backward (the gradient of a scalar loss w.r.t. a and b) of
:func:`qrsu_models.scan.sequential`, :func:`qrsu_models.scan.sequential_adjoint` (the same loop, hand-written
backward) and :func:`qrsu_models.scan.parallel`, first calls (compilation included), and the ratios
parallel / sequential and sequential / adjoint (above 1: the latter is faster). These choose ``scan="auto"``
(:func:`qrsu_models.scan.resolve`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from qrsu_models import scan


def _grad_fn(method):
    def loss(a, b):
        h = method(a, b)
        return jnp.sum(jnp.real(h * jnp.conj(h))) if jnp.iscomplexobj(h) else jnp.sum(h * h)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _inputs(batch: int, steps: int, width: int, dtype: str) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    shape = (steps, batch, width)
    mag = rng.uniform(0.9, 0.999, shape)
    if dtype == "complex64":
        a = mag * np.exp(1j * rng.uniform(0, np.pi, shape))
        b = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    else:
        a, b = mag, rng.normal(size=shape)
    return jnp.asarray(a, dtype), jnp.asarray(b, dtype)


def main() -> None:
    """Times every case and prints one table with ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["32,501,128", "32,1001,128", "128,111,64"], help="batch,time,width")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; forward + backward, best of {args.repeats}")
    print(f"{'batch':>6}{'time':>6}{'width':>6} {'dtype':<10}{'seq ms':>9}{'first s':>9}{'adj ms':>9}{'par ms':>9}"
          f"{'first s':>9}{'par/seq':>9}{'seq/adj':>9}")
    for case in args.cases:
        batch, steps, width = map(int, case.split(","))
        for dtype in ("float32", "complex64"):
            a, b = _inputs(batch, steps, width, dtype)
            fns = {"seq": _grad_fn(scan.sequential), "adj": _grad_fn(scan.sequential_adjoint),
                   "par": _grad_fn(scan.parallel)}
            first, best = {}, {k: float("inf") for k in fns}
            for k, f in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(f(a, b))
                first[k] = time.perf_counter() - t0
            for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(a, b))
                    best[k] = min(best[k], time.perf_counter() - t0)
            print(f"{batch:>6}{steps:>6}{width:>6} {dtype:<10}{best['seq'] * 1e3:>9.1f}{first['seq']:>9.2f}"
                  f"{best['adj'] * 1e3:>9.1f}{best['par'] * 1e3:>9.1f}{first['par']:>9.2f}"
                  f"{best['par'] / best['seq']:>9.2f}{best['seq'] / best['adj']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
