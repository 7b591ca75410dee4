"""Classifies sequences typed as strings with a trained run: ``python -m pipelines.predict --help``."""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from flax import nnx

from pipelines.engine import workdir as workdir_lib
from pipelines.engine.errors import error, guarded
from pipelines.engine.workdir import load_config, load_run
from qrsu_data import padding as padding_lib, task

EXIT_BAD_SEQUENCE = 2
"""Exit code for a sequence that is not valid input (argparse's code for bad usage)."""


class SequenceError(ValueError):
    """A typed sequence outside the vocabulary or breaking the task's rules; the message says which and why."""


def _example(level: task.Level) -> str:
    # A real sequence of the level, so the hint is valid for exp6b's three relevant symbols too.
    return task.decode(task.generate(level, 1, np.random.default_rng(0)).sequences()[0])


SHOWN_SYMBOLS = 60
"""Messages quote at most this many symbols of a sequence (a 100,000-symbol one is named, not echoed)."""


def shown(text: str) -> str:
    """``text`` quoted for a message: whole if short, else its start and end with its length."""
    if len(text) <= SHOWN_SYMBOLS:
        return repr(text)
    half = SHOWN_SYMBOLS // 2
    return f"'{text[:half]}...{text[-half:]}' ({len(text):,} symbols)"


def parse_sequence(text: str, level: task.Level) -> tuple[np.ndarray, str | None]:
    """Token ids of ``text`` for a model of ``level`` and a warning if it lies outside the level's ranges."""
    vocabulary = f"vocabulary: {' '.join(task.SYMBOLS)}"
    rule = (f"a sequence is 'B', distractors ({' '.join(task.SYMBOLS[i] for i in task.DISTRACTOR_IDS)}) with "
            f"{level.num_relevant} relevant symbols (X or Y) among them, then 'E', e.g. {_example(level)}")
    try:
        tokens = task.encode(text)
    except ValueError as e:
        raise SequenceError(f"{shown(text)}: {e}") from None
    try:
        _, positions = task.check_sequence(tokens)
    except ValueError as e:
        raise SequenceError(f"{shown(text)}: {e}; {rule}; {vocabulary}") from None
    if len(positions) != level.num_relevant:
        raise SequenceError(f"{shown(text)}: the run's level {level.name!r} takes {level.num_relevant} "
                            f"relevant symbols (X or Y), found {len(positions)}; {rule}")
    try:
        task.check_sequence(tokens, level)
        warning = None
    except ValueError as e:
        # Valid input, but of a length or layout the model never saw: answer, and say it is extrapolating.
        warning = f"{shown(text)}: {e}; the model was trained on {level.name!r} only, so this is extrapolation"
    return tokens, warning


def class_probabilities(model: nnx.Module, sequences: list[np.ndarray], padding: str) -> np.ndarray:
    """Softmax class probabilities [N, num_classes] of token-id sequences of any lengths, in one batch."""
    lengths = np.array([len(s) for s in sequences], np.int32)
    # Padded to the longest given sequence, not the level's maximum: the model is exact for any length, and
    # its output for a row does not depend on how much padding the batch adds.
    tokens = padding_lib.pad_sequences(sequences, int(lengths.max()), padding)
    return np.asarray(jax.nn.softmax(model(tokens, lengths, padding=padding), axis=-1))


def format_prediction(text: str, probabilities: np.ndarray, classes: tuple[str, ...]) -> str:
    """``BaXbcYdE -> R (p=0.99)  [Q 0.00  R 0.99  S 0.00  U 0.01]``."""
    best = int(np.argmax(probabilities))
    listed = "  ".join(f"{name} {p:.2f}" for name, p in zip(classes, probabilities))
    return f"{text} -> {classes[best]} (p={probabilities[best]:.2f})  [{listed}]"


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m pipelines.predict",
                                description="Print the class a trained run gives each sequence, with the "
                                            f"probability of every class. Symbols: {' '.join(task.SYMBOLS)}.")
    workdir_lib.add_run_flags(p)
    p.add_argument("sequences", nargs="+", metavar="SEQ", help="a sequence such as BaXbcYdE")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = parser().parse_args(argv)

    def go() -> int:
        config = load_config(args.workdir)
        level = config.dataset.level_def
        # Every sequence is checked before the model is loaded: a typo fails fast, and all typos are reported.
        parsed, errors = [], []
        for text in args.sequences:
            try:
                parsed.append(parse_sequence(text, level))
            except SequenceError as e:
                errors.append(str(e))
        if errors:
            for message in errors:
                error(message)
            return EXIT_BAD_SEQUENCE
        for _, warning in parsed:
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
        run = load_run(args.workdir, args.step)
        probabilities = class_probabilities(run.model, [tokens for tokens, _ in parsed], config.padding)
        for text, p in zip(args.sequences, probabilities):
            print(format_prediction(text, p, level.classes))
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
