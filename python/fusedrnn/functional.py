"""One call per kernel: one layer, one direction, whole sequence, arrays in and arrays out.

Shapes: T time, N batch, I input, H hidden, G gates (RNN 1, GRU 3, LSTM 4).

    x       [T, N, I]          h0, c0, h_n, c_n, dh_n, dc_n   [N, H]
    w_ih    [G*H, I]           w_hh  [G*H, H]       b_ih, b_hh  [G*H]   (PyTorch layout)
    y, dy   [T, N, H]          lengths  [N] integers in [0, T]

Forward functions return the outputs and a context (None unless ``training=True``) that the
matching backward consumes; backward returns every gradient, with ``None`` for a bias that was not
given. Variable lengths follow PyTorch's packed sequences: sample n runs only its steps
t < lengths[n]; y is 0 past its length; the final state is the state after its own last step; the
reverse direction starts at t = lengths[n] - 1. dtypes float32 and float64.

Validation lives here (argument names in every message); the C++ kernels in ``fusedrnn._C``
repeat the shape checks so that no call can reach memory it does not own.
"""
from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _C
from ._flags import check_flag
from .amp import autocast_precision, check_precision

# The kernels' cells: "gru_reset_before" is the GRU with reset_after=False (gru_forward).
# "layernorm_lstm": the LayerNorm-LSTM (layernorm_lstm_forward).
GATES = {"rnn": 1, "gru": 3, "gru_reset_before": 3, "lstm": 4, "layernorm_lstm": 4}
CELL_STATE = ("lstm", "layernorm_lstm")  # the cells with a cell state c


# Below this many multiply-adds OpenBLAS runs a GEMM on the calling thread alone (its
# interface/gemm.c: 65536 x GEMM_MULTITHREAD_THRESHOLD 4), and NumPy's `@` costs less than a call
# of ours (LSTM decoder steps, small heads: 1.7 against 2.0 us at 8 x 16 x 10).
_POOL_MIN_MACS = 1 << 18


def matmul(a, b, trans_a=False, trans_b=False):
    """``op(a) @ op(b)``, op the transpose where ``trans_a`` / ``trans_b`` asks (no copy is made
    for it); ``a`` may have leading dimensions ([..., K] @ op(b), not with ``trans_a``). NumPy
    arrays of one dtype, float32 or float64, multiply on the kernels' threads: the
    single-threaded OpenBLAS calls the recurrent kernels use, split over their team (NumPy's
    ``@`` runs on NumPy's own OpenBLAS pool, whose threads keep spinning on the cores after each
    call, where the kernels' next call needs them). Products of fewer than 2^18 multiply-adds,
    which NumPy's OpenBLAS runs in the calling thread without its pool, and anything else (CuPy
    arrays, other dtypes or shapes) go to ``@`` as they are."""
    trans_a, trans_b = check_flag(trans_a, "trans_a"), check_flag(trans_b, "trans_b")
    for name, flag, m in (("a", trans_a, a), ("b", trans_b, b)):
        if flag and getattr(m, "ndim", 2) != 2:  # (.T of more dimensions reverses them all)
            raise ValueError(f"trans_{name}: a transpose needs {name} of 2 dimensions, got shape "
                             f"{m.shape}")
    # (a subclass multiplies as a plain array: np.matrix's @ would give a matrix back)
    a, b = (np.asarray(check_unmasked(m, n)) if isinstance(m, np.ndarray) else m
            for n, m in (("a", a), ("b", b)))
    ours = (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype
            and a.dtype in (np.float32, np.float64) and b.ndim == 2
            and (a.ndim == 2 or (a.ndim > 0 and not trans_a)))
    if ours and a.size * b.shape[0 if trans_b else 1] >= _POOL_MIN_MACS:
        a2 = np.ascontiguousarray(a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a)
        out = _C.matmul(a2, np.ascontiguousarray(b), trans_a, trans_b)
        return out if a.ndim == 2 else out.reshape(a.shape[:-1] + out.shape[1:])
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def gru_kernel(reset_after):
    """The kernel cell of a GRU: "gru" (reset_after=True, PyTorch's) or "gru_reset_before"."""
    return "gru" if check_flag(reset_after, "reset_after") else "gru_reset_before"
NONLINEARITIES = ("tanh", "relu")


