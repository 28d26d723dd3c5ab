"""Seeded synthetic sequence tasks that need long memory.

``adding_problem``: x [N, T, 2]; channel 0 holds uniform(0, 1) values, channel 1 marks two
positions (one in each half of the sequence); the target [N] is the sum of the two marked values.
Predicting the mean (1.0) gives MSE 1/6 ~ 0.167, the baseline a model must beat.

``copy_memory``: int tokens x [N, 2*length + delay]: ``length`` symbols (1..n_symbols),
``delay - 1`` blanks (0), a delimiter (n_symbols + 1), then ``length`` blanks during which the
target y repeats the symbols (y is blank everywhere else).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

from ..nn.layers import _int_in, _seeded

__all__ = ["adding_problem", "copy_memory", "ADDING_BASELINE_MSE"]

ADDING_BASELINE_MSE = 1.0 / 6.0


def adding_problem(n, length, seed=None, dtype: DTypeLike = np.float32):
    """(x [n, length, 2], y [n]) for the adding problem as Le et al. (2015) and Arjovsky et al.
    (2016) set it (after Hochreiter & Schmidhuber 1997, whose values were in [-1, 1]): values
    uniform in [0, 1), one marked in each half of the sequence, y their sum (predicting the mean,
    1, gives an MSE of 1/6)."""
    n, length = _int_in(n, "n", 0), _int_in(length, "length", 2)
    rng = _seeded(seed)
    values = rng.uniform(0.0, 1.0, (n, length))
    half = length // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    marks = np.zeros((n, length))
    rows = np.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = np.stack([values, marks], axis=-1).astype(dtype)
    y = (values[rows, first] + values[rows, second]).astype(dtype)
    return x, y


def copy_memory(n, length=10, delay=50, n_symbols=8, seed=None):
    """(x [n, 2*length + delay], y [same]) int64 tokens: remember ``length`` symbols across
    ``delay`` blank steps and repeat them after the delimiter. Vocabulary: 0 blank, 1..n_symbols
    symbols, n_symbols + 1 delimiter. Guessing gives cross-entropy log(n_symbols) on the recall
    steps."""
    n, length = _int_in(n, "n", 0), _int_in(length, "length", 1)
    delay = _int_in(delay, "delay", 1)  # (the delimiter takes the last blank step)
    n_symbols = _int_in(n_symbols, "n_symbols", 1)
    rng = _seeded(seed)
    T = 2 * length + delay
    symbols = rng.integers(1, n_symbols + 1, (n, length))
    x = np.zeros((n, T), np.int64)
    y = np.zeros((n, T), np.int64)
    x[:, :length] = symbols
    x[:, length + delay - 1] = n_symbols + 1
    y[:, -length:] = symbols
    return x, y
