"""Many-to-one recurrent classifier over token ids: scanned RNN/LSTM/GRU -> Linear.

Mathematically the seed notebook's model (``SimpleRNN`` / ``SimpleLSTM``: one-hot input, hidden 64, the last
hidden state into ``nnx.Linear``), with three changes that do not change the function it computes:

* the input is token ids: every step forms ``[h | onehot(token)]`` and ONE matmul with ``[W_hh; W_in]``
  gives its pre-activations (:mod:`qrsu_models.recurrence`), input bias folded into ``W_in``'s rows;
* the weights of all gates are fused into one kernel (one matmul per step);
* variable lengths are exact: rows are right-aligned (:func:`qrsu_models.layout.time_major_ids`) and padded
  steps get a zero input, which keeps the zero initial state exactly zero, so no mask is needed inside the
  time loop and a sequence's logits do not depend on how much padding its batch adds.

Cells: 'lstm' is flax's ``nnx.LSTMCell`` and 'gru' flax's ``nnx.GRUCell``; 'rnn' is the seed's SimpleRNN,
``nnx.SimpleCell`` (tanh) followed by a ReLU on the carried state, i.e. h = relu(tanh(W_ih x + W_hh h + b)).

For a jitted training loop use the functional form: ``graphdef, params = nnx.split(model)`` and
``apply_fn(graphdef)(params, tokens, lengths)`` inside a pure function (see benchmarks/model_step.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_data import task
from qrsu_models import initializers, layout, recurrence
from qrsu_models.arguments import check_choice as _check_choice
from qrsu_models.arguments import check_positive as _check_positive

CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")
"""Recurrent cells: the seed's ReLU RNN (nnx.SimpleCell then relu), flax's LSTMCell, flax's GRUCell."""
LSTM_INITS: tuple[str, ...] = initializers.LSTM_INITS
PADDINGS: tuple[str, ...] = layout.PADDINGS


@functools.partial(jax.jit, static_argnames=("cell", "padding", "vocab_size", "unroll", "custom_grad"))
def _last_hidden(w_in: jax.Array, bias: jax.Array, w_hh: jax.Array, tokens: jax.Array, lengths: jax.Array, *,
                 cell: str, padding: str, vocab_size: int, unroll: int, custom_grad: bool) -> jax.Array:
    # jitted so that eager calls compile once per shape instead of dispatching op by op; under an outer jit
    # (the training step) it is simply inlined.
    tok = layout.time_major_ids(tokens, lengths, padding, vocab_size)
    # Bias folded into the table rows: a padded step (id = vocab_size) gets no bias, hence exactly zero input.
    return recurrence.last_hidden(cell, tok, w_in + bias, w_hh, unroll=unroll, custom_grad=custom_grad)


@functools.partial(jax.jit, static_argnames=("cell", "padding", "vocab_size", "unroll"))
def _final_state(w_in: jax.Array, bias: jax.Array, w_hh: jax.Array, tokens: jax.Array, lengths: jax.Array,
                 initial: jax.Array, *, cell: str, padding: str, vocab_size: int, unroll: int) -> jax.Array:
    tok = layout.time_major_ids(tokens, lengths, padding, vocab_size)
    start = tok.shape[0] - jnp.clip(lengths.astype(jnp.int32), 0, tok.shape[0])
    return recurrence.final_state(cell, tok, w_in + bias, w_hh, initial, start, unroll=unroll)


class SequenceClassifier(nnx.Module):
    """Token ids [B, T] + lengths [B] -> logits [B, num_classes] through a scanned RNN/LSTM/GRU."""

    def __init__(self, cell: str = "lstm", *, hidden: int = 64, num_classes: int = 4,
                 vocab_size: int = task.VOCAB_SIZE, lstm_init: str = "default", forget_bias: float = 1.0,
                 chrono_max: int | None = None, unroll: int = 1, rngs: nnx.Rngs):
        _check_choice("cell", cell, CELLS)
        _check_choice("lstm_init", lstm_init, LSTM_INITS)
        if cell != "lstm" and lstm_init != "default":
            raise ValueError(f"lstm_init {lstm_init!r} applies to cell='lstm' only (got cell={cell!r}); "
                             f"use lstm_init='default' with {cell!r}")
        _check_positive("hidden", hidden)
        _check_positive("num_classes", num_classes)
        _check_positive("vocab_size", vocab_size)
        _check_positive("unroll", unroll)
        self.cell = cell
        self.hidden = hidden
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.unroll = unroll
        width = recurrence.GATES[cell] * hidden
        # Fixed draw order (table, recurrent, bias, head) so a seed always gives the same model.
        self.w_in = nnx.Param(initializers.input_table(rngs.params(), vocab_size, width))
        self.w_hh = nnx.Param(initializers.recurrent_kernel(rngs.params(), cell, hidden))
        if cell == "lstm":
            bias = initializers.lstm_gate_bias(rngs.params(), hidden, lstm_init, forget_bias=forget_bias,
                                               chrono_max=chrono_max)
        else:
            bias = jnp.zeros((width,), jnp.float32)
        self.bias = nnx.Param(bias)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def last_hidden(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre", *,
                    custom_grad: bool = True) -> jax.Array:
        """The hidden state after each row's last real token, [B, hidden]."""
        _check_choice("padding", padding, PADDINGS)  # before jit, so the error names the value
        return _last_hidden(self.w_in[...], self.bias[...], self.w_hh[...], jnp.asarray(tokens),
                            jnp.asarray(lengths), cell=self.cell, padding=padding, vocab_size=self.vocab_size,
                            unroll=self.unroll, custom_grad=custom_grad)

    def state_size(self, length: int) -> int:
        """Floats carried per sequence from step to step: h (and the LSTM's c), whatever the length."""
        return recurrence.state_width(self.cell, self.hidden)

    def zero_state(self, batch: int) -> jax.Array:
        """The state every sequence starts from by default, [batch, state_size]: zeros."""
        return jnp.zeros((batch, self.state_size(0)), jnp.float32)

    def forward_state(self, tokens: jax.Array, lengths: jax.Array, padding: str, initial_state: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
        """(logits [B, num_classes], final state [B, state_size]) of sequences that start from
        ``initial_state`` [B, state_size] instead of zeros (exact under padding too)."""
        _check_choice("padding", padding, PADDINGS)
        state = _final_state(self.w_in[...], self.bias[...], self.w_hh[...], jnp.asarray(tokens),
                             jnp.asarray(lengths), initial_state, cell=self.cell, padding=padding,
                             vocab_size=self.vocab_size, unroll=self.unroll)
        return self.head(recurrence.hidden_of(self.cell, state)), state

    def __call__(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """Logits float32 [B, num_classes] of token ids [B, T] (int) with ``lengths`` [B] real tokens per row.

        Values at padded positions are ignored; a real position holding an id outside [0, vocab_size) acts as a
        zero input (like a one-hot of nothing); lengths are clipped to [0, T].
        """
        return self.head(self.last_hidden(tokens, lengths, padding))


def apply_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
    """Pure ``(params, tokens, lengths, padding='pre') -> logits`` for ``graphdef, params = nnx.split(model)``."""

    def apply(params: nnx.State, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        # merge is trace-time bookkeeping only; inside jit this compiles to the bare computation.
        return nnx.merge(graphdef, params)(tokens, lengths, padding)

    return apply
