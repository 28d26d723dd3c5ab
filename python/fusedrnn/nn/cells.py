"""Single-step cells ``RNNCell``, ``LSTMCell``, ``GRUCell`` with torch.nn's constructor arguments,
parameter names (weight_ih, weight_hh, bias_ih, bias_hh) and gate orders.

Each step is one fused C++ call: the cell runs ``fusedrnn.functional.<cell>_forward`` on a
sequence of length T = 1, and its backward the matching ``<cell>_backward``. A cell may be called
many times per sequence (a decoder feeding back its own output): every training-mode call pushes
its step context on a stack, and each ``backward`` pops the latest one, so backward calls walk the
steps in reverse order, as BPTT does.

    x [N, I] (or [I] unbatched)     h, c [N, H] (or [H])

``backward(dh)`` (LSTM: ``backward(dh, dc)``) returns ``(dx, dh_prev)`` (LSTM:
``(dx, (dh_prev, dc_prev))``) and adds the step's weight gradients into ``grad``; the caller adds
``dh_prev`` into the gradient of the previous step's output before calling backward again.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .layers import _dtype, _positive_int
from .module import Module, Parameter

__all__ = ["RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]


class RNNCellBase(Module):
    _cell = None

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 dtype=np.float32, seed=None):
        super().__init__()
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        if nonlinearity not in F.NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.dtype = _dtype(dtype)
        self.bias = bool(bias)
        rng = np.random.default_rng(seed)
        GH = F.GATES[self._cell] * self.hidden_size
        bound = 1.0 / math.sqrt(self.hidden_size)

        def uniform(*shape):
            return Parameter(rng.uniform(-bound, bound, shape).astype(self.dtype))

        self.weight_ih = uniform(GH, self.input_size)
        self.weight_hh = uniform(GH, self.hidden_size)
        if self.bias:
            self.bias_ih = uniform(GH)
            self.bias_hh = uniform(GH)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._steps = []  # a stack of (ctx, batched) for the training-mode steps not yet back-propagated

    # ------------------------------------------------------------------ helpers
    @property
    def pending_steps(self):
        """How many training-mode steps are waiting for their backward."""
        return len(self._steps)

    def clear_steps(self):
        """Forget the saved steps (e.g. after a forward whose backward will not run)."""
        self._steps.clear()

    def _weights(self):
        b_ih = None if self.bias_ih is None else self.bias_ih.data
        b_hh = None if self.bias_hh is None else self.bias_hh.data
        return self.weight_ih.data, self.weight_hh.data, b_ih, b_hh

    def _input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input: expected a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"input: expected dtype {self.dtype} (the cell's dtype), got {x.dtype}")
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected shape [N, {self.input_size}] or [{self.input_size}],"
                             f" got {x.shape}")
        batched = x.ndim == 2
        return (x if batched else x[None]), batched

    def _state(self, h, name, N, batched):
        if h is None:
            return None
        if not isinstance(h, np.ndarray) or h.dtype != self.dtype:
            raise TypeError(f"{name}: expected a numpy.ndarray of dtype {self.dtype}, got "
                            f"{getattr(h, 'dtype', type(h).__name__)}")
        shape = (N, self.hidden_size) if batched else (self.hidden_size,)
        if h.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {h.shape}")
        return h if batched else h[None]

    def _push(self, ctx, batched):
        if self.training:
            self._steps.append((ctx, batched))

    def _pop(self):
        if not self._steps:
            raise RuntimeError(f"{type(self).__name__}.backward: no training-mode step left to "
                               f"back-propagate (each forward in training mode allows one backward)")
        return self._steps.pop()

    def _accumulate(self, dw_ih, dw_hh, db_ih, db_hh):
        self.weight_ih.accumulate_grad(dw_ih)
        self.weight_hh.accumulate_grad(dw_hh)
        if self.bias_ih is not None:
            self.bias_ih.accumulate_grad(db_ih)
            self.bias_hh.accumulate_grad(db_hh)

    def _grad(self, d, name, N, batched):
        if d is None:
            return None
        d = np.asarray(d, dtype=self.dtype)
        return self._state(d, name, N, batched)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self._cell == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def _backward_h(self, kernel_backward, dh):
        """Backward of the latest step of a cell whose state is h alone (RNN, GRU)."""
        ctx, batched = self._pop()
        dh = self._grad(dh, "dh", ctx.x.shape[1], batched)
        dx, dh0, *dw = kernel_backward(ctx, None, dh)
        self._accumulate(*dw)
        return (dx[0], dh0) if batched else (dx[0, 0], dh0[0])


class RNNCell(RNNCellBase):
    """``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act tanh or relu."""

    _cell = "rnn"

    def forward(self, input, hx=None):
        x, batched = self._input(input)
        h0 = self._state(hx, "hx", x.shape[0], batched)
        _, h, ctx = F.rnn_forward(x[None], h0, *self._weights(), nonlinearity=self.nonlinearity,
                                  training=self.training)
        self._push(ctx, batched)
        return h if batched else h[0]

    def backward(self, dh):
        """Returns ``(dx, dh_prev)`` for the latest step that has not been back-propagated."""
        return self._backward_h(F.rnn_backward, dh)


class GRUCell(RNNCellBase):
    """GRU step with gates r, z, n: ``h' = (1 - z) * n + z * h``."""

    _cell = "gru"

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, seed=None):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed)

    def forward(self, input, hx=None):
        x, batched = self._input(input)
        h0 = self._state(hx, "hx", x.shape[0], batched)
        _, h, ctx = F.gru_forward(x[None], h0, *self._weights(), training=self.training)
        self._push(ctx, batched)
        return h if batched else h[0]

    def backward(self, dh):
        """Returns ``(dx, dh_prev)`` for the latest step that has not been back-propagated."""
        return self._backward_h(F.gru_backward, dh)


class LSTMCell(RNNCellBase):
    """LSTM step with gates i, f, g, o; the state is a tuple ``(h, c)``."""

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, seed=None):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed)

    def forward(self, input, hx=None):
        """Returns ``(h', c')``; ``hx`` is None or a tuple ``(h, c)``."""
        x, batched = self._input(input)
        N = x.shape[0]
        if hx is None:
            h0 = c0 = None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h, c) for LSTMCell, got {type(hx).__name__}")
            h0 = self._state(hx[0], "hx[0]", N, batched)
            c0 = self._state(hx[1], "hx[1]", N, batched)
        _, h, c, ctx = F.lstm_forward(x[None], h0, c0, *self._weights(), training=self.training)
        self._push(ctx, batched)
        return (h, c) if batched else (h[0], c[0])

    def backward(self, dh, dc=None):
        """Returns ``(dx, (dh_prev, dc_prev))`` for the latest step not yet back-propagated."""
        ctx, batched = self._pop()
        N = ctx.x.shape[1]
        dh = self._grad(dh, "dh", N, batched)
        dc = self._grad(dc, "dc", N, batched)
        dx, dh0, dc0, *dw = F.lstm_backward(ctx, None, dh, dc)
        self._accumulate(*dw)
        if batched:
            return dx[0], (dh0, dc0)
        return dx[0, 0], (dh0[0], dc0[0])
