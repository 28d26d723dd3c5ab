"""A training step (forward + backward) of torch.nn's layer and the adapter's, same weights, in
one process, by which gradients autograd wants: every one (the input is an embedding's
output), all but the input's (the input is data: features), and the input's alone (a frozen
layer: fine-tuning what lies above it, a saliency map). The adapter's backward makes only what
is wanted; torch's CPU LSTM/GRU make every gradient whatever is wanted. Example:
    python bench/wanted_grads.py --json wanted.json
"""
import argparse
import platform
import statistics
import time

import torch

import fusedrnn as fr
import fusedrnn.torch as frt
from fusedrnn.cli_commands import check_output_path, path, positive_int, threads, to_json

# cell, T, B, I, H
SHAPES = [("LSTM", 50, 64, 512, 512), ("LSTM", 100, 32, 128, 256), ("GRU", 100, 16, 256, 256),
          ("LSTM", 100, 1, 128, 128)]
# case -> (the input requires grad, the parameters require grad)
CASES = {"every gradient": (True, True), "input is data": (False, True),
         "frozen layer": (True, False)}


def step_ms(layer, x, x_grad, reps):
    """Median ms of a training step (after 3 warm-up steps)."""
    times = []
    for _ in range(reps + 3):
        layer.zero_grad(set_to_none=True)
        xx = x.detach().requires_grad_(x_grad)
        start = time.perf_counter()
        layer(xx)[0].sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:]) * 1e3


def parse_shape(parser, text):
    """cell,T,B,I,H -> a SHAPES entry; argparse's error (exit 2) naming --shapes otherwise."""
    cell, *sizes = text.split(",")
    try:
        sizes = [int(v) for v in sizes]
    except ValueError:
        sizes = []
    if cell not in ("LSTM", "GRU", "RNN") or len(sizes) != 4 or min(sizes) <= 0:
        parser.error(f"--shapes: expected cell,T,B,I,H (cell LSTM, GRU or RNN; positive sizes), "
                     f"got {text!r}")
    return (cell, *sizes)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=threads, default=2)
    p.add_argument("--reps", type=positive_int, default=15)
    p.add_argument("--shapes", default=None, metavar="LIST",
                   help="semicolon-separated cell,T,B,I,H (default: four anchor shapes)")
    p.add_argument("--json", type=path, default=None, help="write the rows as JSON")
    args = p.parse_args()
    try:
        check_output_path("json", args.json)  # (before the timing, not after it)
    except ValueError as error:
        p.error(str(error))
    shapes = SHAPES if args.shapes is None else [parse_shape(p, s) for s in args.shapes.split(";")]
    torch.set_num_threads(args.threads)
    cpu = fr.info()["cpu"]
    print(f"{cpu}; torch {torch.__version__}, {args.threads} threads; ms per training step")
    rows = []
    for cell, T, B, I, H in shapes:
        torch.manual_seed(0)
        ref = getattr(torch.nn, cell)(I, H)
        ours = getattr(frt, cell)(I, H)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I)
        for case, (x_grad, params_grad) in CASES.items():
            for layer in (ref, ours):
                layer.requires_grad_(params_grad)
            torch_ms = step_ms(ref, x, x_grad, args.reps)
            ours_ms = step_ms(ours, x, x_grad, args.reps)
            rows.append(dict(cell=cell, T=T, B=B, I=I, H=H, case=case, torch_ms=torch_ms,
                             ours_ms=ours_ms, speedup=torch_ms / ours_ms))
            print(f"{cell} T={T} B={B} I={I} H={H}  {case:<15} torch {torch_ms:8.2f}  "
                  f"ours {ours_ms:8.2f}  {torch_ms / ours_ms:5.2f}x", flush=True)
    if args.json:
        from fusedrnn._atomic import write_text
        write_text(args.json, to_json(dict(cpu=cpu, machine=platform.machine(),
                                           torch=torch.__version__, threads=args.threads,
                                           rows=rows), indent=1))


if __name__ == "__main__":
    main()
