"""What a hand-fused CPU kernel would gain: the LSTM recurrence's gradient by XLA (ours) vs by a numba kernel.

Issue 5 asks for 1.5x PyTorch's ``nn.LSTM`` at ``hard``, batch 32, on 2 CPU cores, and our step measures about
1x there. The remaining cost is the recurrence's forward and backward loops. This probe answers one question
before anyone adds a compiled kernel to the package: how much faster is the same math when every time step
is one fused native loop instead of a sequence of XLA ops?

* ours: ``jax.vjp`` of ``qrsu_models.recurrence.lstm_last_hidden`` (what the model runs), jitted;
* fused: a numba kernel doing the same math per time step: one BLAS matmul for the gates, the gate
  nonlinearities in one vectorised loop (Eigen's float tanh, the approximation XLA:CPU uses), the gates and
  cells stored for the backward pass (so 3 matmuls per step instead of our 4), and dW_hh as ONE matmul after
  the backward loop. Called directly, with its buffers allocated once and reused: the kernel's best case.
* callback: the same kernel inside a jitted ``jax.vjp``, through ``jax.custom_vjp`` and ``jax.pure_callback``
  (the supported way to call Python-side code from a jitted step without a compiled extension). Its results,
  the stored gates included, are copied into XLA's buffers.

All get the same inputs; the script checks that their results agree, then times each alone and as two
concurrent copies on two threads (what the train step does at batch 32: two threads of batch 16 each; the
callback runs on one thread only, see ``main``). Rounds alternate between them, and the medians are printed
with the ratios ours/fused and ours/callback (above 1: ours is slower). numba is not a dependency of qrsu:
without it the script says so and exits.

    pip install numba && python benchmarks/fused_kernel_probe.py
    python benchmarks/fused_kernel_probe.py --cases 111x16 501x32 --seconds 2
"""

from __future__ import annotations

import os

# The fused kernel's per-step matmuls are tiny: run from two threads at once, each must not also spread over
# OpenBLAS's own threads (measured 2-7x slower that way). Set before numpy loads OpenBLAS; XLA does not use it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qrsu_data import task
from qrsu_models import recurrence

HIDDEN = 64
V = task.VOCAB_SIZE
GATE_SCALE = np.repeat(np.float32([0.5, 0.5, 1.0, 0.5]), HIDDEN)
"""k per gate column (i, f, g, o): the kernels compute tanh(k * z), and sigmoid(z) = 0.5 * tanh(z / 2) + 0.5."""


def _numba_kernels() -> tuple[Callable, Callable]:
    """The fused forward and backward kernels, compiled on first call."""
    import numba as nb

    opts = dict(nogil=True, fastmath=True, error_model="numpy")
    half, one, clamp = np.float32(0.5), np.float32(1.0), np.float32(7.90531110763549805)

    @nb.njit(inline="always", **opts)
    def tanh(x):
        # Eigen's generic_fast_tanh_float: a 13/6 rational approximation that vectorises (libm's tanh does not).
        x = min(max(x, -clamp), clamp)
        x2 = x * x
        p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
        p = x2 * p + np.float32(-8.60467152213735e-11)
        p = x2 * p + np.float32(5.12229709037114e-08)
        p = x2 * p + np.float32(1.48572235717979e-05)
        p = x2 * p + np.float32(6.37261928875436e-04)
        p = x2 * p + np.float32(4.89352455891786e-03)
        q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
        q = x2 * q + np.float32(2.26843463243900e-03)
        q = x2 * q + np.float32(4.89352518554385e-03)
        return x * p / q

    @nb.njit(**opts)
    def forward(tokens, w_in, w_hh, k, hs, cs, us, z):
        # us[t, b] = tanh(k * z): the sigmoid gates are 0.5 * u + 0.5 (k = 0.5 on them, 1 on the cell input).
        steps, batch = tokens.shape
        hidden, vocab = w_hh.shape[0], w_in.shape[0]
        h = np.zeros((batch, hidden), np.float32)
        c = np.zeros((batch, hidden), np.float32)
        for t in range(steps):
            hs[t] = h
            np.dot(h, w_hh, z)
            for b in range(batch):
                # Rows as 1-D views, one output per loop: LLVM vectorises only when it can rule out aliasing.
                tok, zb, ub, cb, hb = tokens[t, b], z[b], us[t, b], c[b], h[b]
                if 0 <= tok < vocab:
                    wr = w_in[tok]
                    for j in range(4 * hidden):
                        ub[j] = tanh((zb[j] + wr[j]) * k[j])
                else:
                    for j in range(4 * hidden):
                        ub[j] = tanh(zb[j] * k[j])
                for j in range(hidden):
                    cb[j] = (half * ub[hidden + j] + half) * cb[j] + (half * ub[j] + half) * ub[2 * hidden + j]
                    hb[j] = (half * ub[3 * hidden + j] + half) * tanh(cb[j])
            cs[t] = c
        return h

    @nb.njit(**opts)
    def backward(tokens, w_in, w_hh, k, hs, cs, us, dh, dz_all, tc, dw_in, dw_hh):
        steps, batch = tokens.shape
        hidden, vocab = w_hh.shape[0], w_in.shape[0]
        dc = np.zeros((batch, hidden), np.float32)
        w_t = np.ascontiguousarray(w_hh.T)
        n = hidden
        for t in range(steps - 1, -1, -1):
            dz = dz_all[t]
            for b in range(batch):
                ub, cb, dzb, dhb, dcb = us[t, b], cs[t, b], dz[b], dh[b], dc[b]
                for j in range(n):
                    tc[j] = tanh(cb[j])
                for j in range(n):
                    dcb[j] += dhb[j] * (half * ub[3 * n + j] + half) * (one - tc[j] * tc[j])
                for j in range(n):
                    dzb[3 * n + j] = dhb[j] * tc[j] * half * (one - ub[3 * n + j] * ub[3 * n + j]) * k[3 * n + j]
                for j in range(n):
                    dzb[j] = dcb[j] * ub[2 * n + j] * half * (one - ub[j] * ub[j]) * k[j]
                for j in range(n):
                    dzb[2 * n + j] = dcb[j] * (half * ub[j] + half) * (one - ub[2 * n + j] * ub[2 * n + j]) * k[2 * n + j]
                if t > 0:
                    cpb = cs[t - 1, b]
                    for j in range(n):
                        dzb[n + j] = dcb[j] * cpb[j] * half * (one - ub[n + j] * ub[n + j]) * k[n + j]
                else:
                    for j in range(n):
                        dzb[n + j] = 0
                for j in range(n):
                    dcb[j] *= half * ub[n + j] + half
            np.dot(dz, w_t, dh)
        np.dot(hs.reshape(steps * batch, hidden).T, dz_all.reshape(steps * batch, 4 * hidden), dw_hh)
        dw_in[:] = 0
        for t in range(steps):
            for b in range(batch):
                tok = tokens[t, b]
                if 0 <= tok < vocab:
                    dr, src = dw_in[tok], dz_all[t, b]
                    for j in range(4 * hidden):
                        dr[j] += src[j]

    return forward, backward


