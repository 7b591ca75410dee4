"""Flax NNX models for the temporal-order (QRSU) task: a many-to-one RNN/LSTM/GRU classifier over token ids."""

from qrsu_models.classifier import CELLS, LSTM_INITS, PADDINGS, SequenceClassifier, apply_fn, pre_padded_time_major
from qrsu_models.initializers import DEFAULT_CHRONO_MAX, chrono_bias, lstm_gate_bias
from qrsu_models.recurrence import GATES, gru_last_hidden, last_hidden, lstm_last_hidden, rnn_last_hidden

__all__ = [
    "CELLS", "DEFAULT_CHRONO_MAX", "GATES", "LSTM_INITS", "PADDINGS", "SequenceClassifier", "apply_fn",
    "chrono_bias", "gru_last_hidden", "last_hidden", "lstm_gate_bias", "lstm_last_hidden",
    "pre_padded_time_major", "rnn_last_hidden",
]
