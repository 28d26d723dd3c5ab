"""`fusedrnn bench --variants peephole,reset_before,proj,layernorm`: a cell variant against the
plain cell it extends (ours, same weights and input, alternating blocks in one process:
``benchmark.median_ms``), and against the peer that has the variant: ONNX Runtime's LSTM with
peepholes P and its GRU with linear_before_reset=0 (inference; it has no training), PyTorch's
LSTM with proj_size (both modes); the LayerNorm-LSTM has none on the CPU (haste's is CUDA
only). Float32. The "cost" column is the variant's ms over the plain cell's; "x peer" the
peer's ms over ours; at inference "bf16" times the variant under ``fusedrnn.autocast``
(bfloat16 products) and "x fp32" is its speed-up over float32."""
from __future__ import annotations

import numpy as np

from . import benchmark
from .cli_commands import parse_names

# variant -> the cell it extends, and its peer
VARIANTS = {"peephole": "LSTM", "reset_before": "GRU", "proj": "LSTM", "layernorm": "LSTM"}
PEERS = {"peephole": "ORT", "reset_before": "ORT", "proj": "torch", "layernorm": "-"}


def proj_size(H):
    """The projection the proj rows use: a quarter of the hidden size (speech LSTMPs: 1024 ->
    256, 2048 -> 512)."""
    return max(1, H // 4)


def contestants(variant, x, w, mode, threads, have):
    """{name: callable}: "plain" (ours, the cell without the variant), "ours" (the variant) and,
    where the variant's peer is installed and runs the mode, "peer"."""
    import fusedrnn as fr
    cell = VARIANTS[variant]
    T, B, I = x.shape
    H = w["weight_hh_l0"].shape[1]
    rng = np.random.default_rng(2)
    w_ph = rng.uniform(-0.5, 0.5, 3 * H).astype(np.float32) if variant == "peephole" else None
    vw = dict(w)  # the variant's own weights
    w_hr = None
    if variant == "proj":
        P, k = proj_size(H), 1 / np.sqrt(H)
        vw["weight_hh_l0"] = rng.uniform(-k, k, (4 * H, P)).astype(np.float32)
        w_hr = rng.uniform(-k, k, (P, H)).astype(np.float32)
    fns = {"plain": benchmark.ours(cell, x, w, mode)}
    if mode == "infer":
        if variant == "peephole":
            layer = fr.nn.LSTM(I, H, peephole=True)
            layer.load_state_dict(dict(vw, weight_ph_l0=w_ph))
        elif variant == "proj":
            layer = fr.nn.LSTM(I, H, proj_size=w_hr.shape[0])
            layer.load_state_dict(dict(vw, weight_hr_l0=w_hr))
        elif variant == "layernorm":
            layer = fr.nn.LayerNormLSTM(I, H)
            layer.load_state_dict(dict(layer.state_dict(), **vw))
        else:
            layer = fr.nn.GRU(I, H, reset_after=False)
            layer.load_state_dict(vw)
        layer.eval()
        fns["ours"] = lambda: layer(x)[0]

        def bf16():  # the same layer under autocast: bfloat16 products
            with fr.autocast():
                return layer(x)[0]
        fns["ours_bf16"] = bf16
        if PEERS[variant] == "ORT" and have["ort"]:
            fns["peer"] = benchmark.ort_peer(cell, x, w, threads, w_ph=w_ph,
                                             reset_after=variant != "reset_before")
    else:
        F = fr.functional
        args = (w["weight_ih_l0"], vw["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"])
        ones = {}  # dy, made once (as the peers make theirs), shaped as the output

        def dy(y):
            if y.shape not in ones:
                ones[y.shape] = np.ones(y.shape, np.float32)
            return ones[y.shape]

        def train_step():
            if variant == "layernorm":
                y, _, _, ctx = F.layernorm_lstm_forward(x, None, None, *args, training=True)
                F.layernorm_lstm_backward(ctx, dy(y))
            elif cell == "LSTM":
                y, _, _, ctx = F.lstm_forward(x, None, None, *args, training=True, w_ph=w_ph,
                                              w_hr=w_hr)
                F.lstm_backward(ctx, dy(y))
            else:
                y, _, ctx = F.gru_forward(x, None, *args, training=True, reset_after=False)
                F.gru_backward(ctx, dy(y))
            return y
        fns["ours"] = train_step
    if PEERS[variant] == "torch" and have["torch"]:
        fns["peer"] = benchmark.torch_peer(cell, x, dict(vw, weight_hr_l0=w_hr), mode, threads,
                                           proj_size=w_hr.shape[0])
    return fns


def bench_row(variant, mode, B, T, I, H, threads, budget, have):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w = benchmark._weights(VARIANTS[variant], I, H)
    fns = contestants(variant, x, w, mode, threads, have)
    # the peer computes what we compute (checked before timing)
    diff = float(np.abs(np.asarray(fns["peer"]()) - fns["ours"]()).max()) if "peer" in fns \
        else None
    ms = benchmark.median_ms(fns, budget, settle_as={"peer": PEERS[variant].lower()})
    row = {"variant": variant, "mode": mode, "B": B, "T": T, "I": I, "H": H, "threads": threads,
           "peer": PEERS[variant], "plain_ms": benchmark.figures(ms["plain"]),
           "ours_ms": benchmark.figures(ms["ours"]),
           "peer_ms": benchmark.figures(ms["peer"]) if "peer" in ms else None}
    row["cost"] = round(ms["ours"] / ms["plain"], 2)
    row["x_peer"] = round(ms["peer"] / ms["ours"], 2) if "peer" in ms else None
    row.update(benchmark.measured(ms))
    # inference: the variant under fusedrnn.autocast, its speed-up over float32 (ours_ms)
    row["ours_bf16_ms"] = benchmark.figures(ms["ours_bf16"]) if "ours_bf16" in ms else None
    row["bf16_speedup"] = round(ms["ours"] / ms["ours_bf16"], 2) if "ours_bf16" in ms else None
    if diff is not None:
        row["max_abs_diff_peer"] = diff
        row["agree"] = benchmark._agrees({"peer": diff})
    return row


def run(args) -> int:
    if getattr(args, "device", "cpu") != "cpu":
        raise ValueError("--variants: CPU only so far; drop --device cuda")
    variants = parse_names("--variants", args.variants, VARIANTS)
    import fusedrnn as fr
    fr.set_num_threads(args.threads)
    _, modes, shapes = benchmark.selection(args)
    budget = benchmark.budget_of(args)
    have = benchmark.installed_peers()
    print(benchmark.cpu_header(args.threads))
    print(f"fusedrnn {fr.__version__}; ONNX Runtime: {'yes' if have['ort'] else 'not installed'}"
          f"; PyTorch: {'yes' if have['torch'] else 'not installed'}", flush=True)
    rows = []
    for variant in variants:
        for mode in modes:
            for (B, T, I, H) in shapes:
                r = bench_row(variant, mode, B, T, I, H, args.threads, budget, have)
                rows.append(r)
                print(f"  {variant} {mode} B={B} T={T} I={I} H={H}: plain {r['plain_ms']} "
                      f"ours {r['ours_ms']} {r['peer']} {r['peer_ms']} ms", flush=True)
    print(f"\n{'variant':<13}{'mode':>6}{'B':>4}{'T':>6}{'I':>5}{'H':>5} | {'plain':>8}"
          f"{'ours':>8}{'peer':>8} | {'cost':>6}{'x peer':>7}  {'peer':<6}| {'bf16':>8}"
          f"{'x fp32':>7}")
    for r in rows:
        print(f"{r['variant']:<13}{r['mode']:>6}{r['B']:>4}{r['T']:>6}{r['I']:>5}{r['H']:>5} | "
              f"{benchmark._fmt(r['plain_ms'])}{benchmark._fmt(r['ours_ms'])}"
              f"{benchmark._fmt(r['peer_ms'])} | {benchmark._fmt(r['cost'], 6)}"
              f"{benchmark._fmt(r['x_peer'], 7)}  {r['peer']:<6}| "
              f"{benchmark._fmt(r['ours_bf16_ms'])}{benchmark._fmt(r['bf16_speedup'], 7)}")
    benchmark.write_json(args.json, threads=args.threads, rows=rows)
    return benchmark.report_disagreement(rows, benchmark.describe_row)
