"""Property-based fuzzing (hypothesis) of everything a user hands arrays or files to: the
functional kernels, the layers, the cells, attention and ``fr.load``.

The contract every property holds them to: a call either returns the right result (outputs and
every gradient equal to the NumPy float64 reference within the kernel-vs-reference tolerance of
conftest's table, float32 within the float32 one) or raises TypeError/ValueError whose message
starts with the argument's name (``fr.load``: names the file); never another exception, never a
hang (a watchdog ends a stuck run with every thread's traceback), never a crash. Shapes include
zeros (T, N, I, H = 0), both dtypes, non-contiguous and read-only arrays, non-finite values (NaN
and inf stay in their own sample: results are non-finite where the reference's are, and every
other sample gets bit for bit what it gets without them), and wrong arguments of every kind.
Kernel defects the suite found are properties of their own, with their smallest reproducers
as explicit examples (a defect waiting for its fix is marked xfail(strict=True) until it lands).

Arrays are filled from a drawn seed, not drawn element by element: examples stay cheap and a
failure prints a short case that replays it. Every run tries the same examples (derandomize);
FUSEDRNN_FUZZ_EXAMPLES=<n> raises every property's number of examples to n.
"""
from __future__ import annotations

import faulthandler
import io
import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fusedrnn as fr
from conftest import CELLS, GATES, TOLERANCES, cell_backward, cell_forward, reference
from fusedrnn import functional as F
from fusedrnn import nn
from fusedrnn.nn.attention import attention_step_forward
from fusedrnn.reference import attention as reference_attention

EXAMPLES_FROM_ENV = int(os.environ.get("FUSEDRNN_FUZZ_EXAMPLES", "0"))


def fuzz(max_examples, **more):
    """The settings of one property: ``max_examples`` (FUSEDRNN_FUZZ_EXAMPLES raises it); the
    same examples on every run; no deadline (the first call starts the thread team and the
    references walk every step in Python: time says nothing here); no example database (nothing
    is written into the working tree)."""
    return settings(max_examples=max(max_examples, EXAMPLES_FROM_ENV), derandomize=True,
                    deadline=None, database=None, **more)


