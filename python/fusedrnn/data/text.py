"""Text data: a character corpus (a user's file, or an embedded default), a character
vocabulary, CSV text classification data, and batching of variable-length sequences.

The default corpus is the documentation that ships with Python itself: the docstrings of a
fixed list of standard-library modules and of their public classes and functions (about 200 KB
of English prose), so it needs no download. When Python runs with ``-OO`` (docstrings
stripped) the default falls back to the license text Python installs beside its standard
library (``LICENSE.txt``).
"""
from __future__ import annotations

import csv
import importlib
import inspect
import io
import os
import re
import sysconfig
import unicodedata
import warnings

import numpy as np

from .._flags import check_flag
from ..functional import check_unmasked
from ..io import checked_path
from ..nn.layers import _int_in, _seeded

__all__ = ["DEFAULT_CORPUS_MODULES", "default_corpus", "load_text", "CharVocab",
           "pad_sequences", "batches", "read_text_classification_csv", "WordVocab", "tokenize"]

DEFAULT_CORPUS_MODULES = (
    "collections functools itertools json argparse logging pathlib subprocess textwrap typing "
    "unittest string random statistics fractions decimal datetime calendar heapq bisect shutil "
    "tempfile zipfile tarfile csv email.message http.client urllib.request threading os re"
).split()


def default_corpus():
    """The embedded default text (see the module docstring)."""
    with warnings.catch_warnings():  # some modules warn when their attributes are read
        warnings.simplefilter("ignore")
        parts = _docstrings()
    text = "\n\n".join(parts)
    if len(text) < 10000:
        license_path = os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt")
        if os.path.exists(license_path):
            with open(license_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
    if not text:
        raise RuntimeError("no default corpus: Python's docstrings are stripped (-OO) and its "
                           "LICENSE.txt is missing; give a text file with --data")
    return text


def _docstrings():
    parts = []
    for name in DEFAULT_CORPUS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        doc = inspect.getdoc(module)
        if doc:
            parts.append(doc)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(doc)
    return parts


def _read_utf8(path, universal_newlines=True):
    """The text of a user's file: UTF-8, a byte-order mark dropped, line ends as Python's text
    mode gives them (``universal_newlines``) or as they are; anything else is a ValueError
    naming the file and the offset of the first byte that is not UTF-8 (never characters
    silently replaced)."""
    path = checked_path(path)  # (an int would be a file descriptor, read and closed: stdout's)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 1]
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {bad!r}); save it as UTF-8"
                         ) from None
    text = text[1:] if text.startswith("\ufeff") else text
    return text.replace("\r\n", "\n").replace("\r", "\n") if universal_newlines else text


def load_text(path=None):
    """The text of ``path`` (UTF-8; a byte-order mark is not part of it), or the default corpus
    when ``path`` is None."""
    if path is None:
        return default_corpus()
    text = _read_utf8(path)
    if len(text) < 2:
        raise ValueError(f"{path}: expected a text file of at least 2 characters")
    return text


class CharVocab:
    """Characters <-> integer ids (sorted characters of a corpus)."""

    def __init__(self, chars):
        if not isinstance(chars, str):
            given = type(chars).__name__
            chars = list(chars) if hasattr(chars, "__iter__") else None
            if chars is None or not all(isinstance(c, str) and len(c) == 1 for c in chars):
                raise TypeError(f"chars: expected a str (or an iterable of characters), got "
                                f"{given}")
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text, unknown=None):
        """Ids of ``text``; a character outside the vocabulary maps to ``unknown`` or raises."""
        ids = []
        for c in text:
            i = self.index.get(c, unknown)
            if i is None:
                raise ValueError(f"text: character {c!r} is not in the vocabulary")
            ids.append(i)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids):
        """The string of the characters with these ids (the inverse of :meth:`encode`); an id
        outside [0, len(vocab)) or not an integer is a ValueError (-1 read the last one)."""
        ids = np.asarray(check_unmasked(ids, "ids"))
        if ids.ndim > 1:  # (rows of a batch were joined into one string)
            raise ValueError(f"ids: expected one sequence of ids (1-D), got shape {ids.shape}; "
                             f"decode a batch row by row")
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids: expected integers in [0, {len(self)}), got "
                             f"{ids.dtype} values in [{ids.min()}, {ids.max()}]")
        return "".join(self.chars[i] for i in ids.reshape(-1).tolist())


