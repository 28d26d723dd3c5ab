"""Single-step cells ``RNNCell``, ``LSTMCell``, ``GRUCell`` with torch.nn's constructor arguments,
parameter names (weight_ih, weight_hh, bias_ih, bias_hh) and gate orders.

Each step is one fused C++ call: the cell runs ``fusedrnn.functional.<cell>_forward`` on a
sequence of length T = 1, and its backward the matching ``<cell>_backward``. A cell may be called
many times per sequence (a decoder feeding back its own output): every training-mode call pushes
its step context on a stack, and each ``backward`` pops the latest one, so backward calls walk the
steps in reverse order, as BPTT does. Under ``fusedrnn.autocast`` a float32 step runs its product
W_hh h in bfloat16, as the layers do, from a conversion of W_hh that the cell keeps between steps
(``KeptWeights``: renewed whenever a weight may have changed).

    x [N, I] (or [I] unbatched)     h, c [N, H] (or [H])

``backward(dh)`` (LSTM: ``backward(dh, dc)``) returns ``(dx, dh_prev)`` (LSTM:
``(dx, (dh_prev, dc_prev))``) and adds the step's weight gradients into ``grad``; the caller adds
``dh_prev`` into the gradient of the previous step's output before calling backward again.
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
from .layers import SeededModule, _dtype, _positive_int
from .module import (KeptWeights, Parameter, any_requires_grad, as_gradient, check_unwritten,
                     checked_weights, dtype_repr, user_stacklevel, write_stamp)

# A cell's weights as the kernels take them (the biases None where there are none).
_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# A cell's pending training-mode steps past which it warns that they pile up (_push).
PENDING_STEPS_WARNING = 10_000

__all__ = ["RNNCellBase", "RNNCell", "LSTMCell", "GRUCell", "LayerNormLSTMCell"]


# ---------------------------------------------------------------------------- docstrings
# The docstrings of RNNCell, LSTMCell and GRUCell: one template (the text the three share), filled
# per class with string.Template ($name), so the equations keep their braces.
_CELL_DOC = string.Template("""\
$summary

torch.nn.$name's constructor, parameter names, shapes and gate order, on NumPy arrays.
Each call is one time step: one fused C++ kernel call on a sequence of length 1.

Each call computes::

$equations

where x is the input, h the hidden state before the step and h' the one after it$where

Args:
    input_size: The number of expected features in the input x.
    hidden_size: The number of features in the hidden state h.
    bias: If False, the cell has no bias weights b_ih and b_hh. Default: True
$cell_args\
    dtype: (keyword-only) numpy.float32 or numpy.float64: the parameters' dtype, which every
        input array must have. Default: numpy.float32
    seed: (keyword-only) Seed of the numpy.random.Generator that draws the initial
        parameters; None for fresh entropy. Default: None

Inputs: input, $hx_name
    ``cell(input, hx=None)`` (the same as ``cell.forward(...)``), on NumPy arrays of the cell's
    dtype.

    * **input**: [N, I], or [I] for unbatched input.
$hx_input

    where N = batch size, I = input_size and H = hidden_size.

Outputs: $out_name
$outputs

Backward:
    ``cell.backward($backward_args)`` back-propagates the latest training-mode step that has not
    been back-propagated yet. Every call in training mode (the default) pushes its step on a
    stack (``pending_steps`` counts them) and every backward pops one, so the backward calls of
    a sequence run in reverse step order, as BPTT does: add the returned gradient of the
    previous state into the gradient of the previous step's output before its backward. A call
    in eval mode pushes nothing; ``clear_steps()`` drops steps whose backward will not run. A
    backward refused for its gradient (the wrong shape or dtype) pops nothing: called again
    correctly, it back-propagates the same step. One refused because a parameter was written
    since the step drops every pending step, which no backward can use.

$backward_inputs

    Returns $backward_returns: the gradients of ``input`` and of the state before
    the step, shaped like them. The parameter gradients are added (+=) into each parameter's
    ``grad`` (None before the first backward).

