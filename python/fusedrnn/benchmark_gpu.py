"""fusedrnn's CUDA kernels against cuDNN (through torch.nn) on the anchors' GPU shapes; the GPU
side of `fusedrnn bench --device cuda` (and `python bench/gpu_bench.py`).

One layer, one direction, float32 data. Three precisions, each applied to both sides:
  fp32  cuBLAS and cuDNN without TF32 (torch.backends.{cuda.matmul,cudnn}.allow_tf32 = False;
        fusedrnn.cuda.set_allow_tf32(False), the default)
  tf32  both with TF32 allowed
  bf16  (only when asked: --precisions bf16) ours with bfloat16 products (fusedrnn.autocast's
        tensor-core path), cuDNN under torch.autocast("cuda", torch.bfloat16).
Inference is one forward call; training is forward (saving the context) plus backward with
gradients for the input, the initial state and every weight. Timed with CUDA events around each
call on the shared default stream, after warm-up; the median of repeats. Speedup = cuDNN ms /
fusedrnn ms (above 1: we are faster). In fp32, where the automatic choice is the stepwise loop and
B <= 64, the persistent kernels are timed as well (JSON: ours_*_ms_persistent) to place the
threshold; where it is the persistent loop, its flagged-exchange variant too
(FUSEDRNN_CUDA_EXCHANGE=flagged; JSON: ours_*_ms_flagged).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import numpy as np

from .cli_commands import parse_names, path

# (cell, B, T, I, H): the GPU rows of ../shared/anchors/README.md that the targets name.
SHAPES = [
    ("lstm", 1, 256, 512, 512), ("lstm", 8, 256, 512, 512), ("lstm", 64, 256, 512, 512),
    ("lstm", 16, 1000, 128, 128), ("lstm", 256, 256, 1024, 1024),
    ("gru", 1, 256, 512, 512), ("gru", 64, 256, 512, 512),
    ("rnn", 1, 256, 512, 512),
]
# the whole anchor table
ALL_SHAPES = SHAPES + [("lstm", 32, 100, 256, 256), ("gru", 256, 256, 1024, 1024),
                       ("rnn", 256, 256, 1024, 1024)]
QUICK = [("lstm", 1, 256, 512, 512), ("lstm", 8, 256, 512, 512), ("lstm", 64, 256, 512, 512),
         ("gru", 1, 256, 512, 512), ("rnn", 1, 256, 512, 512)]
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
EXCHANGE_ENV = "FUSEDRNN_CUDA_EXCHANGE"  # "flagged": the persistent kernels' barrier-free variant


def add_arguments(p):
    """The GPU benchmark's own command line (bench/gpu_bench.py)."""
    p.add_argument("--json", default=None, type=path, metavar="PATH", help="write the rows here")
    p.add_argument("--quick", action="store_true", help="five small-batch shapes only")
    p.add_argument("--all", action="store_true", help="every GPU row of the anchor table")
    p.add_argument("--cells", default="LSTM,GRU,RNN", help="comma-separated: LSTM,GRU,RNN")
    p.add_argument("--shapes", default=None,
                   help="semicolon-separated B,T,I,H tuples (for every cell in --cells)")
    p.add_argument("--modes", default="infer,train", help="infer,train")
    p.add_argument("--precisions", default="fp32,tf32")
    p.add_argument("--budget", type=float, default=0.25, help="seconds of repeats per timing")


def time_call(fn, sync, event, budget_s=0.25, min_reps=3, max_reps=40):
    """Median milliseconds of fn() between two CUDA events, after two warm-up calls."""
    fn()
    fn()
    sync()
    start, end = event(), event()
    samples = []
    t0 = time.perf_counter()
    while len(samples) < max_reps:
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
        if len(samples) >= min_reps and time.perf_counter() - t0 > budget_s:
            break
    return statistics.median(samples), len(samples)


def select_shapes(args):
    cells = parse_names("--cells", getattr(args, "cells", None) or "LSTM,GRU,RNN", list(GATES))
    if getattr(args, "shapes", None) is not None:
        from .benchmark import parse_shapes
        return [(c, B, T, I, H) for c in cells for (B, T, I, H) in parse_shapes(args.shapes)]
    base = (QUICK if getattr(args, "quick", False)
            else ALL_SHAPES if getattr(args, "all", False) else SHAPES)
    return [s for s in base if s[0] in cells]


# fp32 and tf32 apply to both sides; bf16: ours under bfloat16 products (fusedrnn.autocast's),
# cuDNN under torch.autocast("cuda", torch.bfloat16)
PRECISIONS = ("fp32", "tf32", "bf16")
# A row counts where our output is within this of cuDNN's float32 one (relative L2): float32
# sums in another order, TF32's 10-bit and bfloat16's 8-bit products; a broken kernel is O(1).
AGREE = {"fp32": 1e-3, "tf32": 1e-2, "bf16": 5e-2}


