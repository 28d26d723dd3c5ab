"""``save(obj, path)`` / ``load(path)``: modules' state dicts, plain (nested) dicts of arrays,
optimizer, scheduler and genetic-algorithm state and whole checkpoints, in a format that never
runs code when read.

The file is an ordinary ``.npz`` (read with ``allow_pickle=False``): every array is one entry
("a0", "a1", ...), and one entry ``__fusedrnn__`` holds a JSON description of the object tree
(dicts, lists, strings, numbers, booleans, None) with references to those arrays. A plain
``.npz`` of arrays (from ``numpy.savez``) loads as a dict. Writes are atomic: the data goes to a
temporary file in the target's folder, is flushed to disk, then renamed over the target, so an
interrupted save leaves the previous file intact.

``load`` trusts nothing in the file: every entry's .npy header is read and checked (its declared
size against the entry's actual size, the total against ``max_bytes``, 1 GiB by default) before
any array is read, an entry that is not an array is refused, and the tree is decoded without
recursion, at most ``MAX_DEPTH`` (100) levels deep; every refusal is a ValueError naming the file
and the entry or the node.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from io import BufferedIOBase, BytesIO, RawIOBase, TextIOBase
from typing import Any

import numpy as np

from ._atomic import atomic_write, named_os_errors

__all__ = ["save", "load"]

FORMAT = "fusedrnn.io/1"
_META = "__fusedrnn__"
MAX_DEPTH = 100  # dicts/lists/tuples nested in each other, in a saved or a loaded tree
DEFAULT_MAX_BYTES = 1 << 30  # load(): the arrays' total size unless max_bytes= says otherwise


def _encode(obj, arrays, where, depth=0):
    """obj -> a JSON-able tree; arrays are appended to ``arrays`` and referenced by name."""
    from .functional import check_unmasked
    from .nn.module import Module, Parameter, is_device_array, to_host
    from .optim import GeneticAlgorithm, LRScheduler, Optimizer

    if isinstance(obj, (Module, Optimizer, LRScheduler, GeneticAlgorithm)):
        obj = obj.state_dict()  # (load gives it back; its load_state_dict takes it)
    if isinstance(obj, Parameter):
        obj = obj.data
    if is_device_array(obj):  # (a CUDA model's parameters and optimizer moments: saved as
        obj = to_host(obj)    # host arrays, which load onto either device)
    if isinstance(obj, np.ndarray) or isinstance(obj, np.generic) and not isinstance(obj, np.bool_):
        arr = np.asarray(check_unmasked(obj, where))
        if arr.dtype.hasobject or arr.dtype.kind not in "biufcUS":
            raise TypeError(f"{where}: cannot save an array of dtype {arr.dtype} (only numeric, "
                            f"boolean and string arrays are stored without pickling)")
        name = f"a{len(arrays)}"
        arrays[name] = arr
        # a NumPy scalar (an lr given as np.float64) loads back as one, not as a 0-d array
        return {"__scalar__" if isinstance(obj, np.generic) else "__array__": name}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, (list, tuple, dict)) and depth >= MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep (fr.load refuses "
                         f"deeper trees)")
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, arrays, f"{where}[{i}]", depth + 1) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__")
                                                            for k in obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]", depth + 1) for k, v in obj.items()}
        pairs = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"{where}: dict keys must be str or int, got {type(k).__name__}")
            pairs.append([k, _encode(v, arrays, f"{where}[{k!r}]", depth + 1)])
        return {"__items__": pairs}
    raise TypeError(f"{where}: cannot save an object of type {type(obj).__name__} (expected a "
                    f"Module, an optimizer, a scheduler, a GeneticAlgorithm, an array, a number, "
                    f"a string, or dicts/lists of them)")


class _Path:
    """Where a node sits in the tree, kept as links to its parent and rendered only for a message
    (``tree["model"]["weight"]``, ``tree["layers"][0]``)."""

    __slots__ = ("parent", "key")

    def __init__(self, parent, key):
        self.parent, self.key = parent, key

    def __str__(self):
        keys, p = [], self
        while p is not None:
            keys.append(p.key)
            p = p.parent
        keys = [f"[{json.dumps(k)}]" for k in reversed(keys[:-1])]
        if len(keys) > 12:  # a deep node: its first and last steps
            keys = keys[:6] + [f"...({len(keys) - 10} more)..."] + keys[-4:]
        return "tree" + "".join(keys)


_ROOT = _Path(None, None)


def _decode(tree, arrays, path):
    """The JSON tree -> the object tree, without recursion: containers are created empty, then
    filled from an explicit stack; a tree deeper than MAX_DEPTH containers, or a malformed node,
    raises ValueError naming ``path`` (the file) and the node's place in the tree."""

    def bad(where, what):
        return ValueError(f"{path}: {where}: {what} (a damaged or hand-edited file; fr.save "
                          f"writes no such node)")

    def start(node, where, depth):
        """node -> (its value, the (key, child node, label in the path) still to fill)."""
        leaf = isinstance(node, dict) and ("__array__" in node or "__scalar__" in node)
        if isinstance(node, (list, dict)) and not leaf \
                and depth >= MAX_DEPTH:  # a container (an array reference is a leaf)
            raise ValueError(f"{path}: {where}: the tree is nested more than {MAX_DEPTH} levels "
                             f"deep (fr.save writes no deeper tree: the file is damaged or "
                             f"hostile)")
        if isinstance(node, list):
            value, children = [None] * len(node), [(i, v, i) for i, v in enumerate(node)]
        elif isinstance(node, dict):
            markers = [k for k in ("__array__", "__scalar__", "__tuple__", "__items__")
                       if k in node]
            if markers and len(node) != 1:
                raise bad(where, f"a {markers[0]!r} node must hold that key alone, got keys "
                                 f"{sorted(node)[:5]}")
            if leaf:
                marker = markers[0]
                name = node[marker]
                if not isinstance(name, str):
                    raise bad(where, f"{marker!r} must name an array entry (a str), got "
                                     f"{type(name).__name__}")
                if name not in arrays:
                    raise ValueError(f"{path}: {where}: the file refers to array {name!r}, which "
                                     f"it does not hold")
                if marker == "__array__":
                    return arrays[name], ()
                if arrays[name].ndim != 0:
                    raise bad(where, f"'__scalar__' must name a 0-d array, got shape "
                                     f"{arrays[name].shape}")
                return arrays[name][()], ()
            if "__tuple__" in node:
                items = node["__tuple__"]
                if not isinstance(items, list):
                    raise bad(where, f"'__tuple__' must hold a list, got "
                                     f"{type(items).__name__}")
                value, children = [None] * len(items), [(i, v, i) for i, v in enumerate(items)]
                value = _TupleBuilder(value)
            elif "__items__" in node:
                pairs = node["__items__"]
                if not isinstance(pairs, list):
                    raise bad(where, f"'__items__' must hold a list of [key, value] pairs, got "
                                     f"{type(pairs).__name__}")
                value, children = OrderedDict(), []
                for i, pair in enumerate(pairs):
                    if not isinstance(pair, list) or len(pair) != 2:
                        raise bad(where, f"'__items__'[{i}] must be a [key, value] pair, got "
                                         f"{_describe(pair)}")
                    k, v = pair
                    if isinstance(k, bool) or not isinstance(k, (str, int)):
                        raise bad(where, f"'__items__'[{i}]: a key must be a str or an int, got "
                                         f"{type(k).__name__}")
                    value[k] = None
                    children.append((k, v, k))
            else:
                value, children = OrderedDict((k, None) for k in node), \
                    [(k, v, k) for k, v in node.items()]
        elif node is None or isinstance(node, (bool, int, float, str)):
            return node, ()
        else:  # json.loads makes nothing else; kept for trees built by other means
            raise bad(where, f"unexpected {type(node).__name__}")
        return value, children

    root, children = start(tree, _ROOT, 0)
    builders = []  # tuples are built as lists, frozen at the end (children first)
    if isinstance(root, _TupleBuilder):
        builders.append((None, None, root))
    stack = [(root, _ROOT, 0, children)]
    while stack:
        container, where, depth, children = stack.pop()
        for key, node, label in children:
            child_where = _Path(where, label)
            value, grandchildren = start(node, child_where, depth + 1)
            target = container.items if isinstance(container, _TupleBuilder) else container
            target[key] = value
            if isinstance(value, _TupleBuilder):
                builders.append((target, key, value))
            if grandchildren:
                stack.append((value, child_where, depth + 1, grandchildren))
    for target, key, builder in reversed(builders):  # inner tuples before the ones holding them
        frozen = tuple(builder.items)
        if target is None:
            root = frozen
        else:
            target[key] = frozen
    return root