@dataclass
class RecurrentContext:
    """What backward needs from a training-mode forward (all arrays in time order)."""

    cell: str
    nonlinearity: str
    reverse: bool
    x: np.ndarray  # [T, N, I] (a CuPy array on the CUDA backend, likewise below)
    w_ih: np.ndarray  # [G*H, I]
    w_hh: np.ndarray  # [G*H, H]
    lengths: Optional[np.ndarray]  # [N] int64 or None
    gates: np.ndarray  # [T, N, G*H] activated gates (RNN: the output itself)
    extra: np.ndarray  # [T, N, H] LSTM: c_prev; GRU: W_hn h + b_hn (reset-before: r*h); RNN: empty;
    # LayerNorm-LSTM [T, N, 10H + 3]: c_prev and its norms (cells/layernorm_lstm_cell.h)
    h_prev: np.ndarray  # [T, N, H] state entering each step
    has_bias: bool
    consumed: bool = False
    precision: Optional[str] = None  # "bfloat16": the forward's products were, the backward's are
    w_ph: Optional[np.ndarray] = None  # [3H] the LSTM's peepholes (i, f, o), or None
    w_hr: Optional[np.ndarray] = None  # [P, H] the LSTM's projection (proj_size P), or None
    ln: Optional[np.ndarray] = None  # [10H] the LayerNorm-LSTM's norm parameters, or None


# ---------------------------------------------------------------------------- validation
def layer_norm_eps(eps, dtype=None):
    """A LayerNorm-LSTM's epsilon as a float: a positive finite number (an infinite one made
    every norm 0, the output independent of the input), and for a ``dtype`` (the layer's) at
    least its smallest normal number (a smaller one is 0 in the kernels, which flush
    subnormals: a constant row, such as W_hh h of a zero state, then normalizes to 0/0 = NaN),
    else ValueError."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
        raise ValueError(f"eps: expected a positive finite number, got {eps!r}")
    if dtype is not None and eps < np.finfo(dtype).tiny:
        raise ValueError(f"eps: expected at least {np.finfo(dtype).tiny:.4g} (the smallest "
                         f"normal {np.dtype(dtype).name}: the kernels flush smaller values to "
                         f"0), got {eps!r}")
    return float(eps)


def _backend(x):
    """(array module, kernel module) for ``x``: NumPy and fusedrnn._C, or CuPy and the CUDA
    kernels for any array exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors)."""
    if isinstance(x, np.ndarray):
        check_unmasked(x, "x")
        return np, _C
    if hasattr(x, "__cuda_array_interface__"):
        from . import cuda  # raises a clear error on a CPU-only build
        return cuda.array_module(), cuda.kernels()
    raise TypeError(f"x: expected a numpy.ndarray (or a CUDA array), got {type(x).__name__}")


def _as_array(value, name, xp=np):
    if xp is np:
        if isinstance(value, np.ndarray):
            return check_unmasked(value, name)
        if hasattr(value, "__cuda_array_interface__"):
            raise TypeError(f"{name}: expected a NumPy array like x, got a CUDA array "
                            f"({type(value).__name__})")
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(value).__name__}")
    if not hasattr(value, "__cuda_array_interface__"):
        raise TypeError(f"{name}: expected a CUDA array like x, got {type(value).__name__}")
    return xp.asarray(value)


def _float_dtype(x):
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x: expected dtype float32 or float64, got {x.dtype}")
    return x.dtype


def _check(value, name, shape, dtype, optional=False, xp=np):
    """Return ``value`` as a C-contiguous array of ``dtype`` and ``shape`` or raise naming it."""
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name}: expected an array of shape {tuple(shape)}, got None")
    arr = _as_array(value, name, xp)
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    return xp.ascontiguousarray(arr)


def check_lengths(lengths, T, N, name="lengths"):
    """Validate a lengths vector: [N] integers in [0, T] (an integer array, or a list or tuple of
    ints); returns int64 C-contiguous or None."""
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        try:  # (an empty list reads as float64: no sample, no length, nothing to refuse)
            lengths = np.asarray(lengths) if len(lengths) else np.zeros(0, np.int64)
        except (ValueError, TypeError, OverflowError) as e:  # ragged, or not numbers at all
            raise ValueError(f"{name}: expected {N} integers (one length per sample), got a "
                             f"{type(lengths).__name__} NumPy cannot read as a flat array of "
                             f"numbers ({e})") from None
    if not isinstance(check_unmasked(lengths, name), np.ndarray):
        raise TypeError(f"{name}: expected integers, one per sample (a NumPy array or a list), "
                        f"got {type(lengths).__name__}")
    arr = lengths
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.shape != (N,):
        raise ValueError(f"{name}: expected shape ({N},) (one length per sample), got {arr.shape}")
    if N and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"{name}: expected values in [0, {T}] (the sequence length), "
                         f"got min {arr.min()} and max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_unmasked(value, name):
    """``value``, unless it is a NumPy masked array (TypeError naming ``name``): the kernels and
    NumPy's conversions read every element, so its masked values would be used silently."""
    ma = sys.modules.get("numpy.ma")  # (never imported: no masked array exists)
    if ma is not None and isinstance(value, ma.MaskedArray):
        raise TypeError(f"{name}: expected a plain numpy.ndarray, got a masked array (its masked "
                        f"values would be used: pass np.ma.filled(value, fill_value), or "
                        f"lengths= for padded sequences)")
    return value