def run(args) -> int:
    """Time the rows; print one line per row as it goes and the table last. Returns 0; 1 when
    a row's outputs disagree with cuDNN's (AGREE); 2 when there is no GPU / torch with CUDA /
    CUDA build."""
    precisions = parse_names("--precisions", getattr(args, "precisions", None) or "fp32,tf32",
                             PRECISIONS)
    shapes = select_shapes(args)  # the options checked first, then what the machine has
    modes = parse_names("--modes", getattr(args, "modes", None) or "infer,train",
                        ["infer", "train"])
    import cupy as cp  # missing: the CLI's one line names the extra to install
    import torch

    import fusedrnn
    from fusedrnn import cuda as fcuda
    from fusedrnn import functional as F

    if not torch.cuda.is_available() or not fcuda.is_available():
        print("fusedrnn bench --device cuda: needs a GPU, torch with CUDA and fusedrnn built with "
              "CUDA", file=sys.stderr)
        return 2
    from .benchmark import budget_of
    from .cli_commands import check_output_path
    check_output_path("json", getattr(args, "json", None))  # before the timing, not after it
    budget = budget_of(args, quick=0.25, default=0.25)  # (a given --budget is taken as it is)

    device = torch.cuda.get_device_name()
    print(f"device: {device}; {fcuda.device_summary()}")
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, cupy {cp.__version__}, "
          f"fusedrnn {fusedrnn.__version__}", flush=True)

    def sync():
        torch.cuda.synchronize()

    event = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    rows = []
    saved_exchange = os.environ.get(EXCHANGE_ENV)
    try:
        for precision in precisions:
            tf32 = precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            fcuda.set_allow_tf32(tf32)
            for cell, B, T, I, H in shapes:
                rows.append(_bench_row(cell, B, T, I, H, precision, modes, budget, cp, torch,
                                       fcuda, F, sync, event))
    finally:
        fcuda.set_allow_tf32(False)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if saved_exchange is None:
            os.environ.pop(EXCHANGE_ENV, None)
        else:
            os.environ[EXCHANGE_ENV] = saved_exchange

    print_table(rows, device, modes)
    if getattr(args, "json", None):
        meta = dict(device=device, device_summary=fcuda.device_summary(),
                    torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                    cupy=cp.__version__, python=platform.python_version())
        from ._atomic import write_text
        from .cli_commands import to_json
        write_text(args.json, to_json(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {args.json}")
    from .benchmark import describe_row, report_disagreement
    return report_disagreement(rows, describe_row)


def _bench_row(cell, B, T, I, H, precision, modes, budget, cp, torch, fcuda, F, sync, event):
    # bf16: ours under bfloat16 products, cuDNN under torch.autocast("cuda", torch.bfloat16)
    ours_precision = "bfloat16" if precision == "bf16" else None

    def torch_autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")

    rng = np.random.default_rng(0)
    G = GATES[cell]
    s = 1 / np.sqrt(H)
    host = dict(x=rng.standard_normal((T, B, I)), h0=rng.standard_normal((B, H)),
                c0=rng.standard_normal((B, H)),
                w_ih=rng.uniform(-s, s, (G * H, I)), w_hh=rng.uniform(-s, s, (G * H, H)),
                b_ih=rng.uniform(-s, s, G * H), b_hh=rng.uniform(-s, s, G * H),
                dy=rng.standard_normal((T, B, H)), dh=rng.standard_normal((B, H)),
                dc=rng.standard_normal((B, H)))
    d = {k: cp.asarray(v.astype(np.float32)) for k, v in host.items()}

    # ---- fusedrnn
    def ours_forward(training):
        if cell == "lstm":
            return F.lstm_forward(d["x"], d["h0"], d["c0"], d["w_ih"], d["w_hh"],
                                  d["b_ih"], d["b_hh"], training=training,
                                  precision=ours_precision)
        fwd = F.gru_forward if cell == "gru" else F.rnn_forward
        y, h_n, ctx = fwd(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                          training=training, precision=ours_precision)
        return y, h_n, None, ctx

    def ours_infer():
        ours_forward(False)

    def ours_train():
        y, h_n, c_n, ctx = ours_forward(True)
        if cell == "lstm":
            F.lstm_backward(ctx, d["dy"], d["dh"], d["dc"])
        elif cell == "gru":
            F.gru_backward(ctx, d["dy"], d["dh"])
        else:
            F.rnn_backward(ctx, d["dy"], d["dh"])

    # ---- cuDNN through torch.nn
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        I, H).cuda().float()
    with torch.no_grad():  # (setting the weights; the timed inference runs under inference_mode)
        module.weight_ih_l0.copy_(torch.as_tensor(d["w_ih"], device="cuda"))
        module.weight_hh_l0.copy_(torch.as_tensor(d["w_hh"], device="cuda"))
        module.bias_ih_l0.copy_(torch.as_tensor(d["b_ih"], device="cuda"))
        module.bias_hh_l0.copy_(torch.as_tensor(d["b_hh"], device="cuda"))
    tx = torch.as_tensor(d["x"], device="cuda").clone()
    th0 = torch.as_tensor(d["h0"], device="cuda")[None].clone()
    tc0 = torch.as_tensor(d["c0"], device="cuda")[None].clone()
    tdy = torch.as_tensor(d["dy"], device="cuda")
    tdh = torch.as_tensor(d["dh"], device="cuda")[None]
    tdc = torch.as_tensor(d["dc"], device="cuda")[None]

    def torch_infer():
        with torch.inference_mode(), torch_autocast():
            module(tx, (th0, tc0) if cell == "lstm" else th0)

    xg = tx.clone().requires_grad_(True)
    h0g = th0.clone().requires_grad_(True)
    c0g = tc0.clone().requires_grad_(True)

    def torch_train():
        for leaf in (xg, h0g, c0g):  # (a user's loop: each step's gradients alone)
            leaf.grad = None
        module.zero_grad(set_to_none=True)
        with torch_autocast():
            y, final = module(xg, (h0g, c0g) if cell == "lstm" else h0g)
        if cell == "lstm":
            torch.autograd.backward([y, final[0], final[1]], [tdy, tdh, tdc])
        else:
            torch.autograd.backward([y, final], [tdy, tdh])

    algorithm = ("persistent" if fcuda.persistent_forward_fits(cell, T, B, I, H,
                                                               precision=ours_precision)
                 and B <= 16 else "stepwise")
    # agreement check of the forward outputs before timing (catches a broken build)
    y_ours = ours_forward(False)[0]
    with torch.inference_mode():
        y_ref = module(tx, (th0, tc0) if cell == "lstm" else th0)[0]  # cuDNN float32
    err = float(torch.linalg.norm(torch.as_tensor(y_ours, device="cuda") - y_ref)
                / torch.linalg.norm(y_ref))
    row = dict(cell=cell, B=B, T=T, I=I, H=H, precision=precision, algorithm=algorithm,
               rel_diff_y=err, agree=err <= AGREE[precision])
    fns = {"infer": (ours_infer, torch_infer), "train": (ours_train, torch_train)}
    for mode in modes:
        ours_fn, torch_fn = fns[mode]
        row[f"cudnn_{mode}_ms"], _ = time_call(torch_fn, sync, event, budget)
        row[f"ours_{mode}_ms"], _ = time_call(ours_fn, sync, event, budget)
        row[f"speedup_{mode}"] = row[f"cudnn_{mode}_ms"] / row[f"ours_{mode}_ms"]
        if precision != "fp32":
            continue
        # the persistent kernels beyond the automatic batch limit, where they fit
        if algorithm == "stepwise" and B <= 64 and fcuda.persistent_forward_fits(cell, T, B, I, H):
            with fcuda.options(algorithm="persistent"):
                try:
                    row[f"ours_{mode}_ms_persistent"], _ = time_call(ours_fn, sync, event, budget)
                except RuntimeError as exc:  # the backward kernel may not fit
                    row[f"ours_{mode}_ms_persistent"] = None
                    row["persistent_error"] = str(exc)
        # the persistent kernels with the flagged exchange instead of a grid barrier per step
        if algorithm == "persistent":
            os.environ[EXCHANGE_ENV] = "flagged"
            try:
                row[f"ours_{mode}_ms_flagged"], _ = time_call(ours_fn, sync, event, budget)
            finally:
                os.environ.pop(EXCHANGE_ENV, None)
    print(f"  {precision} {cell} B={B} T={T} I={I} H={H}: "
          + ", ".join(f"{m} {row[f'cudnn_{m}_ms']:.3f} vs {row[f'ours_{m}_ms']:.3f} ms"
                      for m in modes)
          + f" ({algorithm}; |dy|rel {err:.1e})"
          + "".join(f"; {k} {row[k]:.3f}" for k in row
                    if k.endswith(("_persistent", "_flagged")) and row[k] is not None),
          flush=True)
    del module, d
    cp.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()
    return row


def print_table(rows, device, modes=("infer", "train")):
    parts = [f"{'prec':5} {'cell':5} {'B':>4} {'T':>5} {'I':>5} {'H':>5}"]
    for m in modes:
        name = "inf" if m == "infer" else "trn"
        parts.append(f"{'cuDNN ' + name:>9} {'ours ' + name:>9} {'speedup':>7}")
    header = " | ".join(parts) + " | loop"
    print(f"\nms per call, median; speedup = cuDNN / ours; device: {device}")
    print(header)
    print("-" * len(header))
    for r in rows:
        parts = [f"{r['precision']:5} {r['cell']:5} {r['B']:>4} {r['T']:>5} {r['I']:>5} {r['H']:>5}"]
        for m in modes:
            parts.append(f"{r[f'cudnn_{m}_ms']:9.3f} {r[f'ours_{m}_ms']:9.3f} "
                         f"{r[f'speedup_{m}']:6.2f}x")
        print(" | ".join(parts) + f" | {r['algorithm']}")


def main(argv=None) -> int:
    import argparse
    from .cli import error_line
    ap = argparse.ArgumentParser(description=(__doc__ or "fusedrnn GPU bench").splitlines()[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:  # (one line, as `fusedrnn bench --device cuda` says it: no CuPy, no GPU, bad options)
        return run(args)
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:
        print(f"fusedrnn: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
