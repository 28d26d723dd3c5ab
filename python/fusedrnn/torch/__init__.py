"""fusedrnn's kernels inside PyTorch programs: drop-in ``torch.nn`` recurrent modules.

    import fusedrnn.torch as frt
    lstm = frt.LSTM(128, 256, num_layers=2, bidirectional=True, batch_first=True)
    out, (h, c) = lstm(x)          # x: a tensor or a PackedSequence; autograd as torch.nn
    model = frt.convert(model)     # every nn.LSTM/GRU/RNN (and cell) in a model, same weights

Needs PyTorch (``pip install "fusedrnn[torch]"``); importing this module imports torch.
"""
from .convert import convert
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert"]
