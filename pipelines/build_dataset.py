"""Builds temporal_order configs into a data dir, without TensorFlow: ``python -m pipelines.build_dataset``.

Every input is checked before anything is written: a bad flag, config, level or data dir, or a config too
large for the disk, ends the command with ``error: ...`` on stderr and exit code 2, and leaves the disk as it was.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time

from qrsu_data import splits, store, task


def _int_flag(low: int) -> callable:
    """An argparse type: an integer >= ``low``, with a message naming the value and the valid range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _level_json(text: str) -> str:
    """An argparse type: a level as JSON; returns the level's name (``task.level_from_json``)."""
    try:
        return task.level_from_json(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; exits with status 2 and ``error: ...`` on any bad value."""
    defaults = splits.SplitSpec("hard")
    p = argparse.ArgumentParser(
        prog="python -m pipelines.build_dataset",
        description="Build the temporal_order dataset (fixed train/validation/test splits of a level) into "
                    "DATA_DIR. A config that is already built is left as it is.")
    p.add_argument("--config", action="append", metavar="NAME",
                   help=f"config to build, repeatable: a level ({', '.join(task.LEVELS)}), 'all' (those six), a "
                        f"level of your own such as len1000to1100_pos10to20_pos500to600, a test-only lengthened "
                        f"level such as hard-len5000, any of these with suffixes such as hard-train1000-seed3, or "
                        f"JSON of the config's fields (default: hard, the 1997 paper's Exp. 6a)")
    p.add_argument("--level", action="append", metavar="JSON", type=_level_json,
                   help='a level of your own as JSON, repeatable, e.g. \'{"length": [1000, 1100], '
                        '"positions": [[10, 20], [500, 600]]}\' (2 to 8 position ranges, inclusive, 0-based from B)')
    p.add_argument("--suite", action="append", metavar="LEVEL",
                   help="also build the test-only configs of LEVEL's length-generalisation suite "
                        f"(<level>-len<N> and <level>-tail<N> for N in "
                        f"{', '.join(map(str, splits.DEFAULT_SUITE_LENGTHS))} "
                        "longer than the level's own), repeatable")
    p.add_argument("--data-dir", default=None,
                   help=f"where datasets live (default: ${store.DATA_DIR_ENV} or ~/qrsu_data)")
    p.add_argument("--file-format", default="array_record", choices=store.FILE_FORMATS,
                   help="record format (default: array_record, random access for Grain)")
    p.add_argument("--train-size", type=_int_flag(1), default=None,
                   help=f"train examples (default {defaults.train_size:,}); a non-default size builds a separately "
                        "named config such as hard-train1000. Train and validation sizes apply to the configs "
                        "that have those splits (a lengthened config has only test)")
    p.add_argument("--validation-size", type=_int_flag(0), default=None,
                   help=f"validation examples (default {defaults.validation_size:,}; 0: no validation split)")
    p.add_argument("--test-size", type=_int_flag(1), default=None,
                   help=f"test examples (default {defaults.test_size:,})")
    p.add_argument("--seed", type=_int_flag(0), default=None, help="generation seed (default 0)")
    p.add_argument("--num-processes", type=_int_flag(1), default=min(2, os.cpu_count() or 1),
                   help="configs built in parallel (default: min(2, cores))")
    args = p.parse_args(argv)

    names = list(args.config or [])
    if "all" in names:
        i = names.index("all")
        names[i:i + 1] = list(task.LEVELS)
    names += args.level or []
    for level in args.suite or []:
        try:
            names += splits.suite(level)
        except ValueError as e:
            p.error(f"argument --suite: {e}")
    if not names:
        names = ["hard"]
    spec_kwargs = {k: v for k, v in (("train_size", args.train_size), ("validation_size", args.validation_size),
                                     ("test_size", args.test_size), ("seed", args.seed)) if v is not None}
    specs, used = {}, set()
    for name in names:
        try:
            # Train and validation sizes apply to the configs that have those splits (not to test-only ones).
            kwargs = {k: v for k, v in spec_kwargs.items()
                      if not (splits.SplitSpec.parse(name).test_only and k in ("train_size", "validation_size"))}
            spec = store.spec_of(name, **kwargs)
        except ValueError as e:
            p.error(str(e))
        used.update(kwargs)
        specs.setdefault(spec.name, spec)
    for key in sorted(set(spec_kwargs) - used):
        flag = "--" + key.replace("_", "-")
        p.error(f"argument {flag}: no config given has a {key.split('_')[0]} split (test-only configs: "
                f"{', '.join(specs)})")
    args.specs = list(specs.values())
    try:
        args.data_dir = store.resolve_data_dir(args.data_dir)
        for spec in args.specs:
            store.check_fits(spec, args.data_dir)
    except ValueError as e:
        p.error(str(e))
    return args


def _build_one(name: str, data_dir: str, file_format: str) -> tuple[str, str, float]:
    t0 = time.perf_counter()
    path = store.build(name, data_dir, file_format=file_format)
    return name, str(path), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Builds the requested configs and prints where each one is."""
    args = parse_args(argv)
    try:
        store.check_writable(args.data_dir)
    except PermissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jobs = [(spec.name, os.fspath(args.data_dir), args.file_format) for spec in args.specs]
    if args.num_processes == 1 or len(jobs) == 1:
        results = [_build_one(*job) for job in jobs]
    else:
        # One process per config: TFDS's in-process writer is single-threaded Python.
        with concurrent.futures.ProcessPoolExecutor(min(args.num_processes, len(jobs))) as pool:
            results = list(pool.map(_build_one, *zip(*jobs)))
    for name, path, seconds in results:
        print(f"{name}: {path} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
