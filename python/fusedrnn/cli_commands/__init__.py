"""The `fusedrnn` sub-commands (one module each, with ``add_commands(subparsers)``) and the
argument types they share: each refuses a bad value with argparse's one-line error naming the
option, what it expected and what came."""
from __future__ import annotations

import argparse


def _number(kind, test, expected):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a positive number")
fraction = _number(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
