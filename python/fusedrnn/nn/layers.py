"""Feed-forward layers around the recurrent ones: ``Linear``, ``Embedding``, ``Dropout`` and
``Sequential`` (and the containers ``ModuleList``, ``ModuleDict``), with PyTorch's constructor
arguments, parameter names and initialisation.

Every layer follows the rule of ``fusedrnn.nn``: ``forward`` in training mode saves what
``backward`` needs; ``backward(dout)`` applies to the latest training-mode forward, returns the
gradient of the input and adds (``+=``) into each parameter's ``grad``. Shapes:

    Linear     x [..., in_features]  -> y [..., out_features]
    Embedding  indices [...] (ints)  -> y [..., embedding_dim]  (backward returns None)
    Dropout    x [...]               -> y [...]                 (identity in eval mode)
"""
from __future__ import annotations

import copy
import math
import numbers
import operator

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

from .. import functional as F
from .._flags import check_flag
from .module import (Module, Parameter, as_gradient, check_dtype, check_parameter,
                     check_unwritten, dtype_repr, write_stamp)

__all__ = ["Linear", "Embedding", "Dropout", "Sequential", "ModuleList", "ModuleDict", "Identity"]



def _dtype(dtype):
    return check_dtype(dtype)


def _int_in(value, name, low, high=None):
    """``value`` as an int: TypeError naming ``name`` unless it is an integer (Python's or
    NumPy's, a 0-d integer array as np.load gives one too; not a bool), ValueError unless
    low <= value (<= high)."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an integer {bounds}, got {value!r}")
    return int(value)


def _number_in(value, name, low, high, expected):
    """``value`` as a float, if it is a real number (not a bool) with low <= value <= high;
    ValueError naming ``name`` and what was ``expected`` (e.g. "in [0, 1]") otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise ValueError(f"{name}: expected a number {expected}, got {value!r}")
    return float(value)


def _seeded(seed, name="seed"):
    """``np.random.default_rng(seed)``, a seed NumPy would refuse named: None, a non-negative
    integer (Python's or NumPy's), a sequence of them, a SeedSequence, a BitGenerator or a
    Generator."""
    if seed is None or isinstance(seed, (np.random.SeedSequence, np.random.BitGenerator,
                                         np.random.Generator)):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        try:  # a sequence of integers (or a NumPy array of them)
            if isinstance(seed, (str, bytes, float, bool, np.bool_)):
                raise TypeError
            return np.random.default_rng(np.random.SeedSequence(seed))
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected an integer >= 0 (or a sequence of them, a "
                            f"SeedSequence, a Generator) or None, got {type(seed).__name__} "
                            f"{seed!r}") from None
    return np.random.default_rng(_int_in(seed, name, 0))


class SeededModule(Module):
    """A module drawing its random numbers (initial weights, dropout masks) from a Generator of
    its own, made from the constructor's ``seed``: ``reset_parameters()`` draws from it too, and
    ``manual_seed`` restarts it. A deep copy of a module built without a seed draws from fresh
    entropy (as torch's copies, which share the global stream, draw other masks); one built
    with a seed goes on with the same numbers as the original."""

    def _own_generator(self, seed):
        self._rng, self._unseeded = _seeded(seed), seed is None
        return self._rng

    def _generator(self, seed=None):
        """``seed``'s Generator, or the module's own when None."""
        if seed is not None:
            return _seeded(seed)
        if getattr(self, "_rng", None) is None:  # (a pickle of a release that kept none)
            self._own_generator(None)
        return self._rng

    def manual_seed(self, seed):
        """Restart the module's Generator (its dropout masks and ``reset_parameters()``) at
        ``seed``."""
        self._own_generator(seed)
        self._unseeded = False  # (a seed chosen: copies go on with it)

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            object.__setattr__(new, name, copy.deepcopy(value, memo))
        if getattr(self, "_unseeded", False):
            new._own_generator(None)
        return new

    def __setstate__(self, state):
        # an unpickled copy, as a deep copy: fresh entropy unless built (or re-seeded) with a
        # seed (a model pickled to worker processes draws other masks in each)
        self.__dict__.update(state)
        if state.get("_unseeded", False):
            self._own_generator(None)


