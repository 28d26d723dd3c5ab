"""Encoder-decoder networks with attention (``Seq2Seq``) and a one-to-many decoder conditioned on
one input vector (``Captioner``), with teacher forcing, greedy decoding and batched beam search.

Shapes: N batch, S source length, T target length, E embedding, H hidden, K key size (D*H for
an encoder with D directions), V target vocabulary, L layers.

    src [N, S] ints, src_lengths [N]      tgt [N, T] ints: the target tokens followed by
    features [N, F] (Captioner)           ``eos_idx`` and padded with ``pad_idx`` (no BOS)
    logits [N, T, V]

Decoder styles (``attention=``):

- "bahdanau": the attention query is the previous decoder state; the context joins the cell
  input ``[emb(y_{t-1}); ctx_t]``; the output layer reads ``[h_t; ctx_t]``.
- "luong": the cell input is ``[emb(y_{t-1}); h~_{t-1}]`` (input feeding); the query is the new
  state h_t; ``h~_t = tanh(W_c [ctx_t; h_t])`` feeds the output layer and the next step.

Either style takes any score ("additive", "dot", "general"); the defaults are additive for
Bahdanau and general for Luong. The encoder's final states pass through a bridge
(``h0 = tanh(W_h [h_fwd; h_bwd] + b)``, LSTM also ``c0 = W_c [c_fwd; c_bwd] + b``) per layer.

Training: ``loss = model.loss(src, src_lengths, tgt, teacher_forcing=1.0)`` then
``model.backward()`` fills every ``grad`` (cross-entropy averaged over the non-pad targets).
Each decoder step is one fused C++ cell call (``nn.cells``) and one attention step
(``nn.attention``); the weight gradients of the per-step projections are formed after the loop
with one GEMM over all T*N rows. Under ``fusedrnn.autocast`` the encoder's layers and the
decoder's cells run their recurrent products in bfloat16; the attention, embeddings and
projections (NumPy matmuls) stay float32.
"""
from __future__ import annotations

import inspect
import math
import numbers
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

from .._flags import check_flag
from .. import functional as F
from .attention import make_attention
from .cells import GRUCell, LayerNormLSTMCell, LSTMCell
from .layers import (Dropout, Embedding, Linear, Sequential, _dtype, _int_in,
                     _number_in, _positive_int, _seeded, SeededModule)
from .loss import CrossEntropyLoss, log_softmax
from .module import Module, as_gradient, check_unwritten, write_stamp
from .recurrent import DROPOUT, GRU, LSTM, LayerNormLSTM

__all__ = ["Decoder", "Seq2Seq", "Captioner", "DecodeResult"]

STYLES = ("bahdanau", "luong")
# cell= -> (the encoder's layer, the decoder's cell); the LSTMs carry a cell state c
CELLS = {"lstm": (LSTM, LSTMCell), "gru": (GRU, GRUCell),
         "layernorm_lstm": (LayerNormLSTM, LayerNormLSTMCell)}
_DEFAULT_SCORE = {"bahdanau": "additive", "luong": "general"}


def _seeds(seed, n):
    """``n`` seeds for the parts of a model built from ``seed`` (None: parts of their own
    entropy, whose deep copies then draw their own numbers too)."""
    if seed is None:
        return [None] * n
    rng = _seeded(seed)
    return [int(s) for s in rng.integers(0, 2 ** 31 - 1, n)]


def _special_ids(pad_idx, bos_idx, eos_idx, vocab_size):
    """The target vocabulary's padding, start and end ids, checked: each in [0, vocab_size),
    the end distinct from the padding (whose targets the loss ignores)."""
    ids = {name: _int_in(value, name, 0, vocab_size - 1) for name, value in
           (("pad_idx", pad_idx), ("bos_idx", bos_idx), ("eos_idx", eos_idx))}
    if ids["eos_idx"] == ids["pad_idx"]:
        raise ValueError(f"eos_idx: expected an id other than pad_idx ({ids['pad_idx']}): the "
                         f"loss ignores padding targets, so the end token would never be learned")
    return ids["pad_idx"], ids["bos_idx"], ids["eos_idx"]


