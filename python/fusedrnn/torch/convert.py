"""``convert``: swap the ``torch.nn`` recurrent layers of a model for fusedrnn's, same weights;
``to_torch_nn``: the way back (for tools that know only torch.nn's layers, such as
``torch.onnx.export``'s TorchScript path)."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .._flags import check_flag
from . import _ops, modules

# torch.nn class -> the adapter (exact types: a user's subclass may change the math).
_REPLACEMENTS = {nn.LSTM: modules.LSTM, nn.GRU: modules.GRU, nn.RNN: modules.RNN,
                 nn.LSTMCell: modules.LSTMCell, nn.GRUCell: modules.GRUCell,
                 nn.RNNCell: modules.RNNCell}
_TORCH_NN = {ours: theirs for theirs, ours in _REPLACEMENTS.items()}


# A module's hooks, forward and backward, and its state_dict's (a converted layer has none of
# the old one's: a checkpoint a load hook renamed the keys of would no longer load).
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
          "_load_state_dict_post_hooks")


def _why_not(layer, mapping, caller) -> str | None:
    """Why ``layer`` cannot be swapped by ``mapping`` (None: it can)."""
    if type(layer) not in mapping:  # a subclass (see _REPLACEMENTS)
        if torch.nn.utils.parametrize.is_parametrized(layer):
            return "parametrized weights (torch.nn.utils.parametrize)"
        base = next(c for c in type(layer).__mro__ if c in mapping)
        return f"{type(layer).__name__}, a subclass of {base.__module__}.{base.__name__} (its " \
               f"forward may differ)"
    expected = (layer._flat_weights_names if hasattr(layer, "_flat_weights_names")
                else ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if layer.bias else []))
    # (its own tensors, read without its state_dict: that would run the user's hooks)
    own = {k for k, p in layer._parameters.items() if p is not None} | set(layer._buffers)
    odd = sorted(own ^ set(expected))
    if odd:
        return (f"parameters or buffers other than its weights ({', '.join(odd[:4])}: pruning, "
                f"weight_norm or buffers of its own)")
    if layer._modules:
        return f"modules of its own ({', '.join(sorted(layer._modules)[:4])})"
    flat = getattr(layer, "_flat_weights", None)  # (a layer's, not a cell's)
    if flat is not None and any(w is not getattr(layer, n, None)
                                for w, n in zip(flat, layer._flat_weights_names)):
        return (f"weights given to its _flat_weights list (a weight-dropping wrapper's: "
                f"{caller} before wrapping)")
    if any(getattr(layer, hooks, None) for hooks in _HOOKS):
        return f"hooks registered on it ({caller} first, then register them on the new module)"
    if mapping is _TORCH_NN:  # torch.nn takes every device and dtype
        return None
    for flag in ("bias", "batch_first", "bidirectional"):  # (torch.nn takes any truthy value)
        value = getattr(layer, flag, False)
        try:
            check_flag(value, flag)
        except TypeError:
            return f"{flag}={value!r} (the adapter takes a bool, or 0 or 1)"
    weight = next(layer.parameters(), None)
    if weight is not None and weight.device.type == "cuda":
        why = modules.cuda_unavailable()
        if why is not None:
            return f"on {weight.device}: {why}"
    elif weight is not None and weight.device.type not in ("cpu", "meta"):
        return f"on {weight.device}"
    if weight is not None and weight.dtype not in (torch.float32, torch.float64):
        return f"dtype {weight.dtype}"
    return None


def _replacement(layer, cls):
    """A ``cls`` with ``layer``'s configuration and mode, holding ``layer``'s own Parameter
    objects (an optimizer made before the swap goes on training them)."""
    weight = next(layer.parameters())
    kwargs = dict(bias=layer.bias)
    if hasattr(layer, "num_layers"):  # a layer, not a cell
        kwargs.update(num_layers=layer.num_layers, batch_first=layer.batch_first,
                      dropout=layer.dropout, bidirectional=layer.bidirectional)
        if getattr(layer, "proj_size", 0):
            kwargs["proj_size"] = layer.proj_size
    if cls in (nn.RNN, nn.RNNCell, modules.RNN, modules.RNNCell):
        kwargs["nonlinearity"] = layer.nonlinearity
    # Built on the meta device, then given the layer's Parameters: no weights drawn (a swap
    # must not move torch's generator: dropout's masks would differ from the unconverted
    # model's from the same seed), and none allocated twice.
    with warnings.catch_warnings():  # the layer being replaced already warned about dropout
        warnings.simplefilter("ignore", UserWarning)
        new = cls(layer.input_size, layer.hidden_size, dtype=weight.dtype, device="meta",
                  **kwargs)
    for name, parameter in layer._parameters.items():  # every name: one Parameter may fill two
        setattr(new, name, parameter)  # (torch.nn's layers keep their flat list in step)
    fresh = vars(type(layer)(1, 1, device="meta"))  # (what its class sets by itself)
    for name, value in vars(layer).items():  # a user's own attributes (a tag, a flag) go along
        if not name.startswith("_") and name not in fresh:
            setattr(new, name, value)
    if any(p.is_meta for p in new.parameters()) != weight.is_meta:
        raise RuntimeError(f"{cls.__name__}: a parameter the swapped layer does not have")
    new.train(layer.training)
    return new


def _swap(module, inplace, mapping, caller):
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if not check_flag(inplace, "inplace"):
        module = copy.deepcopy(module)
    skipped = []
    recurrent = tuple(mapping)
    if isinstance(module, recurrent):
        why = _why_not(module, mapping, caller)
        if why is None:
            return _replacement(module, mapping[type(module)])
        skipped.append(f"(the module itself): {why}")
    else:
        done = {}  # id(layer) -> its replacement: a layer reached by two paths stays one layer
        for name, parent in list(module.named_modules()):
            for child_name, child in list(parent._modules.items()):  # every name, shared or not
                if not isinstance(child, recurrent):
                    continue
                if id(child) not in done:
                    why = _why_not(child, mapping, caller)
                    done[id(child)] = None if why else _replacement(child, mapping[type(child)])
                    if why is not None:
                        skipped.append(f"{name + '.' if name else ''}{child_name}: {why}")
                if done[id(child)] is not None:
                    setattr(parent, child_name, done[id(child)])
    if skipped:
        warnings.warn(f"fusedrnn.torch.{caller} left these layers as they are: "
                      + "; ".join(skipped), UserWarning, stacklevel=3)
    return module


def convert(module: nn.Module, inplace: bool = True) -> nn.Module:
    """Replace every ``torch.nn.LSTM/GRU/RNN`` (and ``LSTMCell/GRUCell/RNNCell``) in the
    module tree by fusedrnn's module with the same configuration and weights, and return the
    module (the converted layer itself if ``module`` is one). A layer reached by several paths
    (shared, tied) becomes one fusedrnn module. Layers the adapter cannot take (another dtype; a
    GPU where fusedrnn's CUDA kernels cannot run; weights rewritten by pruning, weight norm or
    parametrizations; hooks registered on the layer, its state_dict's included; buffers or
    modules of its own; a subclass of torch.nn's layer) are left as they are and listed in one
    warning; a user's plain attributes on a layer go along. ``inplace=False`` converts a deep
    copy and leaves ``module`` untouched.

    The new modules hold the layers' own ``nn.Parameter`` objects: an optimizer made before
    converting goes on training them."""
    return _swap(module, inplace, _REPLACEMENTS, "convert")


def to_torch_nn(module: nn.Module, inplace: bool = True) -> nn.Module:
    """The inverse of :func:`convert`: every fusedrnn.torch layer and cell in the module tree
    becomes ``torch.nn``'s with the same configuration and weights, for tools that know only
    torch.nn's layers (``torch.onnx.export``, quantization, other runtimes). What it cannot
    swap (hooks, rewritten weights, subclasses) is listed in one warning, as by ``convert``."""
    return _swap(module, inplace, _TORCH_NN, "to_torch_nn")


ONNX_HINT = ("this (TorchScript) path cannot see into fusedrnn.torch's layers: export with "
             "dynamo=True (the default; it writes them as ONNX's LSTM/GRU/RNN nodes), or export "
             "fusedrnn.torch.to_torch_nn(model, inplace=False) (torch.nn's layers, the same "
             "weights)")


def _refuse_onnx_export(g, *args):
    raise RuntimeError("torch.onnx.export: " + ONNX_HINT + ". An LSTM with proj_size takes "
                       "neither: " + _ops.NO_ONNX_PROJECTION)


def register_onnx_hint():
    """torch.onnx.export's TorchScript path (dynamo=False) meeting our operator says what to do
    instead of naming an unknown namespace (the dynamo path exports ONNX's own nodes:
    _ops._onnx_nodes)."""
    for op in ("layer_forward", "layer_backward"):
        torch.onnx.register_custom_op_symbolic(f"fusedrnn::{op}", _refuse_onnx_export, 9)
