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
import string
import warnings

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

from .._flags import check_flag
from .. import _C
from .. import functional as F
from .cells import gate_doc_fields
from .layers import SeededModule, _int_in, _number_in
from .module import (KeptWeights, Parameter, any_requires_grad, array_module, check_device,
                     check_dtype, check_unwritten, checked_weights, dtype_repr, is_device_array,
                     to_device, to_host, write_stamp)

__all__ = ["RNNBase", "RNN", "LSTM", "GRU"]



def _positive_int(value, name, minimum=1):
    return _int_in(value, name, minimum)


def _check_array(value, name, dtype, device="cpu"):
    """``value`` as an array of the layer's dtype on the layer's device (a NumPy array for 'cpu';
    a CuPy array for 'cuda', where other CUDA arrays are viewed as CuPy); TypeError naming
    ``name`` otherwise."""
    if device == "cpu":
        if is_device_array(value):
            raise TypeError(f"{name}: expected a numpy.ndarray (the layer is on device 'cpu'), "
                            f"got a CUDA array ({type(value).__name__}); move the layer with "
                            f".to('cuda') or the array to the host")
        if not isinstance(F.check_unmasked(value, name), np.ndarray):
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


# a layer's (and Seq2Seq's) dropout argument, as _number_in states it
DROPOUT = ("dropout", 0.0, 1.0, "in [0, 1] (the probability of zeroing an element)")


