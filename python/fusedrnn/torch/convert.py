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
    if type(layer) not in _REPLACEMENTS:  # a subclass of torch.nn's (see _REPLACEMENTS)
        if torch.nn.utils.parametrize.is_parametrized(layer):
            return "parametrized weights (torch.nn.utils.parametrize)"
        return f"{type(layer).__name__}, a subclass of torch.nn's (its forward may differ)"
    expected = (layer._flat_weights_names if isinstance(layer, nn.RNNBase)
                else ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if layer.bias else []))
    odd = sorted(set(layer.state_dict()) ^ set(expected))
    if odd:
        return (f"weights rewritten by hooks (state_dict keys {', '.join(odd[:4])}: pruning or "
                f"torch.nn.utils.weight_norm)")
    if any(getattr(layer, hooks, None) for hooks in
           ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")):
        return "hooks registered on it (convert first, then register them on the new module)"
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
    module (the converted layer itself if ``module`` is one). A layer reached by several paths
    (shared, tied) becomes one fusedrnn module. Layers the adapter cannot take (another dtype; a
    GPU where fusedrnn's CUDA kernels cannot run; weights rewritten by pruning, weight norm or
    parametrizations; hooks registered on the layer; a subclass of torch.nn's layer) are left
    as they are and listed in one warning. ``inplace=False`` converts a deep copy and leaves
    ``module`` untouched.

    Parameters are new ``nn.Parameter`` objects: create the optimizer after converting."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    skipped = []
    recurrent = tuple(_REPLACEMENTS)
    if isinstance(module, recurrent):
        why = _why_not(module)
        if why is None:
            return _replacement(module)
        skipped.append(f"(the module itself): {why}")
    else:
        done = {}  # id(layer) -> its replacement: a layer reached by two paths stays one layer
        for name, parent in list(module.named_modules()):
            for child_name, child in list(parent._modules.items()):  # every name, shared or not
                if not isinstance(child, recurrent):
                    continue
                if id(child) not in done:
                    why = _why_not(child)
                    done[id(child)] = _replacement(child) if why is None else None
                    if why is not None:
                        skipped.append(f"{name + '.' if name else ''}{child_name}: {why}")
                if done[id(child)] is not None:
                    setattr(parent, child_name, done[id(child)])
    if skipped:
        warnings.warn("fusedrnn.torch.convert left these layers to torch.nn: " + "; ".join(skipped),
                      UserWarning, stacklevel=2)
    return module
