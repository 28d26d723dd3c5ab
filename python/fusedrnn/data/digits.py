"""Handwritten digits as sequences of image rows (many-to-one classification).

``load_digits`` reads the 8x8 digits shipped inside this package (``optdigits_8x8.npz``, read
with NumPy; no download, no scikit-learn): each image becomes 8 steps of 8 features in [0, 1].
They are the 1797 images of the test set of "Optical Recognition of Handwritten Digits"
(E. Alpaydin, C. Kaynak, 1998; UCI Machine Learning Repository, https://doi.org/10.24432/C50P49),
licensed CC BY 4.0: 32x32 bitmaps whose 4x4 blocks were counted into 8x8 images of values 0..16
(the same images scikit-learn bundles as ``load_digits``). ``load_mnist`` reads MNIST IDX files the user points at (28 steps
of 28 features); ``read_idx`` reads any IDX file, gzip-compressed or not.
"""
from __future__ import annotations

import errno
import gzip
import math
import os
import struct
import zlib
from importlib import resources

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

from ..io import checked_path
from ..nn.layers import _int_in, _number_in, _seeded

__all__ = ["load_digits", "load_mnist", "read_idx", "split"]

DIGITS_FILE = "optdigits_8x8.npz"
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def split(x, y, test_fraction, seed):
    """A seeded shuffle and split into (x_train, y_train, x_test, y_test)."""
    test_fraction = _number_in(test_fraction, "test_fraction", 0, 1, "in [0, 1]")
    order = _seeded(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def digits_images():
    """The shipped digits as (images [1797, 8, 8] uint8 in 0..16, labels [1797] uint8)."""
    with resources.files(__package__).joinpath(DIGITS_FILE).open("rb") as f:
        with np.load(f, allow_pickle=False) as npz:
            return npz["images"], npz["labels"]


def load_digits(test_fraction=0.2, seed=0, dtype: DTypeLike = np.float32):
    """The 1797 shipped 8x8 digits as x [N, 8, 8] (rows as time steps, values scaled to
    [0, 1]) and labels y [N] int64, split by a seeded shuffle into
    (x_train, y_train, x_test, y_test)."""
    images, labels = digits_images()
    x = (images / 16.0).astype(dtype)
    y = labels.astype(np.int64)
    return split(x, y, test_fraction, seed)


def read_idx(path):
    """An IDX file (the MNIST format; ``.gz`` is decompressed) as a NumPy array. The header is
    read first and then no more data than it declares (a small .gz of a huge body, or a file
    that does not match its header, is refused without holding it all)."""
    path = checked_path(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
                raise ValueError(f"{path}: not an IDX file (bad magic number)")
            ndim = magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_TYPES[magic[2]])
            expected = math.prod(shape) * dtype.itemsize  # (Python ints: no overflow)
            chunks, got = [], 0
            while got <= expected:  # (one byte past the declared size is enough to refuse)
                chunk = f.read(min(expected + 1 - got, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # (a download cut short)
        raise ValueError(f"{path}: a damaged or truncated gzip file ({exc})") from None
    if got != expected:
        raise ValueError(f"{path}: expected {expected} bytes of data for shape {shape}, got "
                         f"{'more' if got > expected else got}")
    body = b"".join(chunks)
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder, stem):
    if not os.path.isdir(folder):
        expected = "expected a folder holding the MNIST IDX files, e.g. train-images-idx3-ubyte[.gz]"
        if os.path.exists(folder):
            raise NotADirectoryError(errno.ENOTDIR, f"not a folder ({expected})", folder)
        raise FileNotFoundError(errno.ENOENT, f"no such folder ({expected})", folder)
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{folder}: no {stem}[.gz] (expected the MNIST IDX files)")


MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def mnist_files(folder):
    """The four files :func:`load_mnist` reads in ``folder`` (FileNotFoundError if one is
    missing)."""
    return [_find(folder, stem) for stem in MNIST_STEMS]


def load_mnist(folder, dtype: DTypeLike = np.float32, limit=None):
    """MNIST from a folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz): returns
    (x_train [N, 28, 28] in [0, 1], y_train, x_test, y_test); ``limit`` keeps the first
    ``limit`` training images (a positive integer, or None for all)."""
    limit = None if limit is None else _int_in(limit, "limit", 1)

    def images(stem):
        a = read_idx(_find(folder, stem))
        if a.ndim != 3:
            raise ValueError(f"{stem}: expected images [N, rows, cols], got shape {a.shape}")
        return (a / 255.0).astype(dtype)

    def labels(stem):
        a = read_idx(_find(folder, stem))
        if a.ndim != 1:
            raise ValueError(f"{stem}: expected labels [N], got shape {a.shape}")
        return a.astype(np.int64)

    def one_set(kind):
        x, y = images(f"{kind}-images-idx3-ubyte"), labels(f"{kind}-labels-idx1-ubyte")
        if len(x) != len(y) or not len(x):
            raise ValueError(f"{kind}-images-idx3-ubyte and {kind}-labels-idx1-ubyte in "
                             f"{folder}: expected as many labels as images, at least one, got "
                             f"{len(x)} images and {len(y)} labels")
        return x, y

    (x_train, y_train), (x_test, y_test) = one_set("train"), one_set("t10k")
    if x_train.shape[1:] != x_test.shape[1:]:  # (rows are the steps, columns the features)
        raise ValueError(f"t10k-images-idx3-ubyte in {folder}: expected images of the training "
                         f"images' size {x_train.shape[1:]}, got {x_test.shape[1:]}")
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    return x_train, y_train, x_test, y_test
