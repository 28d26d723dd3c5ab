"""`fusedrnn demo`: the main job in under two minutes.

Trains the digits classifier (an LSTM reading 8x8 digits row by row, then a linear layer on its
final state), reports held-out accuracy, then times one training step of the same model —
forward, cross-entropy, BPTT, the head's gradients — with the fused kernels
(``fusedrnn.functional``) and with the NumPy float64 reference (``fusedrnn.reference``, same
signatures), and prints the throughput (training sequences per second) of each and their ratio.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from .. import functional, get_num_threads, reference
from ..nn import log_softmax
from . import digits


def add_arguments(p):
    p.add_argument("--hidden", type=int, default=digits.DEFAULTS["hidden"])
    p.add_argument("--batch-size", type=int, default=digits.DEFAULTS["batch_size"])
    p.add_argument("--timing-seconds", type=float, default=2.0,
                   help="how long to time each backend")
    p.set_defaults(epochs=digits.DEFAULTS["epochs"])


def _training_step(kernels, x, y, w):
    """One forward + backward of LSTM + Linear + cross-entropy through ``kernels``."""
    out, h, c, ctx = kernels.lstm_forward(x, None, None, w["w_ih"], w["w_hh"], w["b_ih"],
                                          w["b_hh"], training=True)
    logits = h @ w["W"].T + w["b"]
    p = np.exp(log_softmax(logits))
    p[np.arange(len(y)), y] -= 1
    dlogits = p / len(y)
    dW, db = dlogits.T @ h, dlogits.sum(0)
    dh = dlogits @ w["W"]
    grads = kernels.lstm_backward(ctx, np.zeros_like(out), dh, None)
    return grads, dW, db


def throughput(kernels, dtype, x, y, hidden, seconds, seed=0):
    """Training sequences per second of ``kernels`` on x [T, N, I] (median-free: total work
    over total time, after one warm-up step)."""
    rng = np.random.default_rng(seed)
    I, G = x.shape[2], 4 * hidden
    b = 1 / np.sqrt(hidden)
    w = {"w_ih": rng.uniform(-b, b, (G, I)), "w_hh": rng.uniform(-b, b, (G, hidden)),
         "b_ih": rng.uniform(-b, b, G), "b_hh": rng.uniform(-b, b, G),
         "W": rng.uniform(-b, b, (10, hidden)), "b": np.zeros(10)}
    w = {k: v.astype(dtype) for k, v in w.items()}
    x = x.astype(dtype)
    _training_step(kernels, x, y, w)
    steps, start = 0, time.perf_counter()
    while True:
        _training_step(kernels, x, y, w)
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and steps >= 3:
            return steps * x.shape[1] / elapsed


def run(args, progress=True):
    start = time.perf_counter()
    train_args = argparse.Namespace(data=None, limit=None, cell="lstm", hidden=args.hidden,
                                    batch_size=args.batch_size, lr=digits.DEFAULTS["lr"],
                                    trainer="bptt", population=0, epochs=args.epochs,
                                    seed=args.seed, save=args.save, plot=args.plot)
    result = digits.run(train_args, progress)
    x_train, y_train, _, _, _ = digits.load(train_args)
    x, y = x_train[:, :args.batch_size], y_train[:args.batch_size]
    fused32 = throughput(functional, np.float32, x, y, args.hidden, args.timing_seconds)
    fused64 = throughput(functional, np.float64, x, y, args.hidden, args.timing_seconds)
    ref64 = throughput(reference, np.float64, x, y, args.hidden, args.timing_seconds)
    return {"task": "demo", "test_accuracy": result["test_accuracy"],
            "train_seconds": result["seconds"], "epochs": args.epochs,
            "threads": get_num_threads(),
            "model": f"LSTM(8, {args.hidden}) + Linear({args.hidden}, 10), batch {args.batch_size}",
            "throughput_seq_per_s": {"fusedrnn_float32": fused32, "fusedrnn_float64": fused64,
                                     "numpy_reference_float64": ref64},
            "speedup_vs_reference": {"float32": fused32 / ref64, "float64": fused64 / ref64},
            "seconds": time.perf_counter() - start, "history": result["history"]}