def check_nonlinearity(nonlinearity, name="nonlinearity"):
    """``nonlinearity`` if it is 'tanh' or 'relu'; TypeError (not a str) or ValueError naming it."""
    if not isinstance(nonlinearity, str):
        raise TypeError(f"{name}: expected 'tanh' or 'relu' (a str), got "
                        f"{type(nonlinearity).__name__}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{name}: expected 'tanh' or 'relu', got {nonlinearity!r}")
    return str(nonlinearity)


def check_projection(w_hr, cell, dtype, xp=np):
    """An LSTM's projection w_hr [P, H] (0 < P < H, torch's proj_size) as an array, or None;
    ValueError/TypeError naming it."""
    if w_hr is None:
        return None
    if cell != "lstm":
        raise ValueError(f"w_hr: projections (proj_size) belong to an LSTM, got one for "
                         f"{cell.upper()}")
    w_hr = _as_array(w_hr, "w_hr", xp)
    if w_hr.ndim != 2 or not 0 < w_hr.shape[0] < w_hr.shape[1]:
        raise ValueError(f"w_hr: expected shape (P, H) with 0 < P < H (proj_size < "
                         f"hidden_size), got {w_hr.shape}")
    return _check(w_hr, "w_hr", w_hr.shape, dtype, xp=xp)


def _check_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr=None):
    xp, kernels = _backend(x)
    x = _as_array(x, "x", xp)
    dtype = _float_dtype(x)
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions [T, N, I], got shape {x.shape}")
    T, N, I = x.shape
    w_hh = _as_array(w_hh, "w_hh", xp)
    G = GATES[cell]
    w_hr = check_projection(w_hr, cell, dtype, xp)
    if w_hr is not None:  # h is P wide: w_hh [G*H, P], h0 [N, P]
        (P, H), S = w_hr.shape, w_hr.shape[0]
        if w_hh.shape != (G * H, P):
            raise ValueError(f"w_hh: expected shape ({G}*H, P) = {(G * H, P)} with the "
                             f"projection w_hr {w_hr.shape}, got {w_hh.shape}")
    else:
        if w_hh.ndim != 2 or w_hh.shape[0] != G * w_hh.shape[1]:
            raise ValueError(f"w_hh: expected shape ({G}*H, H) for {cell.upper()}, got "
                             f"{w_hh.shape}")
        H = S = w_hh.shape[1]
    GH = G * H
    x = xp.ascontiguousarray(x)
    w_hh = _check(w_hh, "w_hh", (GH, S), dtype, xp=xp)
    w_ih = _check(w_ih, "w_ih", (GH, I), dtype, xp=xp)
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: give both biases or neither")
    has_bias = b_ih is not None
    b_ih = _check(b_ih, "b_ih", (GH,), dtype, optional=True, xp=xp)
    b_hh = _check(b_hh, "b_hh", (GH,), dtype, optional=True, xp=xp)
    if not has_bias:
        b_ih, b_hh = xp.zeros(GH, dtype), xp.zeros(GH, dtype)
    h0 = xp.zeros((N, S), dtype) if h0 is None else _check(h0, "h0", (N, S), dtype, xp=xp)
    if cell in CELL_STATE:
        c0 = xp.zeros((N, H), dtype) if c0 is None else _check(c0, "c0", (N, H), dtype, xp=xp)
    lengths = check_lengths(lengths, T, N)  # a host array on every backend
    x = _finite_padding(xp, x, lengths)
    return kernels, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, has_bias, w_hr


def _finite_padding(xp, x, lengths):
    """``x``, or a copy whose padded steps (t >= lengths[n]) are 0 where one of them holds NaN
    or inf (padding left uninitialized): the kernels read every step, and a training backward
    multiplies a padded step by its zero gradient, 0 * NaN = NaN, into every weight gradient
    (torch's packed sequences never read padding). Finite padding changes no result: kept."""
    if lengths is None:
        return x
    padded = np.arange(x.shape[0])[:, None] >= lengths[None, :]  # [T, N]
    if not padded.any():
        return x
    padded = xp.asarray(padded)
    with np.errstate(over="ignore", invalid="ignore"):  # (an overflow: a copy it needs not)
        if bool(xp.isfinite(x[padded].sum())):  # (NaN and inf stay in a sum: one number)
            return x
    return xp.where(padded[:, :, None], 0, x)


def _kernel_calls(kernels_and_args, name, cell, nonlinearity):
    """Run kernel calls [(kernels, args)] that do not depend on each other: through
    ``kernels.<name>_many`` (side by side on the thread team where that pays), or one by one on a
    backend without it."""
    if not kernels_and_args:
        return []
    kernels = kernels_and_args[0][0]
    if any(k is not kernels for k, _ in kernels_and_args):
        raise TypeError("x: expected every call's arrays on the same device")
    args = [a for _, a in kernels_and_args]
    many = getattr(kernels, name + "_many", None)
    if many is not None and len(args) > 1:
        return many(cell, nonlinearity, args)
    return [getattr(kernels, name)(cell, nonlinearity, *a) for a in args]


