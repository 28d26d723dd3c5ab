"""The one rule for a flag argument anywhere in fusedrnn."""
from __future__ import annotations

import numbers

import numpy as np


def check_flag(value, name):
    """``value`` as a bool: a bool (Python's or NumPy's), or an integer 0 or 1 (as a config gives
    a flag); TypeError naming ``name`` for anything else, whose truth is not what it says (a
    string: "no" is true; None; a float; an array)."""
    if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    shown = f" of shape {value.shape}" if isinstance(value, np.ndarray) else (
        f" {value!r}" if isinstance(value, (str, float, numbers.Integral)) else "")
    raise TypeError(f"{name}: expected a bool (True or False), got {type(value).__name__}{shown}")
