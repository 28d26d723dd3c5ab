"""`fusedrnn bench --precision bf16`: float32 against bfloat16 autocast, ours and PyTorch's, each
contestant in its own process (timed back to back in blocks that alternate between the processes,
``benchmark_regimes.own_processes``), same weights and input: ours in float32, ours under
``fr.autocast("bfloat16")``, torch.nn in float32 and under
``torch.autocast("cpu", torch.bfloat16)``. Inference (``--modes infer``): the layers in eval mode;
training (``--modes train``): a forward and a backward with dy = 1 (ours: the kernels, as
``fusedrnn bench``'s training rows; torch: the module with autograd). ONNX Runtime has no
bfloat16 RNN kernel on the CPU: not timed. Each inference row also gives the relative error
(L2) of both bfloat16 outputs against float64.

torch 2.13 sends its LSTM under CPU autocast to oneDNN, which refuses a bfloat16 LSTM on CPUs
without bfloat16 instructions (AVX2-only, e.g. Zen 3: "could not create a primitive descriptor"):
there torch's LSTM is timed on its own native path, oneDNN switched off (``torch_autocast``), as a
torch user on that CPU must run it, and the row says so."""
from __future__ import annotations

import contextlib

import numpy as np

from . import benchmark, benchmark_regimes


# The contestants, each timed in its own process (the method: no other library's
# threads live in it): ours and torch.nn, float32 and under bfloat16 autocast.
CONTESTANTS = ("ours", "ours_bf16", "torch", "torch_bf16")


_REFUSALS: dict = {}

# A row counts where ours agree with float64 to these: the float32 layer (relative L2) and the
# bfloat16 one (relative L2 of the output; of a training step's dx, its max |difference| over
# its largest value); a wrong result is off by O(1).
FP32_TOLERANCE, BF16_TOLERANCE = 1e-4, 5e-2


def onednn_refusal(cell):
    """Why torch.nn's ``cell`` layer under ``torch.autocast("cpu", torch.bfloat16)`` fails on this
    CPU with oneDNN on (torch's default), or None where it runs: probed once per cell on a tiny
    layer."""
    if cell not in _REFUSALS:
        import torch
        m = getattr(torch.nn, cell)(4, 4)
        try:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                m(torch.zeros((2, 4) if cell.endswith("Cell") else (2, 1, 4)))
            _REFUSALS[cell] = None
        except RuntimeError as exc:
            _REFUSALS[cell] = f"oneDNN: {str(exc).split('.')[0]}"
    return _REFUSALS[cell]


@contextlib.contextmanager
def torch_autocast(cell, enabled=True):
    """``torch.autocast("cpu", torch.bfloat16, enabled=enabled)`` as torch can run ``cell``'s
    layer here: with oneDNN off (``torch.backends.mkldnn.enabled``, restored on exit) where
    ``onednn_refusal(cell)`` says oneDNN fails it, so that torch's native bfloat16 path runs."""
    import torch
    off = enabled and onednn_refusal(cell) is not None
    before = torch.backends.mkldnn.enabled
    if off:
        torch.backends.mkldnn.enabled = False
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            yield
    finally:
        torch.backends.mkldnn.enabled = before


def contestant(who, cell, x, w, threads, mode="infer"):
    """A callable returning the output [T, B, H] as NumPy under bfloat16 autocast: ``who``
    "ours_bf16" or "torch_bf16" (the float32 two: ``benchmark_regimes.contestant``), ``mode``
    "infer" or "train" (a forward and a backward). Ours never imports torch."""
    if who == "ours_bf16":
        import fusedrnn as fr
        ours = benchmark_regimes.contestant("ours", cell, x, w, threads, mode)

        def ours_bf16():
            with fr.autocast("bfloat16"):
                return ours()
        return ours_bf16
    if who != "torch_bf16":
        raise ValueError(f"unknown bfloat16 contestant {who!r}; expected ours_bf16 or torch_bf16")
    import torch
    torch.set_num_threads(threads)
    m = getattr(torch.nn, cell)(x.shape[2], w["weight_hh_l0"].shape[1])
    m.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()})
    xt = torch.from_numpy(x)
    xg = xt.clone().requires_grad_(True)

    def torch_bf16():
        if mode == "infer":
            with torch.inference_mode(), torch_autocast(cell):
                return m(xt)[0].float().numpy()
        xg.grad = None  # (a user's loop: each step's gradients alone)
        m.zero_grad(set_to_none=True)
        with torch_autocast(cell):
            y = m(xg)[0]
        y.float().sum().backward()
        return y.detach().float().numpy()
    return torch_bf16