def _prepare_forward(cell, nonlinearity, x, h0=None, c0=None, w_ih=None, w_hh=None, b_ih=None,
                     b_hh=None, lengths=None, reverse=False, training=False, cache=None,
                     precision=None, w_ph=None, w_hr=None, ln=None, eps=1e-5):
    """(kernel module, the kernel's arguments, has_bias) of one checked forward call. ``cache``:
    a fusedrnn._C.WeightCache keeping the packed weights between calls (CPU; the layers' own).
    ``precision``: "float32", "bfloat16" or None (fusedrnn.autocast decides; float64 arrays run in
    float64 either way, as under torch.autocast). ``w_ph``: an LSTM's peepholes [3H] (i, f, o),
    or None. ``w_hr``: an LSTM's projection [P, H], or None."""
    check_nonlinearity(nonlinearity)
    reverse = check_flag(reverse, "reverse")
    training = check_flag(training, "training")
    precision = check_precision(precision)
    kernels, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, has_bias, w_hr = _check_forward(
        cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr)
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training)
    bf16 = bfloat16_products(x.dtype, precision) and not (
        training and variant_trains_in_float32(cell, w_hr is not None, kernels is _C))
    if cell == "layernorm_lstm":
        xp = _backend(x)[0]
        H = c0.shape[1]
        if ln is None:  # gains one, the cell norm's bias zero
            ln = xp.concatenate([xp.ones(9 * H, x.dtype), xp.zeros(H, x.dtype)])
        ln = _check(ln, "ln", (10 * H,), x.dtype, xp=xp)
        return kernels, args + (cache, "bfloat16" if bf16 else None, None, None, ln,
                                layer_norm_eps(eps, x.dtype)), has_bias
    if ln is not None:
        raise ValueError(f"ln: layer-norm parameters belong to the LayerNorm-LSTM, got them for "
                         f"{cell.upper()}")
    if w_ph is not None or w_hr is not None:
        if w_ph is not None and cell != "lstm":
            raise ValueError(f"w_ph: peepholes belong to an LSTM, got them for {cell.upper()}")
        xp = _backend(x)[0]
        H = c0.shape[1]
        if w_ph is not None:
            w_ph = _check(w_ph, "w_ph", (3 * H,), x.dtype, xp=xp)
        return kernels, args + (cache, "bfloat16" if bf16 else None, w_ph, w_hr), has_bias
    if bf16:
        return kernels, args + (cache, "bfloat16"), has_bias
    return kernels, args + ((cache,) if cache is not None else ()), has_bias


def variant_trains_in_float32(cell, projected, on_cpu):
    """Whether a cell variant's training keeps float32 products under autocast. The two-phase
    steps (the reset-before GRU, the projected LSTM) run a bfloat16 forward in training too on
    the CPU, their backward float32 products (its two phases have no bfloat16 form); the
    LayerNorm-LSTM trains in float32 (its norms amplify a bfloat16 forward's rounding into the
    gradients: about 1e-1); on CUDA all three do. False for the plain and peephole cells."""
    two_phase = cell == "gru_reset_before" or projected
    return cell == "layernorm_lstm" or (two_phase and not on_cpu)


def bfloat16_products(dtype, precision=None):
    """Whether a forward call runs its products in bfloat16: asked for (``precision``, else
    fusedrnn.autocast) on a float32 call, CPU or CUDA, inference or training (whose backward
    then runs its products dgates W in bfloat16 too). float64 stays float64 (fusedrnn.amp)."""
    if precision is None:
        precision = autocast_precision()
    return precision == "bfloat16" and dtype == np.float32


# ---------------------------------------------------------------------------- zero-size work
# A call with no step, no sample or no hidden unit (T, N or H zero) has nothing to compute: it
# returns at once, without the kernel (which would still walk T empty steps: T = 10**9 with N = 0
# ran for a minute), with what the kernel and the reference return for it: y zeros [T, N, H],
# the final state the initial one; backward zero gradients, dh0 (dc0) = dh_n (dc_n).
def _no_work(x, w_hh):
    T, N, _ = x.shape
    return T == 0 or N == 0 or w_hh.shape[0] == 0


def _empty_forward(cell, args):
    """The kernel's outputs (y, h_n, c_n, gates, extra, h_prev) of a call with no work."""
    x, h0, c0, _, w_hh = args[:5]
    xp = _backend(x)[0]
    T, N, _ = x.shape
    GH, S = w_hh.shape  # S: the width of h (P with a projection)
    H = GH // GATES[cell]
    dtype = x.dtype
    y = xp.zeros((T, N, S), dtype)
    h_n = h0.copy()
    c_n = c0.copy() if cell in CELL_STATE else None
    gates = xp.zeros((T, N, GH), dtype)
    E = 10 * H + 3 if cell == "layernorm_lstm" else H  # (cells/layernorm_lstm_cell.h)
    extra = xp.zeros((0 if cell == "rnn" else T, N, E), dtype)  # the RNN keeps no extra
    h_prev = xp.zeros((T, N, S), dtype)
    return y, h_n, c_n, gates, extra, h_prev


