"""Sequences per second of building each temporal_order config at full size (train + validation + test).

    python benchmarks/build_dataset.py [--configs easy hard ...] [--file-format array_record]
                                       [--beam-config hard] [--beam-workers 1 2]

Builds every config one after another (per-config figures), then all of them again with the
build command's default parallelism, each into a fresh temporary data dir, and prints the totals.
Then builds ``--beam-config`` on Apache Beam (DirectRunner, what ``tfds build --beam_pipeline_options``
runs) with each number of ``--beam-workers`` (1: in_memory, more: multi_processing), side by side with
the in-process writer on the same config (``--beam-config none`` skips it).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipelines import build_dataset  # noqa: E402
from qrsu_data import splits, store, task  # noqa: E402
from qrsu_data.temporal_order import Builder  # noqa: E402


def num_sequences(config: str) -> int:
    """Sequences of every split of ``config``."""
    spec = splits.SplitSpec.parse(config)
    return sum(spec.size(s) for s in spec.splits)


def beam_options(workers: int) -> "PipelineOptions":  # noqa: F821 (imported lazily)
    """DirectRunner options with ``workers`` workers: in the same process for 1, else one process each."""
    from apache_beam.options.pipeline_options import PipelineOptions

    mode = "in_memory" if workers == 1 else "multi_processing"
    return PipelineOptions(["--runner=DirectRunner", f"--direct_num_workers={workers}",
                            f"--direct_running_mode={mode}"])


def beam_rows(level: str, workers_list: list[int], file_format: str, tmp: str) -> list[tuple[str, float]]:
    """(path, seconds) of building ``level`` in-process and then on Beam with each number of workers."""
    import tensorflow_datasets as tfds

    rows = []
    t0 = time.perf_counter()
    store.build(level, os.path.join(tmp, "beam-baseline"), file_format=file_format)
    rows.append(("in-process (direct writer)", time.perf_counter() - t0))
    for workers in workers_list:
        t0 = time.perf_counter()
        Builder(config=level, data_dir=os.path.join(tmp, f"beam-{workers}")).download_and_prepare(
            file_format=file_format, download_config=tfds.download.DownloadConfig(beam_options=beam_options(workers)))
        rows.append((f"Beam DirectRunner, {workers} worker{'s' if workers > 1 else ''}", time.perf_counter() - t0))
    return rows


def main() -> None:
    """Runs the benchmark and prints a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(task.LEVELS),
                   help="config names (default: the six standard configs)")
    p.add_argument("--file-format", default="array_record", choices=store.FILE_FORMATS)
    p.add_argument("--beam-config", default="hard",
                   help="config built on Beam, full size (default hard; none skips the Beam figures)")
    p.add_argument("--beam-workers", nargs="+", type=int, default=[1, 2], help="Beam worker counts (default 1 2)")
    args = p.parse_args()
    if min(args.beam_workers) < 1:
        p.error(f"--beam-workers must be >= 1, got {args.beam_workers}")
    try:
        for c in [*args.configs, *([] if args.beam_config == "none" else [args.beam_config])]:
            store.check_config(c)
    except ValueError as e:
        p.error(str(e))
    logging.getLogger("absl").setLevel(logging.ERROR)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.configs:
            n = num_sequences(level)
            t0 = time.perf_counter()
            store.build(level, os.path.join(tmp, "sequential"), file_format=args.file_format)
            dt = time.perf_counter() - t0
            rows.append((level, n, dt))
        # TFDS's own per-example writer on one config, for the ratio.
        t0 = time.perf_counter()
        Builder(config="hard", data_dir=os.path.join(tmp, "generic"), generic_writer=True).download_and_prepare(
            file_format=args.file_format)
        generic = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_dataset.main(["--data-dir", os.path.join(tmp, "parallel"), "--file-format", args.file_format,
                            *sum((["--config", c] for c in args.configs), [])])
        parallel = time.perf_counter() - t0
        beam = [] if args.beam_config == "none" else beam_rows(args.beam_config, args.beam_workers, args.file_format,
                                                               tmp)

    print(f"\n{'config':<10} {'sequences':>10} {'seconds':>8} {'sequences/s':>12}")
    for level, n, dt in rows:
        print(f"{level:<10} {n:>10,} {dt:>8.1f} {n / dt:>12,.0f}")
    total_n = sum(r[1] for r in rows)
    total_t = sum(r[2] for r in rows)
    print(f"{'total':<10} {total_n:>10,} {total_t:>8.1f} {total_n / total_t:>12,.0f}   (one process)")
    print(f"{'total':<10} {total_n:>10,} {parallel:>8.1f} {total_n / parallel:>12,.0f}   "
          f"(python -m pipelines.build_dataset, {min(2, os.cpu_count() or 1)} processes)")
    hard = next((r for r in rows if r[0] == "hard"), None)
    n_hard = num_sequences("hard")
    print(f"hard through TFDS's generic per-example writer: {generic:.1f} s, {n_hard / generic:,.0f} sequences/s"
          + (f"; ours is {generic / hard[2]:.1f}x faster" if hard else ""))
    print(f"target: all six configs in under 60 s; parallel/one-process speed-up {total_t / parallel:.2f}x")
    if beam:
        n = num_sequences(args.beam_config)
        base = beam[0][1]
        one = next((dt for path, dt in beam if path.endswith(", 1 worker")), None)
        print(f"\n{args.beam_config}, {n:,} sequences: in-process vs Apache Beam")
        print(f"{'path':<30} {'seconds':>8} {'sequences/s':>12} {'vs in-process':>14} {'vs 1 worker':>12}")
        for path, dt in beam:
            vs_one = f"{one / dt:.2f}x" if one and path.startswith("Beam") else ""
            print(f"{path:<30} {dt:>8.1f} {n / dt:>12,.0f} {base / dt:>13.2f}x {vs_one:>12}")


if __name__ == "__main__":
    main()
