"""What every command does with a user error: one line on stderr that names the problem, an exit code, no traceback."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

from qrsu_data.codec import CorruptSplitError

EXIT_FAILED = 1
"""The work could not be done: a run that cannot start or go on, a damaged file, a dataset that is missing."""
EXIT_USAGE = 2
"""A bad flag or value (argparse's code for bad usage)."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C or SIGTERM (128 + SIGINT), after saving what there was to save."""


INTERRUPTED = ("interrupted; what was finished is saved and nothing is half-written: run the same command again "
               "to go on from there")
"""What a stopped command says: the user's next step, not only what happened."""


class CommandError(RuntimeError):
    """A command that cannot do its work; the message says why and what to do."""


FAILURES = (CommandError, CorruptSplitError, FileNotFoundError, PermissionError, OSError)


def error(message: object) -> None:
    """Prints ``error: message`` on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def interrupt(signum, frame) -> None:
    """A signal handler that stops the program as Ctrl-C does."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (what ``kill``, ``timeout`` and job schedulers send) is a Ctrl-C."""
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals are the main thread's
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def guarded(main: Callable[[], int]) -> int:
    """Runs ``main`` and turns a user error into its message and exit code (SIGTERM stops it as Ctrl-C does)."""
    try:
        with terminate_as_interrupt():
            return main()
    except ValueError as e:  # a value the user gave: a flag, an option, a config name, a JSON object
        error(e)
        return EXIT_USAGE
    except FAILURES as e:
        error(e)
        return EXIT_FAILED
    except KeyboardInterrupt:
        error(INTERRUPTED)
        return EXIT_INTERRUPTED
