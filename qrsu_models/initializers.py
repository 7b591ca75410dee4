"""Parameter initializers of the classifier: flax-equivalent defaults and the LSTM gate-bias options.

The fused parameters of :class:`qrsu_models.SequenceClassifier` are initialised with the same
distributions flax's cells use for their separate per-gate layers, so the fused model is a drop-in for the
seed's ``nnx.LSTMCell`` / ``nnx.GRUCell`` / ``nnx.SimpleCell`` at initialisation too:

* input table [V, G*H]: lecun_normal with fan_in = V (flax: one [V, H] lecun_normal kernel per gate, and a
  one-hot input times a kernel is a row of it);
* recurrent kernel [H, G*H]: LSTM one orthogonal [H, H] block per gate (flax LSTMCell has four ``Linear``
  layers), GRU one orthogonal [H, 3H] matrix (flax GRUCell has one), RNN one orthogonal [H, H];
* biases: zeros, unless an LSTM gate-bias option below is chosen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_data import task

LSTM_INITS: tuple[str, ...] = ("default", "forget_bias", "chrono")
"""LSTM gate-bias initialisations: flax's zeros, a constant forget-gate bias, or chrono initialisation."""

DEFAULT_CHRONO_MAX: int = task.LEVELS["hard"].padded_length
"""chrono_max used when none is given: 111, the padded length of the paper's Experiment-6a ("hard") level.

Chrono initialisation wants the longest dependency the model should bridge. The hard level's sequences are
100-110 symbols (111 with the seed's padding) and its relevant symbols lie up to ~100 steps before the end,
so 111 is the time scale of the benchmark's reference setting. Pass chrono_max explicitly for other levels
(e.g. 501 for nightmare).
"""


def input_table(key: jax.Array, vocab: int, width: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Input projection table [vocab, width]: lecun_normal with fan_in = vocab (flax's per-gate kernels)."""
    return nnx.initializers.lecun_normal()(key, (vocab, width), dtype)


def recurrent_kernel(key: jax.Array, cell: str, hidden: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Fused recurrent kernel [H, G*H], orthogonal like flax's cells (per gate for the LSTM)."""
    ortho = nnx.initializers.orthogonal()
    if cell == "lstm":
        return jnp.concatenate([ortho(k, (hidden, hidden), dtype) for k in jax.random.split(key, 4)], axis=1)
    if cell == "gru":
        return ortho(key, (hidden, 3 * hidden), dtype)
    if cell == "rnn":
        return ortho(key, (hidden, hidden), dtype)
    raise ValueError(f"unknown cell {cell!r}; choose one of: rnn, lstm, gru")


def chrono_bias(key: jax.Array, hidden: int, chrono_max: int, dtype: jnp.dtype = jnp.float32
                ) -> tuple[jax.Array, jax.Array]:
    """Tallec & Ollivier (2018) chrono init: (b_i, b_f) with b_f = log(U[1, chrono_max - 1]) and b_i = -b_f."""
    if chrono_max is None or int(chrono_max) != chrono_max or chrono_max <= 2:
        raise ValueError(f"chrono_max must be an integer > 2 (U[1, chrono_max - 1] must be a range), "
                         f"got {chrono_max!r}")
    b_f = jnp.log(jax.random.uniform(key, (hidden,), dtype, minval=1.0, maxval=float(chrono_max - 1)))
    return -b_f, b_f


def lstm_gate_bias(key: jax.Array, hidden: int, init: str = "default", *, forget_bias: float = 1.0,
                   chrono_max: int | None = None, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """LSTM bias [4H] in gate order (i, f, g, o) for ``init`` in LSTM_INITS; the key is used by 'chrono' only."""
    if init not in LSTM_INITS:
        raise ValueError(f"unknown lstm_init {init!r}; choose one of: {', '.join(LSTM_INITS)}")
    zeros = jnp.zeros((hidden,), dtype)
    if init == "default":
        return jnp.zeros((4 * hidden,), dtype)
    if init == "forget_bias":
        return jnp.concatenate([zeros, jnp.full((hidden,), forget_bias, dtype), zeros, zeros])
    b_i, b_f = chrono_bias(key, hidden, DEFAULT_CHRONO_MAX if chrono_max is None else chrono_max, dtype)
    return jnp.concatenate([b_i, b_f, zeros, zeros])