def _empty_backward(cell, args):
    """The kernel's gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh[, dw_ph][, dw_hr]) of a
    call with no work."""
    x, w_ih, w_hh = args[:3]
    dh_n, dc_n = args[9:11]
    xp = _backend(x)[0]
    GH = w_hh.shape[0]
    w_ph, w_hr, ln = (args[i] if len(args) > i else None for i in (12, 13, 14))
    input_grad, weight_grads = (args[i] if len(args) > i else True
                                for i in (WANTED_AT, WANTED_AT + 1))

    def zeros(shape, wanted=weight_grads):
        return xp.zeros(shape, x.dtype) if wanted else None
    extras = tuple(zeros(a.shape) for a in (w_ph, w_hr, ln) if a is not None)
    return (zeros(x.shape, input_grad), dh_n.copy(),
            dc_n.copy() if cell in CELL_STATE else None,
            zeros(w_ih.shape), zeros(w_hh.shape), zeros(GH), zeros(GH)) + extras


# Where a backward call's arguments say which gradients are wanted: (..., ln, input_grad,
# weight_grads), after the variants' arrays (fusedrnn._C.recurrent_backward_many's calls).
WANTED_AT = 15


def backward_args_wanting(args, input_grad, weight_grads):
    """A backward call's arguments asking for no dx (``input_grad`` False) or no parameter
    gradients (``weight_grads`` False): the CPU kernels skip their work (a quarter to half of
    a backward) and return None for them."""
    if input_grad and weight_grads:
        return args
    return (*args, *(None,) * (WANTED_AT - len(args)), input_grad, weight_grads)


def _run_calls(kernels_and_args, name, cell, nonlinearity, empty):
    """:func:`_kernel_calls`, where the calls with no work get ``empty(cell, args)`` instead,
    and a CPU inference call whose lengths leave much of it padding runs as groups of samples
    (:func:`_length_groups`)."""
    outputs = [None] * len(kernels_and_args)
    work = []
    for i, (kernels, args) in enumerate(kernels_and_args):
        if _no_work(args[0], args[2] if name == "recurrent_backward" else args[4]):
            outputs[i] = empty(cell, args)
            continue
        inference = name == "recurrent_forward" and kernels is _C and not args[9]
        groups = _length_groups(args[7], args[0].shape[0]) if inference else None
        if groups is None:
            work.append(i)
        else:
            outputs[i] = _run_groups(kernels, args, cell, nonlinearity, groups)
    done = _kernel_calls([kernels_and_args[i] for i in work], name, cell, nonlinearity)
    for i, out in zip(work, done):
        outputs[i] = out
    return outputs


# ---------------------------------------------------------------------------- uneven lengths
# The kernels step every sample of a call through every step (a sample past its length only
# carries its state), where torch's packed sequences shrink the batch as samples end: a batch
# of long-tail lengths (most samples short, a few long) costs the whole [T, N]. Such an
# inference call runs as a few calls, each on samples of similar lengths and cut to their
# longest: the same outputs up to rounding (a padded step's are zeros, its inputs read by no
# output either way; a group's batch may take another plan than the whole one's), the two
# directions of a bidirectional layer one after the other. A training call does not: its
# backward's sums over every step, padding included, give NaN where the padding holds NaN or
# inf, as the reference's do (tests/test_fuzz.py). A group's
# step is estimated to cost its samples plus GROUP_STEP_SAMPLES samples' worth (the weights
# streamed, the threads meeting, whatever the batch), a call CALL_SAMPLE_STEPS more; the
# groups (at most MAX_LENGTH_GROUPS) must save MIN_GROUP_SAVING of one call's estimate.
GROUP_STEP_SAMPLES = 4
CALL_SAMPLE_STEPS = 64
MAX_LENGTH_GROUPS = 4
MIN_GROUP_SAVING = 0.25


