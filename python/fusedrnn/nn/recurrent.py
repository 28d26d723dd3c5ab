"""Multi-layer, optionally bidirectional RNN, LSTM and GRU layers with torch.nn's constructor,
parameter names, shapes, gate orders and outputs, built on one kernel call per layer and
direction (``fusedrnn.functional``).

Shapes: T time, N batch, I input, H hidden, L layers, D directions (1 or 2).

    x    [T, N, I]  ([N, T, I] with batch_first; [T, I] unbatched)
    hx   [L*D, N, H]  (LSTM: a tuple (h0, c0); [L*D, H] unbatched)
    out  [T, N, D*H]  ([N, T, D*H] with batch_first)      h_n (and c_n)  [L*D, N, H]

``backward(dout, dhx)`` runs BPTT for the latest training-mode forward, returns ``(dx, dh0)``
shaped like ``x`` and ``hx`` and adds (``+=``) into every parameter's ``grad``. Between layers
(never after the last) a training-mode forward applies inverted dropout with masks drawn from the
layer's own seedable ``numpy.random.Generator``.

``device="cuda"`` (or ``.to("cuda")``) keeps the parameters as CuPy arrays; the layer then takes
and returns CuPy arrays (any ``__cuda_array_interface__`` or DLPack array is accepted as input)
and runs on the CUDA kernels (``fusedrnn.cuda``) on CuPy's current device and stream. The same
code runs on both devices through its array module ``xp`` (NumPy or CuPy).
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .. import functional as F
from .module import (Module, Parameter, array_module, check_device, check_dtype, is_device_array,
                     to_device, to_host)

__all__ = ["RNNBase", "RNN", "LSTM", "GRU"]



def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _check_array(value, name, dtype, device="cpu"):
    """``value`` as an array of the layer's dtype on the layer's device (a NumPy array for 'cpu';
    a CuPy array for 'cuda', where other CUDA arrays are viewed as CuPy); TypeError naming
    ``name`` otherwise."""
    if device == "cpu":
        if is_device_array(value):
            raise TypeError(f"{name}: expected a numpy.ndarray (the layer is on device 'cpu'), "
                            f"got a CUDA array ({type(value).__name__}); move the layer with "
                            f".to('cuda') or the array to the host")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(value).__name__}")
    else:
        if isinstance(value, np.ndarray):
            raise TypeError(f"{name}: expected a CuPy array (the layer is on device 'cuda'), "
                            f"got a numpy.ndarray; move it with cupy.asarray() or the layer "
                            f"with .to('cpu')")
        if not is_device_array(value) and not hasattr(value, "__dlpack__"):
            raise TypeError(f"{name}: expected a CuPy array (the layer is on device 'cuda'), "
                            f"got {type(value).__name__}")
        from .. import cuda
        value = cuda.as_cupy(value, name)
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the layer's dtype), got {value.dtype}")
    return value


def _check_shape(value, name, shape, what=""):
    if value.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}{what}, got {value.shape}")


class RNNBase(Module):
    """What RNN, LSTM and GRU share: parameters, the layer/direction loop, dropout, BPTT."""

    _cell = None  # "rnn", "lstm" or "gru"

    _supports_cuda = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, nonlinearity="tanh", dtype=np.float32,
                 seed=None, device="cpu"):
        super().__init__()
        device = check_device(device)
        if device == "cuda":
            array_module(device)  # a clear CudaUnavailableError on a CPU-only build, up front
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        if nonlinearity not in F.NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1] (the probability of zeroing "
                             f"an element), got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} has no effect with num_layers=1: dropout is "
                          f"applied between layers, never after the last", UserWarning,
                          stacklevel=3)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = check_dtype(dtype)
        self._rng = np.random.default_rng(seed)
        self._saved = None

        G, H = F.GATES[self._cell], self.hidden_size
        D = 2 if self.bidirectional else 1
        bound = 1.0 / math.sqrt(H)
        self._param_names = []  # per (layer, direction): (w_ih, w_hh, b_ih, b_hh) names
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else D * H
            for direction in range(D):
                suffix = "_reverse" if direction == 1 else ""
                shapes = [(f"weight_ih_l{layer}{suffix}", (G * H, layer_input)),
                          (f"weight_hh_l{layer}{suffix}", (G * H, H))]
                if self.bias:
                    shapes += [(f"bias_ih_l{layer}{suffix}", (G * H,)),
                               (f"bias_hh_l{layer}{suffix}", (G * H,))]
                for name, shape in shapes:
                    data = self._rng.uniform(-bound, bound, size=shape).astype(self.dtype)
                    setattr(self, name, Parameter(data))
                names = [n for n, _ in shapes]
                self._param_names.append(tuple(names) + ((None, None) if not self.bias else ()))
        self._device = "cpu"
        if device != "cpu":
            self.to(device)

    # ------------------------------------------------------------------ helpers
    @property
    def _xp(self):
        """The array module of the layer's device: NumPy or CuPy."""
        return array_module(self._device)

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def reset_parameters(self, seed=None):
        """Draw every parameter again from uniform(-1/sqrt(H), 1/sqrt(H))."""
        rng = self._rng if seed is None else np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            p.data[...] = to_device(rng.uniform(-bound, bound, size=p.data.shape)
                                    .astype(self.dtype), self._device)

    def manual_seed(self, seed):
        """Restart the layer's Generator (the one dropout masks are drawn from) at ``seed``."""
        self._rng = np.random.default_rng(seed)

    def to(self, device):
        """Move the parameters to 'cpu' (NumPy) or 'cuda' (CuPy); returns self. The saved
        context of the latest training forward is dropped (run forward again before backward)."""
        self._saved = None
        return super().to(device)

    def flatten_parameters(self):
        """Accepted for PyTorch compatibility; the kernels pack weights per call."""

    def _weights(self, layer, direction):
        names = self._param_names[layer * self.num_directions + direction]
        return [None if n is None else self._parameters[n] for n in names]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self._cell == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype}"
        if self._device != "cpu":
            s += f", device={self._device!r}"
        return s

    def _state_shape(self, batched, N):
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        return (LD, N, H) if batched else (LD, H)

    def _check_state(self, value, name, batched, N):
        """An initial state (or its gradient) as [L*D, N, H], or None."""
        if value is None:
            return None
        value = _check_array(value, name, self.dtype, self._device)
        shape = self._state_shape(batched, N)
        layout = " [num_layers*num_directions, N, H]" if batched else \
            " [num_layers*num_directions, H] (unbatched input)"
        _check_shape(value, name, shape, layout)
        return value if batched else value[:, None, :]

    def _split_state(self, hx, batched, N, names):
        """hx as (h0, c0) arrays [L*D, N, H] or None each; ``names`` = (tuple name, h, c)."""
        if self._cell == "lstm":
            if hx is None:
                return None, None
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{names[0]}: expected a tuple ({names[1]}, {names[2]}) for LSTM, "
                                f"got {type(hx).__name__}"
                                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
            return (self._check_state(hx[0], names[1], batched, N),
                    self._check_state(hx[1], names[2], batched, N))
        return self._check_state(hx, names[0], batched, N), None

    def _dropout_mask(self, shape):
        p = self.dropout
        if p >= 1.0:
            return self._xp.zeros(shape, self.dtype)
        keep = self._rng.random(shape) >= p  # drawn on the host: the same masks on every device
        mask = keep.astype(self.dtype) * self.dtype.type(1.0 / (1.0 - p))
        return mask if self._device == "cpu" else to_device(mask, self._device)

    # ------------------------------------------------------------------ forward
    def forward(self, x, hx=None, lengths=None):
        """Run every layer and direction. Returns ``(out, h_n)`` (LSTM: ``(out, (h_n, c_n))``).

        ``lengths`` [N] integers in [0, T] gives packed-sequence semantics without packing:
        outputs past a sample's length are 0 and its final state is the one after its own last
        step (the reverse direction starts there)."""
        x = _check_array(x, "x", self.dtype, self._device)
        xp = self._xp
        if x.ndim not in (2, 3):
            expected = "[N, T, I]" if self.batch_first else "[T, N, I]"
            raise ValueError(f"x: expected 3 dimensions {expected} or 2 dimensions [T, I] "
                             f"(unbatched), got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected input_size {self.input_size} in the last dimension, "
                             f"got shape {x.shape}")
        batched = x.ndim == 3
        if not batched:
            x_tni = x[:, None, :]
        elif self.batch_first:
            x_tni = x.transpose(1, 0, 2)
        else:
            x_tni = x
        T, N, _ = x_tni.shape
        h0_all, c0_all = self._split_state(hx, batched, N, ("hx", "h0", "c0") if self._cell == "lstm"
                                           else ("hx", "hx", None))
        if is_device_array(lengths):
            lengths = to_host(lengths)  # the kernels take lengths from the host on every device
        lengths = F.check_lengths(lengths, T, N)

        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        training = self.training
        h_n = xp.empty((L * D, N, H), self.dtype)
        c_n = xp.empty((L * D, N, H), self.dtype) if self._cell == "lstm" else None
        contexts, masks = [], []

        def call(layer, direction, inp):  # one kernel call's arguments
            k = layer * D + direction
            w_ih, w_hh, b_ih, b_hh = self._weights(layer, direction)
            return dict(x=inp, h0=None if h0_all is None else h0_all[k],
                        c0=None if c0_all is None else c0_all[k], w_ih=w_ih.data,
                        w_hh=w_hh.data, b_ih=None if b_ih is None else b_ih.data,
                        b_hh=None if b_hh is None else b_hh.data,
                        lengths=lengths, reverse=direction == 1, training=training)

        def keep(k, h, c):
            h_n[k] = h
            if c_n is not None:
                c_n[k] = c

        if D == 1 and L > 1 and not (training and self.dropout > 0):
            # A plain stack: the layers in one kernel call (a wavefront where that pays).
            results = F._forward_stack(self._cell, [call(layer, 0, x_tni if layer == 0 else None)
                                                    for layer in range(L)], self.nonlinearity)
            for layer, (y, h, c, ctx) in enumerate(results):
                keep(layer, h, c)
                contexts.append([ctx])
                masks.append(None)
            out = results[-1][0]
        else:
            inp = x_tni
            for layer in range(L):
                # The directions: one kernel call, side by side where that pays.
                results = F._forward_many(self._cell, [call(layer, d, inp) for d in range(D)],
                                          self.nonlinearity)
                for direction, (y, h, c, ctx) in enumerate(results):
                    keep(layer * D + direction, h, c)
                ys = [y for y, _, _, _ in results]
                contexts.append([ctx for _, _, _, ctx in results])
                out = ys[0] if D == 1 else xp.concatenate(ys, axis=2)
                if training and self.dropout > 0 and layer < L - 1:
                    mask = self._dropout_mask(out.shape)
                    masks.append(mask)
                    out = out * mask
                else:
                    masks.append(None)
                inp = out

        if training:
            self._saved = dict(contexts=contexts, masks=masks, T=T, N=N, batched=batched,
                               has_h0=h0_all is not None,
                               has_c0=c0_all is not None, x_shape=x.shape)
        else:
            self._saved = None  # an inference forward saves nothing; backward must not reuse old state

        out = self._from_tnx(out, batched)
        if not batched:
            h_n = h_n[:, 0, :]
            c_n = None if c_n is None else c_n[:, 0, :]
        if self._cell == "lstm":
            return out, (h_n, c_n)
        return out, h_n

    def _from_tnx(self, a, batched):
        """[T, N, F] -> the user's layout (batch_first [N, T, F]; unbatched [T, F])."""
        xp = self._xp
        if not batched:
            return xp.ascontiguousarray(a[:, 0, :])
        if self.batch_first:
            return xp.ascontiguousarray(a.transpose(1, 0, 2))
        return a

    # ------------------------------------------------------------------ backward
    def backward(self, dout, dhx=None):
        """BPTT for the latest training-mode forward.

        dout: shaped like ``out``; dhx: shaped like ``h_n`` (LSTM: a tuple (dh_n, dc_n), either
        part may be None), None for zeros. Returns ``(dx, dh0)`` shaped like ``x`` and ``hx``
        (LSTM: ``(dx, (dh0, dc0))``); the gradient of an initial state that was not given is
        zeros (it was a constant). Adds into every parameter's ``grad``."""
        saved = self._saved
        if saved is None:
            raise RuntimeError("backward called before a training-mode forward: call forward() "
                               "with the module in training mode (module.train()) first; an "
                               "eval-mode forward saves nothing for backward")
        T, N, batched = saved["T"], saved["N"], saved["batched"]
        L, D, H = self.num_layers, self.num_directions, self.hidden_size

        dout = _check_array(dout, "dout", self.dtype, self._device)
        xp = self._xp
        if not batched:
            out_shape = (T, D * H)
        elif self.batch_first:
            out_shape = (N, T, D * H)
        else:
            out_shape = (T, N, D * H)
        _check_shape(dout, "dout", out_shape, " (the shape of out)")
        if not batched:
            dout = dout[:, None, :]
        elif self.batch_first:
            dout = dout.transpose(1, 0, 2)
        dh_n, dc_n = self._split_state(dhx, batched, N, ("dhx", "dh_n", "dc_n")
                                       if self._cell == "lstm" else ("dhx", "dhx", None))

        dh0 = xp.zeros((L * D, N, H), self.dtype)
        dc0 = xp.zeros((L * D, N, H), self.dtype) if self._cell == "lstm" else None
        grad_out = dout  # gradient of the current layer's output [T, N, D*H]
        for layer in reversed(range(L)):
            if saved["masks"][layer] is not None:
                grad_out = grad_out * saved["masks"][layer]
            grad_in = None
            calls = []
            for direction in range(D):
                k = layer * D + direction
                calls.append((saved["contexts"][layer][direction],
                              grad_out[:, :, direction * H:(direction + 1) * H],
                              None if dh_n is None else dh_n[k],
                              None if dc_n is None else dc_n[k]))
            grads = F._backward_many(self._cell, calls)
            for direction, (dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh) in enumerate(grads):
                k = layer * D + direction
                dh0[k] = dh
                if dc0 is not None:
                    dc0[k] = dc
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, direction)
                w_ih.accumulate_grad(dw_ih)
                w_hh.accumulate_grad(dw_hh)
                if b_ih is not None:
                    b_ih.accumulate_grad(db_ih)
                    b_hh.accumulate_grad(db_hh)
                grad_in = dx if grad_in is None else grad_in + dx
            grad_out = grad_in

        dx = self._from_tnx(grad_out, batched)
        if not saved["has_h0"]:
            dh0[...] = 0
        if self._cell == "lstm" and not saved["has_c0"]:
            dc0[...] = 0
        if not batched:
            dh0 = dh0[:, 0, :]
            dc0 = None if dc0 is None else dc0[:, 0, :]
        if self._cell == "lstm":
            return dx, (dh0, dc0)
        return dx, dh0


class RNN(RNNBase):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with act tanh or relu."""

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32,
                 seed=None, device="cpu"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, nonlinearity=nonlinearity, dtype=dtype, seed=seed,
                         device=device)


class LSTM(RNNBase):
    """LSTM with PyTorch's gate order i, f, g, o; the state is a tuple (h, c)."""

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None,
                 device="cpu"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed, device=device)


class GRU(RNNBase):
    """GRU with PyTorch's gate order r, z, n and ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``."""

    _cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None,
                 device="cpu"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed, device=device)
