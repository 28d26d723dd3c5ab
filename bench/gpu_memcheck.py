"""Every CUDA path on tiny problems, for `compute-sanitizer` (bench/gpu_check.sh runs it there):
each cell and variant (peepholes, projection, LayerNorm, reset-before GRU, relu), stepwise and
persistent (where the persistent kernel takes it), float32 and bfloat16 products, lengths with
0 and 1, both directions, forward in training and its backward; odd sizes (H = 1, 3, 33, N = 1,
5). Each result is compared with the CPU kernels on the same arrays (a wrong value is reported
too, not only a bad access). Exits 1 when any comparison fails.

    compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/gpu_memcheck.py
"""
import itertools
import sys

import cupy as cp
import numpy as np

from fusedrnn import cuda as fcuda, functional as F

SHAPES = [(7, 5, 4, 33), (1, 1, 3, 1), (3, 2, 2, 3)]  # T, N, I, H
VARIANTS = ["lstm", "lstm_peephole", "lstm_projection", "layernorm_lstm", "gru",
            "gru_reset_before", "rnn_tanh", "rnn_relu"]
PERSISTENT = {"lstm", "gru", "rnn_tanh", "rnn_relu"}  # (the variants run stepwise only)


def problem(variant, T, N, I, H, rng):
    G = 4 if "lstm" in variant else 3 if variant.startswith("gru") else 1
    if variant == "lstm_projection" and H == 1:
        return None  # (a projection needs 0 < P < H)
    P = max(1, H // 2) if variant == "lstm_projection" else 0
    S = P or H

    def a(*s):
        return (rng.standard_normal(s) / np.sqrt(max(H, 1))).astype(np.float32)

    lengths = np.array([(T, 0, 1, max(T - 1, 0))[i % 4] for i in range(N)])  # 0 and 1 too
    return dict(x=a(T, N, I), h0=a(N, S), c0=a(N, H), w_ih=a(G * H, I), w_hh=a(G * H, S),
                b_ih=a(G * H), b_hh=a(G * H), w_ph=a(3 * H), w_hr=a(P, H) if P else None,
                ln=np.concatenate([1 + a(9 * H), a(H)]), dy=a(T, N, S), dh=a(N, S), dc=a(N, H),
                lengths=lengths)


def run(variant, p, on, reverse, precision):
    """Forward (training) and backward of one variant; the arrays on ``on`` (numpy or cupy)."""
    c = (lambda v: v) if on is np else (lambda v: None if v is None else cp.asarray(v))
    common = dict(lengths=p["lengths"], reverse=reverse, training=True, precision=precision)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = (c(p[k]) for k in ("x", "h0", "c0", "w_ih", "w_hh",
                                                            "b_ih", "b_hh"))
    dy, dh, dc = c(p["dy"]), c(p["dh"]), c(p["dc"])
    if variant.startswith("lstm"):
        extra = dict(w_ph=c(p["w_ph"])) if variant == "lstm_peephole" else \
            dict(w_hr=c(p["w_hr"])) if variant == "lstm_projection" else {}
        y, h_n, c_n, ctx = F.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, **common, **extra)
        grads = F.lstm_backward(ctx, dy, dh, dc)
        out = (y, h_n, c_n, *grads)
    elif variant == "layernorm_lstm":
        y, h_n, c_n, ctx = F.layernorm_lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                    c(p["ln"]), **common)
        out = (y, h_n, c_n, *F.layernorm_lstm_backward(ctx, dy, dh, dc))
    elif variant.startswith("gru"):
        y, h_n, ctx = F.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, **common,
                                    reset_after=variant == "gru")
        out = (y, h_n, *F.gru_backward(ctx, dy, dh))
    else:
        y, h_n, ctx = F.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, **common,
                                    nonlinearity=variant.split("_")[1])
        out = (y, h_n, *F.rnn_backward(ctx, dy, dh))
    return [None if v is None else (cp.asnumpy(v) if on is cp else np.asarray(v)) for v in out]


def main():
    rng = np.random.default_rng(0)
    failures, runs = [], 0
    for variant, shape, reverse, precision in itertools.product(
            VARIANTS, SHAPES, (False, True), (None, "bfloat16")):
        p = problem(variant, *shape, rng)
        if p is None:
            continue
        expected = run(variant, p, np, reverse, precision)
        algorithms = ["stepwise", "persistent"] if variant in PERSISTENT else ["stepwise"]
        for algorithm in algorithms:
            name = f"{variant} {shape} reverse={reverse} {precision or 'float32'} {algorithm}"
            cell = variant.split("_")[0]
            if algorithm == "persistent" and not (
                    fcuda.persistent_forward_fits(cell, *shape, precision=precision) and
                    fcuda.persistent_backward_fits(cell, *shape, precision=precision)):
                continue
            try:
                with fcuda.options(algorithm=algorithm):
                    got = run(variant, p, cp, reverse, precision)
                cp.cuda.get_current_stream().synchronize()
            except Exception as e:  # noqa: BLE001 (reported, and the next case runs)
                failures.append(f"{name}: {type(e).__name__}: {e}")
                continue
            runs += 1
            # bfloat16: both sides round products; a ReLU RNN's units near 0 may switch on one
            # side only (README: its gradients are 0.06-0.3 off), so only garbage fails it
            tol = (1.0 if variant == "rnn_relu" else 3e-2) if precision else 1e-4
            for i, (g, e) in enumerate(zip(got, expected)):
                if (g is None) != (e is None):
                    failures.append(f"{name}: output {i} is None on one side only")
                    continue
                if g is None:
                    continue
                err = float(np.linalg.norm(g - e) / max(np.linalg.norm(e), 1e-6))
                if not np.isfinite(g).all() or err > tol:
                    failures.append(f"{name}: output {i} relative error {err:.2e}")
    print(f"memcheck problems run: {runs}; failures: {len(failures)}")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
