"""The base of every layer: ``Parameter`` (an array and its gradient) and ``Module`` (a tree of
parameters and submodules with PyTorch's names and methods).

Gradients follow PyTorch: ``Parameter.grad`` is None until the first backward, which stores a
fresh array; later backwards add into it (``+=``). ``zero_grad()`` sets it back to None (the
PyTorch default, ``set_to_none=True``) or, with ``set_to_none=False``, fills it with zeros.
Parameter names are dotted paths, ``encoder.weight_ih_l0``, so a PyTorch ``state_dict`` whose
tensors are turned into arrays loads as it is.

Devices: a parameter holds a NumPy array (device "cpu") or a CuPy array (device "cuda", for the
layers that run on the CUDA backend: RNN, LSTM, GRU). ``Module.to("cuda")`` / ``.to("cpu")``
move every parameter (and gradient); ``state_dict()`` always returns NumPy copies (as PyTorch's
``.cpu()``), and ``load_state_dict`` takes NumPy arrays, CuPy arrays or torch tensors on any device.
"""
from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import weakref
from collections import OrderedDict, namedtuple
from typing import Iterator, Tuple

import numpy as np

from .. import _C
from .._flags import check_flag
from ..functional import check_unmasked

__all__ = ["Parameter", "Module"]

DEVICES = ("cpu", "cuda")


def is_device_array(value) -> bool:
    """True for a CUDA array (CuPy, or anything exposing ``__cuda_array_interface__``)."""
    return not isinstance(value, np.ndarray) and hasattr(value, "__cuda_array_interface__")


def check_device(device, name="device") -> str:
    """'cpu' or 'cuda' (TypeError/ValueError naming the argument otherwise)."""
    if type(device).__name__ == "device" and hasattr(device, "type"):  # a torch.device
        device = str(device)
    if isinstance(device, (type, np.dtype)) or type(device).__name__ == "dtype":
        raise TypeError(f"{name}: expected 'cpu' or 'cuda', got the dtype {device!r}: to() moves "
                        f"between devices only; for another dtype build the module with "
                        f"dtype=... and give it this one's state_dict() (load_state_dict "
                        f"converts the arrays)")
    if not isinstance(device, str):
        raise TypeError(f"{name}: expected 'cpu' or 'cuda', got {type(device).__name__}")
    if device.startswith("cuda:"):  # (torch's spelling: a device index)
        raise ValueError(f"{name}: expected 'cpu' or 'cuda', got {device!r}: fusedrnn runs on "
                         f"CuPy's current device; pass 'cuda' and choose the GPU with "
                         f"cupy.cuda.Device(index).use()")
    if device not in DEVICES:
        raise ValueError(f"{name}: expected 'cpu' or 'cuda', got {device!r}")
    return device


def array_module(device):
    """NumPy for 'cpu'; CuPy for 'cuda' (fusedrnn.cuda.CudaUnavailableError when the CUDA
    backend is not built or CuPy is missing)."""
    if check_device(device) == "cpu":
        return np
    from .. import cuda
    return cuda.array_module()


def to_host(value):
    """A NumPy array of a NumPy or CUDA array (a copy for a CUDA array)."""
    if isinstance(value, np.ndarray):
        return value
    if is_device_array(value):
        if hasattr(value, "get"):  # CuPy
            return value.get()
        from .. import cuda
        return cuda.as_cupy(value).get()
    return np.asarray(value)


def to_device(value, device):
    """``value`` (NumPy or CUDA array) on ``device``: NumPy for 'cpu', CuPy for 'cuda'."""
    if device == "cpu":
        return to_host(value)
    xp = array_module(device)
    if isinstance(value, xp.ndarray):
        return value
    if is_device_array(value):
        from .. import cuda
        return cuda.as_cupy(value)
    return xp.asarray(value)

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


# Parameter versions: one counter for the process, so that a version never repeats, even for
# a new Parameter in the place of an old one. It starts at a random 64-bit number (and again in
# a forked child), so that versions that come by pickle from another process, or from the parent
# before a fork, never meet the ones this process hands out: an unpickled layer's kept pack
# could otherwise match the versions of weights written since.
def _new_version_counter():
    return itertools.count(int.from_bytes(os.urandom(8), "little"))


_versions = _new_version_counter()


def _renew_version_counter():
    global _versions
    _versions = _new_version_counter()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_version_counter)


def any_requires_grad(params):
    """Whether any of ``params`` (Parameters; None passed by) requires its gradient."""
    return any(p is not None and p.requires_grad for p in params)