@pytest.fixture(autouse=True)
def watchdog():
    """A property that stops making progress (a deadlock in the thread team, an endless loop)
    ends the run with every thread's traceback instead of hanging CI."""
    faulthandler.dump_traceback_later(120 + 2 * EXAMPLES_FROM_ENV, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    """One folder for the files of every example (module scope: hypothesis runs many examples
    per test function, so a function-scoped tmp_path would be shared by them anyway)."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------- shared helpers
LAYOUTS = ("contiguous", "transposed", "strided", "reversed", "readonly")
NON_FINITE = (math.nan, math.inf, -math.inf)


def in_layout(a, layout):
    """The values of ``a`` in a new array of another memory layout: a non-contiguous view
    (axes swapped, every other element of a wider buffer, negative strides) or a read-only
    copy. Zero-size and 0-d arrays stay plain copies."""
    if layout == "transposed" and a.ndim >= 2:
        return np.swapaxes(np.swapaxes(a, 0, -1).copy(), 0, -1)
    if layout == "strided" and a.ndim >= 1:
        buffer = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        buffer[..., ::2] = a
        return buffer[..., ::2]
    if layout == "reversed" and a.ndim >= 1:
        return np.flip(np.flip(a, 0).copy(), 0)
    copy = a.copy()
    copy.flags.writeable = layout != "readonly"
    return copy


def float64(arrays):
    return {k: None if v is None else np.asarray(v, np.float64) for k, v in arrays.items()}


def tolerance(dtype):
    return TOLERANCES["kernel_vs_reference"][np.dtype(dtype).type]


def assert_like_reference(name, ours, expected, dtype, exact_pattern=True, floor=0.0):
    """``ours`` has the reference's shape and the call's dtype, NaN, +inf and -inf exactly where
    the reference has them (only its finite entries where not ``exact_pattern``), and its finite
    rest within the tolerance, norm-wise (relative to ``floor`` at least)."""
    assert (ours is None) == (expected is None), (name, ours, expected)
    if expected is None:
        return
    assert ours.shape == expected.shape, (name, ours.shape, expected.shape)
    assert ours.dtype == np.dtype(dtype), (name, ours.dtype)
    for where in (np.isnan, np.isposinf, np.isneginf) if exact_pattern else (np.isfinite,):
        differ = where(ours) != where(expected)
        assert not differ.any(), (f"{name}: {where.__name__} differs from the reference at "
                                  f"{np.argwhere(differ)[:4].tolist()}")
    finite = np.isfinite(expected)
    mine, theirs = ours[finite].astype(np.float64), expected[finite]
    scale = max(np.linalg.norm(mine), np.linalg.norm(theirs), floor)
    error = 0.0 if scale == 0 else float(np.linalg.norm(mine - theirs) / scale)
    assert error <= tolerance(dtype), f"{name}: relative error {error:.3g} against the reference"


def group_scale(arrays):
    """The norm of the finite values of ``arrays`` (None skipped) taken together: the scale a
    group of results (every parameter's gradient, every step's) is compared at, norm-wise, as
    one vector. Alone, an entry that is a small sum of larger terms is only as accurate as the
    terms' rounding allows, and torch's float32 is no better (found with
    FUSEDRNN_FUZZ_EXAMPLES=400 and 2000): a bidirectional RNN's 1x1 reverse W_hh gradient,
    -0.00066 from terms near 1, 2.4e-4 off alone (torch's 4.0e-4); a GRU cell's dx of 0.0018
    from terms near 0.3, 1.2e-5 off alone (torch's 1.3e-5)."""
    squares = [np.sum(np.square(a[np.isfinite(a)].astype(np.float64)))
               for a in arrays if a is not None]
    return float(np.sqrt(np.sum(squares))) if squares else 0.0


def assert_raises_named(names, call):
    """``call()`` raises TypeError or ValueError whose message starts with one of ``names``;
    any other exception propagates and fails the property."""
    with pytest.raises((TypeError, ValueError)) as raised:
        call()
    message = str(raised.value)
    assert message.startswith(tuple(names)), (names, type(raised.value).__name__, message)


def lengths_strategy(T, N):
    return st.none() | st.lists(st.integers(0, T), min_size=N, max_size=N).map(tuple)


# ---------------------------------------------------------------------------- functional kernels
OPTIONAL_ARRAYS = ("h0", "c0", "dy", "dh_n", "dc_n")
WEIGHTS = ("w_ih", "w_hh", "b_ih", "b_hh")
KERNEL_ARRAYS = ("x",) + OPTIONAL_ARRAYS + WEIGHTS
SAMPLE_AXIS = {"x": 1, "dy": 1, "y": 1, "dx": 1,  # which axis holds the samples
               "h0": 0, "c0": 0, "dh_n": 0, "dc_n": 0, "h_n": 0, "c_n": 0, "dh0": 0, "dc0": 0}


@dataclass(frozen=True)
class KernelCase:
    """One functional forward (training mode) and backward call. Its arrays come from ``seed``;
    ``given`` names the optional ones passed (the others are None), ``layouts`` the memory
    layout of those not passed C-contiguous; ``lengths_as`` is how lengths are passed (an
    integer dtype, or a list of ints)."""

    name: str  # a key of conftest.CELLS
    dtype: str
    T: int
    N: int
    I: int
    H: int
    bias: bool
    given: tuple
    lengths: tuple | None
    lengths_as: str
    reverse: bool
    layouts: tuple
    seed: int

    @property
    def cell(self):
        return CELLS[self.name][0]

    @property
    def nonlinearity(self):
        return CELLS[self.name][1]

    def all_arrays(self):
        """Every array the call can take, C-contiguous, in the case's dtype."""
        rng = np.random.default_rng(self.seed)
        T, N, I, H, G = self.T, self.N, self.I, self.H, GATES[self.cell]
        bound = 1 / math.sqrt(max(H, 1))
        arrays = dict(x=rng.standard_normal((T, N, I)), h0=rng.standard_normal((N, H)),
                      c0=rng.standard_normal((N, H)), dy=rng.standard_normal((T, N, H)),
                      dh_n=rng.standard_normal((N, H)), dc_n=rng.standard_normal((N, H)),
                      w_ih=rng.uniform(-bound, bound, (G * H, I)),
                      w_hh=rng.uniform(-bound, bound, (G * H, H)),
                      b_ih=rng.uniform(-bound, bound, G * H), b_hh=rng.uniform(-bound, bound, G * H))
        return {k: v.astype(self.dtype) for k, v in arrays.items()}

    def arrays(self):
        """The arrays of this call: None where not given (or not the cell's)."""
        arrays = self.all_arrays()
        for name in OPTIONAL_ARRAYS:
            if name not in self.given or (name in ("c0", "dc_n") and self.cell != "lstm"):
                arrays[name] = None
        if not self.bias:
            arrays["b_ih"] = arrays["b_hh"] = None
        return arrays

    def lengths_argument(self):
        if self.lengths is None:
            return None
        if self.lengths_as == "list":
            return list(self.lengths)
        return np.array(self.lengths, dtype=self.lengths_as)

    def passed(self, arrays):
        """``arrays`` as the call gets them: each in its layout."""
        layouts = dict(self.layouts)
        return {k: None if v is None else in_layout(v, layouts.get(k, "contiguous"))
                for k, v in arrays.items()}


@st.composite
def kernel_cases(draw, max_T=6, dtypes=("float64", "float32")):
    """Mostly tiny calls, zeros included; now and then sizes that take the drivers' other paths
    (a batch split between threads, H a multiple of the SIMD width, H over one block)."""
    T = draw(st.integers(0, max_T))
    N = draw(st.integers(0, 5) | st.sampled_from([9, 17]))
    I = draw(st.integers(0, 5) | st.just(13))
    H = draw(st.integers(0, 6) | st.sampled_from([16, 33, 64, 131]))
    return KernelCase(
        name=draw(st.sampled_from(sorted(CELLS))), dtype=draw(st.sampled_from(dtypes)),
        T=T, N=N, I=I, H=H, bias=draw(st.booleans()),
        given=tuple(sorted(draw(st.sets(st.sampled_from(OPTIONAL_ARRAYS))))),
        lengths=draw(lengths_strategy(T, N)),
        lengths_as=draw(st.sampled_from(["int64", "int32", "uint8", "list"])),
        reverse=draw(st.booleans()),
        layouts=tuple(draw(st.lists(st.tuples(st.sampled_from(KERNEL_ARRAYS),
                                              st.sampled_from(LAYOUTS[1:])),
                                    max_size=3, unique_by=lambda pair: pair[0]))),
        seed=draw(st.integers(0, 2 ** 32 - 1)))


def run_kernel(module, case, arrays, training=True):
    """Forward then backward through ``module`` (fusedrnn.functional or the reference): a dict
    of every output and gradient (only the forward's outputs unless ``training``)."""
    a = arrays
    lengths = case.lengths_argument()
    if module is reference and lengths is not None:  # the oracle takes integer arrays only
        lengths = np.array(lengths, np.int64)
    y, h_n, c_n, ctx = cell_forward(module, case.cell, case.nonlinearity, a["x"], a["h0"], a["c0"],
                                    a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], lengths=lengths,
                                    reverse=case.reverse, training=training)
    results = dict(y=y, h_n=h_n, c_n=c_n)
    if training:
        results.update(cell_backward(module, case.cell, ctx, a["dy"], a["dh_n"], a["dc_n"]))
    else:
        assert ctx is None
    return results


def run_reference(case, arrays, training=True):
    with np.errstate(all="ignore"):  # NaN and inf are inputs here, not accidents
        return run_kernel(reference, case, float64(arrays), training)


def sample_slice(name, array, n):
    return array[:, n] if SAMPLE_AXIS[name] == 1 else array[n]


@fuzz(120)
@given(case=kernel_cases())
def test_kernel_matches_reference(case):
    """Outputs and every gradient, in both modes, equal the reference; the inputs are neither
    changed nor shared with any output."""
    arrays = case.arrays()
    passed = case.passed(arrays)
    ours = run_kernel(F, case, passed)
    oracle = run_reference(case, arrays)
    for name, expected in oracle.items():
        assert_like_reference(name, ours[name], expected, case.dtype)
    inference = run_kernel(F, case, passed, training=False)
    for name, value in inference.items():
        assert_like_reference(f"{name} (inference)", value, oracle[name], case.dtype)
    for name, value in passed.items():
        if value is not None:
            assert np.array_equal(value, arrays[name]), f"the call changed its input {name}"
            assert not any(out is not None and np.may_share_memory(out, value)
                           for out in ours.values()), f"an output shares memory with {name}"


def poisoned(arrays, poison):
    """``arrays`` with the non-finite values of ``poison`` [(name, flat index, value)] written
    in (an index past a zero-size or absent array is dropped)."""
    arrays = dict(arrays)
    for name, index, value in poison:
        if arrays[name] is not None and arrays[name].size:
            arrays[name] = arrays[name].copy()
            arrays[name].flat[index % arrays[name].size] = value
    return arrays


def poisons(names):
    return st.lists(st.tuples(st.sampled_from(names), st.integers(0, 2 ** 16),
                              st.sampled_from(NON_FINITE)), min_size=1, max_size=4).map(tuple)


def assert_non_finite_like_reference(case, ours, oracle):
    """Every output and gradient has NaN, +inf and -inf exactly where the reference's has them
    (float32 too: its gate math saturates to exactly 0 and 1 as the reference does), its
    finite values the reference's."""
    for name, expected in oracle.items():
        assert_like_reference(name, ours[name], expected, case.dtype)


# An infinite c0 in an LSTM without peepholes: the float64 reference added zero peephole terms,
# 0 * inf = NaN in its gates, where the kernels (and torch) have no such term and get c = inf,
# h = o finite; fixed in the reference (found with FUSEDRNN_FUZZ_EXAMPLES=400).
@fuzz(80)
@example(case=KernelCase(name="lstm", dtype="float64", T=1, N=1, I=0, H=1, bias=False,
                         given=("c0", "h0"), lengths=None, lengths_as="int64", reverse=False,
                         layouts=(), seed=0),
         poison=(("c0", 0, math.inf),))
@given(case=kernel_cases(), poison=poisons(("x",) + OPTIONAL_ARRAYS))
def test_non_finite_data_stays_in_its_sample(case, poison):
    """NaN or inf in inputs, initial states or output gradients (padding included): outputs
    and gradients like the reference's (above), and every sample whose own data is finite gets,
    bit for bit, what it gets without them."""
    clean = case.arrays()
    arrays = poisoned(clean, poison)
    ours = run_kernel(F, case, case.passed(arrays))
    assert_non_finite_like_reference(case, ours, run_reference(case, arrays))
    unpoisoned = run_kernel(F, case, case.passed(clean))
    dirty = set()
    for name in ("x",) + OPTIONAL_ARRAYS:
        if arrays[name] is not None:
            bad = ~np.isfinite(arrays[name])
            dirty |= set(np.nonzero(bad.any(axis=tuple(i for i in range(bad.ndim)
                                                        if i != SAMPLE_AXIS[name])))[0].tolist())
    for n in sorted(set(range(case.N)) - dirty):
        for name, value in ours.items():
            if name in SAMPLE_AXIS and value is not None:
                assert np.array_equal(sample_slice(name, value, n),
                                      sample_slice(name, unpoisoned[name], n)), \
                    f"{name}: another sample's NaN/inf changed clean sample {n}"


# Issue 19: with NaN or inf in W_hh, a sample of length 0 got dh0 = NaN where it must get
# exactly dh_n (its zero gradient times the weights: 0 * inf), and more gradients turned NaN
# where the reference has inf or a finite value; fixed in the C++ backward (commit f31046a).
# The example is the smallest reproducer it had.
@fuzz(60)
@example(case=KernelCase(name="rnn_tanh", dtype="float64", T=1, N=1, I=1, H=1, bias=False,
                         given=("dh_n",), lengths=(0,), lengths_as="int64", reverse=False,
                         layouts=(), seed=0),
         poison=(("w_hh", 0, math.inf),))
@given(case=kernel_cases(), poison=poisons(WEIGHTS))
def test_non_finite_weights_match_reference(case, poison):
    """NaN or inf in the weights: outputs and gradients like the reference's (above), and a
    sample of length 0 is untouched, exactly: y zero, its final state its initial one, its
    initial state's gradient its final state's."""
    arrays = poisoned(case.arrays(), poison)
    ours = run_kernel(F, case, case.passed(arrays))
    for n in range(case.N):
        if case.lengths is not None and case.lengths[n] == 0:
            assert not ours["y"][:, n].any()
            for output, given_as in (("h_n", "h0"), ("c_n", "c0"), ("dh0", "dh_n"),
                                     ("dc0", "dc_n")):
                if ours[output] is not None:
                    passed_in = arrays[given_as]
                    expected = passed_in[n] if passed_in is not None else 0
                    assert np.array_equal(ours[output][n],
                                          np.zeros_like(ours[output][n]) + expected), \
                        f"{output} of sample {n} (length 0): {ours[output][n]}"
    assert_non_finite_like_reference(case, ours, run_reference(case, arrays))


# A kernel defect this suite found (fixed in csrc/cpu/simd_math.inc): the float32 SIMD sigmoid
# (H a multiple of 16) clamped its input, so sigmoid(x) was 1.8e-35 for every x <= -80, -inf
# included, where it is 0 in the reference and in torch; a gate saturated by an infinite
# pre-activation then passed a gradient of ~1e-35 instead of exactly 0, and a weight gradient
# got 1e-35 * inf = inf where the reference has 0 * inf = NaN. The example is the smallest
# reproducer found (an LSTM whose gates see +-inf).
@fuzz(30)
@example(case=KernelCase(name="lstm", dtype="float32", T=1, N=1, I=1, H=16, bias=False,
                         given=("dy",), lengths=None, lengths_as="int64", reverse=False,
                         layouts=(), seed=0),
         poison=(("x", 0, math.inf),))
@given(case=kernel_cases(dtypes=("float32",)), poison=poisons(KERNEL_ARRAYS))
def test_non_finite_float32_matches_reference_exactly(case, poison):
    """float32 as float64: NaN, +inf and -inf each exactly where the reference has them, and
    the gradients of saturated gates exactly 0."""
    arrays = poisoned(case.arrays(), poison)
    ours = run_kernel(F, case, case.passed(arrays))
    for name, expected in run_reference(case, arrays).items():
        assert_like_reference(name, ours[name], expected, case.dtype)


# ---------------------------------------------------------------------------- bad kernel arguments
NOT_ARRAYS = ("list", "tuple", "str", "int", "float", "dict", "object", "numpy scalar")
BAD_DTYPES = ("float32", "float64", "int32", "int64", "uint8", "float16", "complex128", "bool",
              "object", ">f8", ">f4", "<U3")


def not_an_array(kind, valid_shape):
    return {"list": lambda: np.zeros(valid_shape).tolist(),
            "tuple": lambda: tuple(np.zeros(valid_shape).tolist()),
            "str": lambda: "abc", "int": lambda: 3, "float": lambda: 1.5,
            "dict": lambda: {"a": 1}, "object": object,
            "numpy scalar": lambda: np.float64(1.0)}[kind]()


def shapes(max_ndim=4):
    return st.lists(st.integers(0, 6), max_size=max_ndim).map(tuple)


def array_corruptions(name, case):
    """How the array argument ``name`` of ``case`` can be wrong (the call must then name it).
    x and w_hh define T, N, I and H: any other 3-d x or any (G*k, k) w_hh would blame another
    argument, so they are wrong only in ways that concern them alone."""
    valid = case.all_arrays()[name]
    G = GATES[case.cell]
    dtypes = [d for d in BAD_DTYPES if np.dtype(d) != np.dtype(case.dtype)]
    if name == "x":
        dtypes = [d for d in dtypes if d not in ("float32", "float64")]
        wrong_shape = shapes().filter(lambda s: len(s) != 3)
    elif name == "w_hh":
        wrong_shape = shapes().filter(lambda s: len(s) != 2 or s[0] != G * s[1])
    else:
        wrong_shape = shapes().filter(lambda s: s != valid.shape)
    options = [st.tuples(st.just("type"), st.sampled_from(NOT_ARRAYS)),
               st.tuples(st.just("dtype"), st.sampled_from(dtypes)),
               st.tuples(st.just("shape"), wrong_shape)]
    if name in ("x", "w_ih", "w_hh"):
        options.append(st.just(("none", None)))
    if name in ("b_ih", "b_hh") and case.bias:
        options.append(st.just(("none", None)))
    return st.one_of(options)


LENGTHS_CORRUPTIONS = ("negative", "too long", "count", "float", "bool", "2-d", "ragged",
                       "none inside", "huge", "str", "dict", "object")
FLAG_CORRUPTIONS = (2, -1, None, "yes", 1.0, "numpy bool array", "numpy 0-d array")


def bad_lengths(kind, T, N):
    """A lengths argument that is wrong in the way ``kind`` says, for T steps and N samples."""
    ok = [min(1, T)] * N
    if kind in ("negative", "too long") and N == 0:
        kind = "count"
    if kind == "negative":
        return np.array(ok[:-1] + [-1])
    if kind == "too long":
        return np.array([T + 1] + ok[1:])
    return {"count": lambda: np.array(ok + [0]), "float": lambda: np.array(ok, dtype=float),
            "bool": lambda: np.ones(N, bool), "2-d": lambda: np.array([ok]).T,
            "ragged": lambda: [0, [1]] + ok, "none inside": lambda: [None] + ok,
            "huge": lambda: [2 ** 70] + ok, "str": lambda: "abc", "dict": lambda: {"a": 1},
            "object": lambda: np.array([{"a": 1}] * max(N, 1), dtype=object)}[kind]()


def bad_flag(kind):
    if kind == "numpy bool array":
        return np.array([True, False])
    if kind == "numpy 0-d array":
        return np.array(True)
    return kind


def corrupt(corruption, valid_shape, dtype):
    """The bad value a corruption ("type", "dtype", "shape" or "none", detail) stands for."""
    kind, detail = corruption
    if kind == "type":
        return not_an_array(detail, valid_shape)
    if kind == "dtype":
        return np.zeros(valid_shape, detail)
    if kind == "shape":
        return np.zeros(detail, dtype)
    return None


@st.composite
def bad_kernel_calls(draw):
    """(a small valid call, the argument made wrong, how)."""
    case = draw(kernel_cases(max_T=3))
    forward = ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse", "training"]
    backward = ["ctx", "dy", "dh_n"]
    if case.cell == "lstm":
        forward.append("c0")
        backward.append("dc_n")
    if case.cell == "rnn":
        forward.append("nonlinearity")
    name = draw(st.sampled_from(forward + backward))
    if name == "lengths":
        corruption = ("lengths", draw(st.sampled_from(LENGTHS_CORRUPTIONS)))
    elif name in ("reverse", "training"):
        corruption = ("flag", draw(st.sampled_from(FLAG_CORRUPTIONS)))
    elif name == "nonlinearity":
        corruption = ("value", draw(st.sampled_from(["gelu", "TANH", "", None, 1, ("tanh",)])))
    elif name == "ctx":
        corruption = ("ctx", draw(st.sampled_from(["none", "another cell's", "reference's",
                                                   "dict"])))
    else:
        corruption = draw(array_corruptions(name, case))
    return case, name, corruption


def context_of_another_cell(cell):
    other = "gru" if cell != "gru" else "rnn"
    G = GATES[other]
    x = np.zeros((1, 1, 1))
    return getattr(F, f"{other}_forward")(x, None, np.zeros((G, 1)), np.zeros((G, 1)),
                                          training=True)[-1]


@fuzz(200)
@given(call=bad_kernel_calls())
def test_bad_kernel_argument_is_named(call):
    """One wrong argument of a forward or a backward: TypeError/ValueError naming it."""
    case, name, (kind, detail) = call
    arrays = case.arrays()
    valid_shape = case.all_arrays()[name].shape if name in KERNEL_ARRAYS else None
    forward = dict(x=arrays["x"], h0=arrays["h0"], w_ih=arrays["w_ih"], w_hh=arrays["w_hh"],
                   b_ih=arrays["b_ih"], b_hh=arrays["b_hh"], lengths=case.lengths_argument(),
                   reverse=case.reverse, training=True)
    if case.cell == "lstm":
        forward["c0"] = arrays["c0"]
    if case.cell == "rnn":
        forward["nonlinearity"] = case.nonlinearity
    if kind == "lengths":
        bad = bad_lengths(detail, case.T, case.N)
    elif kind == "flag":
        bad = bad_flag(detail)
    elif kind == "value":
        bad = detail
    elif kind == "ctx":
        bad = {"none": None, "dict": {"cell": case.cell}}.get(detail)
        if detail == "another cell's":
            bad = context_of_another_cell(case.cell)
        elif detail == "reference's":  # a dict, not the kernel's context
            a = float64(arrays)
            bad = cell_forward(reference, case.cell, case.nonlinearity, a["x"], a["h0"], a["c0"],
                               a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])[-1]
    else:
        bad = corrupt((kind, detail), valid_shape, case.dtype)
    names = (name, "b_ih, b_hh") if name in ("b_ih", "b_hh") else (name,)  # (one without the other)
    forward_of = getattr(F, f"{case.cell}_forward")
    if name in forward:
        forward[name] = bad
        assert_raises_named(names, lambda: forward_of(**forward))
        return
    ctx = forward_of(**forward)[-1]
    backward = dict(ctx=ctx, dy=arrays["dy"], dh_n=arrays["dh_n"])
    if case.cell == "lstm":
        backward["dc_n"] = arrays["dc_n"]
    backward[name] = bad
    assert_raises_named(names, lambda: getattr(F, f"{case.cell}_backward")(**backward))


# ---------------------------------------------------------------------------- layers
LAYER_CLASSES = {"RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}


@dataclass(frozen=True)
class LayerCase:
    """One nn.RNN/LSTM/GRU forward (training mode) and backward. ``hx`` and ``dhx`` name the
    parts of the initial state and of its gradient that are given (LSTM: h and c)."""

    mode: str  # reference.layers' mode names
    dtype: str
    num_layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    T: int
    N: int
    I: int
    H: int
    unbatched: bool
    hx: tuple
    dhx: tuple
    lengths: tuple | None
    x_layout: str
    seed: int

    def layer(self, **overrides):
        kwargs = dict(input_size=self.I, hidden_size=self.H, num_layers=self.num_layers,
                      bias=self.bias, batch_first=self.batch_first,
                      bidirectional=self.bidirectional, dtype=self.dtype, seed=self.seed)
        if self.mode.startswith("RNN"):
            kwargs["nonlinearity"] = self.mode[4:].lower()
        kwargs.update(overrides)
        return LAYER_CLASSES[self.mode](**kwargs)

    @property
    def state_shape(self):
        LD = self.num_layers * (2 if self.bidirectional else 1)
        return (LD, self.H) if self.unbatched else (LD, self.N, self.H)

    def to_user(self, a):
        """[T, N, F] -> the layer's layout ([N, T, F] batch first; [T, F] unbatched)."""
        if self.unbatched:
            return a[:, 0]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def state_argument(self, parts, h, c):
        """The hx (or dhx) argument: None, h, or for the LSTM a tuple with None for parts not
        given."""
        if not parts:
            return None
        if self.mode != "LSTM":
            return h
        return (h if "h" in parts else None, c if "c" in parts else None)


@st.composite
def layer_cases(draw, max_T=5):
    mode = draw(st.sampled_from(sorted(LAYER_CLASSES)))
    unbatched = draw(st.booleans())
    T = draw(st.integers(0, max_T))
    N = 1 if unbatched else draw(st.integers(0, 4))
    parts = st.sets(st.sampled_from(("h", "c") if mode == "LSTM" else ("h",)))
    return LayerCase(
        mode=mode, dtype=draw(st.sampled_from(["float64", "float32"])),
        num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()), bias=draw(st.booleans()), T=T, N=N,
        I=draw(st.integers(1, 5)), H=draw(st.integers(1, 6) | st.just(17)), unbatched=unbatched,
        hx=tuple(sorted(draw(parts))), dhx=tuple(sorted(draw(parts))),
        lengths=draw(lengths_strategy(T, N)), x_layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2 ** 32 - 1)))