Attributes:
    weight_ih: The learnable input-hidden weights, [$GH, I].
    weight_hh: The learnable hidden-hidden weights, [$GH, H].
    bias_ih: The learnable input-hidden bias, [$GH] (None with bias=False).
    bias_hh: The learnable hidden-hidden bias, [$GH] (None with bias=False).

$gate_layout\
    Each is a ``fusedrnn.nn.Parameter``: ``.data`` holds the array, ``.grad`` its gradient.
    Every weight and bias is initialised from uniform(-1/sqrt(H), 1/sqrt(H)), drawn from the
    Generator of ``seed``.

Examples:
$example
""")


def gate_doc_fields(gates, suffix=""):
    """The docstring fields that ``gates`` (the gate letters in their stacking order, "" for
    the RNN) fixes: ``GH``, the gate rows of a weight, and ``gate_layout``, how the gates'
    blocks stack in weight_ih{suffix}, weight_hh{suffix} and the biases."""
    G = max(len(gates), 1)

    def blocks(prefix):
        return "[" + "|".join(prefix + g for g in gates) + "]"

    layout = ""
    if gates:
        layout = (f"    The gates' blocks are stacked in the order {', '.join(gates)}: "
                  f"weight_ih{suffix} is\n    {blocks('W_i')}, weight_hh{suffix} {blocks('W_h')}, "
                  f"bias_ih{suffix}\n    {blocks('b_i')} and bias_hh{suffix} {blocks('b_h')}.\n")
    return {"GH": "H" if G == 1 else f"{G}*H", "gate_layout": layout}


def _cell_doc(name, gates, **fields):
    """The docstring of RNNCell, LSTMCell or GRUCell: ``_CELL_DOC`` filled with ``fields``."""
    return _CELL_DOC.substitute(name=name, **gate_doc_fields(gates), **fields)


_H_STATE = dict(  # the fields of RNNCell and GRUCell, whose state is h alone
    hx_name="hx",
    hx_input="""\
    * **hx**: None (zeros), or the hidden state h: [N, H] ([H] for unbatched input).
      Default: None""",
    out_name="h'",
    outputs="""\
    * **h'**: [N, H] ([H] for unbatched input): the hidden state after the step.""",
    backward_args="dh",
    backward_inputs="""\
    * **dh**: the gradient of ``h'``, shaped like it (the loss's gradient at this step plus
      the ``dh_prev`` returned by the next step's backward).""",
    backward_returns="``(dx, dh_prev)``",
)


def _plain_arrays(dtype, *arrays):
    """Whether every array is a C-contiguous numpy.ndarray of ``dtype`` (what the kernel
    takes as it is)."""
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
            return False
    return True


def _contiguous_states(*states):
    """Whether every state given (None: zeros) is C-contiguous."""
    for s in states:
        if s is not None and not s.flags.c_contiguous:
            return False
    return True