def _word_char(c):
    """A letter, a combining mark (Devanagari's vowel signs, say) or a digit, of any script, or
    an apostrophe."""
    return c == "'" or unicodedata.category(c)[0] in "LMN"


def tokenize(text):
    """Lower-cased words: runs of letters, combining marks and digits of any script, and
    apostrophes (the typographic one, U+2019, read as "'": "don’t" is "don't")."""
    words, start = [], None
    text = text.lower().replace("\u2019", "'")
    for i, c in enumerate(text):
        if (c.isascii() and (c.isalnum() or c == "'")) or (not c.isascii() and _word_char(c)):
            start = i if start is None else start
        elif start is not None:
            words.append(text[start:i])
            start = None
    if start is not None:
        words.append(text[start:])
    return words


class WordVocab:
    """Words <-> ids with 0 reserved for padding and 1 for unknown words."""

    PAD, UNK = 0, 1

    def __init__(self, texts, min_count=1, max_size=None):
        counts = {}
        for t in texts:
            for w in tokenize(t):
                counts[w] = counts.get(w, 0) + 1
        words = sorted((w for w, c in counts.items() if c >= min_count),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:  # (the two reserved entries count: words[:-1] below 2)
            words = words[:_int_in(max_size, "max_size", 2) - 2]
        self.words = ["<pad>", "<unk>"] + words
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self):
        return len(self.words)

    def encode(self, text):
        return np.array([self.index.get(w, self.UNK) for w in tokenize(text)] or [self.UNK],
                        dtype=np.int64)


_CSV_FIELD_LIMIT = 2 ** 31 - 1


def read_text_classification_csv(path):
    """The texts and labels of a UTF-8 CSV. With a header row naming columns ``text`` and
    ``label`` (any case, in any place, other columns ignored) those columns; without one, rows
    ``text,label`` (the last field the label, the fields before it the text, rejoined by
    commas; so under a header of exactly ``text,label``). Returns (texts, labels [N] int64,
    class names); a row without a label or of another number of fields than a wider header's,
    a file that is not UTF-8 or a field csv cannot read is a ValueError naming the file and its
    line. Reading raises the ``csv`` module's process-wide field size limit to 2**31 - 1 (a
    long text is no error) and leaves it there."""
    text = _read_utf8(path, universal_newlines=False)
    # a long review is no error: csv's limit (process-wide, 128 KiB by default) is raised, never
    # lowered (lowering it back could race with another thread's reader)
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:  # (said in the docstring)
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    # read as csv reads (a closed quote with text after it, "great" movie, is taken); but a
    # quote left open to the end of the file, which kept the rest of the file as one field
    # (rows dropped silently), is an error at the line where it opened: strict mode finds it
    for strict in (False, True):
        reader = csv.reader(io.StringIO(text, newline=""), strict=strict)  # (\n, \r, \r\n)
        rows, start = [], 1  # (line, fields) of the rows with something in them; the line the
        # next row starts on
        try:
            for r in reader:
                if r and any(field.strip() for field in r):
                    rows.append((start, r))
                start = reader.line_num + 1
        except csv.Error as e:
            if strict and "unexpected end of data" not in str(e):
                break  # (strict's other complaints are csv's leniency, taken above)
            raise ValueError(f"{path}: line {start}: {e}"
                             + (" (a quote opened in this row and never closed)" if strict
                                else "")) from None
        if not strict:
            lenient = rows
    rows = lenient
    header = [c.strip().lower() for c in rows[0][1]] if rows else []
    columns = None
    if "text" in header and "label" in header:
        rows = rows[1:]
        if header != ["text", "label"]:  # (that one reads as rows text,label: commas rejoined)
            columns = header.index("text"), header.index("label")
    if not rows:
        raise ValueError(f"{path}: expected rows of text,label; found none")
    texts, names = [], []
    for line, r in rows:
        if columns is None:
            if len(r) < 2:
                raise ValueError(f"{path}: line {line}: expected text,label, got {r!r}")
            t, n = ",".join(r[:-1]), r[-1]
        else:
            if len(r) != len(header):  # (an unquoted comma would move the label)
                raise ValueError(f"{path}: line {line}: expected the header's {len(header)} "
                                 f"fields (quote a text holding commas), got {len(r)}: {r!r}")
            t, n = r[columns[0]], r[columns[1]]
        if not n.strip():
            raise ValueError(f"{path}: line {line}: the label is empty")
        if "\n" in n or "\r" in n:
            raise ValueError(f"{path}: line {line}: the label spans lines ({n!r}: a quote left "
                             f"open?)")
        texts.append(t)
        names.append(n.strip())
    # integer class names in numeric order ("2" before "10": their ids keep the labels' order)
    numeric = all(re.fullmatch(r"[+-]?[0-9]+", n) for n in names)
    classes = sorted(set(names), key=(lambda n: (int(n), n)) if numeric else None)
    if len(classes) < 2:
        raise ValueError(f"{path}: expected at least 2 distinct labels, got {classes}")
    lookup = {c: i for i, c in enumerate(classes)}
    return texts, np.array([lookup[n] for n in names], dtype=np.int64), classes