class Fused:
    """The fused kernel's gradient for one (steps, batch) shape, with its buffers allocated once."""

    def __init__(self, kernels: tuple[Callable, Callable], steps: int, batch: int):
        self.forward, self.backward = kernels
        h, g = HIDDEN, 4 * HIDDEN
        self.k = GATE_SCALE
        self.hs, self.cs = np.empty((steps, batch, h), np.float32), np.empty((steps, batch, h), np.float32)
        self.us, self.dz = np.empty((steps, batch, g), np.float32), np.empty((steps, batch, g), np.float32)
        self.z, self.dh, self.tc = np.empty((batch, g), np.float32), np.empty((batch, h), np.float32), np.empty(h, np.float32)
        self.dw_in, self.dw_hh = np.empty((V, g), np.float32), np.empty((h, g), np.float32)

    def __call__(self, tokens, w_in, w_hh, dh_last):
        """(h_T, dL/dw_in, dL/dw_hh) for the cotangent ``dh_last`` of h_T."""
        h = self.forward(tokens, w_in, w_hh, self.k, self.hs, self.cs, self.us, self.z)
        self.dh[:] = dh_last
        self.backward(tokens, w_in, w_hh, self.k, self.hs, self.cs, self.us, self.dh, self.dz, self.tc,
                      self.dw_in, self.dw_hh)
        return h, self.dw_in, self.dw_hh


def _jitted_grad(recurrence_fn: Callable) -> Callable:
    """Jitted (tokens, w_in, w_hh, dh_last) -> (h_T, dL/dw_in, dL/dw_hh) of ``recurrence_fn``, blocking."""
    def grad(tokens, w_in, w_hh, dh_last):
        h, vjp = jax.vjp(lambda a, b: recurrence_fn(tokens, a, b), w_in, w_hh)
        return (h, *vjp(dh_last))
    jitted = jax.jit(grad)
    return lambda *args: jax.block_until_ready(jitted(*args))


def ours() -> Callable:
    """The model's recurrence, as the train step differentiates it."""
    return _jitted_grad(recurrence.lstm_last_hidden)


