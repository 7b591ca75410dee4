"""Where a batch's real tokens are: the padding layouts every model of the package reads its input through.

A batch is token ids ``tokens`` [B, T] and ``lengths`` [B] (real tokens per row). ``padding='pre'`` means the
real tokens are the last ``length`` cells of a row (the seed notebook's layout), ``'post'`` the first. What a
padded cell holds is never read: models see the batch through :func:`right_aligned`, which moves every row's
real tokens to the end and returns a mask, so a sequence's prediction cannot depend on its batch's padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PADDINGS: tuple[str, ...] = ("pre", "post")
"""'pre': the real tokens are the last ``length`` steps of a row (the seed's layout); 'post': the first."""


def check_padding(padding: object) -> str:
    """Returns ``padding`` if it names a layout; raises ValueError listing the valid ones."""
    if not isinstance(padding, str) or padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; choose one of: {', '.join(PADDINGS)}")
    return padding


def right_aligned(tokens: jax.Array, lengths: jax.Array, padding: str) -> tuple[jax.Array, jax.Array]:
    """(ids [B, T] int32, mask [B, T] bool): each row's real tokens last, padded cells 0 and masked out."""
    check_padding(padding)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
    batch, steps = tokens.shape
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must be [batch] = [{batch}], got shape {lengths.shape}")
    tokens = tokens.astype(jnp.int32)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, steps)
    t = jnp.arange(steps, dtype=jnp.int32)[None, :]
    start = steps - lengths[:, None]  # first real step once right-aligned
    if padding == "post":
        # Roll each row right by its padding: one gather on int ids.
        tokens = jnp.take_along_axis(tokens, jnp.clip(t - start, 0, steps - 1), axis=1)
    mask = t >= start
    return jnp.where(mask, tokens, 0), mask


def positions(mask: jax.Array) -> jax.Array:
    """int32 [B, T]: each real token's offset from its sequence's first token (0 at ``B``); 0 where masked."""
    return jnp.where(mask, jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)


def time_major_ids(tokens: jax.Array, lengths: jax.Array, padding: str, vocab_size: int) -> jax.Array:
    """Token ids [T, B] with the real tokens last and every padded step set to ``vocab_size`` (no input)."""
    ids, mask = right_aligned(tokens, lengths, padding)
    return jnp.where(mask, ids, vocab_size).T
