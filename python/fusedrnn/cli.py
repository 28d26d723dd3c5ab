"""The `fusedrnn` command (also `python -m fusedrnn`): info, bench, train, demo, generate, ...

Each feature module registers its own sub-commands through ``add_commands(subparsers)``; this
file only assembles them."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# Modules that contribute sub-commands; each defines add_commands(subparsers).
COMMAND_MODULES = ["fusedrnn.cli_commands.info", "fusedrnn.cli_commands.bench",
                   "fusedrnn.cli_commands.train"]
COMMAND_MODULES.append("fusedrnn.cli_commands.seq2seq")  # translate (issue 4)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedrnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


def print_json(obj) -> None:
    """One JSON object on the last line, for --json."""
    print(json.dumps(obj, sort_keys=True))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
