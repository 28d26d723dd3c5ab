"""fusedrnn's CUDA kernels against cuDNN (through torch.nn) on the anchors' GPU shapes.

One layer, one direction, float32. Two precisions, each applied to both sides:
  fp32  cuBLAS and cuDNN without TF32 (torch.backends.{cuda.matmul,cudnn}.allow_tf32 = False;
        fusedrnn.cuda.set_allow_tf32(False), the default)
  tf32  both with TF32 allowed.
Inference is one forward call; training is forward (saving the context) plus backward with
gradients for the input, the initial state and every weight. Timed with CUDA events around each
call on the shared default stream, after warm-up; the median of repeats. Speedup = cuDNN ms /
fusedrnn ms (above 1: we are faster). Where the automatic choice is the stepwise loop and B <= 64,
the persistent kernels are timed as well (JSON: ours_*_ms_persistent) to place the threshold.

    python bench/gpu_bench.py [--json out.json] [--quick] [--precisions fp32,tf32]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

# (cell, B, T, I, H): the GPU table of ../shared/anchors/README.md
SHAPES = [
    ("lstm", 1, 256, 512, 512), ("lstm", 8, 256, 512, 512), ("lstm", 64, 256, 512, 512),
    ("lstm", 256, 256, 1024, 1024), ("lstm", 32, 100, 256, 256), ("lstm", 16, 1000, 128, 128),
    ("gru", 1, 256, 512, 512), ("gru", 64, 256, 512, 512), ("gru", 256, 256, 1024, 1024),
    ("rnn", 1, 256, 512, 512), ("rnn", 256, 256, 1024, 1024),
]
QUICK = [("lstm", 1, 256, 512, 512), ("lstm", 8, 256, 512, 512), ("lstm", 64, 256, 512, 512),
         ("gru", 1, 256, 512, 512), ("rnn", 1, 256, 512, 512)]
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--quick", action="store_true", help="five small-batch shapes only")
    ap.add_argument("--precisions", default="fp32,tf32")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of repeats per timing")
    args = ap.parse_args(argv)

    import cupy as cp
    import torch

    import fusedrnn
    from fusedrnn import cuda as fcuda
    from fusedrnn import functional as F

    if not torch.cuda.is_available() or not fcuda.is_available():
        print("gpu_bench: needs a GPU, torch with CUDA and fusedrnn built with CUDA", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    print(f"device: {device}; {fcuda.device_summary()}")
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, cupy {cp.__version__}, "
          f"fusedrnn {fusedrnn.__version__}")

    def sync():
        torch.cuda.synchronize()

    event = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    rows = []
    shapes = QUICK if args.quick else SHAPES
    precisions = [p for p in args.precisions.split(",") if p]
    for precision in precisions:
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        fcuda.set_allow_tf32(tf32)
        for cell, B, T, I, H in shapes:
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
                                          d["b_ih"], d["b_hh"], training=training)
                fwd = F.gru_forward if cell == "gru" else F.rnn_forward
                y, h_n, ctx = fwd(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                  training=training)
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
            with torch.no_grad():
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
                with torch.no_grad():
                    module(tx, (th0, tc0) if cell == "lstm" else th0)

            xg = tx.clone().requires_grad_(True)
            h0g = th0.clone().requires_grad_(True)
            c0g = tc0.clone().requires_grad_(True)

            def torch_train():
                y, final = module(xg, (h0g, c0g) if cell == "lstm" else h0g)
                if cell == "lstm":
                    torch.autograd.backward([y, final[0], final[1]], [tdy, tdh, tdc])
                else:
                    torch.autograd.backward([y, final], [tdy, tdh])

            algorithm = ("persistent" if fcuda.persistent_forward_fits(cell, T, B, I, H)
                         and B <= 16 else "stepwise")
            # agreement check of the forward outputs before timing (catches a broken build)
            y_ours = ours_forward(False)[0]
            with torch.no_grad():
                y_ref = module(tx, (th0, tc0) if cell == "lstm" else th0)[0]
            err = float(torch.linalg.norm(torch.as_tensor(y_ours, device="cuda") - y_ref)
                        / torch.linalg.norm(y_ref))
            row = dict(cell=cell, B=B, T=T, I=I, H=H, precision=precision, algorithm=algorithm,
                       rel_diff_y=err)
            for mode, ours_fn, torch_fn in (("infer", ours_infer, torch_infer),
                                            ("train", ours_train, torch_train)):
                row[f"cudnn_{mode}_ms"], _ = time_call(torch_fn, sync, event, args.budget)
                row[f"ours_{mode}_ms"], reps = time_call(ours_fn, sync, event, args.budget)
                row[f"speedup_{mode}"] = row[f"cudnn_{mode}_ms"] / row[f"ours_{mode}_ms"]
                # the persistent kernels beyond the automatic batch limit, where they fit
                if algorithm == "stepwise" and B <= 64 and fcuda.persistent_forward_fits(
                        cell, T, B, I, H):
                    with fcuda.options(algorithm="persistent"):
                        try:
                            row[f"ours_{mode}_ms_persistent"], _ = time_call(
                                ours_fn, sync, event, args.budget)
                        except RuntimeError as exc:  # the backward kernel may not fit
                            row[f"ours_{mode}_ms_persistent"] = None
                            row["persistent_error"] = str(exc)
            rows.append(row)
            print(f"  {precision} {cell} B={B} T={T} I={I} H={H}: infer {row['cudnn_infer_ms']:.3f}"
                  f" vs {row['ours_infer_ms']:.3f} ms, train {row['cudnn_train_ms']:.3f} vs "
                  f"{row['ours_train_ms']:.3f} ms ({algorithm}; |dy|rel {err:.1e})"
                  + (f"; forced persistent: infer {row['ours_infer_ms_persistent']} train "
                     f"{row.get('ours_train_ms_persistent')}" if "ours_infer_ms_persistent" in row
                     else ""), flush=True)
            del module, d
            cp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    fcuda.set_allow_tf32(False)

    header = (f"{'prec':5} {'cell':5} {'B':>4} {'T':>5} {'I':>5} {'H':>5} | {'cuDNN inf':>9} "
              f"{'ours inf':>9} {'speedup':>7} | {'cuDNN trn':>9} {'ours trn':>9} {'speedup':>7}"
              f" | loop")
    print(f"\nms per call, median; speedup = cuDNN / ours; device: {device}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['precision']:5} {r['cell']:5} {r['B']:>4} {r['T']:>5} {r['I']:>5} {r['H']:>5} | "
              f"{r['cudnn_infer_ms']:9.3f} {r['ours_infer_ms']:9.3f} {r['speedup_infer']:6.2f}x | "
              f"{r['cudnn_train_ms']:9.3f} {r['ours_train_ms']:9.3f} {r['speedup_train']:6.2f}x"
              f" | {r['algorithm']}")
    if args.json:
        meta = dict(device=device, device_summary=fcuda.device_summary(),
                    torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                    cupy=cp.__version__, python=platform.python_version())
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