class RNNCellBase(SeededModule):
    """What RNNCell, LSTMCell and GRUCell share: the parameters, the input checks and the stack of
    training-mode steps waiting for their backward."""

    _cell = None
    _layer_norm = False  # the LayerNorm-LSTM cell (its kernels' cell is "layernorm_lstm")

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 dtype: DTypeLike = np.float32, seed=None, peephole=False, reset_after=True,
                 proj_size=0, eps=1e-5):
        super().__init__()
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) \
                or not 0 <= proj_size < self.hidden_size:
            raise ValueError(f"proj_size: expected an integer in [0, hidden_size) = "
                             f"[0, {self.hidden_size}) (0: no projection), got {proj_size!r}")
        self.proj_size = int(proj_size)
        self.nonlinearity = F.check_nonlinearity(nonlinearity)
        self.dtype = _dtype(dtype)
        self.bias = check_flag(bias, "bias")
        rng = self._own_generator(seed)
        GH = F.GATES[self._cell] * self.hidden_size
        bound = 1.0 / math.sqrt(self.hidden_size)

        def uniform(*shape):
            return Parameter(rng.uniform(-bound, bound, shape).astype(self.dtype))

        self.weight_ih = uniform(GH, self.input_size)
        self.weight_hh = uniform(GH, self._state_size)
        if self.bias:
            self.bias_ih = uniform(GH)
            self.bias_hh = uniform(GH)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.peephole = check_flag(peephole, "peephole")
        self.reset_after = check_flag(reset_after, "reset_after")
        self._kernel_cell = ("layernorm_lstm" if self._layer_norm
                             else self._cell if self.reset_after else F.gru_kernel(False))
        if self.proj_size:  # as torch.nn.LSTM's weight_hr, after the biases
            self.weight_hr = uniform(self.proj_size, self.hidden_size)
        if self.peephole:  # the LSTM's peepholes (i, f, o), after torch's parameters
            self.weight_ph = uniform(3 * self.hidden_size)
        if self._layer_norm:  # the norms' gains (ones) and the cell norm's bias (zeros)
            self.eps = F.layer_norm_eps(eps, self.dtype)
            H = self.hidden_size
            for name, size, value in (("ln_weight_ih", GH, 1), ("ln_weight_hh", GH, 1),
                                      ("ln_weight_c", H, 1), ("ln_bias_c", H, 0)):
                setattr(self, name, Parameter(np.full(size, value, self.dtype)))
        # a stack of (ctx, batched, write stamp) for the training-mode steps not yet back-propagated
        self._steps = []
        self._kept = KeptWeights()  # the packed weights kept between steps (see _push)

    def reset_parameters(self, seed=None):
        """Draw the weights and biases again from uniform(-1/sqrt(H), 1/sqrt(H)), as at
        construction (a LayerNorm-LSTM cell's norms: gains 1, bias 0), from ``seed`` or the
        cell's own Generator."""
        rng = self._generator(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            p.data[...] = (np.full(p.data.shape, 0.0 if name == "ln_bias_c" else 1.0, self.dtype)
                           if name.startswith("ln_") else
                           rng.uniform(-bound, bound, p.data.shape).astype(self.dtype))
            p.mark_written()

    # ------------------------------------------------------------------ helpers
    @property
    def _state_size(self):
        """The width of h: proj_size where there is a projection, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _variant_args(self):
        """The kernels' arguments of the variants: w_ph, w_hr, ln, eps (None where absent)."""
        return dict(w_ph=self.weight_ph.data if self.peephole else None,
                    w_hr=self.weight_hr.data if self.proj_size else None,
                    ln=np.concatenate([p.data for p in self._layer_norm_params()])
                    if self._layer_norm else None,
                    eps=self.eps if self._layer_norm else 1e-5)

    def _layer_norm_params(self):
        return [self.ln_weight_ih, self.ln_weight_hh, self.ln_weight_c, self.ln_bias_c]

    @property
    def pending_steps(self):
        """How many training-mode steps are waiting for their backward."""
        return len(self._steps)

    def clear_steps(self):
        """Forget the saved steps (e.g. after a forward whose backward will not run)."""
        self._steps.clear()
        self._kept.held.clear()

    def _expected_weight_shapes(self):
        """The shapes of (w_ih, w_hh, b_ih, b_hh), worked out once, at the first step (a cell
        pickled before they were kept works them out too), as the layers'."""
        shapes = self.__dict__.get("_weight_shapes")
        if shapes is None:
            GH = F.GATES[self._cell] * self.hidden_size
            shapes = self._weight_shapes = ((GH, self.input_size), (GH, self._state_size),
                                            (GH,), (GH,))
        return shapes

    def _step(self, x, h0, c0=None):
        """One step of checked x [N, I] and states [N, H] (or None: zeros): (h', c' or None,
        the context for backward or None). The weights' packed (under fusedrnn.autocast:
        bfloat16) forms are kept between steps as the layers keep theirs (KeptWeights), so a
        step converts nothing. An eval-mode step with contiguous arrays goes straight to the
        kernel, which checks every shape again: the functional API's checks cost more than a
        small step's arithmetic. Otherwise (training, strided arrays, a missing bias without
        kept weights) through fusedrnn.functional, where autocast decides the precision."""
        lstm = self._cell == "lstm"
        params = self._parameters
        w, cache = self._kept.weights(0, checked_weights(
            self, [params.get(n) for n in _WEIGHT_NAMES], _WEIGHT_NAMES,
            self._expected_weight_shapes()))
        variant = self._variant_args()
        if (not self.training and x.shape[0] > 0 and w[2] is not None
                and _plain_arrays(self.dtype, x, *w) and _contiguous_states(h0, c0)):
            if h0 is None:
                h0 = np.zeros((x.shape[0], self._state_size), self.dtype)
            if lstm and c0 is None:
                c0 = np.zeros((x.shape[0], self.hidden_size), self.dtype)
            precision = "bfloat16" if F.bfloat16_products(self.dtype) else None
            out = _C.recurrent_forward(self._kernel_cell, self.nonlinearity, x[None], h0,
                                       c0 if lstm else None, *w, None, False, False, cache,
                                       precision, variant["w_ph"], variant["w_hr"],
                                       variant["ln"], variant["eps"])
            return out[1], out[2], None
        if not self._layer_norm:
            del variant["ln"], variant["eps"]
        if self.training:  # kept for backward: a step loop may refill one buffer for x or the
            # state (torch would see the write by its version counter; NumPy arrays have none)
            x, h0, c0 = (None if a is None else a.copy() for a in (x, h0, c0))
        _, h, c, ctx = F._forward_many(self._kernel_cell, [dict(
            x=x[None], h0=h0, c0=c0 if lstm else None, w_ih=w[0], w_hh=w[1], b_ih=w[2],
            b_hh=w[3], training=self.training, cache=cache, **variant)], self.nonlinearity)[0]
        return h, c, ctx

    def _input(self, x):
        if not isinstance(F.check_unmasked(x, "input"), np.ndarray):
            raise TypeError(f"input: expected a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"input: expected dtype {self.dtype} (the cell's dtype), got {x.dtype}")
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected shape [N, {self.input_size}] or [{self.input_size}],"
                             f" got {x.shape}")
        batched = x.ndim == 2
        return (x if batched else x[None]), batched

    def _state(self, h, name, N, batched, width=None):
        """A state (or its gradient) [N, width] ([width] unbatched; width H by default)."""
        if h is None:
            return None
        if not isinstance(F.check_unmasked(h, name), np.ndarray) or h.dtype != self.dtype:
            raise TypeError(f"{name}: expected a numpy.ndarray of dtype {self.dtype}, got "
                            f"{getattr(h, 'dtype', type(h).__name__)}")
        width = width or self.hidden_size
        shape = (N, width) if batched else (width,)
        if h.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {h.shape}")
        return h if batched else h[None]

    def _push(self, ctx, batched):
        if self.training:
            self._steps.append((ctx, batched, write_stamp(self)))
            self._kept.hold((ctx.w_ih, ctx.w_hh))  # read-only references: the weights stay kept
            if len(self._steps) == PENDING_STEPS_WARNING:  # (torch frees a graph no one holds;
                warnings.warn(  # these wait for their backward however long: say so, once)
                    f"{type(self).__name__}: {PENDING_STEPS_WARNING} training-mode steps wait "
                    f"for their backward, each keeping its activations; steps run without one "
                    f"(a validation pass, a skipped batch) belong in eval mode, or call "
                    f"clear_steps()", RuntimeWarning, stacklevel=user_stacklevel())

    def _latest(self):
        """(ctx, batched) of the latest training-mode step not yet back-propagated. It stays
        pending until :meth:`_done` (after its backward ran): a backward refused for its
        arguments loses no step, and the retry back-propagates this one (when a parameter was
        written since, every pending step is dropped as the error is raised)."""
        if not self._steps:
            raise RuntimeError(f"{type(self).__name__}.backward: no training-mode step left to "
                               f"back-propagate (each forward in training mode allows one backward)")
        ctx, batched, written = self._steps[-1]
        try:
            check_unwritten(self, written)
        except RuntimeError:  # written after this step, so after every older one too: none
            self.clear_steps()  # can ever be back-propagated
            raise
        return ctx, batched

    def _done(self):
        """The latest step has been back-propagated: off the stack, its weights released."""
        ctx = self._steps.pop()[0]
        self._kept.release((ctx.w_ih, ctx.w_hh))

    def _trains(self):
        """Whether any parameter requires its gradient (else the kernels skip them all)."""
        return any_requires_grad(self.parameters())

    def _accumulate(self, dw_ih, dw_hh, db_ih, db_hh):
        self.weight_ih.accumulate_grad(dw_ih)
        self.weight_hh.accumulate_grad(dw_hh)
        if self.bias_ih is not None:
            self.bias_ih.accumulate_grad(db_ih)
            self.bias_hh.accumulate_grad(db_hh)

    def _grad(self, d, name, N, batched, width=None):
        if d is None:
            return None
        return self._state(as_gradient(d, name, self.dtype), name, N, batched, width)

    def extra_repr(self):
        """``input_size, hidden_size`` and the arguments that differ from their defaults."""
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self._cell == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.peephole:
            s += ", peephole=True"
        if self._layer_norm and self.eps != 1e-5:
            s += f", eps={self.eps}"
        if not self.reset_after:
            s += ", reset_after=False"
        return s + dtype_repr(self.dtype)


class _HiddenStateCell(RNNCellBase):
    """The step and its backward of a cell whose state is h alone (RNN, GRU); the subclass names
    its kernels' backward."""

    _kernel_backward = None

    def forward(self, input, hx=None):
        """input [N, I] (or [I]), hx [N, H] (or [H]) or None for zeros -> h' [N, H] (or [H]); a
        training-mode step is pushed for backward."""
        x, batched = self._input(input)
        h0 = self._state(hx, "hx", x.shape[0], batched)
        h, _, ctx = self._step(x, h0)
        self._push(ctx, batched)
        return h if batched else h[0]

    def backward(self, dh):
        """Returns ``(dx, dh_prev)`` for the latest step that has not been back-propagated."""
        ctx, batched = self._latest()
        dh = self._grad(dh, "dh", ctx.x.shape[1], batched)
        trains = self._trains()
        dx, dh0, *dw = self._kernel_backward(ctx, None, dh, weight_grads=trains)
        self._done()
        if trains:
            self._accumulate(*dw)
        return (dx[0], dh0) if batched else (dx[0, 0], dh0[0])


class RNNCell(_HiddenStateCell):
    __doc__ = _cell_doc(
        "RNNCell", "", summary="An Elman RNN cell with tanh or ReLU non-linearity.",
        equations="    h' = tanh(W_ih x + b_ih + W_hh h + b_hh)",
        where=""".
With nonlinearity='relu', ReLU is used instead of tanh.""",
        cell_args="""\
    nonlinearity: The non-linearity to use, 'tanh' or 'relu'. Default: 'tanh'
""",
        example="""\
    >>> import numpy as np, fusedrnn as fr
    >>> cell = fr.nn.RNNCell(10, 20, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((6, 3, 10)).astype(np.float32)
    >>> h = np.zeros((3, 20), np.float32)
    >>> outputs = []
    >>> for t in range(6):
    ...     h = cell(x[t], h)
    ...     outputs.append(h)
    >>> outputs[-1].shape, cell.pending_steps
    ((3, 20), 6)
    >>> dloss = np.ones((3, 20), np.float32)  # the loss: the sum of every output
    >>> dh_prev = np.zeros((3, 20), np.float32)
    >>> for t in reversed(range(6)):
    ...     dx, dh_prev = cell.backward(dloss + dh_prev)
    >>> dx.shape, dh_prev.shape, cell.pending_steps, cell.weight_ih.grad.shape
    ((3, 10), (3, 20), 0, (20, 10))""",
        **_H_STATE)

    _cell = "rnn"
    _kernel_backward = staticmethod(F.rnn_backward)

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 dtype: DTypeLike = np.float32, seed=None):
        super().__init__(input_size, hidden_size, bias, nonlinearity, dtype=dtype, seed=seed)


class GRUCell(_HiddenStateCell):
    __doc__ = _cell_doc(
        "GRUCell", "rzn", summary="A gated recurrent unit (GRU) cell.",
        equations="""\
    r = sigma(W_ir x + b_ir + W_hr h + b_hr)
    z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h""",
        where=""";
r, z, n are the reset, update and new gates; sigma is the sigmoid function and * is the
elementwise product. With ``reset_after=False`` the reset gate applies before the product:
n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) (Keras' reset_after=False, ONNX's
linear_before_reset=0).""",
        cell_args="""\
    reset_after: (keyword-only) If False, the reset gate applies to h before the recurrent
        product. Default: True (PyTorch's GRUCell)
""",
        example="""\
    >>> import numpy as np, fusedrnn as fr
    >>> cell = fr.nn.GRUCell(10, 20, seed=0)
    >>> x = np.ones(10, np.float32)  # unbatched: input [I], state [H]
    >>> h = cell(x)
    >>> h = cell(x, h)
    >>> h.shape, cell.pending_steps
    ((20,), 2)
    >>> dx, dh_prev = cell.backward(np.ones_like(h))  # the second step
    >>> dx, dh_prev = cell.backward(dh_prev)          # the first step
    >>> dx.shape, dh_prev.shape, cell.weight_hh.grad.shape
    ((10,), (20,), (60, 20))""",
        **_H_STATE)

    _cell = "gru"
    _kernel_backward = staticmethod(F.gru_backward)

    def __init__(self, input_size, hidden_size, bias=True, *, dtype: DTypeLike = np.float32,
                 seed=None, reset_after=True):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed,
                         reset_after=reset_after)


