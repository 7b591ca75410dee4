"""Argument types of the commands' flags: each checks its value and names it in argparse's error."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def flag_type(kind: type, ok: Callable[[object], bool], what: str) -> Callable[[str], object]:
    """An argparse type: ``kind(text)`` when ``ok`` of it holds, else an error naming the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = flag_type(int, lambda v: v > 0, "a positive integer")
non_negative_int = flag_type(int, lambda v: v >= 0, "a non-negative integer")
positive_float = flag_type(float, lambda v: 0 < v < float("inf"), "a positive number")
