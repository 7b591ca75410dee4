"""Checks of the models' constructor arguments: a bad value is a ValueError naming it and the valid choices."""

from __future__ import annotations


def check_choice(what: str, value: object, choices: tuple[str, ...]) -> str:
    """Returns ``value`` if it is one of ``choices``; raises ValueError listing them otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_positive(what: str, value: object) -> int:
    """Returns ``value`` if it is a positive int; raises ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value
