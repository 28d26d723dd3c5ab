"""Drop-in ``torch.nn`` recurrent modules over fusedrnn's kernels.

``RNN``, ``LSTM``, ``GRU`` (and ``RNNCell``, ``LSTMCell``, ``GRUCell``) take exactly
``torch.nn``'s constructor arguments, register the same parameters under the same names in the
same order (so a ``state_dict`` moves both ways unchanged, and the same seed gives the same
initial weights), accept the same inputs (batched or unbatched, ``batch_first``, ``hx``,
``PackedSequence``) and return the same values. Each layer runs as one custom operator
(``fusedrnn::layer_forward``, both directions at once) whose backward is another
(``fusedrnn::layer_backward``), so autograd, ``torch.compile(fullgraph=True)`` and DDP see
ordinary operators. They are deliberately not subclasses of ``torch.nn.LSTM`` & co.: Dynamo
refuses to compile those.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` a float32 layer computes as under
fusedrnn's own bfloat16 autocast (fusedrnn.amp: bfloat16 products with float32 sums, float32
state and gradients) and returns outputs of the dtype torch.nn's layer returns there
(:func:`_autocast_output_dtype`).
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .._flags import check_flag
from . import _ops

_DTYPES = (torch.float32, torch.float64)


class DtypeMismatchError(TypeError, ValueError, RuntimeError):
    """An input or state of another dtype than the parameters': a TypeError, as fusedrnn names
    a wrong type, and the ValueError or RuntimeError ``torch.nn``'s layers and cells raise there,
    so that code catching torch.nn's exception catches ours."""


class ShapeMismatchError(ValueError, RuntimeError):
    """An input or state of a shape the layer cannot take: a ValueError, and the RuntimeError
    ``torch.nn`` raises there."""


class StateFormError(TypeError, ShapeMismatchError):
    """``hx`` not in the form the module takes (a tensor where the LSTMs take a pair (h_0,
    c_0), a tuple of another length): a TypeError, as fusedrnn names a wrong type, and the
    RuntimeError ``torch.nn`` raises there."""


class DeviceMismatchError(ValueError, RuntimeError):
    """An input or state on another device than the parameters': a ValueError, and the
    RuntimeError ``torch.nn`` raises there."""


NO_SCRIPT = ("torch.jit.script: fusedrnn.torch's layers and cells cannot be scripted (their "
             "forward is Python that TorchScript does not compile); torch.jit.trace, "
             "torch.export and torch.compile record their operators, and "
             "fusedrnn.torch.to_torch_nn(model, inplace=False) gives torch.nn's layers (the same "
             "weights) to script")


def _refuse_script(module):
    """torch.jit.script asks every module of a tree for its scriptable form before compiling
    any: ours say what works instead of a TorchScript parse error deep in our forward."""
    raise RuntimeError(NO_SCRIPT)


def cuda_unavailable() -> str | None:
    """Why fusedrnn's CUDA kernels cannot run here (None: they can)."""
    from .. import cuda
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        cuda.kernels()
    except cuda.CudaUnavailableError as exc:
        return str(exc)
    return None


