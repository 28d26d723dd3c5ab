"""`fusedrnn train chars`: a character language model (many-to-many) trained with truncated
BPTT, and `fusedrnn generate`: sampling text from it (one-to-many).

The corpus is ``--data FILE`` or the embedded default (docstrings of Python's standard library,
see ``fusedrnn.data.text``). The last 10% is held out. The training text is cut into
``--batch-size`` parallel streams read in chunks of ``--bptt`` characters, the state carried from
chunk to chunk. Reports held-out bits per character against the unigram baseline (the
cross-entropy of the held-out text under the training text's character frequencies).
"""
from __future__ import annotations

import math
import numbers
import reprlib
import time
import warnings

import numpy as np

from .. import data, io, optim
from ..nn import CrossEntropyLoss, softmax
from ..nn.layers import _int_in
from ..training import TruncatedBPTT, fit
from .common import RecurrentLM, load_task_file, maybe_plot
from ..cli_commands import path, positive_float, positive_int

DEFAULTS = dict(epochs=4, hidden=256, embedding=32, lr=3e-3, batch_size=32, bptt=64, cell="lstm")
LN2 = math.log(2.0)


def add_arguments(p):
    p.add_argument("--data", type=path, help="a UTF-8 text file (default: Python's standard-library docs)")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], default=DEFAULTS["cell"])
    p.add_argument("--hidden", type=positive_int, default=DEFAULTS["hidden"])
    p.add_argument("--embedding", type=positive_int, default=DEFAULTS["embedding"])
    p.add_argument("--layers", type=positive_int, default=1)
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--bptt", type=positive_int, default=DEFAULTS["bptt"],
                   help="truncated BPTT chunk length k (time steps)")
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"])
    p.add_argument("--max-chars", type=positive_int, default=None,
                   help="use only the first this many characters of the corpus")
    p.set_defaults(epochs=DEFAULTS["epochs"])


def streams(ids, n):
    """ids [L] -> [L // n, n]: n contiguous streams side by side (time-major)."""
    n = _int_in(n, "n", 1)
    length = len(ids) // n
    return np.ascontiguousarray(ids[:length * n].reshape(n, length).T)


def unigram_bits(train_ids, test_ids, vocab_size):
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0  # add-one for unseen characters
    p = counts / counts.sum()
    return float(-np.mean(np.log2(p[test_ids])))


