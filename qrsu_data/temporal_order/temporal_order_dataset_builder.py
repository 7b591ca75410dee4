"""temporal_order: the temporal-order task of Hochreiter & Schmidhuber (1997), Experiment 6."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets.public_api as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import splits as splits_lib

import tqdm

from qrsu_data import records, splits, task

VERSION = tfds.core.Version("1.0.0")
DEFAULT_CONFIG = "hard"
"""The config `tfds.builder('temporal_order')` builds when none is named: the 1997 paper's Exp. 6a."""


class TemporalOrderConfig(tfds.core.BuilderConfig):
    """A level of the task plus the split sizes and the seed that fix its examples."""

    def __init__(self, *, level: str | None = None, train_size: int = 100_000, test_size: int = 10_000,
                 seed: int = 0, holdout_fraction: float = 0.2, **kwargs):
        if level is None:
            raise ValueError("TemporalOrderConfig needs a level; choose one of: " + ", ".join(task.LEVELS))
        lv = task.get_level(level)
        self.spec = splits.SplitSpec(level=level, train_size=train_size, test_size=test_size, seed=seed,
                                     holdout_fraction=holdout_fraction)
        name = kwargs.pop("name", None) or self.spec.name
        ranges = ", ".join(f"t{i + 1} {lo}-{hi}" for i, (lo, hi) in enumerate(lv.positions))
        kwargs.setdefault(
            "description",
            f"Level {level!r}: length {lv.length[0]}-{lv.length[1]}, {ranges}, {lv.num_classes} classes; "
            f"train {train_size:,} / test {test_size:,} examples, seed {seed}.")
        super().__init__(name=name, version=VERSION, **kwargs)

    @property
    def level(self) -> task.Level:
        """The task level of this config."""
        return task.get_level(self.spec.level)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for temporal_order: fixed train/test splits of every difficulty level."""

    VERSION = VERSION
    RELEASE_NOTES = {
        "1.0.0": "Initial release: levels easy, normal, moderate, hard, nightmare and exp6b; "
                 "100,000 train and 10,000 test sequences each, test disjoint from train.",
    }
    BUILDER_CONFIGS = [TemporalOrderConfig(level=name) for name in task.LEVELS]
    DEFAULT_BUILDER_CONFIG_NAME = DEFAULT_CONFIG

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the dataset metadata."""
        level = self.builder_config.level
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                # Raw bytes: one byte a token, no padding, decoded with a single frombuffer.
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                               encoding=tfds.features.Encoding.BYTES,
                                               doc="Token ids, X Y a b c d B E = 0..7, B first and E last."),
                "label": tfds.features.ClassLabel(names=list(level.classes),
                                                  doc="The order of the relevant symbols."),
                "length": tfds.features.Scalar(dtype=np.int32, doc="Number of tokens, B and E included."),
                "positions": tfds.features.Tensor(shape=(level.num_relevant,), dtype=np.int32,
                                                  doc="0-based positions of the relevant symbols."),
            }),
            supervised_keys=("tokens", "label"),
            # Examples are i.i.d. draws already; keeping generation order makes record i the i-th draw.
            disable_shuffling=True,
            homepage="https://doi.org/10.1162/neco.1997.9.8.1735",
        )

    def __init__(self, *, generic_writer: bool = False, **kwargs):
        """As tfds.core.GeneratorBasedBuilder; ``generic_writer`` forces TFDS's per-example writer."""
        self._generic_writer = generic_writer
        super().__init__(**kwargs)

    def _download_and_prepare(self, dl_manager, download_config):
        """Writes the splits; record files directly when no TFDS writer feature is asked for."""
        fmt = self.info.file_format
        if (self._generic_writer or download_config.max_examples_per_split is not None
                or download_config.beam_runner is not None or download_config.beam_options is not None
                or fmt not in (file_adapters.FileFormat.ARRAY_RECORD, file_adapters.FileFormat.TFRECORD)):
            return super()._download_and_prepare(dl_manager, download_config)
        # Same records as TFDS's writer with disable_shuffling (record i = example i), in one shard a
        # split, serialized by records.serialize instead of per-feature protobuf objects.
        infos = []
        for split in splits.SPLIT_IDS:
            template = self._get_filename_template(split_name=split)
            path = template.sharded_filepath(shard_index=0, num_shards=1)
            spec = self.builder_config.spec
            num_bytes = 0

            def serialized():
                nonlocal num_bytes
                with tqdm.tqdm(total=spec.size(split), desc=f"Generating {split} examples", unit=" examples",
                               leave=False, mininterval=1.0) as bar:
                    for chunk, batch in splits.iter_chunks(spec, split):
                        for i, rec in enumerate(records.serialize_batch(batch)):
                            num_bytes += len(rec)
                            yield chunk * splits.CHUNK_SIZE + i, rec
                        bar.update(len(batch))

            file_adapters.ADAPTER_FOR_FORMAT[fmt].write_examples(path, serialized())
            infos.append(splits_lib.SplitInfo(name=split, shard_lengths=[spec.size(split)], num_bytes=num_bytes,
                                              filename_template=template))
        self.info.set_splits(splits_lib.SplitDict(infos))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Returns the train and test splits; nothing is downloaded."""
        del dl_manager
        return {split: self._generate_examples(split) for split in splits.SPLIT_IDS}

    def _generate_examples(self, split: str):
        """Yields (index, example) in the split's fixed order."""
        spec = self.builder_config.spec
        for chunk, batch in splits.iter_chunks(spec, split):
            base = chunk * splits.CHUNK_SIZE
            for i in range(len(batch)):
                n = int(batch.lengths[i])
                yield base + i, {
                    "tokens": batch.tokens[i, :n],
                    "label": int(batch.labels[i]),
                    "length": n,
                    "positions": batch.positions[i],
                }
