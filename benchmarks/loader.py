"""Sequences per second delivered by the Grain loaders, side by side with the seed notebook's generator.

    python benchmarks/loader.py [--configs hard nightmare] [--batch-sizes 32 256] [--seconds 3] [--data-dir DIR]

Builds the full-size configs into DIR if they are missing there (default: a temporary folder), then for every
config and batch size times, for ``--seconds`` each after a warm-up batch:

* ``seed generator``: a faithful reimplementation of the seed's ``TemporalOrderExp6aSequence`` (per-example
  Python draws, one-hot by dict lookup, keras-style pre-padding to max length + 1);
* ``train_loader`` as configured by default, with one reading thread, and with two worker processes;
* ``eval_loader``: whole passes over the test split;
* for reference, the straightforward Grain pipeline over the TFDS data source
  (``MapDataset.source(src).shuffle().batch()``), and Grain's own ``shuffle().batch()`` over the decoded
  arrays (why the loaders draw their own epoch permutations).

It prints one row per measurement and the ratio of ``train_loader`` to the seed generator.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grain  # noqa: E402

from qrsu_data import loaders, padding, store  # noqa: E402


def to_categorical(y, num_classes: int, dtype: str = "float32") -> np.ndarray:
    """keras.utils.to_categorical, as the seed's generator calls it."""
    y = np.array(y, dtype="int")
    input_shape = y.shape
    y = y.ravel()
    categorical = np.zeros((y.shape[0], num_classes), dtype=dtype)
    categorical[np.arange(y.shape[0]), y] = 1
    return np.reshape(categorical, input_shape + (num_classes,))


def pad_sequences(sequences, maxlen: int, dtype: str = "float32", value: float = 0.0) -> np.ndarray:
    """keras pad_sequences with padding='pre' and truncating='pre', as the seed's generator calls it."""
    sample_shape = np.asarray(sequences[0]).shape[1:]
    x = np.full((len(sequences), maxlen) + sample_shape, value, dtype=dtype)
    for idx, s in enumerate(sequences):
        trunc = np.asarray(s[-maxlen:], dtype=dtype)
        x[idx, -len(trunc):] = trunc
    return x


class SeedGenerator:
    """The seed's TemporalOrderExp6aSequence: one batch of fresh per-example draws per index."""

    relevant_symbols = ["X", "Y"]
    distraction_symbols = ["a", "b", "c", "d"]
    start_symbol, end_symbol = "B", "E"
    classes = ["Q", "R", "S", "U"]

    def __init__(self, level: str, batch_size: int, seed: int):
        lv = loaders.level_of(level)  # any config name
        if lv.num_relevant != 2:
            raise ValueError(f"the seed's generator is Exp. 6a only (two relevant symbols), not {level!r}")
        # The course code's ranges are half-open (np.random.randint); the levels' are inclusive.
        self.length_range = (lv.length[0], lv.length[1] + 1)
        self.t1_range = (lv.positions[0][0], lv.positions[0][1] + 1)
        self.t2_range = (lv.positions[1][0], lv.positions[1][1] + 1)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        all_symbols = self.relevant_symbols + self.distraction_symbols + [self.start_symbol, self.end_symbol]
        self.n_symbols, self.n_classes = len(all_symbols), len(self.classes)
        self.s_to_idx = {s: n for n, s in enumerate(all_symbols)}
        self.c_to_idx = {c: n for n, c in enumerate(self.classes)}

    def generate_pair(self) -> tuple[str, str]:
        """One sequence and its class."""
        length = self.rng.integers(*self.length_range)
        t1 = self.rng.integers(*self.t1_range)
        t2 = self.rng.integers(*self.t2_range)
        x = self.rng.choice(self.distraction_symbols, length)
        x[0] = self.start_symbol
        x[-1] = self.end_symbol
        y = self.rng.choice(self.classes)
        if y == "Q":
            x[t1], x[t2] = self.relevant_symbols[0], self.relevant_symbols[0]
        elif y == "R":
            x[t1], x[t2] = self.relevant_symbols[0], self.relevant_symbols[1]
        elif y == "S":
            x[t1], x[t2] = self.relevant_symbols[1], self.relevant_symbols[0]
        else:
            x[t1], x[t2] = self.relevant_symbols[1], self.relevant_symbols[1]
        return "".join(x), y

    def encode_x(self, x: str) -> np.ndarray:
        """One-hot [len, 8] of a sequence."""
        return to_categorical([self.s_to_idx[s] for s in x], num_classes=self.n_symbols)

    def encode_y(self, y: str) -> np.ndarray:
        """One-hot [4] of a class."""
        return to_categorical(self.c_to_idx[y], num_classes=self.n_classes)

    def __len__(self) -> int:
        return int(1000.0 / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        batch_x, batch_y = [], []
        for _ in range(self.batch_size):
            x, y = self.generate_pair()
            batch_x.append(x)
            batch_y.append(y)
        return (pad_sequences([self.encode_x(x) for x in batch_x], maxlen=self.length_range[1]),
                np.array([self.encode_y(y) for y in batch_y]))


def rate(make: Callable[[], Iterator], batch_size: int, seconds: float) -> float:
    """Sequences per second drawn from a fresh iterator, after one warm-up batch."""
    it = make()
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += batch_size
    dt = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    return n / dt


def endless(loader_fn: Callable[[], object]) -> Iterator:
    """Whole passes of an eval loader, one after another."""
    while True:
        yield from loader_fn()


def seed_batches(level: str, batch_size: int) -> Iterator:
    """Seed generator batches, index after index, as its training loop draws them."""
    gen = SeedGenerator(level, batch_size, seed=0)
    i = 0
    while True:
        yield gen[i % len(gen)]
        i += 1


def tfds_grain_batches(config: str, data_dir: str, batch_size: int) -> Iterator:
    """The straightforward pipeline: Grain over the TFDS data source, per-record reads, pad in batch_fn."""
    import tensorflow_datasets as tfds

    src = tfds.builder_from_directory(os.fspath(store.dataset_dir(config, data_dir))).as_data_source(split="train")
    t = loaders.max_length(config)

    def pad(examples):
        return {"tokens": padding.pad_sequences([e["tokens"] for e in examples], t),
                "label": np.array([e["label"] for e in examples], np.int32)}

    ds = grain.MapDataset.source(src).shuffle(seed=0).repeat().batch(batch_size, drop_remainder=True, batch_fn=pad)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)))


