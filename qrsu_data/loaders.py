"""Grain pipelines that serve padded batches of a built temporal_order split, for training and evaluation.

A batch is a dict of NumPy arrays: ``tokens`` int32 [B, T] (T = the level's maximum length, so a jitted
step compiles once per config; cells beyond a sequence hold ``pad_id``, by default ``PAD_ID`` = 255, which
``jax.nn.one_hot(tokens, 8)`` turns into the seed's all-zero vectors), ``lengths`` int32 [B], ``label``
int32 [B] and ``mask`` bool [B] (False only on the rows that fill the last evaluation batch).

The split is decoded once per process into arrays (``qrsu_data.catalog``) and Grain maps batches of
indices onto them: a ``grain.MapDataset`` of index batches, ``repeat``, ``map``, ``to_iter_dataset`` with
reading threads, optionally ``mp_prefetch`` worker processes, and Grain's checkpointable iterator.

Shuffling draws one NumPy permutation of the shard per epoch from ``(seed, shard_index, epoch)`` rather than
using ``MapDataset.shuffle``: Grain's shuffle maps every example index through a C++ call plus several Python
layers, which caps a pipeline at 30,000-50,000 sequences/s on the 2-core machine even with no data work at
all (``benchmarks/loader.py`` prints that row), against 0.2-3.5 million for these loaders.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

import grain
import numpy as np

from qrsu_data import catalog, codec, padding as padding_lib, store
# Re-exported, so that a training pipeline finds the whole loading API here.
from qrsu_data.catalog import (  # noqa: F401
    check_compatible,
    ensure_built,
    is_test_only,
    level_of,
    max_length,
    num_classes,
    open_split,
    split_names,
    split_size,
    suite,
)

__all__ = ["PAD_ID", "PADDINGS", "train_loader", "train_dataset", "eval_loader", "num_eval_batches", "split_size",
           "split_names", "max_length", "num_classes", "level_of", "is_test_only", "suite", "check_compatible",
           "open_split", "ensure_built"]

PAD_ID = padding_lib.PAD_ID
PADDINGS = padding_lib.PADDINGS
DEFAULT_NUM_THREADS = 0
"""Reading threads; 0 assembles each batch on demand (tens of microseconds), the fastest on 2 cores."""
DEFAULT_PREFETCH = 4
"""Batches buffered ahead of the consumer, per reading thread pool or worker process."""


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """(index, count) of this process's shard; JAX's process index and count when neither is given."""
    if shard_index is None and shard_count is None:
        import jax  # lazily: only the default sharding asks JAX

        return jax.process_index(), jax.process_count()
    if shard_index is None or shard_count is None:
        raise ValueError("give both shard_index and shard_count, or neither (then JAX's process index/count)")
    count = _check_int("shard_count", shard_count, 1)
    return _check_int("shard_index", shard_index, 0, count), count


class _ShuffledIndexBatches(grain.MapDataset):
    """Element i: indices of batch i % len of epoch i // len, drawn from a fresh permutation of the shard."""

    def __init__(self, start: int, stop: int, batch_size: int, seed: int, shard_index: int):
        super().__init__()
        self._start, self._size, self._batch_size = start, stop - start, batch_size
        self._seed, self._shard_index = seed, shard_index
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        # drop_remainder: the size % batch_size examples left over land in other batches next epoch.
        return self._size // self._batch_size

    def __str__(self) -> str:
        return f"_ShuffledIndexBatches(size={self._size}, batch_size={self._batch_size}, seed={self._seed})"

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._cache.get(epoch)
            if perm is None:
                rng = np.random.default_rng([self._seed, self._shard_index, epoch])
                perm = self._start + rng.permutation(self._size)
                # Reading threads work on nearby batches only: the current and the next epoch suffice.
                self._cache = {e: p for e, p in self._cache.items() if e >= epoch - 1}
                self._cache[epoch] = perm
            return perm

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(index, len(self))
        b = self._batch_size
        idx = self._permutation(epoch)[j * b:(j + 1) * b]
        return idx, np.ones(b, bool)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


