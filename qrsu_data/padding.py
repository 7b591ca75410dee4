"""Padding layouts of token-id batches: where a sequence's real tokens sit in a fixed-width row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qrsu_data import task

PAD_ID = task.PAD_ID
"""Token id of padding (255): never a valid id, and ``jax.nn.one_hot(tokens, 8)`` maps it to a zero vector."""

PADDINGS: tuple[str, ...] = ("pre", "post")
"""Padding layouts: ``pre`` right-aligns each sequence (the seed's layout: the last step is the last symbol),
``post`` left-aligns it (real symbols first)."""


def check_padding(padding: str) -> str:
    """Returns ``padding`` if it names a layout; raises ValueError listing the valid ones."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; choose one of: {', '.join(PADDINGS)}")
    return padding


def check_pad_id(pad_id: int) -> int:
    """Returns ``pad_id`` if it is an integer outside the vocabulary; raises ValueError naming the valid ids."""
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
        raise TypeError(f"pad_id must be an integer, got {pad_id!r}")
    if 0 <= pad_id < task.VOCAB_SIZE:
        # A padded cell holding a symbol's id would read as that symbol to any consumer that ignores lengths.
        raise ValueError(f"pad_id {pad_id} is the token id of {task.SYMBOLS[pad_id]!r}; choose an id outside the "
                         f"vocabulary 0..{task.VOCAB_SIZE - 1}, such as {PAD_ID} (the default) or -1")
    if not -(2 ** 31) <= pad_id < 2 ** 31:
        raise ValueError(f"pad_id must fit in int32, got {pad_id}")
    return int(pad_id)


def right_align(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ``pre`` layout of post-padded ``tokens`` [N, T]: each row's ``length`` real tokens moved to its end."""
    width = tokens.shape[1]
    cols = np.arange(width)
    # Row-major boolean selections of the same number of cells per row line up row by row, so one masked copy
    # moves every sequence to the right end without an [N, T] integer index array.
    out = np.full_like(tokens, PAD_ID)
    out[cols >= (width - lengths)[:, None]] = tokens[cols < lengths[:, None]]
    return out


def pad_sequences(sequences: Sequence[np.ndarray], max_length: int, padding: str = "pre",
                  pad_id: int = PAD_ID) -> np.ndarray:
    """int32 [len(sequences), max_length]: each sequence placed by ``padding``, the rest ``pad_id``."""
    check_pad_id(pad_id)
    check_padding(padding)
    out = np.full((len(sequences), max_length), pad_id, np.int32)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n > max_length:
            raise ValueError(f"sequence {i} has length {n} > max_length {max_length}")
        if n and padding == "pre":
            out[i, max_length - n:] = seq
        elif n:
            out[i, :n] = seq
    return out