def _positive_int(value, name):
    return _int_in(value, name, 1)


def _no_saved(layer):
    return RuntimeError(f"{type(layer).__name__}.backward called before a training-mode forward "
                        f"(call module.train() and forward first)")


class Identity(Module):
    """Returns its input; backward returns its gradient."""

    def forward(self, x):
        """Returns ``x`` itself."""
        return x

    def backward(self, dout):
        """Returns ``dout`` itself (an array of real numbers: others are refused by name)."""
        return as_gradient(dout, "dout")


class Linear(SeededModule):
    """``y = x @ weight.T + bias`` with weight [out_features, in_features], bias [out_features],
    both drawn from uniform(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True, *, dtype: DTypeLike = np.float32,
                 seed=None):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.dtype = _dtype(dtype)
        rng = self._own_generator(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (self.out_features, self.in_features))
                                .astype(self.dtype))
        if check_flag(bias, "bias"):
            self.bias = Parameter(rng.uniform(-bound, bound, self.out_features).astype(self.dtype))
        else:
            self.register_parameter("bias", None)
        self._x = None

    def reset_parameters(self, seed=None):
        """Draw weight and bias again from uniform(-1/sqrt(in_features), 1/sqrt(in_features))
        (from ``seed``, or the layer's own Generator)."""
        rng = self._generator(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        for p in self.parameters():
            p.data[...] = rng.uniform(-bound, bound, p.data.shape).astype(self.dtype)
            p.mark_written()

    def forward(self, x):
        """x [..., in_features] (the layer's dtype) -> y [..., out_features]; saves ``x`` in
        training mode."""
        if not isinstance(F.check_unmasked(x, "x"), np.ndarray):
            raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected dtype {self.dtype} (the layer's dtype), got {x.dtype}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape [..., {self.in_features}] (in_features last), "
                             f"got {x.shape}")
        check_parameter(self, "weight", self.weight, (self.out_features, self.in_features),
                        self.dtype)
        if self.bias is not None:
            check_parameter(self, "bias", self.bias, (self.out_features,), self.dtype)
        y = self._apply(x)
        # a copy: the caller may write into x before the backward (NumPy has no version counter)
        self._x = x.copy() if self.training else None
        self._written = write_stamp(self) if self.training else None
        return y

    def _apply(self, x):
        # x @ weight.T + bias, unchecked, nothing saved (forward; a seq2seq decoder's steps)
        y = F.matmul(x, self.weight.data, trans_b=True)
        if self.bias is not None:
            y += self.bias.data
        return y

    def _add_weight_grads(self, x, dout):
        # weight.grad and bias.grad of y = x @ weight.T + bias, one GEMM over every leading
        # position (backward; a seq2seq decoder's steps stacked)
        d2 = dout.reshape(-1, self.out_features)
        self.weight.accumulate_grad(F.matmul(d2, x.reshape(-1, self.in_features), trans_a=True))
        if self.bias is not None:
            self.bias.accumulate_grad(d2.sum(axis=0))

    def backward(self, dout):
        """dout [..., out_features] -> dx [..., in_features]; adds into ``weight.grad`` and
        ``bias.grad``."""
        x = self._x
        if x is None:
            raise _no_saved(self)
        check_unwritten(self, self._written)
        dout = as_gradient(dout, "dout", self.dtype)
        expected = x.shape[:-1] + (self.out_features,)
        if dout.shape != expected:
            raise ValueError(f"dout: expected shape {expected} (the shape of y), got {dout.shape}")
        self._add_weight_grads(x, dout)
        return F.matmul(dout, self.weight.data)

    def extra_repr(self):
        """``in_features=..., out_features=..., bias=...``."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{dtype_repr(self.dtype)}")


class Embedding(SeededModule):
    """A lookup table ``weight`` [num_embeddings, embedding_dim] drawn from N(0, 1) as in PyTorch.

    The row ``padding_idx`` (if given) starts at zero and never receives a gradient, so padded
    positions of a batch contribute nothing."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *,
                 dtype: DTypeLike = np.float32, seed=None):
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:  # an index in [-num_embeddings, num_embeddings)
            padding_idx = _int_in(padding_idx, "padding_idx", -self.num_embeddings,
                                  self.num_embeddings - 1) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = _dtype(dtype)
        rng = self._own_generator(seed)
        weight = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.weight = Parameter(weight)
        self._indices = None

    def reset_parameters(self, seed=None):
        """Draw the rows again from N(0, 1), as at construction (the padding row: zeros; from
        ``seed``, or the layer's own Generator)."""
        weight = self._generator(seed).standard_normal(self.weight.data.shape).astype(self.dtype)
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0
        self.weight.data[...] = weight
        self.weight.mark_written()

    def forward(self, indices):
        """indices [...] (integers in [0, num_embeddings)) -> the rows ``weight[indices]``
        [..., embedding_dim]; saves the indices in training mode."""
        indices = np.asarray(F.check_unmasked(indices, "indices"))
        if indices.dtype.kind not in "iu":
            raise TypeError(f"indices: expected an integer array, got dtype {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_embeddings):
            raise ValueError(f"indices: expected values in [0, {self.num_embeddings}), got min "
                             f"{indices.min()} and max {indices.max()}")
        check_parameter(self, "weight", self.weight, (self.num_embeddings, self.embedding_dim),
                        self.dtype)
        self._indices = indices.copy() if self.training else None  # (as Linear keeps its x)
        return self.weight.data[indices]

    def backward(self, dout):
        """Adds the rows of ``dout`` into the rows of ``weight.grad`` they were read from;
        returns None (integer indices have no gradient)."""
        indices = self._indices
        if indices is None:
            raise _no_saved(self)
        dout = as_gradient(dout, "dout", self.dtype)
        expected = indices.shape + (self.embedding_dim,)
        if dout.shape != expected:
            raise ValueError(f"dout: expected shape {expected}, got {dout.shape}")
        if not self.weight.requires_grad:  # (frozen: a table's worth of zeros for nothing)
            return None
        grad = np.zeros_like(self.weight.data)
        np.add.at(grad, indices.reshape(-1), dout.reshape(-1, self.embedding_dim))
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0
        self.weight.accumulate_grad(grad)
        return None

    def extra_repr(self):
        """``num_embeddings, embedding_dim`` (and ``padding_idx`` when set)."""
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        s += f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return s + dtype_repr(self.dtype)


class Dropout(SeededModule):
    """Inverted dropout: in training mode zero each element with probability ``p`` and scale the
    rest by 1/(1-p); the identity in eval mode. Masks come from the layer's own Generator."""

    def __init__(self, p=0.5, *, seed=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"p: expected a probability in [0, 1], got {type(p).__name__} {p!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._own_generator(seed)
        self._mask = None

    def forward(self, x):
        """``x * mask`` in training mode (a fresh mask of 0 and 1/(1-p), drawn from the layer's
        Generator); ``x`` itself in eval mode or with p = 0."""
        F.check_unmasked(x, "x")
        if not self.training or self.p == 0.0:
            self._mask = None
            if self.training:  # (the identity; backward checks dout against x still)
                x_array = np.asarray(x)
                self._mask = np.ones((), x_array.dtype), x_array.shape
            return x
        x = np.asarray(x)
        if x.dtype.kind != "f":  # (1/(1-p) in an integer dtype divided by 0)
            raise TypeError(f"x: expected a float array, got dtype {x.dtype}")
        if self.p == 1.0:
            mask = np.zeros(x.shape, x.dtype)
        else:
            mask = (self._rng.random(x.shape) >= self.p).astype(x.dtype) / x.dtype.type(1 - self.p)
        self._mask = mask, x.shape  # (with the input's shape, which backward checks)
        return x * mask

    def backward(self, dout):
        """``dout * mask`` with the latest training-mode forward's mask."""
        if self._mask is None:
            raise _no_saved(self)
        mask, shape = self._mask
        dout = as_gradient(dout, "dout", mask.dtype)
        if dout.ndim and dout.shape != shape:  # (a number broadcasts, as it should)
            raise ValueError(f"dout: expected shape {shape} (the forward's), got {dout.shape}")
        return dout * mask

    def extra_repr(self):
        """``p=...``."""
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order, each taking the previous one's output (one array);
    ``backward`` walks them in reverse. Children are named "0", "1", ... as in PyTorch.

    A recurrent layer inside passes its output sequence on and drops its final states (as a
    Keras Sequential does): ``Sequential(LSTM(8, 32), LSTM(32, 32), Linear(32, 4))`` is a stack
    whose ``forward(x)`` returns the Linear's output at every step."""

    def __init__(self, *modules):
        """``Sequential(m0, m1, ...)``, or ``Sequential(OrderedDict(name=module, ...))`` to name
        the children (as torch.nn's)."""
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            named = [(k, m, f"modules[{k!r}]") for k, m in modules[0].items()]
        else:
            named = [(str(i), m, f"modules[{i}]") for i, m in enumerate(modules)]
        for name, m, where in named:
            if not isinstance(m, Module):
                raise TypeError(f"{where}: expected a Module, got {type(m).__name__}")
            self.add_module(name, m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        """The i-th module; a slice is a Sequential of those modules under their names (as
        torch.nn's: its state_dict keys stay those of the whole)."""
        if isinstance(i, slice):
            return Sequential(dict(list(self._modules.items())[i]))
        return list(self._modules.values())[i]

    def append(self, module):
        """Add ``module`` at the end, named by its position as torch.nn's, or past the largest
        number among the names where that one is taken (a slice keeps the whole's names: torch
        would replace a child there); returns self."""
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        name = str(len(self))
        if name in self._modules:
            name = str(1 + max(int(k) for k in self._modules if k.isdigit()))
        self.add_module(name, module)
        return self

    def __iter__(self):
        return iter(self._modules.values())

    def __setitem__(self, i, module):
        """Put ``module`` in the i-th place, under that place's name (as torch.nn's)."""
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        self.add_module(list(self._modules)[_position(self, i, "an int")], module)

    def __delitem__(self, i):
        """Remove the i-th module (or a slice of them); the rest are renumbered "0", "1", ...
        as torch.nn's (names given by an OrderedDict too)."""
        _delete(self, i)

    def insert(self, index, module):
        """Put ``module`` before ``index``, from -len to len (IndexError otherwise, as
        torch.nn's); the modules are renumbered."""
        if not isinstance(module, Module):  # (None too: a Sequential runs every module)
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        try:
            n, index = len(self), operator.index(index)
        except TypeError:
            raise TypeError(f"index: expected an int, got {type(index).__name__}") from None
        if not -n <= index <= n:
            raise IndexError(f"index: {index} is out of range for inserting into {n} modules")
        _insert(self, index, module)
        return self

    def extend(self, modules):
        """``append`` every module of an iterable (a list, another Sequential); returns self."""
        for m in _modules_checked(modules, "an iterable of Modules"):
            self.append(m)
        return self

    def __iadd__(self, modules):
        return self.extend(modules)

    def __add__(self, other):
        """A new Sequential of this one's modules, then ``other``'s (numbered anew)."""
        return Sequential(*self, *_modules_checked(other, "an iterable of Modules"))

    def pop(self, index=-1):
        """Remove the module at ``index`` and return it (the rest renumbered)."""
        module = self[index]
        del self[index]
        return module

    def forward(self, x):
        """Feeds ``x`` through every module in order; returns the last one's output."""
        shared = self._shared_modules() if self.training else {}
        runs = {key: m.__dict__.get("_runs", 0) for key, (m, _) in shared.items()}
        for m in self._modules.values():
            x = _sequence(m(x))
        for key, (m, paths) in shared.items():  # (a module that keeps steps backs them all)
            if m.__dict__.get("_runs", 0) - runs[key] > 1 and "_steps" not in m.__dict__:
                raise _twice(*paths)
        return x

    def _shared_modules(self):
        """A module at two places cannot train: it keeps its last forward alone for its
        backward, so the first place's weight gradients would be computed from the second's.
        Refused here when two places are this Sequential's own (nested Sequentials' too);
        returns {id: (module, (path, path))} of those reachable from two places through a
        child's submodules, refused after the forward if they ran twice in it (a child may hold
        another's module without running it: an output layer tied to the embedding)."""
        where, shared = {}, {}
        places = list(self._modules.items())
        while places:
            name, m = places.pop(0)
            if isinstance(m, Sequential):
                places += [(f"{name}.{k}", c) for k, c in m._modules.items()]
                continue
            for path, sub in m.named_modules(prefix=name):  # (each once)
                if id(sub) in where:
                    first, placed = where[id(sub)]
                    if placed and path == name:
                        raise _twice(first, path)
                    shared.setdefault(id(sub), (sub, (first, path)))
                else:
                    where[id(sub)] = (path, path == name)
        return shared

    def backward(self, dout):
        """Calls every module's ``backward`` in reverse order, each on the previous one's result;
        returns the first module's input gradient."""
        for m in reversed(list(self._modules.values())):
            dout = _sequence(m.backward(dout))
        return dout


def _position(owner, i, expected="an int or a slice"):
    """The place (0 to len - 1) of index ``i`` among ``owner``'s children: TypeError naming
    what is ``expected``, IndexError out of range (ModuleList's and Sequential's)."""
    try:
        i = operator.index(i)
    except TypeError:
        raise TypeError(f"index: expected {expected}, got {type(i).__name__}") from None
    n = len(owner._modules)
    if not -n <= i < n:
        raise IndexError(f"index: {i} is out of range for {n} modules")
    return i % n


def _delete(owner, i):
    """Remove ``owner``'s i-th child (or a slice of them), renumbering the rest."""
    kept = list(owner._modules.values())
    del kept[i if isinstance(i, slice) else _position(owner, i)]
    _renumber(owner, kept)


def _insert(owner, index, module):
    """Put ``module`` before ``owner``'s child at ``index`` (as list.insert), renumbering."""
    kept = list(owner._modules.values())
    kept.insert(index, *_modules_checked([module], "a Module"))
    _renumber(owner, kept)


def _renumber(owner, modules):
    """``owner``'s children replaced by ``modules``, named "0", "1", ... (ModuleList's and
    Sequential's removals and insertions, as torch.nn's)."""
    for name in list(owner._modules):
        delattr(owner, name)
    for k, m in enumerate(modules):
        owner.add_module(str(k), m)


def _modules_checked(modules, what):
    """``modules`` (an iterable of Modules or None, as torch.nn's containers take) as a list,
    every entry checked before any is added (TypeError naming the first other one)."""
    if isinstance(modules, (str, dict)) or not hasattr(modules, "__iter__"):
        raise TypeError(f"modules: expected {what}, got {type(modules).__name__}")
    modules = list(modules)
    for k, m in enumerate(modules):
        if m is not None and not isinstance(m, Module):
            raise TypeError(f"modules[{k}]: expected a Module, got {type(m).__name__}")
    return modules


class ModuleList(Module):
    """Modules in a list, registered under "0", "1", ... so their parameters are the owner's
    (torch.nn's ``ModuleList``: no forward of its own; the owner's ``forward`` and ``backward``
    call the modules). Removing one renumbers the rest, as torch.nn's; ``insert`` places as
    ``list.insert`` does (torch's leaves a gap past the end and fails at a negative index)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, i, expected="an int or a slice"):
        return str(_position(self, i, expected))

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def __repr__(self):
        """As torch.nn's: a run of modules with the same repr is one entry, "(0-2): 3 x ..."."""
        reprs = [repr(m).replace("\n", "\n  ") for m in self]
        lines, start = [], 0
        for k in range(1, len(reprs) + 1):
            if k == len(reprs) or reprs[k] != reprs[start]:
                lines.append(f"({start}): {reprs[start]}" if k - start == 1 else
                             f"({start}-{k - 1}): {k - start} x {reprs[start]}")
                start = k
        body = "".join(f"\n  {line}" for line in lines)
        return f"{type(self).__name__}({body}\n)" if lines else f"{type(self).__name__}()"

    def __getitem__(self, i):
        """The i-th module; a slice is a new list (of this class, as torch's) of those modules,
        renumbered."""
        if isinstance(i, slice):
            return type(self)(list(self._modules.values())[i])
        return self._modules[self._index(i)]

    def __setitem__(self, i, module):
        self.add_module(self._index(i, "an int"), module)

    def __delitem__(self, i):
        _delete(self, i)

    def __iadd__(self, modules):
        return self.extend(modules)

    def __add__(self, other):
        """A new ModuleList of this one's modules, then ``other``'s (any iterable of them)."""
        return ModuleList([*self, *_modules_checked(other, "an iterable of Modules")])

    def append(self, module):
        """Add ``module`` at the end; returns self."""
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        """Add every module of an iterable (a list, a generator, another ModuleList or a
        Sequential) at the end; returns self."""
        for m in _modules_checked(modules, "an iterable of Modules"):
            self.append(m)
        return self

    def insert(self, index, module):
        """Put ``module`` before ``index`` (as list.insert)."""
        _insert(self, index, module)

    def pop(self, index=-1):
        """Remove the module at ``index`` and return it."""
        module = self[index]
        del self[index]
        return module


class ModuleDict(Module):
    """Modules by name, registered under their keys so their parameters are the owner's
    (torch.nn's ``ModuleDict``: insertion order kept, no forward of its own). A key must be a
    name a state dict can hold: a non-empty str without '.', and no attribute of the class
    (``"keys"``, ``"train"``: KeyError, as torch.nn's)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules))

    def __contains__(self, key):
        return key in self._modules

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        if key not in self._modules:
            raise KeyError(key)
        delattr(self, key)

    def keys(self):
        """The keys, in insertion order."""
        return self._modules.keys()

    def items(self):
        """(key, module) pairs, in insertion order."""
        return self._modules.items()

    def values(self):
        """The modules, in insertion order."""
        return self._modules.values()

    def clear(self):
        """Remove every module."""
        for key in list(self._modules):
            delattr(self, key)

    def pop(self, key):
        """Remove the module under ``key`` and return it."""
        module = self[key]
        del self[key]
        return module

    def update(self, modules):
        """Add (or replace) modules from a mapping or an iterable of (key, module) pairs; every
        entry is checked before any is added."""
        if hasattr(modules, "items") and not isinstance(modules, Module) or \
                isinstance(modules, ModuleDict):
            pairs = list(modules.items())
        else:
            if isinstance(modules, (str, Module)) or not hasattr(modules, "__iter__"):
                raise TypeError(f"modules: expected a mapping or (key, module) pairs, got "
                                f"{type(modules).__name__}")
            pairs = []
            for k, pair in enumerate(modules):
                if isinstance(pair, str) or not hasattr(pair, "__len__") or len(pair) != 2:
                    raise ValueError(f"modules[{k}]: expected a (key, module) pair, got "
                                     f"{pair!r}")
                pairs.append(tuple(pair))
        _modules_checked([m for _, m in pairs], "(key, module) pairs")
        for key, _ in pairs:
            self._check_name(key, "_modules")
        for key, m in pairs:
            self.add_module(key, m)


def _twice(first, second):
    return ValueError(f"Sequential: the module at {first} is at {second} too; in training each "
                      f"keeps one forward for its backward (use two modules, e.g. copy.deepcopy, "
                      f"and tie their weights if meant)")


def _sequence(result):
    """A recurrent layer's (out, h_n) -> out, and its backward's (dx, dh0) -> dx."""
    return result[0] if isinstance(result, tuple) else result