class RNNBase(SeededModule):
    """What RNN, LSTM and GRU share: parameters, the layer/direction loop, dropout, BPTT."""

    _cell = None  # "rnn", "lstm" or "gru"
    _layer_norm = False  # the LayerNorm-LSTM (an LSTM whose kernels are "layernorm_lstm")

    _supports_cuda = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, nonlinearity="tanh",
                 dtype: DTypeLike = np.float32,
                 seed=None, device="cpu", peephole=False, reset_after=True, proj_size=0):
        super().__init__()
        device = check_device(device)
        if device == "cuda":
            array_module(device)  # a clear CudaUnavailableError on a CPU-only build, up front
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.nonlinearity = F.check_nonlinearity(nonlinearity)
        self.dropout = _number_in(dropout, *DROPOUT)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} has no effect with num_layers=1: dropout is "
                          f"applied between layers, never after the last", UserWarning,
                          stacklevel=3)
        self.bias = check_flag(bias, "bias")
        self.batch_first = check_flag(batch_first, "batch_first")
        self.bidirectional = check_flag(bidirectional, "bidirectional")
        self.peephole = check_flag(peephole, "peephole")
        self.reset_after = check_flag(reset_after, "reset_after")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) \
                or not 0 <= proj_size < self.hidden_size:
            raise ValueError(f"proj_size: expected an integer in [0, hidden_size) = "
                             f"[0, {self.hidden_size}) (0: no projection), got {proj_size!r}")
        if proj_size and self._cell != "lstm":
            raise ValueError(f"proj_size: projections belong to an LSTM, got proj_size="
                             f"{proj_size} for {self._cell.upper()}")
        self.proj_size = int(proj_size)
        # the kernels' cell: the GRU's reset-before form and the LayerNorm-LSTM are cells of
        # their own there
        self._kernel_cell = ("layernorm_lstm" if self._layer_norm
                             else self._cell if self.reset_after else F.gru_kernel(False))
        self.dtype = check_dtype(dtype)
        self._own_generator(seed)
        self._saved = self._let_go_by = None
        self._kept = KeptWeights()  # the packed weights kept between inference calls

        G, H = F.GATES[self._cell], self.hidden_size
        S = self._state_size  # the width of h (proj_size where there is a projection)
        D = 2 if self.bidirectional else 1
        bound = 1.0 / math.sqrt(H)
        self._param_names = []  # per (layer, direction): (w_ih, w_hh, b_ih, b_hh) names
        self._peephole_names = []  # per (layer, direction): the LSTM's peepholes, or None
        self._projection_names = []  # per (layer, direction): the LSTM's projection, or None
        self._layer_norm_names = []  # per (layer, direction): the LayerNorm-LSTM's, or None
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else D * S
            for direction in range(D):
                suffix = "_reverse" if direction == 1 else ""
                shapes = [(f"weight_ih_l{layer}{suffix}", (G * H, layer_input)),
                          (f"weight_hh_l{layer}{suffix}", (G * H, S))]
                if self.bias:
                    shapes += [(f"bias_ih_l{layer}{suffix}", (G * H,)),
                               (f"bias_hh_l{layer}{suffix}", (G * H,))]
                # torch's weight_hr after the biases, then our peepholes
                projection_name = f"weight_hr_l{layer}{suffix}" if self.proj_size else None
                peephole_name = f"weight_ph_l{layer}{suffix}" if self.peephole else None
                more = ([(projection_name, (S, H))] if self.proj_size else []) + \
                    ([(peephole_name, (3 * H,))] if self.peephole else [])
                for name, shape in shapes + more:
                    data = self._rng.uniform(-bound, bound, size=shape).astype(self.dtype)
                    setattr(self, name, Parameter(data))
                norms = None
                if self._layer_norm:  # its norms' gains (ones) and the cell norm's bias (zeros)
                    norms = tuple(f"ln_{kind}_l{layer}{suffix}" for kind in
                                  ("weight_ih", "weight_hh", "weight_c", "bias_c"))
                    for name, size, value in zip(norms, (G * H, G * H, H, H), (1, 1, 1, 0)):
                        setattr(self, name, Parameter(np.full(size, value, self.dtype)))
                self._layer_norm_names.append(norms)
                names = [n for n, _ in shapes]
                self._param_names.append(tuple(names) + ((None, None) if not self.bias else ()))
                self._peephole_names.append(peephole_name)
                self._projection_names.append(projection_name)
        self._device = "cpu"
        if device != "cpu":
            self.to(device)

    # ------------------------------------------------------------------ helpers
    @property
    def _xp(self):
        """The array module of the layer's device: NumPy or CuPy."""
        return array_module(self._device)

    @property
    def _state_size(self):
        """The width of h: proj_size where there is a projection, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def num_directions(self):
        """2 for a bidirectional layer, else 1."""
        return 2 if self.bidirectional else 1

    def reset_parameters(self, seed=None):
        """Draw every weight and bias again from uniform(-1/sqrt(H), 1/sqrt(H)), as at
        construction (a LayerNorm-LSTM's norms: gains 1, bias 0)."""
        rng = self._generator(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        norms = {name: 0.0 if name.startswith("ln_bias") else 1.0
                 for names in self._layer_norm_names if names for name in names}
        for name, p in self.named_parameters():
            value = (np.full(p.data.shape, norms[name], self.dtype) if name in norms else
                     rng.uniform(-bound, bound, size=p.data.shape).astype(self.dtype))
            p.data[...] = to_device(value, self._device)
            p.mark_written()

    def _device_changed(self):
        """(Module.to) The saved context of the latest training forward holds the old device's
        arrays: dropped (run forward again before backward)."""
        self._let_go("a move to another device")

    def _let_go(self, why):
        """Drop what the latest training forward saved, remembering ``why`` for backward's
        message."""
        if self._saved is not None:
            self._let_go_by = why
        self._saved = None

    def flatten_parameters(self):
        """Accepted for PyTorch compatibility; the layer keeps its packed weights between
        inference calls by itself (see Parameter.version)."""

    def _weights(self, layer, direction):
        k = layer * self.num_directions + direction
        names = self._param_names[k]
        params = [None if n is None else self._parameters.get(n) for n in names]
        return checked_weights(self, params, names, self._expected_weight_shapes()[k])

    def _expected_weight_shapes(self):
        """Per (layer, direction): the shapes of (w_ih, w_hh, b_ih, b_hh), the biases None
        without; worked out once, at the first call (a layer pickled before they were kept
        works them out too)."""
        shapes = self.__dict__.get("_weight_shapes")
        if shapes is None:
            GH, S, D = F.GATES[self._cell] * self.hidden_size, self._state_size, self.num_directions
            biases = ((GH,), (GH,)) if self.bias else (None, None)
            shapes = self._weight_shapes = [
                ((GH, self.input_size if k < D else D * S), (GH, S)) + biases
                for k in range(self.num_layers * D)]
        return shapes

    def _peepholes(self, layer, direction):
        """The LSTM's peephole Parameter of a layer direction, or None."""
        name = self._peephole_names[layer * self.num_directions + direction]
        return None if name is None else self._parameters[name]

    def _layer_norm_params(self, layer, direction):
        """The LayerNorm-LSTM's norm Parameters of a layer direction (gains ih, hh, c; bias c),
        or None."""
        names = self._layer_norm_names[layer * self.num_directions + direction]
        return None if names is None else [self._parameters[n] for n in names]

    def _layer_norm_args(self, layer, direction):
        """The kernel's keyword arguments for the LayerNorm-LSTM's norms ({} for another cell)."""
        params = self._layer_norm_params(layer, direction)
        if params is None:
            return {}
        return dict(ln=self._xp.concatenate([p.data for p in params]), eps=self.eps)

    def _layer_trains(self, layer):
        """Whether any parameter of a layer (any direction) requires its gradient."""
        D = self.num_directions
        names = [n for k in range(layer * D, (layer + 1) * D)
                 for n in (*self._param_names[k], self._peephole_names[k],
                           *(self._layer_norm_names[k] or ()), self._projection_names[k])]
        return any_requires_grad(self._parameters.get(n) for n in names if n is not None)

    def _projection(self, layer, direction):
        """The LSTM's projection Parameter (weight_hr) of a layer direction, or None."""
        name = self._projection_names[layer * self.num_directions + direction]
        return None if name is None else self._parameters[name]

    def extra_repr(self):
        """``input_size, hidden_size`` and the arguments that differ from their defaults."""
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
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.peephole:
            s += ", peephole=True"
        if not self.reset_after:
            s += ", reset_after=False"
        s += dtype_repr(self.dtype)
        if self._device != "cpu":
            s += f", device={self._device!r}"
        return s

    def _state_shape(self, batched, N, width=None):
        LD, W = self.num_layers * self.num_directions, width or self.hidden_size
        return (LD, N, W) if batched else (LD, W)

    def _check_state(self, value, name, batched, N, width=None):
        """An initial state (or its gradient) as [L*D, N, width], or None (width: H, or the
        projection's size for h)."""
        if value is None:
            return None
        value = _check_array(value, name, self.dtype, self._device)
        shape = self._state_shape(batched, N, width)
        W = "proj_size" if width and width != self.hidden_size else "H"
        layout = f" [num_layers*num_directions, N, {W}]" if batched else \
            f" [num_layers*num_directions, {W}] (unbatched input)"
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
            return (self._check_state(hx[0], names[1], batched, N, self._state_size),
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
        fast = self._single_inference_call(x, hx, lengths)
        if fast is not None:
            return fast
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
        h_n = xp.empty((L * D, N, self._state_size), self.dtype)
        c_n = xp.empty((L * D, N, H), self.dtype) if self._cell == "lstm" else None
        contexts, masks = [], []

        def call(layer, direction, inp):  # one kernel call's arguments
            k = layer * D + direction
            (w_ih, w_hh, b_ih, b_hh), cache = self._kept.weights(
                k, self._weights(layer, direction), keep=not training and self._device == "cpu")
            w_ph, w_hr = self._peepholes(layer, direction), self._projection(layer, direction)
            return dict(x=inp, h0=None if h0_all is None else h0_all[k],
                        c0=None if c0_all is None else c0_all[k], w_ih=w_ih, w_hh=w_hh,
                        b_ih=b_ih, b_hh=b_hh, lengths=lengths, reverse=direction == 1,
                        training=training, cache=cache,
                        w_ph=None if w_ph is None else w_ph.data,
                        w_hr=None if w_hr is None else w_hr.data,
                        **self._layer_norm_args(layer, direction))

        def keep(k, h, c):
            h_n[k] = h
            if c_n is not None:
                c_n[k] = c

        if D == 1 and L > 1 and not (training and self.dropout > 0):
            # A plain stack: the layers in one kernel call (a wavefront where that pays).
            results = F._forward_stack(self._kernel_cell, [call(layer, 0, x_tni if layer == 0 else None)
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
                results = F._forward_many(self._kernel_cell, [call(layer, d, inp) for d in range(D)],
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
            self._let_go_by = None
            self._saved = dict(contexts=contexts, masks=masks, T=T, N=N, batched=batched,
                               written=write_stamp(self), has_h0=h0_all is not None,
                               has_c0=c0_all is not None, x_shape=x.shape)
        else:  # an inference forward saves nothing; backward must not reuse an older one
            self._let_go("an eval-mode forward")

        out = self._from_tnx(out, batched)
        if not batched:
            h_n = h_n[:, 0, :]
            c_n = None if c_n is None else c_n[:, 0, :]
        if self._cell == "lstm":
            return out, (h_n, c_n)
        return out, h_n

    def _single_inference_call(self, x, hx, lengths):
        """The common short call, straight to the kernel: one layer, one direction, CPU, eval
        mode, x [T, N, I] contiguous in the layer's dtype, no lengths, the state None or [1, N, H]
        contiguous arrays (a stream carried step by step). The general path spends ~50 us of
        Python on such a call (Zen 1), more than the kernel on a step or two. Returns None for
        anything else (the general path, which checks every argument)."""
        if (self.training or self.num_layers != 1 or self.bidirectional or self.batch_first
                or lengths is not None or type(x) is not np.ndarray
                or x.ndim != 3 or x.dtype != self.dtype or x.shape[2] != self.input_size
                or not x.flags.c_contiguous or x.shape[0] == 0 or x.shape[1] == 0
                or self._device != "cpu"):
            return None
        lstm = self._cell == "lstm"
        N, H, S = x.shape[1], self.hidden_size, self._state_size
        if hx is None:
            h0, c0 = np.zeros((N, S), self.dtype), np.zeros((N, H), self.dtype)
        else:
            states = hx if lstm else (hx, hx)
            if not (type(states) is tuple and len(states) == 2 and all(
                    type(a) is np.ndarray and a.dtype == self.dtype and a.shape == (1, N, W)
                    and a.flags.c_contiguous for a, W in zip(states, (S, H)))):
                return None
            h0, c0 = states[0][0], states[1][0]
        w, cache = self._kept.weights(0, self._weights(0, 0))
        if cache is None or not all(a.dtype == self.dtype and a.flags.c_contiguous for a in w):
            return None
        precision = "bfloat16" if F.bfloat16_products(self.dtype) else None
        w_ph, w_hr = self._peepholes(0, 0), self._projection(0, 0)
        norms = self._layer_norm_args(0, 0)
        y, h_n, c_n = _C.recurrent_forward(self._kernel_cell, self.nonlinearity, x, h0,
                                           c0 if lstm else None, *w, None, False, False,
                                           cache, precision,
                                           None if w_ph is None else w_ph.data,
                                           None if w_hr is None else w_hr.data,
                                           norms.get("ln"), norms.get("eps", 1e-5))[:3]
        self._let_go("an eval-mode forward")
        return (y, (h_n[None], c_n[None])) if lstm else (y, h_n[None])

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
        if saved is None and getattr(self, "_let_go_by", None):
            raise RuntimeError(f"backward: {self._let_go_by} came after the latest training-mode "
                               f"forward and let its saved context go (a module keeps one "
                               f"forward, not a graph per call as torch does); call forward() in "
                               f"training mode again before backward")
        if saved is None:
            raise RuntimeError("backward called before a training-mode forward: call forward() "
                               "with the module in training mode (module.train()) first; an "
                               "eval-mode forward saves nothing for backward")
        check_unwritten(self, saved["written"])
        T, N, batched = saved["T"], saved["N"], saved["batched"]
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        S = self._state_size  # the width of h and of each direction's output

        dout = _check_array(dout, "dout", self.dtype, self._device)
        xp = self._xp
        if not batched:
            out_shape = (T, D * S)
        elif self.batch_first:
            out_shape = (N, T, D * S)
        else:
            out_shape = (T, N, D * S)
        _check_shape(dout, "dout", out_shape, " (the shape of out)")
        if not batched:
            dout = dout[:, None, :]
        elif self.batch_first:
            dout = dout.transpose(1, 0, 2)
        dh_n, dc_n = self._split_state(dhx, batched, N, ("dhx", "dh_n", "dc_n")
                                       if self._cell == "lstm" else ("dhx", "dhx", None))

        dh0 = xp.zeros((L * D, N, S), self.dtype)
        dc0 = xp.zeros((L * D, N, H), self.dtype) if self._cell == "lstm" else None
        grad_out = dout  # gradient of the current layer's output [T, N, D*S]
        for layer in reversed(range(L)):
            if saved["masks"][layer] is not None:
                grad_out = grad_out * saved["masks"][layer]
            grad_in = None
            calls = []
            for direction in range(D):
                k = layer * D + direction
                calls.append((saved["contexts"][layer][direction],
                              grad_out[:, :, direction * S:(direction + 1) * S],
                              None if dh_n is None else dh_n[k],
                              None if dc_n is None else dc_n[k]))
            trains = self._layer_trains(layer)  # (frozen: the kernels skip the gradients)
            grads = F._backward_many(self._kernel_cell, calls, weight_grads=trains)
            for direction, (dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, *more) in enumerate(grads):
                k = layer * D + direction
                dh0[k] = dh
                if dc0 is not None:
                    dc0[k] = dc
                grad_in = dx if grad_in is None else grad_in + dx
                if not trains:
                    continue
                if self._layer_norm:  # dln [10H]: the norms' parameters in order
                    dln, offset = more.pop(), 0
                    for param in self._layer_norm_params(layer, direction):
                        param.accumulate_grad(dln[offset:offset + param.data.size])
                        offset += param.data.size
                if self.proj_size:  # [dw_ph,] dw_hr
                    self._projection(layer, direction).accumulate_grad(more.pop())
                if more:
                    self._peepholes(layer, direction).accumulate_grad(more[0])
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, direction)
                w_ih.accumulate_grad(dw_ih)
                w_hh.accumulate_grad(dw_hh)
                if b_ih is not None:
                    b_ih.accumulate_grad(db_ih)
                    b_hh.accumulate_grad(db_hh)
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


# ---------------------------------------------------------------------------- docstrings
# The docstrings of RNN, LSTM and GRU: one template (the text the three share), filled per class
# with string.Template ($name), so the equations keep their braces.
_LAYER_DOC = string.Template("""\
Applies a multi-layer $title to an input sequence.

torch.nn.$name's constructor, parameter names, shapes, gate order and outputs, on NumPy arrays.
Each layer and direction runs over the whole sequence in one fused C++ (or CUDA) kernel call
(a unidirectional stack may run all its layers in one call).

For each element in the input sequence, each layer computes::

$equations

where h_t is the hidden state at time t, x_t is the input at time t and h_{t-1} is the hidden
state of the layer at time t-1 or the initial hidden state at time 0.
$where

In a multi-layer $name, the input x_t of layer l (l >= 1) is the output h_t of layer l-1,
multiplied in training mode by a dropout mask that is 0 with probability ``dropout`` and
1/(1 - dropout) otherwise.

Args:
    input_size: The number of expected features in the input x.
    hidden_size: The number of features in the hidden state h.
    num_layers: Number of recurrent layers stacked on each other. Default: 1
$cell_args\
    bias: If False, the layer has no bias weights b_ih and b_hh. Default: True
    batch_first: If True, the input and output are [N, T, feature] instead of [T, N, feature]
        (the states keep their layout [L*D, N, H]). Default: False
    dropout: If non-zero, applies inverted dropout with this probability to the outputs of
        every layer except the last, in training mode only (a UserWarning with num_layers=1).
        Default: 0.0
    bidirectional: If True, becomes a bidirectional $name. Default: False
    dtype: (keyword-only) numpy.float32 or numpy.float64: the parameters' dtype, which every
        input array must have. Default: numpy.float32
    seed: (keyword-only) Seed of the layer's own numpy.random.Generator, which draws the
        initial parameters and the dropout masks (see ``manual_seed``, ``reset_parameters``);
        None for fresh entropy. Default: None
    device: (keyword-only) 'cpu' (NumPy arrays, the C++ kernels) or 'cuda' (the parameters
        are CuPy arrays, the layer takes and returns CuPy arrays and runs the CUDA kernels;
        needs the CUDA build and CuPy). Default: 'cpu'

Inputs: input, $hx_name, lengths
    ``layer(input, hx=None, lengths=None)`` (the same as ``layer.forward(...)``).

    * **input**: [T, N, I] with batch_first=False, [N, T, I] with batch_first=True, or [T, I]
      for unbatched input; an array of the layer's dtype.
$hx_input
    * **lengths**: None, or [N] integers in [0, T] (a list or an integer array): each sample's
      true length, the semantics of a packed sequence without packing. Outputs past a
      sample's length are 0 and its final state is the one after its own last step (the
      reverse direction starts there). Default: None (every sample has length T)

    where T = sequence length, N = batch size, I = input_size, H = hidden_size,
    L = num_layers and D = 2 if bidirectional else 1.

Outputs: output, $hn_name
    * **output**: [T, N, D*H] with batch_first=False, [N, T, D*H] with batch_first=True, or
      [T, D*H] for unbatched input: the output features h_t of the last layer for every t.
      With bidirectional=True, output[..., :H] is the forward direction and output[..., H:]
      the reverse one.
$hn_output

Backward:
    ``layer.backward(dout, dhx=None)`` runs backpropagation through time for the latest
    training-mode forward (the default mode; after ``layer.eval()`` forward saves nothing
    and backward raises RuntimeError).

    * **dout**: the gradient of ``output``, shaped like it.
$dhx_input

    Returns $backward_returns: the gradients of ``input`` and of the initial state, shaped
    like them (the gradient of an initial state that was not given is zeros). The parameter
    gradients are added (+=) into each parameter's ``grad`` (None before the first backward):
    clear them between steps with ``layer.zero_grad()`` or the optimizer's ``zero_grad()``.

Attributes:
    weight_ih_l[k]: The learnable input-hidden weights of layer k, [$GH, I] for k = 0,
        else [$GH, D*H].
    weight_hh_l[k]: The learnable hidden-hidden weights of layer k, [$GH, H].
    bias_ih_l[k]: The learnable input-hidden bias of layer k, [$GH].
    bias_hh_l[k]: The learnable hidden-hidden bias of layer k, [$GH].
    weight_ih_l[k]_reverse, weight_hh_l[k]_reverse, bias_ih_l[k]_reverse,
    bias_hh_l[k]_reverse: The same for the reverse direction (bidirectional=True only).

$gate_layout\
    Each is a ``fusedrnn.nn.Parameter``: ``.data`` holds the array, ``.grad`` its gradient.
    The biases are absent with bias=False. Every weight and bias is initialised from
    uniform(-1/sqrt(H), 1/sqrt(H)), drawn from the layer's Generator (``seed``).

Examples:
$example
""")


def _layer_doc(name, gates, **fields):
    """The docstring of RNN, LSTM or GRU: ``_LAYER_DOC`` filled with ``fields``."""
    return _LAYER_DOC.substitute(name=name, **gate_doc_fields(gates, "_l[k]"), **fields)


_H_STATE = dict(  # the fields of RNN and GRU, whose state is h alone
    hx_name="hx",
    hx_input="""\
    * **hx**: None (zeros), or the initial hidden state [L*D, N, H] ([L*D, H] for unbatched
      input) of every layer and direction, index k = layer*D + direction. Default: None""",
    hn_name="h_n",
    hn_output="""\
    * **h_n**: [L*D, N, H] ([L*D, H] for unbatched input): the final hidden state of every
      layer and direction, index k = layer*D + direction.""",
    dhx_input="""\
    * **dhx**: the gradient of ``h_n``, shaped like it, or None (zeros). Default: None""",
    backward_returns="``(dx, dh0)``",
)


class RNN(RNNBase):
    __doc__ = _layer_doc(
        "RNN", "", title="Elman RNN with tanh or ReLU non-linearity",
        equations="    h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)",
        where="With nonlinearity='relu', ReLU is used instead of tanh.",
        cell_args="""\
    nonlinearity: The non-linearity to use, 'tanh' or 'relu'. Default: 'tanh'
""",
        example="""\
    >>> import numpy as np, fusedrnn as fr
    >>> rnn = fr.nn.RNN(10, 20, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
    >>> h0 = np.zeros((2, 3, 20), np.float32)
    >>> output, hn = rnn(x, h0)
    >>> output.shape, hn.shape
    ((5, 3, 20), (2, 3, 20))
    >>> dx, dh0 = rnn.backward(np.ones_like(output))
    >>> dx.shape, dh0.shape, rnn.weight_ih_l0.grad.shape
    ((5, 3, 10), (2, 3, 20), (20, 10))""",
        **_H_STATE)

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *,
                 dtype: DTypeLike = np.float32, seed=None, device="cpu"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, nonlinearity=nonlinearity, dtype=dtype, seed=seed,
                         device=device)


class LSTM(RNNBase):
    __doc__ = _layer_doc(
        "LSTM", "ifgo", title="long short-term memory (LSTM) RNN",
        equations="""\
    i_t = sigma(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
    f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)""",
        where="""\
c_t is the cell state at time t; i_t, f_t, g_t, o_t are the input, forget, cell and output
gates; sigma is the sigmoid function and * is the elementwise product.

With ``proj_size > 0`` (as torch.nn.LSTM) h_t = W_hr (o_t * tanh(c_t)) is proj_size wide:
the parameters ``weight_hr_l{k}[_reverse]`` [proj_size, H], ``weight_hh_l{k}`` [4H, proj_size],
h_0/h_n [L*D, N, proj_size] and the output [T, N, D*proj_size]; c stays H wide.

With ``peephole=True`` (keyword-only; not in torch.nn) the gates also see the cell state, as
ONNX's LSTM with peepholes P: i_t and f_t add p_i * c_{t-1} and p_f * c_{t-1}, o_t adds
p_o * c_t, with the parameters ``weight_ph_l{k}[_reverse]`` [3H] in the order i, f, o.""",
        cell_args="""\
    proj_size: If > 0, an LSTM with projections of that size (torch.nn.LSTM's
        proj_size; CUDA: stepwise). Default: 0
    peephole: (keyword-only) If True, the gates also see the cell state (ONNX's peepholes;
        parameters weight_ph_l{k}[_reverse] [3H]). Default: False
""",
        hx_name="hx = (h_0, c_0)",
        hx_input="""\
    * **hx**: None (zeros), or a tuple (h_0, c_0) of the initial hidden and cell states of
      every layer and direction, each [L*D, N, H] ([L*D, H] for unbatched input) or None
      (zeros), index k = layer*D + direction. Default: None""",
        hn_name="(h_n, c_n)",
        hn_output="""\
    * **h_n**: [L*D, N, H] ([L*D, H] for unbatched input): the final hidden state of every
      layer and direction, index k = layer*D + direction.
    * **c_n**: [L*D, N, H] ([L*D, H] for unbatched input): the final cell state of every
      layer and direction.""",
        dhx_input="""\
    * **dhx**: None, or a tuple (dh_n, dc_n): the gradients of ``h_n`` and ``c_n``, shaped
      like them, either of them None (zeros). Default: None""",
        backward_returns="``(dx, (dh0, dc0))``",
        example="""\
    >>> import numpy as np, fusedrnn as fr
    >>> rnn = fr.nn.LSTM(10, 20, num_layers=2, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
    >>> h0 = np.zeros((2, 3, 20), np.float32)
    >>> c0 = np.zeros((2, 3, 20), np.float32)
    >>> output, (hn, cn) = rnn(x, (h0, c0))
    >>> output.shape, hn.shape, cn.shape
    ((5, 3, 20), (2, 3, 20), (2, 3, 20))
    >>> dx, (dh0, dc0) = rnn.backward(np.ones_like(output))
    >>> dx.shape, dh0.shape, dc0.shape, rnn.weight_ih_l0.grad.shape
    ((5, 3, 10), (2, 3, 20), (2, 3, 20), (80, 10))""")

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *,
                 dtype: DTypeLike = np.float32, seed=None, device="cpu", peephole=False):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed, device=device,
                         peephole=peephole, proj_size=proj_size)


class GRU(RNNBase):
    __doc__ = _layer_doc(
        "GRU", "rzn", title="gated recurrent unit (GRU) RNN",
        equations="""\
    r_t = sigma(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = sigma(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}""",
        where="""\
r_t, z_t, n_t are the reset, update and new gates; sigma is the sigmoid function and * is the
elementwise product.

With ``reset_after=False`` (keyword-only; not in torch.nn) the reset gate applies before the
product: n_t = tanh(W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn), Keras' GRU with
reset_after=False and ONNX's GRU with linear_before_reset=0 (CUDA: stepwise).""",
        cell_args="""\
    reset_after: (keyword-only) If False, the reset gate applies to h before the recurrent
        product (Keras' reset_after=False, ONNX's default GRU). Default: True (PyTorch's GRU)
""",
        example="""\
    >>> import numpy as np, fusedrnn as fr
    >>> rnn = fr.nn.GRU(10, 20, num_layers=2, batch_first=True, bidirectional=True, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((3, 5, 10)).astype(np.float32)
    >>> output, hn = rnn(x, lengths=np.array([5, 4, 2]))
    >>> output.shape, hn.shape
    ((3, 5, 40), (4, 3, 20))
    >>> bool((output[2, 2:] == 0).all())  # past the length of sample 2
    True
    >>> dx, dh0 = rnn.backward(np.ones_like(output))
    >>> dx.shape, dh0.shape, rnn.weight_ih_l1_reverse.shape
    ((3, 5, 10), (4, 3, 20), (60, 40))""",
        **_H_STATE)

    _cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype: DTypeLike = np.float32, seed=None,
                 device="cpu", reset_after=True):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed, device=device,
                         reset_after=reset_after)