def _check_device(device, what="device"):
    """The kernels run on the CPU, and on CUDA devices where the CUDA backend is built and CuPy
    installed: refuse anything else by name, at construction."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        why = cuda_unavailable()
        if why is not None:
            raise ValueError(f"{what}: got {device}, but fusedrnn's CUDA kernels cannot run "
                             f"here ({why}); use torch.nn's module there")
    elif device.type not in ("cpu", "meta"):  # meta: shapes only (deferred initialisation)
        raise ValueError(f"{what}: fusedrnn.torch runs on the CPU and on CUDA devices (and "
                         f"takes meta tensors for shapes), got {device} (use torch.nn's module "
                         f"there)")


def _check_same_device(t, name, weight):
    """``t`` must be a dense tensor living where the parameters do (the kernels read both as
    plain arrays: a sparse or nested one is refused by name, as torch.nn's cells refuse it)."""
    if t.layout is not torch.strided or t.is_nested:
        raise TypeError(f"{name}: expected a dense tensor (layout torch.strided), got "
                        f"{'a nested tensor' if t.is_nested else f'layout {t.layout}'}")
    if t.device != weight.device:
        raise DeviceMismatchError(f"{name}: expected a tensor on {weight.device} (the "
                                  f"parameters' device), got one on {t.device}")


def _plain_call(input, hx):
    """Whether a call's input and state are plain tensors (None, or a pair for the LSTMs): no
    torch.fx Proxy among them, nothing for :func:`_fx_leaf` to look at (a few type checks:
    every call asks)."""
    if type(input) is not torch.Tensor:
        return False
    return hx is None or type(hx) is torch.Tensor or (
        type(hx) is tuple and len(hx) == 2 and type(hx[0]) is torch.Tensor
        and type(hx[1]) is torch.Tensor)


def _fx_leaf(module, input, hx):
    """Under ``torch.fx.symbolic_trace`` (an argument is a Proxy): the call of ``module`` as one
    node of the graph, as FX records torch.nn's recurrent layers (its default tracer keeps
    modules of torch.nn as leaves and would trace into ours); None for a call on tensors. The
    module traced itself (the root) is refused by name, as torch.nn's layers fail there too."""
    parts = (input, *(hx if isinstance(hx, (tuple, list)) else (hx,)))
    proxy = next((a for a in parts if isinstance(a, torch.fx.Proxy)), None)
    if proxy is None:
        return None
    tracer = proxy.tracer
    path = tracer.path_of_module(module)
    if not path:
        raise TypeError(f"torch.fx.symbolic_trace: a fusedrnn.torch.{type(module).__name__} "
                        f"is recorded as one node of a module that holds it, not traced itself "
                        f"(torch.nn's {type(module).__name__} cannot be traced either)")
    return tracer.create_proxy("call_module", path, (input, hx), {})


def _named_parameters(module, names):
    """The module's parameters of ``names``: registered ones straight from their dict
    (Module.__getattr__ costs about 1 us each, a fifth of a batch-1 call's Python), getattr for
    what replaced one (a pruned or parametrized weight); None for one registered as None."""
    params = module._parameters
    return [params[n] if n in params else getattr(module, n) for n in names]


def _may_need_backward():
    """Whether a call may need its backward (with something requiring grad): grad mode on, or
    under torch.jit.trace, whose graph keeps the answer (a traced model gives gradients as
    torch.nn's does) and whose check runs the module again under no_grad. Under inference_mode
    nothing can be saved for a backward, enable_grad inside it or not (a question Dynamo does
    not trace: compiled code keeps grad mode's answer)."""
    if torch.jit.is_tracing():
        return True
    if not torch.is_grad_enabled():
        return False
    return torch.compiler.is_compiling() or not torch.is_inference_mode_enabled()


def _packed_mask(packed, N):
    """[T, N] bool on the CPU: which (step, sample) of a padded [T, N, ...] tensor in the packed
    batch's sorted order hold its rows (step t: its first batch_sizes[t] samples)."""
    return torch.arange(N).unsqueeze(0) < packed.batch_sizes.unsqueeze(1)


def _meta_rows(mask, x):
    # meta tensors cannot run nonzero (a boolean index): integer indices, made on the CPU
    return mask.flatten().nonzero().squeeze(1).to(x.device)


def _take_packed(packed, x):
    """The packed rows of ``x`` [T, N, ...] (padded in the packed batch's sorted order), in
    packed order."""
    mask = _packed_mask(packed, x.shape[1])
    if x.device.type == "meta":
        return x.flatten(0, 1).index_select(0, _meta_rows(mask, x))
    return x[mask.to(x.device)]


def _put_packed(packed, x, rows):
    """Zeros shaped like ``x`` [T, N, ...] holding ``rows`` where :func:`_take_packed` took
    them."""
    mask = _packed_mask(packed, x.shape[1])
    if x.device.type == "meta":
        flat = torch.zeros_like(x.flatten(0, 1))
        return flat.index_copy(0, _meta_rows(mask, x), rows).view_as(x)
    out = torch.zeros_like(x)
    out[mask.to(x.device)] = rows
    return out


def _check_dtype(dtype):
    if dtype is not None and dtype not in _DTYPES:
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")


def _check_parameters_dtype(dtype):
    """At a call: the parameters may have been cast since construction (``.half()``)."""
    if dtype not in _DTYPES:
        raise TypeError(f"parameters: fusedrnn's kernels take torch.float32 or torch.float64 "
                        f"parameters, got {dtype} (from .half() or .to(); for bfloat16 products "
                        f"keep float32 parameters and use torch.autocast)")


def _autocast_on(device_type):
    """torch.autocast is on for ``device_type`` (only the kernels' devices are asked: torch
    raises for a device type autocast does not know, such as meta)."""
    return device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)


def _under_autocast(t, dtype, device_type):
    """Under ``torch.autocast`` (of the parameters' device type) a half-precision input (from a
    Linear before the layer; a tensor or a PackedSequence) reaches the kernels in the
    parameters' dtype (autograd casts its gradient back)."""
    data = t.data if isinstance(t, PackedSequence) else t
    if (isinstance(data, torch.Tensor) and data.dtype in (torch.bfloat16, torch.float16)
            and data.dtype != dtype and _autocast_on(device_type)):
        return t.to(dtype)
    return t


