"""NumPy float64 references of every kernel and layer: the oracle the fast code is held to.

Pure NumPy (no import of the extension), so they run and are tested even without a build."""
from .cells import (gru_backward, gru_forward, layernorm_lstm_backward, layernorm_lstm_forward,
                    lstm_backward, lstm_forward, rnn_backward, rnn_forward, round_bf16)
from .layers import recurrent_backward, recurrent_forward

__all__ = ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward",
           "rnn_backward", "layernorm_lstm_forward", "layernorm_lstm_backward",
           "recurrent_forward", "recurrent_backward", "round_bf16"]