class LSTMCell(RNNCellBase):
    __doc__ = _cell_doc(
        "LSTMCell", "ifgo", summary="A long short-term memory (LSTM) cell.",
        equations="""\
    i = sigma(W_ii x + b_ii + W_hi h + b_hi)
    f = sigma(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o = sigma(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')""",
        where="""; c is the cell
state before the step and c' the one after it; i, f, g, o are the input, forget, cell and output
gates; sigma is the sigmoid function and * is the elementwise product. With ``peephole=True``
(keyword-only; not in torch.nn) i and f add p_i * c and p_f * c, o adds p_o * c' (ONNX's
peepholes), from the parameter ``weight_ph`` [3H] in the order i, f, o.""",
        cell_args="""\
    peephole: (keyword-only) If True, the gates also see the cell state (ONNX's peepholes;
        the parameter weight_ph [3H]). Default: False
    proj_size: (keyword-only) If > 0, h' = W_hr (o * tanh(c')) is projected to proj_size
        values (torch.nn.LSTM's proj_size; the parameter weight_hr [proj_size, H]): h, h' and
        the columns of weight_hh are proj_size wide, c stays H wide. Default: 0
""",
        hx_name="hx = (h, c)",
        hx_input="""\
    * **hx**: None (zeros), or a tuple (h, c) of the hidden and cell states, each [N, H] ([H]
      for unbatched input) or None (zeros). Default: None""",
        out_name="(h', c')",
        outputs="""\
    * **h'**: [N, H] ([H] for unbatched input): the hidden state after the step.
    * **c'**: [N, H] ([H] for unbatched input): the cell state after the step.""",
        backward_args="dh, dc=None",
        backward_inputs="""\
    * **dh**: the gradient of ``h'``, shaped like it (the loss's gradient at this step plus
      the ``dh_prev`` returned by the next step's backward).
    * **dc**: the gradient of ``c'`` (the ``dc_prev`` returned by the next step's backward),
      shaped like it, or None (zeros). Default: None""",
        backward_returns="``(dx, (dh_prev, dc_prev))``",
        example="""\
    >>> import numpy as np, fusedrnn as fr
    >>> cell = fr.nn.LSTMCell(10, 20, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((6, 3, 10)).astype(np.float32)
    >>> h = np.zeros((3, 20), np.float32)
    >>> c = np.zeros((3, 20), np.float32)
    >>> outputs = []
    >>> for t in range(6):
    ...     h, c = cell(x[t], (h, c))
    ...     outputs.append(h)
    >>> outputs[-1].shape, c.shape, cell.pending_steps
    ((3, 20), (3, 20), 6)
    >>> dloss = np.ones((3, 20), np.float32)  # the loss: the sum of every output
    >>> dh_prev, dc_prev = np.zeros((3, 20), np.float32), None
    >>> for t in reversed(range(6)):
    ...     dx, (dh_prev, dc_prev) = cell.backward(dloss + dh_prev, dc_prev)
    >>> dx.shape, dc_prev.shape, cell.pending_steps, cell.weight_ih.grad.shape
    ((3, 10), (3, 20), 0, (80, 10))""")

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, bias=True, *, dtype: DTypeLike = np.float32,
                 seed=None, peephole=False, proj_size=0):
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed,
                         peephole=peephole, proj_size=proj_size)

    def forward(self, input, hx=None):
        """Returns ``(h', c')``; ``hx`` is None or a tuple ``(h, c)``."""
        x, batched = self._input(input)
        N = x.shape[0]
        if hx is None:
            h0 = c0 = None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h, c) for LSTMCell, got {type(hx).__name__}")
            h0 = self._state(hx[0], "hx[0]", N, batched, self._state_size)
            c0 = self._state(hx[1], "hx[1]", N, batched)
        h, c, ctx = self._step(x, h0, c0)
        self._push(ctx, batched)
        return (h, c) if batched else (h[0], c[0])

    def backward(self, dh, dc=None):
        """Returns ``(dx, (dh_prev, dc_prev))`` for the latest step not yet back-propagated."""
        ctx, batched = self._latest()
        N = ctx.x.shape[1]
        dh = self._grad(dh, "dh", N, batched, self._state_size)
        dc = self._grad(dc, "dc", N, batched)
        backward = F.layernorm_lstm_backward if self._layer_norm else F.lstm_backward
        trains = self._trains()
        dx, dh0, dc0, *dw = backward(ctx, None, dh, dc, weight_grads=trains)
        self._done()
        if trains:  # (frozen: the kernels made no gradient)
            if self._layer_norm:  # dln [10H]: the norms' parameters in order
                dln, offset = dw.pop(), 0
                for param in self._layer_norm_params():
                    param.accumulate_grad(dln[offset:offset + param.data.size])
                    offset += param.data.size
            if self.proj_size:
                self.weight_hr.accumulate_grad(dw.pop())
            if self.peephole:
                self.weight_ph.accumulate_grad(dw.pop())
            self._accumulate(*dw)
        if batched:
            return dx[0], (dh0, dc0)
        return dx[0, 0], (dh0[0], dc0[0])


