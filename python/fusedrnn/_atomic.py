"""Atomic file writes: write a temporary file in the target's folder, then rename it over the
target, so a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a binary temporary file, then move it onto ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # named after the target, so a file left by a killed process says whose it was
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
