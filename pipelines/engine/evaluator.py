"""Evaluation of a model over a split: every example once, predictions in record order, loss and accuracy.

One jitted forward over the eval loader's batches (the batch sharded over the mesh, the last batch filled with
masked rows) serves every caller: training's epoch-end evaluation, the experiment's checks, and
``pipelines.evaluate``'s per-class and by-lag report. With several processes each reads its shard of the
split and the predictions of all of them are gathered, so every process sees the whole split's results.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipelines.engine.sharding import Sharding
from pipelines.engine.state import Batch, SplitModel
from qrsu_data import loaders


class Predictions(NamedTuple):
    """Per-example results over a split (or its first examples), in record order."""

    labels: np.ndarray  # int32 [N]
    predicted: np.ndarray  # int32 [N]
    losses: np.ndarray  # float32 [N]: softmax cross-entropy

    @property
    def wrong(self) -> int:
        """How many examples are misclassified."""
        return int((self.predicted != self.labels).sum())

    def metrics(self) -> dict[str, float]:
        """Mean loss and accuracy, as training reports them."""
        n = len(self.labels)
        return {"loss": float(self.losses.astype(np.float64).mean()), "accuracy": 1.0 - self.wrong / n}


def predict_step(model: SplitModel, params: dict, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(predicted class, cross-entropy) of every row of ``batch``."""
    logits = model(params, batch)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"])


class Evaluator:
    """Evaluates a split model on every example of a split of any config (its padding, its mesh)."""

    def __init__(self, model: SplitModel, sharding: Sharding, batch_size: int):
        sharding.check_batch_size(batch_size)
        self.model, self.sharding, self.batch_size = model, sharding, batch_size
        self._step = jax.jit(functools.partial(predict_step, model),
                             in_shardings=(sharding.replicated, sharding.batch),
                             out_shardings=(sharding.batch, sharding.batch))

    def predict(self, params: dict, config: str, split: str = "test", *, data_dir: str | os.PathLike | None = None,
                limit: int | None = None, start: int = 0) -> Predictions:
        """Predictions for every example of ``split`` of ``config`` (or its first ``limit``, from ``start`` on), in
        record order."""
        # Each process reads its shard; put_batch assembles the global batch from all of them.
        local_batch_size = self.batch_size // jax.process_count()
        columns: dict[str, list[np.ndarray]] = {"index": [], "mask": [], "label": [], "predicted": [], "losses": []}
        for batch in loaders.eval_loader(config, split, batch_size=local_batch_size, data_dir=data_dir,
                                         padding=self.model.padding, limit=limit, start=start):
            predicted, losses = self._step(params, self.sharding.put_batch(
                {k: batch[k] for k in ("tokens", "lengths", "label")}))
            for key, value in (("index", batch["index"]), ("mask", batch["mask"]), ("label", batch["label"]),
                               ("predicted", predicted), ("losses", losses)):
                columns[key].append(_gather(value))
        out = {k: np.concatenate(v) for k, v in columns.items()}
        keep = out["mask"]
        n = int(keep.sum())
        order = np.argsort(out["index"][keep], kind="stable")
        index = out["index"][keep][order]
        if not np.array_equal(index, np.arange(start, start + n)):
            raise RuntimeError(f"evaluation saw examples {index[:5]}... instead of each of {start}..{start + n - 1} "
                               f"once")
        return Predictions(out["label"][keep][order], out["predicted"][keep][order], out["losses"][keep][order])

    def evaluate(self, params: dict, config: str, split: str = "test", *,
                 data_dir: str | os.PathLike | None = None, limit: int | None = None) -> dict[str, float]:
        """Mean loss and accuracy over every example of ``split`` (or its first ``limit``)."""
        return self.predict(params, config, split, data_dir=data_dir, limit=limit).metrics()


def _gather(x) -> np.ndarray:
    """The values of every process for a batch-sharded (or per-process host) array, concatenated."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))