class LayerNormLSTMCell(LSTMCell):
    """One step of the LayerNorm-LSTM (``fr.nn.LayerNormLSTM``'s cell): layer normalization of
    the input and recurrent pre-activations and of the cell state, fused in the kernel's step::

        a  = g_ih * LN(W_ih x) + b_ih + g_hh * LN(W_hh h) + b_hh     (i, f, g, o)
        c' = f * c + i * g
        h' = o * tanh(g_c * LN(c') + b_c)

    Arguments, inputs, outputs and backward as :class:`LSTMCell`'s (no ``peephole``, no
    ``proj_size``), plus ``eps`` (keyword-only, default 1e-5). Parameters: LSTMCell's four,
    then ``ln_weight_ih`` [4H], ``ln_weight_hh`` [4H], ``ln_weight_c`` [H] (gains, ones at
    first) and ``ln_bias_c`` [H] (zeros), as the layer's ``..._l0``; under autocast an eval-mode
    step runs bfloat16 products, a training one float32.

    >>> import numpy as np, fusedrnn as fr
    >>> cell = fr.nn.LayerNormLSTMCell(10, 20, seed=0)
    >>> h, c = cell(np.ones((3, 10), np.float32))
    >>> dx, (dh_prev, dc_prev) = cell.backward(np.ones_like(h))
    >>> dx.shape, cell.ln_weight_c.grad.shape
    ((3, 10), (20,))
    """

    _layer_norm = True

    def __init__(self, input_size, hidden_size, bias=True, *, eps=1e-5,
                 dtype: DTypeLike = np.float32, seed=None):
        RNNCellBase.__init__(self, input_size, hidden_size, bias, dtype=dtype, seed=seed,
                             eps=eps)
