"""`fusedrnn train dates`: translate human-written dates into ISO form with attention.

"3rd of May 1999", "05/03/99", "Monday, May 3, 1999" -> "1999-05-03". The pairs come from the
seeded generator ``fusedrnn.data.dates`` (27 formats, random letter case; the input is
lower-cased before it is read); the held-out pairs use days that never occur in training.
The model is ``fusedrnn.nn.Seq2Seq``: a bidirectional LSTM encoder over the characters and an
attention decoder (``--attention bahdanau`` (additive score) or ``luong`` (general score, input
feeding)). Reported: held-out exact-match accuracy of greedy decoding (and of beam search).
``--plot`` draws the attention maps of a few held-out dates (rows: output characters, columns:
input characters); ``fusedrnn translate --model PATH "3rd of May 1999"`` uses a saved model.
"""
from __future__ import annotations

import contextlib
import datetime
import reprlib
import time
import warnings

import numpy as np

from .. import io, optim
from ..data import dates as date_data
from ..data.text import batches
from ..nn.layers import _int_in
from ..nn.seq2seq import Seq2Seq
from ..training import fit
from .common import load_task_file, pyplot, save_figure
from ..cli_commands import fraction, positive_float, positive_int

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
SRC_CHARS = sorted(set("".join(date_data.DATE_CHARS).lower()))
TGT_CHARS = list(date_data.ISO_CHARS)
DEFAULTS = dict(epochs=6, train_size=12000, test_size=1000, batch_size=64, lr=4e-3, hidden=64,
                embed=24, cell="lstm", attention="bahdanau")


class CharCodec:
    """Characters <-> ids, after the four special tokens (pad, start, end, unknown)."""

    def __init__(self, chars, lower=False):
        self.chars = list(chars)
        self.lower = lower
        self.index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars) + len(SPECIALS)

    def encode(self, text, eos=False):
        text = text.lower() if self.lower else text
        ids = [self.index.get(c, UNK) for c in text]
        return ids + [EOS] if eos else ids

    def decode(self, ids):
        return "".join(self.chars[i - len(SPECIALS)] for i in ids if i >= len(SPECIALS))

    def spells(self, ids, text):
        """Whether ``ids`` are exactly ``text``'s (decode would drop a special token among them,
        so comparing decoded strings would count it a match)."""
        return [int(i) for i in ids] == self.encode(text)

    def unknown(self, text):
        """The characters of ``text`` that encode reads as <unk>, in order, once each."""
        text = text.lower() if self.lower else text
        return "".join(dict.fromkeys(c for c in text if c not in self.index))

    def labels(self, ids):
        """One label per id, the special tokens by name (decode drops them)."""
        return [SPECIALS[i] if i < len(SPECIALS) else self.chars[i - len(SPECIALS)] for i in ids]

    def batch(self, texts, eos=False):
        """Padded ids [N, max length] and lengths [N]."""
        texts = list(texts)  # (a generator, an array: read once)
        if not texts:
            raise ValueError("texts: expected at least one text, got none")
        seqs = [self.encode(t, eos) for t in texts]
        lengths = np.array([len(s) for s in seqs], np.int64)
        out = np.full((len(seqs), max(1, lengths.max())), PAD, np.int64)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = s
        return out, lengths


def make_codecs():
    return CharCodec(SRC_CHARS, lower=True), CharCodec(TGT_CHARS)


