"""The training loop: a session's train steps, with periodic actions between them.

Every command that trains a :class:`pipelines.engine.session.Session` runs it here; what differs between them
(an epoch's evaluation and checkpoint, a check of the stop rule) are the actions they pass. Losses stay on the
device between actions; when an action is due, the losses since the last one are checked for NaN first, so
no action ever saves or judges a diverged model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from pipelines.engine.errors import CommandError
from pipelines.engine.session import Session


class Diverged(CommandError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int):
        super().__init__(f"the training loss became NaN or infinite by step {step}")
        self.step = step


@dataclasses.dataclass(frozen=True)
class Every:
    """``action(step)`` after every ``period``-th step (every multiple of any of several periods); it returns
    True to stop the loop."""

    period: int | tuple[int, ...]
    action: Callable[[int], bool | None]

    def due(self, step: int) -> bool:
        """Whether the action runs after ``step``."""
        periods = self.period if isinstance(self.period, tuple) else (self.period,)
        return any(step % p == 0 for p in periods)


class Interrupt:
    """Turns the first Ctrl-C (or SIGTERM) into a request checked between steps (a second one stops at once)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupt]:
        """This handler of SIGINT and SIGTERM while the block runs."""
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        self._previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)

    def agreed(self, at_check: bool) -> bool:
        """Whether to stop now; with several processes, agreed by all at check steps only."""
        if jax.process_count() == 1:
            return self.requested
        if not at_check:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def check_finite(losses: list, step: int) -> None:
    """Raises :class:`Diverged` if any of the device scalars ``losses`` is NaN or infinite."""
    if losses and not np.all(np.isfinite([float(np.asarray(x.addressable_data(0))) for x in losses])):
        raise Diverged(step)


STOPPED, DONE, INTERRUPTED = "stopped", "done", "interrupted"
"""How :func:`train_steps` ended: an action asked to stop, ``until`` was reached, or Ctrl-C."""


def train_steps(session: Session, until: int, actions: Sequence[Every] = (), *, interrupt: Interrupt | None = None,
                on_step: Callable[[], None] | None = None) -> str:
    """Trains ``session`` from its step up to step ``until``, running each due action after a step.

    Returns STOPPED, DONE or INTERRUPTED (after the losses were checked: the caller may save at once)."""
    pending: list = []
    while session.step < until:
        session.state, loss = session.step_fn(session.state, session.next_batch())
        pending.append(loss)
        session.step += 1
        if on_step is not None:
            on_step()
        due = [a for a in actions if a.due(session.step)]
        interrupted = interrupt is not None and interrupt.agreed(at_check=bool(due))
        if due or interrupted:
            check_finite(pending, session.step)
            pending.clear()
        if interrupted:
            return INTERRUPTED
        stop = False
        for a in due:
            stop = bool(a.action(session.step)) or stop
        if stop:
            return STOPPED
    check_finite(pending, session.step)
    return DONE