@fuzz(80)
@given(case=layer_cases())
def test_layer_matches_reference(case):
    """Outputs, final states, the input and state gradients and every parameter's gradient equal
    the reference stack's (train and eval mode); a state not given gets a zero gradient."""
    m = case.layer()
    rng = np.random.default_rng(case.seed)
    D = 2 if case.bidirectional else 1
    T, N, H = case.T, case.N, case.H
    LD = case.num_layers * D
    x = rng.standard_normal((T, N, case.I)).astype(case.dtype)  # [T, N, I]
    h0, c0, dh_n, dc_n = (rng.standard_normal((LD, N, H)).astype(case.dtype) for _ in range(4))
    dout = rng.standard_normal((T, N, D * H)).astype(case.dtype)
    lengths = None if case.lengths is None else np.array(case.lengths, np.int64)

    def user_state(a):
        return a[:, 0] if case.unbatched else a

    hx = case.state_argument(case.hx, user_state(h0), user_state(c0))
    dhx = case.state_argument(case.dhx, user_state(dh_n), user_state(dc_n))
    x_user = in_layout(np.ascontiguousarray(case.to_user(x)), case.x_layout)
    out, state = m(x_user, hx, lengths=lengths)
    dx, dstate = m.backward(np.ascontiguousarray(case.to_user(dout)), dhx)
    h_n, c_n = state if case.mode == "LSTM" else (state, None)
    dh0, dc0 = dstate if case.mode == "LSTM" else (dstate, None)

    params = float64(m.state_dict())
    ref_hx = case.state_argument(case.hx, h0.astype(np.float64), c0.astype(np.float64))
    ref_dh_n = dh_n.astype(np.float64) if "h" in case.dhx else None
    ref_dc_n = dc_n.astype(np.float64) if "c" in case.dhx else None
    ref_out, ref_h_n, ref_c_n, cache = reference.recurrent_forward(
        case.mode, x.astype(np.float64), params, num_layers=case.num_layers,
        bidirectional=case.bidirectional, hx=ref_hx, lengths=lengths)
    ref_dx, ref_dh0, ref_dc0, ref_grads = reference.recurrent_backward(
        cache, dout.astype(np.float64), ref_dh_n, ref_dc_n)
    if "h" not in case.hx:
        ref_dh0 = np.zeros_like(ref_dh0)
    if ref_dc0 is not None and "c" not in case.hx:
        ref_dc0 = np.zeros_like(ref_dc0)

    expected = dict(out=case.to_user(ref_out), h_n=user_state(ref_h_n), dx=case.to_user(ref_dx),
                    dh0=user_state(ref_dh0))
    ours = dict(out=out, h_n=h_n, dx=dx, dh0=dh0)
    if case.mode == "LSTM":
        expected.update(c_n=user_state(ref_c_n), dc0=user_state(ref_dc0))
        ours.update(c_n=c_n, dc0=dc0)
    # Each group at its scale (group_scale): the outputs and final states; the gradients
    # reaching the inputs and initial states (a 3-layer GRU, I=1, one step: dx -0.0056 from 51
    # gate rows near 0.1-1, 2.5e-5 off alone, 1.4e-7 absolute: the terms' rounding); the
    # parameters' gradients.
    groups = {"out": "y", "h_n": "y", "c_n": "y", "dx": "d", "dh0": "d", "dc0": "d"}
    scales = {g: group_scale([v for k, v in expected.items() if groups[k] == g]) for g in "yd"}
    for name, value in expected.items():
        assert_like_reference(name, ours[name], value, case.dtype, floor=scales[groups[name]])
    assert sorted(ref_grads) == sorted(name for name, _ in m.named_parameters())
    grads_scale = group_scale(ref_grads.values())
    for name, p in m.named_parameters():
        assert_like_reference(f"{name}.grad", p.grad, ref_grads[name], case.dtype,
                              floor=grads_scale)
    m.eval()
    out_eval, _ = m(x_user, hx, lengths=lengths)
    assert_like_reference("out (eval)", out_eval, expected["out"], case.dtype)