def pad_sequences(sequences, padding_value=0, batch_first=False, dtype=None):
    """A list of arrays [L_i, ...] as one padded array ([T, N, ...], or [N, T, ...] with
    batch_first; T = the longest) and lengths [N] int64, ready for ``lengths=`` of the layers."""
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__iter__"):
        raise TypeError(f"sequences: expected a list of arrays, got {type(sequences).__name__}")
    batch_first = check_flag(batch_first, "batch_first")
    sequences = [np.asarray(check_unmasked(s, f"sequences[{i}]"))
                 for i, s in enumerate(sequences)]
    if not sequences:
        raise ValueError("sequences: expected at least one sequence")
    for i, s in enumerate(sequences):
        if s.ndim == 0:
            raise ValueError(f"sequences[{i}]: expected a sequence (an array of at least one "
                             f"dimension), got a scalar {s!r}")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    # (an empty sequence, np.asarray([]), is float64 of shape (0,): the others' dtype and
    # trailing shape, as Keras' pad_sequences)
    filled = [s for s in sequences if s.size] or sequences
    tail = filled[0].shape[1:]
    for i, s in enumerate(sequences):
        if s.shape[1:] != tail and s.size:
            raise ValueError(f"sequences[{i}]: expected trailing shape {tail}, got {s.shape[1:]}")
    try:
        dtype = np.result_type(*filled) if dtype is None else np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"dtype: expected a NumPy dtype, got {dtype!r} ({error})") from None
    fill = np.asarray(padding_value)
    if fill.ndim != 0:
        raise ValueError(f"padding_value: expected one value, got shape {fill.shape}")
    try:
        with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (NumPy's ComplexWarning: the loss is named below)
            cast = fill.astype(dtype)
    except (TypeError, ValueError):  # ("a" into float32)
        raise ValueError(f"padding_value: {padding_value!r} does not fit dtype {dtype}; give "
                         f"a value of the dtype, or dtype=") from None
    if dtype.kind in "fc" and fill.dtype.kind in "biufc":  # (0.1 into float32 rounds, as torch's)
        fits = bool(np.isfinite(cast) or not np.isfinite(fill)) and (
            dtype.kind == "c" or fill.imag == 0)  # (1+2j into a float dtype lost its 2j)
    else:  # exactly: NaN or 1.5 into integers, "<pad>" into 2 characters
        fits = bool(cast == fill)
    if not fits:
        # (np.full cast unsafely: NaN into int64 padded with -2**63, "<pad>" to "<p")
        raise ValueError(f"padding_value: {padding_value!r} does not fit dtype {dtype} (it "
                         f"would pad with {cast.item()!r}); give a value of the dtype, or dtype=")
    out = np.full((len(sequences), int(lengths.max(initial=0))) + tail, cast, dtype=dtype)
    for i, s in enumerate(sequences):
        if len(s):
            out[i, :len(s)] = s
    if not batch_first:
        out = np.ascontiguousarray(np.swapaxes(out, 0, 1))
    return out, lengths


def batches(n, batch_size, shuffle=True, rng=None):
    """Index arrays covering range(n) in batches (the last one may be smaller); ``rng``: a
    numpy Generator (or a seed) to shuffle with, None for fresh entropy."""
    # (at the call; n at most what an index array can hold: NumPy's permutation of 2**63 gave
    # an empty one, and batches of nothing without end)
    n = _int_in(n, "n", 0, np.iinfo(np.intp).max // np.dtype(np.intp).itemsize)
    batch_size = _int_in(batch_size, "batch_size", 1)
    shuffle = check_flag(shuffle, "shuffle")
    if shuffle:  # (a Generator or a RandomState as it is: its draws go on; a seed makes one)
        rng = rng if callable(getattr(rng, "permutation", None)) else _seeded(rng, "rng")
    order = rng.permutation(n) if shuffle else np.arange(n)
    return (order[start:start + batch_size] for start in range(0, n, batch_size))
