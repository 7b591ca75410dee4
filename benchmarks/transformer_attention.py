"""The Transformer's attention methods side by side in one process: training gradient and long forward passes.

    python benchmarks/transformer_attention.py [--batch-sizes 16 128] [--lengths 8 40 80 110 500] [--repeats 4]
                                               [--threads 2] [--forward-lengths 1000 5000] [--forward-batch 8]
                                               [--blocks Q,K,S ...]

Gradient: milliseconds of the default transformer's loss gradient (forward plus backward, jitted) on random
rows of each length, for each method of :data:`qrsu_models.transformer.ATTENTIONS` (``dense`` and
``blockwise``; ``auto`` is one of them) and for each ``--blocks`` variant of the blockwise one (its queries,
keys and scores per block, forward and backward alike), fastest of interleaved repeats. ``--threads`` threads
each take the gradient of their own batch of ``--batch-sizes`` rows at once, as the training step's gradient
threads do on a CPU (batch 32 is 2 x 16 there, batch 256 2 x 128), so the figure is per step of
``threads x batch`` rows. Forward: seconds per 1,000 sequences of the model's forward at each
``--forward-lengths`` (evaluation), dense only where its scores fit in 2 GiB.

Each case is its own model and its own ``jax.jit`` of the model's ``encode`` (not the model's cached
``__call__``), so no two cases share a compiled function.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's packages, not an installed copy

from qrsu_models import transformer

DENSE_SCORES = 1 << 29
"""Most scores (floats: 2 GiB) the dense method is timed with."""


def rows(batch_size: int, length: int, seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(tokens, lengths, labels) of random rows of ``length`` tokens, 60-100% of them real."""
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 8, (batch_size, length)), jnp.int32),
            jnp.asarray(rng.integers(length * 3 // 5, length + 1, batch_size), jnp.int32),
            jnp.asarray(rng.integers(0, 4, batch_size), jnp.int32))


def build(method: str, blocks: transformer.Blocks | None):
    """(graphdef, params, forward blocks, backward blocks) of the default transformer with ``method``."""
    model = transformer.TransformerClassifier(num_classes=4, max_length=110, attention=method, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    return graphdef, params, blocks or transformer.FORWARD_BLOCKS, blocks or transformer.BACKWARD_BLOCKS


def compiled(case, fn, *args):
    """``fn`` jitted and compiled for ``args`` with the case's blocks in force (they are read while tracing)."""
    saved = transformer.FORWARD_BLOCKS, transformer.BACKWARD_BLOCKS
    transformer.FORWARD_BLOCKS, transformer.BACKWARD_BLOCKS = case[2], case[3]
    try:
        return jax.jit(fn).lower(*args).compile()
    finally:
        transformer.FORWARD_BLOCKS, transformer.BACKWARD_BLOCKS = saved


def gradient(case, batch_size: int, length: int, threads: int):
    """A callable running ``threads`` concurrent loss gradients of the case, one batch each."""
    graphdef, params = case[0], case[1]

    def loss(p, tokens, lengths, labels):
        logits = nnx.merge(graphdef, p).head(nnx.merge(graphdef, p).encode(tokens, lengths))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    parts = [rows(batch_size, length, seed) for seed in range(threads)]
    fn = compiled(case, jax.value_and_grad(loss), params, *parts[0])
    pool = ThreadPoolExecutor(threads)
    return lambda: list(pool.map(lambda part: jax.block_until_ready(fn(params, *part)), parts))


def forward(case, batch_size: int, length: int):
    """A callable running the case's forward over one batch."""
    graphdef, params = case[0], case[1]
    tokens, lengths, _ = rows(batch_size, length, 0)
    fn = compiled(case, lambda p, t, n: nnx.merge(graphdef, p).head(nnx.merge(graphdef, p).encode(t, n)),
                  params, tokens, lengths)
    return lambda: jax.block_until_ready(fn(params, tokens, lengths))


def fastest(calls: dict, repeats: int) -> dict[str, float]:
    """Seconds of each callable: the fastest of ``repeats`` interleaved runs, after one warm-up each."""
    for call in calls.values():
        call()
    best = {name: np.inf for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    """Prints the gradient table, then the forward table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 128], help="rows per thread")
    p.add_argument("--lengths", nargs="+", type=int, default=[8, 40, 80, 110, 500])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--forward-lengths", nargs="*", type=int, default=[1000, 5000])
    p.add_argument("--forward-batch", type=int, default=8)
    p.add_argument("--blocks", nargs="*", default=[], help="blockwise variants, each QUERIES,KEYS,SCORES")
    args = p.parse_args()
    variants = {"dense": ("dense", None), "blockwise": ("blockwise", None)}
    for spec in args.blocks:
        variants[f"bw {spec}"] = ("blockwise", transformer.Blocks(*map(int, spec.split(","))))
    cases = {name: build(*v) for name, v in variants.items()}
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; default blocks forward "
          f"{transformer.FORWARD_BLOCKS}, backward {transformer.BACKWARD_BLOCKS}")
    print(f"gradient, ms per {args.threads} concurrent batches; auto = "
          + ", ".join(f"{n}: {transformer.choose_attention(n)}" for n in args.lengths))
    print(f"{'batch':>6}{'length':>8}" + "".join(f"{n:>18}" for n in cases) + f"{'dense/blockwise':>17}")
    for bs in args.batch_sizes:
        for length in args.lengths:
            best = fastest({n: gradient(c, bs, length, args.threads) for n, c in cases.items()}, args.repeats)
            print(f"{bs:>6}{length:>8}" + "".join(f"{best[n] * 1e3:>18.1f}" for n in cases)
                  + f"{best['dense'] / best['blockwise']:>17.2f}", flush=True)
    if args.forward_lengths:
        print(f"forward, seconds per 1,000 sequences (batch {args.forward_batch}, one program)")
        print(f"{'length':>8}" + "".join(f"{n:>18}" for n in cases))
    for length in args.forward_lengths:
        calls = {n: forward(c, args.forward_batch, length) for n, c in cases.items()
                 if n != "dense" or args.forward_batch * 4 * length * length <= DENSE_SCORES}
        best = fastest(calls, max(1, args.repeats // 2))
        print(f"{length:>8}" + "".join(f"{best[n] / args.forward_batch * 1e3:>18.1f}" if n in best else f"{'-':>18}"
                                       for n in cases), flush=True)


if __name__ == "__main__":
    main()
