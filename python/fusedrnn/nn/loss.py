"""Losses with ``backward``: ``CrossEntropyLoss`` (on logits, with a numerically stable
log-softmax) and ``MSELoss``.

    CrossEntropyLoss  logits [N, C] or [..., C] (classes last)   target [N] or [...] ints
    MSELoss           input [...]                                target [...] (same shape)

``forward`` returns the loss (a float for reductions "mean"/"sum", an array for "none") and
saves what ``backward(grad=1.0)`` needs; backward returns the gradient of the first argument.
Note the class axis is the last one for inputs with more than two dimensions (the natural layout
of a recurrent layer's output [T, N, C]); PyTorch puts it at axis 1.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..functional import check_unmasked
from .layers import _int_in, _number_in
from .module import Module, as_gradient

__all__ = ["log_softmax", "softmax", "CrossEntropyLoss", "MSELoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _logits_and_axis(logits, axis):
    """(logits, axis) checked: a float NumPy array and one of its axes; TypeError or ValueError
    naming the argument (None gave AttributeError, an axis out of range IndexError)."""
    if not isinstance(check_unmasked(logits, "logits"), np.ndarray) or logits.dtype.kind != "f":
        raise TypeError(f"logits: expected a float numpy.ndarray, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or \
            not -logits.ndim <= axis < logits.ndim:
        raise ValueError(f"axis: expected an axis of logits's {logits.ndim} (an integer in "
                         f"[{-logits.ndim}, {logits.ndim})), got {axis!r}")
    return logits, int(axis)


def log_softmax(logits, axis=-1):
    """log softmax along ``axis``, shifted by the maximum so no exponent overflows."""
    logits, axis = _logits_and_axis(logits, axis)
    if logits.shape[axis] == 0:  # (no class: nothing to normalise, as torch's)
        return np.array(logits, copy=True)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(logits, axis=-1):
    """softmax along ``axis`` (probabilities summing to 1), shifted by the maximum so no
    exponent overflows."""
    logits, axis = _logits_and_axis(logits, axis)
    if logits.shape[axis] == 0:
        return np.array(logits, copy=True)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _check_reduction(reduction):
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:  # (an array: NumPy's error)
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _grad_like(grad, shape, dtype):
    """A "none" reduction's upstream gradient: an array of the per-position losses' shape
    (broadcasting a smaller one would give the wrong gradient silently), or a number."""
    grad = as_gradient(grad, "grad", dtype)
    if grad.ndim and grad.shape != tuple(shape):
        raise ValueError(f"grad: expected shape {tuple(shape)} (the losses') or a number, got "
                         f"{grad.shape}")
    return grad


def _number_grad(grad, reduction):
    """A "mean" or "sum" reduction's upstream gradient: one number (an array would scale the
    classes or positions it broadcast over, silently)."""
    grad = as_gradient(grad, "grad")
    if grad.ndim != 0:
        raise ValueError(f"grad: expected a number for reduction {reduction!r}, got shape "
                         f"{grad.shape}")
    return float(grad)


class CrossEntropyLoss(Module):
    """``-log softmax(logits)[target]``, averaged over the targets that are not ``ignore_index``
    (reduction "mean"), summed ("sum") or per position ("none", 0 at ignored positions).
    With every target ignored the mean is 0 (PyTorch gives NaN), so a fully padded chunk of a
    truncated-BPTT run adds nothing instead of poisoning the weights. ``label_smoothing`` ε, as
    PyTorch's: the target is ``(1 - ε) one_hot + ε / C``. ``weight`` (torch's class weights)
    is not supported: None only (TypeError otherwise)."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        if weight is not None:  # (torch's first argument: a positional one is not ignore_index)
            raise TypeError("weight: class weights are not supported; expected None")
        self.ignore_index = _int_in(ignore_index, "ignore_index", -2 ** 63)
        self.reduction = _check_reduction(reduction)
        self.label_smoothing = _number_in(label_smoothing, "label_smoothing", 0, 1, "in [0, 1]")
        self._saved = None

    def forward(self, logits, target):
        """logits [..., C] (floating), target [...] (class indices or ``ignore_index``) -> the
        loss: a float ("mean", "sum") or an array shaped like target ("none"). Saves what
        backward needs (in every mode)."""
        if not isinstance(check_unmasked(logits, "logits"), np.ndarray) or \
                logits.dtype.kind != "f":
            raise TypeError(f"logits: expected a floating numpy.ndarray, got "
                            f"{getattr(logits, 'dtype', type(logits).__name__)}")
        target = np.asarray(check_unmasked(target, "target"))
        if target.dtype.kind not in "iu":
            raise TypeError(f"target: expected an integer array of class indices, got dtype "
                            f"{target.dtype}")
        if logits.ndim < 1 or logits.shape[-1] == 0:
            raise ValueError(f"logits: expected classes on the last axis (at least one), got "
                             f"shape {logits.shape}")
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"target: expected shape {logits.shape[:-1]} (logits without its "
                             f"class axis), got {target.shape}")
        C = logits.shape[-1]
        valid = target != self.ignore_index
        bad = valid & ((target < 0) | (target >= C))
        if bad.any():
            raise ValueError(f"target: expected class indices in [0, {C}) or ignore_index "
                             f"{self.ignore_index}, got {target[bad].ravel()[0]}")
        logp = log_softmax(logits)
        safe = np.where(valid, target, 0)
        picked = -np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
        if self.label_smoothing:
            picked = (1 - self.label_smoothing) * picked - self.label_smoothing * logp.mean(-1)
        losses = np.where(valid, picked, 0.0).astype(logits.dtype)
        count = int(valid.sum())
        self._saved = (logp, safe, valid, count, logits.dtype)
        if self.reduction == "none":
            return losses
        total = float(losses.sum(dtype=np.float64))
        if self.reduction == "sum":
            return total
        return total / count if count else 0.0

    def backward(self, grad=1.0):
        """Gradient of the loss with respect to ``logits``: ``softmax - target`` (the one-hot
        target, smoothed by ``label_smoothing``) scaled by ``grad`` (an array shaped like the
        per-position losses for reduction "none")."""
        if self._saved is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        logp, safe, valid, count, dtype = self._saved
        d = np.exp(logp)
        eps = self.label_smoothing
        if eps:
            d -= eps / d.shape[-1]
        np.put_along_axis(d, safe[..., None],
                          np.take_along_axis(d, safe[..., None], axis=-1) - (1 - eps), axis=-1)
        d *= valid[..., None]
        if self.reduction == "none":
            scale = _grad_like(grad, valid.shape, dtype)[..., None]
        elif self.reduction == "sum":
            scale = _number_grad(grad, self.reduction)
        else:
            scale = _number_grad(grad, self.reduction) / count if count else 0.0
        return (d * scale).astype(dtype, copy=False)

    def extra_repr(self):
        """``ignore_index=..., reduction=...`` (and ``label_smoothing`` where set)."""
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}" + (
            f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")


