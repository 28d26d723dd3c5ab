"""Attention over a sequence of encoder states ("memory"), one decoder step per call:
additive (Bahdanau, ``score = v^T tanh(W_q q + W_k k + b_k)``) and multiplicative (Luong,
``dot``: ``score = q . k``, ``general``: ``score = q . (W k)``).

Shapes: N batch, S source length, Q query size, K key (= value) size, A attention size.

    keys / values  [N, S, K]   lengths [N] (positions s >= lengths[n] are padding)
    query          [N, Q]      context [N, K]      weights [N, S]

The keys are projected once per sequence (``set_memory``), never once per step. Each step is
then one query projection (additive only) and the fused step below. Padded source positions get
a score of -inf, hence exactly zero weight, and their gradients are exactly zero.

The fused per-step math (score, masked softmax, context, and their gradients) runs in C++:
``csrc/cells/attention.h`` (one sample) driven by ``csrc/cpu/attention.cpp`` (the batch), called
through ``attention_step_forward`` and ``attention_step_backward`` below;
``fusedrnn.reference.attention`` is the unfused float64 oracle they are tested against.

Module protocol (the same stacking rule as the cells): ``set_memory(keys, lengths)`` once per
batch, then ``forward(query)`` per decoder step; in training mode every step is pushed on a
stack and ``backward(dcontext, dweights=None)`` pops the latest one and returns ``dquery``.
Gradients of the keys are summed over the steps and handed out by ``memory_backward()`` after
the last step's backward, which also forms the projections' weight gradients with one GEMM each
over all steps (never one per step); call it once the last step is back-propagated.
"""
from __future__ import annotations

import math

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

from .. import functional as F
from .._loader import _C
from .layers import _dtype, _positive_int, _seeded
from .module import Module, Parameter, as_gradient, check_unwritten, write_stamp

__all__ = ["SCORES", "attention_step_forward", "attention_step_backward", "lengths_mask",
           "AttentionBase", "BahdanauAttention", "LuongAttention", "make_attention"]

SCORES = ("additive", "dot", "general")


def lengths_mask(lengths, N, S):
    """[N, S] bool, True at real positions (s < lengths[n]); all True when lengths is None."""
    if lengths is None:
        return np.ones((N, S), dtype=bool)
    no_sample = isinstance(lengths, (list, tuple)) and not lengths  # [] would read as float64
    try:
        lengths = np.zeros(0, np.int64) if no_sample else np.asarray(lengths)
    except (ValueError, TypeError, OverflowError) as e:  # ragged, or not numbers at all
        raise ValueError(f"lengths: expected {N} integers (one length per sample), got a "
                         f"{type(lengths).__name__} NumPy cannot read as one array ({e})") from None
    if lengths.shape != (N,) or lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths: expected an integer array of shape ({N},), got "
                         f"{lengths.dtype} {lengths.shape}")
    if N and (lengths.min() < 0 or lengths.max() > S):
        raise ValueError(f"lengths: expected values in [0, {S}], got min {lengths.min()} "
                         f"and max {lengths.max()}")
    return np.arange(S)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------- fused step
def attention_step_forward(score, query, keys_proj, values, mask, v=None):
    """One attention step, fused in C++ (csrc/cells/attention.h): scores, masked softmax over S,
    context.

    score      "additive" | "dot" | "general" ("general" is "dot" on keys projected by W)
    query      [N, A]  additive: W_q q (already projected); dot/general: q itself
    keys_proj  [N, S, A]  additive: W_k k + b_k; dot: k; general: W k
    values     [N, S, K]
    mask       [N, S] bool, True at real positions
    v          [A] (additive only)

    Returns ``(context [N, K], weights [N, S], saved)``; ``saved`` is what the backward needs,
    the returned weights among it (copy them before changing them in place, as for a plot:
    the attention modules return a copy where they keep the step for a backward).
    A sample with no real position gets all-zero weights and a zero context."""
    if not isinstance(F.check_unmasked(query, "query"), np.ndarray):
        raise TypeError(f"query: expected a numpy.ndarray, got {type(query).__name__}")
    # bool, or integers of 0 and 1 (a cast to bytes made 0.5 and 256 0, masked, silently)
    if not isinstance(F.check_unmasked(mask, "mask"), np.ndarray) or mask.dtype.kind not in "biu":
        raise TypeError(f"mask: expected a numpy.ndarray of dtype bool (True at real "
                        f"positions), got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dtype != np.bool_ and not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask: expected 0 and 1 (or bool), got other values")
    dtype = query.dtype
    args = (np.ascontiguousarray(query), np.ascontiguousarray(keys_proj, dtype),
            np.ascontiguousarray(values, dtype), np.ascontiguousarray(mask, np.uint8),
            None if v is None else np.ascontiguousarray(v, dtype))
    context, weights, hidden = _C.attention_forward(score, *args)
    return context, weights, (score, args, hidden, weights)