def _length_groups(lengths, T):
    """[(samples, steps)] (samples: indices, or a slice) of a call whose lengths leave at least
    MIN_GROUP_SAVING of it padding: groups of samples of similar lengths, or the whole batch cut
    to its longest length; else None."""
    if lengths is None or lengths.ndim != 1 or not lengths.size or lengths.min() < 0 or \
            lengths.max() > T:
        return None  # (none, or lengths the kernel refuses by name)
    N = lengths.shape[0]
    order = np.argsort(-lengths, kind="stable")
    L = lengths[order]
    cut = [(slice(None), int(L[0]))] if L[0] <= (1 - MIN_GROUP_SAVING) * T else None
    if N < 2 * GROUP_STEP_SAMPLES:
        return cut
    # groups end at up to 64 evenly spaced places of the sorted lengths; best[j]: the least
    # estimate of groups over sorted samples [0, ends[j]), from[k][j] where the last began
    ends = np.unique(np.round(np.arange(65) * N / 64).astype(np.int64))
    longest = L[np.minimum(ends, N - 1)].astype(np.float64)  # of a group starting there
    # cost[i, j]: one group of sorted samples [ends[i], ends[j]) (i < j)
    cost = longest[:, None] * (ends[None, :] - ends[:, None] + GROUP_STEP_SAMPLES) + \
        CALL_SAMPLE_STEPS
    cost[np.tril_indices(len(ends))] = np.inf
    best = np.full(len(ends), np.inf)
    best[0] = 0.0
    froms, totals = [], []
    for _ in range(MAX_LENGTH_GROUPS):
        options = best[:, None] + cost
        froms.append(np.argmin(options, axis=0))
        best = options.min(axis=0)
        totals.append(best[-1])
    k = int(np.argmin(totals))
    one = L[0] * (N + GROUP_STEP_SAMPLES) + CALL_SAMPLE_STEPS
    if k == 0 or totals[k] > (1 - MIN_GROUP_SAVING) * one:  # (one group: cut, or as it is)
        return cut
    bounds, j = [], len(ends) - 1
    for step in range(k, -1, -1):
        i = froms[step][j]
        bounds.append((ends[i], ends[j]))
        j = i
    return [(order[a:b], int(L[a])) for a, b in reversed(bounds)]


def _run_groups(kernels, args, cell, nonlinearity, groups):
    """An inference forward's (y, h_n, c_n, None, None, None) from a call per group of samples
    (:func:`_length_groups`), each on its samples' rows of x, h0, c0 and lengths, cut to its
    steps; y zero past them, as a padded step's output. The groups must cover the batch."""
    x, h0, c0 = args[0], args[1], args[2]
    T, N = x.shape[:2]
    y = np.zeros((T, N, args[4].shape[1]), x.dtype)
    h_n = np.empty_like(h0)
    c_n = None if c0 is None else np.empty_like(c0)
    for idx, steps in groups:  # one after another, each on the whole team
        group = list(args)
        group[0] = np.ascontiguousarray(x[:steps][:, idx])
        for k in (1, 2, 7):
            group[k] = None if args[k] is None else np.ascontiguousarray(args[k][idx])
        if steps == 0:  # (no work: the states pass)
            h_n[idx], c_n_g = group[1], group[2]
        else:
            out = kernels.recurrent_forward(cell, nonlinearity, *group)
            y[:steps, idx], h_n[idx], c_n_g = out[0], out[1], out[2]
        if c_n is not None:
            c_n[idx] = c_n_g
    return y, h_n, c_n, None, None, None


def _forward_result(cell, nonlinearity, args, has_bias, outputs):
    """(y, h_n, c_n, ctx) from a forward kernel's outputs."""
    y, h_n, c_n, gates, extra, h_prev = outputs
    x, _, _, w_ih, w_hh, _, _, lengths, reverse, training = args[:10]
    ctx = None
    if training:
        precision = args[11] if len(args) > 11 else None
        # (lengths copied: N integers, so that the caller may reuse its array before the
        # backward; x, too large to copy, is kept as given)
        ctx = RecurrentContext(cell, nonlinearity, reverse, x, w_ih, w_hh,
                               None if lengths is None else lengths.copy(),
                               gates, extra, h_prev, has_bias, precision=precision,
                               w_ph=args[12] if len(args) > 12 else None,
                               w_hr=args[13] if len(args) > 13 else None,
                               ln=args[14] if len(args) > 14 else None)
    return y, h_n, c_n, ctx


def _forward_many(cell, calls, nonlinearity="tanh"):
    """Independent forward calls of one cell (the directions of a bidirectional layer), each a dict
    of the forward's keyword arguments (x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
    training): one ``(y, h_n, c_n, ctx)`` per call, as one call would return it. Where they gain
    from it the kernels run side by side, one thread each."""
    prepared = [_prepare_forward(cell, nonlinearity, **c) for c in calls]
    outputs = _run_calls([(k, a) for k, a, _ in prepared], "recurrent_forward", cell,
                         nonlinearity, _empty_forward)
    return [_forward_result(cell, nonlinearity, args, has_bias, out)
            for (_, args, has_bias), out in zip(prepared, outputs)]