def _autocast_precision(dtype, device_type):
    """The kernels' precision for a layer of parameters ``dtype`` on ``device_type``:
    "bfloat16" for a float32 layer under ``torch.autocast(device_type, dtype=torch.bfloat16)``;
    else "float32" (float64 layers and float16 autocast compute as without autocast: the
    kernels have no float16 path)."""
    if (dtype == torch.float32 and _autocast_on(device_type)
            and torch.get_autocast_dtype(device_type) == torch.bfloat16):
        return "bfloat16"
    return "float32"


def _autocast_output_dtype(always_bfloat16, carried):
    """The outputs' dtype under bfloat16 autocast: what torch.nn's layer returns there (torch
    2.13), so that ours stays a drop-in. bfloat16 on CUDA (cuDNN's RNNs and the cells are on
    autocast's CUDA list), and on the CPU for the RNN and RNNCell (their last op is autocast's
    bfloat16 GEMM) and the LSTM on a padded input where oneDNN takes it (its oneDNN kernel is on
    autocast's list; ``_lstm_takes_onednn``): ``always_bfloat16``. Elsewhere (GRU, GRUCell,
    LSTMCell, the LSTM on a PackedSequence or on torch's native path) the dtype of the state the
    recurrence carries, ``carried``: the given c_0 of the LSTMs, h_0 of the GRUs, else the input
    (whose dtype torch's zero state takes)."""
    if always_bfloat16 or getattr(carried, "dtype", None) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def _lstm_takes_onednn(input_dtype):
    """Whether torch.nn's LSTM on a padded CPU input takes oneDNN's kernel under bfloat16
    autocast (torch 2.13's use_mkldnn): oneDNN switched on (``torch.backends.mkldnn.enabled``)
    and a float32 input, or a bfloat16 one on a CPU where oneDNN computes bfloat16. Its outputs
    are bfloat16 there; on torch's native path they follow the carried state. (Where oneDNN
    cannot compute bfloat16, torch.nn's LSTM raises on a float32 input; ours runs, in oneDNN's
    dtypes.)"""
    if not torch.backends.mkldnn.enabled:
        return False
    return input_dtype == torch.float32 or (input_dtype == torch.bfloat16
                                            and _onednn_computes_bfloat16())


@functools.cache
def _onednn_computes_bfloat16():
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return True if check is None else bool(check())


class _KeepsWeights(nn.Module):
    """A module whose calls keep forms of its weights (``_ops``): dropped before the weights
    are converted or loaded, where torch may swap each parameter for a new one."""

    def _apply(self, fn, recurse=True):
        self._forget_weights()
        self.__dict__.pop("_flat_weights_kept", None)  # (torch.nn's list is read anew too)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._forget_weights()
        return super()._load_from_state_dict(*args, **kwargs)

    def _forget_weights(self):
        _ops.forget_weights(self.parameters(recurse=False))
        views = self.__dict__.get("_weight_views")  # (a cell's: their storages go too)
        if views is not None:
            views.clear()