class MSELoss(Module):
    """``(input - target)**2`` averaged ("mean"), summed ("sum") or elementwise ("none")."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self._diff = self._dtype = None

    def forward(self, input, target):
        """input and target of one shape -> the loss: a float ("mean", "sum") or the
        elementwise array ("none"). Saves ``input - target`` for backward (in every mode)."""
        input = np.asarray(check_unmasked(input, "input"))
        target = np.asarray(check_unmasked(target, "target"))
        if input.dtype.kind != "f":  # (an integer input's gradient truncated to 0, as torch
            raise TypeError(f"input: expected a float array, got dtype {input.dtype}")  # refuses)
        if target.dtype.kind not in "biuf":  # (complex: (1 - i)^2's real part is 0)
            raise TypeError(f"target: expected an array of real numbers, got dtype "
                            f"{target.dtype}")
        if input.shape != target.shape:
            raise ValueError(f"target: expected shape {input.shape} (the shape of input), got "
                             f"{target.shape}")
        if target.dtype.kind != "f":  # (integers and bools take the input's dtype, as torch)
            target = target.astype(input.dtype)
        diff = input - target
        self._diff = diff
        self._dtype = input.dtype  # the gradient's (a float64 target widens diff)
        sq = diff * diff
        if self.reduction == "none":
            return sq
        total = float(sq.sum(dtype=np.float64))
        if self.reduction == "sum":
            return total
        return total / sq.size if sq.size else float("nan")  # torch's mean of nothing

    def backward(self, grad=1.0):
        """Gradient with respect to ``input``: ``2 * (input - target)`` scaled by ``grad`` (and by
        1/size for "mean"; ``grad`` is an array shaped like input for "none")."""
        if self._diff is None:
            raise RuntimeError("MSELoss.backward called before forward")
        diff = self._diff
        if self.reduction == "none":
            return (2 * diff * _grad_like(grad, diff.shape, diff.dtype)).astype(self._dtype,
                                                                                copy=False)
        scale = 2.0 * _number_grad(grad, self.reduction) / (
            1 if self.reduction == "sum" else max(diff.size, 1))
        return (diff * diff.dtype.type(scale)).astype(self._dtype, copy=False)

    def extra_repr(self):
        """``reduction=...``."""
        return f"reduction={self.reduction!r}"