def _forward_stack(cell, calls, nonlinearity="tanh"):
    """The layers of a unidirectional stack: calls as for :func:`_forward_many` (reverse False),
    ``x`` in the first only: each next layer reads the previous layer's y. Where the layers gain
    from it (two layers on two threads, small batch, W_hh within a core's cache) each runs on a
    thread of its own, a few steps behind the layer below (a wavefront)."""
    def layer_after_layer():
        results = []
        for c in calls:
            c = dict(c, x=results[-1][0]) if results else c
            results.extend(_forward_many(cell, [c], nonlinearity))
        return results

    _, kernels = _backend(calls[0]["x"])
    stack = getattr(kernels, "recurrent_forward_stack", None)
    if stack is None:  # a backend without it
        return layer_after_layer()
    prepared = []
    for c in calls:
        if prepared:  # the input is not computed yet: a stand-in of its shape for the checks
            x0, w_hh = prepared[0][1][0], prepared[-1][1][4]
            c = dict(c, x=np.empty(x0.shape[:2] + (w_hh.shape[1],), x0.dtype))
        prepared.append(_prepare_forward(cell, nonlinearity, **c))
    if any(_no_work(a[0], a[4]) for _, a, _ in prepared):  # a layer with nothing to compute
        return layer_after_layer()
    outputs = stack(cell, nonlinearity,
                    [a if i == 0 else (None,) + a[1:] for i, (_, a, _) in enumerate(prepared)])
    results = []
    for i, ((_, args, has_bias), out) in enumerate(zip(prepared, outputs)):
        if i > 0:
            args = (outputs[i - 1][0],) + args[1:]
        results.append(_forward_result(cell, nonlinearity, args, has_bias, out))
    return results


def _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training, nonlinearity,
             precision=None, w_ph=None, w_hr=None):
    return _forward_many(cell, [dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                                     b_hh=b_hh, lengths=lengths, reverse=reverse,
                                     training=training, precision=precision, w_ph=w_ph,
                                     w_hr=w_hr)],
                         nonlinearity)[0]


def _backward_many(cell, calls, input_grad=True, weight_grads=True):
    """Independent backward calls of one cell, each a tuple ``(ctx, dy, dh_n, dc_n)``: one
    ``(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)`` per call (see :func:`_forward_many`); dx
    None unless ``input_grad``, the parameters' gradients None unless ``weight_grads``."""
    prepared = []
    for ctx, dy, dh_n, dc_n in calls:
        if not isinstance(ctx, RecurrentContext):
            raise TypeError(f"ctx: expected the context of a training-mode forward "
                            f"(training=True), got {type(ctx).__name__}")
        if ctx.cell != cell:
            raise ValueError(f"ctx: expected a context from {cell}_forward, got one from "
                             f"{ctx.cell}_forward")
        xp, kernels = _backend(ctx.x)
        T, N, _ = ctx.x.shape
        S = ctx.w_hh.shape[1]  # the width of h (P with a projection)
        H = ctx.w_hh.shape[0] // GATES[cell]
        dtype = ctx.x.dtype
        dy = xp.zeros((T, N, S), dtype) if dy is None else _check(dy, "dy", (T, N, S), dtype, xp=xp)
        dh_n = (xp.zeros((N, S), dtype) if dh_n is None
                else _check(dh_n, "dh_n", (N, S), dtype, xp=xp))
        if cell in CELL_STATE:
            dc_n = (xp.zeros((N, H), dtype) if dc_n is None
                    else _check(dc_n, "dc_n", (N, H), dtype, xp=xp))
        args = (ctx.x, ctx.w_ih, ctx.w_hh, ctx.lengths, ctx.reverse, ctx.gates, ctx.extra,
                ctx.h_prev, dy, dh_n, dc_n)
        # the backward's products in the forward's precision (fusedrnn.amp), but for the
        # variants' (float32: see _prepare_forward)
        if ctx.ln is not None:
            args += (None, None, None, ctx.ln)
        elif ctx.w_hr is not None:
            args += (None, ctx.w_ph, ctx.w_hr)
        elif ctx.w_ph is not None:
            args += (ctx.precision, ctx.w_ph)
        elif ctx.precision == "bfloat16" and cell != "gru_reset_before":
            args += ("bfloat16",)
        prepared.append((kernels, backward_args_wanting(args, input_grad, weight_grads), ctx))
    nonlinearity = calls[0][0].nonlinearity if calls else "tanh"
    if any(ctx.nonlinearity != nonlinearity for _, _, ctx in prepared):
        raise ValueError("ctx: expected contexts of one nonlinearity")
    outputs = _run_calls([(k, a) for k, a, _ in prepared], "recurrent_backward", cell,
                         nonlinearity, _empty_backward)
    results = []
    for (_, _, ctx), (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, *more) in zip(prepared, outputs):
        if not ctx.has_bias:
            db_ih = db_hh = None
        results.append((dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, *more))  # [dw_ph][, dw_hr][, dln]
    return results


def _backward(cell, ctx, dy, dh_n, dc_n, input_grad=True, weight_grads=True):
    input_grad = check_flag(input_grad, "input_grad")
    weight_grads = check_flag(weight_grads, "weight_grads")
    return _backward_many(cell, [(ctx, dy, dh_n, dc_n)], input_grad, weight_grads)[0]