# A model's lock (made at first use; a lock held in the model would not copy or pickle)
_LOCKS = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock(model):
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def _forget_locks_in_child():
    """A fork copies the locks as they were: one held by another thread's decode would stay
    held in the child, where that thread does not exist (its first decode hung)."""
    global _LOCKS, _LOCKS_GUARD
    _LOCKS, _LOCKS_GUARD = weakref.WeakKeyDictionary(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


_MISSING = object()  # an input not given (None is a given src_lengths: every length T)


@dataclass
class DecodeResult:
    """Per sample: ``tokens`` (int arrays, without the end token), ``scores`` (length-normalised
    log-probability, end token included), ``log_probs`` (raw sum), ``attention``
    ([len(tokens), S_n] arrays, rows output tokens, columns source positions; None without
    attention) and ``finished`` (bool [N]: False where ``max_len`` cut the decode before the
    end token, its score then over the tokens alone: a beam search ranks such a hypothesis
    among the finished ones by that score, as Hugging Face's does; raise ``max_len`` where
    that matters)."""

    tokens: List[np.ndarray]
    scores: np.ndarray
    log_probs: np.ndarray
    attention: list = field(default_factory=list)
    finished: Optional[np.ndarray] = None


class Decoder(Module):
    """A stack of LSTM/GRU cells fed its previous token, with optional attention (see the module
    docstring) and an optional conditioning vector appended to every step's input."""

    def __init__(self, vocab_size, embed_size, hidden_size, num_layers=1, cell="lstm",
                 attention="bahdanau", score=None, key_size=None, attention_size=None,
                 cond_size=0, padding_idx=0, *, dtype: DTypeLike = np.float32, seed=None,
                 peephole=False, reset_after=True, proj_size=0):
        super().__init__()
        options = _cell_options(cell, peephole, reset_after, proj_size)
        if attention is not None and (not isinstance(attention, str) or attention not in STYLES):
            raise ValueError(f"attention: expected one of {STYLES} or None, got {attention!r}")
        self.vocab_size = _positive_int(vocab_size, "vocab_size")
        self.embed_size = _positive_int(embed_size, "embed_size")
        self.hidden_size = H = _positive_int(hidden_size, "hidden_size")
        # S: the width of h, of the attention's query and of the output layer's state
        self.state_size = S = options.get("proj_size") or H
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.cell_type, self.style, self.dtype = cell, attention, _dtype(dtype)
        self._has_c = cell != "gru"
        self.cond_size = _int_in(cond_size, "cond_size", 0)
        self.key_size = K = 0 if key_size is None else _int_in(key_size, "key_size", 0)
        s = _seeds(seed, self.num_layers + 4)
        self.embedding = Embedding(vocab_size, embed_size, padding_idx=padding_idx, dtype=dtype,
                                   seed=s[0])
        cin = embed_size + self.cond_size + {"bahdanau": K, "luong": S, None: 0}[attention]
        Cell = CELLS[cell][1]
        self.cells = Sequential(*[Cell(cin if l == 0 else S, H, dtype=dtype, seed=s[4 + l],
                                       **options) for l in range(self.num_layers)])
        if attention is not None:
            if K < 1:
                raise ValueError(f"key_size: expected a positive int with attention, got {key_size!r}")
            self.score = score or _DEFAULT_SCORE[attention]
            self.attention = make_attention(self.score, S, K, attention_size, dtype=dtype,
                                            seed=s[1])
        else:
            self.score = None
        if attention == "luong":
            self.combine = Linear(K + S, S, dtype=dtype, seed=s[2])
        self.out = Linear(S + (K if attention == "bahdanau" else 0), vocab_size, dtype=dtype,
                          seed=s[3])
        self._steps = []

    # ------------------------------------------------------------------ stepping
    def reset(self):
        """Forget saved steps (called at the start of each training forward)."""
        self._steps = []
        for c in self.cells:
            c.clear_steps()

    def initial_state(self, h0, c0=None):
        """State from per-layer arrays h0 [L, N, S] (LSTMs also c0 [L, N, H]): (h list, c list,
        feed)."""
        N = h0.shape[1]
        h = [h0[l] for l in range(self.num_layers)]
        c = None if not self._has_c else \
            [np.zeros((N, self.hidden_size), self.dtype) if c0 is None else c0[l]
             for l in range(self.num_layers)]
        feed = np.zeros((N, self.state_size), self.dtype) if self.style == "luong" else None
        return h, c, feed

    def step(self, tokens, state, cond=None):
        """One step: tokens [N] (the previous outputs), state -> (logits [N, V], state,
        attention weights [N, S] or None). Saves what backward needs in training mode."""
        h, c, feed = state
        # a copy: a decode loop may refill one buffer in place, and backward reads these ids
        tokens = _id_array(tokens, "tokens", "[N] (a token id per sample)", 1)
        if tokens.shape != (h[-1].shape[0],):
            raise ValueError(f"tokens: expected shape ({h[-1].shape[0]},) (a token id per sample "
                             f"of the state), got {tokens.shape}")
        _check_ids(tokens, "tokens", self.vocab_size, "the target vocabulary")
        parts = [self.embedding.weight.data[tokens]]
        ctx = weights = None
        if self.style == "bahdanau":
            ctx, weights = self.attention(h[-1])
            parts.append(ctx)
        elif self.style == "luong":
            parts.append(feed)
        if self.cond_size:
            parts.append(cond)
        inp = np.concatenate(parts, axis=1)
        new_h, new_c = [], ([] if c is not None else None)
        for l, cell in enumerate(self.cells):
            if c is not None:
                hl, cl = cell(inp, (h[l], c[l]))
                new_c.append(cl)
            else:
                hl = cell(inp, h[l])
            new_h.append(hl)
            inp = hl
        top = new_h[-1]
        combined = None
        if self.style == "bahdanau":
            o = np.concatenate([top, ctx], axis=1)
        elif self.style == "luong":
            ctx, weights = self.attention(top)
            combined = np.concatenate([ctx, top], axis=1)
            o = feed = np.tanh(self.combine._apply(combined))
        else:
            o = top
        logits = self.out._apply(o)
        if self.training:
            self._steps.append((tokens, o, combined))
        return logits, (new_h, new_c, feed), weights

    @staticmethod
    def reorder_state(state, rows):
        """The state with its batch rows taken in the order ``rows`` (beam search)."""
        h, c, feed = state
        return ([a[rows] for a in h], None if c is None else [a[rows] for a in c],
                None if feed is None else feed[rows])

    # ------------------------------------------------------------------ backward
    def backward(self, dlogits):
        """BPTT over the saved steps. dlogits [T, N, V]. Returns ``(dh0 [L, N, S], dc0 or None,
        dcond [N, cond_size] or None)``; adds into every parameter's grad (the attention's key
        gradients and projection weight gradients wait in the attention module for its
        ``memory_backward``, which the owner calls after this)."""
        steps = self._steps
        T = len(steps)
        if T == 0:
            raise RuntimeError("Decoder.backward: no saved step (a training-mode forward "
                               "saves them)")
        # checked before the steps are taken: a refused dlogits leaves them for the retry
        expected = (T, steps[0][1].shape[0], self.out.weight.data.shape[0])
        if not isinstance(F.check_unmasked(dlogits, "dlogits"), np.ndarray) or \
                dlogits.dtype.kind != "f":
            raise TypeError(f"dlogits: expected a float numpy.ndarray {list(expected)}, got "
                            f"{getattr(dlogits, 'dtype', type(dlogits).__name__)}")
        if dlogits.shape != expected:
            raise ValueError(f"dlogits: expected shape {expected} (the saved steps' logits), "
                             f"got {dlogits.shape}")
        self._steps = []
        H, S, K, E, L = (self.hidden_size, self.state_size, self.key_size, self.embed_size,
                         self.num_layers)
        dlogits = np.asarray(dlogits, self.dtype)
        N = dlogits.shape[1]
        O = np.stack([s[1] for s in steps])                      # [T, N, P]
        self.out._add_weight_grads(O, dlogits)
        dO = F.matmul(dlogits, self.out.weight.data)             # [T, N, P]
        dh = [np.zeros((N, S), self.dtype) for _ in range(L)]
        dc = [np.zeros((N, H), self.dtype) for _ in range(L)] if self._has_c else None
        dfeed = np.zeros((N, S), self.dtype)
        demb = np.empty((T, N, E), self.dtype)
        dcond = np.zeros((N, self.cond_size), self.dtype) if self.cond_size else None
        dcombine = np.empty((T, N, S), self.dtype) if self.style == "luong" else None
        for t in reversed(range(T)):
            do = dO[t]
            if self.style == "bahdanau":
                dtop, dctx = do[:, :S], do[:, S:]
            elif self.style == "luong":
                f = O[t]
                dpre = (do + dfeed) * (1 - f * f)
                dcombine[t] = dpre
                dci = F.matmul(dpre, self.combine.weight.data)
                dtop = dci[:, K:] + self.attention.backward(dci[:, :K])
            else:
                dtop = do
            dh[L - 1] = dh[L - 1] + dtop
            for l in reversed(range(L)):
                cell = self.cells[l]
                if dc is not None:
                    dx, (dh[l], dc[l]) = cell.backward(dh[l], dc[l])
                else:
                    dx, dh[l] = cell.backward(dh[l])
                if l > 0:
                    dh[l - 1] = dh[l - 1] + dx
            demb[t] = dx[:, :E]
            if self.style == "bahdanau":
                dh[L - 1] = dh[L - 1] + self.attention.backward(dx[:, E:E + K] + dctx)
            elif self.style == "luong":
                dfeed = dx[:, E:E + S]
            if dcond is not None:
                dcond += dx[:, dx.shape[1] - self.cond_size:]
        if self.style == "luong":
            self.combine._add_weight_grads(np.stack([s[2] for s in steps]), dcombine)
        tokens = np.stack([s[0] for s in steps])                 # [T, N]
        was = self.embedding.training
        self.embedding.train(True)
        self.embedding(tokens)
        self.embedding.backward(demb)
        self.embedding.train(was)
        return np.stack(dh), (None if dc is None else np.stack(dc)), dcond


def _id_array(value, name, shape, ndim):
    """``value`` as a new int64 array of ``ndim`` dimensions, or ValueError naming ``name`` and
    the ``shape`` expected (a ragged list included)."""
    F.check_unmasked(value, name)
    try:
        ids = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged lists
        raise ValueError(f"{name}: expected an integer array {shape}, got a "
                         f"{type(value).__name__} NumPy cannot read as one ({e})") from None
    if ids.ndim != ndim or ids.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array {shape}, got {ids.dtype} "
                         f"{ids.shape}")
    return ids.astype(np.int64)


