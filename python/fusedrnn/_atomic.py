"""Atomic file writes: write a temporary file in the target's folder, then rename it over the
target, so a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import stat
import sys
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


def _user_path(path) -> str:
    """``path`` as a str; ValueError naming it for a NUL byte, IsADirectoryError for a name that
    ends in a separator (open() refuses it; a file named as the folder was written)."""
    user_path = os.fsdecode(os.fspath(path))
    if not user_path:
        raise FileNotFoundError(errno.ENOENT, "an empty name; expected a file name", user_path)
    if "\0" in user_path:
        raise ValueError(f"path: expected a file name, got {user_path!r} (it holds a NUL byte)")
    if user_path.endswith(os.sep) or (os.altsep and user_path.endswith(os.altsep)) or \
            os.path.basename(user_path) in (".", ".."):
        raise IsADirectoryError(errno.EISDIR, "a folder's name (it ends in a separator, '.' or "
                                "'..'); expected a file name", user_path)
    return user_path


def _own_descriptor(user_path):
    """The number of this process's open file that ``user_path`` names (/dev/stdout,
    /dev/stderr, /dev/fd/N, /proc/self/fd/N, through symbolic links too), else None. Such a
    name resolves to the file the shell redirected it to: replacing that lost what the process
    had printed, and a file opened anew there had an offset of its own, which the process's
    next print wrote over. (A regular file elsewhere in /dev, /dev/shm's, is a file.)"""
    names = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    numbered = re.compile(rf"/proc/{os.getpid()}/(?:task/\d+/)?fd/(\d+)")
    path = os.path.abspath(user_path)
    for _ in range(40):  # (a loop of links stops here, as the kernel's limit stops it)
        # the folders resolved (/dev/fd is /proc/<pid>/fd; a link to a folder too), the name
        # itself not: /proc/<pid>/fd/1 links to the redirected file, which is what is sought
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        match = numbered.fullmatch(path)
        if path in names or match:
            return names[path] if path in names else int(match.group(1))
        if not os.path.islink(path):
            return None
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return None


def _open_descriptor(user_path, fd) -> None:
    """OSError naming ``user_path`` unless ``fd`` is open for writing (closed: as open()
    finds no such file; read-only: os.write's bare EBADF named nothing)."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        raise FileNotFoundError(errno.ENOENT, "no such open file", user_path) from None
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise PermissionError(errno.EACCES, "open for reading only", user_path)


def _stream(user_path, target) -> bool:
    """A target written into, never replaced by a regular file: one of this process's open
    files (_own_descriptor), or an existing file that is not a regular one (a device such as
    /dev/null, a FIFO, a socket)."""
    if _own_descriptor(user_path) is not None:
        return True
    try:
        return not stat.S_ISREG(os.stat(target).st_mode)
    except FileNotFoundError:
        return False


def writable_target(path) -> str:
    """The file a write to ``path`` replaces (a symbolic link followed, as open() follows it);
    OSError naming ``path`` (not a temporary file's) unless its folder exists and can be
    written in, and it is not a folder itself nor a read-only file (open() refuses one)."""
    user_path = _user_path(path)
    target = os.path.realpath(user_path)
    # the folder as named (open() walks "nodir/../f" through nodir), then as resolved
    named = (os.path.dirname(user_path) or ".") if ".." in user_path.split(os.sep) else None
    for folder in (named, os.path.dirname(target)):
        if folder is None or os.path.isdir(folder):
            continue
        try:  # (open()'s error: ENOTDIR where a file stands for a folder at any depth)
            os.stat(folder)
            code = errno.ENOTDIR
        except OSError as error:
            code = error.errno
        raise OSError(code, f"the folder {folder} " + (
            "does not exist" if code == errno.ENOENT else f"cannot be reached: "
            f"{os.strerror(code)}"), user_path)  # (OSError(ENOENT) is a FileNotFoundError)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "a folder; expected a file name", user_path)
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, "the file is read-only", user_path)
    return target


def _where_allowed(call, *args):
    """``call(*args)``, skipped where the process may not (an owner only root gives, a file
    system without modes): the write goes on with mkstemp's owner and mode."""
    try:
        call(*args)
    except OSError:
        pass


def _temporary_file(target, user_path, prefix):
    """(fd, name) of a new file in ``target``'s folder; OSError naming ``user_path`` and the
    folder where none can be made (a read-only folder or file system, for root too)."""
    folder = os.path.dirname(target)
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write in the folder {folder}: {exc.strerror}",
                        user_path) from None


def check_writable(path) -> None:
    """Before a long run, not after it: OSError naming ``path`` unless ``writable_target``
    accepts it and a file can be made in its folder (what ``atomic_write`` will do)."""
    user_path = _user_path(path)
    target = writable_target(user_path)
    if _stream(user_path, target):  # (written into: it must exist, as atomic_write opens it)
        fd = _own_descriptor(user_path)
        if fd is not None:
            _open_descriptor(user_path, fd)
            return
        if not os.path.exists(user_path):
            raise FileNotFoundError(errno.ENOENT, "no such file or stream", user_path)
        if not os.access(user_path, os.W_OK):
            raise PermissionError(errno.EACCES, "cannot write to it", user_path)
        return
    fd, tmp = _temporary_file(target, user_path, ".fusedrnn-check.")
    os.close(fd)
    os.unlink(tmp)


@contextlib.contextmanager
def named_os_errors(name):
    """An OSError raised without a file name (a disk full at a write, an EIO at a read) gets
    ``name``: the message then says which file it was."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = name
        raise


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a binary temporary file, then move it onto ``path``. The
    file gets the permissions ``open(path, "w")`` would give it (0o666 less the umask; an
    existing file's own) and an existing file's owner where the process may give it (root),
    not mkstemp's owner-only 0o600. A symbolic link is followed: the file it points to is
    replaced, the link stays; another hard link to the file keeps the old contents. A device,
    pipe or /dev/stdout takes the bytes as open() would give them (written once, whole); an
    open binary file (io.BytesIO) is written into where it stands, as torch.save writes one."""
    if hasattr(path, "write") and not isinstance(path, (str, bytes, os.PathLike)):
        write(path)
        return
    user_path = _user_path(path)
    with named_os_errors(user_path):
        _atomic_write(user_path, writable_target(user_path), write)


def _atomic_write(user_path, path, write) -> None:
    if _stream(user_path, path):  # nothing to keep intact; whole bytes: a zip on /dev/null
        buffer = io.BytesIO()     # seeks, which a device's or pipe's stream cannot
        write(buffer)
        _write_into(user_path, buffer.getvalue())
        return
    try:
        existing = os.stat(path)
    except OSError:
        existing = None
    mode = existing.st_mode & 0o7777 if existing else 0o666 & ~_umask()
    # named after the target, so a file left by a killed process says whose it was
    fd, tmp = _temporary_file(path, user_path, f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            # the owner first (a change of owner clears the set-id bits), then the mode
            if existing and (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
                _where_allowed(os.fchown, f.fileno(), existing.st_uid, existing.st_gid)
            _where_allowed(os.fchmod, f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_into(user_path, data) -> None:
    """``data`` into a device or FIFO as open() writes, or through this process's own
    descriptor where the name is one (at its offset, after what Python buffered for it)."""
    fd = _own_descriptor(user_path)
    if fd is None:
        with open(user_path, "wb") as f:
            f.write(data)
        return
    _open_descriptor(user_path, fd)
    # (the process's own streams too: redirect_stdout or a test's capture may stand in sys's)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None and stream.fileno() == fd:
                stream.flush()
        except (AttributeError, OSError, ValueError):  # (a stream without a descriptor)
            pass
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