def evaluate_bits(model, ids, n_streams=16, chunk=256):
    """Held-out bits per character: the model reads ``ids`` as n streams, state carried."""
    if len(ids) < 2:
        raise ValueError(f"ids: expected at least 2 characters (one to read, one to predict), "
                         f"got {len(ids)}")
    x = streams(ids, min(n_streams, max(1, (len(ids) - 1) // 2)))
    model.eval()
    loss_fn = CrossEntropyLoss(reduction="sum")
    total, count, state = 0.0, 0, None
    for start in range(0, x.shape[0] - 1, chunk):
        stop = min(start + chunk, x.shape[0] - 1)
        logits, state = model(x[start:stop], state)
        total += loss_fn(logits, x[start + 1:stop + 1])
        count += (stop - start) * x.shape[1]
    model.train()
    return total / count / LN2


def run(args, progress=True):
    start = time.perf_counter()
    text = data.load_text(args.data)
    if args.max_chars:
        text = text[:args.max_chars]
    vocab = data.CharVocab(text)
    ids = vocab.encode(text)
    split = int(len(ids) * 0.9)
    train_ids, test_ids = ids[:split], ids[split:]
    if len(train_ids) < 2 * args.batch_size or len(test_ids) < 2:  # a step needs x and y
        raise ValueError(f"--data/--max-chars: {len(ids)} characters give {len(train_ids)} to "
                         f"train on and {len(test_ids)} to test; expected at least "
                         f"{2 * args.batch_size} (2 per stream of --batch-size "
                         f"{args.batch_size}) and 2: use more text or a smaller --batch-size")
    model = RecurrentLM(args.cell, len(vocab), args.embedding, args.hidden, args.layers,
                        seed=args.seed)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=args.lr * 0.1)
    trainer = TruncatedBPTT(model, CrossEntropyLoss(), args.bptt, opt, clip_norm=5.0)
    x = streams(train_ids, args.batch_size)  # [L, N]
    segment = args.bptt * 8  # one progress-bar item: 8 chunks, the state carried across items
    carried = {"state": None}

    def make_batches(epoch):
        carried["state"] = None  # each epoch starts the streams again from zero state
        return [(s, min(s + segment, x.shape[0] - 1)) for s in range(0, x.shape[0] - 1, segment)]

    def step(bounds):
        s, e = bounds
        loss, carried["state"] = trainer.run(x[s:e], x[s + 1:e + 1], carried["state"])
        return loss

    def evaluate(epoch):
        return {"test_bits_per_char": evaluate_bits(model, test_ids)}

    history = fit(step, make_batches, args.epochs, evaluate, sched, progress=progress,
                  desc="chars", state={"model": model, "optimizer": opt, "carried": carried},
                  checkpoint=getattr(args, "checkpointer", None))
    bits = history[-1]["test_bits_per_char"]
    metrics = {"task": "chars", "cell": args.cell, "vocab_size": len(vocab),
               "train_chars": int(len(train_ids)), "test_chars": int(len(test_ids)),
               "test_bits_per_char": bits,
               "unigram_bits_per_char": unigram_bits(train_ids, test_ids, len(vocab)),
               "corpus": args.data or "python-stdlib-docstrings", "epochs": args.epochs,
               "seconds": time.perf_counter() - start}
    if args.save:  # (first: a diverged model's sample fails, and its file shows why)
        io.save({"task": "chars", "config": model.config, "vocab": vocab.chars,
                 "model": model.state_dict()}, args.save)
    prime = "".join(c for c in "The " if c in vocab.index)  # (a text without them: no warning)
    if math.isfinite(bits):
        metrics["sample"] = sample(model, vocab, prime, 120, temperature=0.8, seed=args.seed)
    else:  # (the metrics still say so)
        metrics["sample"] = None
        warnings.warn(f"the model diverged (test bits per char {bits}): no sample; train again "
                      f"with a smaller --lr")
    if args.plot:
        epochs = [h["epoch"] for h in history]
        maybe_plot(args.plot, [
            ("training loss (nats/char)", {"train": (epochs, [h["loss"] for h in history])},
             "epoch", "loss", False),
            ("held-out bits per char", {
                args.cell: (epochs, [h["test_bits_per_char"] for h in history]),
                "unigram": (epochs, [metrics["unigram_bits_per_char"]] * len(epochs))},
             "epoch", "bits/char", False)], title="character language model")
    metrics["history"] = history
    return metrics


def sample(model, vocab, prime, length, temperature=0.8, seed=None):
    """Feed ``prime`` (a space where empty; a character the vocabulary lacks is read as its
    space, or its first character, with a warning) then draw ``length`` characters from
    softmax(logits / temperature); returns ``prime`` and them."""
    return prime + "".join(draw(model, vocab, prime, length, temperature, seed))


def draw(model, vocab, prime, length, temperature=0.8, seed=None):
    """:func:`sample`'s drawn characters, one at a time as each is drawn (`fusedrnn generate`
    writes them so: a long run shows its text as it goes, and an interrupted one keeps it).
    The arguments are checked before the first is drawn."""
    if not isinstance(prime, str):
        raise TypeError(f"prime: expected a str, got {type(prime).__name__}")
    length = _int_in(length, "length", 0)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature: expected a number, got {type(temperature).__name__}")
    try:
        t = float(temperature)  # (a Fraction; an int past float's range overflows)
    except OverflowError:
        t = math.inf
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    unknown = vocab.index.get(" ", 0)
    missing = sorted(set(prime) - set(vocab.index))
    if missing:
        warnings.warn(f"prime: {reprlib.repr(''.join(missing))} not in the model's vocabulary; "
                      f"read as {vocab.decode([unknown])!r}", UserWarning, stacklevel=3)
    return _drawn(model, vocab, vocab.encode(prime or " ", unknown=unknown), length, t, rng)


def _drawn(model, vocab, prime_ids, length, temperature, rng):
    def step(ids, state):  # in eval mode, the model's own modes given back after each call (a
        was = model._modes()  # generator left half-read must not leave it in eval)
        model.eval()
        try:
            return model(ids, state)
        finally:
            model._restore_modes(was)
    logits, state = step(prime_ids[:, None], None)
    for _ in range(length):
        z = logits[-1, 0].astype(np.float64)
        if not np.isfinite(z).all():
            raise ValueError("model: its outputs are not finite (NaN or inf): its weights "
                             "diverged in training (train again with a smaller --lr)")
        with np.errstate(over="ignore"):  # (shifted first: any temperature > 0 samples; a
            p = softmax((z - z.max()) / temperature)  # logit far below the top is -inf)
        nxt = int(rng.choice(len(p), p=p))
        yield vocab.decode([nxt])
        logits, state = step(np.array([[nxt]]), state)


def load_model(path):
    """A RecurrentLM and its vocabulary from a file written by `train chars --save`."""
    def build(saved):
        cfg = saved["config"]
        model = RecurrentLM(cfg["cell"], int(cfg["vocab_size"]), int(cfg["embedding_dim"]),
                            int(cfg["hidden_size"]), int(cfg["num_layers"]))
        model.load_state_dict(saved["model"])
        vocab = data.CharVocab(saved["vocab"])
        if len(vocab) != model.vocab_size:  # (ids past the vocabulary, or shifted characters)
            raise ValueError(f"a vocabulary of {len(vocab)} characters for a model of "
                             f"{model.vocab_size}")
        return model, vocab
    return load_task_file(path, "chars", build)
