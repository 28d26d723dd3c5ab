"""`fusedrnn demo`: why fusedrnn exists, in under a minute.

First it trains the digits classifier (an LSTM reading the shipped 8x8 digits row by row, then a
linear layer on its final state) and reports held-out accuracy. Then it times one realistic
layer, LSTM(128 -> 128) over 100 steps, at batch 1 (a server answering one request at a time)
and batch 32 (training, batched inference), inference and one training step (forward + BPTT),
against every peer that is installed -- PyTorch's ``torch.nn.LSTM`` and an ONNX Runtime LSTM
node -- in this process, with the same weights, inputs and threads (outputs checked to agree;
``fusedrnn.benchmark``). Without a peer for a row it times the NumPy float64 reference instead,
and says how to add the peers. Speedup = peer ms / fusedrnn ms (> 1: fusedrnn is faster).
"""
from __future__ import annotations

import argparse
import time

from .. import benchmark, get_num_threads
from ..cli_commands import positive_float, positive_int
from . import digits

# (label, B, T, I, H): the layer the demo times.
SHAPES = [("LSTM B=1", 1, 100, 128, 128), ("LSTM B=32", 32, 100, 128, 128)]
PEER_NAMES = {"torch": "PyTorch", "ort": "ONNX Runtime", "numpy_ref": "NumPy float64 reference"}
PEER_INSTALL = {"torch": 'pip install "fusedrnn[torch]"', "ort": 'pip install "fusedrnn[onnx]"'}


def add_arguments(p):
    p.add_argument("--hidden", type=positive_int, default=digits.DEFAULTS["hidden"],
                   help="hidden size of the digits classifier")
    p.add_argument("--batch-size", type=positive_int, default=digits.DEFAULTS["batch_size"])
    p.add_argument("--timing-seconds", type=positive_float, default=0.5,
                   help="seconds of timing per contestant and row")
    p.add_argument("--no-timing", action="store_true", help="train and report accuracy only")
    p.set_defaults(epochs=digits.DEFAULTS["epochs"])


def speed_table(budget, threads):
    """Time SHAPES against the installed peers: a list of rows (fusedrnn.benchmark.bench_row
    plus a label) and the peers that were missing."""
    have = benchmark.installed_peers()
    rows = []
    for label, B, T, I, H in SHAPES:
        for mode in ("infer", "train"):
            # Training has one peer (PyTorch); ONNX Runtime runs inference only.
            peers_here = have["torch"] or (mode == "infer" and have["ort"])
            row = benchmark.bench_row("LSTM", mode, B, T, I, H, threads, budget, have,
                                      reference=not peers_here)
            rows.append(dict(row, label=label))
    return rows, [k for k, v in have.items() if not v]


def format_table(rows):
    """The speed table as text lines: ms per call, then the speedups."""
    peers = [k for k in ("torch", "ort", "numpy_ref") if any(r[f"{k}_ms"] for r in rows)]
    head = (f"{'layer (T=100, I=H=128)':<24}{'mode':<7}{'fusedrnn ms':>12}"
            + "".join(f"{PEER_NAMES[k] + ' ms':>{max(12, len(PEER_NAMES[k]) + 4)}}" for k in peers)
            + "  speedup")
    lines = [head]
    for r in rows:
        cells = "".join(f"{benchmark._fmt(r[f'{k}_ms'], max(12, len(PEER_NAMES[k]) + 4), 3)}"
                        for k in peers)
        speedups = ", ".join(f"{r[f'x_{k}']:.2f}x {PEER_NAMES[k]}" for k in peers if r[f"x_{k}"])
        lines.append(f"{r['label']:<24}{r['mode']:<7}{r['ours_ms']:>12.3f}{cells}  {speedups}")
    return lines


def summary(metrics):
    """What `fusedrnn demo` prints (without --json)."""
    lines = [f"digits ({metrics['model']}): held-out accuracy {metrics['test_accuracy']:.3f} "
             f"after {metrics['epochs']} epoch{'s' if metrics['epochs'] != 1 else ''} "
             f"({metrics['train_seconds']:.1f} s)"]
    if metrics.get("speed"):
        lines += ["", f"speed, ms per call (median; {metrics['threads']} threads, same weights "
                      f"and inputs, outputs checked to agree):"]
        lines += format_table(metrics["speed"])
    for k in metrics.get("missing_peers", []):
        lines.append(f"{PEER_NAMES[k]} is not installed; to compare with it: {PEER_INSTALL[k]}")
    return lines


def run(args, progress=True):
    start = time.perf_counter()
    train_args = argparse.Namespace(data=None, limit=None, cell="lstm", hidden=args.hidden,
                                    batch_size=args.batch_size, lr=digits.DEFAULTS["lr"],
                                    trainer="bptt", population=0, epochs=args.epochs,
                                    seed=args.seed, save=args.save, plot=args.plot,
                                    checkpointer=getattr(args, "checkpointer", None))
    result = digits.run(train_args, progress)
    metrics = {"task": "demo", "test_accuracy": result["test_accuracy"],
               "train_seconds": result["seconds"], "epochs": args.epochs,
               "threads": get_num_threads(),
               "model": f"LSTM(8, {args.hidden}) + Linear({args.hidden}, 10)",
               "history": result["history"]}
    if not args.no_timing:
        rows, missing = speed_table(args.timing_seconds, get_num_threads())
        metrics.update(speed=rows, missing_peers=missing)
    metrics["seconds"] = time.perf_counter() - start
    return metrics