class _RecurrentBase(_KeepsWeights):
    """What RNN, LSTM and GRU share: parameters, input forms, the layer loop."""

    _cell = ""
    __prepare_scriptable__ = _refuse_script

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 nonlinearity="tanh"):
        super().__init__()
        _check_device(device)
        _check_dtype(dtype)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if (not isinstance(proj_size, numbers.Integral) or isinstance(proj_size, bool)
                or not 0 <= proj_size < hidden_size):
            raise ValueError(f"proj_size: expected an integer in [0, hidden_size) = "
                             f"[0, {hidden_size}) (0: no projection), got {proj_size!r}")
        if proj_size and self._cell != "lstm":
            raise ValueError(f"proj_size: projections belong to an LSTM, got proj_size="
                             f"{proj_size}")
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", UserWarning)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.mode = {"lstm": "LSTM", "gru": "GRU", "rnn": f"RNN_{nonlinearity.upper()}"}[self._cell]
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        # (flags as fusedrnn takes them everywhere: a string such as "no" is refused, not true)
        self.bias = check_flag(bias, "bias")
        self.batch_first = check_flag(batch_first, "batch_first")
        self.dropout = float(dropout)
        self.bidirectional, self.proj_size = check_flag(bidirectional, "bidirectional"), proj_size
        self.nonlinearity = nonlinearity
        gates = _ops.GATES[self._cell] * hidden_size
        S = proj_size or hidden_size  # the width of h
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_input = input_size if layer == 0 else S * self.num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gates, layer_input)), ("weight_hh", (gates, S))]
                if bias:
                    shapes += [("bias_ih", (gates,)), ("bias_hh", (gates,))]
                if proj_size:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        """2 if bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list:
        """The parameters per layer and direction, as ``torch.nn``'s ``all_weights``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> list:
        """The weights a call uses, in ``_flat_weights_names``' order, as torch.nn's list: read
        from the attributes, and kept until one of them is set anew; a list given to it (a
        weight-dropping wrapper's), or an item set in it, is what calls use till then. A
        conversion (``.to``, ``.double()``), a copy or ``_init_flat_weights()`` reads the
        attributes again."""
        current = _named_parameters(self, self._flat_weights_names)
        kept = self.__dict__.get("_flat_weights_kept")  # (the list, the attributes it follows)
        if kept is None or any(a is not b for a, b in zip(current, kept[1])):
            kept = self.__dict__["_flat_weights_kept"] = (current, list(current))
        return kept[0]

    @_flat_weights.setter
    def _flat_weights(self, weights) -> None:
        weights = weights if isinstance(weights, list) else list(weights)
        if len(weights) != len(self._flat_weights_names):
            raise ValueError(f"_flat_weights: expected {len(self._flat_weights_names)} tensors "
                             f"({', '.join(self._flat_weights_names)}), got {len(weights)}")
        self.__dict__["_flat_weights_kept"] = (
            weights, _named_parameters(self, self._flat_weights_names))

    def _init_flat_weights(self) -> None:
        """Read the weights from the attributes again (torch.nn's)."""
        self.__dict__.pop("_flat_weights_kept", None)

    def __getstate__(self):  # (a copy or pickle reads its attributes anew, as torch.nn's
        state = super().__getstate__()  # does; the kept list may hold non-leaf tensors,
        state = dict(state)              # which deepcopy refuses)
        state.pop("_flat_weights_kept", None)
        return state

    def reset_parameters(self) -> None:
        """uniform(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as
        ``torch.nn`` draws them (same order: the same seed gives the same weights)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Nothing to do (kept so that code written for ``torch.nn`` runs unchanged)."""

    def extra_repr(self) -> str:
        """The constructor arguments that differ from their defaults, as ``torch.nn``'s, and an
        RNN's nonlinearity where it is not tanh (which torch.nn's repr leaves out)."""
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self._cell == "rnn" and self.nonlinearity != "tanh":  # (torch.nn's leaves it out)
            s += ", nonlinearity={nonlinearity}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x, weight):
        """``weight``: the first layer's W_ih (its dtype and device are the parameters')."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor or a PackedSequence, got "
                            f"{type(x).__name__}")
        if x.dtype not in _DTYPES:
            raise DtypeMismatchError(f"input: expected dtype torch.float32 or torch.float64, got "
                                     f"{x.dtype}")
        if x.dtype != weight.dtype:
            raise DtypeMismatchError(f"input: expected dtype {weight.dtype} (the parameters' "
                                     f"dtype), got {x.dtype}")
        _check_same_device(x, "input", weight)
        if x.dim() not in (2, 3):
            raise ShapeMismatchError(f"input: expected 2 (unbatched) or 3 dimensions, got "
                                     f"shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ShapeMismatchError(f"input: expected size {self.input_size} (input_size) in the "
                                     f"last dimension, got shape {tuple(x.shape)}")

    def _check_state(self, h, name, N, batched, width=None):
        expected = (self.num_layers * self.num_directions, N, width or self.hidden_size)
        if not batched:
            expected = (expected[0], expected[2])
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(h).__name__}")
        _check_same_device(h, name, self.weight_ih_l0)
        if tuple(h.shape) != expected:
            raise ShapeMismatchError(f"{name}: expected shape {expected}, got {tuple(h.shape)}")
        if h.dtype != self.weight_ih_l0.dtype:
            raise DtypeMismatchError(f"{name}: expected dtype {self.weight_ih_l0.dtype}, got "
                                     f"{h.dtype}")
        return h if batched else h.unsqueeze(1)

    def _dropout(self, x, packed):
        """Dropout between layers on x [T, N, D*S], drawing from the generator as torch.nn's
        layer does (the same seed, the same masks): over the packed rows of a PackedSequence
        input (``packed``; x padded in its sorted order), else over x."""
        if packed is None:
            return nn.functional.dropout(x, self.dropout, training=True)
        return _put_packed(packed, x, nn.functional.dropout(_take_packed(packed, x),
                                                             self.dropout, training=True))

    def forward(self, input, hx=None):
        """Run every layer and direction; see the class docstring for inputs and outputs."""
        if not _plain_call(input, hx):
            node = _fx_leaf(self, input, hx)
            if node is not None:
                return node
        packed = isinstance(input, PackedSequence)
        lengths = None
        lstm = self._cell == "lstm"
        weights = self._flat_weights
        dtype, device_type = weights[0].dtype, weights[0].device.type
        _check_parameters_dtype(dtype)
        for name, w in zip(self._flat_weights_names[1:], weights[1:]):
            if w.dtype != dtype:  # (one replaced alone: functional_call, .data = w.float())
                raise DtypeMismatchError(f"{name}: expected dtype {dtype} (the dtype of "
                                         f"{self._flat_weights_names[0]}), got {w.dtype}")
        precision = _autocast_precision(dtype, device_type)
        if precision == "bfloat16":  # from the dtypes given, before _under_autocast casts them
            carried = hx[-1] if isinstance(hx, (tuple, list)) and hx else hx
            carried = (input.data if packed else input) if carried is None else carried
            # torch.nn's projected LSTM takes its native path: h (and the output) come from
            # autocast's bfloat16 GEMM, c is the carried state's
            out_dtype = _autocast_output_dtype(
                device_type == "cuda" or self._cell == "rnn" or (lstm and self.proj_size > 0)
                or (lstm and not packed and _lstm_takes_onednn(input.dtype)), carried)
            c_dtype = _autocast_output_dtype(
                device_type == "cuda" or (not packed and not self.proj_size
                                          and _lstm_takes_onednn(input.dtype)), carried)
        input = _under_autocast(input, dtype, device_type)
        if isinstance(hx, (tuple, list)):
            hx = tuple(_under_autocast(h, dtype, device_type) for h in hx)
        else:
            hx = _under_autocast(hx, dtype, device_type)
        if packed:  # padded in the packed (sorted) order: no reordering of the steps' rows
            batch_sizes, sorted_indices = input.batch_sizes, input.sorted_indices
            data = input.data
            if data.dim() != 2 or data.shape[1] != self.input_size:
                raise ShapeMismatchError(f"input: expected a PackedSequence of data [rows, "
                                         f"{self.input_size}] (input_size {self.input_size}), "
                                         f"got data of shape {tuple(data.shape)}")
            if not torch.compiler.is_compiling() and data.shape[0] != int(batch_sizes.sum()):
                # (torch.nn runs such data: on its first rows forward, its last backward)
                raise ShapeMismatchError(f"input: expected a PackedSequence of "
                                         f"{int(batch_sizes.sum())} rows (the sum of its "
                                         f"batch_sizes), got data of {data.shape[0]}")
            x, lengths = torch.nn.utils.rnn.pad_packed_sequence(
                PackedSequence(input.data, batch_sizes))
            self._check_input(x, weights[0])
            batched = True
        else:
            self._check_input(input, weights[0])
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if self.batch_first and batched:
                x = x.transpose(0, 1)
        N = x.shape[1]
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        S = self.proj_size or H  # the width of h
        if hx is None:  # zeros, made where the layers need them (_ops.layer)
            h0 = c0 = None
        elif lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise StateFormError(f"hx: expected a tuple (h_0, c_0) for LSTM, got "
                                     f"{type(hx).__name__}")
            h0 = self._check_state(hx[0], "hx[0] (h_0)", N, batched, S)
            c0 = self._check_state(hx[1], "hx[1] (c_0)", N, batched)
        else:
            h0, c0 = self._check_state(hx, "hx", N, batched), None
        if packed and sorted_indices is not None:  # the states in the packed order too
            h0, c0 = (None if h is None else h.index_select(1, sorted_indices) for h in (h0, c0))
        training = _may_need_backward() and (
            x.requires_grad or (h0 is not None and h0.requires_grad)
            or (c0 is not None and c0.requires_grad) or any(p.requires_grad for p in weights))
        layer_x = x.contiguous()
        h_n, c_n = [], []
        per_direction = (4 if self.bias else 2) + (1 if self.proj_size else 0)
        for layer in range(L):
            if layer > 0 and self.dropout > 0 and self.training:
                layer_x = self._dropout(layer_x, input if packed else None)
            ws = weights[layer * D * per_direction:(layer + 1) * D * per_direction]
            w_ih = ws[0::per_direction]
            w_hh = ws[1::per_direction]
            b_ih = ws[2::per_direction] if self.bias else []
            b_hh = ws[3::per_direction] if self.bias else []
            w_hr = ws[per_direction - 1::per_direction] if self.proj_size else []
            states = slice(layer * D, (layer + 1) * D)
            layer_x, h, c = _ops.layer(
                layer_x, None if h0 is None else h0[states],
                None if c0 is None else c0[states], w_ih, w_hh, b_ih, b_hh, lengths,
                self._cell, self.nonlinearity, training, precision, w_hr)
            h_n.append(h)
            c_n.append(c)
        out = layer_x
        h_n = torch.cat(h_n) if L > 1 else h_n[0]
        c_n = (torch.cat(c_n) if L > 1 else c_n[0]) if lstm else None
        if precision == "bfloat16":
            out, h_n = out.to(out_dtype), h_n.to(out_dtype)
            c_n = c_n.to(c_dtype) if lstm else None
        if packed:
            # the packed layout of the input: step t holds its first batch_sizes[t] samples;
            # the final states back in the batch's own order
            out = PackedSequence(_take_packed(input, out), batch_sizes,
                                 sorted_indices, input.unsorted_indices)
            if input.unsorted_indices is not None:
                h_n = h_n.index_select(1, input.unsorted_indices)
                c_n = c_n.index_select(1, input.unsorted_indices) if lstm else None
        elif not batched:
            out = out.squeeze(1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        elif self.batch_first:
            out = out.transpose(0, 1)
        return (out, (h_n, c_n)) if lstm else (out, h_n)


_LAYER_DOC = """{summary}

