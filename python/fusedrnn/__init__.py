"""fusedrnn: fused C++ (and CUDA) kernels for RNN, LSTM and GRU, forward and BPTT,
behind a NumPy-first, PyTorch-shaped API. This file only loads the extension and re-exports."""
from ._loader import _C  # noqa: F401  (loads OpenBLAS, then the extension)
from . import functional, reference, nn  # noqa: F401
from ._runtime import (info, set_num_threads, get_num_threads, set_deterministic,  # noqa: F401
                       get_deterministic, empty_cache)
from . import optim, data, training  # noqa: F401
from .io import save, load  # noqa: F401
from .amp import autocast  # noqa: F401
from . import cuda  # noqa: F401  (imports without a GPU: fr.cuda.is_available() says)

__version__ = "0.1.0"
__all__ = ["functional", "reference", "nn", "info", "set_num_threads", "get_num_threads",
           "set_deterministic", "get_deterministic", "empty_cache", "optim", "data", "training",
           "save", "load", "autocast", "cuda"]