# ---------------------------------------------------------------------------- the kernels
def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False,
                 training=False, precision=None, w_ph=None, w_hr=None):
    """LSTM over a sequence. Returns ``(y, h_n, c_n, ctx)``; h0/c0 may be None (zeros).
    ``precision="bfloat16"``: float32 with bfloat16 products (as under fusedrnn.autocast; None:
    autocast decides; float64 arrays stay float64), the backward's too. ``w_ph``: peepholes [3H]
    in the order i, f, o (ONNX's LSTM with P, reordered): i and f see c_{t-1}, o sees c_t;
    None: PyTorch's LSTM.
    ``w_hr``: a projection [P, H] (torch's proj_size P < H): h = W_hr (o * tanh(c)), so h0, h_n,
    y are P wide and w_hh is [4H, P] (c stays H wide); with it, bfloat16 products in the
    forward only (the backward keeps float32 ones; on CUDA training keeps them too)."""
    return _forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training, "tanh",
                    precision, w_ph, w_hr)


def lstm_backward(ctx, dy, dh_n=None, dc_n=None, *, input_grad=True, weight_grads=True):
    """BPTT for :func:`lstm_forward`. Returns ``(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)``,
    then ``dw_ph`` where the forward had peepholes and ``dw_hr`` where it had a projection.
    ``input_grad=False``: dx is None, and not computed (the input is data); ``weight_grads=
    False``: every parameter's gradient is None, and not computed (a frozen layer): on the
    CPU each saves a quarter to half of the backward's work."""
    return _backward("lstm", ctx, dy, dh_n, dc_n, input_grad, weight_grads)


def layernorm_lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, ln=None, *, eps=1e-5,
                           lengths=None, reverse=False, training=False, precision=None):
    """LayerNorm-LSTM over a sequence (haste's LayerNormLSTM in PyTorch's gate order): layer norm
    on the input and the recurrent pre-activations and on the cell state, fused in the step:
        a  = g_ih * LN(W_ih x) + b_ih + g_hh * LN(W_hh h) + b_hh
        c' = f * c + i * g          h' = o * tanh(g_c * LN(c') + b_c)
    ``ln`` [10H]: g_ih [4H], g_hh [4H], g_c [H], b_c [H] (None: gains one, b_c zero); ``eps``
    inside the norms' square roots. Returns ``(y, h_n, c_n, ctx)``. CPU, and CUDA (stepwise).
    ``precision``: as lstm_forward's, for inference (training keeps float32 products, under
    autocast too: the norms would amplify a bfloat16 forward's rounding into the gradients)."""
    return _forward_many("layernorm_lstm", [dict(
        x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, lengths=lengths,
        reverse=reverse, training=training, ln=ln, eps=eps, precision=precision)])[0]


def layernorm_lstm_backward(ctx, dy, dh_n=None, dc_n=None, *, input_grad=True,
                            weight_grads=True):
    """BPTT for :func:`layernorm_lstm_forward`. Returns ``(dx, dh0, dc0, dw_ih, dw_hh, db_ih,
    db_hh, dln)``, dln [10H] in ln's order. ``input_grad``, ``weight_grads``: as
    :func:`lstm_backward`'s."""
    return _backward("layernorm_lstm", ctx, dy, dh_n, dc_n, input_grad, weight_grads)


def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False,
                training=False, precision=None, reset_after=True):
    """GRU over a sequence. Returns ``(y, h_n, ctx)``. ``precision``: as lstm_forward's.
    ``reset_after=False``: the reset gate before the product, n = tanh(W_in x + b_in +
    W_hn (r * h) + b_hn) (Keras' reset_after=False, ONNX's linear_before_reset=0; CUDA runs it
    stepwise; bfloat16 products in the forward only, as a projected LSTM's); True: PyTorch's
    GRU."""
    y, h_n, _, ctx = _forward(gru_kernel(reset_after), x, h0, None, w_ih, w_hh, b_ih, b_hh,
                              lengths, reverse, training, "tanh", precision)
    return y, h_n, ctx


def gru_backward(ctx, dy, dh_n=None, *, input_grad=True, weight_grads=True):
    """BPTT for :func:`gru_forward`. Returns ``(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)``.
    ``input_grad``, ``weight_grads``: as :func:`lstm_backward`'s."""
    cell = "gru_reset_before" if getattr(ctx, "cell", None) == "gru_reset_before" else "gru"
    dx, dh0, _, dw_ih, dw_hh, db_ih, db_hh = _backward(cell, ctx, dy, dh_n, None, input_grad,
                                                       weight_grads)
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


def rnn_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None,
                reverse=False, training=False, precision=None):
    """Elman RNN (tanh or relu) over a sequence. Returns ``(y, h_n, ctx)``. ``precision``: as
    lstm_forward's."""
    y, h_n, _, ctx = _forward("rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                              training, nonlinearity, precision)
    return y, h_n, ctx


def rnn_backward(ctx, dy, dh_n=None, *, input_grad=True, weight_grads=True):
    """BPTT for :func:`rnn_forward`. Returns ``(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)``.
    ``input_grad``, ``weight_grads``: as :func:`lstm_backward`'s."""
    dx, dh0, _, dw_ih, dw_hh, db_ih, db_hh = _backward("rnn", ctx, dy, dh_n, None, input_grad,
                                                       weight_grads)
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh
