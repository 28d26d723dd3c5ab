"""The fused kernels with a hand-written training loop: fusedrnn.functional on bare NumPy arrays.

The adding problem: each step has a value in [0, 1) and a marker; exactly two steps are marked
(one in each half) and the target is the sum of their two values. Predicting the mean gives
MSE 1/6; a network must remember the marked values across the sequence to beat that.

There are no modules here: the LSTM weights are plain arrays in PyTorch's layout (w_ih [4H, I],
w_hh [4H, H], gates i, f, g, o), F.lstm_forward / F.lstm_backward run the whole sequence in one
call each, and the linear readout, the MSE loss, its gradient and Adam are written out by hand.
At the end, one batch's gradients are checked at float64 against fusedrnn.reference (plain NumPy,
the same signatures).

    python examples/functional_training_loop.py         # about 5 s on 2 cores
    python examples/functional_training_loop.py --steps 200 --json
"""
import argparse
import json

import numpy as np

import fusedrnn as fr
from fusedrnn import functional as F
from fusedrnn.cli_commands import at_least, nonnegative_int, positive_float, positive_int


def adding_problem(n, T, rng):
    """x [T, N, 2] float32 (value, marker), y [N] float32."""
    values = rng.random((T, n))
    markers = np.zeros((T, n))
    markers[rng.integers(0, T // 2, n), np.arange(n)] = 1.0
    markers[rng.integers(T // 2, T, n), np.arange(n)] = 1.0
    x = np.stack([values, markers], axis=2).astype(np.float32)
    return x, (values * markers).sum(axis=0).astype(np.float32)


def init_params(H, I, rng):
    k = 1.0 / np.sqrt(H)                                       # PyTorch's uniform(-1/sqrt(H), ..)
    p = {"w_ih": rng.uniform(-k, k, (4 * H, I)), "w_hh": rng.uniform(-k, k, (4 * H, H)),
         "b_ih": rng.uniform(-k, k, 4 * H), "b_hh": rng.uniform(-k, k, 4 * H),
         "w_out": rng.uniform(-k, k, H), "b_out": np.zeros(1)}
    p["b_ih"][H:2 * H] = 1.0                                   # forget-gate bias 1: remember longer
    return {name: a.astype(np.float32) for name, a in p.items()}


def loss_and_grads(p, x, y, kernels=F):
    """MSE of the readout of h_n, and the gradient of every parameter (``kernels`` is
    fusedrnn.functional or fusedrnn.reference: the same signatures)."""
    _, h_n, _, ctx = kernels.lstm_forward(x, None, None, p["w_ih"], p["w_hh"], p["b_ih"],
                                          p["b_hh"], training=True)
    pred = h_n @ p["w_out"] + p["b_out"]                       # [N]
    err = pred - y
    loss = float(np.mean(err ** 2))
    dpred = 2.0 * err / len(y)                                 # d loss / d pred
    dh_n = np.outer(dpred, p["w_out"]).astype(x.dtype)         # d loss / d h_n  [N, H]
    # The loss reads only h_n, so no gradient arrives at the outputs y (dy=None: zeros).
    _, _, _, dw_ih, dw_hh, db_ih, db_hh = kernels.lstm_backward(ctx, None, dh_n, None)
    grads = {"w_ih": dw_ih, "w_hh": dw_hh, "b_ih": db_ih, "b_hh": db_hh,
             "w_out": h_n.T @ dpred, "b_out": np.array([dpred.sum()])}
    return loss, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=positive_int, default=1500)
    ap.add_argument("--T", type=at_least(2), default=20, help="sequence length")
    ap.add_argument("--hidden", type=positive_int, default=32)
    ap.add_argument("--batch-size", type=positive_int, default=64)
    ap.add_argument("--lr", type=positive_float, default=1e-2)
    ap.add_argument("--seed", type=nonnegative_int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    p = init_params(args.hidden, 2, rng)
    m = {k: np.zeros_like(a) for k, a in p.items()}            # Adam's moments, by hand
    v = {k: np.zeros_like(a) for k, a in p.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    x_test, y_test = adding_problem(1000, args.T, rng)
    every = max(1, args.steps // 10)
    first, recent = None, []
    for step in range(1, args.steps + 1):
        x, y = adding_problem(args.batch_size, args.T, rng)
        loss, grads = loss_and_grads(p, x, y)
        norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
        scale = min(1.0, 1.0 / (norm + 1e-6))                  # clip the gradient norm to 1
        for k in p:
            g = grads[k] * scale
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g * g
            m_hat, v_hat = m[k] / (1 - beta1 ** step), v[k] / (1 - beta2 ** step)
            p[k] -= (args.lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
        first = loss if first is None else first
        recent.append(loss)
        if step % every == 0:
            print(f"step {step:5d}  train MSE (last {len(recent)} steps) {np.mean(recent):.5f}")
            recent = []

    _, h_n, _, _ = F.lstm_forward(x_test, None, None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    test_mse = float(np.mean((h_n @ p["w_out"] + p["b_out"] - y_test) ** 2))
    baseline = float(np.mean((y_test - y_test.mean()) ** 2))

    # The fused kernels against the NumPy reference on one batch, both at float64.
    p64 = {k: a.astype(np.float64) for k, a in p.items()}
    x64, y64 = x_test[:, :16].astype(np.float64), y_test[:16].astype(np.float64)
    _, fast = loss_and_grads(p64, x64, y64, F)
    _, ref = loss_and_grads(p64, x64, y64, fr.reference)
    max_diff = max(float(np.max(np.abs(fast[k] - ref[k])) / np.max(np.abs(ref[k])))
                   for k in fast)

    print(f"float64 gradients, max |fused - reference| / max |reference|: {max_diff:.1e}")
    print(f"test MSE {test_mse:.5f} (predicting the mean: {baseline:.5f}; first batch "
          f"{first:.5f})")
    if args.json:
        print(json.dumps({"test_mse": test_mse, "baseline_mse": baseline, "first_loss": first,
                          "max_rel_grad_diff_vs_reference": max_diff}))


if __name__ == "__main__":
    main()