class _TupleBuilder:
    """A tuple being decoded: its items are filled in place, then it becomes a tuple."""

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = items


def _describe(value):
    """A short description of a JSON value for a message (never its whole text)."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of length {len(value)}"
    return repr(value)[:60]


def checked_path(path, file_object=None, name="path"):
    """A file path argument as a str: a str, bytes or os.PathLike, else TypeError naming it;
    ``file_object`` "read" or "write": an open binary file (io.BytesIO) that can do it is
    taken too, as torch.save and np.save take one, and returned as it is."""
    doing = dict(read="reading", write="writing").get(file_object)
    if file_object and hasattr(path, file_object) and not isinstance(path, (str, bytes)):
        if getattr(path, "closed", False) is True:
            raise ValueError(f"{name}: expected a file open for {doing}, got a closed one")
        mode = getattr(path, "mode", None)  # (tempfile's wrappers are no TextIOBase; a
        text = isinstance(path, TextIOBase) or (  # binary stream's own mode may be "r")
            not isinstance(path, (BufferedIOBase, RawIOBase)) and isinstance(mode, str)
            and "b" not in mode)
        can = getattr(path, dict(read="readable", write="writable")[file_object], None)
        if text or (callable(can) and not can()):
            raise TypeError(f"{name}: expected a binary file open for {doing}, got "
                            f"{type(path).__name__}" + (" in text mode" if text
                                                        else f" not open for {doing}"))
        return path
    if not isinstance(path, (str, bytes, os.PathLike)):
        also = f" or a binary file open for {doing}" if file_object else ""
        raise TypeError(f"{name}: expected a str, bytes or os.PathLike file name{also}, got "
                        f"{type(path).__name__}")
    return os.fsdecode(os.fspath(path))


def save(obj, path):
    """Write ``obj`` (a Module — its state_dict —, an optimizer — its state_dict —, an array, or
    nested dicts/lists/tuples of arrays, numbers, strings, booleans, None) to ``path``
    atomically, or into an open binary file (``io.BytesIO``), as torch.save takes one. The file
    is a ``.npz``; no suffix is added to ``path``. Dicts, lists and tuples
    nest at most ``MAX_DEPTH`` (100) levels deep (ValueError otherwise: ``load`` refuses deeper
    trees)."""
    path = checked_path(path, "write")
    arrays = {}
    tree = _encode(obj, arrays, "obj")
    meta = json.dumps({"format": FORMAT, "tree": tree})
    atomic_write(path, lambda f: np.savez(f, **{_META: np.array(meta)}, **arrays))


# What reading a damaged or hostile archive can raise, besides ValueError: all become ValueError.
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
                NotImplementedError, KeyError, struct.error)
try:
    import lzma
    _READ_ERRORS += (lzma.LZMAError,)
except ImportError:  # a Python built without it reads no LZMA entry anyway
    pass


class _Counting:
    """A read-only stream that counts the bytes read through it (the .npy header's length)."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def read(self, size=-1):
        data = self.stream.read(size)
        self.count += len(data)
        return data


def _read_header(stream, path, entry):
    """(shape, fortran_order, dtype, header length) of the .npy at the start of ``stream``;
    ValueError naming the file and the entry if it is not a readable .npy header."""
    counting = _Counting(stream)
    try:
        version = np.lib.format.read_magic(counting)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(counting)
        elif version in ((2, 0), (3, 0)):
            # 3.0 is 2.0 with a UTF-8 header (non-ASCII field names): read as Latin-1, a name may
            # come out garbled, but the shape and the item size (all this check needs) cannot
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(counting)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: entry {entry!r} is not a NumPy array (.npy) entry: "
                         f"{e}") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: malformed .npz: entry {entry!r} holds Python objects (dtype "
                         f"{dtype}), which could not be read without unpickling; refused")
    if any(d < 0 for d in shape):
        raise ValueError(f"{path}: entry {entry!r} declares a negative shape {shape}")
    return shape, fortran, dtype, counting.count


