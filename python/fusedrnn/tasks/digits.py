"""`fusedrnn train digits`: many-to-one classification of handwritten digits read row by row.

The default data are the 8x8 digits shipped with the package (the UCI optical digits, CC BY
4.0: 8 steps of 8 features, a seeded 80/20 split); ``--data FOLDER`` reads MNIST IDX files instead (28 steps of 28). ``--trainer ga``
trains the same kind of model with the genetic algorithm instead of BPTT, for comparison.
"""
from __future__ import annotations

import time

import numpy as np

from .. import data, io, optim
from ..nn import CrossEntropyLoss
from ..nn.layers import _int_in
from ..training import fit
from .common import SequenceClassifier, accuracy, majority_baseline, maybe_plot
from ..cli_commands import at_least, path, positive_float, positive_int

DEFAULTS = dict(epochs=25, hidden=128, lr=5e-3, batch_size=32, cell="lstm")


def add_arguments(p):
    p.add_argument("--data", type=path, help="folder with MNIST IDX files (default: the shipped 8x8 digits)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only this many training images")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default=DEFAULTS["cell"])
    p.add_argument("--hidden", type=positive_int, default=DEFAULTS["hidden"])
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"])
    p.add_argument("--trainer", choices=["bptt", "ga"], default="bptt",
                   help="backpropagation through time (Adam) or the genetic algorithm")
    p.add_argument("--population", type=at_least(3), default=40,
                   help="GA population size (at least 3: the 2 best are kept each generation)")
    p.set_defaults(epochs=DEFAULTS["epochs"])


def load(args):
    if args.data:
        x_train, y_train, x_test, y_test = data.load_mnist(args.data, limit=args.limit)
        name = "mnist"
    else:
        x_train, y_train, x_test, y_test = data.load_digits(seed=args.seed)
        if args.limit:
            x_train, y_train = x_train[:args.limit], y_train[:args.limit]
        name = "uci-digits-8x8"
    # time-major [T, N, I]
    return (np.ascontiguousarray(x_train.transpose(1, 0, 2)), y_train,
            np.ascontiguousarray(x_test.transpose(1, 0, 2)), y_test, name)


def predict(model, x, batch_size=512):
    """The model's logits for the images x [T, N, I] (time-major rows), ``batch_size`` at a
    time, in eval mode (each part's mode is given back after)."""
    batch_size = _int_in(batch_size, "batch_size", 1)
    if np.ndim(x) != 3 or np.shape(x)[1] == 0:
        raise ValueError(f"x: expected images [T, N, I] with N >= 1, got shape {np.shape(x)}")
    was = model._modes()
    model.eval()
    try:
        return np.concatenate([model(x[:, i:i + batch_size])
                               for i in range(0, x.shape[1], batch_size)])
    finally:
        model._restore_modes(was)


def train_bptt(model, x_train, y_train, x_test, y_test, args, progress=True):
    loss_fn = CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=args.lr * 0.02)
    rng = np.random.default_rng(args.seed)

    def step(idx):
        model.zero_grad()
        logits = model(x_train[:, idx])
        loss = loss_fn(logits, y_train[idx])
        model.backward(loss_fn.backward())
        optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss

    def evaluate(epoch):
        return {"test_accuracy": accuracy(predict(model, x_test), y_test)}

    return fit(step, lambda e: data.batches(x_train.shape[1], args.batch_size, rng=rng),
               args.epochs, evaluate, sched, progress=progress, desc="digits",
               state={"model": model, "optimizer": opt, "rng": rng},
               checkpoint=getattr(args, "checkpointer", None))


def train_ga(model, x_train, y_train, x_test, y_test, args, progress=True):
    """Fitness: minus the cross-entropy on a fixed 512-image sample (inference-mode forward)."""
    loss_fn = CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(x_train.shape[1], min(512, x_train.shape[1]), replace=False)
    xs, ys = x_train[:, sample], y_train[sample]

    def fitness():
        return -loss_fn(model(xs), ys)

    ga = optim.GeneticAlgorithm(model, fitness, population_size=args.population,
                                mutation_rate=0.05, mutation_std=0.3,
                                init_std=0.5, seed=args.seed)
    generations_per_epoch = 10

    def step(_):
        return -ga.step()

    def evaluate(epoch):
        return {"test_accuracy": accuracy(predict(model, x_test), y_test)}

    return fit(step, lambda e: range(generations_per_epoch), args.epochs, evaluate,
               progress=progress, desc="digits-ga", state={"model": model, "ga": ga},
               checkpoint=getattr(args, "checkpointer", None))


def run(args, progress=True):
    start = time.perf_counter()
    x_train, y_train, x_test, y_test, name = load(args)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    model = SequenceClassifier(args.cell, x_train.shape[2], args.hidden, n_classes, seed=args.seed)
    trainer = train_ga if args.trainer == "ga" else train_bptt
    history = trainer(model, x_train, y_train, x_test, y_test, args, progress)
    acc = accuracy(predict(model, x_test), y_test)
    chance = majority_baseline(y_train, y_test)
    metrics = {"task": "digits", "data": name, "cell": args.cell, "trainer": args.trainer,
               "test_accuracy": acc, "chance_accuracy": chance, "epochs": args.epochs,
               "train_size": int(x_train.shape[1]), "test_size": int(x_test.shape[1]),
               "final_loss": history[-1]["loss"], "seconds": time.perf_counter() - start}
    if args.save:
        io.save({"task": "digits", "config": dict(cell=args.cell, hidden=args.hidden,
                                                   input_size=int(x_train.shape[2]),
                                                   num_classes=n_classes),
                 "model": model.state_dict()}, args.save)
    if args.plot:
        epochs = [h["epoch"] for h in history]
        maybe_plot(args.plot, [
            ("training loss", {"loss": (epochs, [h["loss"] for h in history])}, "epoch", "loss", True),
            ("held-out accuracy", {"accuracy": (epochs, [h["test_accuracy"] for h in history])},
             "epoch", "accuracy", False)], title=f"digits ({args.cell}, {args.trainer})")
    metrics["history"] = history
    return metrics
