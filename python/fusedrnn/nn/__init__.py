"""Layers with PyTorch's names and shapes on NumPy arrays. This file only re-exports."""
from .module import Module, Parameter
from .recurrent import RNNBase, RNN, LSTM, GRU

__all__ = [
    "Module",
    "Parameter",
    "RNNBase",
    "RNN",
    "LSTM",
    "GRU",
]