def bench_row(cell, B, T, I, H, threads, budget, have_torch, mode="infer"):
    """One row: each contestant timed back to back in its own process, the processes' blocks
    alternating (``benchmark_regimes.own_processes``); inference rows also give each output's
    relative error (L2) against float64, computed here."""
    who_all = CONTESTANTS if have_torch else CONTESTANTS[:2]
    x, w = benchmark_regimes._inputs(cell, B, T, I, H)
    err = {}
    if mode == "infer":
        exact = np.asarray(benchmark.reference_peer(cell, x, w)())
        norm = np.linalg.norm(exact)
        err = {k: float(np.linalg.norm(
            np.asarray(benchmark_regimes.contestant(k, cell, x, w, threads)(), np.float64)
            - exact) / norm)
            for k in who_all}
    else:  # the backward's check: dx of one training step against float64's
        import fusedrnn as fr
        exact = benchmark.input_gradient("numpy_ref", cell, x, w, threads)
        scale = max(float(np.max(np.abs(exact))), 1e-30)
        for k, bf16 in (("ours", False), ("ours_bf16", True)):
            with fr.autocast("bfloat16", enabled=bf16):
                dx = benchmark.input_gradient("ours", cell, x, w, threads)
            err[f"graddiff_{k}"] = float(np.max(np.abs(dx - exact))) / scale
    timed = benchmark_regimes.own_processes(who_all, cell, B, T, I, H, threads, budget,
                                            ["b2b"], mode)
    ms = {k: v["b2b"] for k, v in timed.items()}
    row = {"cell": cell, "mode": mode, "B": B, "T": T, "I": I, "H": H, "threads": threads}
    for k in CONTESTANTS:
        row[f"{k}_ms"] = benchmark.figures(ms[k]) if k in ms else None
        row[f"relerr_{k}"] = err.get(k)
    ours, ours_bf16 = (err.get(k, err.get(f"graddiff_{k}")) for k in ("ours", "ours_bf16"))
    if mode != "infer":
        row["graddiff_ours"], row["graddiff_ours_bf16"] = ours, ours_bf16
    row["agree"] = ours <= FP32_TOLERANCE and ours_bf16 <= BF16_TOLERANCE  # (NaN: False)
    # where oneDNN refuses torch's bfloat16 layer here, torch_bf16 ran its native path
    row["torch_bf16_onednn_refusal"] = onednn_refusal(cell) if have_torch else None
    row["bf16_speedup"] = round(ms["ours"] / ms["ours_bf16"], 2)  # fp32 ms / bf16 ms
    row["x_torch_bf16"] = round(ms["torch_bf16"] / ms["ours_bf16"], 2) if "torch_bf16" in ms \
        else None
    # training's target is the faster of torch's bfloat16 and float32 (its bf16 training is
    # often the slower)
    row["x_torch_best"] = round(min(ms["torch_bf16"], ms["torch"]) / ms["ours_bf16"], 2) \
        if "torch_bf16" in ms else None
    return row


def run(args) -> int:
    if getattr(args, "device", "cpu") != "cpu":
        raise ValueError("--precision bf16: CPU only so far; drop --device cuda")
    import fusedrnn as fr
    fr.set_num_threads(args.threads)
    cells, modes, shapes = benchmark.selection(args)
    budget = benchmark.budget_of(args)
    have_torch = benchmark.installed_peers()["torch"]
    print(benchmark.cpu_header(args.threads))
    print(f"fusedrnn {fr.__version__}; bf16 products: {fr.info()['bf16_products']}; "
          f"torch: {'yes' if have_torch else 'not installed'}; ONNX Runtime: no bf16 RNN kernel; "
          "each contestant in its own process",
          flush=True)
    rows = []
    for mode in modes:
        for cell in cells:
            for (B, T, I, H) in shapes:
                r = bench_row(cell, B, T, I, H, args.threads, budget, have_torch, mode)
                rows.append(r)
                print(f"  {cell} {mode} B={B} T={T} I={I} H={H}: ours {r['ours_ms']} bf16 "
                      f"{r['ours_bf16_ms']}; torch {r['torch_ms']} bf16 {r['torch_bf16_ms']} ms",
                      flush=True)
    print(f"\n{'cell':<5}{'mode':>6}{'B':>4}{'T':>6}{'I':>5}{'H':>5} | {'ours':>8}"
          f"{'ours bf16':>10}{'torch':>8}{'torch bf16':>11} | {'x fp32':>9}"
          f"{'x torch bf16':>13}{'x faster torch':>15} | rel. error bf16: ours, torch (train: our dx)")
    for r in rows:
        err_o, err_t = r["relerr_ours_bf16"], r["relerr_torch_bf16"]
        errors = "-" if err_o is None else f"{err_o:.1e}, " + (
            f"{err_t:.1e}" if err_t is not None else "-")
        if r.get("graddiff_ours_bf16") is not None:  # a training row: our dx's
            errors = f"dx {r['graddiff_ours_bf16']:.1e}"
        print(f"{r['cell']:<5}{r['mode']:>6}{r['B']:>4}{r['T']:>6}{r['I']:>5}{r['H']:>5} | "
              f"{benchmark._fmt(r['ours_ms'])}{benchmark._fmt(r['ours_bf16_ms'], 10)}"
              f"{benchmark._fmt(r['torch_ms'])}{benchmark._fmt(r['torch_bf16_ms'], 11)} | "
              f"{benchmark._fmt(r['bf16_speedup'], 9)}{benchmark._fmt(r['x_torch_bf16'], 13)}"
              f"{benchmark._fmt(r['x_torch_best'], 15)} | {errors}")
    for cell in dict.fromkeys(r["cell"] for r in rows if r["torch_bf16_onednn_refusal"]):
        print(f"torch bf16 {cell}: torch's default path fails on this CPU "
              f"({onednn_refusal(cell)}); timed on its native path, oneDNN off")
    print("x fp32 = our float32 ms / our bfloat16 ms; x torch = torch's ms / our bfloat16 ms")
    benchmark.write_json(args.json, threads=args.threads, rows=rows)
    return benchmark.report_disagreement(rows, benchmark.describe_row)
