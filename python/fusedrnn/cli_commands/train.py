"""`fusedrnn train TASK`, `fusedrnn generate` and `fusedrnn demo`: the worked examples.

Each task lives in ``fusedrnn.tasks.<name>`` with ``add_arguments(parser)`` and
``run(args, progress) -> metrics``; this file adds the options every task shares (--json,
--plot, --save, --seed, --epochs, --threads) and prints the metrics: a short summary, or with
--json one JSON object on the last line (the progress bar goes to stderr).
"""
from __future__ import annotations

import argparse
import importlib

from . import nonnegative_int, positive_float, positive_int

TASKS = {"digits": "digits", "adding": "adding", "chars": "chars",
         "classify-text": "classify_text"}
TASKS.update({"dates": "dates", "caption-digits": "caption_digits"})  # seq2seq (issue 4)


def _common(p):
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--plot", metavar="PATH.png", help="draw learning curves (needs matplotlib)")
    p.add_argument("--save", metavar="PATH", help="save the trained model (fr.load reads it)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--threads", type=positive_int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--history", action="store_true", help="keep per-epoch history in --json")


def add_commands(sub):
    train = sub.add_parser("train", help="train a worked example: " + ", ".join(TASKS))
    tasks = train.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, module in TASKS.items():
        mod = importlib.import_module(f"fusedrnn.tasks.{module}")
        p = tasks.add_parser(name, help=mod.__doc__.splitlines()[0].split(": ", 1)[-1],
                             description=mod.__doc__)
        _common(p)
        mod.add_arguments(p)
        p.set_defaults(func=run_task, task_module=module)

    demo = sub.add_parser("demo", help="train digits in under 2 minutes; accuracy and "
                                       "throughput against the NumPy reference")
    _common(demo)
    importlib.import_module("fusedrnn.tasks.demo").add_arguments(demo)
    demo.set_defaults(func=run_task, task_module="demo")

    gen = sub.add_parser("generate", help="sample text from a model saved by `train chars --save`")
    gen.add_argument("--model", required=True, metavar="PATH")
    gen.add_argument("--prime", default="The ", help="text to start from")
    gen.add_argument("--length", type=positive_int, default=300, help="characters to generate")
    gen.add_argument("--temperature", type=positive_float, default=0.8)
    gen.add_argument("--seed", type=nonnegative_int, default=None)
    gen.add_argument("--json", action="store_true")
    gen.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    gen.set_defaults(func=run_generate)


def _summary(metrics, prefix=""):
    lines = []
    for key, value in metrics.items():
        if key in ("history", "sample"):
            continue
        if isinstance(value, dict):
            lines.append(f"{prefix}{key}:")
            lines += _summary(value, prefix + "  ")
        elif isinstance(value, float):
            lines.append(f"{prefix}{key}: {value:.4g}")
        else:
            lines.append(f"{prefix}{key}: {value}")
    return lines


def check_outputs(args):
    """Fail before training, not after it: --plot needs matplotlib, and --save/--plot need a
    folder that exists."""
    import os
    for option in ("save", "plot"):
        path = getattr(args, option, None)
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise ValueError(f"--{option} {path}: the folder {folder} does not exist")
    if getattr(args, "plot", None):
        from fusedrnn.tasks.common import pyplot
        pyplot()


def run_task(args):
    from fusedrnn import set_num_threads
    from fusedrnn.cli import print_json
    check_outputs(args)
    if args.threads:
        set_num_threads(args.threads)
    mod = importlib.import_module(f"fusedrnn.tasks.{args.task_module}")
    metrics = mod.run(args, progress=not args.no_progress)
    if not args.history:
        metrics.pop("history", None)
    if args.save:
        metrics["saved"] = args.save
    if args.plot:
        metrics["plot"] = args.plot
    if args.json:
        print_json(metrics)
    elif hasattr(mod, "summary"):
        print("\n".join(mod.summary(metrics)))
    else:
        print("\n".join(_summary(metrics)))
        if "sample" in metrics:
            print("sample:", metrics["sample"])
    return 0


def run_generate(args):
    from fusedrnn.cli import print_json
    from fusedrnn.tasks.chars import load_model, sample
    model, vocab = load_model(args.model)
    text = sample(model, vocab, args.prime, args.length, args.temperature, args.seed)
    if args.json:
        print_json({"prime": args.prime, "temperature": args.temperature, "text": text})
    else:
        print(text)
    return 0
