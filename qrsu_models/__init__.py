"""Flax NNX sequence models for the temporal-order (QRSU) task, behind one interface and one registry."""

from qrsu_models import registry
from qrsu_models.lstm1997 import LSTM1997
from qrsu_models.classifier import CELLS, LSTM_INITS, PADDINGS, SequenceClassifier, apply_fn
from qrsu_models.initializers import DEFAULT_CHRONO_MAX, chrono_bias, lstm_gate_bias
from qrsu_models.recurrence import GATES, gru_last_hidden, last_hidden, lstm_last_hidden, rnn_last_hidden

__all__ = [
    "CELLS", "DEFAULT_CHRONO_MAX", "GATES", "LSTM1997", "LSTM_INITS", "PADDINGS", "SequenceClassifier", "apply_fn",
    "chrono_bias", "gru_last_hidden", "last_hidden", "lstm_gate_bias", "lstm_last_hidden", "registry",
    "rnn_last_hidden",
]
