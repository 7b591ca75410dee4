"""Exports a built config into another file format.

    python -m pipelines.export --config hard --format parquet --out DIR

Writes every split of the config (building it first if it is missing, and saying so) plus a croissant.json,
atomically: into a temporary folder beside DIR, renamed into place once complete. Bad input ends the command
with ``error: ...`` on stderr and exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import sys

from qrsu_data import export, splits, store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; exits with status 2 and ``error: ...`` on any bad value."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.export",
        description="Export every split of a temporal_order config as Parquet (read by pandas, Polars and Hugging "
                    "Face datasets), with Croissant metadata (croissant.json) that mlcroissant reads.")
    p.add_argument("--config", required=True, metavar="NAME",
                   help="the config: a name such as hard, hard-train1000 or hard-len5000, or JSON of its fields")
    p.add_argument("--format", default="parquet", choices=export.FORMATS, help="file format (default: parquet)")
    p.add_argument("--out", required=True, metavar="DIR", help="the export folder: new, or empty")
    p.add_argument("--data-dir", default=None,
                   help=f"where datasets are built (default: ${store.DATA_DIR_ENV} or ~/qrsu_data)")
    args = p.parse_args(argv)
    try:
        args.config = splits.SplitSpec.parse(args.config).name
        args.data_dir = store.resolve_data_dir(args.data_dir)
    except ValueError as e:
        p.error(str(e))
    args.parser = p
    return args


def main(argv: list[str] | None = None) -> int:
    """Exports the config and prints where the export is."""
    args = parse_args(argv)
    try:
        out = export.export(args.config, args.out, file_format=args.format, data_dir=args.data_dir)
    except (ValueError, PermissionError, ImportError) as e:
        print(f"{args.parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.config}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