LAYER_CONSTRUCTOR_CORRUPTIONS = {
    "input_size": (0, -1, 1.5, "3", None, True, np.array([2, 3])),
    "hidden_size": (0, -2, 2.0, "4", None, False),
    "num_layers": (0, -1, 1.5, None, "2"),
    "dropout": (-0.1, 1.5, math.nan, "0.1", None, True, np.array([0.1, 0.2])),
    "dtype": ("int32", "float16", "complex128", "abc", (1, 2), object),
    "bias": (np.array([True, False]), np.array([])),
    "batch_first": (np.array([1, 0]),),
    "bidirectional": (np.array([0, 1, 1]),),
}


@st.composite
def bad_layer_calls(draw):
    """(a small valid layer call, the argument made wrong, the bad value's recipe)."""
    case = draw(layer_cases(max_T=3))
    arguments = list(LAYER_CONSTRUCTOR_CORRUPTIONS) + ["x", "hx", "lengths", "dout", "dhx"]
    if case.mode.startswith("RNN"):
        arguments.append("nonlinearity")
    name = draw(st.sampled_from(arguments))
    if name in LAYER_CONSTRUCTOR_CORRUPTIONS:
        return case, name, ("value", draw(st.sampled_from(LAYER_CONSTRUCTOR_CORRUPTIONS[name])))
    if name == "nonlinearity":
        return case, name, ("value", draw(st.sampled_from(["gelu", None, 3])))
    if name == "lengths":
        return case, name, ("lengths", draw(st.sampled_from(LENGTHS_CORRUPTIONS)))
    dtypes = [d for d in BAD_DTYPES if np.dtype(d) != np.dtype(case.dtype)]
    kinds = [st.tuples(st.just("type"), st.sampled_from(NOT_ARRAYS)),
             st.tuples(st.just("dtype"), st.sampled_from(dtypes))]
    if name == "x":  # a wrong ndim or feature size; other T and N are a valid call
        kinds.append(st.tuples(st.just("shape"), shapes().filter(
            lambda s: len(s) not in (2, 3) or s[-1] != case.I)))
        return case, name, draw(st.one_of(kinds))
    if name == "dout":
        kinds.append(st.tuples(st.just("shape"), shapes()))
        return case, name, draw(st.one_of(kinds))
    # hx or dhx: the whole (LSTM: not a pair) or one part
    if case.mode == "LSTM":
        part = draw(st.sampled_from(["pair", "h", "c"]))
        if part == "pair":
            return case, name, ("pair", draw(st.sampled_from(["array", "triple", "dict", "str"])))
        kinds = [st.tuples(st.just(part), kind) for kind in kinds]
        return case, name, draw(st.one_of(kinds + [st.tuples(st.just(part), st.tuples(
            st.just("shape"), shapes()))]))
    kinds.append(st.tuples(st.just("shape"), shapes()))
    return case, name, draw(st.one_of(kinds))


