"""`fusedrnn bench --variants peephole,reset_before`: a cell variant against the plain cell it
extends (ours, same weights and input, alternating blocks in one process:
``benchmark.median_ms``), and against the peer that has the variant: ONNX Runtime's LSTM with
peepholes P, its GRU with linear_before_reset=0 (inference; it has no training). Float32. The
"cost" column is the variant's ms over the plain cell's."""
from __future__ import annotations

import json

import numpy as np

from . import benchmark

VARIANTS = {"peephole": "LSTM", "reset_before": "GRU"}  # variant -> the cell it extends


def contestants(variant, x, w, mode, threads, have_ort):
    """{name: callable}: "plain" (ours, the cell without the variant), "ours" (the variant) and,
    where a peer has the variant and the mode is inference, "ort"."""
    import fusedrnn as fr
    cell = VARIANTS[variant]
    T, B, I = x.shape
    H = w["weight_hh_l0"].shape[1]
    peephole = variant == "peephole"
    w_ph = np.random.default_rng(2).uniform(-0.5, 0.5, 3 * H).astype(np.float32) \
        if peephole else None
    fns = {"plain": benchmark.ours(cell, x, w, mode)}
    if mode == "infer":
        if peephole:
            layer = fr.nn.LSTM(I, H, peephole=True)
            layer.load_state_dict(dict(w, weight_ph_l0=w_ph))
        else:
            layer = fr.nn.GRU(I, H, reset_after=False)
            layer.load_state_dict(w)
        layer.eval()
        fns["ours"] = lambda: layer(x)[0]
        if have_ort:
            fns["ort"] = benchmark.ort_peer(cell, x, w, threads, w_ph=w_ph,
                                            reset_after=peephole)
        return fns
    F = fr.functional
    args = (w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"])
    dy = np.ones((T, B, H), np.float32)

    def train_step():
        if peephole:
            y, _, _, ctx = F.lstm_forward(x, None, None, *args, training=True, w_ph=w_ph)
            F.lstm_backward(ctx, dy)
        else:
            y, _, ctx = F.gru_forward(x, None, *args, training=True, reset_after=False)
            F.gru_backward(ctx, dy)
        return y
    fns["ours"] = train_step
    return fns


def bench_row(variant, mode, B, T, I, H, threads, budget, have_ort):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w = benchmark._weights(VARIANTS[variant], I, H)
    fns = contestants(variant, x, w, mode, threads, have_ort)
    ms = benchmark.median_ms(fns, budget)
    row = {"variant": variant, "mode": mode, "B": B, "T": T, "I": I, "H": H, "threads": threads,
           "plain_ms": round(ms["plain"], 3), "ours_ms": round(ms["ours"], 3),
           "ort_ms": round(ms["ort"], 3) if "ort" in ms else None}
    row["cost"] = round(ms["ours"] / ms["plain"], 2)
    row["x_ort"] = round(ms["ort"] / ms["ours"], 2) if "ort" in ms else None
    if "ort" in fns:  # the peer computes what we compute
        row["max_abs_diff_ort"] = float(np.abs(np.asarray(fns["ort"]()) - fns["ours"]()).max())
    return row


def run(args) -> int:
    if getattr(args, "device", "cpu") != "cpu":
        raise ValueError("--variants: CPU only so far; drop --device cuda")
    variants = [v.strip().lower() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"--variants: expected names from {','.join(VARIANTS)}, got {v!r}")
    import fusedrnn as fr
    fr.set_num_threads(args.threads)
    _, modes, shapes = benchmark.selection(args)
    budget = 0.3 if args.quick else args.budget
    have_ort = benchmark.installed_peers()["ort"]
    print(benchmark.cpu_header(args.threads))
    print(f"fusedrnn {fr.__version__}; ONNX Runtime: {'yes' if have_ort else 'not installed'}",
          flush=True)
    rows = []
    for variant in variants:
        for mode in modes:
            for (B, T, I, H) in shapes:
                r = bench_row(variant, mode, B, T, I, H, args.threads, budget, have_ort)
                rows.append(r)
                print(f"  {variant} {mode} B={B} T={T} I={I} H={H}: plain {r['plain_ms']} "
                      f"ours {r['ours_ms']} ort {r['ort_ms']} ms", flush=True)
    print(f"\n{'variant':<9}{'mode':>6}{'B':>4}{'T':>6}{'I':>5}{'H':>5} | {'plain':>8}"
          f"{'ours':>8}{'ORT':>8} | {'cost':>6}{'x ORT':>7}")
    for r in rows:
        print(f"{r['variant']:<9}{r['mode']:>6}{r['B']:>4}{r['T']:>6}{r['I']:>5}{r['H']:>5} | "
              f"{benchmark._fmt(r['plain_ms'])}{benchmark._fmt(r['ours_ms'])}"
              f"{benchmark._fmt(r['ort_ms'])} | {benchmark._fmt(r['cost'], 6)}"
              f"{benchmark._fmt(r['x_ort'], 7)}")
    if args.json:
        from fusedrnn._atomic import write_text
        write_text(args.json, json.dumps({"info": fr.info(), "threads": args.threads,
                                          "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0
