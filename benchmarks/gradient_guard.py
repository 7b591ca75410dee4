"""Cost of the gradient guard: the train step the grid runs, beside the same step without it.

The guard (:mod:`pipelines.engine.gradient`, and optax's ``apply_if_finite`` in ``engine.model.create_tx``)
adds, per step, a finiteness test and a safe global norm of the gradient (a second backward pass only on the
rare steps whose gradient overflows), and a finiteness test before the update. For each family and level, side by
side in one process, on one CPU device without gradient threads (as a grid runs each run):

- guarded: ``make_train_step(..., grad_threads=1)`` with ``create_tx``, the step every command uses;
- plain: the same loss, ``jax.value_and_grad`` and ``base_tx`` (the optimizer without the skip), jitted alike.

It prints sequences per second of each (best of ``--repeats`` interleaved rounds) and guarded/plain.

    python benchmarks/gradient_guard.py [--cells lstm gru mingru transformer] [--levels hard nightmare]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

# Everything this benchmark takes from the pipelines, in one place.
from pipelines.engine.config import TrainConfig
from pipelines.engine.grid import FAMILIES
from pipelines.engine.model import base_tx, create_model, create_tx
from pipelines.engine.sharding import Sharding
from pipelines.engine.state import apply_gradients, init_state, loss_fn
from pipelines.engine.step import make_train_step
from qrsu_data import padding, task


def plain_step(split, tx):
    """The train step without the guard: autodiff's gradient straight into the optimizer."""

    def step(state, batch):
        (loss, (logits, losses, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, split, batch)
        return apply_gradients(tx, state, grads, losses, logits, batch["label"]), loss

    return jax.jit(step, donate_argnums=0)


def batches(level_name: str, batch_size: int, n: int, sharding: Sharding) -> list[dict]:
    """``n`` training batches of the level, prepared before timing."""
    level = task.get_level(level_name)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        b = task.generate(level, batch_size, rng)
        out.append(sharding.put_batch({"tokens": padding.pad_sequences(b.sequences(), level.max_length, "pre"),
                                       "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)}))
    return out


def rate(step, state, data: list[dict]) -> tuple[float, object]:
    """(sequences per second over ``data``, the state after)."""
    t0 = time.perf_counter()
    for b in data:
        state, loss = step(state, b)
    jax.block_until_ready(loss)
    return sum(len(b["label"]) for b in data) / (time.perf_counter() - t0), state


def main() -> None:
    """Prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "mingru", "transformer"], choices=FAMILIES)
    parser.add_argument("--levels", nargs="+", default=["hard"], choices=sorted(task.LEVELS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    sharding = Sharding.create(jax.devices()[:1])
    print(f"{'level':10} {'family':12} {'guarded seq/s':>14} {'plain seq/s':>12} {'guarded/plain':>14}")
    for level in args.levels:
        data = batches(level, args.batch_size, args.steps, sharding)
        for cell in args.cells:
            family = FAMILIES[cell]
            config = TrainConfig(model=cell, difficulty=level, hidden=family.hidden, batch_size=args.batch_size,
                                 grad_threads=1, model_options=dict(family.options))
            length = config.dataset.level_def.max_length
            split, guarded_state = init_state(create_model(config), create_tx(config), config.padding, sharding)
            _, plain_state = init_state(create_model(config), base_tx(config), config.padding, sharding)
            guarded = make_train_step(split, create_tx(config), sharding, batch_size=args.batch_size, length=length,
                                      grad_threads=1)
            plain = plain_step(split, base_tx(config))
            guarded_state, _ = guarded(guarded_state, data[0])  # compile both first
            plain_state, _ = plain(plain_state, data[0])
            best = {"guarded": 0.0, "plain": 0.0}
            for _ in range(args.repeats):  # interleaved: background load hits both alike
                r, guarded_state = rate(guarded, guarded_state, data)
                best["guarded"] = max(best["guarded"], r)
                r, plain_state = rate(plain, plain_state, data)
                best["plain"] = max(best["plain"], r)
            print(f"{level:10} {cell:12} {best['guarded']:14.1f} {best['plain']:12.1f} "
                  f"{best['guarded'] / best['plain']:14.3f}", flush=True)


if __name__ == "__main__":
    main()