def _check_ids(ids, name, V, vocabulary):
    """ValueError naming ``name`` unless every token id is in [0, V) (``vocabulary`` says
    which)."""
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"{name}: expected token ids in [0, {V - 1}] ({vocabulary}), got min "
                         f"{ids.min()} and max {ids.max()}")


class _Generator(SeededModule):
    """Teacher-forced training, greedy decoding and batched beam search over a ``Decoder``;
    subclasses define ``_start(inputs, repeat)`` (encode, set the attention memory, return the
    initial state and the conditioning vector, each sample repeated ``repeat`` times)."""

    pad_idx = 0
    bos_idx = 1
    eos_idx = 2

    # the decoding methods' inputs: their names, and how many of the last may be left out
    _inputs = ((), 0)

    def _start(self, inputs, repeat):
        raise NotImplementedError

    def _own_generator(self, seed):
        """The model's own Generator: teacher forcing's draws (a deep copy of a model built
        without a seed gets one of its own, as its parts do)."""
        self._teacher_rng, self._unseeded = np.random.default_rng(seed), seed is None
        return self._teacher_rng

    def manual_seed(self, seed):
        """Restart teacher forcing's Generator and every part's (dropout masks) from ``seed``
        (e.g. on each copy of an ensemble)."""
        parts = [m for m in self.modules() if m is not self and isinstance(m, SeededModule)]
        *seeds, teacher = _seeds(_seeded(seed), len(parts) + 1)
        for part, part_seed in zip(parts, seeds):
            part.manual_seed(part_seed)
        super().manual_seed(teacher)

    def _check_inputs(self, inputs, method, named=None):
        """``inputs`` (positional, then ``named`` by keyword, as forward takes them) in order,
        the optional ones left out as None; TypeError naming the method's inputs for another
        count or an unknown name (a tuple-unpacking error said nothing of what was expected)."""
        names, optional = self._inputs
        named = dict(named or {})
        expected = (f"{method}: expected the inputs ({', '.join(names)})"
                    f"{f', the last {optional} optional' if optional else ''}")
        unknown = [k for k in named if k not in names[len(inputs):]]
        if unknown:
            raise TypeError(f"{expected}, got {unknown[0]!r} by keyword"
                            + (" too" if unknown[0] in names else ""))
        full = list(inputs) + [named.get(k, _MISSING) for k in names[len(inputs):]]
        given = sum(v is not _MISSING for v in full)
        if len(inputs) > len(names) or any(v is _MISSING for v in full[:len(names) - optional]):
            raise TypeError(f"{expected}, got {given}")
        return tuple(None if v is _MISSING else v for v in full)

    def _batch_size(self, inputs):
        return len(inputs[0])

    def _source_length(self, inputs, n):
        """Number of attention columns of sample n (the source length)."""
        return None

    def _check_tgt(self, tgt, batch):
        """tgt as an integer array [batch, T >= 1] of ids in [0, V), or ValueError naming it."""
        tgt = _id_array(tgt, "tgt", "[N, T]", 2)
        N, T = tgt.shape
        if N != batch or T == 0:
            raise ValueError(f"tgt: expected [{batch}, T] with T >= 1 (a target per sample of the "
                             f"batch, at least one step), got shape {tgt.shape}")
        _check_ids(tgt, "tgt", self.decoder.vocab_size,
                   f"the target vocabulary; pad with pad_idx={self.pad_idx}")
        return tgt

    def _teacher_forcing(self, teacher_forcing, rng):
        """Checked teacher forcing ratio and generator (the model's own, seeded by its seed,
        where none is given)."""
        teacher_forcing = _number_in(teacher_forcing, "teacher_forcing", 0, 1, "in [0, 1]")
        if rng is None:
            return teacher_forcing, self._teacher_rng
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)) "
                            f"or None, got {type(rng).__name__}")
        return teacher_forcing, rng

    def _decoder_loss_forward(self, state, cond, tgt, teacher_forcing, rng, batch):
        tgt = self._check_tgt(tgt, batch)
        N, T = tgt.shape
        self.decoder.reset()
        tokens = np.full(N, self.bos_idx, dtype=np.int64)
        logits = []
        for t in range(T):
            step_logits, state, _ = self.decoder.step(tokens, state, cond)
            logits.append(step_logits)
            tokens = tgt[:, t].astype(np.int64)
            if teacher_forcing < 1.0:  # (the ids a decode would feed back)
                scores = step_logits.copy()
                scores[:, self._unemitted_ids()] = -np.inf
                predicted = scores.argmax(axis=1)
                keep = rng.random(N) < teacher_forcing
                tokens = np.where(keep, tokens, predicted)
        return np.stack(logits, axis=1)                          # [N, T, V]

    def loss(self, *args, **kwargs):
        """Cross-entropy (mean over non-pad targets) of a training-mode forward: the same
        arguments as forward."""
        try:
            tgt = inspect.signature(self.forward).bind(*args, **kwargs).arguments["tgt"]
        except (TypeError, KeyError):
            tgt = None  # forward says what is wrong
        with _lock(self):  # (the criterion keeps what backward needs, as the modules do)
            logits = self.forward(*args, **kwargs)
            return self.criterion(logits, np.asarray(tgt))

    # ------------------------------------------------------------------ decoding
    def _unemitted_ids(self):
        """The ids a decode never emits (as fairseq's), however untrained the model: the
        padding and the start (unless it is the end)."""
        return [i for i in (self.pad_idx, self.bos_idx) if i != self.eos_idx]

    def _log_probs(self, logits):
        """A decode step's log-probabilities (float64), -inf at the ids it never emits; the
        rest keep their probabilities under the whole vocabulary's softmax."""
        lp = log_softmax(logits.astype(np.float64))
        lp[..., self._unemitted_ids()] = -np.inf
        return lp

    def _decoding(self):
        """Eval mode for a decode; returns the modes to restore. A decode sets the attention's
        memory and runs the encoder in eval mode, which discards what a pending backward
        needs: that backward is refused up front instead of half run."""
        was = self._modes()  # (each module's own: a frozen encoder stays in eval mode)
        self._saved = None
        self.eval()
        return was

    def backward(self, dlogits=None):
        """Gradients of the latest training ``loss`` (or of ``sum(dlogits * logits)``, dlogits
        [N, T, V]); adds into every parameter's grad and returns None."""
        with _lock(self):
            if self._saved is None:
                raise self._backward_refused()
            # every check before any gradient is added: a refused backward adds nothing
            check_unwritten(self, getattr(self, "_forward_stamp", None), recurse=True)
            if getattr(self, "_parts_in_eval", None):
                raise RuntimeError(
                    f"{type(self).__name__}.backward: {', '.join(self._parts_in_eval)} ran in "
                    f"eval mode, which keeps nothing for backward in fusedrnn (unlike torch, "
                    f"where eval only turns dropout off): train the whole model (dropout=0 for "
                    f"none), and freeze a part with requires_grad_(False)")
            taken = getattr(self.criterion, "_saved", True)  # (a criterion of the user's own: ?)
            if dlogits is None and (taken is None or
                                    taken is getattr(self, "_criterion_at_forward", None)):
                raise RuntimeError(f"{type(self).__name__}.backward() back-propagates the loss "
                                   f"of loss(...); the latest forward came without one: call "
                                   f"loss, or give backward the forward's dlogits")
            T = len(self.decoder._steps)
            dlogits = self._check_backward(self.criterion.backward() if dlogits is None else
                                           dlogits, T)
            (saved,) = self._saved
            self._saved, self._back_propagated = None, True
            self._backward(saved, dlogits)

    def _backward(self, saved, dlogits):
        """The subclass's backward from its saved forward value and dlogits [N, T, V]."""
        raise NotImplementedError

    def _backward_refused(self):
        if getattr(self, "_back_propagated", False):
            return RuntimeError(f"{type(self).__name__}.backward: the latest forward was "
                                f"back-propagated already (a model keeps one forward, let go "
                                f"by its backward); run loss (or forward) again")
        return RuntimeError(f"{type(self).__name__}.backward called before a training-mode "
                            f"forward (or after a greedy_decode/beam_search, which discards "
                            f"the forward's saved steps: decode after backward)")

    def _forward_started(self):
        """(forward) What backward checks, reset for a new forward; the saved value is set
        when it ends. backward() back-propagates a loss the criterion took after this forward
        (by loss, or the criterion called on its logits)."""
        self._saved, self._back_propagated = None, False
        # the criterion's latest loss now: backward() wants one taken after this forward
        self._criterion_at_forward = getattr(self.criterion, "_saved", None)
        self._forward_stamp = write_stamp(self, recurse=True)
        # parts in eval mode keep nothing for backward (as torch's no_grad, not torch's eval)
        self._parts_in_eval = [name for name, m in self.named_modules()
                               if name and not m.training and m is not self.criterion]

    def _check_backward(self, dlogits, T):
        """dlogits [N, T, V] for the saved forward (T steps), as an array of the model's dtype."""
        N = self._saved_batch
        shape = (N, T, self.decoder.vocab_size)
        dlogits = as_gradient(dlogits, "dlogits", self.dtype)
        if dlogits.shape != shape:
            raise ValueError(f"dlogits: expected shape {shape} ([N, T, V], as the forward's "
                             f"logits), got {dlogits.shape}")
        return dlogits

    def greedy_decode(self, *inputs, max_len=40, length_penalty=1.0, **named_inputs):
        """The most likely token at every step until ``eos_idx`` (or ``max_len`` tokens)."""
        inputs = self._check_inputs(inputs, "greedy_decode", named_inputs)
        max_len = _positive_int(max_len, "max_len")
        length_penalty = _penalty(length_penalty)
        with _lock(self):
            return self._greedy_decode(inputs, max_len, length_penalty)

    def _greedy_decode(self, inputs, max_len, length_penalty):
        was = self._decoding()
        try:
            N = self._batch_size(inputs)
            state, cond = self._start(inputs, 1)
            tokens = np.full(N, self.bos_idx, dtype=np.int64)
            done = np.zeros(N, bool)
            length = np.zeros(N, np.int64)
            logp = np.zeros(N)
            out, att = [], []
            for _ in range(max_len):
                logits, state, weights = self.decoder.step(tokens, state, cond)
                lp = self._log_probs(logits)
                tokens = lp.argmax(axis=1)
                logp += np.where(done, 0.0, lp[np.arange(N), tokens])
                length += ~done
                out.append(tokens)
                att.append(weights)
                done |= tokens == self.eos_idx
                if done.all():
                    break
        finally:
            self._restore_modes(was)
        out = np.stack(out, axis=1)
        res_tokens, res_att = [], []
        for n in range(N):
            seq = out[n, :length[n]]
            if len(seq) and seq[-1] == self.eos_idx:
                seq = seq[:-1]
            res_tokens.append(seq.copy())
            if att[0] is not None:
                S = self._source_length(inputs, n)
                res_att.append(np.stack([a[n, :S] for a in att[:len(seq)]]) if len(seq)
                               else np.zeros((0, S), self.dtype))
        return DecodeResult(res_tokens, logp / np.maximum(length, 1) ** length_penalty, logp,
                            res_att if att[0] is not None else None, done)

    def beam_search(self, *inputs, beam_size=4, max_len=40, length_penalty=1.0,
                    **named_inputs):
        """Batched beam search: every sample keeps ``beam_size`` hypotheses (rows
        ``n * beam_size + j`` of one decoder batch). A hypothesis that emits ``eos_idx`` is
        finished, scored ``log p / length ** length_penalty`` (length counts the end token); a
        sample stops when it has ``beam_size`` finished hypotheses and no alive one scores
        better at its current length. Returns the best hypothesis per sample: those still alive
        after ``max_len`` steps compete with the finished ones by their score over their
        tokens (no end token), and ``DecodeResult.finished`` marks where such a one won."""
        inputs = self._check_inputs(inputs, "beam_search", named_inputs)
        k = _positive_int(beam_size, "beam_size")
        max_len = _positive_int(max_len, "max_len")
        length_penalty = _penalty(length_penalty)
        with _lock(self):
            return self._beam_search(inputs, k, max_len, length_penalty)

    def _beam_search(self, inputs, k, max_len, length_penalty):
        was = self._decoding()
        try:
            N = self._batch_size(inputs)
            state, cond = self._start(inputs, k)
            V = self.decoder.vocab_size
            beam_logp = np.full((N, k), -np.inf)
            beam_logp[:, 0] = 0.0                       # at the start all beams are the same one
            tokens = np.full(N * k, self.bos_idx, dtype=np.int64)
            hist_tok, hist_parent, hist_att = [], [], []
            finished = [[] for _ in range(N)]           # (score, logp, step, parent beam)
            done = np.zeros(N, bool)
            has_att = False
            for t in range(max_len):
                logits, state, weights = self.decoder.step(tokens, state, cond)
                has_att = weights is not None
                lp = self._log_probs(logits).reshape(N, k, V)
                cand = (beam_logp[:, :, None] + lp).reshape(N, k * V)
                width = min(2 * k, k * V)
                top = np.argpartition(-cand, width - 1, axis=1)[:, :width]
                order = np.argsort(-np.take_along_axis(cand, top, 1), axis=1, kind="stable")
                top = np.take_along_axis(top, order, 1)             # [N, 2k] best first
                new_parent = np.zeros((N, k), np.int64)
                new_tok = np.full((N, k), self.eos_idx, np.int64)
                new_logp = np.full((N, k), -np.inf)
                for n in range(N):
                    if done[n]:
                        continue
                    alive = 0
                    for rank, idx in enumerate(top[n]):
                        score = cand[n, idx]
                        if not np.isfinite(score):
                            break
                        parent, tok = divmod(int(idx), V)
                        if tok == self.eos_idx:
                            if rank < k:
                                finished[n].append((score / (t + 1) ** length_penalty, score,
                                                    t, parent))
                        elif alive < k:
                            new_parent[n, alive], new_tok[n, alive] = parent, tok
                            new_logp[n, alive] = score
                            alive += 1
                        if alive == k:
                            break
                    # stop once k hypotheses are finished and none alive scores better now
                    # (exact for length_penalty 0, where scores only fall as hypotheses grow)
                    best_alive = new_logp[n, 0] / (t + 1) ** length_penalty if alive else -np.inf
                    if alive == 0 or (len(finished[n]) >= k and
                                      max(f[0] for f in finished[n]) >= best_alive):
                        done[n] = True
                hist_att.append(None if not has_att else weights.reshape(N, k, weights.shape[-1]))
                hist_parent.append(new_parent)
                hist_tok.append(new_tok)
                beam_logp = new_logp
                if done.all():
                    break
                rows = (np.arange(N)[:, None] * k + new_parent).reshape(-1)
                state = self.decoder.reorder_state(state, rows)
                tokens = new_tok.reshape(-1)
            steps = len(hist_tok)
            for n in range(N):
                if not done[n]:                             # out of steps: keep the alive beams
                    for j in range(k):
                        if np.isfinite(beam_logp[n, j]):
                            s = beam_logp[n, j]
                            finished[n].append((s / steps ** length_penalty, s, steps, -1 - j))
        finally:
            self._restore_modes(was)

        def backtrack(n, t, j):
            """Tokens and attention rows of alive beam j after step t (0-based), oldest first."""
            toks, rows = [], []
            while t >= 0:
                toks.append(hist_tok[t][n, j])
                if has_att:
                    rows.append(hist_att[t][n, hist_parent[t][n, j]])
                j = hist_parent[t][n, j]
                t -= 1
            return toks[::-1], rows[::-1]

        res_tokens, res_att, scores, logps = [], [], np.zeros(N), np.zeros(N)
        ended = np.zeros(N, bool)
        for n in range(N):
            if not finished[n]:  # no finite hypothesis (a model gone NaN): as greedy, NaN
                finished[n].append((np.nan, np.nan, 0, -1))
            best = max(finished[n], key=lambda f: f[0])
            score, logp, t, parent = best
            if parent >= 0:         # ended with eos at step t from alive beam `parent` of step t-1
                toks, rows = backtrack(n, t - 1, parent)
            else:                   # unfinished beam -1-parent after the last step
                toks, rows = backtrack(n, t - 1, -1 - parent)
            scores[n], logps[n], ended[n] = score, logp, parent >= 0
            res_tokens.append(np.asarray(toks, np.int64))
            if has_att:
                S = self._source_length(inputs, n)
                res_att.append(np.stack(rows)[:, :S] if rows else np.zeros((0, S), self.dtype))
        return DecodeResult(res_tokens, scores, logps, res_att if has_att else None, ended)


