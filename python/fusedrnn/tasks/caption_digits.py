"""`fusedrnn train caption-digits`: one-to-many generation: spell a handwritten digit's name.

From an 8x8 digit image (the shipped UCI digits) taken as one 64-vector, ``fusedrnn.nn.Captioner``
generates the English name of the digit letter by letter ("seven", then the end token): the
vector starts the decoder's state and joins every step's input. Reported: held-out exact match
of greedy decoding (and beam search) on a seeded 80/20 split.
"""
from __future__ import annotations

import time

import numpy as np

from .. import data, io, optim
from ..data.text import batches
from ..nn.layers import _int_in
from ..nn.seq2seq import Captioner
from ..training import fit
from .common import majority_baseline, pyplot, save_figure
from .dates import EOS, PAD, BOS, CharCodec, limit_threads
from ..cli_commands import fraction, positive_float, positive_int

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CHARS = sorted(set("".join(NAMES)))
DEFAULTS = dict(epochs=30, batch_size=32, lr=4e-3, hidden=64, embed=16, cell="lstm", dropout=0.2)


def add_arguments(p):
    p.add_argument("--cell", choices=["lstm", "gru"], default=DEFAULTS["cell"])
    p.add_argument("--hidden", type=positive_int, default=DEFAULTS["hidden"])
    p.add_argument("--embed", type=positive_int, default=DEFAULTS["embed"])
    p.add_argument("--dropout", type=fraction, default=DEFAULTS["dropout"],
                   help="dropout on the conditioning vector")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"])
    p.add_argument("--beam", type=positive_int, default=3, help="beam size for the beam-search metric")
    p.set_defaults(epochs=DEFAULTS["epochs"])


def build_model(config):
    return Captioner(64, len(CharCodec(CHARS)), embed_size=config["embed"],
                     hidden_size=config["hidden"], cell=config["cell"],
                     dropout=config.get("dropout", 0.0), pad_idx=PAD, bos_idx=BOS, eos_idx=EOS,
                     seed=config.get("seed"))


def _decoded(model, images, beam):
    beam = _int_in(beam, "beam", 1)
    if beam > 1:
        return model.beam_search(images, beam_size=beam, max_len=8)
    return model.greedy_decode(images, max_len=8)


def caption(model, images, beam=1):
    """images [N, 64] -> list of generated words."""
    codec = CharCodec(CHARS)
    return [codec.decode(t) for t in _decoded(model, images, beam).tokens]


def exact_match(model, images, labels, beam=1):
    """The share of images captioned with their digit's name, token for token (a special token
    in a caption, which the words drop, is a miss)."""
    labels = np.asarray(labels)
    if labels.shape == (0,):  # ([] reads as float64)
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise ValueError(f"labels: expected {len(images)} integer digits (one per image), got "
                         f"shape {labels.shape} dtype {labels.dtype}")
    if len(labels) and not (labels.min() >= 0 and labels.max() <= 9):
        raise ValueError(f"labels: expected digits in [0, 9], got {labels.min()}..{labels.max()}")
    codec = CharCodec(CHARS)
    tokens = _decoded(model, images, beam).tokens if len(labels) else []
    hits = [codec.spells(t, NAMES[y]) for t, y in zip(tokens, labels)]
    return sum(hits) / max(1, len(hits))  # (none: 0.0, as dates.exact_match)


def run(args, progress=True):
    with limit_threads(args):
        return _run(args, progress)


def _run(args, progress):
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = data.load_digits(seed=args.seed)
    x_train = np.ascontiguousarray(x_train.reshape(len(x_train), -1))
    x_test = np.ascontiguousarray(x_test.reshape(len(x_test), -1))
    codec = CharCodec(CHARS)
    tgt, _ = codec.batch([NAMES[y] for y in y_train], eos=True)
    config = dict(cell=args.cell, hidden=args.hidden, embed=args.embed, dropout=args.dropout,
                  seed=args.seed)
    model = build_model(config)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=args.lr * 0.05)
    rng = np.random.default_rng(args.seed)

    def step(idx):
        model.zero_grad()
        loss = model.loss(x_train[idx], tgt[idx], rng=rng)
        model.backward()
        optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss

    def evaluate(epoch):
        return {"test_exact_match": exact_match(model, x_test, y_test)}

    history = fit(step, lambda e: list(batches(len(x_train), args.batch_size, rng=rng)),
                  args.epochs, evaluate, sched, progress=progress, desc="caption-digits",
                  state={"model": model, "optimizer": opt, "rng": rng},
                  checkpoint=getattr(args, "checkpointer", None))
    train_seconds = time.perf_counter() - start
    greedy = exact_match(model, x_test, y_test)
    beam = exact_match(model, x_test, y_test, args.beam) if args.beam > 1 else greedy
    words = caption(model, x_test[:8])
    metrics = {"task": "caption-digits", "cell": args.cell, "test_exact_match": greedy,
               f"test_exact_match_beam{args.beam}": beam,
               "chance_exact_match": majority_baseline(y_train, y_test),
               "epochs": args.epochs, "train_size": len(x_train), "test_size": len(x_test),
               "final_loss": history[-1]["loss"], "train_seconds": train_seconds,
               "seconds": time.perf_counter() - start,
               "sample": ", ".join(f"{NAMES[y]}->{w}" for y, w in zip(y_test[:8], words))}
    if args.save:
        io.save({"task": "caption-digits", "config": config, "model": model.state_dict()},
                args.save)
    if args.plot:
        _plot(args.plot, x_test[:8], words, history)
    metrics["history"] = history
    return metrics


def _plot(path, images, words, history):
    """Eight held-out digits with their generated names, and the learning curves."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 5, figsize=(11, 4.5))
    for ax, img, w in zip(axes.ravel()[:8], images, words):
        ax.imshow(img.reshape(8, 8), cmap="gray_r")
        ax.set_title(w)
        ax.axis("off")
    epochs = [h["epoch"] for h in history]
    axes[1, 3].plot(epochs, [h["loss"] for h in history])
    axes[1, 3].set_title("training loss")
    axes[1, 4].plot(epochs, [h["test_exact_match"] for h in history])
    axes[1, 4].set_title("held-out exact match")
    fig.tight_layout()
    return save_figure(fig, path)
