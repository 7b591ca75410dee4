"""The built dataset from other frameworks: a PyTorch Dataset and collate function, a tf.data pipeline, NumPy
arrays, a Hugging Face ``datasets.Dataset``.

PyTorch, TensorFlow and datasets are imported only when their entry point is used, so this module imports
without them;
it needs neither JAX nor Grain either (a DataLoader's forked workers then never follow a JAX import).
Arrays and batches use the loaders' names and layout: ``tokens`` padded to the level's maximum length with
``pad_id`` (default ``PAD_ID`` = 255, never a token id), ``lengths`` and ``label``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from qrsu_data import catalog, padding as padding_lib, store

if TYPE_CHECKING:
    import datasets
    import tensorflow as tf

PAD_ID = padding_lib.PAD_ID

__all__ = ["TorchDataset", "torch_collate", "tf_dataset", "numpy_split", "hf_dataset", "PAD_ID"]


def numpy_split(config: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                padding: str = "pre", pad_id: int = PAD_ID, build_if_missing: bool = False) -> dict[str, np.ndarray]:
    """A whole split as fresh arrays: tokens int32 [N, T], lengths, label and positions (0-based, from B)."""
    padding_lib.check_pad_id(pad_id)
    arrays = catalog.open_split(config, split, data_dir, build_if_missing=build_if_missing)
    return {
        "tokens": arrays.gather_tokens(slice(None), padding, pad_id),
        "lengths": arrays.lengths.copy(),
        "label": arrays.labels.copy(),
        "positions": arrays.positions.copy(),
    }


def tf_dataset(config: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
               padding: str = "pre", pad_id: int = PAD_ID, build_if_missing: bool = False) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of examples {tokens int32 [T], lengths, label} (``tfds.load`` cannot read ArrayRecord)."""
    import tensorflow as tf  # noqa: F811 - the real import, at call time

    arrays = numpy_split(config, split, data_dir=data_dir, padding=padding, pad_id=pad_id,
                         build_if_missing=build_if_missing)
    # The decoded split is at most ~50 MB, so in-memory slices beat a per-example Python generator.
    return tf.data.Dataset.from_tensor_slices({k: arrays[k] for k in ("tokens", "lengths", "label")})


def hf_dataset(config: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
               build_if_missing: bool = False) -> datasets.Dataset:
    """A Hugging Face ``datasets.Dataset`` of a built split: tokens (unpadded uint8 lists), length, label
    (a ClassLabel with the level's class names) and positions, in record order, held in memory."""
    try:
        import datasets  # noqa: F811 - the real import, at call time
    except ImportError as e:
        raise ImportError("interop.hf_dataset needs Hugging Face datasets: pip install 'qrsu[hf]'") from e
    from qrsu_data import export

    table = export.split_table(config, split, data_dir, build_if_missing=build_if_missing)
    # The table's schema metadata holds the features (label as ClassLabel), which Dataset reads from it.
    return datasets.Dataset(datasets.table.InMemoryTable(table), split=datasets.NamedSplit(split))


class _TorchCollate:
    """Pads a list of TFDS examples into a dict of int64 torch tensors (a class, so DataLoader workers pickle it)."""

    def __init__(self, padding: str, max_length: int | None, pad_id: int):
        self.padding, self.max_length = padding_lib.check_padding(padding), max_length
        self.pad_id = padding_lib.check_pad_id(pad_id)

    def __call__(self, examples: Sequence[dict]) -> dict:
        import torch

        seqs = [np.asarray(ex["tokens"]) for ex in examples]
        t = self.max_length if self.max_length is not None else max(len(s) for s in seqs)
        return {
            "tokens": torch.from_numpy(padding_lib.pad_sequences(seqs, t, self.padding, self.pad_id).astype(np.int64)),
            "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int64),
            "label": torch.tensor([int(ex["label"]) for ex in examples], dtype=torch.int64),
        }


def torch_collate(padding: str = "pre", max_length: int | None = None,
                  pad_id: int = PAD_ID) -> Callable[[Sequence[dict]], dict]:
    """A DataLoader ``collate_fn``: tokens/lengths/label int64 tensors, padded to ``max_length`` (else the longest)."""
    return _TorchCollate(padding, max_length, pad_id)


def _make_torch_dataset_class() -> type:
    import torch.utils.data

    class TorchDataset(torch.utils.data.Dataset):
        """A map-style torch Dataset over the TFDS data source of a built split; examples as TFDS returns them."""

        def __init__(self, config: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                     build_if_missing: bool = False):
            catalog.ensure_built(config, data_dir, build_if_missing)
            self.config, self.split = config, split
            self.path = os.fspath(store.dataset_dir(config, data_dir))
            # A missing or truncated file is named now, not as an opaque error inside a DataLoader worker; by
            # its size, since opening it here would break the forked workers that then open it.
            self.files = catalog.check_sizes(config, split, data_dir)
            self._data_dir = data_dir
            self._len = catalog.split_size(config, split, data_dir)
            self.max_length = catalog.max_length(config)  # for torch_collate(max_length=...): static shapes
            self._source, self._pid = None, None

        def _data_source(self):
            # One reader per process: DataLoader workers (forked or spawned) open their own.
            if self._source is None or self._pid != os.getpid():
                import tensorflow_datasets as tfds

                # A missing or truncated file is named here, in the process that reads (never in a parent
                # that forks DataLoader workers afterwards: ArrayRecord's threads do not survive a fork).
                catalog.check_files(self.config, self.split, self._data_dir)

                self._source = tfds.builder_from_directory(self.path).as_data_source(split=self.split)
                self._pid = os.getpid()
            return self._source

        def __len__(self) -> int:
            return self._len

        def __getitem__(self, index: int) -> dict:
            if not -self._len <= index < self._len:
                raise IndexError(f"index {index} out of range for split {self.split!r} of {self._len} examples")
            return self.__getitems__([index % self._len])[0]

        def __getitems__(self, indices: list[int]) -> list[dict]:
            # DataLoader calls this with a whole batch of indices: one batched read instead of one per example.
            try:
                return list(self._data_source().__getitems__(list(indices)))
            except Exception as e:  # noqa: BLE001 - TFDS and ArrayRecord raise several types for a damaged file
                names = ", ".join(os.fspath(f) for f in self.files)
                raise catalog.CorruptSplitError(
                    f"cannot read examples {list(indices)[:4]}... of split {self.split!r} of {self.config!r} from "
                    f"{names}: the file is corrupt ({type(e).__name__}: {e}). Delete the config's folder and "
                    f"build it again.") from e

        def __getstate__(self):
            return {**self.__dict__, "_source": None, "_pid": None}

    TorchDataset.__module__, TorchDataset.__qualname__ = __name__, "TorchDataset"  # pickled by name
    return TorchDataset


def __getattr__(name: str):
    # TorchDataset subclasses torch's Dataset, so it is defined on first use: importing this module needs no torch.
    if name == "TorchDataset":
        cls = _make_torch_dataset_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