def _penalty(length_penalty):
    """The length penalty, a finite number."""
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty: expected a finite number, got {length_penalty!r}")
    return float(length_penalty)


def _cell_options(cell, peephole, reset_after=True, proj_size=0):
    """The recurrent modules' keyword options: peephole=True and proj_size for an LSTM only,
    reset_after=False for a GRU only."""
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell: expected one of {list(CELLS)}, got {cell!r}")
    proj_size = _int_in(proj_size, "proj_size", 0)
    if check_flag(peephole, "peephole") and cell != "lstm":
        raise ValueError(f"peephole: LSTM peepholes need cell='lstm', got cell={cell!r}")
    if not check_flag(reset_after, "reset_after") and cell != "gru":
        raise ValueError(f"reset_after: reset_after=False is a GRU's, got cell={cell!r}")
    if proj_size and cell != "lstm":
        raise ValueError(f"proj_size: projections need cell='lstm', got cell={cell!r}")
    options = {"peephole": True} if peephole else {"reset_after": False} if not reset_after else {}
    return dict(options, proj_size=proj_size) if proj_size else options


class Seq2Seq(_Generator):
    """Embedding + (bi)directional multi-layer LSTM/GRU encoder over variable lengths, a bridge,
    and an attention ``Decoder`` (see the module docstring). ``cell``: "lstm", "gru" or
    "layernorm_lstm" (fr.nn.LayerNormLSTM and LayerNormLSTMCell); the variants ``peephole``
    (LSTM), ``reset_after=False`` (GRU) and ``proj_size`` (LSTM: h, the keys and the decoder's
    state are proj_size wide per direction) apply to the encoder and the decoder alike."""

    _inputs = (("src", "src_lengths"), 1)

    def __init__(self, src_vocab_size, tgt_vocab_size, embed_size=32, hidden_size=64,
                 num_layers=1, bidirectional=True, cell="lstm", attention="bahdanau", score=None,
                 attention_size=None, dropout=0.0, pad_idx=0, bos_idx=1, eos_idx=2, *,
                 dtype: DTypeLike = np.float32, seed=None, peephole=False, reset_after=True,
                 proj_size=0):
        super().__init__()
        if not isinstance(attention, str) or attention not in STYLES:
            raise ValueError(f"attention: expected one of {STYLES}, got {attention!r}")
        self.pad_idx, self.bos_idx, self.eos_idx = _special_ids(
            pad_idx, bos_idx, eos_idx, _positive_int(tgt_vocab_size, "tgt_vocab_size"))
        scoring = score or _DEFAULT_SCORE[attention]
        if attention_size is not None and scoring != "additive":
            raise ValueError(f"attention_size: the additive score's size; expected None with "
                             f"score={scoring!r}, got {attention_size!r}")
        self.dtype = _dtype(dtype)
        self.cell_type = cell
        s = _seeds(seed, 6)
        self._own_generator(s[5])
        bidirectional = check_flag(bidirectional, "bidirectional")
        D = 2 if bidirectional else 1
        H = _positive_int(hidden_size, "hidden_size")
        L = _positive_int(num_layers, "num_layers")
        if scoring == "dot" and D == 2:  # (keys 2H wide against a query H wide)
            raise ValueError("score='dot' compares the decoder's state with the encoder's outputs, "
                             "which bidirectional=True (the default) makes twice as wide; pass "
                             "bidirectional=False, or score='general' (a learned key projection)")
        src_vocab_size = _positive_int(src_vocab_size, "src_vocab_size")
        embed_size = _positive_int(embed_size, "embed_size")  # (named, not as Embedding's)
        if self.pad_idx >= src_vocab_size:  # (the source is padded with it too)
            raise ValueError(f"pad_idx: expected an id of the source vocabulary too (below "
                             f"src_vocab_size={src_vocab_size}), got {self.pad_idx}")
        self.src_embedding = Embedding(src_vocab_size, embed_size, padding_idx=pad_idx,
                                       dtype=dtype, seed=s[0])
        options = _cell_options(cell, peephole, reset_after, proj_size)
        dropout = _number_in(dropout, *DROPOUT)  # (checked with one layer too, where it is moot)
        self.encoder = CELLS[cell][0](embed_size, H, L, bidirectional=bidirectional,
                                      dropout=dropout if L > 1 else 0.0, dtype=dtype, seed=s[1],
                                      **options)
        S = self.encoder._state_size  # h's width
        self.bridge_h = Linear(D * S, S, dtype=dtype, seed=s[2])
        if cell != "gru":
            self.bridge_c = Linear(D * H, H, dtype=dtype, seed=s[3])
        self.decoder = Decoder(tgt_vocab_size, embed_size, H, L, cell, attention, score,
                               key_size=D * S, attention_size=attention_size,
                               padding_idx=pad_idx, dtype=dtype, seed=s[4], **options)
        self.criterion = CrossEntropyLoss(ignore_index=pad_idx)
        self._saved = None

    def _finals(self, h_n):
        """[L*D, N, H] -> [L, N, D*H] (each layer's directions side by side)."""
        L, D = self.encoder.num_layers, self.encoder.num_directions
        _, N, H = h_n.shape
        return h_n.reshape(L, D, N, H).transpose(0, 2, 1, 3).reshape(L, N, D * H)

    def _finals_backward(self, d):
        L, D = self.encoder.num_layers, self.encoder.num_directions
        _, N, DH = d.shape
        H = DH // D
        return np.ascontiguousarray(d.reshape(L, N, D, H).transpose(0, 2, 1, 3).reshape(L * D, N, H))

    def _check_src(self, src, src_lengths):
        src = _id_array(src, "src", "[N, S]", 2)
        _check_ids(src, "src", self.src_embedding.num_embeddings, "the source vocabulary")
        if src_lengths is None:
            return src, np.full(src.shape[0], src.shape[1], np.int64)
        return src, F.check_lengths(src_lengths, src.shape[1], src.shape[0], "src_lengths")

    def _encode(self, src, src_lengths):
        x = self.src_embedding(src.T)                        # [S, N, E]
        out, finals = self.encoder(x, lengths=src_lengths)
        keys = np.ascontiguousarray(out.transpose(1, 0, 2))    # [N, S, K]
        h_n, c_n = finals if self.cell_type != "gru" else (finals, None)
        h0 = np.tanh(self.bridge_h(self._finals(h_n)))         # [L, N, H]
        c0 = self.bridge_c(self._finals(c_n)) if c_n is not None else None
        return keys, h0, c0

    def _attend(self, keys, src_lengths):
        """The decoder's attention on a new memory; the steps an interrupted backward (or a
        forward a decode let go) left are dropped first."""
        self.decoder.attention.clear_steps()
        self.decoder.attention.set_memory(keys, src_lengths)

    def _start(self, inputs, repeat):
        src, src_lengths = self._check_src(*inputs)
        keys, h0, c0 = self._encode(src, src_lengths)
        if repeat > 1:
            keys = np.repeat(keys, repeat, axis=0)
            src_lengths = np.repeat(src_lengths, repeat)
            h0 = np.repeat(h0, repeat, axis=1)
            c0 = None if c0 is None else np.repeat(c0, repeat, axis=1)
        self._attend(keys, src_lengths)
        return self.decoder.initial_state(h0, c0), None

    def _source_length(self, inputs, n):
        src, src_lengths = self._check_src(*inputs)
        return int(src_lengths[n])

    def forward(self, src, src_lengths, tgt, teacher_forcing=1.0, rng=None):
        """Training forward with teacher forcing (ratio ``teacher_forcing``: the probability of
        feeding the true previous token rather than the model's argmax; ``rng`` draws it, the
        model's own generator, seeded by its ``seed``, when None). Returns logits [N, T, V]; in
        training mode ``backward`` may follow."""
        teacher_forcing, rng = self._teacher_forcing(teacher_forcing, rng)
        with _lock(self):
            src, src_lengths = self._check_src(src, src_lengths)
            self._check_tgt(tgt, src.shape[0])
            self._forward_started()
            keys, h0, c0 = self._encode(src, src_lengths)
            self._attend(keys, src_lengths)
            state = self.decoder.initial_state(h0, c0)
            logits = self._decoder_loss_forward(state, None, tgt, teacher_forcing, rng,
                                                batch=src.shape[0])
            self._saved = (h0,) if self.training else None
            self._saved_batch = src.shape[0]
            return logits

    def _backward(self, h0, dlogits):
        dh0, dc0, _ = self.decoder.backward(np.ascontiguousarray(np.swapaxes(dlogits, 0, 1)))
        dkeys = self.decoder.attention.memory_backward()        # [N, S, K]
        dh_n = self._finals_backward(self.bridge_h.backward(dh0 * (1 - h0 * h0)))
        dhx = dh_n
        if self.cell_type != "gru":
            dhx = (dh_n, self._finals_backward(self.bridge_c.backward(dc0)))
        dx, _ = self.encoder.backward(np.ascontiguousarray(dkeys.transpose(1, 0, 2)), dhx)
        self.src_embedding.backward(dx)