@fuzz(150)
@given(call=bad_layer_calls())
def test_bad_layer_argument_is_named(call):
    """One wrong constructor, forward or backward argument of a layer: TypeError/ValueError
    naming it (LSTM: hx and dhx, or the part h0, c0, dh_n, dc_n that is wrong)."""
    case, name, corruption = call
    if name in LAYER_CONSTRUCTOR_CORRUPTIONS or name == "nonlinearity":
        assert_raises_named((name,), lambda: case.layer(**{name: corruption[1]}))
        return
    m = case.layer()
    D = 2 if case.bidirectional else 1
    x_shape = (case.T, case.I) if case.unbatched else \
        ((case.N, case.T, case.I) if case.batch_first else (case.T, case.N, case.I))
    x = np.zeros(x_shape, case.dtype)
    state = np.zeros(case.state_shape, case.dtype)
    out_shape = x_shape[:-1] + (D * case.H,)

    def bad_value(recipe, valid_shape, names):
        """(the bad value, the names its message may start with)."""
        kind, detail = recipe
        if kind == "pair":
            value = {"array": state, "triple": (state, state, state), "dict": {"h": state},
                     "str": "hc"}[detail]
            return value, names[:1]
        if kind in ("h", "c"):
            part, _ = bad_value(detail, valid_shape, names)
            pair = (part, state) if kind == "h" else (state, part)
            return pair, (names[1] if kind == "h" else names[2],)
        return corrupt(recipe, valid_shape, case.dtype), names[:1]

    def is_valid(recipe, valid_shape):
        """A drawn "wrong" shape that happens to be the right one."""
        if recipe[0] in ("h", "c"):
            recipe = recipe[1]
        return recipe[0] == "shape" and tuple(recipe[1]) == tuple(valid_shape)

    if name == "x":
        bad, names = bad_value(corruption, x_shape, ("x",))
        assert_raises_named(names, lambda: m(bad))
    elif name == "lengths":
        bad = bad_lengths(corruption[1], case.T, case.N)
        assert_raises_named(("lengths",), lambda: m(x, lengths=bad))
    elif name == "hx":
        if is_valid(corruption, case.state_shape):
            return
        bad, names = bad_value(corruption, case.state_shape, ("hx", "h0", "c0") if
                               case.mode == "LSTM" else ("hx",))
        assert_raises_named(names, lambda: m(x, bad))
    else:
        m(x)
        if name == "dout":
            if is_valid(corruption, out_shape):
                return
            bad, names = bad_value(corruption, out_shape, ("dout",))
            assert_raises_named(names, lambda: m.backward(bad))
        else:
            if is_valid(corruption, case.state_shape):
                return
            bad, names = bad_value(corruption, case.state_shape, ("dhx", "dh_n", "dc_n") if
                                   case.mode == "LSTM" else ("dhx",))
            assert_raises_named(names, lambda: m.backward(np.zeros(out_shape, case.dtype), bad))


# ---------------------------------------------------------------------------- cells
CELL_CLASSES = {"rnn_tanh": nn.RNNCell, "rnn_relu": nn.RNNCell, "lstm": nn.LSTMCell,
                "gru": nn.GRUCell}


@dataclass(frozen=True)
class CellCase:
    """A cell unrolled over ``steps`` steps, then back-propagated step by step (as BPTT does:
    each step's dh is the loss's gradient plus the dh_prev the next step returned). ``hx``
    names the parts of the first state given (LSTM: h and c); ``dc`` whether the last step's
    cell state gets a gradient."""

    name: str  # a key of conftest.CELLS
    dtype: str
    bias: bool
    N: int
    I: int
    H: int
    batched: bool
    steps: int
    hx: tuple
    dc: bool
    x_layout: str
    seed: int

    def cell(self, **overrides):
        kwargs = dict(input_size=self.I, hidden_size=self.H, bias=self.bias, dtype=self.dtype,
                      seed=self.seed)
        if self.name.startswith("rnn"):
            kwargs["nonlinearity"] = CELLS[self.name][1]
        kwargs.update(overrides)
        return CELL_CLASSES[self.name](**kwargs)


@st.composite
def cell_cases(draw):
    name = draw(st.sampled_from(sorted(CELL_CLASSES)))
    batched = draw(st.booleans())
    return CellCase(
        name=name, dtype=draw(st.sampled_from(["float64", "float32"])), bias=draw(st.booleans()),
        N=draw(st.integers(0, 5)) if batched else 1, I=draw(st.integers(1, 5)),
        H=draw(st.integers(1, 6) | st.sampled_from([16, 33])), batched=batched,
        steps=draw(st.integers(1, 4)),
        hx=tuple(sorted(draw(st.sets(st.sampled_from(("h", "c") if name == "lstm" else ("h",)))))),
        dc=draw(st.booleans()) if name == "lstm" else False,
        x_layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2 ** 32 - 1)))


@fuzz(80)
@given(case=cell_cases())
def test_cell_unrolled_matches_reference(case):
    """Each step's output, each step's input gradient, the first state's gradient and every
    parameter's gradient (summed over the steps) equal the reference run over the sequence."""
    cell_type, nonlinearity = CELLS[case.name]
    m = case.cell()
    rng = np.random.default_rng(case.seed)
    K, N, H = case.steps, case.N, case.H
    xs = rng.standard_normal((K, N, case.I)).astype(case.dtype)
    h0, c0, dc_last = (rng.standard_normal((N, H)).astype(case.dtype) for _ in range(3))
    dloss = rng.standard_normal((K, N, H)).astype(case.dtype)

    def user(a):  # [N, F] -> [F] for unbatched input
        return a if case.batched else a[0]

    if cell_type == "lstm":
        state = (user(h0) if "h" in case.hx else None, user(c0) if "c" in case.hx else None)
        state = state if case.hx else None
    else:
        state = user(h0) if case.hx else None
    outputs = []
    for t in range(K):
        state = m(in_layout(user(xs[t]), case.x_layout), state)
        outputs.append(state[0] if cell_type == "lstm" else state)
    dxs = [None] * K
    dh_prev, dc_prev = np.zeros_like(user(h0)), user(dc_last) if case.dc else None
    for t in reversed(range(K)):
        if cell_type == "lstm":
            dxs[t], (dh_prev, dc_prev) = m.backward(user(dloss[t]) + dh_prev, dc_prev)
        else:
            dxs[t], dh_prev = m.backward(user(dloss[t]) + dh_prev)
    assert m.pending_steps == 0

    weights = float64(dict(w_ih=m.weight_ih.data, w_hh=m.weight_hh.data,
                           b_ih=None if m.bias_ih is None else m.bias_ih.data,
                           b_hh=None if m.bias_hh is None else m.bias_hh.data))
    y, _, _, ctx = cell_forward(reference, cell_type, nonlinearity, xs.astype(np.float64),
                                h0.astype(np.float64) if "h" in case.hx else None,
                                c0.astype(np.float64) if "c" in case.hx else None, **weights)
    grads = cell_backward(reference, cell_type, ctx, dloss.astype(np.float64), None,
                          dc_last.astype(np.float64) if case.dc else None)
    # Each group at its scale (group_scale): the outputs, the gradients reaching the inputs and
    # the first state (a GRU cell, I=1, H=16: one step's dx 0.0018 from terms near 0.3), the
    # parameters' gradients.
    y_scale = group_scale([y])
    input_scale = group_scale([grads["dx"], grads["dh0"], grads.get("dc0")])
    grads_scale = group_scale([grads[g] for g in ("dw_ih", "dw_hh", "db_ih", "db_hh")])
    for t in range(K):
        assert_like_reference(f"h' of step {t}", outputs[t], user(y[t]), case.dtype,
                              floor=y_scale)
        assert_like_reference(f"dx of step {t}", dxs[t], user(grads["dx"][t]), case.dtype,
                              floor=input_scale)
    assert_like_reference("dh_prev of step 0", dh_prev, user(grads["dh0"]), case.dtype,
                          floor=input_scale)
    if cell_type == "lstm":
        assert_like_reference("dc_prev of step 0", dc_prev, user(grads["dc0"]), case.dtype,
                              floor=input_scale)
    for name, gradient in (("weight_ih", "dw_ih"), ("weight_hh", "dw_hh"), ("bias_ih", "db_ih"),
                           ("bias_hh", "db_hh")):
        p = getattr(m, name)
        if p is None:
            assert grads[gradient] is None
        else:
            assert_like_reference(f"{name}.grad", p.grad, grads[gradient], case.dtype,
                                  floor=grads_scale)