def callback(kernels: tuple[Callable, Callable]) -> Callable:
    """The fused kernel's forward and backward as ``jax.pure_callback`` calls inside a jitted vjp."""
    forward, backward = kernels
    h, g = HIDDEN, 4 * HIDDEN
    k = GATE_SCALE  # the kernels take it as an argument

    def f32(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    def run_forward(tokens, w_in, w_hh):
        steps, batch = tokens.shape
        hs, cs = np.empty((steps, batch, h), np.float32), np.empty((steps, batch, h), np.float32)
        us = np.empty((steps, batch, g), np.float32)
        last = forward(np.asarray(tokens), np.asarray(w_in), np.asarray(w_hh), k, hs, cs, us,
                       np.empty((batch, g), np.float32))
        return last, hs, cs, us

    def run_backward(tokens, w_in, w_hh, hs, cs, us, dh_last):
        steps, batch = tokens.shape
        dw_in, dw_hh = np.empty((V, g), np.float32), np.empty((h, g), np.float32)
        backward(np.asarray(tokens), np.asarray(w_in), np.asarray(w_hh), k, np.asarray(hs), np.asarray(cs),
                 np.asarray(us), np.array(dh_last), np.empty((steps, batch, g), np.float32),
                 np.empty(h, np.float32), dw_in, dw_hh)
        return dw_in, dw_hh

    def fwd(tokens, w_in, w_hh):
        steps, batch = tokens.shape
        shapes = (f32(batch, h), f32(steps, batch, h), f32(steps, batch, h), f32(steps, batch, g))
        last, hs, cs, us = jax.pure_callback(run_forward, shapes, tokens, w_in, w_hh)
        return last, (tokens, w_in, w_hh, hs, cs, us)

    def bwd(res, dh_last):
        return (None, *jax.pure_callback(run_backward, (f32(V, g), f32(h, g)), *res, dh_last))

    lstm = jax.custom_vjp(lambda tokens, w_in, w_hh: fwd(tokens, w_in, w_hh)[0])
    lstm.defvjp(fwd, bwd)
    return _jitted_grad(lstm)


def _inputs(steps: int, batch: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (steps, batch)).astype(np.int32)
    tokens[: steps // 10] = V  # pre-padding, as the loaders produce it
    return (tokens, (rng.standard_normal((V, 4 * HIDDEN)) * 0.3).astype(np.float32),
            (rng.standard_normal((HIDDEN, 4 * HIDDEN)) * 0.2).astype(np.float32),
            rng.standard_normal((batch, HIDDEN)).astype(np.float32))


def _rate(fns: list[Callable], args: list[tuple], seconds: float) -> float:
    """Mean seconds per call of each fn, all running at once on their own threads for ``seconds``."""
    counts, stop = [0] * len(fns), time.perf_counter() + seconds

    def loop(i):
        while time.perf_counter() < stop:
            fns[i](*args[i])
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(fns))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) / (sum(counts) / len(fns))


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=["111x16", "111x32", "111x256", "501x32"],
                   help="STEPSxBATCH shapes to time (hard is 111 steps, nightmare 501)")
    p.add_argument("--seconds", type=float, default=1.0, help="timing window of one round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are printed")
    args = p.parse_args(argv)
    try:
        cases = [tuple(int(x) for x in c.split("x")) for c in args.cases]
        if any(len(c) != 2 or min(c) < 1 for c in cases):
            raise ValueError
    except ValueError:
        p.error(f"--cases takes STEPSxBATCH with positive integers, e.g. 111x32; got {' '.join(args.cases)}")
    try:
        import numba
    except ImportError:
        print("numba is not installed: `pip install numba` to run this probe (it is not a qrsu dependency)")
        return 0
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, numba {numba.__version__}")
    start = time.perf_counter()
    kernels = _numba_kernels()
    Fused(kernels, 2, 2)(*_inputs(2, 2, 0))
    print(f"numba compile (cold, both kernels): {time.perf_counter() - start:.1f} s")

    names = ("ours", "fused", "callback")
    print(f"{'steps':>5} {'batch':>5} {'threads':>7} " + " ".join(f"{n + ' ms':>11}" for n in names)
          + f" {'ours/fused':>10} {'ours/callback':>13}  max |diff|")
    for steps, batch in cases:
        inputs = [_inputs(steps, batch, s) for s in range(2)]
        fns = {"ours": [ours()] * 2, "fused": [Fused(kernels, steps, batch) for _ in range(2)],
               "callback": [callback(kernels)] * 2}
        want = fns["ours"][0](*inputs[0])
        diff = max(float(np.abs(np.asarray(w) - np.asarray(g)).max())
                   for name in names[1:] for w, g in zip(want, fns[name][0](*inputs[0])))
        for threads in (1, 2):
            # Two concurrent callbacks hung (both threads asleep inside the kernel's BLAS calls) in 2 of 3
            # runs at batch 256, so the callback is timed on one thread only.
            timed = names if threads == 1 else names[:2]
            times = {name: [] for name in timed}
            for _ in range(args.rounds):
                for name in timed:
                    times[name].append(_rate(fns[name][:threads], inputs[:threads], args.seconds))
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            cells = [f"{ms[n]:>11.2f}" if n in ms else f"{'-':>11}" for n in names]
            ratios = [f"{ms['ours'] / ms['fused']:>9.2f}x",
                      f"{ms['ours'] / ms['callback']:>12.2f}x" if "callback" in ms else f"{'-':>13}"]
            print(f"{steps:>5} {batch:>5} {threads:>7} " + " ".join(cells + ratios) + f"  {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
