"""A model of your own on the benchmark: a small GRU written with flax's ``nnx.GRUCell``.

Train, evaluate and predict it like a built-in model, by naming it ``module:Class`` (from the repository root,
or anywhere the module is importable)::

    python -m pipelines.train --model examples.custom_model:TinyGRU --model-options '{"hidden": 32}'
    python -m pipelines.evaluate --workdir runs/examples.custom_model.TinyGRU-easy-seed42

The interface (docs/models.md): keyword-only constructor arguments ``num_classes``, ``vocab_size`` and ``rngs``
(the registry supplies them, and ``max_length`` to a constructor that takes it), every other argument an option;
``__call__(tokens [B, T], lengths [B], padding)`` returns logits [B, num_classes]; ``state_size(length)`` the
floats carried per sequence from step to step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_models import layout


class TinyGRU(nnx.Module):
    """Embedding, a GRU cell run over the real steps only, and a linear read-out of the last state."""

    def __init__(self, *, num_classes: int, vocab_size: int, hidden: int = 32, rngs: nnx.Rngs):
        self.hidden = hidden
        self.embed = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.cell = nnx.GRUCell(hidden, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def state_size(self, length: int) -> int:
        """The GRU's hidden state, whatever the length."""
        return self.hidden

    def __call__(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        ids, mask = layout.right_aligned(tokens, lengths, padding)  # real tokens last, padding masked
        inputs = self.embed(ids).swapaxes(0, 1)  # [T, B, H]

        def step(h, x_and_mask):
            x, m = x_and_mask
            h_new, _ = self.cell(h, x)
            return jnp.where(m[:, None], h_new, h), None  # a padded step leaves the state alone

        h, _ = jax.lax.scan(step, jnp.zeros((tokens.shape[0], self.hidden)), (inputs, mask.T))
        return self.head(h)
