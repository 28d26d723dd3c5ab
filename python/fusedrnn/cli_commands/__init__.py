"""The `fusedrnn` sub-commands (one module each, with ``add_commands(subparsers)``) and the
argument types they share: each refuses a bad value with argparse's one-line error naming the
option, what it expected and what came."""
from __future__ import annotations

import argparse
import os


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
share = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1 (neither)")  # a split's
threads = _number(int, lambda v: 1 <= v <= 4096, "an integer from 1 to 4096")  # set_num_threads's


def path(text):
    """A file or folder option's type: any text but an empty one (which the options' "given?"
    tests would take for not given, or the OS would name as "")."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def usable_cores():
    """The CPUs this process may run on (its affinity: taskset, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1



def at_least(low):
    """An integer option's type: low or more."""
    return _number(int, lambda v: v >= low, f"an integer of at least {low}")


def precision(float32, bfloat16):
    """A --precision option's type: any spelling ``fusedrnn.autocast`` takes ("float32"/"fp32",
    "bfloat16"/"bf16") as this command spells it (``float32`` or ``bfloat16``)."""
    def parse(text):
        from ..amp import check_precision
        try:
            return {"float32": float32, "bfloat16": bfloat16}[check_precision(text)]
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {float32} or {bfloat16}, got "
                                             f"{text!r}") from None
    parse.__name__ = f"{float32} or {bfloat16}"
    return parse


def parse_names(option, text, allowed):
    """The comma-separated names ``text`` of ``option`` (e.g. "--cells"), lower-cased, each
    once, in order; ValueError naming the option unless there is one and each is ``allowed``."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in allowed:
            raise ValueError(f"{option}: expected names from {','.join(allowed)}, got {n!r}")
    if not names:
        raise ValueError(f"{option}: expected names from {','.join(allowed)}, got {text!r}")
    return list(dict.fromkeys(names))


def check_output_path(option, path):
    """Before the work, not after it: ValueError naming ``--option`` unless ``path`` (if given)
    can be written as a file (what the writes check themselves: fusedrnn._atomic)."""
    from .._atomic import check_writable
    if path:
        try:
            check_writable(path)
        except OSError as exc:
            raise ValueError(f"--{option} {path}: {exc.strerror}") from None


def to_json(obj, **kwargs) -> str:
    """Strict JSON (what jq and JSON.parse read): a NaN or infinite number, such as the loss of a
    run that diverged, becomes null."""
    import json
    import math

    def strict(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        return v
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
