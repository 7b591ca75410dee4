"""Builds temporal_order configs into a data dir, without TensorFlow: ``python -m pipelines.build_dataset``."""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time

from qrsu_data import splits, store, task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.build_dataset",
        description="Build the temporal_order dataset (fixed train/test splits of each level) into DATA_DIR. "
                    "A config that is already built is left as it is.")
    p.add_argument("--config", action="append", metavar="NAME",
                   help=f"level to build, repeatable, or 'all'; one of: {', '.join(task.LEVELS)} "
                        f"(default: hard, the 1997 paper's Exp. 6a)")
    p.add_argument("--data-dir", default=None,
                   help=f"where datasets live (default: ${store.DATA_DIR_ENV} or ~/qrsu_data)")
    p.add_argument("--file-format", default="array_record", choices=store.FILE_FORMATS,
                   help="record format (default: array_record, random access for Grain)")
    p.add_argument("--train-size", type=int, default=None,
                   help=f"train examples (default {splits.SplitSpec('hard').train_size:,}); a non-default size "
                        "builds a separately named config such as hard-train1000")
    p.add_argument("--test-size", type=int, default=None,
                   help=f"test examples (default {splits.SplitSpec('hard').test_size:,})")
    p.add_argument("--seed", type=int, default=None, help="generation seed (default 0)")
    p.add_argument("--num-processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="configs built in parallel (default: min(2, cores))")
    args = p.parse_args(argv)
    names = args.config or ["hard"]
    if "all" in names:
        names = list(task.LEVELS)
    for n in names:
        if n not in task.LEVELS:
            p.error(f"unknown config {n!r}; choose one of: {', '.join(task.LEVELS)}, all")
    args.config = list(dict.fromkeys(names))
    if args.num_processes < 1:
        p.error(f"--num-processes must be >= 1, got {args.num_processes}")
    for flag in ("train_size", "test_size"):
        v = getattr(args, flag)
        if v is not None and v <= 0:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {v}")
    return args


def _build_one(level: str, data_dir: str, file_format: str, spec_kwargs: dict) -> tuple[str, str, float]:
    t0 = time.perf_counter()
    path = store.build(level, data_dir, file_format=file_format, **spec_kwargs)
    return level, str(path), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Builds the requested configs and prints where each one is."""
    args = parse_args(argv)
    data_dir = store.resolve_data_dir(args.data_dir)
    try:
        store.check_writable(data_dir)
    except PermissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec_kwargs = {k: v for k, v in (("train_size", args.train_size), ("test_size", args.test_size),
                                     ("seed", args.seed)) if v is not None}
    jobs = [(level, os.fspath(data_dir), args.file_format, spec_kwargs) for level in args.config]
    if args.num_processes == 1 or len(jobs) == 1:
        results = [_build_one(*job) for job in jobs]
    else:
        # One process per config: TFDS's in-process writer is single-threaded Python.
        with concurrent.futures.ProcessPoolExecutor(min(args.num_processes, len(jobs))) as pool:
            results = list(pool.map(_build_one, *zip(*jobs)))
    for level, path, seconds in results:
        print(f"{level}: {path} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