class Captioner(_Generator):
    """One-to-many: a ``Decoder`` (no attention) conditioned on one vector per sample.
    ``z = tanh(W x + b)`` starts every layer's state (``h0 = z``) and joins every step's input."""

    _inputs = (("features",), 0)

    def __init__(self, input_size, vocab_size, embed_size=16, hidden_size=64, num_layers=1,
                 cell="lstm", dropout=0.0, pad_idx=0, bos_idx=1, eos_idx=2, *,
                 dtype: DTypeLike = np.float32, seed=None):
        super().__init__()
        self.pad_idx, self.bos_idx, self.eos_idx = _special_ids(
            pad_idx, bos_idx, eos_idx, _positive_int(vocab_size, "vocab_size"))
        self.dtype = _dtype(dtype)
        self.input_size = _positive_int(input_size, "input_size")
        s = _seeds(seed, 4)
        self._own_generator(s[3])
        H = _positive_int(hidden_size, "hidden_size")
        self.feature = Linear(input_size, H, dtype=dtype, seed=s[0])
        self.dropout = Dropout(_number_in(dropout, *DROPOUT), seed=s[1])
        self.decoder = Decoder(vocab_size, embed_size, H, num_layers, cell, None, cond_size=H,
                               padding_idx=pad_idx, dtype=dtype, seed=s[2])
        self.criterion = CrossEntropyLoss(ignore_index=pad_idx)
        self._saved = None

    def _condition(self, features):
        features = np.asarray(F.check_unmasked(features, "features"))
        if features.dtype.kind not in "biuf":
            raise TypeError(f"features: expected a float array [N, {self.input_size}], got "
                            f"{features.dtype}")
        features = features.astype(self.dtype, copy=False)
        if features.ndim != 2 or features.shape[1] != self.input_size:
            raise ValueError(f"features: expected shape [N, {self.input_size}], got "
                             f"{features.shape}")
        z = np.tanh(self.feature(features))
        return z, self.dropout(z)

    def _start(self, inputs, repeat):
        (features,) = inputs
        _, z = self._condition(features)
        z = np.repeat(z, repeat, axis=0) if repeat > 1 else z
        h0 = np.repeat(z[None], self.decoder.num_layers, axis=0)
        return self.decoder.initial_state(h0), z

    def forward(self, features, tgt, teacher_forcing=1.0, rng=None):
        """features [N, F], tgt [N, T] -> logits [N, T, V] (training forward)."""
        teacher_forcing, rng = self._teacher_forcing(teacher_forcing, rng)
        with _lock(self):
            self._forward_started()
            z, zd = self._condition(features)
            self._check_tgt(tgt, z.shape[0])
            h0 = np.repeat(zd[None], self.decoder.num_layers, axis=0)
            logits = self._decoder_loss_forward(self.decoder.initial_state(h0), zd, tgt,
                                                teacher_forcing, rng, batch=h0.shape[1])
            self._saved = (z,) if self.training else None
            self._saved_batch = z.shape[0]
            return logits

    def _backward(self, z, dlogits):
        dh0, dc0, dcond = self.decoder.backward(np.ascontiguousarray(np.swapaxes(dlogits, 0, 1)))
        dz = self.dropout.backward(dh0.sum(axis=0) + dcond)
        self.feature.backward(dz * (1 - z * z))