def attention_step_backward(saved, dcontext, dweights=None):
    """Gradients of one step (fused in C++). ``dcontext`` [N, K], ``dweights`` [N, S] or None.

    Returns ``(dquery [N, A], dkeys_proj [N, S, A], dvalues [N, S, K], dv [A] or None)``;
    every gradient is exactly zero at masked positions."""
    score, args, hidden, weights = saved
    dtype = args[0].dtype
    return _C.attention_backward(
        score, *args, hidden, weights, np.ascontiguousarray(dcontext, dtype),
        None if dweights is None else np.ascontiguousarray(dweights, dtype))


# ---------------------------------------------------------------------------- modules
def _dtype_or_type(value):
    """What an error says an argument was: an array's dtype, else its type (a torch.Tensor's
    dtype would read like NumPy's)."""
    return value.dtype if isinstance(value, np.ndarray) else type(value).__name__


class AttentionBase(Module):
    """Memory handling, the step stack and the backward protocol shared by both families."""

    score = None

    def __init__(self, query_size, key_size, dtype):
        super().__init__()
        self.query_size = _positive_int(query_size, "query_size")
        self.key_size = _positive_int(key_size, "key_size")
        self.dtype = _dtype(dtype)
        self._memory = None
        self._steps = []

    # -- subclasses: the once-per-sequence key projection and the per-step query projection
    def _project_keys(self, keys):
        return keys

    def _project_keys_backward(self, keys, dkeys_proj):
        return dkeys_proj

    def _project_query(self, query):
        return query

    def _query_input_grad(self, dquery_proj):
        return dquery_proj

    def _query_weight_grads(self, queries, dqueries_proj):
        pass

    def _v(self):
        return None

    # -- protocol
    def set_memory(self, keys, lengths=None):
        """Keys (= values) [N, S, K] and lengths [N]; projects the keys once for all steps
        (again at a step after a write of the weights). Keeps its own copy of the keys. After
        steps' backward, ``memory_backward`` must come before the next memory (it adds the key
        and query projections' gradients)."""
        if not isinstance(F.check_unmasked(keys, "keys"), np.ndarray) or keys.dtype != self.dtype:
            raise TypeError(f"keys: expected a numpy.ndarray of dtype {self.dtype}, got "
                            f"{_dtype_or_type(keys)}")
        if self._memory is not None and self._memory["queries"] and \
                next(iter(self.parameters()), None) is not None:
            raise RuntimeError(f"{type(self).__name__}.set_memory: steps of the memory set last "
                               f"were back-propagated, but not memory_backward(), which adds "
                               f"the projections' weight gradients: call it first (or "
                               f"clear_steps() to let them go)")
        if keys.ndim != 3 or keys.shape[2] != self.key_size:
            raise ValueError(f"keys: expected shape [N, S, {self.key_size}], got {keys.shape}")
        N, S, _ = keys.shape
        mask = lengths_mask(lengths, N, S)
        if not mask.all():  # padding is never read: whatever it holds (NaN) stays out of the
            keys = np.where(mask[:, :, None], keys, keys.dtype.type(0))  # weight gradients
        else:  # (its own: the steps and memory_backward read it after the caller's writes)
            keys = keys.copy()
        keys_proj = self._project_keys(keys)
        # (written: the weights' writes known now, for memory_backward's check: keys_proj is of
        # these weights)
        self._memory = dict(keys=keys, keys_proj=keys_proj, mask=mask, written=write_stamp(self),
                            dkeys_proj=None, dvalues=None, queries=[], dqueries_proj=[])
        self._steps = []

    def clear_steps(self):
        """Let go of the steps still waiting for their backward and of what the back-propagated
        ones gathered for ``memory_backward`` (a truncated backward), as the cells'
        ``clear_steps``."""
        self._steps = []
        if self._memory is not None:
            self._memory.update(dkeys_proj=None, dvalues=None, queries=[], dqueries_proj=[])

    @property
    def memory_mask(self):
        """The [N, S] bool mask of the memory set last (True at real positions), or None."""
        return None if self._memory is None else self._memory["mask"]

    def forward(self, query):
        """query [N, Q] -> (context [N, K], weights [N, S]) for the memory set last."""
        mem = self._memory
        if mem is None:
            raise RuntimeError(f"{type(self).__name__}: call set_memory(keys, lengths) first")
        N = mem["keys"].shape[0]
        if not isinstance(F.check_unmasked(query, "query"), np.ndarray) or \
                query.dtype != self.dtype:
            raise TypeError(f"query: expected a numpy.ndarray of dtype {self.dtype} (the "
                            f"module's dtype), got {_dtype_or_type(query)}")
        if query.shape != (N, self.query_size):
            raise ValueError(f"query: expected shape ({N}, {self.query_size}), got "
                             f"{getattr(query, 'shape', type(query).__name__)}")
        if mem["written"] != write_stamp(self):  # the weights changed since the projection
            if self._steps or mem["queries"] or mem["dvalues"] is not None:  # (raises)
                check_unwritten(self, mem["written"], "forward",
                                advice="while steps of the old weights still wait for their "
                                       "backward or memory_backward(): finish those before "
                                       "the optimizer step, or let them go with clear_steps()")
            mem["keys_proj"], mem["written"] = self._project_keys(mem["keys"]), write_stamp(self)
        if self.training:  # kept for backward: a decoder loop may refill one query buffer
            query = query.copy()
        context, weights, saved = attention_step_forward(
            self.score, self._project_query(query), mem["keys_proj"], mem["keys"], mem["mask"],
            self._v())
        if self.training:  # (the caller's weights apart from the saved ones: no copy where
            self._steps.append((query, saved, write_stamp(self)))  # nothing is saved, as in
            weights = weights.copy()                                # decoding)
        return context, weights

    def backward(self, dcontext, dweights=None):
        """Backward of the latest step not yet back-propagated; returns dquery [N, Q]."""
        if not self._steps:
            raise RuntimeError(f"{type(self).__name__}.backward: no training-mode step left "
                               f"(set_memory and clear_steps() let the steps not yet "
                               f"back-propagated go)")
        query, saved, written = self._steps[-1]  # taken off only once its backward ran (bad
        check_unwritten(self, written)            # input keeps it)
        dq_proj, dkeys_proj, dvalues, dv = attention_step_backward(
            saved, as_gradient(dcontext, "dcontext", self.dtype),
            None if dweights is None else as_gradient(dweights, "dweights", self.dtype))
        self._steps.pop()
        mem = self._memory
        mem["dkeys_proj"] = dkeys_proj if mem["dkeys_proj"] is None else mem["dkeys_proj"] + dkeys_proj
        mem["dvalues"] = dvalues if mem["dvalues"] is None else mem["dvalues"] + dvalues
        if dv is not None:
            self.v.accumulate_grad(dv)
        mem["queries"].append(query)
        mem["dqueries_proj"].append(dq_proj)
        return self._query_input_grad(dq_proj)

    def memory_backward(self, drop_pending=False):
        """After the last step's backward: d(keys) [N, S, K] summed over the back-propagated
        steps (through the key projection and as values); adds the key and query projections'
        parameter gradients. ``drop_pending=True``: a truncated backward's, whose steps still
        waiting for a backward are let go first (else they are refused)."""
        mem = self._memory
        if mem is None:
            raise RuntimeError(f"{type(self).__name__}.memory_backward: no memory set")
        if F.check_flag(drop_pending, "drop_pending") and self._steps:
            self._steps = []
        if self._steps:
            raise RuntimeError(f"{type(self).__name__}.memory_backward: {len(self._steps)} "
                               f"steps still wait for their backward: back-propagate them, or "
                               f"memory_backward(drop_pending=True) for a truncated backward's "
                               f"gradients")
        check_unwritten(self, mem["written"], "memory_backward")
        keys = mem["keys"]
        if mem["queries"]:       # the query projection's weight gradient: one GEMM, all steps
            self._query_weight_grads(np.stack(mem["queries"]), np.stack(mem["dqueries_proj"]))
            mem["queries"], mem["dqueries_proj"] = [], []
        if mem["dvalues"] is None:
            return np.zeros_like(keys)
        dkeys = mem["dvalues"] + self._project_keys_backward(keys, mem["dkeys_proj"])
        mem["dvalues"] = mem["dkeys_proj"] = None
        return dkeys