def grain_shuffle_batches(config: str, data_dir: str, batch_size: int) -> Iterator:
    """Grain's MapDataset.shuffle().batch() over the decoded arrays: the cost of per-example index shuffling."""
    arrays = loaders.open_split(config, "train", data_dir)
    ds = (grain.MapDataset.range(len(arrays)).shuffle(seed=0).repeat().batch(batch_size, drop_remainder=True)
          .map(lambda idx: arrays.gather_tokens(idx, "pre")))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def main() -> None:
    """Runs the benchmark and prints a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["hard", "nightmare"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    p.add_argument("--seconds", type=float, default=3.0, help="timing window of each measurement")
    p.add_argument("--data-dir", default=None, help="where the configs are (built there if missing); "
                                                    "default: a temporary folder")
    p.add_argument("--no-reference", action="store_true", help="skip the two reference Grain pipelines")
    args = p.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        for config in args.configs:
            t0 = time.perf_counter()
            loaders.ensure_built(config, data_dir, build_if_missing=True)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaders.open_split(config, "train", data_dir)
            print(f"{config}: built/checked in {built:.1f} s; train split read and decoded in "
                  f"{time.perf_counter() - t0:.2f} s (once per process)")

        print(f"\n{'config':<10} {'batch':>5}  {'path':<62} {'sequences/s':>12} {'x seed':>7}")
        for config in args.configs:
            for b in args.batch_sizes:
                seed = rate(lambda: seed_batches(config, b), b, args.seconds)
                rows = [("seed generator (per-example Python, one-hot, pre-padded)", seed)]
                common = dict(batch_size=b, seed=0, data_dir=data_dir, shard_index=0, shard_count=1)
                rows.append(("train_loader (defaults: no reading thread, no workers)",
                             rate(lambda: loaders.train_loader(config, **common), b, args.seconds)))
                rows.append(("train_loader(num_threads=1, prefetch=4)",
                             rate(lambda: loaders.train_loader(config, num_threads=1, prefetch=4, **common),
                                  b, args.seconds)))
                rows.append(("train_loader(worker_count=2)",
                             rate(lambda: loaders.train_loader(config, worker_count=2, **common), b, args.seconds)))
                rows.append(("eval_loader, whole passes over test",
                             rate(lambda: endless(lambda: loaders.eval_loader(
                                 config, batch_size=b, data_dir=data_dir, shard_index=0, shard_count=1)),
                                  b, args.seconds)))
                if not args.no_reference:
                    rows.append(("ref: Grain MapDataset.source(tfds src).shuffle().batch(), 4 threads",
                                 rate(lambda: tfds_grain_batches(config, data_dir, b), b, args.seconds)))
                    rows.append(("ref: Grain MapDataset.shuffle().batch() over decoded arrays",
                                 rate(lambda: grain_shuffle_batches(config, data_dir, b), b, args.seconds)))
                for name, r in rows:
                    print(f"{config:<10} {b:>5}  {name:<62} {r:>12,.0f} {r / seed:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