CELL_CONSTRUCTOR_CORRUPTIONS = {
    "input_size": (0, -1, 1.5, "3", None, True),
    "hidden_size": (0, -3, 2.5, None, False),
    "bias": (np.array([1, 0]),),
    "dtype": ("int64", "float16", "abc", object),
}


@st.composite
def bad_cell_calls(draw):
    """(a small valid cell call, the argument made wrong, the bad value's recipe)."""
    case = draw(cell_cases())
    arguments = list(CELL_CONSTRUCTOR_CORRUPTIONS) + ["input", "hx", "dh"]
    if case.name.startswith("rnn"):
        arguments.append("nonlinearity")
    if case.name == "lstm":
        arguments.append("dc")
    name = draw(st.sampled_from(arguments))
    if name in CELL_CONSTRUCTOR_CORRUPTIONS:
        return case, name, ("value", draw(st.sampled_from(CELL_CONSTRUCTOR_CORRUPTIONS[name])))
    if name == "nonlinearity":
        return case, name, ("value", draw(st.sampled_from(["sigmoid", None, 0])))
    dtypes = [d for d in BAD_DTYPES if np.dtype(d) != np.dtype(case.dtype)]
    if name in ("dh", "dc"):  # gradients are converted to the cell's dtype: wrong only in shape
        return case, name, draw(st.one_of(                      # or when not numbers at all
            st.tuples(st.just("shape"), shapes()),
            st.tuples(st.just("not numbers"), st.sampled_from(["abc", "ragged", "dict"]))))
    kinds = [st.tuples(st.just("type"), st.sampled_from(NOT_ARRAYS)),
             st.tuples(st.just("dtype"), st.sampled_from(dtypes)),
             st.tuples(st.just("shape"), shapes())]
    if name == "hx" and case.name == "lstm":
        part = draw(st.sampled_from(["pair", "hx[0]", "hx[1]"]))
        if part == "pair":
            return case, name, ("pair", draw(st.sampled_from(["array", "triple", "str"])))
        return case, name, (part, draw(st.one_of(kinds)))
    return case, name, draw(st.one_of(kinds))


@fuzz(150)
@given(call=bad_cell_calls())
def test_bad_cell_argument_is_named(call):
    """One wrong constructor, forward or backward argument of a cell: TypeError/ValueError
    naming it (LSTMCell: hx, or the part hx[0] or hx[1] that is wrong)."""
    case, name, recipe = call
    if recipe[0] == "value":
        assert_raises_named((name,), lambda: case.cell(**{name: recipe[1]}))
        return
    m = case.cell()
    x_shape = (case.N, case.I) if case.batched else (case.I,)
    h_shape = (case.N, case.H) if case.batched else (case.H,)  # hx, dh and dc alike
    valid_shape = x_shape if name == "input" else h_shape
    x, state = np.zeros(x_shape, case.dtype), np.zeros(h_shape, case.dtype)

    def wrong(recipe):
        if recipe[0] == "shape" and (tuple(recipe[1]) == valid_shape or name == "input" and
                                     len(recipe[1]) in (1, 2) and recipe[1][-1] == case.I):
            return None  # drawn "wrong" but a valid shape (input: another batch size is valid)
        if recipe[0] == "not numbers":
            return {"abc": "abc", "ragged": [[1.0], [1.0, 2.0]], "dict": {"a": 1}}[recipe[1]]
        return corrupt(recipe, valid_shape, case.dtype)

    if name == "input":
        bad = wrong(recipe)
        if bad is not None:
            assert_raises_named(("input",), lambda: m(bad))
    elif name == "hx":
        if recipe[0] == "pair":
            bad = {"array": state, "triple": (state, state, state), "str": "hc"}[recipe[1]]
            assert_raises_named(("hx",), lambda: m(x, bad))
        elif recipe[0] in ("hx[0]", "hx[1]"):
            part = wrong(recipe[1])
            if part is not None:
                bad = (part, state) if recipe[0] == "hx[0]" else (state, part)
                assert_raises_named((recipe[0],), lambda: m(x, bad))
        else:
            bad = wrong(recipe)
            if bad is not None:
                assert_raises_named(("hx",), lambda: m(x, bad))
    else:
        bad = wrong(recipe)
        if bad is None:
            return
        m(x)
        if name == "dh":
            assert_raises_named(("dh",), lambda: m.backward(bad))
        else:
            assert_raises_named(("dc",), lambda: m.backward(np.zeros_like(state), bad))


# ---------------------------------------------------------------------------- attention
@dataclass(frozen=True)
class AttentionCase:
    """An attention module over one memory: ``steps`` decoder steps, then their backward in
    reverse order and ``memory_backward``. ``layouts``: the memory layout of keys and queries."""

    kind: str  # additive, dot, general
    dtype: str
    N: int
    S: int
    Q: int  # the dot score needs Q == K
    K: int
    A: int
    lengths: tuple | None
    steps: int
    dweights: bool
    layouts: tuple
    seed: int

    def module(self, **overrides):
        kwargs = dict(score=self.kind, query_size=self.Q, key_size=self.K,
                      attention_size=self.A, dtype=self.dtype, seed=self.seed)
        kwargs.update(overrides)
        return nn.make_attention(**kwargs)

    def arrays(self):
        rng = np.random.default_rng(self.seed)
        N, S, K = self.N, self.S, self.K
        arrays = dict(keys=rng.standard_normal((N, S, K)),
                      queries=rng.standard_normal((self.steps, N, self.Q)),
                      dcontexts=rng.standard_normal((self.steps, N, K)),
                      dweights=rng.standard_normal((self.steps, N, S)))
        return {k: v.astype(self.dtype) for k, v in arrays.items()}

    def lengths_argument(self):
        return None if self.lengths is None else np.array(self.lengths, np.int64)


@st.composite
def attention_cases(draw):
    kind = draw(st.sampled_from(["additive", "dot", "general"]))
    N, S = draw(st.integers(0, 4)), draw(st.integers(0, 6))
    # A and K mostly small, at times past the CPU's SIMD widths (8, 16 floats) with a tail
    K = draw(st.one_of(st.integers(1, 6), st.sampled_from([8, 19])))
    return AttentionCase(
        kind=kind, dtype=draw(st.sampled_from(["float64", "float32"])), N=N, S=S,
        Q=K if kind == "dot" else draw(st.integers(1, 6)), K=K,
        A=draw(st.one_of(st.integers(1, 5), st.sampled_from([8, 16, 37]))),
        lengths=draw(lengths_strategy(S, N)), steps=draw(st.integers(1, 3)),
        dweights=draw(st.booleans()),
        layouts=(draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))),
        seed=draw(st.integers(0, 2 ** 32 - 1)))


def run_attention(case, arrays):
    """The module's outputs and gradients, and the reference's, as two dicts of lists of
    arrays: contexts, weights, dqueries per step, then dkeys and the parameters' gradients."""
    m = case.module()
    params = tuple(p.data.astype(np.float64) for p in m.parameters())
    lengths = case.lengths_argument()
    keys, queries, dcontexts = arrays["keys"], arrays["queries"], arrays["dcontexts"]
    dweights = arrays["dweights"] if case.dweights else [None] * case.steps
    m.set_memory(in_layout(keys, case.layouts[0]), lengths)
    ours = dict(context=[], weights=[], dquery=[None] * case.steps)
    for query in queries:
        context, weights = m(in_layout(query, case.layouts[1]))
        ours["context"].append(context)
        ours["weights"].append(weights)
    for s in reversed(range(case.steps)):
        ours["dquery"][s] = m.backward(dcontexts[s], dweights[s])
    ours["dkeys"] = [m.memory_backward()]
    ours["grads"] = [p.grad for p in m.parameters()]

    oracle = dict(context=[], weights=[], dquery=[], dkeys=[np.zeros(keys.shape)],
                  grads=[np.zeros(p.shape) for p in params])
    with np.errstate(all="ignore"):
        for query, dcontext, dweight in zip(queries, dcontexts, dweights):
            context, weights = reference_attention.attention_forward(case.kind, query, keys,
                                                                     lengths, params)
            dquery, dkeys, dparams = reference_attention.attention_backward(
                case.kind, query, keys, lengths, params, dcontext, dweight)
            oracle["context"].append(context)
            oracle["weights"].append(weights)
            oracle["dquery"].append(dquery)
            oracle["dkeys"][0] = oracle["dkeys"][0] + dkeys
            oracle["grads"] = [g + d for g, d in zip(oracle["grads"], dparams)]
    return ours, oracle


