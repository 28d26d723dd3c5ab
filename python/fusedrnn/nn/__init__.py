"""Layers with PyTorch's names and shapes on NumPy arrays. This file only re-exports."""
from .module import Module, Parameter, StateDictError
from .recurrent import RNNBase, RNN, LSTM, GRU, LayerNormLSTM
from .layers import Linear, Embedding, Dropout, Sequential, ModuleList, ModuleDict, Identity
from .cells import RNNCellBase, RNNCell, LSTMCell, GRUCell, LayerNormLSTMCell
from .loss import CrossEntropyLoss, MSELoss, log_softmax, softmax
from .attention import BahdanauAttention, LuongAttention, make_attention
from .seq2seq import Captioner, Decoder, DecodeResult, Seq2Seq

__all__ = [
    "Module",
    "Parameter",
    "StateDictError",
    "RNNBase",
    "RNN",
    "LSTM",
    "GRU",
    "LayerNormLSTM",
    "Linear",
    "Embedding",
    "Dropout",
    "Sequential",
    "ModuleList",
    "ModuleDict",
    "Identity",
    "RNNCellBase",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "LayerNormLSTMCell",
    "CrossEntropyLoss",
    "MSELoss",
    "log_softmax",
    "softmax",
    "BahdanauAttention",
    "LuongAttention",
    "make_attention",
    "Seq2Seq",
    "Decoder",
    "Captioner",
    "DecodeResult",
]