class _BucketedIndexBatches(_ShuffledIndexBatches):
    """Like :class:`_ShuffledIndexBatches`, each batch drawn from one bucket of lengths and padded to that
    bucket's longest length: element i is (indices, mask, width).

    Bucket k holds the lengths ``lo + k * width .. lo + (k + 1) * width - 1``. Each epoch, a permutation of the
    shard is split into its buckets (keeping the permutation's order), each bucket cut into batches (its last
    incomplete one dropped: the examples land elsewhere next epoch), and the batches shuffled; all from
    ``(seed, shard_index, epoch)``. Bucket membership does not depend on the epoch, so an epoch always has the
    same number of batches, as a checkpointable iterator needs."""

    def __init__(self, start: int, stop: int, batch_size: int, seed: int, shard_index: int, lengths: np.ndarray,
                 bucket_width: int, max_length: int):
        super().__init__(start, stop, batch_size, seed, shard_index)
        lengths = np.asarray(lengths[start:stop])
        self._lo = int(lengths.min())
        self._bucket = ((lengths - self._lo) // bucket_width).astype(np.int32)  # by position in the shard
        self._widths = [min(max_length, self._lo + (k + 1) * bucket_width - 1)
                        for k in range(int(self._bucket.max()) + 1)]
        self._count = int(sum(n // batch_size for n in np.bincount(self._bucket)))
        self._bucket_width = bucket_width

    def __len__(self) -> int:
        return self._count

    def __str__(self) -> str:
        return (f"_BucketedIndexBatches(size={self._size}, batch_size={self._batch_size}, seed={self._seed}, "
                f"bucket_width={self._bucket_width})")

    def _batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices [batches, batch_size], bucket of each batch) of ``epoch``, cached like the permutation."""
        with self._lock:
            cached = self._cache.get(epoch)
            if cached is None:
                rng = np.random.default_rng([self._seed, self._shard_index, epoch])
                perm = rng.permutation(self._size)
                b, rows, buckets = self._batch_size, [], []
                for k in range(len(self._widths)):
                    members = perm[self._bucket[perm] == k]
                    full = len(members) // b * b
                    rows.append(members[:full].reshape(-1, b))
                    buckets += [k] * (full // b)
                order = rng.permutation(self._count)
                cached = (self._start + np.concatenate(rows)[order], np.asarray(buckets, np.int32)[order])
                self._cache = {e: c for e, c in self._cache.items() if e >= epoch - 1}
                self._cache[epoch] = cached
            return cached

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(index, len(self))
        rows, buckets = self._batches(epoch)
        return rows[j], np.ones(self._batch_size, bool), self._widths[buckets[j]]


class _SequentialIndexBatches(grain.MapDataset):
    """Element j: the j-th ``batch_size`` run of ``indices`` in order, filled up with masked-out rows."""

    def __init__(self, indices: np.ndarray, batch_size: int, num_batches: int, filler: int):
        super().__init__()
        self._indices, self._batch_size, self._num_batches, self._filler = indices, batch_size, num_batches, filler

    def __len__(self) -> int:
        return self._num_batches

    def __str__(self) -> str:
        return f"_SequentialIndexBatches(size={len(self._indices)}, batch_size={self._batch_size})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        j = index % self._num_batches
        idx = self._indices[j * self._batch_size:(j + 1) * self._batch_size]
        mask = np.zeros(self._batch_size, bool)
        mask[:len(idx)] = True
        return np.concatenate([idx, np.full(self._batch_size - len(idx), self._filler, idx.dtype)]), mask


class _Gather:
    """Maps (indices, mask) to a batch dict; holds only names, so it pickles small into worker processes."""

    def __init__(self, config: str, split: str, data_dir: str, padding: str, pad_id: int,
                 arrays: codec.SplitArrays, with_index: bool = False):
        self._key = (config, split, data_dir)
        self._with_index = with_index
        self._padding, self._pad_id = padding, pad_id
        self._arrays: codec.SplitArrays | None = arrays

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}  # a worker process decodes (and caches) the split itself

    def __call__(self, element: tuple) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = catalog.load_split(*self._key)
        idx, mask = element[:2]
        a = self._arrays
        tokens = a.gather_tokens(idx, self._padding, self._pad_id)
        if len(element) == 3:  # a bucket's batch: only as wide as its longest length
            width = element[2]
            tokens = tokens[:, -width:] if self._padding == "pre" else tokens[:, :width]
        batch = {
            "tokens": np.ascontiguousarray(tokens),
            "lengths": a.lengths[idx],
            "label": a.labels[idx],
            "mask": mask,
        }
        if self._with_index:
            batch["index"] = idx.astype(np.int32)  # record index of each row (a filler row repeats a real one)
        return batch


def _to_iter(ds: grain.MapDataset, num_threads: int, prefetch: int, worker_count: int) -> grain.IterDataset:
    _check_int("num_threads", num_threads, 0)
    _check_int("prefetch", prefetch, 0)
    _check_int("worker_count", worker_count, 0)
    out = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if worker_count:
        from absl import flags

        # Grain 0.2.18's mp_prefetch reads an absl flag (worker profiling) once JAX is imported and fails with
        # UnparsedFlagAccessError outside absl.app.run; marking the flags parsed keeps every default.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                           per_worker_buffer_size=max(prefetch, 1)))
    return out


def _common(config: str, split: str, data_dir, batch_size: int, padding: str, pad_id: int,
            build_if_missing: bool) -> tuple[codec.SplitArrays, str]:
    padding_lib.check_padding(padding)
    _check_int("batch_size", batch_size, 1)
    padding_lib.check_pad_id(pad_id)
    data_dir = os.fspath(store.resolve_data_dir(data_dir))
    return open_split(config, split, data_dir, build_if_missing=build_if_missing), data_dir


def train_dataset(config: str, *, batch_size: int, seed: int, data_dir: str | os.PathLike | None = None,
                  split: str = "train", padding: str = "pre", pad_id: int = PAD_ID,
                  num_threads: int = DEFAULT_NUM_THREADS, prefetch: int = DEFAULT_PREFETCH, worker_count: int = 0,
                  shard_index: int | None = None, shard_count: int | None = None,
                  build_if_missing: bool = False, bucket_width: int = 0) -> grain.IterDataset:
    """The infinite, shuffled, drop-remainder training pipeline as a Grain IterDataset (see train_loader).

    ``bucket_width`` > 0 draws each batch from one bucket of that many lengths and pads it only to the
    bucket's longest length (a level of varied lengths then pays for each batch's own lengths, not the
    longest of the level); 0 pads every batch to the level's longest length."""
    arrays, data_dir = _common(config, split, data_dir, batch_size, padding, pad_id, build_if_missing)
    seed = _check_int("seed", seed, 0)
    index, count = _shard(shard_index, shard_count)
    # Equal shards (the last len % count examples are left out) keep every host at the same step count.
    per_shard = len(arrays) // count
    if batch_size > per_shard:
        where = f"shard {index} of {count} of" if count > 1 else "split"
        raise ValueError(f"batch_size {batch_size} is larger than the {per_shard} examples of {where} "
                         f"{split!r} of {config!r}: training drops incomplete batches, so it would yield nothing")
    bucket_width = _check_int("bucket_width", bucket_width, 0)
    if bucket_width:
        ds = _BucketedIndexBatches(index * per_shard, (index + 1) * per_shard, batch_size, seed, index,
                                   arrays.lengths, bucket_width, arrays.tokens.shape[1])
        if not len(ds):
            raise ValueError(f"no bucket of {bucket_width} lengths holds batch_size {batch_size} sequences of "
                             f"split {split!r}: choose a wider --bucket-width or a smaller batch size")
    else:
        ds = _ShuffledIndexBatches(index * per_shard, (index + 1) * per_shard, batch_size, seed, index)
    ds = ds.repeat().map(_Gather(config, split, data_dir, padding, pad_id, arrays))
    return _to_iter(ds, num_threads, prefetch, worker_count)


def train_loader(config: str, *, batch_size: int, seed: int, data_dir: str | os.PathLike | None = None,
                 split: str = "train", padding: str = "pre", pad_id: int = PAD_ID,
                 num_threads: int = DEFAULT_NUM_THREADS, prefetch: int = DEFAULT_PREFETCH, worker_count: int = 0,
                 shard_index: int | None = None, shard_count: int | None = None,
                 build_if_missing: bool = False, bucket_width: int = 0) -> grain.DatasetIterator:
    """Endless training batches: a fresh shuffle every epoch, drop_remainder, checkpointable iterator
    (``bucket_width``: batches of similar lengths, see train_dataset)."""
    return iter(train_dataset(config, batch_size=batch_size, seed=seed, data_dir=data_dir, split=split,
                              padding=padding, pad_id=pad_id, num_threads=num_threads, prefetch=prefetch,
                              worker_count=worker_count, shard_index=shard_index, shard_count=shard_count,
                              build_if_missing=build_if_missing, bucket_width=bucket_width))


def num_eval_batches(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
    """Batches that eval_loader yields on every shard: ceil(ceil(num_examples / shard_count) / batch_size)."""
    return -(-(-(-num_examples // shard_count)) // batch_size)


def eval_loader(config: str, split: str = "test", *, batch_size: int, data_dir: str | os.PathLike | None = None,
                padding: str = "pre", pad_id: int = PAD_ID, num_threads: int = DEFAULT_NUM_THREADS,
                prefetch: int = DEFAULT_PREFETCH, worker_count: int = 0, shard_index: int | None = None,
                shard_count: int | None = None, build_if_missing: bool = False,
                limit: int | None = None, start: int = 0) -> Iterable[dict[str, np.ndarray]]:
    """One ordered pass over a split (or its first ``limit`` examples, from example ``start`` on): every example
    exactly once, with its record ``index``, the last batch filled with mask=False rows."""
    arrays, data_dir = _common(config, split, data_dir, batch_size, padding, pad_id, build_if_missing)
    index, count = _shard(shard_index, shard_count)
    total = len(arrays) if limit is None else min(_check_int("limit", limit, 1), len(arrays))
    start = _check_int("start", start, 0, total)
    indices = np.array_split(np.arange(start, total), count)[index]
    # Every shard yields the same number of batches, so multi-host evaluation steps stay in lockstep; a shard
    # with fewer examples gets more masked-out rows (possibly a whole masked batch), never one batch fewer.
    ds = _SequentialIndexBatches(indices, batch_size, num_eval_batches(total - start, batch_size, count),
                                 filler=int(indices[0]) if len(indices) else start)
    ds = ds.map(_Gather(config, split, data_dir, padding, pad_id, arrays, with_index=True))
    return _to_iter(ds, num_threads, prefetch, worker_count)

