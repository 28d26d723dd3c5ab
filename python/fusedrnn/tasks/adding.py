"""`fusedrnn train adding`: why gates matter.

The adding problem (``fusedrnn.data.adding_problem``): read a sequence of (value, marker) pairs
and output the sum of the two marked values. Predicting the mean gives MSE 1/6 ~ 0.167. At the
default length the LSTM and the GRU learn it (test MSE <= 0.01) while a tanh RNN, trained the same
way for as long, stays near the baseline: the gradient reaching the early marker vanishes.
``--plot`` draws the test MSE per step and ||dL/dh_t|| across t for each cell.
"""
from __future__ import annotations

import time

import numpy as np

from .. import data, io, optim
from ..nn import Linear, MSELoss, Module
from ..training import fit
from .common import CELLS, gradient_norms_over_time, make_recurrent, maybe_plot
from ..cli_commands import at_least, parse_names, positive_float, positive_int

DEFAULTS = dict(length=50, hidden=64, batch_size=64, lr=5e-3, epochs=20, steps=50)


class Regressor(Module):
    """x [T, N, 2] -> one number per sequence from the final hidden state."""

    def __init__(self, cell, hidden, seed):
        super().__init__()
        self.cell = cell
        self.rnn = make_recurrent(cell, 2, hidden, seed=seed)
        if cell == "lstm":
            # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): the cell starts by
            # remembering, which the adding problem needs from the first step.
            self.rnn.bias_ih_l0.data[hidden:2 * hidden] = 1.0
            self.rnn.bias_hh_l0.data[hidden:2 * hidden] = 0.0
        self.head = Linear(hidden, 1, seed=seed + 1)
        self._shape = None

    def forward(self, x):
        out, state = self.rnn(x)
        h = state[0] if self.cell == "lstm" else state
        self._shape = (out.shape, h.shape)
        return self.head(h[0])[:, 0]

    def backward(self, dy):
        out_shape, h_shape = self._shape
        dh = self.head.backward(dy[:, None]).reshape(h_shape)
        self.rnn.backward(np.zeros(out_shape, dy.dtype), (dh, None) if self.cell == "lstm" else dh)


def add_arguments(p):
    p.add_argument("--length", type=at_least(2), default=DEFAULTS["length"],
                   help="sequence length T (two marked steps)")
    p.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: lstm, gru, rnn")
    p.add_argument("--hidden", type=positive_int, default=DEFAULTS["hidden"])
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"])
    p.add_argument("--steps", type=positive_int, default=DEFAULTS["steps"],
                   help="optimizer steps per epoch (each on a fresh batch)")
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="a fixed training set of this size instead of fresh batches (--steps "
                        "batches an epoch still, in shuffled passes over it)")
    p.set_defaults(epochs=DEFAULTS["epochs"])


def train_cell(cell, args, x_test, y_test, progress=True):
    rng = np.random.default_rng(args.seed)
    model = Regressor(cell, args.hidden, seed=args.seed)
    loss_fn = MSELoss()
    opt = optim.Adam(model.parameters(), lr=args.lr)
    if args.train_size:
        x_train, y_train = data.adding_problem(args.train_size, args.length, seed=args.seed + 1)
        x_train = np.ascontiguousarray(x_train.transpose(1, 0, 2))

    def step(item):
        if args.train_size:
            x, y = x_train[:, item], y_train[item]
        else:
            x, y = data.adding_problem(args.batch_size, args.length, seed=item)
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        model.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    def batches(epoch):
        if args.train_size:  # --steps batches: as many shuffled passes over the set as that takes
            passes = []
            while len(passes) < args.steps:
                passes += data.batches(args.train_size, args.batch_size, rng=rng)
            return passes[:args.steps]
        return [int(rng.integers(2**31)) for _ in range(args.steps)]

    def evaluate(epoch):
        model.eval()
        mse = float(np.mean((model(x_test) - y_test) ** 2))
        model.train()
        return {"test_mse": mse}

    history = fit(step, batches, args.epochs, evaluate, progress=progress, desc=f"adding {cell}",
                  state={"model": model, "optimizer": opt, "rng": rng},
                  checkpoint=getattr(args, "checkpointer", None))
    # ||dL/dh_t|| of the trained model on a test batch (loss = MSE through the final state)
    xb, yb = x_test[:, :128], y_test[:128]
    model.eval()
    pred = model(xb)
    h_shape = model._shape[1]
    dpred = (2 * (pred - yb) / len(yb)).astype(np.float32)
    dh_T = (dpred[:, None] * model.head.weight.data).reshape(h_shape)[0]
    norms = gradient_norms_over_time(model.rnn, xb, dh_T)
    model.train()
    return model, history, norms


def run(args, progress=True):
    start = time.perf_counter()
    cells = parse_names("--cells", args.cells, sorted(CELLS))  # all checked before training
    x_test, y_test = data.adding_problem(1000, args.length, seed=args.seed + 10**6)
    x_test = np.ascontiguousarray(x_test.transpose(1, 0, 2))
    baseline = float(np.mean((y_test - 1.0) ** 2))
    results, histories, norms, models = {}, {}, {}, {}
    for cell in cells:
        t0 = time.perf_counter()
        model, history, g = train_cell(cell, args, x_test, y_test, progress)
        results[cell] = {"test_mse": history[-1]["test_mse"], "seconds": time.perf_counter() - t0,
                         "grad_norm_ratio_first_last": g[0] / max(g[-1], 1e-30)}
        histories[cell], norms[cell], models[cell] = history, g, model
    metrics = {"task": "adding", "length": args.length, "baseline_mse": baseline,
               "results": results, "seconds": time.perf_counter() - start}
    if args.save:
        io.save({"task": "adding", "length": args.length,
                 "models": {c: m.state_dict() for c, m in models.items()}}, args.save)
    if args.plot:
        T = args.length
        maybe_plot(args.plot, [
            ("test MSE", {**{c: ([h["epoch"] * args.steps for h in histories[c]],
                                 [h["test_mse"] for h in histories[c]]) for c in cells},
                          "mean baseline": ([args.steps, args.epochs * args.steps],
                                            [baseline, baseline])},
             "optimizer step", "MSE", True),
            ("||dL/dh_t|| after training", {c: (list(range(1, T + 1)), norms[c]) for c in cells},
             "t", "gradient norm", True)], title=f"adding problem, T = {T}")
    metrics["history"] = histories
    return metrics
