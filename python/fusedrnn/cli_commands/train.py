"""`fusedrnn train TASK`, `fusedrnn generate` and `fusedrnn demo`: the worked examples.

Each task lives in ``fusedrnn.tasks.<name>`` with ``add_arguments(parser)`` and
``run(args, progress) -> metrics``; this file adds the options every task shares (--json,
--plot, --save, --seed, --epochs, --threads, --precision, --checkpoint, --checkpoint-every,
--resume) and
prints the metrics: a short summary, or with --json one JSON object on the last line (the
progress bar goes to stderr). The checkpoint options become ``args.checkpointer`` (a
``fusedrnn.training.Checkpointer``), which each task hands to ``fit``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..training import DEFAULT_CHECKPOINT_EVERY
from . import (check_output_path, nonnegative_int, path, positive_float, positive_int,
               precision, threads)

TASKS = {"digits": "digits", "adding": "adding", "chars": "chars",
         "classify-text": "classify_text"}
TASKS.update({"dates": "dates", "caption-digits": "caption_digits"})  # seq2seq (issue 4)


def _common(p):
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--plot", type=path, metavar="PATH.png",
                   help="save the run's picture: learning curves (dates: attention maps; "
                        "caption-digits: captioned images) (needs matplotlib)")
    p.add_argument("--save", type=path, metavar="PATH", help="save the trained model (fr.load reads it)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--threads", type=threads, default=None,
                   help="kernel threads (default: the cores this process may use)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--history", action="store_true", help="keep per-epoch history in --json")
    p.add_argument("--precision", type=precision("float32", "bfloat16"),
                   choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: train and evaluate under fusedrnn.autocast (the recurrent "
                        "products from bfloat16 weights and states, float32 accumulation)")
    p.add_argument("--checkpoint", type=path, metavar="PATH",
                   help="write the training state to PATH (atomically) every --checkpoint-every "
                        "steps, at the end and on Ctrl-C")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                   help=f"steps (batches) between checkpoints (default "
                        f"{DEFAULT_CHECKPOINT_EVERY})")
    p.add_argument("--resume", type=path, metavar="PATH",
                   help="continue, bit for bit, the run that wrote this checkpoint (give the "
                        "options it was started with)")


def add_commands(sub):
    train = sub.add_parser("train", help="train a worked example: " + ", ".join(TASKS))
    tasks = train.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, module in TASKS.items():
        mod = importlib.import_module(f"fusedrnn.tasks.{module}")
        doc = mod.__doc__ or name  # (python -OO strips docstrings)
        summary = " ".join(doc.split("\n\n")[0].split())  # the first paragraph
        p = tasks.add_parser(name, help=summary.split(": ", 1)[-1], description=doc)
        _common(p)
        mod.add_arguments(p)
        p.set_defaults(func=run_task, task_module=module)

    demo = sub.add_parser("demo", help="train digits in under 2 minutes; accuracy, and speed "
                                       "against PyTorch and ONNX Runtime where installed (else "
                                       "the NumPy reference)")
    _common(demo)
    importlib.import_module("fusedrnn.tasks.demo").add_arguments(demo)
    demo.set_defaults(func=run_task, task_module="demo")

    gen = sub.add_parser("generate", help="sample text from a model saved by `train chars --save`")
    gen.add_argument("--model", required=True, type=path, metavar="PATH")
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
    """Fail before training, not after it: --plot needs matplotlib and a picture format it
    writes, --save/--plot/--checkpoint need a folder that exists (and a path that is not a
    folder), and none of them may name another option's file: the run would overwrite it (the
    training data, the checkpoint it resumes from, the model it loads; only --checkpoint may go
    on where --resume read)."""
    import os
    outputs = ("save", "plot", "checkpoint")
    for option in outputs:
        check_output_path(option, getattr(args, option, None))

    def same(a, b):
        try:
            return os.path.samefile(a, b)
        except OSError:  # (one does not exist yet)
            return os.path.realpath(a) == os.path.realpath(b)
    named = [(o, getattr(args, o, None)) for o in (*outputs, "data", "resume", "model")]
    named = [(o, file) for o, file in named if file]
    for i, (out, file) in enumerate(named):
        for other, other_file in named[i + 1:]:
            if out in outputs and {out, other} != {"checkpoint", "resume"} \
                    and same(file, other_file):
                raise ValueError(f"--{out} and --{other} both name {file}: the run would "
                                 f"overwrite it; give --{out} another file")
    if getattr(args, "plot", None):
        from fusedrnn.tasks.common import pyplot
        pyplot()
        from matplotlib.backend_bases import FigureCanvasBase
        kinds = FigureCanvasBase.get_supported_filetypes()
        kind = os.path.splitext(args.plot)[1].lstrip(".").lower()
        if kind not in kinds:
            raise ValueError(f"--plot: expected a file name ending in one of "
                             f".{', .'.join(sorted(kinds))} (the picture's format), got "
                             f"{args.plot}")


def run_task(args):
    from fusedrnn import set_num_threads
    from fusedrnn.cli import print_json
    check_outputs(args)
    args.checkpointer = make_checkpointer(args)  # reads and checks --resume before training
    if args.threads:
        set_num_threads(args.threads)
    mod = importlib.import_module(f"fusedrnn.tasks.{args.task_module}")
    from fusedrnn.amp import autocast
    with autocast(enabled=args.precision == "bfloat16"):
        # bars on a terminal only: a log file or a pipe would fill with carriage returns
        metrics = mod.run(args, progress=not args.no_progress and sys.stderr.isatty())
    metrics["precision"] = args.precision
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
        if metrics.get("sample") is not None:  # (a diverged model has none)
            print("sample:", metrics["sample"])
    if metrics.get("speed"):  # (demo's table: a row whose outputs disagree is named, exit 1)
        from fusedrnn import benchmark
        return benchmark.report_disagreement(metrics["speed"], benchmark.describe_row)
    return 0


# Options that leave what training computes unchanged: a run may be resumed with others.
NOT_TRAINING = {"json", "plot", "save", "no_progress", "history", "threads", "debug", "checkpoint",
                "checkpoint_every", "resume", "checkpointer", "func", "task_module", "command",
                "task",
                # what is measured after training: the demo's timing, a beam-search metric's beam
                "timing_seconds", "no_timing", "beam"}


def data_identity(data):
    """What a checkpoint records of --data: its contents (a file's; a folder's MNIST files,
    which the digits task reads), not its name: the same data under another path resumes,
    other data under the same path is refused (it resumed, no longer bit for bit). The path
    itself where the contents are not plain files (a pipe is read once, by the task)."""
    import hashlib
    import os
    import stat
    from fusedrnn.data.digits import mnist_files
    try:
        files = mnist_files(data) if os.path.isdir(data) else [data]
        if not all(stat.S_ISREG(os.stat(name).st_mode) for name in files):
            return data
        digest, size = hashlib.sha256(), 0
        for name in files:
            digest.update(f"{os.path.basename(name)}\0{os.path.getsize(name)}\0".encode())
            with open(name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
    except OSError:
        return data  # (the task names what it cannot read)
    return f"contents sha256 {digest.hexdigest()[:16]}, {size} bytes"


def _resumed_data(path):
    """The --data a checkpoint at ``path`` was written with, or None (no such file, no such
    entry, a damaged file: the Checkpointer says which)."""
    from fusedrnn import io
    try:
        return io.load(path)["run"]["options"].get("data")
    except Exception:  # noqa: BLE001 (reported by the Checkpointer, which reads it again)
        return None


def make_checkpointer(args):
    """The Checkpointer of --checkpoint/--checkpoint-every/--resume; the run it describes (the
    command and every option that changes training, --data by its contents) is what a
    resumed file must match."""
    from fusedrnn.training import Checkpointer
    command = f"train {args.task}" if getattr(args, "task", None) else args.command
    options = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_TRAINING}
    if options.get("data") is not None and (args.checkpoint or args.resume):
        # (a checkpoint of an earlier release recorded the path: compared as it was)
        saved = _resumed_data(args.resume) if args.resume else None
        if not isinstance(saved, str) or saved.startswith("contents sha256"):
            options["data"] = data_identity(options["data"])
    return Checkpointer(args.checkpoint, args.checkpoint_every, args.resume,
                        run={"command": command, "options": options}, ignore=NOT_TRAINING)


def run_generate(args):
    from fusedrnn.cli import print_json
    from fusedrnn.tasks.chars import draw, load_model
    model, vocab = load_model(args.model)
    drawn = draw(model, vocab, args.prime, args.length, args.temperature, args.seed)
    if args.json:
        print_json({"prime": args.prime, "temperature": args.temperature,
                    "text": args.prime + "".join(drawn)})
        return 0
    sys.stdout.write(args.prime)  # then each character as it is drawn: a long run shows its
    for char in drawn:            # text as it goes, and Ctrl-C keeps what was written
        sys.stdout.write(char)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