def assert_attention_like_reference(case, ours, oracle):
    """Every entry like the reference's, norm-wise at the whole call's scale (group_scale of
    every output and gradient): a step's query gradient runs through a softmax's Jacobian and a
    tanh's, sums whose rounding follows the call's values, not the result's (float32, additive,
    one step: 1.06e-5 off alone), and a gradient that is 0 in exact arithmetic has no scale of
    its own (v's, where an infinite query saturates every tanh alike: ours -5.6e-17 in float64,
    the reference's 0; the bias's in float32: ours 0, the reference's 1.4e-17)."""
    whole = group_scale([a for values in oracle.values() for a in values])
    for name, values in oracle.items():
        assert len(ours[name]) == len(values), name
        for s, (mine, expected) in enumerate(zip(ours[name], values)):
            assert_like_reference(f"{name}[{s}]", mine, expected, case.dtype, floor=whole)


@fuzz(80)
@given(case=attention_cases())
def test_attention_matches_reference(case):
    """Contexts, weights, the query gradient of every step, the keys' gradient summed over the
    steps and every parameter's gradient equal the reference's."""
    ours, oracle = run_attention(case, case.arrays())
    assert_attention_like_reference(case, ours, oracle)


ATTENTION_POISONS = st.lists(st.tuples(st.sampled_from(["keys", "queries"]),
                                       st.integers(0, 2 ** 16), st.sampled_from(NON_FINITE)),
                             min_size=1, max_size=3).map(tuple)


def poison_attention(case, arrays, poison):
    """Write ``poison`` [(keys or queries, flat index, value)] into ``arrays`` at real positions;
    returns the samples it reached. Padding, and the query of a sample with no real position,
    are left alone: nothing reads them but the dense GEMMs of the parameters' gradients, where
    0 * NaN is NaN (as in PyTorch) while the reference loops over real positions only."""
    lengths = [case.S] * case.N if case.lengths is None else case.lengths
    dirty = set()
    for name, index, value in poison:
        a = arrays[name]
        if not a.size:
            continue
        position = np.unravel_index(index % a.size, a.shape)
        n = int(position[0] if name == "keys" else position[1])
        if (position[1] if name == "keys" else 0) < lengths[n]:
            a[position] = value
            dirty.add(n)
    return dirty


@fuzz(60)
@given(case=attention_cases(), poison=ATTENTION_POISONS)
def test_attention_non_finite_stays_in_its_sample(case, poison):
    """NaN or inf in a query or a real key: every sample whose own data is finite gets, bit for
    bit, what it gets without them."""
    clean = case.arrays()
    arrays = {k: v.copy() for k, v in clean.items()}
    dirty = poison_attention(case, arrays, poison)
    with np.errstate(all="ignore"):  # NumPy's warnings on NaN in the modules' projections
        ours, _ = run_attention(case, arrays)
    unpoisoned, _ = run_attention(case, clean)
    for n in sorted(set(range(case.N)) - dirty):
        for name in ("context", "weights", "dquery", "dkeys"):
            for mine, alone in zip(ours[name], unpoisoned[name]):
                assert np.array_equal(mine[n], alone[n]), \
                    f"{name}: another sample's NaN/inf changed clean sample {n}"


# A kernel defect this suite found (fixed in csrc/cells/attention.h): in the sample that holds
# it, a NaN score (or an inf one: inf - inf) after the first real position was skipped by the
# running maximum, the total of the exponentials was NaN, and `total > 0 ? 1 / total : 0`
# turned it into a scale of 0: every other real position got weight exactly 0 where the
# reference (and torch.softmax) give NaN. And the context skipped positions of weight 0, so a
# -inf key of weight 0 added nothing where the reference adds 0 * -inf = NaN. And in float32
# the CPU's exp gave float's least normal (1.2e-38), not 0, for a score of -inf, so that
# weight times the -inf key made the context -inf where the reference has NaN (fixed in
# csrc/common/activations.h, found with FUSEDRNN_FUZZ_EXAMPLES=400). The examples are the
# smallest reproducers of each.
@fuzz(30)
@example(case=AttentionCase(kind="dot", dtype="float32", N=1, S=2, Q=1, K=1, A=1, lengths=None,
                            steps=1, dweights=False, layouts=("contiguous", "contiguous"), seed=0),
         poison=(("keys", 0, -math.inf),))
@example(case=AttentionCase(kind="dot", dtype="float64", N=1, S=2, Q=1, K=1, A=1, lengths=None,
                            steps=1, dweights=False, layouts=("contiguous", "contiguous"), seed=0),
         poison=(("keys", 1, math.nan),))
@example(case=AttentionCase(kind="dot", dtype="float64", N=1, S=2, Q=1, K=1, A=1, lengths=None,
                            steps=1, dweights=False, layouts=("contiguous", "contiguous"), seed=1),
         poison=(("keys", 1, -math.inf),))
@given(case=attention_cases(), poison=ATTENTION_POISONS)
def test_attention_non_finite_matches_reference(case, poison):
    """NaN or inf in a query or a real key: every output and gradient has the reference's
    NaN/inf pattern and finite values, in the sample that holds it too."""
    arrays = case.arrays()
    poison_attention(case, arrays, poison)
    with np.errstate(all="ignore"):
        ours, oracle = run_attention(case, arrays)
    assert_attention_like_reference(case, ours, oracle)


ATTENTION_CONSTRUCTOR_CORRUPTIONS = {
    "query_size": (0, -1, 2.5, "4", None, True),
    "key_size": (0, -1, 2.5, None),
    "attention_size": (0, -2, 1.5, "3", False),
    "score": ("cosine", "", None, 3),
    "dtype": ("int32", "float16", "abc", object),
}


@st.composite
def bad_attention_calls(draw):
    """(a small valid attention call, the argument made wrong, the bad value's recipe)."""
    case = draw(attention_cases())
    arguments = list(ATTENTION_CONSTRUCTOR_CORRUPTIONS) + ["keys", "lengths", "query",
                                                           "dcontext", "dweights"]
    if case.kind != "additive":
        arguments.remove("attention_size")  # the Luong scores have none
    name = draw(st.sampled_from(arguments))
    if name in ATTENTION_CONSTRUCTOR_CORRUPTIONS:
        return case, name, ("value", draw(st.sampled_from(ATTENTION_CONSTRUCTOR_CORRUPTIONS[name])))
    if name == "lengths":
        return case, name, ("lengths", draw(st.sampled_from(LENGTHS_CORRUPTIONS)))
    if name in ("dcontext", "dweights"):  # converted to the module's dtype, like the cells'
        return case, name, draw(st.one_of(
            st.tuples(st.just("shape"), shapes()),
            st.tuples(st.just("not numbers"), st.sampled_from(["abc", "ragged", "dict"]))))
    dtypes = [d for d in BAD_DTYPES if np.dtype(d) != np.dtype(case.dtype)]
    return case, name, draw(st.one_of(st.tuples(st.just("type"), st.sampled_from(NOT_ARRAYS)),
                                      st.tuples(st.just("dtype"), st.sampled_from(dtypes)),
                                      st.tuples(st.just("shape"), shapes())))


@fuzz(150)
@given(call=bad_attention_calls())
def test_bad_attention_argument_is_named(call):
    """One wrong constructor, set_memory, forward or backward argument of an attention module:
    TypeError/ValueError naming it (and the fused step refuses a query that is not an array)."""
    case, name, recipe = call
    if recipe[0] == "value":
        assert_raises_named((name,), lambda: case.module(**{name: recipe[1]}))
        return
    m = case.module()
    N, S, K, Q = case.N, case.S, case.K, case.Q
    keys = np.zeros((N, S, K), case.dtype)
    valid_shape = dict(keys=(N, S, K), query=(N, Q), dcontext=(N, K), dweights=(N, S)).get(name)
    if recipe[0] == "shape" and (tuple(recipe[1]) == valid_shape or name == "keys" and
                                 len(recipe[1]) == 3 and recipe[1][-1] == K):
        return  # drawn "wrong" but valid (keys: any N and S make a memory)
    if recipe[0] == "lengths":
        bad = bad_lengths(recipe[1], S, N)
    elif recipe[0] == "not numbers":
        bad = {"abc": "abc", "ragged": [[1.0], [1.0, 2.0]], "dict": {"a": 1}}[recipe[1]]
    else:
        bad = corrupt(recipe, valid_shape, case.dtype)
    if name in ("keys", "lengths"):
        args = (bad,) if name == "keys" else (keys, bad)
        assert_raises_named((name,), lambda: m.set_memory(*args))
        return
    m.set_memory(keys)
    if name == "query":
        assert_raises_named(("query",), lambda: m(bad))
        if recipe[0] == "type":
            assert_raises_named(("query",), lambda: attention_step_forward(
                "dot", bad, keys, keys, np.ones((N, S), bool)))
        return
    m(np.zeros((N, Q), case.dtype))
    if name == "dcontext":
        assert_raises_named(("dcontext",), lambda: m.backward(bad))
    else:
        assert_raises_named(("dweights",), lambda: m.backward(np.zeros((N, K), case.dtype), bad))