def add_arguments(p):
    p.add_argument("--attention", choices=["bahdanau", "luong"], default=DEFAULTS["attention"])
    p.add_argument("--score", choices=["additive", "general"], default=None,
                   help="score function (default: additive for bahdanau, general for luong; "
                        "not dot: the bidirectional encoder's keys are twice the decoder's "
                        "width)")
    p.add_argument("--cell", choices=["lstm", "gru"], default=DEFAULTS["cell"])
    p.add_argument("--hidden", type=positive_int, default=DEFAULTS["hidden"])
    p.add_argument("--embed", type=positive_int, default=DEFAULTS["embed"])
    p.add_argument("--layers", type=positive_int, default=1)
    p.add_argument("--train-size", type=positive_int, default=DEFAULTS["train_size"])
    p.add_argument("--test-size", type=positive_int, default=DEFAULTS["test_size"])
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"])
    p.add_argument("--teacher-forcing", type=fraction, default=1.0,
                   help="probability of feeding the true previous character")
    p.add_argument("--beam", type=positive_int, default=3, help="beam size for the beam-search metric")
    p.set_defaults(epochs=DEFAULTS["epochs"])


def build_model(config):
    src, tgt = make_codecs()
    return Seq2Seq(len(src), len(tgt), embed_size=config["embed"], hidden_size=config["hidden"],
                   num_layers=config.get("layers", 1), bidirectional=True, cell=config["cell"],
                   attention=config["attention"], score=config.get("score"),
                   pad_idx=PAD, bos_idx=BOS, eos_idx=EOS, seed=config.get("seed"))


def translate(model, texts, beam=1, max_len=12):
    """Texts -> (ISO strings, DecodeResult). A text with nothing but spaces is refused, and one
    with characters the model never saw (read as <unk>) is named in a warning."""
    if isinstance(texts, str):  # (its characters would each be a text)
        raise TypeError("texts: expected a list of str (one text goes as [text]), got a str")
    beam = _int_in(beam, "beam", 1)
    texts = list(texts)  # (a generator: read once)
    src_codec, tgt_codec = make_codecs()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}]: expected a date to translate, got {text!r}")
        unknown = src_codec.unknown(text)
        if unknown:
            warnings.warn(f"texts[{i}] {reprlib.repr(text)}: characters the model never saw, "
                          f"read as unknown: {reprlib.repr(unknown)}", stacklevel=2)
    src, lengths = src_codec.batch(texts)
    if beam > 1:
        res = model.beam_search(src, lengths, beam_size=beam, max_len=max_len)
    else:
        res = model.greedy_decode(src, lengths, max_len=max_len)
    return [tgt_codec.decode(t) for t in res.tokens], res


def trained_date(iso):
    """Whether ``iso`` is a real date YYYY-MM-DD within the training data's days (1950-01-01 to
    2049-12-31): the model writes any digits, "2001-02-30" or a year it never saw included."""
    try:
        day = datetime.date.fromisoformat(iso)
    except ValueError:
        return False
    return len(iso) == 10 and date_data.FIRST_DAY <= day <= date_data.LAST_DAY


def exact_match(model, pairs, beam=1, batch_size=500):
    """The share of (source, ISO date) ``pairs`` translated exactly, token for token."""
    tgt_codec = make_codecs()[1]
    batch_size = _int_in(batch_size, "batch_size", 1)
    pairs = list(pairs)  # (a generator: read once)
    hits = 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        _, res = translate(model, [a for a, _ in chunk], beam)
        hits += sum(tgt_codec.spells(t, b) for t, (_, b) in zip(res.tokens, chunk))
    return hits / max(1, len(pairs))