A drop-in replacement for :class:`torch.nn.{name}` running fusedrnn's fused kernels:
the same constructor arguments and defaults, parameter names and ``state_dict`` keys, inputs
and outputs (see PyTorch's documentation of ``torch.nn.{name}``; the equations, gate order and
initialisation are the same). Gradients reach the input, the initial state and every
parameter through autograd; double backward is not supported. float32 and float64; CPU
tensors, and CUDA tensors where the CUDA backend is built and CuPy installed (the kernels run on
torch's current stream); under ``torch.autocast(device_type, dtype=torch.bfloat16)`` a float32
layer computes as under ``fusedrnn.autocast`` (bfloat16 products, float32 gradients) and
returns torch.nn's dtypes.

Args:
    input_size, hidden_size, num_layers, {extra_args}bias, batch_first, dropout,
    bidirectional{proj}, device, dtype: as ``torch.nn.{name}``. ``device``: the CPU or a
    CUDA device{proj_note}.

Inputs: input, {hx_in}
    input: [T, N, input_size] ([N, T, input_size] with ``batch_first``), [T, input_size]
    unbatched, or a ``PackedSequence`` (lengths in any order).
    {hx_doc}

Outputs: output, {hx_out}
    output: [T, N, D * hidden_size] (D = 2 if bidirectional), in the input's form (a
    ``PackedSequence`` for a packed input). {hn_doc}

