"""A saved run of a study (the grid, the length matrix, Pascanu's runs) on more test sequences or other lengths.

A study keeps every run's settings (``runs/KEY.json``) and final parameters (``models/KEY.npz``); this rebuilds
the model from them and evaluates it on the first ``--sequences`` test sequences of ``hard-len<N>`` for each
``--lengths`` N (or of each ``--configs``), the same evaluation as the study's own::

    python examples/evaluate_saved_run.py docs/lengthgen/mingru128-160k/passed-through \\
        mingru-hard-var50to200-passed-through-lr0.004-seed1 --sequences 10000 --lengths 5000 10000 \\
        --out docs/lengthgen/mingru128-160k/seed1-10000-sequences.json

``--confusion`` gives each config's confusion matrix as well (which classes a model mistakes for which: a model
below chance at length reads the classes consistently wrong, one at chance guesses).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipelines.engine import reporting
from pipelines.engine.grid import evaluate_lengths, evaluators_at
from pipelines.engine.solving import RunSpec
from pipelines.evaluate import confusion_counts


COUNTS = "rows: true class, columns: predicted"
"""The key of a confusion matrix's counts in the JSON (its name says how to read it)."""


def saved_run(folder: Path, key: str) -> tuple[RunSpec, dict[str, np.ndarray]]:
    """(settings, flat parameters) of the run ``key`` of the study in ``folder``; ValueError naming the saved
    runs if it has none of that name."""
    runs, models = folder / "runs" / f"{key}.json", folder / "models" / f"{key}.npz"
    if not runs.is_file() or not models.is_file():
        saved = sorted(p.stem for p in (folder / "models").glob("*.npz"))
        raise ValueError(f"no saved run {key!r} in {folder}; its saved runs: {', '.join(saved) or 'none'}")
    settings = json.loads(runs.read_text())["settings"]
    spec = RunSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items()})
    with np.load(models) as saved:
        return spec, {name: saved[name] for name in saved.files}


def evaluate_saved_run(folder: Path, key: str, configs: list[str], sequences: int,
                       data_dir: str | None = None) -> dict[str, float]:
    """Test accuracy of the run ``key`` of the study in ``folder`` on each config's first ``sequences``."""
    spec, flat = saved_run(folder, key)
    return evaluate_lengths(spec, flat, configs, data_dir, limit=sequences)


def confusion_of_saved_run(folder: Path, key: str, configs: list[str], sequences: int,
                           data_dir: str | None = None) -> dict[str, dict]:
    """config -> the confusion matrix (rows: true class, columns: predicted) of the run ``key`` on the config's
    first ``sequences`` test sequences, with the class names."""
    found = {}
    for config, (dataset, evaluator, params) in zip(configs, evaluators_at(*saved_run(folder, key), configs,
                                                                           data_dir)):
        classes = dataset.level_def.classes
        p = evaluator.predict(params, dataset, "test", data_dir=data_dir, limit=sequences)
        counts = confusion_counts(p.labels, p.predicted, len(classes))
        found[config] = {"classes": list(classes), COUNTS: counts.tolist()}
    return found


def main(argv: list[str] | None = None) -> int:
    """Evaluates the run and prints (and with ``--out`` writes) its accuracies."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the study folder (it holds runs/ and models/)")
    p.add_argument("key", help="the run's name, as in models/KEY.npz")
    p.add_argument("--sequences", type=int, default=10_000, help="test sequences per config (default 10,000)")
    p.add_argument("--lengths", type=int, nargs="*", default=[5000, 10000], help="lengths N of hard-len<N>")
    p.add_argument("--configs", nargs="*", default=[], help="other test configs, by name")
    p.add_argument("--confusion", action="store_true", help="each config's confusion matrix as well")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the accuracies here as JSON")
    args = p.parse_args(argv)
    try:
        if args.sequences <= 0:
            raise ValueError(f"--sequences must be positive, got {args.sequences}")
        configs = [f"hard-len{n}" for n in args.lengths] + list(args.configs)
        if args.confusion:  # the accuracy from the same predictions, rather than a second pass
            confusion = confusion_of_saved_run(args.folder, args.key, configs, args.sequences, args.data_dir)
            record = {config: float(np.trace(c[COUNTS]) / np.sum(c[COUNTS])) for config, c in confusion.items()}
        else:
            confusion = None
            record = evaluate_saved_run(args.folder, args.key, configs, args.sequences, args.data_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = {"model": args.key, "test_sequences": args.sequences, "accuracy": record}
    if confusion is not None:
        written["confusion"] = confusion
    if args.out is not None:
        reporting.write_json(args.out, written)
    print(json.dumps(record, indent=2))
    for config, c in (confusion or {}).items():
        print(f"{config} (rows: true class, columns: predicted; classes {' '.join(c['classes'])}):")
        for name, row in zip(c["classes"], c[COUNTS]):
            print(f"  {name:>4} " + " ".join(f"{n:6d}" for n in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
