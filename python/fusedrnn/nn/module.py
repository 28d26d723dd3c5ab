"""The base of every layer: ``Parameter`` (an array and its gradient) and ``Module`` (a tree of
parameters and submodules with PyTorch's names and methods).

Gradients follow PyTorch: ``Parameter.grad`` is None until the first backward, which stores a
fresh array; later backwards add into it (``+=``). ``zero_grad()`` sets it back to None (the
PyTorch default, ``set_to_none=True``) or, with ``set_to_none=False``, fills it with zeros.
Parameter names are dotted paths, ``encoder.weight_ih_l0``, so a PyTorch ``state_dict`` whose
tensors are turned into arrays loads as it is.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Iterator, Tuple

import numpy as np

__all__ = ["Parameter", "Module"]

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter:
    """A trainable array: ``data`` (the values) and ``grad`` (None until a backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data: expected a numpy.ndarray, got {type(data).__name__}")
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def accumulate_grad(self, grad):
        """Add ``grad`` (same shape as ``data``) into ``self.grad``; the first call stores a copy."""
        grad = np.asarray(grad)
        if grad.shape != self.data.shape:
            raise ValueError(f"grad: expected shape {self.data.shape}, got {grad.shape}")
        if self.grad is None:
            self.grad = np.array(grad, dtype=self.data.dtype, copy=True)
        else:
            self.grad += grad

    def zero_grad(self, set_to_none=True):
        if set_to_none or self.grad is None:
            self.grad = None
        else:
            self.grad.fill(0)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def _to_numpy(value, key):
    """A state_dict value as an ndarray: arrays as they are, torch tensors through numpy()."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Parameter):
        return value.data
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    if isinstance(value, (int, float, list, tuple)):
        return np.asarray(value)
    raise TypeError(f"state_dict[{key!r}]: expected an array or a tensor, got {type(value).__name__}")


class Module:
    """A node in a tree of layers. Assigning a ``Parameter`` or a ``Module`` to an attribute
    registers it; ``named_parameters`` walks the tree in registration order."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        modules = self.__dict__.get("_modules")
        if params is None or modules is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"{name}: cannot assign {type(value).__name__} to a parameter "
                                f"(expected a Parameter or None)")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"{name}: cannot assign {type(value).__name__} to a submodule "
                                f"(expected a Module or None)")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: parameters and submodules live in the dicts.
        d = self.__dict__
        if name in d.get("_parameters", ()):
            return d["_parameters"][name]
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{name}: expected a Parameter or None, got {type(param).__name__}")
        self._parameters[name] = param

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{name}: expected a Module or None, got {type(module).__name__}")
        self._modules[name] = module

    # ------------------------------------------------------------------ traversal
    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix=""):
        seen = set()

        def walk(module, pre):
            if id(module) in seen:
                return
            seen.add(id(module))
            yield pre, module
            for name, child in module.named_children():
                yield from walk(child, f"{pre}.{name}" if pre else name)

        yield from walk(self, prefix)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True) -> Iterator[Tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs; a Parameter shared by two modules is listed once."""
        seen = set()
        walker = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in walker:
            for name, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse=True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    # ------------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted name -> a copy of the parameter's array."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (or torch tensors) into the parameters, cast to each parameter's dtype.

        Raises ValueError naming missing or unexpected keys (when ``strict``), a key whose shape
        differs (expected and got), or a key holding NaN or infinity. Nothing is changed unless
        every key passes. Returns ``(missing_keys, unexpected_keys)`` like PyTorch."""
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(f"state_dict: error loading into {type(self).__name__}: "
                             + "; ".join(parts))
        staged = []
        for key, param in own.items():
            if key not in state_dict:
                continue
            value = _to_numpy(state_dict[key], key)
            if value.shape != param.data.shape:
                raise ValueError(f"state_dict[{key!r}]: expected shape {param.data.shape}, "
                                 f"got {value.shape}")
            if value.dtype.kind not in "fiub":
                raise TypeError(f"state_dict[{key!r}]: expected a numeric array, got dtype {value.dtype}")
            value = value.astype(param.data.dtype, copy=False)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"state_dict[{key!r}]: expected finite values, got NaN or infinity")
            staged.append((param, value))
        for param, value in staged:
            param.data[...] = value
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ modes and grads
    def train(self, mode=True):
        """Set training mode on this module and every submodule; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode: expected a bool, got {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient: None (default, as in PyTorch) or zeros."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    # ------------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = []
        for name, child in self.named_children():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {child_repr}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"