Attributes:
    weight_ih_l[k], weight_hh_l[k], bias_ih_l[k], bias_hh_l[k] (``_reverse`` for the second
    direction): as ``torch.nn.{name}``.

Examples::

    >>> import torch, fusedrnn.torch as frt
    >>> rnn = frt.{name}(10, 20, num_layers=2)
    >>> out, state = rnn(torch.randn(5, 3, 10))
    >>> out.shape
    torch.Size([5, 3, 20])
"""


def _layer_doc(name, summary, lstm=False, nonlinearity=False):
    if lstm:
        hx_in, hx_out = "(h_0, c_0)", "(h_n, c_n)"
        hx_doc = ("h_0, c_0: [num_layers * D, N, hidden_size] (unbatched: without N); zeros "
                  "if not given.")
        hn_doc = "h_n, c_n: the final states, shaped like h_0."
    else:
        hx_in, hx_out = "h_0", "h_n"
        hx_doc = "h_0: [num_layers * D, N, hidden_size] (unbatched: without N); zeros if not given."
        hn_doc = "h_n: the final state, shaped like h_0."
    return _LAYER_DOC.format(
        name=name, summary=summary, extra_args="nonlinearity, " if nonlinearity else "",
        proj=", proj_size" if lstm else "",
        proj_note="; ``proj_size`` as torch.nn.LSTM's (h, h_n and the output proj_size wide)"
        if lstm else "",
        hx_in=hx_in, hx_out=hx_out, hx_doc=hx_doc, hn_doc=hn_doc)


class LSTM(_RecurrentBase):
    __doc__ = _layer_doc("LSTM", "Long short-term memory over a sequence (gates i, f, g, o).",
                         lstm=True)
    _cell = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)


class GRU(_RecurrentBase):
    __doc__ = _layer_doc("GRU", "Gated recurrent unit over a sequence (gates r, z, n; "
                                "n = tanh(W_in x + b_in + r * (W_hn h + b_hn))).")
    _cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        # proj_size: torch.nn's argument order, refused unless 0 (ValueError, as torch.nn's)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)


class RNN(_RecurrentBase):
    __doc__ = _layer_doc("RNN", "Elman RNN over a sequence: h' = act(W_ih x + b_ih + W_hh h + "
                                "b_hh), act tanh or relu.", nonlinearity=True)
    _cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
                 dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, nonlinearity)


# ---------------------------------------------------------------------------- cells
class _CellBase(_KeepsWeights):
    """One step of a cell: the layer operator run over a sequence of one step."""

    _cell = ""
    __prepare_scriptable__ = _refuse_script

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None,
                 nonlinearity="tanh"):
        super().__init__()
        _check_device(device)
        _check_dtype(dtype)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.bias = check_flag(bias, "bias")
        self.nonlinearity = nonlinearity
        gates = _ops.GATES[self._cell] * hidden_size
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty((gates, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gates, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._weight_views = _ops.WeightViews()  # (a decoder's steps: _ops.WeightViews)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """uniform(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as ``torch.nn``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        """The constructor arguments, as ``torch.nn``."""
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self._cell == "rnn" and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def _weights(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh), the biases None without."""
        return _named_parameters(self, ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _step(self, input, h, c):
        """(h', c') of one step; input [N, I] or [I], h and c [N, H] or [H] (None: zeros)."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
        weights = self._weights()
        w_ih = weights[0]
        dtype = w_ih.dtype
        device_type = "cpu" if w_ih.is_cpu else w_ih.device.type  # (is_cpu: a fifth the cost)
        _check_parameters_dtype(dtype)
        for name, w in zip(("weight_hh", "bias_ih", "bias_hh"), weights[1:]):
            if w is not None and w.dtype != dtype:  # (one cast alone: .data = w.float())
                raise DtypeMismatchError(f"{name}: expected dtype {dtype} (weight_ih's), got "
                                         f"{w.dtype}")
        lstm = self._cell == "lstm"
        autocast = _autocast_on(device_type)  # (a decoder's step pays for its casts only there)
        precision = _autocast_precision(dtype, device_type) if autocast else "float32"
        if precision == "bfloat16":
            carried = c if lstm else h
            out_dtype = _autocast_output_dtype(device_type == "cuda" or self._cell == "rnn",
                                               input if carried is None else carried)
        if autocast:
            input, h, c = (_under_autocast(t, dtype, device_type) for t in (input, h, c))
        _check_same_device(input, "input", w_ih)
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise ShapeMismatchError(f"input: expected shape [N, {self.input_size}] or "
                                     f"[{self.input_size}], got {tuple(input.shape)}")
        if input.dtype != dtype:
            raise DtypeMismatchError(f"input: expected dtype {dtype}, got {input.dtype}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        N, H = x.shape[0], self.hidden_size
        states = []
        for s, name in ((h, "hx"), (c, "cx") if lstm else (None, "cx")):
            if s is not None:
                if not isinstance(s, torch.Tensor):
                    raise TypeError(f"{name}: expected a torch.Tensor, got {type(s).__name__}")
                _check_same_device(s, name, w_ih)
                shape = (N, H) if batched else (H,)
                if s.shape != shape:
                    raise ShapeMismatchError(f"{name}: expected shape {shape}, got "
                                             f"{tuple(s.shape)}")
                if s.dtype != dtype:
                    raise DtypeMismatchError(f"{name}: expected dtype {dtype} (the parameters' "
                                             f"dtype), got {s.dtype}")
                s = s if batched else s.unsqueeze(0)
            states.append(s)
        training = _may_need_backward() and (x.requires_grad or any(
            t is not None and t.requires_grad for t in (*states, *weights)))
        eager_cpu = device_type == "cpu" and N and H and not _ops._through_operators(x) \
            and not torch._C._are_functorch_transforms_active()
        if eager_cpu and not training:  # straight to the kernel
            h_new, c_new = _ops.step_now(x, *states, weights, self._cell, self.nonlinearity,
                                         precision, getattr(self, "_weight_views", None))
        else:
            h, c = states  # (zeros where not given; c stays None but for the LSTM)
            h = x.new_zeros((N, H)) if h is None else h
            c = x.new_zeros((N, H)) if lstm and c is None else c
            if eager_cpu:  # the kernels' step and its BPTT, without the layer's lists
                h_new, c_new = _ops.cell_step(x, h, c, weights, self._cell, self.nonlinearity,
                                              precision, getattr(self, "_weight_views", None))
            else:  # the layer's path (compile, trace, transforms, CUDA): one step's sequence
                biases = ([weights[2]], [weights[3]]) if self.bias else ([], [])
                _, h_new, c_new = _ops.layer(
                    x.unsqueeze(0).contiguous(), h.unsqueeze(0),
                    c.unsqueeze(0) if lstm else x.new_empty((0,)), [w_ih], [weights[1]],
                    *biases, None, self._cell, self.nonlinearity, training, precision)
                h_new, c_new = h_new[0], c_new[0] if lstm else None
        if precision == "bfloat16":
            h_new, c_new = h_new.to(out_dtype), c_new.to(out_dtype) if lstm else None
        if not batched:
            h_new, c_new = h_new[0], c_new[0] if lstm else None
        return h_new, c_new


class LSTMCell(_CellBase):
    """One LSTM step, a drop-in replacement for :class:`torch.nn.LSTMCell` on fusedrnn's kernel.

    Args: input_size, hidden_size, bias, device (the CPU or CUDA), dtype: as ``torch.nn.LSTMCell``.

    Inputs: input [N, input_size] or [input_size]; hx = (h_0, c_0), each [N, hidden_size] (or
    unbatched [hidden_size]); zeros if None.

    Outputs: (h_1, c_1), shaped like h_0.

    Attributes: weight_ih [4*hidden_size, input_size], weight_hh [4*hidden_size, hidden_size],
    bias_ih, bias_hh [4*hidden_size], as ``torch.nn.LSTMCell``.

    Examples::

        >>> import torch, fusedrnn.torch as frt
        >>> h, c = frt.LSTMCell(10, 20)(torch.randn(3, 10))
        >>> h.shape
        torch.Size([3, 20])
    """

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input, hx=None):
        """(h_1, c_1) after one step from ``hx = (h_0, c_0)``."""
        if not _plain_call(input, hx):
            node = _fx_leaf(self, input, hx)
            if node is not None:
                return node
        if hx is None:
            return self._step(input, None, None)
        # a pair of tensors; as torch.nn, an unbatched input's pair may come as one [2, H]
        batched = not isinstance(input, torch.Tensor) or input.dim() != 1
        if not isinstance(hx, (tuple, list, torch.Tensor)):
            raise TypeError("hx: expected a tuple (h_0, c_0) of two tensors, got "
                            f"{type(hx).__name__}")
        if isinstance(hx, torch.Tensor) and batched:
            raise StateFormError("hx: expected a tuple (h_0, c_0) of two tensors, got a tensor "
                                 f"of shape {tuple(hx.shape)}")
        if len(hx) != 2:
            raise StateFormError(f"hx: expected two hidden states (h_0, c_0), got {len(hx)}")
        h, c = hx
        return self._step(input, h, c)


class GRUCell(_CellBase):
    """One GRU step, a drop-in replacement for :class:`torch.nn.GRUCell` on fusedrnn's kernel.

    Args: input_size, hidden_size, bias, device (the CPU or CUDA), dtype: as ``torch.nn.GRUCell``.

    Inputs: input [N, input_size] or [input_size]; hx [N, hidden_size] (or [hidden_size]);
    zeros if None.

    Outputs: h_1, shaped like hx.

    Attributes: weight_ih [3*hidden_size, input_size], weight_hh [3*hidden_size, hidden_size],
    bias_ih, bias_hh [3*hidden_size], as ``torch.nn.GRUCell``.

    Examples::

        >>> import torch, fusedrnn.torch as frt
        >>> frt.GRUCell(10, 20)(torch.randn(3, 10)).shape
        torch.Size([3, 20])
    """

    _cell = "gru"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input, hx=None):
        """h_1 after one step from ``hx``."""
        if not _plain_call(input, hx):
            node = _fx_leaf(self, input, hx)
            if node is not None:
                return node
        return self._step(input, hx, None)[0]


class RNNCell(_CellBase):
    """One Elman RNN step (tanh or relu), a drop-in replacement for :class:`torch.nn.RNNCell`.

    Args: input_size, hidden_size, bias, nonlinearity, device (the CPU or CUDA), dtype: as
    ``torch.nn.RNNCell``.

    Inputs: input [N, input_size] or [input_size]; hx [N, hidden_size] (or [hidden_size]);
    zeros if None.

    Outputs: h_1, shaped like hx.

    Attributes: weight_ih [hidden_size, input_size], weight_hh [hidden_size, hidden_size],
    bias_ih, bias_hh [hidden_size], as ``torch.nn.RNNCell``.

    Examples::

        >>> import torch, fusedrnn.torch as frt
        >>> frt.RNNCell(10, 20, nonlinearity="relu")(torch.randn(3, 10)).shape
        torch.Size([3, 20])
    """

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None):
        super().__init__(input_size, hidden_size, bias, device, dtype, nonlinearity)

    def forward(self, input, hx=None):
        """h_1 after one step from ``hx``."""
        if not _plain_call(input, hx):
            node = _fx_leaf(self, input, hx)
            if node is not None:
                return node
        return self._step(input, hx, None)[0]