class BahdanauAttention(AttentionBase):
    """Additive attention ``score(q, k) = v^T tanh(W_q q + W_k k + b_k)``.

    Parameters: weight_query [A, Q], weight_key [A, K], bias_key [A], v [A]."""

    score = "additive"

    def __init__(self, query_size, key_size, attention_size=None, *, dtype: DTypeLike = np.float32,
                 seed=None):
        super().__init__(query_size, key_size, dtype)
        A = self.attention_size = _positive_int(  # 0 is refused, not taken for "the default"
            query_size if attention_size is None else attention_size, "attention_size")
        rng = _seeded(seed)

        def uniform(fan_in, *shape):
            b = 1.0 / math.sqrt(fan_in)
            return Parameter(rng.uniform(-b, b, shape).astype(self.dtype))

        self.weight_query = uniform(self.query_size, A, self.query_size)
        self.weight_key = uniform(self.key_size, A, self.key_size)
        self.bias_key = uniform(self.key_size, A)
        self.v = uniform(A, A)

    def _v(self):
        return self.v.data

    def _project_keys(self, keys):
        return F.matmul(keys, self.weight_key.data, trans_b=True) + self.bias_key.data

    def _project_keys_backward(self, keys, dkeys_proj):
        A, K = self.attention_size, self.key_size
        d2 = dkeys_proj.reshape(-1, A)
        # one GEMM over the N*S rows
        self.weight_key.accumulate_grad(F.matmul(d2, keys.reshape(-1, K), trans_a=True))
        self.bias_key.accumulate_grad(d2.sum(axis=0))
        return F.matmul(dkeys_proj, self.weight_key.data)

    def _project_query(self, query):
        return F.matmul(query, self.weight_query.data, trans_b=True)

    def _query_input_grad(self, dquery_proj):
        return F.matmul(dquery_proj, self.weight_query.data)

    def _query_weight_grads(self, queries, dqueries_proj):
        self.weight_query.accumulate_grad(F.matmul(dqueries_proj.reshape(-1, self.attention_size),
                                                   queries.reshape(-1, self.query_size),
                                                   trans_a=True))

    def extra_repr(self):
        """``query_size=..., key_size=..., attention_size=...``."""
        return f"query_size={self.query_size}, key_size={self.key_size}, " \
               f"attention_size={self.attention_size}"


