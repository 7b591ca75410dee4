"""The Transformer's attention formulations in its full train-step gradient, side by side in one process.

    python benchmarks/transformer_attention.py [--batch-sizes 16 128] [--lengths 110 500] [--repeats 8]

For each batch size and length: milliseconds of the default transformer's loss gradient (forward plus
backward, jitted) with :func:`qrsu_models.transformer.attention` (the plain masked softmax) and with
:func:`qrsu_models.transformer.attention_deferred` (the one the model uses), fastest of interleaved repeats,
and their ratio. Batch sizes are per gradient thread: the training step splits batch 32 into 2 x 16 on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from qrsu_models import registry, transformer

FORMULATIONS = {"plain": transformer.attention, "deferred": transformer.attention_deferred}


def gradient(batch_size: int, length: int):
    """(jitted loss gradient, params) of the default transformer on random rows of ``length`` tokens."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 8, (batch_size, length)), jnp.int32)
    lengths = jnp.asarray(rng.integers(length // 2, length + 1, batch_size), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 4, batch_size), jnp.int32)
    graphdef, params = nnx.split(registry.get("transformer").build(num_classes=4, max_length=length, seed=0))

    def loss(p):
        logits = nnx.merge(graphdef, p)(tokens, lengths)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.jit(jax.value_and_grad(loss)), params


def main() -> None:
    """Prints one row per case: ms per gradient of each formulation and plain/deferred."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 128])
    p.add_argument("--lengths", nargs="+", type=int, default=[110, 500])
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()
    print(f"{'batch':>6}{'length':>8}" + "".join(f"{n + ' ms':>13}" for n in FORMULATIONS) + f"{'plain/deferred':>16}")
    for bs in args.batch_sizes:
        for length in args.lengths:
            fns = {}
            for name, fn in FORMULATIONS.items():
                transformer.ATTENTION = fn  # read at trace time, so each jit below compiles its own
                fns[name] = gradient(bs, length)
                jax.block_until_ready(fns[name][0](fns[name][1]))
            best = {n: np.inf for n in fns}
            for _ in range(args.repeats):
                for name, (f, params) in fns.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(params))
                    best[name] = min(best[name], time.perf_counter() - t0)
            print(f"{bs:>6}{length:>8}" + "".join(f"{best[n] * 1e3:>13.1f}" for n in fns)
                  + f"{best['plain'] / best['deferred']:>16.2f}", flush=True)
    transformer.ATTENTION = transformer.attention_deferred


if __name__ == "__main__":
    main()
