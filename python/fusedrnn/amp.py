"""bfloat16 autocast: ``with fr.autocast("bfloat16"): ...``, as ``torch.autocast``.

Inside the block, float32 forwards of the recurrent layers, cells and kernels, CPU and CUDA,
inference and training, run their products (W_ih x and W_hh h) from bfloat16 values with
float32 accumulation (on the GPU on tensor cores): W_ih and W_hh are converted once per weight
version where a CPU layer or cell keeps them, on the GPU at each call (never written over the
float32 parameters), x is rounded once per call and h each
step as the product reads it. The biases, the gate math, c and h themselves stay float32, and so
do inputs and outputs. A training forward saves its float32 activations; its backward (wherever
it is called) runs its products in bfloat16 too (dgates W_hh, dgates W_ih and the weight
gradients dgates^T x, dgates^T h), summed in float32 into the float32 parameters. The state is thread-local, and blocks nest
(the innermost wins).

Not under autocast so far (they run in float32, as torch.autocast runs the ops it does not list):
float64 arrays, and the NumPy matmuls around the cells in fusedrnn.nn (the seq2seq attention,
embeddings and output projections)."""
from __future__ import annotations

import threading

import numpy as np

from ._flags import check_flag

PRECISIONS = ("float32", "bfloat16")
# the spellings taken for them (torch's dtypes by their str, "torch.bfloat16")
ALIASES = {"float32": "float32", "fp32": "float32", "torch.float32": "float32",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "torch.bfloat16": "bfloat16"}
_state = threading.local()


def check_precision(precision, name="precision"):
    """None, or "float32" / "bfloat16" for any of their spellings (ALIASES: "fp32", "bf16",
    torch.float32, torch.bfloat16, numpy's float32), else a ValueError/TypeError naming
    ``name``."""
    if precision is None:
        return None
    spelling = precision
    if isinstance(precision, np.dtype) or precision is np.float32:  # (np.float32, the type)
        spelling = np.dtype(precision).name
    elif type(precision).__module__ == "torch":  # torch.bfloat16: "torch.bfloat16"
        spelling = str(precision)
    if not isinstance(spelling, str):
        raise TypeError(f"{name}: expected 'float32', 'bfloat16' (or 'fp32', 'bf16', "
                        f"torch.bfloat16) or None, got {type(precision).__name__}")
    if spelling.lower() not in ALIASES:
        raise ValueError(f"{name}: expected 'float32', 'bfloat16' (or 'fp32', 'bf16', "
                         f"torch.bfloat16) or None, got {precision!r}")
    return ALIASES[spelling.lower()]


def autocast_precision():
    """The precision autocast asks for in this thread: "bfloat16", or None (outside any block,
    or in a block with enabled=False)."""
    stack = getattr(_state, "stack", None)
    return stack[-1][1] if stack else None


class autocast:
    """Context manager (and decorator): float32 CPU forwards inside it compute their recurrent
    products in bfloat16 with float32 accumulation (see the module's docstring).

    dtype: "bfloat16" (the only lower precision on the CPU); enabled=False runs the block in
    float32, e.g. to switch autocast off inside an outer block."""

    def __init__(self, dtype="bfloat16", enabled=True):
        try:
            lower = dtype is not None and check_precision(dtype, "dtype") == "bfloat16"
        except ValueError:  # (its message offers float32 and None, which this refuses)
            lower = False
        if not lower:
            device = (" (fr.autocast's first argument is the dtype, not torch.autocast's "
                      "device_type: the arrays' device is used)"
                      if isinstance(dtype, str) and dtype.lower() in ("cpu", "cuda") else "")
            raise ValueError(f"dtype: expected 'bfloat16' (or 'bf16', torch.bfloat16; the only "
                             f"lower precision), got {dtype!r}{device}")
        self.dtype, self.enabled = "bfloat16", check_flag(enabled, "enabled")
        self._open = []  # (the thread's stack, the entry) of each block this object opened

    def __enter__(self):
        if not hasattr(_state, "stack"):
            _state.stack = []
        entry = [self, self.dtype if self.enabled else None]  # (a list: its own identity)
        _state.stack.append(entry)
        self._open.append((_state.stack, entry))
        return self

    def __exit__(self, *exc):
        # Ends this block's own entry, wherever it is in its stack: a generator suspended in a
        # block may end it while the caller is in a block of its own (popping the top ended
        # the caller's); the latest block still open decides. The entry is the latest this
        # object opened in this thread, else (a generator resumed in another thread) the
        # latest it opened in any.
        here = getattr(_state, "stack", None)
        k = len(self._open) - 1
        while k >= 0 and self._open[k][0] is not here:
            k -= 1
        if k < 0:
            k = len(self._open) - 1
            if k < 0:
                return False
        stack, entry = self._open.pop(k)
        for j in range(len(stack) - 1, -1, -1):
            if stack[j] is entry:
                del stack[j]
                break
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with autocast(self.dtype, self.enabled):
                return fn(*args, **kwargs)
        return wrapped
