"""``convert``: swap the ``torch.nn`` recurrent layers of a model for fusedrnn's, same weights."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from . import modules

# torch.nn class -> the adapter (exact types: a user's subclass may change the math).
_REPLACEMENTS = {nn.LSTM: modules.LSTM, nn.GRU: modules.GRU, nn.RNN: modules.RNN,
                 nn.LSTMCell: modules.LSTMCell, nn.GRUCell: modules.GRUCell,
                 nn.RNNCell: modules.RNNCell}


def _why_not(layer) -> str | None:
    """Why the adapter cannot take ``layer`` (None: it can)."""
    weight = next(layer.parameters(), None)
    if weight is not None and weight.device.type == "cuda":
        why = modules.cuda_unavailable()
        if why is not None:
            return f"on {weight.device}: {why}"
    elif weight is not None and weight.device.type != "cpu":
        return f"on {weight.device}"
    if weight is not None and weight.dtype not in (torch.float32, torch.float64):
        return f"dtype {weight.dtype}"
    return None


def _replacement(layer):
    cls = _REPLACEMENTS[type(layer)]
    weight = next(layer.parameters())
    if isinstance(layer, nn.RNNBase):
        kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                      dropout=layer.dropout, bidirectional=layer.bidirectional)
        if isinstance(layer, nn.LSTM) and layer.proj_size:
            kwargs["proj_size"] = layer.proj_size
        if isinstance(layer, nn.RNN):
            kwargs["nonlinearity"] = layer.nonlinearity
    else:
        kwargs = dict(bias=layer.bias)
        if isinstance(layer, nn.RNNCell):
            kwargs["nonlinearity"] = layer.nonlinearity
    with warnings.catch_warnings():  # torch.nn already warned about dropout with one layer
        warnings.simplefilter("ignore", UserWarning)
        new = cls(layer.input_size, layer.hidden_size, dtype=weight.dtype, device=weight.device,
                  **kwargs)
    new.load_state_dict(layer.state_dict())
    new.train(layer.training)
    for p_new, p_old in zip(new.parameters(), layer.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    return new


def convert(module: nn.Module, inplace: bool = True) -> nn.Module:
    """Replace every ``torch.nn.LSTM/GRU/RNN`` (and ``LSTMCell/GRUCell/RNNCell``) in the
    module tree by fusedrnn's module with the same configuration and weights, and return the
    module (the converted layer itself if ``module`` is one). Layers the adapter cannot take
    (another dtype; a GPU where fusedrnn's CUDA kernels cannot run) are left as they are and
    listed in one warning. ``inplace=False`` converts a deep copy and leaves ``module`` untouched.

    Parameters are new ``nn.Parameter`` objects: create the optimizer after converting."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    skipped = []
    if type(module) in _REPLACEMENTS:
        why = _why_not(module)
        if why is None:
            return _replacement(module)
        skipped.append(f"(the module itself): {why}")
    else:
        for name, parent in list(module.named_modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) not in _REPLACEMENTS:
                    continue
                why = _why_not(child)
                if why is None:
                    setattr(parent, child_name, _replacement(child))
                else:
                    skipped.append(f"{name + '.' if name else ''}{child_name}: {why}")
    if skipped:
        warnings.warn("fusedrnn.torch.convert left these layers to torch.nn: " + "; ".join(skipped),
                      UserWarning, stacklevel=2)
    return module
