"""The `fusedrnn` command (also `python -m fusedrnn`): info, bench, train, demo, generate, ...

Each feature module registers its own sub-commands through ``add_commands(subparsers)``; this
file only assembles them and turns every expected failure (a bad option value, a missing or
malformed file, a missing optional dependency) into one line, ``fusedrnn: error: ...``, and
exit code 2. ``--debug`` (anywhere on the line) shows the traceback instead. Ctrl-C exits with
130 and one line: where training stopped and, with a checkpoint, the command that resumes it."""
from __future__ import annotations

import argparse
import codecs
import importlib
import os
import shlex
import sys
import warnings

from . import __version__

# Modules that contribute sub-commands; each defines add_commands(subparsers).
COMMAND_MODULES = ["fusedrnn.cli_commands.info", "fusedrnn.cli_commands.bench",
                   "fusedrnn.cli_commands.train", "fusedrnn.cli_commands.seq2seq"]
# What to install for an optional dependency a command found missing.
EXTRAS = {"torch": "fusedrnn[torch]", "onnxruntime": "fusedrnn[onnx]", "onnx": "fusedrnn[onnx]",
          "matplotlib": "fusedrnn[plot]", "cupy": "fusedrnn[cuda]", "h5py": "fusedrnn[keras]"}
# Failures a user can cause and mend: reported in one line. Anything else is a bug in
# fusedrnn and keeps its traceback.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError, MemoryError)


class UsageError(Exception):
    """A command line argparse refused (the message names the option)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        where = self.prog.partition(" ")[2]  # the sub-command, after "fusedrnn"
        raise UsageError(f"{where + ': ' if where else ''}{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fusedrnn", description=(__doc__ or "fusedrnn").splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (accepted anywhere)")
    parser.add_argument("--version", action="version", version=f"fusedrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def error_line(exc: BaseException) -> str:
    """The one line printed for an expected failure: what happened and what to do."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        hint = f'pip install "{EXTRAS[top]}"' if top in EXTRAS else f"pip install {top}"
        return f"this needs the optional package {top!r}, which is not installed: {hint}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + str(exc) if str(exc) else ''} (try smaller sizes)"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line, whatever the message held


def interrupted_line(exc: KeyboardInterrupt, argv) -> str:
    """What Ctrl-C prints: where it stopped and, when a checkpoint holds the run, the command
    that continues it (this command line with --resume)."""
    text = str(exc) or "interrupted"
    path = getattr(exc, "checkpoint", None)
    if not path:
        return text
    kept, skip = [], False
    for arg in argv:  # drop an earlier --resume
        if skip or arg == "--resume" or arg.startswith("--resume="):
            skip = arg == "--resume"
            continue
        kept.append(arg)
    return f"{text}; to continue: {shlex.join(['fusedrnn', *kept, '--resume', path])}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = argv.index("--") if "--" in argv else len(argv)  # (after "--": texts, kept)
    debug = "--debug" in argv[:options]
    argv = [a for a in argv[:options] if a != "--debug"] + argv[options:]
    formatter = warnings.formatwarning
    if not debug:  # a warning as a command's other messages say things, not a source line
        warnings.formatwarning = lambda message, *_, **__: f"fusedrnn: warning: {message}\n"
    errors = _escape_what_stdout_cannot_encode()
    try:
        return _run(argv, debug)
    finally:
        warnings.formatwarning = formatter
        if errors is not None:
            sys.stdout.reconfigure(errors=errors)


def _escape_what_stdout_cannot_encode():
    """Text a stdout cannot encode (PYTHONIOENCODING=ascii, the C locale's ASCII with its
    surrogateescape) written as backslash escapes, not an error after part of the output;
    returns the error handler to give back (None where nothing changed)."""
    errors = getattr(sys.stdout, "errors", None)
    encoding = getattr(sys.stdout, "encoding", None) or ""
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        utf8 = False
    if not callable(getattr(sys.stdout, "reconfigure", None)) or not (
            errors == "strict" or (errors == "surrogateescape" and not utf8)):
        return None
    sys.stdout.reconfigure(errors="backslashreplace")
    return errors


def _run(argv, debug) -> int:
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
        if extras:  # (argparse names the top command; the help to read is the sub-command's)
            where = " ".join(w for w in ("fusedrnn", getattr(args, "command", None),
                                         getattr(args, "task", None)) if w)
            raise UsageError(f"{where.partition(' ')[2] + ': ' if ' ' in where else ''}"
                             f"unrecognized arguments: {' '.join(extras)} (see `{where} --help`)")
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"fusedrnn: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped (`| head`): quietly, as other commands do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        except (OSError, ValueError):
            pass
        return 141  # a shell's status for SIGPIPE
    except KeyboardInterrupt as e:  # training says where it stopped (TrainingInterrupted)
        print(f"fusedrnn: {interrupted_line(e, argv)}", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        print(f"fusedrnn: error: {error_line(e)}", file=sys.stderr)
        return 2


def print_json(obj) -> None:
    """One JSON object on the last line, for --json (strict: NaN becomes null)."""
    from .cli_commands import to_json
    print(to_json(obj, sort_keys=True))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
