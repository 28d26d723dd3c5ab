"""`fusedrnn bench --framework onnx`: one ONNX model, an LSTM/GRU/RNN node with its weights as
initializers (``benchmark.onnx_node_model``), run by ONNX Runtime's CPU kernels and by
fusedrnn's ONNX backend (``fusedrnn.onnx.Backend``: the model prepared once, then
``rep.run([x])``), alternating blocks in one process (``benchmark.median_ms``). Float32,
inference (an ONNX model has no training). The "x ORT" column is ORT's ms over ours; the
outputs are checked to agree."""
from __future__ import annotations

import numpy as np

from . import benchmark


def bench_row(cell, B, T, I, H, threads, budget):
    import onnxruntime as ort

    from .onnx import Backend
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    model = benchmark.onnx_node_model(cell, x, benchmark._weights(cell, I, H))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rep = Backend.prepare(model)
    fns = {"ort": lambda: session.run(None, {"X": x})[0], "ours": lambda: rep.run([x])[0]}
    diff = float(np.abs(fns["ort"]() - fns["ours"]()).max())  # (checked before timing)
    ms = benchmark.median_ms(fns, budget)
    return {"cell": cell, "B": B, "T": T, "I": I, "H": H, "threads": threads,
            "ort_ms": float(f"{ms['ort']:.4g}"), "ours_ms": float(f"{ms['ours']:.4g}"),
            "x_ort": round(ms["ort"] / ms["ours"], 2), "max_abs_diff": diff,
            "agree": benchmark._agrees({"ort": diff}), **benchmark.measured(ms)}


def run(args) -> int:
    if getattr(args, "device", "cpu") != "cpu":
        raise ValueError("--framework onnx: CPU only (the backend's device is 'CPU'); drop "
                         "--device cuda")
    import fusedrnn as fr
    for module in ("onnx", "onnxruntime"):
        __import__(module)  # ImportError (the command names the extra to install)
    fr.set_num_threads(args.threads)
    cells, modes, shapes = benchmark.selection(args)
    if "infer" not in modes:  # (as --regimes: the default infer,train times inference)
        raise ValueError("--framework onnx: times inference only; drop --modes or include infer")
    budget = benchmark.budget_of(args)
    print(benchmark.cpu_header(args.threads))
    print(f"fusedrnn {fr.__version__}: the same ONNX model in ONNX Runtime and in "
          f"fusedrnn.onnx.Backend (inference)", flush=True)
    rows = []
    for cell in cells:
        for (B, T, I, H) in shapes:
            r = bench_row(cell, B, T, I, H, args.threads, budget)
            rows.append(r)
            print(f"  {cell} B={B} T={T} I={I} H={H}: ORT {r['ort_ms']} ours {r['ours_ms']} ms",
                  flush=True)
    print(f"\n{'cell':<6}{'B':>4}{'T':>6}{'I':>5}{'H':>5} | {'ORT':>8}{'ours':>8} | "
          f"{'x ORT':>6}  max |diff|")
    for r in rows:
        print(f"{r['cell']:<6}{r['B']:>4}{r['T']:>6}{r['I']:>5}{r['H']:>5} | "
              f"{benchmark._fmt(r['ort_ms'])}{benchmark._fmt(r['ours_ms'])} | "
              f"{benchmark._fmt(r['x_ort'], 6)}  {r['max_abs_diff']:.1e}")
    benchmark.write_json(args.json, threads=args.threads, rows=rows)
    return benchmark.report_disagreement(rows, benchmark.describe_row)
