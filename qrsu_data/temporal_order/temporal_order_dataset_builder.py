"""temporal_order: the temporal-order task of Hochreiter & Schmidhuber (1997), Experiment 6.

Three ways to write the splits, all giving the same records (record i of a split is its i-th draw):
the builder's direct record writer (the default), TFDS's generic per-example writer (``generic_writer=True``
or ``max_examples_per_split``), and Apache Beam (when ``beam_runner`` or ``beam_options`` is set, e.g. by
``tfds build --beam_pipeline_options=...``), where each chunk of ``splits.CHUNK_SIZE`` examples is one
Beam element generated from its own seed, so the workers need nothing but the ``SplitSpec``.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow_datasets.public_api as tfds
from absl import logging
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import splits as splits_lib

import tqdm

from qrsu_data import codec, croissant, splits, task

if TYPE_CHECKING:
    import apache_beam as beam

VERSION = tfds.core.Version("1.1.0")
RELEASE_DATES = {"1.0.0": "2026-11-27", "1.1.0": "2026-12-01"}
"""When each version was released (Croissant's datePublished, fixed so that a build is reproducible)."""
DEFAULT_CONFIG = "hard"
"""The config `tfds.builder('temporal_order')` builds when none is named: the 1997 paper's Exp. 6a."""


class TemporalOrderConfig(tfds.core.BuilderConfig):
    """A level of the task plus the split sizes and the seed that fix its examples.

    The level is named (``level="hard"``, ``"len1000to1100_pos10to20_pos500to600"``, ``"hard-len5000"``) or
    given by its ranges (``length=[1000, 1100], positions=[[10, 20], [500, 600]]``), which is what
    ``tfds build --config '{"length": ..., "positions": ...}'`` passes.
    """

    def __init__(self, *, level: str | None = None, length=None, positions=None, train_size: int | None = None,
                 validation_size: int | None = None, test_size: int = splits.DEFAULT_TEST_SIZE, seed: int = 0,
                 holdout_fraction: float = 0.2, **kwargs):
        fields = {"level": level, "length": length, "positions": positions, "train_size": train_size,
                  "validation_size": validation_size, "test_size": test_size, "seed": seed,
                  "holdout_fraction": holdout_fraction}
        if level is None and length is None and positions is None:
            raise ValueError("TemporalOrderConfig needs a level: level=<name> (" + ", ".join(task.LEVELS)
                             + ", or a level of your own such as len1000to1100_pos10to20_pos500to600) or "
                               "length=[lo, hi] and positions=[[lo, hi], ...]")
        self.spec = splits.SplitSpec.from_json({k: v for k, v in fields.items() if v is not None})
        name = kwargs.pop("name", None) or self.spec.name
        lv = self.spec.level_def
        sizes = " / ".join(f"{s} {self.spec.size(s):,}" for s in self.spec.splits)
        kwargs.setdefault("description",
                          f"Level {lv.name!r}: {lv.summary()}; {sizes} examples, seed {self.spec.seed}.")
        super().__init__(name=name, version=VERSION, **kwargs)

    @property
    def level(self) -> task.Level:
        """The task level of this config."""
        return self.spec.level_def


def keyed_examples(spec: splits.SplitSpec, split: str, chunk: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (record index, example) for chunk ``chunk`` of ``split``; the index is chunk * CHUNK_SIZE + i."""
    batch = splits.chunk_examples(spec, split, chunk)
    base = chunk * splits.CHUNK_SIZE
    for i in range(len(batch)):
        n = int(batch.lengths[i])
        yield base + i, {
            "tokens": batch.tokens[i, :n],
            "label": int(batch.labels[i]),
            "length": n,
            "positions": batch.positions[i],
        }


# `tfds build qrsu_data/temporal_order` imports this file as the top-level module
# `temporal_order.temporal_order_dataset_builder`, a name Beam's worker processes cannot import. The Beam
# transform therefore refers to `keyed_examples` through the installed package, a name every worker imports.
_INSTALLED_MODULE = "qrsu_data.temporal_order.temporal_order_dataset_builder"


def beam_split(spec: splits.SplitSpec, split: str) -> beam.PTransform:
    """The Beam PTransform yielding (record index, example) for every chunk of ``split``, one chunk an element."""
    try:
        import apache_beam as beam
    except ImportError as e:
        raise ImportError("generating on Apache Beam needs apache-beam: pip install 'qrsu[tfds-cli]'") from e
    generate = functools.partial(importlib.import_module(_INSTALLED_MODULE).keyed_examples, spec, split)
    # Only the chunk indices and the (small, frozen) SplitSpec travel to the workers; each draws its
    # chunks from their own seeds, so the records do not depend on how chunks are spread over workers.
    return ("ChunkIndices" >> beam.Create(list(range(spec.num_chunks(split))))
            | "GenerateChunk" >> beam.FlatMap(generate))


def _resolve_config(config: str | tfds.core.BuilderConfig | None) -> str | tfds.core.BuilderConfig | None:
    """A config of the family: a name such as ``nightmare-train10000000`` or JSON becomes its config."""
    if isinstance(config, str) and ":" not in config.split("{")[0] and Builder.get_builder_config(config) is None:
        spec = splits.SplitSpec.parse(config)  # ValueError naming the valid forms
        config = Builder.get_builder_config(spec.name) or TemporalOrderConfig(**spec.to_json())
    if isinstance(config, TemporalOrderConfig):
        registered = Builder.get_builder_config(config.name)
        # `tfds build --config '{"level": "hard"}'` makes a new object equal to a registered config, which
        # TFDS would refuse as a custom config named like a registered one.
        if registered is not None and registered is not config and registered.spec == config.spec:
            return registered
    return config


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for temporal_order: fixed train/validation/test splits of every difficulty level."""

    VERSION = VERSION
    RELEASE_NOTES = {
        "1.0.0": "Initial release: levels easy, normal, moderate, hard, nightmare and exp6b; "
                 "100,000 train and 10,000 test sequences each, test disjoint from train.",
        "1.1.0": "A validation split (10,000 sequences, seed stream 3), disjoint from train on every level and "
                 "from test on every level too large to enumerate (all standard levels but easy; on easy it draws "
                 "from test's held-out fifth of the space); the "
                 "train and test records of the six standard configs are those of 1.0.0, unchanged. Levels of "
                 "your own (2 to 8 relevant symbols, 4 to 256 classes) by name "
                 "(len1000to1100_pos10to20_pos500to600) or JSON; a length-generalisation suite of test-only "
                 "configs (<level>-len<N>, <level>-tail<N>); croissant.json beside dataset_info.json.",
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

    def __init__(self, *, generic_writer: bool = False, config: str | tfds.core.BuilderConfig | None = None,
                 **kwargs):
        """As tfds.core.GeneratorBasedBuilder; ``generic_writer`` forces TFDS's per-example writer.

        ``config`` may also name any config of the family, e.g. ``"nightmare-train10000000"``.
        """
        self._generic_writer = generic_writer
        self._use_beam = False
        super().__init__(config=_resolve_config(config), **kwargs)

    def _download_and_prepare(self, dl_manager, download_config):
        """Writes the splits into TFDS's temporary folder, marked as in use so no other build removes it."""
        from qrsu_data import incomplete

        with incomplete.building_in(self.data_dir):  # TFDS points data_dir at its incomplete.* folder here
            self._write_splits(dl_manager, download_config)
            # Inside the temporary folder, so that the metadata appears with the records, atomically.
            self._write_croissant()

    def _write_croissant(self) -> None:
        """Writes croissant.json (Croissant metadata of the splits' files) beside the records."""
        built = self.info.splits
        files = {s: [os.path.basename(os.fspath(p)) for p in built[s].filepaths] for s in built}
        croissant.write(self.data_dir, self.builder_config.spec, str(self.version), RELEASE_DATES[str(self.version)],
                        self.info.file_format.value, files, {s: built[s].num_examples for s in built})

    def _write_splits(self, dl_manager, download_config):
        """Writes the splits: on Beam when asked for, else record files directly unless a TFDS writer feature is."""
        fmt = self.info.file_format
        beam_asked = download_config.beam_runner is not None or download_config.beam_options is not None
        self._use_beam = beam_asked and download_config.max_examples_per_split is None
        if beam_asked and not self._use_beam:
            # TFDS's Beam writer ignores max_examples_per_split; the in-process writer honours it.
            logging.warning("max_examples_per_split is set: generating in-process, not on Beam.")
        if self._use_beam and download_config.nondeterministic_order:
            raise ValueError("nondeterministic_order would store the records in an arbitrary order, but record i "
                             "of a temporal_order split is its i-th draw; build without it.")
        if (beam_asked or self._generic_writer or download_config.max_examples_per_split is not None
                or fmt not in (file_adapters.FileFormat.ARRAY_RECORD, file_adapters.FileFormat.TFRECORD)):
            return super()._download_and_prepare(dl_manager, download_config)
        # Same records as TFDS's writer with disable_shuffling (record i = example i), in one shard a
        # split, serialized by codec.serialize instead of per-feature protobuf objects.
        infos = []
        for split in self.builder_config.spec.splits:
            template = self._get_filename_template(split_name=split)
            path = template.sharded_filepath(shard_index=0, num_shards=1)
            spec = self.builder_config.spec
            num_bytes = 0

            def serialized():
                nonlocal num_bytes
                with tqdm.tqdm(total=spec.size(split), desc=f"Generating {split} examples", unit=" examples",
                               leave=False, mininterval=1.0) as bar:
                    for chunk, batch in splits.iter_chunks(spec, split):
                        for i, rec in enumerate(codec.serialize_batch(batch)):
                            num_bytes += len(rec)
                            yield chunk * splits.CHUNK_SIZE + i, rec
                        bar.update(len(batch))

            file_adapters.ADAPTER_FOR_FORMAT[fmt].write_examples(path, serialized())
            infos.append(splits_lib.SplitInfo(name=split, shard_lengths=[spec.size(split)], num_bytes=num_bytes,
                                              filename_template=template))
        self.info.set_splits(splits_lib.SplitDict(infos))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Returns the config's splits (Beam PTransforms on Beam); nothing is downloaded."""
        del dl_manager
        spec = self.builder_config.spec
        if self._use_beam:
            return {split: beam_split(spec, split) for split in spec.splits}
        return {split: self._generate_examples(split) for split in spec.splits}

    def _generate_examples(self, split: str):
        """Yields (index, example) in the split's fixed order."""
        spec = self.builder_config.spec
        for chunk in range(spec.num_chunks(split)):
            yield from keyed_examples(spec, split, chunk)