class LuongAttention(AttentionBase):
    """Multiplicative attention: ``dot`` (``q . k``, needs Q == K) or ``general``
    (``q . (W k)`` with weight [Q, K]; the keys are projected once, so each step is a dot)."""

    def __init__(self, query_size, key_size, score="general", *, dtype: DTypeLike = np.float32,
                 seed=None):
        super().__init__(query_size, key_size, dtype)
        if not isinstance(score, str) or score not in ("dot", "general"):
            raise ValueError(f"score: expected 'dot' or 'general', got {score!r}")
        self.score = score
        if score == "dot":
            if self.query_size != self.key_size:
                raise ValueError(f"key_size: the dot score needs key_size == query_size "
                                 f"({self.query_size}), got {self.key_size}")
        else:
            b = 1.0 / math.sqrt(self.key_size)
            rng = _seeded(seed)
            self.weight = Parameter(rng.uniform(-b, b, (self.query_size, self.key_size))
                                    .astype(self.dtype))

    def _project_keys(self, keys):
        return keys if self.score == "dot" else F.matmul(keys, self.weight.data, trans_b=True)

    def _project_keys_backward(self, keys, dkeys_proj):
        if self.score == "dot":
            return dkeys_proj
        self.weight.accumulate_grad(F.matmul(dkeys_proj.reshape(-1, self.query_size),
                                             keys.reshape(-1, self.key_size), trans_a=True))
        return F.matmul(dkeys_proj, self.weight.data)

    def extra_repr(self):
        """``query_size=..., key_size=..., score=...``."""
        return f"query_size={self.query_size}, key_size={self.key_size}, score={self.score!r}"


def make_attention(score, query_size, key_size, attention_size=None, *,
                   dtype: DTypeLike = np.float32, seed=None):
    """An attention module by score name: "additive" (Bahdanau), "dot" or "general" (Luong);
    ``attention_size`` is the additive score's (the others have none: it is not read there)."""
    if not isinstance(score, str):
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    if score == "additive":
        return BahdanauAttention(query_size, key_size, attention_size, dtype=dtype, seed=seed)
    if score in ("dot", "general"):
        return LuongAttention(query_size, key_size, score, dtype=dtype, seed=seed)
    raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
