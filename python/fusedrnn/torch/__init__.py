"""fusedrnn's kernels inside PyTorch programs: drop-in ``torch.nn`` recurrent modules.

    import fusedrnn.torch as frt
    lstm = frt.LSTM(128, 256, num_layers=2, bidirectional=True, batch_first=True)
    out, (h, c) = lstm(x)          # x: a tensor or a PackedSequence; autograd as torch.nn
    model = frt.convert(model)     # every nn.LSTM/GRU/RNN (and cell) in a model, same weights
    frt.to_torch_nn(model)         # and back, for tools that know only torch.nn's layers

Needs PyTorch (``pip install "fusedrnn[torch]"``); importing this module imports torch.

Importing it also makes the kernels run their parallel work on PyTorch's OpenMP threads (the
libgomp runtime torch loaded) instead of fusedrnn's own: after each of its operators torch's
threads spin for milliseconds on the cores ours would need (``fusedrnn.info()["thread_pool"]``
says which is used).
"""
try:
    import torch  # noqa: F401  (first: its OpenMP runtime is the one to share)
except ModuleNotFoundError as error:
    raise ModuleNotFoundError('fusedrnn.torch needs PyTorch: pip install "fusedrnn[torch]"',
                              name=error.name) from error

from .. import _C
from .convert import convert, register_onnx_hint, to_torch_nn
from .modules import (GRU, LSTM, RNN, DeviceMismatchError, DtypeMismatchError, GRUCell,
                      LSTMCell, RNNCell, ShapeMismatchError, StateFormError)

_C.share_openmp_threads()
register_onnx_hint()

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "to_torch_nn",
           "DtypeMismatchError", "ShapeMismatchError", "StateFormError", "DeviceMismatchError"]