def _declared_bytes(shape, dtype, path, entry):
    """The data size an entry's header declares, in bytes."""
    count = math.prod(shape)  # Python ints: no overflow
    if count >= 1 << 62:
        raise ValueError(f"{path}: entry {entry!r} declares shape {shape}, {count} elements: "
                         f"more than any array can hold")
    return count * dtype.itemsize


def _cost(shape, dtype):
    """What an entry counts against ``max_bytes``: its bytes, at least one per element (so that
    an item size of 0 cannot declare 10**18 elements for free)."""
    return math.prod(shape) * max(dtype.itemsize, 1)


def _check_limit(total, max_bytes, path, entry, shape, dtype, nbytes):
    if max_bytes is not None and total > max_bytes:
        raise ValueError(f"{path}: entry {entry!r} declares shape {shape} of {dtype} "
                         f"({nbytes:,} bytes), which brings the file's arrays to {total:,} bytes, "
                         f"over the limit of {max_bytes:,} bytes; if you trust the file, raise the "
                         f"limit: fr.load(path, max_bytes=...) (None for no limit)")


def _load_npy(f, path, max_bytes):
    """A bare .npy file, its header checked against the file's size and ``max_bytes`` first."""
    size = os.fstat(f.fileno()).st_size
    shape, _, dtype, offset = _read_header(f, path, "(the .npy array)")
    nbytes = _declared_bytes(shape, dtype, path, "(the .npy array)")
    if nbytes != size - offset:
        raise ValueError(f"{path}: malformed .npy: the header declares shape {shape} of {dtype} "
                         f"({nbytes:,} bytes) but the file holds {size - offset:,} bytes of data")
    _check_limit(_cost(shape, dtype), max_bytes, path, "(the .npy array)", shape, dtype,
                 nbytes)
    f.seek(0)
    try:
        return np.lib.format.read_array(f, allow_pickle=False)
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: malformed .npy: {e}") from None