class StateDictError(ValueError, RuntimeError):
    """``load_state_dict``'s refusal of keys or shapes: a ValueError, and a RuntimeError as
    torch.nn raises one (code written for torch catches it)."""


class Parameter:
    """A trainable array: ``data`` (the values) and ``grad`` (None until a backward).

    ``version`` moves whenever ``data`` is handed out or replaced, either of which may change the
    values (``p.data -= step``, ``p.data[...] = v``, an optimizer step, ``load_state_dict``).
    The layers (between inference calls) and the cells (between steps) keep their packed
    weights only while the versions of their weights stand still and nobody else holds the
    arrays (``KeptWeights``), so a kept form can never be stale."""

    __slots__ = {"_data": "The values (read through ``data``).",
                 "_grad": "See ``grad``.",
                 "_version": "See ``version``.",
                 "_written": "The version of the last known write: a new ``data``, an "
                             "optimizer's step, ``load_state_dict`` (``mark_written``).",
                 "_requires_grad": "See ``requires_grad``."}

    def __init__(self, data, requires_grad=True):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad

    def __getstate__(self):  # (slots: every pickle protocol, 0 and 1 too)
        # hands ``data`` out as reading it does (copy.copy's Parameter shares the array and
        # may write into it): the version moves
        self._version = next(_versions)
        slots = [k for cls in type(self).__mro__ for k in cls.__dict__.get("__slots__", ())
                 if k not in ("__dict__", "__weakref__")]  # (a subclass's own slots too)
        state = {k: getattr(self, k) for k in slots if hasattr(self, k)}
        return {**getattr(self, "__dict__", {}), **state}

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (a pickle of a release before __getstate__: the slots
            state = state[1] or {}    # come as (None, {slot: value}))
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def __array__(self, dtype=None, copy=None):
        """NumPy reads a Parameter as its ``data`` (``np.asarray(p)``, ``np.sum(p)``), as torch
        reads a tensor: a view, so it counts as reading ``data`` (``version`` moves). A CUDA
        parameter's data is refused by NumPy, as a CuPy array is."""
        data = self.data
        if is_device_array(data):
            raise TypeError("a CUDA Parameter's data is a CuPy array: NumPy cannot read it "
                            "implicitly (use cupy.asnumpy(p.data), or p.to('cpu'))")
        if copy:
            return np.array(data, dtype=dtype, copy=True)
        if dtype is not None and np.dtype(dtype) != data.dtype:
            if copy is False:  # (NumPy 2's protocol: no copy asked, none possible)
                raise ValueError(f"a Parameter of dtype {data.dtype} read as {np.dtype(dtype)} "
                                 f"needs a copy, and copy=False was asked")
            return data.astype(dtype)
        return data

    @property
    def data(self):
        """The values: a NumPy array (device 'cpu') or a CuPy array ('cuda'). Reading it counts
        as a possible change (the caller may write into it): it moves ``version``."""
        self._version = next(_versions)
        return self._data

    @data.setter
    def data(self, value):
        if not isinstance(check_unmasked(value, "data"), np.ndarray) and \
                not is_device_array(value):
            raise TypeError(f"data: expected a numpy.ndarray (or a CuPy array), "
                            f"got {type(value).__name__}")
        if value.dtype.kind != "f":  # (as torch: only these can have gradients and train)
            raise TypeError(f"data: a Parameter holds floating-point values, got {value.dtype}")
        self._data = value
        self._version = self._written = next(_versions)

    def mark_written(self):
        """Say that ``data`` was written in place (the optimizers' steps, ``load_state_dict``,
        ``reset_parameters`` and ``fusedrnn.distributed.broadcast_parameters`` do): a backward
        whose forward ran before it refuses to mix the new values with the old activations
        (:func:`check_unwritten`). A write through ``p.data[...] = v`` of your own is not seen
        unless you call it."""
        self._version = self._written = next(_versions)

    @property
    def requires_grad(self):
        """False for a frozen parameter: backward adds nothing to its ``grad`` (it stays None
        from ``zero_grad()`` on, so optimizers and ``clip_grad_norm_`` pass it by), as torch's
        ``requires_grad=False``. Set it, or call ``requires_grad_`` (here or on a module)."""
        return getattr(self, "_requires_grad", True)  # (a pickle of a release before: True)

    @requires_grad.setter
    def requires_grad(self, value):
        self._requires_grad = check_flag(value, "requires_grad")

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` (False freezes the parameter); returns self."""
        self.requires_grad = requires_grad
        return self

    @property
    def grad(self):
        """The accumulated gradient, shaped like ``data``; None until the first backward (and
        after ``zero_grad()``). An array of another shape is refused, as torch refuses one
        (another dtype is taken: the optimizers compute in the parameter's)."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None and hasattr(self, "_data"):
            if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                raise TypeError(f"grad: expected an array or None, got {type(value).__name__}")
            if tuple(value.shape) != self._data.shape:
                raise ValueError(f"grad: expected shape {self._data.shape} (data's), got "
                                 f"{tuple(value.shape)}")
        self._grad = value

    @property
    def version(self):
        """A number that changes whenever ``data`` may have changed (see the class)."""
        return self._version

    def unchanged_since(self, version, known=0):
        """True when ``data`` is exactly as it was at ``version``: the version stands still and
        no reference to the array exists outside this parameter (a view or a name kept from an
        earlier ``p.data`` could write into it unseen), but for ``known`` references that the
        caller holds itself and never writes through. CPU arrays only."""
        return self._version == version and _unshared(self, known)

    @property
    def device(self):
        """'cpu' (NumPy data) or 'cuda' (CuPy data)."""
        return "cpu" if isinstance(self._data, np.ndarray) else "cuda"

    def to(self, device):
        """Move ``data`` and ``grad`` to ``device`` ('cpu' or 'cuda') in place; returns self."""
        device = check_device(device)
        if device != self.device:
            self.data = to_device(self._data, device)
            if self.grad is not None:
                self.grad = to_device(self.grad, device)
        return self

    @property
    def shape(self):
        """``data.shape``."""
        return self._data.shape

    @property
    def dtype(self):
        """``data.dtype``."""
        return self._data.dtype

    def writable_data(self):
        """``data`` for a write in place (``load_state_dict``, an optimizer's step,
        ``vector_to_parameters``): a read-only NumPy array (np.load's mmap_mode="r", a
        broadcast) is replaced first by a writable copy, which the write then changes."""
        if isinstance(self._data, np.ndarray) and not self._data.flags.writeable:
            self.data = np.array(self._data, order="C")
        return self._data

    def accumulate_grad(self, grad):
        """Add ``grad`` (same shape as ``data``) into ``self.grad``; the first call stores a copy.
        A frozen parameter (``requires_grad`` False) takes nothing."""
        if isinstance(self._data, np.ndarray):
            grad = np.asarray(check_unmasked(grad, "grad"))
        else:
            grad = to_device(grad, "cuda")
        if grad.shape != self._data.shape:
            raise ValueError(f"grad: expected shape {self._data.shape}, got {grad.shape}")
        if not self.requires_grad:
            return
        if self.grad is not None and self.grad.shape != self._data.shape:  # (data replaced)
            raise ValueError(f"grad: the gradient held has shape {self.grad.shape}, data now "
                             f"{self._data.shape} (zero_grad() first, set_to_none=True)")
        if self.grad is None:
            self.grad = grad.astype(self._data.dtype, copy=True)
        else:
            self.grad += grad

    def zero_grad(self, set_to_none=True):
        """Clear ``grad``: set it to None (default, as in PyTorch) or, with
        ``set_to_none=False``, fill an existing gradient with zeros."""
        if check_flag(set_to_none, "set_to_none") or self.grad is None:
            self.grad = None
        else:
            self.grad.fill(0)

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype}{frozen})"


# The modules whose train() runs in this thread now (Module.train: a cycle is set once).
_modes_being_set = threading.local()


def user_stacklevel():
    """The ``stacklevel`` of the warning's caller's first frame outside fusedrnn (for
    ``warnings.warn`` called by the function that calls this): a warning names the user's
    line, whatever wrappers (Module.__call__, constructors calling constructors) ran between."""
    package = __name__.split(".")[0] + "."
    frame, level = sys._getframe(2), 2
    while frame is not None and (frame.f_globals.get("__name__") or "").startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def as_gradient(value, name, dtype=None):
    """A gradient handed to a module's backward as an array of ``dtype`` (numbers convert, as
    NumPy converts them; None: the array's own dtype); TypeError naming ``name`` for what is no
    real numbers: complex (its imaginary part would be dropped), objects (None would become
    NaN), strings, bools, ragged lists."""
    wanted = "" if dtype is None else f" ({np.dtype(dtype)})"
    check_unmasked(value, name)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:  # ragged
        raise TypeError(f"{name}: expected an array of real numbers{wanted}, got a "
                        f"{type(value).__name__} NumPy cannot read as one ({e})") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected an array of real numbers{wanted}, got dtype "
                        f"{array.dtype}")
    return array if dtype is None else array.astype(dtype, copy=False)


def check_parameter(owner, name, p, shape, dtype=None):
    """Raise where ``p``, ``owner``'s Parameter ``name``, is None or has another shape than
    ``shape`` (or another dtype than ``dtype``, where given), naming the key and the module."""
    if p is None:
        raise TypeError(f"{name}: expected a Parameter of shape {shape}, got None")
    if p._data.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} for {type(owner).__name__}"
                         f"({owner.extra_repr()}), got {p._data.shape}")
    if dtype is not None and p._data.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the module's dtype), got "
                        f"{p._data.dtype}")


def checked_weights(owner, params, names, shapes):
    """``params``, the Parameters (w_ih, w_hh, b_ih, b_hh; None for a missing bias) of
    ``owner`` named ``names``, checked against the module's sizes (``shapes``) and dtype before
    any call, so that an error names the key and the shape the module expects (the functional
    API's checks can only read H off w_hh): a weight of another shape or dtype, a weight set to
    None, one bias of a pair set to None. (A cell runs this every step: the common case is one
    expression.)"""
    w_ih, w_hh, b_ih, b_hh = params
    dtype = owner.dtype
    try:
        if (w_ih._data.shape == shapes[0] and w_hh._data.shape == shapes[1]
                and w_ih._data.dtype == dtype and w_hh._data.dtype == dtype
                and ((b_ih is None and b_hh is None)
                     or (b_ih._data.shape == shapes[2] and b_hh._data.shape == shapes[3]
                         and b_ih._data.dtype == dtype and b_hh._data.dtype == dtype))):
            return params
    except AttributeError:  # (a None among them: named below)
        pass
    for p, name, shape in zip(params, names, shapes):
        if p is not None or not (name is None or name.startswith("bias")):
            check_parameter(owner, name, p, shape, dtype)
    if (b_ih is None) != (b_hh is None):
        missing = names[2] if b_ih is None else names[3]
        raise ValueError(f"{names[2]}, {names[3]}: give both biases or neither "
                         f"(bias=False at construction for none); {missing} is None")
    return params


def write_stamp(module, recurse=False):
    """The last known writes of ``module``'s own parameters (``recurse``: its children's too),
    taken at a training-mode forward for :func:`check_unwritten` at its backward."""
    # (getattr: a Parameter unpickled from a release before the slot has none: 0)
    params = module.parameters() if recurse else \
        (p for p in module._parameters.values() if p is not None)
    return tuple(getattr(p, "_written", 0) for p in params)


def check_unwritten(module, stamp, method="backward", recurse=False,
                    advice="after the forward whose activations this backward uses; take the "
                           "optimizer step after backward, or run the forward again"):
    """Raise when a parameter was written (an optimizer's step, ``load_state_dict``, a new
    ``data``) since ``stamp`` was taken at the forward whose activations a backward would use:
    its gradients would mix the new values with the old activations (torch raises there too).
    ``advice``: what the error says after "a parameter was written (...)"."""
    if stamp != write_stamp(module, recurse):
        raise RuntimeError(f"{type(module).__name__}.{method}: a parameter was written (an "
                           f"optimizer step, load_state_dict or a new data array) {advice}")


def _references_to_data(holder):
    array = holder._data
    return sys.getrefcount(array)


# What _references_to_data counts for an array held by one slot alone (the interpreter's own
# references included), measured once rather than assumed for each Python version.
class _Holder:
    __slots__ = ("_data",)


_holder = _Holder()
_holder._data = np.zeros(1)
_ALONE = _references_to_data(_holder)
del _holder


def _unshared(holder, known=0):
    """True when ``holder._data`` is a NumPy array that owns its memory and that nothing but
    ``holder`` (and ``known`` references of the caller's own) refers to (no name, view,
    memoryview or tensor shares it)."""
    array = holder._data
    if not isinstance(array, np.ndarray) or array.base is not None \
            or weakref.getweakrefcount(array):  # (a weak reference writes unseen too)
        return False
    del array
    return _references_to_data(holder) <= _ALONE + known


def _zero_bias(w_hh):
    """The zeros that stand for a missing bias of a layer whose W_hh is ``w_hh`` (a cache
    serves fixed arrays: the binding's own zeros would be new ones every call)."""
    return np.zeros(w_hh.shape[0], w_hh.dtype)


class KeptWeights(dict):
    """Key (a layer direction; 0 for a cell) -> (weight versions, fusedrnn._C.WeightCache, zeros
    for a missing bias or None): the packed (and bfloat16) forms of a module's weights kept
    between kernel calls, renewed whenever a weight's version moves, and none while anyone else
    holds a weight's array (they could write into it unseen). ``held`` counts, per array id,
    the references the module's own saved step contexts hold (a cell's steps waiting for their
    backward): they only read. The forms belong to these arrays: a copy starts empty."""

    def __init__(self):
        super().__init__()
        self.held = {}

    def __copy__(self):
        return KeptWeights()

    def __deepcopy__(self, memo):
        return KeptWeights()

    def __reduce__(self):
        return (KeptWeights, ())

    def hold(self, arrays):
        """Count a saved context's references to ``arrays`` (see ``held``)."""
        for a in arrays:
            self.held[id(a)] = self.held.get(id(a), 0) + 1

    def release(self, arrays):
        """Forget what ``hold(arrays)`` counted (the context is dropped)."""
        for a in arrays:
            n = self.held.get(id(a), 0) - 1
            if n > 0:
                self.held[id(a)] = n
            else:
                self.held.pop(id(a), None)

    def cache(self, k, params):
        """The WeightCache of key k for ``params`` (w_ih, w_hh, b_ih, b_hh Parameters, a bias
        None where there is none), or None: the call packs its own. A new one whenever a weight
        may have changed."""
        present = [p for p in params if p is not None]
        versions = tuple(p._version for p in present)
        held = self.held
        for p, v in zip(present, versions):  # (a plain loop: a cell runs this every step)
            if not p.unchanged_since(v, held.get(id(p._data), 0) if held else 0):
                self.pop(k, None)
                return None
        kept = self.get(k)
        if kept is None or kept[0] != versions:
            no_bias = _zero_bias(present[1]) if len(present) == 2 else None
            kept = self[k] = (versions, _C.WeightCache(), no_bias)
        return kept[1]

    def weights(self, k, params, keep=True):
        """The four weight arrays of a kernel call from ``params`` (a bias None where there is
        none) and, with ``keep``, key k's kept cache, or a new one for this call alone where
        none can be kept (the kernels plan by whether a cache is passed, never by whether it is
        kept: the same bits either way); else None. With a kept cache a missing bias is the
        cache's own zeros: it serves fixed arrays."""
        # (the check first: naming the arrays here makes references it would count)
        cache = self.cache(k, params) if keep else None
        w = [None if p is None else p._data for p in params]
        if keep and cache is None:
            cache = _C.WeightCache()  # this call's alone
            if w[2] is None:
                w[2] = w[3] = _zero_bias(w[1])
        elif cache is not None and w[2] is None:
            w[2] = w[3] = self[k][2]
        return w, cache


def _to_numpy(value, key):
    """A state_dict value as an ndarray: arrays as they are, torch tensors through numpy()."""
    if isinstance(value, np.ndarray):
        return check_unmasked(value, f"state_dict[{key!r}]")
    if isinstance(value, Parameter):
        return to_host(value.data)
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # (NumPy has no bfloat16: its exact float32)
            value = value.float()
        try:
            return value.numpy()
        except (TypeError, RuntimeError) as error:
            raise TypeError(f"state_dict[{key!r}]: a tensor NumPy cannot hold ({value.dtype}): "
                            f"{error}") from None
    if is_device_array(value):  # CuPy and other CUDA arrays
        return to_host(value)
    if isinstance(value, (int, float, list, tuple)):
        return np.asarray(value)
    raise TypeError(f"state_dict[{key!r}]: expected an array or a tensor, got {type(value).__name__}")


def _counting_runs(forward):
    """``forward`` counting its runs in the module's ``_runs`` (a call from inside another
    counts once: a subclass's forward calling its base's), so that a Sequential sees a module
    it reaches from two places run twice in one forward, through __call__ or .forward alike."""
    @functools.wraps(forward)
    def counted(self, *args, **kwargs):
        state = self.__dict__
        if state.get("_in_forward"):
            return forward(self, *args, **kwargs)
        state["_runs"] = state.get("_runs", 0) + 1
        state["_in_forward"] = True
        try:
            return forward(self, *args, **kwargs)
        finally:
            state["_in_forward"] = False
    counted.counts_runs = True
    return counted


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
            if isinstance(value, (Parameter, Module)):  # (plain values may come first, as torch)
                raise AttributeError(f"{name}: call Module.__init__() before assigning "
                                     f"parameters and submodules")
            object.__setattr__(self, name, value)
            return
        if isinstance(value, Parameter):
            self._register(name, value, "_parameters")
        elif name in params:  # (before a Module: one does not replace a parameter, as torch)
            if value is not None:
                raise TypeError(f"{name}: cannot assign {type(value).__name__} to a parameter "
                                f"(expected a Parameter or None)")
            self._register(name, None, "_parameters")
        elif isinstance(value, Module):
            self._register(name, value, "_modules")
        elif name in modules:
            if value is not None:
                raise TypeError(f"{name}: cannot assign {type(value).__name__} to a submodule "
                                f"(expected a Module or None)")
            self._register(name, None, "_modules")
        else:
            object.__setattr__(self, name, value)

    def _register(self, name, value, table):
        """``value`` under ``name`` in ``table`` ("_parameters" or "_modules"), out of the
        other, and in the instance's __dict__ too: reading the attribute is then a plain
        lookup (through __getattr__ it cost ~0.8 us, a dozen times per decoder step)."""
        d = self.__dict__
        d["_modules" if table == "_parameters" else "_parameters"].pop(name, None)
        d[table][name] = value
        d[name] = value

    def __getattr__(self, name):
        # Only called when normal lookup fails: registered names are in __dict__ too, so this
        # serves objects unpickled from a version that kept them in the two dicts alone.
        d = self.__dict__
        if name in d.get("_parameters", ()):
            return d["_parameters"][name]
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
            self.__dict__.pop(name, None)
        elif name in self._modules:
            del self._modules[name]
            self.__dict__.pop(name, None)
        else:
            object.__delattr__(self, name)

    def _check_name(self, name, table):
        """KeyError, as torch.nn's, for a name that would hide something: empty, dotted (state
        dict keys are dotted paths) or an attribute other than an entry of ``table`` (a method,
        a setting, a submodule's name given to a parameter or the other way)."""
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"name: expected a non-empty name without '.', got {name!r}")
        if hasattr(self, name) and name not in getattr(self, table):
            raise KeyError(f"name: attribute {name!r} already exists")

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None for an absent one such as ``bias=False``)
        under ``name``; the same as assigning it to the attribute, but for a name that is
        already another attribute (KeyError, as torch.nn)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{name}: expected a Parameter or None, got {type(param).__name__}")
        self._check_name(name, "_parameters")
        self._register(name, param, "_parameters")

    def get_submodule(self, target):
        """The submodule at the dotted path ``target`` ("" is this module), as torch.nn's;
        AttributeError naming the part that is missing or no module."""
        if not isinstance(target, str):
            raise TypeError(f"target: expected a str, got {type(target).__name__}")
        module, path = self, []
        for part in target.split(".") if target else []:
            path.append(part)
            if not isinstance(module._modules.get(part), Module):
                raise AttributeError(f"target: {'.'.join(path)!r} is not a submodule of "
                                     f"{type(self).__name__}")
            module = module._modules[part]
        return module

    def get_parameter(self, target):
        """The Parameter at the dotted path ``target`` ("lstm.weight_hh_l0"), as torch.nn's;
        AttributeError where there is none."""
        if not isinstance(target, str):
            raise TypeError(f"target: expected a str, got {type(target).__name__}")
        owner, _, name = target.rpartition(".")
        param = self.get_submodule(owner)._parameters.get(name)
        if param is None:
            raise AttributeError(f"target: {target!r} is not a parameter of "
                                 f"{type(self).__name__}")
        return param

    def register_module(self, name, module):
        """``add_module`` (torch.nn's other name for it)."""
        self.add_module(name, module)

    def add_module(self, name, module):
        """Register ``module`` (a Module, or None) as the submodule ``name``; the same as
        assigning it to the attribute, but for a name that is already another attribute
        (KeyError, as torch.nn)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{name}: expected a Module or None, got {type(module).__name__}")
        self._check_name(name, "_modules")
        self._register(name, module, "_modules")

    # ------------------------------------------------------------------ traversal
    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        """(name, module) pairs of the direct submodules in registration order (None ones
        skipped; one held under two names listed once, as torch.nn)."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator["Module"]:
        """The direct submodules in registration order."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(dotted name, module) pairs of this module (named ``prefix``) and every submodule,
        depth first; a module reachable twice is listed once (``remove_duplicate=False``: under
        every name, as a state dict keys it). ``memo``: a set of modules to leave out, to which
        those listed are added (torch.nn's)."""
        remove_duplicate = check_flag(remove_duplicate, "remove_duplicate")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
        if memo is None:
            memo = set()
        elif not isinstance(memo, set):
            raise TypeError(f"memo: expected a set of modules or None, got {type(memo).__name__}")
        # a stack, not a recursive closure: that one is a reference cycle per call (garbage
        # the collector must find, at every cell step's parameters())
        stack = [(self, prefix, frozenset())]
        while stack:
            module, pre, path = stack.pop()
            if id(module) in path or (remove_duplicate and module in memo):
                continue  # (a cycle is never followed)
            if remove_duplicate:
                memo.add(module)
            yield pre, module
            inside = path | {id(module)}
            stack.extend((child, f"{pre}.{name}" if pre else name, inside)
                         for name, child in reversed(module._modules.items())
                         if child is not None)

    def modules(self):
        """This module and every submodule, depth first, each once."""
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True,
                         remove_duplicate=True) -> Iterator[Tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs; a Parameter shared by two modules (or names) is
        listed once (``remove_duplicate=False``: under every name, as a state dict keys it)."""
        recurse = check_flag(recurse, "recurse")
        remove_duplicate = check_flag(remove_duplicate, "remove_duplicate")
        seen = set()
        walker = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse
                  else [(prefix, self)])
        for mod_prefix, module in walker:
            for name, p in module._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse=True) -> Iterator[Parameter]:
        """The Parameters of ``named_parameters`` (with ``recurse=False``: this module's own)."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    # ------------------------------------------------------------------ state
    def state_dict(self, *, prefix="", keep_vars=False) -> "OrderedDict[str, np.ndarray]":
        """Dotted name -> a NumPy copy of the parameter's array (on every device); a tied
        parameter under each of its names, as torch.nn's state dict keys it. As torch's:
        ``prefix`` starts every name; ``keep_vars`` gives the Parameters themselves."""
        keep_vars = check_flag(keep_vars, "keep_vars")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
        return OrderedDict((prefix + name, p if keep_vars else np.array(to_host(p.data),
                                                                           copy=True))
                           for name, p in self.named_parameters(remove_duplicate=False))

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (or torch tensors) into the parameters, cast to each parameter's dtype.

        Raises :class:`StateDictError` (a ValueError, and a RuntimeError as torch.nn's) naming
        missing or unexpected keys (when ``strict``), a key whose shape differs (expected and
        got); ValueError for a key whose finite values overflow the parameter's dtype
        (float64 past float32's range would turn to infinity silently); NaN and infinity
        themselves load, as torch's (a diverged model can be inspected). Nothing is changed
        unless every key passes. Returns ``(missing_keys, unexpected_keys)`` like PyTorch."""
        strict = check_flag(strict, "strict")
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters(remove_duplicate=False))  # (every alias)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise StateDictError(f"state_dict: error loading into {type(self).__name__}: "
                                 + "; ".join(parts))
        staged = []
        for key, param in own.items():
            if key not in state_dict:
                continue
            value = _to_numpy(state_dict[key], key)
            if value.shape != param.data.shape:
                raise StateDictError(f"state_dict[{key!r}]: expected shape "
                                     f"{param.data.shape}, got {value.shape}")
            if value.dtype.kind not in "fiub":
                raise TypeError(f"state_dict[{key!r}]: expected a numeric array, got dtype {value.dtype}")
            with np.errstate(over="ignore"):  # (an overflow is named below)
                cast = value.astype(param.data.dtype, copy=False)
            if cast is not value and value.dtype.kind == "f" and \
                    (np.isfinite(value) & ~np.isfinite(cast)).any():
                raise ValueError(f"state_dict[{key!r}]: values beyond the range of "
                                 f"{param.data.dtype} (from {value.dtype}): they would load as "
                                 f"infinity")
            value = cast
            staged.append((param, value))
        for param, value in staged:
            if isinstance(param.data, np.ndarray):
                param.writable_data()[...] = value
            else:
                param.data[...] = to_device(value, "cuda")
            param.mark_written()
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ devices
    _supports_cuda = False  # layers whose forward/backward run on CuPy arrays set this

    @property
    def device(self):
        """'cuda' when this module's parameters are CuPy arrays, else 'cpu'."""
        for p in self.parameters():
            return p.device
        return self.__dict__.get("_device", "cpu")

    def to(self, device):
        """Move every parameter (and gradient) of this module and its submodules to ``device``,
        'cpu' or 'cuda'; returns self. 'cuda' needs the CUDA backend (CudaUnavailableError
        otherwise) and layers that run there (RNN, LSTM, GRU; TypeError naming any other)."""
        device = check_device(device)
        if device == "cuda":
            array_module("cuda")  # raises CudaUnavailableError on a CPU-only build
            for name, m in self.named_modules():
                if not m._supports_cuda and next(iter(m.parameters(recurse=False)), None):
                    raise TypeError(f"to('cuda'): {type(m).__name__} "
                                    f"{'(' + name + ') ' if name else ''}runs on NumPy arrays "
                                    f"only; device='cuda' is available for RNN, LSTM and GRU")
        moved = [m for m in self.modules() if m.device != device]
        for m in self.modules():
            object.__setattr__(m, "_device", device)
        for p in self.parameters():
            p.to(device)
        for m in moved:
            m._device_changed()
        return self

    def _device_changed(self):
        """Called by ``to`` on each module whose device it changed (after the move): a module
        that keeps arrays of the old device lets them go here."""

    def cuda(self):
        """``self.to("cuda")``."""
        return self.to("cuda")

    def cpu(self):
        """``self.to("cpu")``."""
        return self.to("cpu")

    # ------------------------------------------------------------------ modes and grads
    def train(self, mode=True):
        """Set training mode on this module, then call each child's ``train(mode)`` (as torch.nn:
        a child's own ``train`` override runs, e.g. one keeping a frozen part in eval mode);
        returns self."""
        mode = check_flag(mode, "mode")
        setting = _modes_being_set.__dict__.setdefault("ids", set())  # (this thread's)
        if id(self) in setting:  # (a cycle of modules: this one is being set already)
            return self
        object.__setattr__(self, "training", mode)
        setting.add(id(self))
        try:
            for child in self.children():
                child.train(mode)
        finally:
            setting.discard(id(self))
        return self

    def apply(self, fn):
        """``fn(module)`` for every submodule, each after its own children, then for this one,
        in torch.nn's order (e.g. an initialisation of your own); returns self."""
        def visit(module, path):
            path = path | {id(module)}
            for child in module.children():
                if id(child) not in path:  # (a cycle is never followed)
                    visit(child, path)
            fn(module)
        visit(self, frozenset())
        return self

    def _modes(self):
        """Each module's own training flag, [(module, training)], for ``_restore_modes``
        (a model whose parts are in different modes gets them back after an eval pass)."""
        return [(m, m.training) for m in self.modules()]

    @staticmethod
    def _restore_modes(modes):
        """Set each module's flag as ``_modes`` recorded it."""
        for m, training in modes:
            object.__setattr__(m, "training", training)

    def eval(self):
        """``self.train(False)``: inference mode (forward saves nothing, dropout is off); returns
        self."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient: None (default, as in PyTorch) or zeros."""
        set_to_none = check_flag(set_to_none, "set_to_none")
        for p in self.parameters():
            p.zero_grad(set_to_none)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze every parameter (see ``Parameter.requires_grad``): a frozen
        part's backward still returns the gradients of its inputs, so the layers before it
        train; returns self."""
        requires_grad = check_flag(requires_grad, "requires_grad")
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # ------------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        """The computation, defined by every layer (``module(...)`` calls it); in training mode it
        saves what ``backward`` needs. Raises NotImplementedError here."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, *args, **kwargs):
        """Gradients for the latest training-mode forward: returns the input gradient(s) and adds
        into each parameter's ``grad``. Defined by every layer; raises NotImplementedError here."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if callable(forward) and not hasattr(forward, "counts_runs"):
            cls.forward = _counting_runs(forward)

    def extra_repr(self) -> str:
        """The text inside the parentheses of ``repr(module)`` (the constructor arguments); "" here."""
        return ""

    def __repr__(self):
        lines = []
        for name, child in self._modules.items():  # (None and a shared one too, as torch's)
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {child_repr}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype):
    """The layers' dtype argument as a NumPy dtype: float32 or float64, else TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def dtype_repr(dtype):
    """A module's repr's ", dtype=float64" (nothing for the default, float32)."""
    return "" if dtype == np.float32 else f", dtype={dtype}"
