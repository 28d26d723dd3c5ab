"""Models and helpers the worked examples share.

``SequenceClassifier`` (many-to-one): optional Embedding, a recurrent layer, a Linear head on
the final hidden state. ``RecurrentLM`` (many-to-many): Embedding, a recurrent layer, a Linear
head at every step; stateful, for truncated BPTT. ``gradient_norms_over_time`` replays a
trained layer step by step with its cell to measure ||dL/dh_t|| for every t.
"""
from __future__ import annotations

import numpy as np

from .. import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
STEP_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


def make_recurrent(cell, input_size, hidden_size, num_layers=1, seed=None, **kw):
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, num_layers=num_layers, seed=seed, **kw)


class SequenceClassifier(nn.Module):
    """x [T, N, I] floats (or [T, N] token ids with ``vocab_size``), lengths [N] -> logits
    [N, C] from the last layer's final hidden state."""

    def __init__(self, cell, input_size, hidden_size, num_classes, num_layers=1,
                 vocab_size=None, padding_idx=0, seed=None):
        super().__init__()
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2**31, 3)
        self.cell = cell
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, input_size, padding_idx=padding_idx,
                                          seed=int(seeds[0]))
        else:
            self.embedding = None
        self.rnn = make_recurrent(cell, input_size, hidden_size, num_layers, seed=int(seeds[1]))
        self.head = nn.Linear(hidden_size, num_classes, seed=int(seeds[2]))
        self._shape = None

    def forward(self, x, lengths=None):
        inp = self.embedding(x) if self.embedding is not None else x
        out, state = self.rnn(inp, lengths=lengths)
        h_n = state[0] if self.cell == "lstm" else state
        self._shape = (out.shape, h_n.shape)
        return self.head(h_n[-1])

    def backward(self, dlogits):
        out_shape, h_shape = self._shape
        dh_last = self.head.backward(dlogits)
        dh_n = np.zeros(h_shape, dlogits.dtype)
        dh_n[-1] = dh_last
        dhx = (dh_n, None) if self.cell == "lstm" else dh_n
        dx, _ = self.rnn.backward(np.zeros(out_shape, dlogits.dtype), dhx)
        if self.embedding is not None:
            self.embedding.backward(dx)
            return None
        return dx


class RecurrentLM(nn.Module):
    """Token ids x [T, N] and a state -> logits [T, N, V] and the new state."""

    def __init__(self, cell, vocab_size, embedding_dim, hidden_size, num_layers=1, seed=None):
        super().__init__()
        rng = np.random.default_rng(seed)
        seeds = rng.integers(0, 2**31, 3)
        self.cell, self.vocab_size = cell, vocab_size
        self.config = dict(cell=cell, vocab_size=vocab_size, embedding_dim=embedding_dim,
                           hidden_size=hidden_size, num_layers=num_layers)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, seed=int(seeds[0]))
        self.rnn = make_recurrent(cell, embedding_dim, hidden_size, num_layers, seed=int(seeds[1]))
        self.head = nn.Linear(hidden_size, vocab_size, seed=int(seeds[2]))

    def forward(self, x, state=None):
        out, state = self.rnn(self.embedding(x), state)
        return self.head(out), state

    def backward(self, dlogits):
        dout = self.head.backward(dlogits)
        dx, _ = self.rnn.backward(np.ascontiguousarray(dout))
        self.embedding.backward(dx)


def accuracy(logits, y):
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def majority_baseline(y_train, y_test):
    """The test accuracy of always answering the training set's most common class (chosen
    without looking at the test labels)."""
    return float(np.mean(np.asarray(y_test) == np.argmax(np.bincount(y_train))))


def gradient_norms_over_time(rnn, x, dh_T):
    """||dL/dh_t|| for t = 1..T of a one-layer, one-direction layer ``rnn`` on x [T, N, I],
    where the loss reaches the network only through the final hidden state with gradient
    dh_T [N, H]. Replays the sequence with the matching cell (one fused kernel call per step),
    then walks the steps backwards, reading the gradient that arrives at each h_t."""
    cell = STEP_CELLS[rnn._cell](rnn.input_size, rnn.hidden_size, dtype=rnn.dtype)
    if rnn._cell == "rnn":
        cell.nonlinearity = rnn.nonlinearity
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in rnn.state_dict().items()})
    state = None
    for t in range(x.shape[0]):
        state = cell(x[t], state)
    norms = []
    dh, dc = dh_T, None
    for t in reversed(range(x.shape[0])):
        norms.append(float(np.linalg.norm(dh) / np.sqrt(dh.shape[0])))
        if rnn._cell == "lstm":
            _, (dh, dc) = cell.backward(dh, dc)
        else:
            _, dh = cell.backward(dh)
    return norms[::-1]


def pyplot():
    """matplotlib.pyplot drawing to files (matplotlib is an optional extra, imported only
    here); a missing matplotlib is an ImportError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install \"fusedrnn[plot]\"") from None
    return plt


def save_figure(fig, path):
    """``fig`` written to ``path`` atomically (an interrupted write leaves the old picture), in
    the format of its extension as matplotlib's ``savefig`` reads it (none: matplotlib's
    default, ``savefig.format``, appended to the name as savefig appends it); closes ``fig``
    and returns the path written."""
    import os
    import matplotlib
    from .._atomic import atomic_write
    path = os.fspath(path)
    ext = os.path.splitext(path)[1][1:].lower()
    if not ext:
        ext = matplotlib.rcParams["savefig.format"]
        path = f"{path}.{ext}"
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=100, format=ext))
    finally:
        pyplot().close(fig)
    return path


def load_task_file(path, task, build):
    """``build(saved)`` on the object tree of a model file written by `fusedrnn train TASK
    --save` (``fusedrnn.load``); a file of another task, or one whose entries do not build a
    model, is a ValueError naming the file."""
    from .. import io
    saved = io.load(path)
    if not isinstance(saved, dict) or saved.get("task") != task:
        found = saved.get("task") if isinstance(saved, dict) else None
        what = f"a `fusedrnn train {found}` model" if isinstance(found, str) else "another file"
        raise ValueError(f"{path}: not a model of `fusedrnn train {task}` ({what}; save one "
                         f"with `fusedrnn train {task} --save FILE`)")
    try:
        return build(saved)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ValueError(f"{path}: a damaged `fusedrnn train {task}` model file "
                         f"({type(e).__name__}: {e})") from e


def maybe_plot(path, panels, title=""):
    """Draw ``panels`` [(subplot title, {label: (xs, ys)}, xlabel, ylabel, log_y)] to ``path``
    with matplotlib (imported only here: it is an optional extra)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (sub, curves, xlabel, ylabel, log_y) in zip(axes[0], panels):
        for label, (xs, ys) in curves.items():
            ax.plot(xs, ys, label=label)
        ax.set_title(sub)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        if len(curves) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
