"""Atomic file writes: write a temporary file in the target's folder, then rename it over the
target, so a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import errno
import os
import stat
import tempfile


def _umask() -> int:
    """The process's umask: read from /proc where it can be (setting it to read it, the only
    portable way, would change it for every thread for a moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def writable_target(path) -> str:
    """The file a write to ``path`` replaces (a symbolic link followed, as open() follows it);
    OSError naming ``path`` (not a temporary file's) unless its folder exists and can be
    written in, and it is not a folder itself."""
    user_path = os.fspath(path)
    target = os.path.realpath(user_path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"the folder {folder} does not exist", user_path)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "a folder; expected a file name", user_path)
    return target


def _special(target) -> bool:
    """An existing file that is not a regular one (a device such as /dev/null, a FIFO, a
    socket): written into as open() writes, never replaced by a regular file."""
    try:
        return not stat.S_ISREG(os.stat(target).st_mode)
    except FileNotFoundError:
        return False


def check_writable(path) -> None:
    """Before a long run, not after it: OSError naming ``path`` unless ``writable_target``
    accepts it and a file can be made in its folder (what ``atomic_write`` will do; a
    read-only file system or folder is found only by trying, for root too)."""
    target = writable_target(path)
    if _special(target):
        if not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, "cannot write to it", os.fspath(path))
        return
    folder = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fusedrnn-check.", dir=folder)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write in the folder {folder}: {exc.strerror}",
                        os.fspath(path)) from None
    os.close(fd)
    os.unlink(tmp)


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a binary temporary file, then move it onto ``path``. The
    file gets the permissions ``open(path, "w")`` would give it (0o666 less the umask; an
    existing file's own), not mkstemp's owner-only 0o600. A symbolic link is followed: the file
    it points to is replaced, the link stays."""
    path = writable_target(path)
    if _special(path):  # nothing to keep intact: a device or pipe takes the bytes as they come
        with open(path, "wb") as f:
            write(f)
        return
    folder = os.path.dirname(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    # named after the target, so a file left by a killed process says whose it was
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
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
