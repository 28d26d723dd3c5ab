"""`fusedrnn train classify-text --data FILE.csv`: many-to-one text classification (the
sentiment-analysis case) from a user's CSV of ``text,label`` rows.

Words are lower-cased tokens; the vocabulary comes from the training rows (id 0 pads, id 1 is an
unknown word). Sequences of different lengths are batched into padded arrays plus ``lengths``,
so the recurrent layer stops at each text's own end. A seeded 80/20 split; reports held-out
accuracy against the majority-class baseline.
"""
from __future__ import annotations

import time

import numpy as np

from .. import data, io, optim
from ..data.text import WordVocab
from ..nn import CrossEntropyLoss
from ..training import fit
from .common import SequenceClassifier, accuracy, majority_baseline, maybe_plot
from ..cli_commands import path, positive_float, positive_int, share

DEFAULTS = dict(epochs=10, hidden=64, embedding=32, lr=5e-3, batch_size=32, cell="gru")


def add_arguments(p):
    p.add_argument("--data", required=True, type=path, help="a CSV file of text,label rows")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default=DEFAULTS["cell"])
    p.add_argument("--hidden", type=positive_int, default=DEFAULTS["hidden"])
    p.add_argument("--embedding", type=positive_int, default=DEFAULTS["embedding"])
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"])
    p.add_argument("--max-words", type=positive_int, default=200, help="truncate texts to this many words")
    p.add_argument("--test-fraction", type=share, default=0.2)
    p.set_defaults(epochs=DEFAULTS["epochs"])


def run(args, progress=True):
    start = time.perf_counter()
    texts, labels, classes = data.read_text_classification_csv(args.data)
    order = np.random.default_rng(args.seed).permutation(len(texts))
    n_test = max(1, int(round(len(texts) * args.test_fraction)))  # at least one to test
    if n_test >= len(texts):
        raise ValueError(f"--test-fraction {args.test_fraction}: {len(texts)} rows give "
                         f"{n_test} to test and {len(texts) - n_test} to train; expected at "
                         f"least one of each")
    test_idx, train_idx = order[:n_test], order[n_test:]
    vocab = WordVocab([texts[i] for i in train_idx])
    encoded = [vocab.encode(t)[:args.max_words] for t in texts]
    model = SequenceClassifier(args.cell, args.embedding, args.hidden, len(classes),
                               vocab_size=len(vocab), padding_idx=WordVocab.PAD, seed=args.seed)
    loss_fn = CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed + 1)

    def batch(indices):
        x, lengths = data.pad_sequences([encoded[i] for i in indices], WordVocab.PAD)
        return x, lengths, labels[indices]

    def step(indices):
        x, lengths, y = batch(train_idx[indices])
        model.zero_grad()
        loss = loss_fn(model(x, lengths), y)
        model.backward(loss_fn.backward())
        optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss

    def predict(indices):
        model.eval()
        out = np.concatenate([model(*batch(indices[i:i + 256])[:2])
                              for i in range(0, len(indices), 256)])
        model.train()
        return out

    def evaluate(epoch):
        return {"test_accuracy": accuracy(predict(test_idx), labels[test_idx])}

    history = fit(step, lambda e: data.batches(len(train_idx), args.batch_size, rng=rng),
                  args.epochs, evaluate, progress=progress, desc="classify-text",
                  state={"model": model, "optimizer": opt, "rng": rng},
                  checkpoint=getattr(args, "checkpointer", None))
    majority = majority_baseline(labels[train_idx], labels[test_idx])
    metrics = {"task": "classify-text", "cell": args.cell, "classes": classes,
               "train_size": int(len(train_idx)), "test_size": int(n_test),
               "vocab_size": len(vocab), "test_accuracy": history[-1]["test_accuracy"],
               "majority_accuracy": majority, "epochs": args.epochs,
               "seconds": time.perf_counter() - start}
    if args.save:
        io.save({"task": "classify-text", "classes": classes, "words": vocab.words,
                 "config": dict(cell=args.cell, embedding=args.embedding, hidden=args.hidden),
                 "model": model.state_dict()}, args.save)
    if args.plot:
        epochs = [h["epoch"] for h in history]
        maybe_plot(args.plot, [
            ("training loss", {"loss": (epochs, [h["loss"] for h in history])}, "epoch", "loss", False),
            ("held-out accuracy", {"accuracy": (epochs, [h["test_accuracy"] for h in history]),
                                   "majority class": (epochs, [majority] * len(epochs))},
             "epoch", "accuracy", False)], title="text classification")
    metrics["history"] = history
    return metrics
