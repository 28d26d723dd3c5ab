"""``save(obj, path)`` / ``load(path)``: modules' state dicts, plain (nested) dicts of arrays,
optimizer state and whole checkpoints, in a format that never runs code when read.

The file is an ordinary ``.npz`` (read with ``allow_pickle=False``): every array is one entry
("a0", "a1", ...), and one entry ``__fusedrnn__`` holds a JSON description of the object tree
(dicts, lists, strings, numbers, booleans, None) with references to those arrays. A plain
``.npz`` of arrays (from ``numpy.savez``) loads as a dict. Writes are atomic: the data goes to a
temporary file in the target's folder, is flushed to disk, then renamed over the target, so an
interrupted save leaves the previous file intact.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

__all__ = ["save", "load"]

FORMAT = "fusedrnn.io/1"
_META = "__fusedrnn__"


def _encode(obj, arrays, where):
    """obj -> a JSON-able tree; arrays are appended to ``arrays`` and referenced by name."""
    from .nn.module import Module, Parameter
    from .optim import Optimizer

    if isinstance(obj, (Module, Optimizer)):
        obj = obj.state_dict()
    if isinstance(obj, Parameter):
        obj = obj.data
    if isinstance(obj, np.ndarray) or isinstance(obj, np.generic) and not isinstance(obj, np.bool_):
        arr = np.asarray(obj)
        if arr.dtype.hasobject or arr.dtype.kind not in "biufcUS":
            raise TypeError(f"{where}: cannot save an array of dtype {arr.dtype} (only numeric, "
                            f"boolean and string arrays are stored without pickling)")
        name = f"a{len(arrays)}"
        arrays[name] = arr
        return {"__array__": name}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__")
                                                            for k in obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in obj.items()}
        pairs = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"{where}: dict keys must be str or int, got {type(k).__name__}")
            pairs.append([k, _encode(v, arrays, f"{where}[{k!r}]")])
        return {"__items__": pairs}
    raise TypeError(f"{where}: cannot save an object of type {type(obj).__name__} (expected a "
                    f"Module, an optimizer, an array, a number, a string, or dicts/lists of them)")


def _decode(node, arrays, where="file"):
    if isinstance(node, list):
        return [_decode(v, arrays, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        if "__array__" in node:
            name = node["__array__"]
            if name not in arrays:
                raise ValueError(f"{where}: the file refers to array {name!r}, which it does not hold")
            return arrays[name]
        if "__tuple__" in node:
            return tuple(_decode(v, arrays, where) for v in node["__tuple__"])
        if "__items__" in node:
            return OrderedDict((k, _decode(v, arrays, f"{where}[{k!r}]")) for k, v in node["__items__"])
        return OrderedDict((k, _decode(v, arrays, f"{where}[{k!r}]")) for k, v in node.items())
    return node


def save(obj, path):
    """Write ``obj`` (a Module — its state_dict —, an optimizer — its state_dict —, an array, or
    nested dicts/lists/tuples of arrays, numbers, strings, booleans, None) to ``path``
    atomically. The file is a ``.npz``; no suffix is added to ``path``."""
    path = os.fspath(path)
    arrays = {}
    tree = _encode(obj, arrays, "obj")
    meta = json.dumps({"format": FORMAT, "tree": tree})
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META: np.array(meta)}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path):
    """Read what :func:`save` wrote (dicts come back as OrderedDicts, in their saved order), or a
    plain ``.npz`` of arrays as a dict. Never unpickles: a pickled, truncated or otherwise
    malformed file raises ValueError naming the path."""
    path = os.fspath(path)
    # Open the file ourselves so that it is closed on every path, errors included.
    with open(path, "rb") as f:
        magic = f.read(6)
        f.seek(0)
        if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):  # a zip (.npz) or an .npy
            raise ValueError(f"{path}: not a fusedrnn/NumPy .npz file: not a zip archive (a pickled "
                             f"or damaged file is refused; fusedrnn files never run code when read)")
        try:
            data = np.load(f, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise ValueError(f"{path}: not a fusedrnn/NumPy .npz file (a pickled or damaged file "
                             f"is refused; fusedrnn files never run code when read): {e}") from None
        if isinstance(data, np.ndarray):  # a bare .npy
            return data
        try:
            with data:
                arrays = {name: data[name] for name in data.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
            raise ValueError(f"{path}: malformed .npz (an entry could not be read without "
                             f"unpickling, or the archive is damaged): {e}") from None
    if _META not in arrays:
        return OrderedDict(arrays)
    try:
        meta = json.loads(str(arrays.pop(_META)[()]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: malformed {_META} entry: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "tree" not in meta:
        raise ValueError(f"{path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r};"
                         f" expected {FORMAT!r}")
    return _decode(meta["tree"], arrays)