def _load_npz(f, path, max_bytes):
    """Every entry of an .npz as {name: array}, in the archive's order. Every entry's .npy header
    is read and checked first (a declared shape that disagrees with the entry's uncompressed size,
    or arrays totalling more than ``max_bytes``, raise ValueError before any array is read)."""
    try:
        archive = zipfile.ZipFile(f)
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: not a fusedrnn/NumPy .npz file (a pickled or damaged file "
                         f"is refused; fusedrnn files never run code when read): {e}") from None
    with archive:
        entries, total = [], 0
        for info in archive.infolist():
            entry = info.filename
            if not entry.endswith(".npy"):
                raise ValueError(f"{path}: entry {entry!r} is not a NumPy array (.npy) entry: a "
                                 f"fusedrnn/NumPy .npz holds nothing else; refused")
            try:
                with archive.open(info) as member:
                    shape, _, dtype, offset = _read_header(member, path, entry)
            except _READ_ERRORS as e:
                if str(e).startswith(f"{path}: "):  # _read_header's own message, whole
                    raise
                raise ValueError(f"{path}: malformed .npz: entry {entry!r} could not be "
                                 f"read: {e}") from None
            nbytes = _declared_bytes(shape, dtype, path, entry)
            if nbytes != info.file_size - offset:
                raise ValueError(f"{path}: malformed .npz: entry {entry!r} declares shape {shape}"
                                 f" of {dtype} ({nbytes:,} bytes) but holds "
                                 f"{info.file_size - offset:,} bytes of data")
            total += _cost(shape, dtype)
            _check_limit(total, max_bytes, path, entry, shape, dtype, nbytes)
            entries.append(info)
        arrays = {}
        for info in entries:
            try:
                with archive.open(info) as member:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(member,
                                                                          allow_pickle=False)
            except _READ_ERRORS as e:
                raise ValueError(f"{path}: malformed .npz (an entry could not be read without "
                                 f"unpickling, or the archive is damaged): entry "
                                 f"{info.filename!r}: {e}") from None
    return arrays


