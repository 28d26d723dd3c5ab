"""Every public class, function, method and property of the public modules has a docstring; the
recurrent layers and cells carry PyTorch-style docs whose examples run."""
from __future__ import annotations

import doctest
import functools
import importlib
import inspect
import types

import pytest

import fusedrnn as fr

MODULES = ["fusedrnn", "fusedrnn.nn", "fusedrnn.functional", "fusedrnn.reference",
           "fusedrnn.optim", "fusedrnn.data", "fusedrnn.training", "fusedrnn.io", "fusedrnn.cuda",
           "fusedrnn.distributed", "fusedrnn.keras"]
try:  # the ONNX exchange, where onnx is installed
    import fusedrnn.onnx.backend  # noqa: F401
    MODULES += ["fusedrnn.onnx", "fusedrnn.onnx.backend"]
except ImportError:
    pass
try:  # the PyTorch adapter, where torch is installed
    import fusedrnn.torch as frt
    MODULES.append("fusedrnn.torch")
    TORCH_LAYERS = [frt.RNN, frt.LSTM, frt.GRU, frt.RNNCell, frt.LSTMCell, frt.GRUCell]
except ImportError:
    TORCH_LAYERS = []

LAYERS = [fr.nn.RNN, fr.nn.LSTM, fr.nn.GRU, fr.nn.RNNCell, fr.nn.LSTMCell, fr.nn.GRUCell]
SECTIONS = ["Args:", "Inputs:", "Outputs:", "Backward:", "Attributes:", "Examples:"]

_METHODS = (types.FunctionType, staticmethod, classmethod, property, functools.cached_property)


def _ours(obj):
    return (getattr(obj, "__module__", None) or "").startswith("fusedrnn")


def _public(module):
    """(name, object) of the module's public classes and functions: those in ``__all__``, or
    without it, those defined in fusedrnn whose names do not start with "_"."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items() if not n.startswith("_") and _ours(obj)]
    return [(n, getattr(module, n)) for n in names
            if inspect.isclass(getattr(module, n)) or inspect.isroutine(getattr(module, n))]


def _member_doc(owner, name, raw):
    """The docstring of a class attribute, or None when it is not a method/property/slot."""
    if isinstance(raw, types.MemberDescriptorType):  # a __slots__ entry: its doc is in __slots__
        return inspect.getdoc(getattr(owner, name)) or ""
    if not isinstance(raw, _METHODS):
        return None  # plain data (constants, defaults)
    if isinstance(raw, (staticmethod, classmethod)):
        raw = raw.__func__
    return raw.__doc__ or ""


def _missing_docstrings():
    missing = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in _public(module):
            if not (obj.__doc__ or "").strip():
                missing.add(f"{module_name}.{name}")
            if not inspect.isclass(obj):
                continue
            for attr in dir(obj):
                if attr.startswith("_"):
                    continue
                owner = next(k for k in obj.__mro__ if attr in vars(k))
                if not _ours(owner):
                    continue  # inherited from object, BaseException, tuple, ...
                doc = _member_doc(owner, attr, vars(owner)[attr])
                if doc is not None and not doc.strip():
                    missing.add(f"{owner.__module__}.{owner.__qualname__}.{attr}")
    return sorted(missing)


def test_every_public_name_has_a_docstring():
    missing = _missing_docstrings()
    assert missing == [], "missing docstrings:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_layer_docstring_sections(cls):
    doc = cls.__doc__ or ""
    absent = [s for s in SECTIONS if s not in doc]
    assert absent == [], f"{cls.__name__}: sections missing from the docstring: {absent}"
    args = doc[doc.index("Args:"):doc.index("Inputs:")]
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    undocumented = [p for p in params if f"\n    {p}:" not in args]
    assert undocumented == [], \
        f"{cls.__name__}: constructor arguments not under Args: {undocumented}"


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_layer_docstring_examples_run(cls):
    tests = doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, globs={})
    assert tests and tests[0].examples, f"{cls.__name__}: no doctest examples"
    runner = doctest.DocTestRunner(verbose=False)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, \
        f"{cls.__name__}: {result.failed} of {result.attempted} examples failed"


@pytest.mark.parametrize("cls", TORCH_LAYERS, ids=lambda c: "torch." + c.__name__)
def test_torch_adapter_docstrings_read_like_pytorchs(cls):
    doc = cls.__doc__ or ""
    absent = [s for s in ("Args:", "Inputs:", "Outputs:", "Attributes:", "Examples:")
              if s not in doc]
    assert absent == [], f"{cls.__name__}: sections missing from the docstring: {absent}"
    runner = doctest.DocTestRunner(verbose=False)
    for test in doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