class LayerNormLSTM(LSTM):
    """A multi-layer LayerNorm-LSTM (haste's LayerNormLSTM, in PyTorch's gate order): layer
    normalization of the input and the recurrent pre-activations and of the cell state, fused
    into the kernels' step (the norms' statistics are computed inside it, not as passes of
    their own)::

        a_t = g_ih * LN(W_ih x_t) + b_ih + g_hh * LN(W_hh h_{t-1}) + b_hh     (i, f, g, o)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(g_c * LN(c_t) + b_c)

    LN(v) = (v - mean(v)) / sqrt(var(v) + eps) over the 4H pre-activations of a sample (H for
    c_t); the biases come after the norms. c_t carries the un-normalized cell state.

    Arguments, inputs, outputs and backward as :class:`LSTM`'s (no ``proj_size``, no
    ``peephole``), plus ``eps`` (keyword-only, default 1e-5). Parameters per layer k (and
    ``_reverse``): LSTM's four, then ``ln_weight_ih_l{k}`` [4H], ``ln_weight_hh_l{k}`` [4H],
    ``ln_weight_c_l{k}`` [H] (gains, ones at first) and ``ln_bias_c_l{k}`` [H] (zeros). CPU; under
    autocast its inference runs bfloat16 products, its training float32 ones.

    >>> import numpy as np, fusedrnn as fr
    >>> rnn = fr.nn.LayerNormLSTM(10, 20, num_layers=2, seed=0)
    >>> out, (h_n, c_n) = rnn(np.ones((5, 3, 10), np.float32))
    >>> out.shape, rnn.ln_weight_ih_l1.shape
    ((5, 3, 20), (80,))
    """

    _layer_norm = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, eps=1e-5, dtype: DTypeLike = np.float32,
                 seed=None, device="cpu"):
        eps = F.layer_norm_eps(eps, check_dtype(dtype))
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed, device=device)
        self.eps = eps

    def extra_repr(self):
        """LSTM's, and ``eps`` where it is not the default."""
        s = super().extra_repr()
        return s if self.eps == 1e-5 else s + f", eps={self.eps}"