def load(path, *, max_bytes=DEFAULT_MAX_BYTES) -> Any:
    """Read what :func:`save` wrote (dicts come back as OrderedDicts, in their saved order), or a
    plain ``.npz`` of arrays as a dict, from ``path`` or an open binary file (read from where it
    stands). Never unpickles: a pickled, truncated or otherwise
    malformed file raises ValueError naming the path.

    ``max_bytes`` (default 1 GiB) bounds the total size of the arrays the file may hold: every
    entry's declared shape is checked against it, and against the entry's actual size, before
    anything is read, so a small compressed file cannot make ``load`` allocate gigabytes (a zip
    bomb). Raise it for larger checkpoints you trust; None for no limit."""
    path = checked_path(path, "read")
    if max_bytes is not None and (isinstance(max_bytes, bool)
                                  or not isinstance(max_bytes, numbers.Integral)):
        raise TypeError(f"max_bytes: expected an int (a number of bytes) or None, got "
                        f"{type(max_bytes).__name__}")
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes: expected a number of bytes >= 0, got {max_bytes}")
    if isinstance(path, str):  # opened here, so that it is closed on every path, errors too
        opened = open(path, "rb")
    else:  # a file object: read from where it stands, as np.load reads it (the caller closes)
        data = path.read()
        if not isinstance(data, bytes):
            raise TypeError(f"path: expected a binary file, got one that reads "
                            f"{type(data).__name__}")
        name = getattr(path, "name", None)
        path, opened = (name if isinstance(name, str) else "the file object"), BytesIO(data)
    with opened as f, named_os_errors(path):
        magic = f.read(6)
        f.seek(0)
        if magic == b"\x93NUMPY":  # a bare .npy
            return _load_npy(f, path, max_bytes)
        if not magic.startswith(b"PK"):  # a zip (.npz)
            raise ValueError(f"{path}: not a fusedrnn/NumPy .npz file: not a zip archive (a pickled "
                             f"or damaged file is refused; fusedrnn files never run code when read)")
        arrays = _load_npz(f, path, max_bytes)
    if _META not in arrays:
        return OrderedDict(arrays)
    text = arrays.pop(_META)
    if text.shape != () or text.dtype.kind != "U":
        raise ValueError(f"{path}: malformed {_META} entry: expected a string, got an array of "
                         f"dtype {text.dtype} and shape {text.shape}")
    try:
        meta = json.loads(str(text[()]))
    except RecursionError:
        raise ValueError(f"{path}: malformed {_META} entry: its JSON is nested too deeply to "
                         f"parse (fr.save writes no tree deeper than {MAX_DEPTH} levels)") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: malformed {_META} entry: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "tree" not in meta:
        found = meta.get("format") if isinstance(meta, dict) else _describe(meta)
        raise ValueError(f"{path}: unknown format {found!r}; expected {FORMAT!r}")
    return _decode(meta["tree"], arrays, path)
