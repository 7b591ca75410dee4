"""Exports of a built config into other file formats: Parquet, readable by pandas, Polars and Hugging Face datasets.

An export is a folder holding one file per split (``train.parquet``, ``validation.parquet``, ``test.parquet``:
the splits the config has) and a ``croissant.json`` that describes them with checksums, so ``mlcroissant``
reads the records too. Columns: ``tokens`` (list of uint8 token ids, unpadded), ``length`` (int32), ``label``
(int64) and ``positions`` (list of int32). The Parquet schema carries Hugging Face ``datasets`` features in its
metadata, so ``load_dataset("parquet", ...)`` sees ``label`` as a ``ClassLabel`` with the level's class names.

The export is atomic: it is written into a temporary folder beside ``out`` and renamed into place once complete.
Needs pyarrow (``pip install 'qrsu[parquet]'``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qrsu_data import catalog, croissant, splits, store

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS: tuple[str, ...] = ("parquet",)
"""File formats an export can be written in."""
COMPRESSION = "zstd"


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("exporting to Parquet needs pyarrow: pip install 'qrsu[parquet]'") from e
    return pa, pq


def hf_features(config: str) -> dict:
    """The Hugging Face ``datasets`` features of an exported split, as ``Features.to_dict()`` writes them."""
    level = catalog.level_of(config)

    def seq(dtype):
        # "Sequence", not the newer "List": every datasets version reads it (5.x maps it to List).
        return {"feature": {"dtype": dtype, "_type": "Value"}, "_type": "Sequence"}

    return {"tokens": seq("uint8"), "length": {"dtype": "int32", "_type": "Value"},
            "label": {"names": list(level.classes), "_type": "ClassLabel"}, "positions": seq("int32")}


def split_table(config: str, split: str, data_dir: str | os.PathLike | None = None, *,
                build_if_missing: bool = False) -> pa.Table:
    """A built split as an Arrow table: tokens list<uint8> (unpadded), length, label (int64), positions."""
    pa, _ = _pyarrow()
    arrays = catalog.open_split(config, split, data_dir, build_if_missing=build_if_missing)
    lengths = arrays.lengths
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    # Post-padded rows: the cells below each length, in row-major order, are the sequences one after another.
    values = arrays.tokens[np.arange(arrays.max_length)[None, :] < lengths[:, None]]
    k = arrays.positions.shape[1]
    if offsets[-1] < 2 ** 31:
        tokens = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.uint8()))
    else:  # over 2**31 tokens in one split: 64-bit offsets
        tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.uint8()))
    table = pa.table({
        "tokens": tokens,
        "length": pa.array(lengths, pa.int32()),
        "label": pa.array(arrays.labels.astype(np.int64), pa.int64()),
        "positions": pa.ListArray.from_arrays(pa.array(np.arange(0, k * len(lengths) + 1, k, dtype=np.int32)),
                                              pa.array(arrays.positions.reshape(-1), pa.int32())),
    })
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": hf_features(config)}})})


def _existing_export(out: Path) -> dict | None:
    """The (config name, version, format) an existing export folder holds, or None if it holds none."""
    try:
        doc = croissant.read(out)
    except (FileNotFoundError, ValueError):
        return None
    return {"name": doc.get("name"), "version": doc.get("version"),
            "format": {d.get("encodingFormat") for d in doc.get("distribution", [])}}


def export(config: str, out: str | os.PathLike, *, file_format: str = "parquet",
           data_dir: str | os.PathLike | None = None, build_if_missing: bool = True,
           log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Writes every split of ``config`` into the folder ``out`` (building the config first if it is missing and
    ``build_if_missing``); returns ``out``. ValueError if ``out`` is a file or holds anything but this export."""
    from qrsu_data.temporal_order import RELEASE_DATES, VERSION

    if file_format not in FORMATS:
        raise ValueError(f"unknown export format {file_format!r}; choose one of: {', '.join(FORMATS)}")
    spec = splits.SplitSpec.parse(config)
    if not os.fspath(out).strip():
        raise ValueError("the export folder is empty (''); give a folder")
    out = Path(out).expanduser().absolute()
    want = {"name": f"temporal_order-{spec.name}", "version": str(VERSION),
            "format": {croissant.ENCODING_FORMATS[file_format]}}
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"the export folder {str(out)!r} is a file; give a folder that is new or empty")
        if any(out.iterdir()):
            if _existing_export(out) == want:
                log(f"note: {out} already holds the {file_format} export of {spec.name!r}; left as it is")
                return out
            held = _existing_export(out)
            what = (f"another export ({held['name']}, version {held['version']})" if held else "other files")
            raise ValueError(f"the export folder {str(out)!r} already holds {what}; give a new or empty folder")
    _pyarrow()  # fail before building anything when pyarrow is missing
    if not store.is_built(spec.name, data_dir):
        if not build_if_missing:
            catalog.ensure_built(spec.name, data_dir)  # FileNotFoundError naming the build command
        log(f"note: {spec.name} is not built in {store.resolve_data_dir(data_dir)}; building it first")
        store.build(spec.name, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.incomplete-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _, pq = _pyarrow()
        files, sizes = {}, {}
        for split in spec.splits:
            name = f"{split}.{file_format}"
            table = split_table(spec.name, split, data_dir)
            pq.write_table(table, tmp / name, compression=COMPRESSION)
            files[split], sizes[split] = [name], table.num_rows
        croissant.write(tmp, spec, str(VERSION), RELEASE_DATES[str(VERSION)], file_format, files, sizes)
        if out.exists():
            out.rmdir()  # empty (checked above); a rename onto it would fail on some systems
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