def plot_attention(path, model, texts, title="", beam=1):
    """Attention maps of ``texts`` (one panel each): rows output characters, columns input
    characters. matplotlib is imported only here."""
    plt = pyplot()
    outs, res = translate(model, texts, beam)
    tgt_codec = make_codecs()[1]
    n = len(texts)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.2 * rows), squeeze=False)
    image = None
    for ax, text, out, tokens, att in zip(axes.ravel(), texts, outs, res.tokens, res.attention):
        image = ax.imshow(att, cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xlabel("input character", fontsize=8)
        ax.set_ylabel("output character", fontsize=8)
        columns = text.lower()  # what the source codec encodes (lowering may change the length)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(list(columns), fontsize=8)
        ax.set_yticks(range(len(tokens)))  # a row per decoded token, special ones included
        ax.set_yticklabels(tgt_codec.labels(tokens), fontsize=8)
        ax.set_title(f"{text!r} -> {out}", fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if image is not None:  # (one scale, 0 to 1, for every panel)
        fig.colorbar(image, ax=axes.ravel().tolist(), label="attention weight", shrink=0.8)
    return save_figure(fig, path)


def load_model(path):
    """A Seq2Seq date translator from a file written by `fusedrnn train dates --save`."""
    def build(saved):
        model = build_model(saved["config"])
        model.load_state_dict(saved["model"])
        model.eval()
        return model
    return load_task_file(path, "dates", build)


def train(model, train_pairs, test_pairs, args, progress=True, desc="dates"):
    src_codec, tgt_codec = make_codecs()
    src, src_len = src_codec.batch([a for a, _ in train_pairs])
    tgt, _ = tgt_codec.batch([b for _, b in train_pairs], eos=True)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=args.lr * 0.05)
    rng = np.random.default_rng(args.seed)

    def step(idx):
        model.zero_grad()
        L = int(src_len[idx].max())
        loss = model.loss(src[idx, :L], src_len[idx], tgt[idx],
                          teacher_forcing=args.teacher_forcing, rng=rng)
        model.backward()
        optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss

    def evaluate(epoch):
        return {"test_exact_match": exact_match(model, test_pairs)}

    return fit(step, lambda e: list(batches(len(train_pairs), args.batch_size, rng=rng)),
               args.epochs, evaluate, sched, progress=progress, desc=desc,
               state={"model": model, "optimizer": opt, "rng": rng},
               checkpoint=getattr(args, "checkpointer", None))


@contextlib.contextmanager
def limit_threads(args):
    """One thread (kernels and NumPy's BLAS) unless --threads says otherwise: a decoder step
    is a handful of small GEMMs, and splitting them over busy cores costs more than it gains."""
    from .. import get_num_threads, set_num_threads
    n = getattr(args, "threads", None) or 1
    before = get_num_threads()
    set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(n)
    except ImportError:  # without threadpoolctl NumPy keeps its own thread count
        limiter = contextlib.nullcontext()
    try:
        with limiter:
            yield
    finally:
        set_num_threads(before)


def run(args, progress=True):
    with limit_threads(args):
        return _run(args, progress)


def _run(args, progress):
    start = time.perf_counter()
    train_pairs, test_pairs = date_data.dates_split(args.train_size, args.test_size, args.seed)
    config = dict(attention=args.attention, score=args.score, cell=args.cell, hidden=args.hidden,
                  embed=args.embed, layers=args.layers, seed=args.seed)
    model = build_model(config)
    history = train(model, train_pairs, test_pairs, args, progress,
                    desc=f"dates/{args.attention}")
    train_seconds = time.perf_counter() - start
    greedy = exact_match(model, test_pairs)
    beam = exact_match(model, test_pairs, beam=args.beam) if args.beam > 1 else greedy
    examples = [a for a, _ in test_pairs[:4]]
    outs, _ = translate(model, examples)
    metrics = {"task": "dates", "attention": args.attention, "score": model.decoder.score,
               "cell": args.cell, "test_exact_match": greedy,
               f"test_exact_match_beam{args.beam}": beam,
               "chance_exact_match": 0.0, "epochs": args.epochs,
               "train_size": len(train_pairs), "test_size": len(test_pairs),
               "final_loss": history[-1]["loss"], "train_seconds": train_seconds,
               "seconds": time.perf_counter() - start,
               "sample": "; ".join(f"{a!r} -> {o}" for a, o in zip(examples, outs))}
    if args.save:
        io.save({"task": "dates", "config": config, "model": model.state_dict()}, args.save)
    if args.plot:
        plot_attention(args.plot, model, examples,
                       title=f"dates: {args.attention} attention ({model.decoder.score})")
    metrics["history"] = history
    return metrics