# ---------------------------------------------------------------------------- fr.load
LOADABLE_DTYPES = ("float32", "float64", "int8", "int64", "uint16", "bool", "complex64", "<U3",
                   "S2", ">f8")


def make_array(dtype, shape, seed):
    values = np.random.default_rng(seed).integers(0, 100, shape)
    return values.astype(dtype)


ARRAYS = st.builds(make_array, st.sampled_from(LOADABLE_DTYPES),
                   st.lists(st.integers(0, 3), max_size=3).map(tuple), st.integers(0, 2 ** 16))
LEAVES = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
          | ARRAYS)
TREES = st.recursive(
    LEAVES,
    lambda children: (st.lists(children, max_size=3) | st.lists(children, max_size=3).map(tuple)
                      | st.dictionaries(st.text(max_size=6), children, max_size=3)
                      | st.dictionaries(st.integers(-3, 3) | st.sampled_from(["__x__", "a"]),
                                        children, max_size=3)),
    max_leaves=10)


def same_tree(a, b):
    """Equal values of equal types, dict order included; NaN equals NaN (of either sign: JSON
    keeps none), -0.0 is not 0.0."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, float):
        return isinstance(b, float) and (math.isnan(a) and math.isnan(b) or a == b and
                                         math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_tree, a, b))
    return type(a) is type(b) and a == b


def assert_plain_tree(tree):
    """What a file can give back: containers, numbers, strings, None and non-object arrays."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            assert all(isinstance(k, (str, int)) for k in node)
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, np.ndarray):
            assert not node.dtype.hasobject
        else:
            assert node is None or isinstance(node, (bool, int, float, str)), type(node)


def assert_loads_or_names_the_file(path):
    """fr.load(path) returns a plain tree or raises ValueError naming the file."""
    try:
        tree = fr.load(path)
    except ValueError as e:
        assert str(path) in str(e), str(e)
        return
    assert_plain_tree(tree)


@fuzz(60)
@given(tree=TREES)
def test_load_returns_what_save_wrote(tree, fuzz_dir):
    """Any tree fr.save takes (nested dicts with str or int keys, lists, tuples, numbers, NaN,
    strings, None, arrays of every kind of dtype, zero-size ones too) comes back equal."""
    path = fuzz_dir / "tree.npz"
    fr.save(tree, path)
    assert same_tree(tree, fr.load(path))


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]),
                               st.integers(0, 2 ** 20), st.integers(1, 255)),
                     min_size=1, max_size=3).map(tuple)


def mutated(data, mutations):
    data = bytearray(data)
    for kind, position, value in mutations:
        at = position % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] ^= value
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([value]) * (value % 7 + 1)
        elif kind == "delete":
            del data[at:at + value]
    return bytes(data)


@fuzz(100)
@given(tree=TREES, mutations=MUTATIONS)
def test_load_of_a_damaged_file_names_it(tree, mutations, fuzz_dir):
    """A saved file with bytes flipped, cut, inserted or removed: a plain tree (the damage missed
    everything read) or ValueError naming the file; nothing else."""
    path = fuzz_dir / "damaged.npz"
    fr.save(tree, path)
    path.write_bytes(mutated(path.read_bytes(), mutations))
    assert_loads_or_names_the_file(path)


@fuzz(60)
@given(data=st.tuples(st.sampled_from([b"", b"PK", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY",
                                       b"\x93NUMPY\x01\x00", b"\x80\x04"]),
                      st.binary(max_size=300)).map(lambda parts: b"".join(parts)))
def test_load_of_random_bytes_names_the_file(data, fuzz_dir):
    """Random bytes, some behind a zip's, a .npy's or a pickle's magic: ValueError naming the
    file (or, by chance, a plain tree)."""
    path = fuzz_dir / "random.npz"
    path.write_bytes(data)
    assert_loads_or_names_the_file(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    | st.fixed_dictionaries({"__array__": st.sampled_from(["a0", "a1", "zz"]) | st.integers()}),
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.sampled_from(["__array__", "__tuple__", "__items__",
                                                         "tree", "format", "k"]) | st.text(
                                                             max_size=3), children, max_size=3)),
    max_leaves=12)
NPY_DESCRS = ("<f8", "<f4", "|b1", "<i8", "|O", "<U2", "|V4", "|V0", "|S0", "not a dtype",
              "[('a', '<f4')]", "{'names': ['x']}", "<m8[s]")


def npy_bytes(descr, shape, fortran, data, version):
    """A .npy entry with any header: ``descr`` and ``shape`` as given (valid or not)."""
    descr = descr if descr.startswith(("[", "{")) else repr(descr)
    header = f"{{'descr': {descr}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"
    header = header.encode("latin1") + b" " * (16 - len(header) % 16) + b"\n"
    size = len(header).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + data


@st.composite
def npz_members(draw):
    """(entry name, bytes) of one archive member: random bytes, a .npy of any header and any
    data length (sometimes exactly what the header declares), or a fusedrnn description of any
    JSON."""
    kind = draw(st.sampled_from(["bytes", "npy", "meta", "deep meta"]))
    # (zipfile keeps a name up to its first NUL and cannot write an empty one)
    name = draw(st.sampled_from(["a0.npy", "a1.npy", "__fusedrnn__.npy", "x.txt", "dir/a.npy"])
                | st.text(min_size=1, max_size=8).filter(lambda text: text.split("\x00")[0]))
    if kind == "bytes":
        return name, draw(st.binary(max_size=64))
    if kind == "npy":
        shape = tuple(draw(st.lists(st.integers(-2, 5) | st.sampled_from([2 ** 40, 2 ** 62]),
                                    max_size=3)))
        descr = draw(st.sampled_from(NPY_DESCRS))
        try:
            declared = math.prod(shape) * np.dtype(descr).itemsize
        except (TypeError, ValueError, SyntaxError):
            declared = -1
        exact = 0 <= declared <= 4096 and draw(st.booleans())
        data = bytes(declared) if exact else draw(st.binary(max_size=64))
        return name, npy_bytes(descr, shape, draw(st.booleans()), data, draw(st.sampled_from([1, 2, 3])))
    if kind == "meta":
        meta = draw(st.fixed_dictionaries({"format": st.just("fusedrnn.io/1"), "tree": JSON})
                    | JSON)
        text = json.dumps(meta)
    else:  # nested around MAX_DEPTH (100), and far too deep to parse
        depth = draw(st.sampled_from([99, 100, 101, 5000]))
        text = json.dumps({"format": "fusedrnn.io/1", "tree": None}).replace(
            "null", "[" * depth + "]" * depth)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array(text), allow_pickle=False)
    return "__fusedrnn__.npy", buffer.getvalue()


@fuzz(100)
@given(members=st.lists(npz_members(), max_size=4),
       compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_load_of_a_malformed_npz_names_the_file(members, compression, fuzz_dir):
    """Archives of random members (any entry name, .npy headers of any descr, shape and size,
    descriptions of any JSON, nested to any depth): a plain tree or ValueError naming the file."""
    path = fuzz_dir / "malformed.npz"
    with zipfile.ZipFile(path, "w", compression) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's on duplicate names: a case of its own here
        for name, data in members:
            archive.writestr(name, data)
    assert_loads_or_names_the_file(path)


@fuzz(60)
@given(tree=TREES, max_bytes=st.integers(-5, 2 ** 12) | st.sampled_from(
    [None, True, 1.5, "100", 10 ** 30]))
def test_load_max_bytes_bounds_the_arrays(tree, max_bytes, fuzz_dir):
    """A file loads under ``max_bytes`` exactly when its arrays fit (one byte at least per
    element); else ValueError naming the file; a max_bytes that is not a count is named."""
    path = fuzz_dir / "bounded.npz"
    fr.save(tree, path)
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                  or max_bytes < 0):
        assert_raises_named(("max_bytes",), lambda: fr.load(path, max_bytes=max_bytes))
        return
    with np.load(path, allow_pickle=False) as stored:
        total = sum(stored[k].size * max(stored[k].dtype.itemsize, 1) for k in stored.files)
    if max_bytes is None or total <= max_bytes:
        assert same_tree(tree, fr.load(path, max_bytes=max_bytes))
    else:
        with pytest.raises(ValueError, match="over the limit") as raised:
            fr.load(path, max_bytes=max_bytes)
        assert str(path) in str(raised.value)
