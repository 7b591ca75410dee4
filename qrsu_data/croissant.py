"""Croissant (MLCommons) metadata of a built config or an export: ``croissant.json`` beside the data files.

Written as plain JSON-LD (Croissant 1.1), so building needs no mlcroissant; ``tests/test_croissant.py`` checks
that ``mlcroissant.Dataset`` loads every variant without validation issues and, for the Parquet export, reads
the records back. Every file is listed with its size and sha256; one record set per split, each with the fields
``tokens``, ``length``, ``label`` and ``positions``, plus a ``classes`` record set that names the label ids.
mlcroissant cannot read ArrayRecord or TFRecord files: for those the metadata describes the files without being
readable through mlcroissant; the Parquet export (``qrsu_data.export``) is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from qrsu_data import splits

FILENAME = "croissant.json"
CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
ENCODING_FORMATS = {
    # MIME types where one is registered; Croissant takes a descriptive URL for the others.
    "array_record": "https://github.com/google/array_record",
    "tfrecord": "https://www.tensorflow.org/tutorials/load_data/tfrecord",
    "parquet": "application/x-parquet",
}
LICENSE = "https://www.apache.org/licenses/LICENSE-2.0"
HOMEPAGE = "https://doi.org/10.1162/neco.1997.9.8.1735"
_CITATION = Path(__file__).with_name("temporal_order") / "CITATIONS.bib"

_CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet", "format": "cr:format",
    "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath", "key": "cr:key",
    "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "samplingRate": "cr:samplingRate", "sc": "https://schema.org/", "separator": "cr:separator", "source": "cr:source",
    "subField": "cr:subField", "transform": "cr:transform",
}


def description(spec: splits.SplitSpec) -> str:
    """What the config holds, in a few sentences."""
    level = spec.level_def
    sizes = ", ".join(f"{s} {spec.size(s):,}" for s in spec.splits)
    return (f"The temporal-order task of Hochreiter & Schmidhuber (1997), Experiment 6: classify a sequence of "
            f"symbols by the order of its relevant symbols X/Y amid random distractors. Config {spec.name!r}: "
            f"level {level.name!r} ({level.summary()}; classes {' '.join(level.classes)}); {sizes} sequences, "
            f"seed {spec.seed}. Tokens are the ids of X Y a b c d B E (0..7), B first and E last; positions are "
            f"0-based from B. {level.description}".strip())


def _field(split: str, name: str, data_type: str, source: dict, text: str, shape: str | None = None) -> dict:
    field = {"@type": "cr:Field", "@id": f"{split}/{name}", "name": name, "description": text,
             "dataType": data_type, "source": {**source, "extract": {"column": name}}}
    if shape is not None:
        field["cr:isArray"] = True
        field["cr:arrayShape"] = shape
    return field


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read in blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def metadata(spec: splits.SplitSpec, version: str, date_published: str, file_format: str,
             files: Mapping[str, Sequence[str]], num_examples: Mapping[str, int],
             digests: Mapping[str, tuple[int, str]]) -> dict:
    """The Croissant JSON-LD of a config whose split ``s`` holds ``num_examples[s]`` records stored in
    ``files[s]`` (names relative to the JSON file), each file listed with its ``digests[name]`` (size, sha256).

    Every file is a FileObject with its size and checksum. A split's records come from its FileObject when it
    is stored in one file, else from a FileSet that includes its files (several shards).
    """
    if file_format not in ENCODING_FORMATS:
        raise ValueError(f"unknown file format {file_format!r}; choose one of: {', '.join(ENCODING_FORMATS)}")
    level = spec.level_def
    classes = ", ".join(f"{i}={c}" for i, c in enumerate(level.classes))
    encoding = ENCODING_FORMATS[file_format]
    distribution, record_sets = [], []
    for split, names in files.items():
        for i, name in enumerate(names):
            size, sha = digests[name]
            file_id = f"{split}-file" if len(names) == 1 else f"{split}-file-{i}"
            distribution.append({"@type": "cr:FileObject", "@id": file_id, "name": name, "contentUrl": name,
                                 "encodingFormat": encoding, "contentSize": f"{size} B", "sha256": sha})
        if len(names) == 1:
            source = {"fileObject": {"@id": f"{split}-file"}}
        else:
            distribution.append({"@type": "cr:FileSet", "@id": f"{split}-files", "name": f"{split}-files",
                                 "encodingFormat": encoding, "includes": list(names)})
            source = {"fileSet": {"@id": f"{split}-files"}}
        record_sets.append({
            "@type": "cr:RecordSet", "@id": split, "name": split,
            "description": f"The {split} split of {spec.name!r}: {num_examples[split]:,} sequences in generation "
                           f"order.",
            "field": [
                _field(split, "tokens", "cr:UInt8", source, "Token ids of X Y a b c d B E (0..7), unpadded.", "-1"),
                _field(split, "length", "cr:Int32", source, "Number of tokens, B and E included."),
                _field(split, "label", "cr:Int64", source, f"Class id, the order of the relevant symbols: {classes}."),
                _field(split, "positions", "cr:Int32", source, "0-based positions of the relevant symbols, from B.",
                       str(level.num_relevant)),
            ]})
    record_sets.append({
        "@type": "cr:RecordSet", "@id": "classes", "name": "classes", "key": {"@id": "classes/label"},
        "description": "The class names by label id.",
        "field": [{"@type": "cr:Field", "@id": "classes/label", "name": "label", "dataType": "cr:Int64"},
                  {"@type": "cr:Field", "@id": "classes/name", "name": "name", "dataType": "sc:Text"}],
        "data": [{"classes/label": i, "classes/name": c} for i, c in enumerate(level.classes)]})
    return {
        "@context": _CONTEXT, "@type": "sc:Dataset", "name": f"temporal_order-{spec.name}",
        "description": description(spec), "conformsTo": CONFORMS_TO, "citeAs": _CITATION.read_text().strip(),
        "datePublished": date_published, "license": LICENSE, "url": HOMEPAGE, "version": version,
        "keywords": ["temporal order", "long short-term memory", "long time lags", "sequence classification",
                     "synthetic"],
        "distribution": distribution, "recordSet": record_sets,
    }


def write(folder: str | os.PathLike, spec: splits.SplitSpec, version: str, date_published: str, file_format: str,
          files: Mapping[str, Sequence[str]], num_examples: Mapping[str, int]) -> Path:
    """Writes ``croissant.json`` into ``folder``, beside the ``files`` it describes (see ``metadata``, whose
    sizes and checksums it computes); returns its path."""
    folder = Path(folder)
    digests = {name: file_digest(folder / name) for names in files.values() for name in names}
    path = folder / FILENAME
    doc = metadata(spec, version, date_published, file_format, files, num_examples, digests)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def file_sizes(folder: str | os.PathLike) -> dict[str, int]:
    """Size in bytes of every file the ``croissant.json`` of ``folder`` lists, by file name."""
    sizes = {}
    for d in read(folder).get("distribution", []):
        if d.get("@type") == "cr:FileObject" and str(d.get("contentSize", "")).endswith(" B"):
            sizes[d["contentUrl"]] = int(d["contentSize"][:-2])
    return sizes


def read(folder: str | os.PathLike) -> dict:
    """The ``croissant.json`` of ``folder`` as a dict; FileNotFoundError or ValueError if missing or not JSON."""
    path = Path(folder) / FILENAME
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg})") from None
