"""Shared test setup: the one tolerance table, the error measure, and small helpers that make
random weights and call any cell through one signature (reference or kernel alike).

Tests import the helpers directly (``from conftest import TOLERANCES, ...``)."""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

# ---------------------------------------------------------------------------- the tolerance table
# Every tolerance a test uses lives here: norm-wise relative errors, see ``relative_error``.
TOLERANCES = {
    # NumPy float64 reference vs central finite differences (eps below), float64.
    "reference_vs_finite_differences": 1e-6,
    # C++ kernels vs the float64 reference, outputs and every gradient, per kernel dtype
    # (float32 kernels are compared with the reference run on the same float32 inputs).
    "kernel_vs_reference": {np.float64: 1e-10, np.float32: 1e-5},
    # The same call with 1 thread vs 2 threads (summation order may change), per dtype.
    "threads": {np.float64: 1e-12, np.float32: 1e-5},
}
FINITE_DIFFERENCE_EPS = 1e-6

# name -> (cell, nonlinearity) for the three cells; the RNN appears once per activation
CELLS = {"rnn_tanh": ("rnn", "tanh"), "rnn_relu": ("rnn", "relu"), "lstm": ("lstm", "tanh"),
         "gru": ("gru", "tanh")}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
GRADIENT_NAMES = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")


# ---------------------------------------------------------------------------- the reference
def _load_reference():
    """fusedrnn.reference, or the same files loaded on their own when the extension (which
    ``import fusedrnn`` needs) is not built: the references are pure NumPy."""
    try:
        import fusedrnn.reference as reference
        return reference
    except ImportError:
        folder = pathlib.Path(__file__).resolve().parents[1] / "python" / "fusedrnn" / "reference"
        name = "fusedrnn_reference_standalone"
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


reference = _load_reference()


# ---------------------------------------------------------------------------- measures and makers
def relative_error(actual, expected):
    """Norm-wise relative error ||actual - expected|| / max(||actual||, ||expected||), in float64;
    0 when both are zero. None vs None is 0; None vs an array is infinite."""
    if actual is None or expected is None:
        return 0.0 if actual is None and expected is None else np.inf
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.linalg.norm(actual), np.linalg.norm(expected))
    return 0.0 if scale == 0 else float(np.linalg.norm(actual - expected) / scale)


def make_weights(rng, cell, input_size, hidden_size, bias=True, scale=None, dtype=np.float64):
    """Random (w_ih [G*H, I], w_hh [G*H, H], b_ih [G*H], b_hh [G*H]); biases None when bias=False.
    Uniform in [-scale, scale], by default PyTorch's 1/sqrt(H)."""
    G = GATES[cell]
    scale = 1.0 / np.sqrt(hidden_size) if scale is None else scale

    def uniform(*shape):
        return rng.uniform(-scale, scale, size=shape).astype(dtype)

    w_ih = uniform(G * hidden_size, input_size)
    w_hh = uniform(G * hidden_size, hidden_size)
    if not bias:
        return w_ih, w_hh, None, None
    return w_ih, w_hh, uniform(G * hidden_size), uniform(G * hidden_size)


def mixed_lengths(T, N):
    """A lengths vector [N] mixing 1, T, 0 and something in between (in that cyclic order)."""
    pattern = [1, T, 0, max(T // 2, 1)]
    return np.array([pattern[n % 4] for n in range(N)], dtype=np.int64)


def cell_forward(module, cell, nonlinearity, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *, lengths=None,
                 reverse=False, training=True, precision=None):
    """Call ``module.<cell>_forward`` (module: the reference or fusedrnn.functional) and return
    (y, h_n, c_n, ctx) for every cell, c_n None unless LSTM."""
    kwargs = dict(lengths=lengths, reverse=reverse, training=training, precision=precision)
    if cell == "lstm":
        return module.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kwargs)
    if cell == "gru":
        y, h_n, ctx = module.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, **kwargs)
    else:
        y, h_n, ctx = module.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh,
                                         nonlinearity=nonlinearity, **kwargs)
    return y, h_n, None, ctx


def cell_backward(module, cell, ctx, dy, dh_n, dc_n):
    """Call ``module.<cell>_backward``; returns a dict keyed by GRADIENT_NAMES (dc0 None unless
    LSTM)."""
    if cell == "lstm":
        grads = module.lstm_backward(ctx, dy, dh_n, dc_n)
    else:
        backward = module.gru_backward if cell == "gru" else module.rnn_backward
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = backward(ctx, dy, dh_n)
        grads = (dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh)
    return dict(zip(GRADIENT_NAMES, grads))


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


# ---------------------------------------------------------------------------- kernel problems
DTYPES = {"float64": np.float64, "float32": np.float32}


def make_problem(rng, cell, shape, dtype, bias=True, lengths="mixed"):
    """Random inputs and output gradients for one kernel call, all in ``dtype``."""
    T, N, I, H = shape
    w_ih, w_hh, b_ih, b_hh = make_weights(rng, cell, I, H, bias=bias, dtype=dtype)

    def normal(*s):
        return rng.standard_normal(s).astype(dtype)

    return dict(x=normal(T, N, I), h0=normal(N, H), c0=normal(N, H), w_ih=w_ih, w_hh=w_hh,
                b_ih=b_ih, b_hh=b_hh, dy=normal(T, N, H), dh_n=normal(N, H), dc_n=normal(N, H),
                lengths=mixed_lengths(T, N) if isinstance(lengths, str) else lengths)


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    """Runs a test on 1 and on 2 kernel threads (restored after)."""
    import fusedrnn as fr
    before = fr.get_num_threads()
    fr.set_num_threads(request.param)
    yield request.param
    fr.set_num_threads(before)


@pytest.fixture
def restore_threads():
    """The kernels' thread count as it was before the test."""
    import fusedrnn as fr
    saved = fr.get_num_threads()
    yield
    fr.set_num_threads(saved)


def random_batch(rng, N=6, S=7):
    """Token strings of lengths 1..S over tokens 3..11, 0-padded: (src [N, S], lengths)."""
    lengths = rng.integers(1, S + 1, N)
    src = rng.integers(3, 12, (N, S))
    src[np.arange(S)[None, :] >= lengths[:, None]] = 0
    return src, lengths


def copy_batch(rng, N, S=7):
    """A copy task's batch: random_batch and its targets, the same tokens then the end token 2."""
    src, lengths = random_batch(rng, N, S)
    tgt = np.zeros((N, S + 1), np.int64)
    for n in range(N):
        tgt[n, :lengths[n]] = src[n, :lengths[n]]
        tgt[n, lengths[n]] = 2
    return src, lengths, tgt


_COPY_MODELS = {}


def trained_copy_model(cell, attention, hidden_size, dtype, steps):
    """A Seq2Seq (12 tokens) trained on the copy task for `steps` Adam steps (seeded; kept for
    the session), so that its decoding is decided, not a tie."""
    from fusedrnn.nn import Seq2Seq
    from fusedrnn.optim import Adam
    key = (cell, attention, hidden_size, np.dtype(dtype).name, steps)
    if key not in _COPY_MODELS:
        model = Seq2Seq(12, 12, embed_size=8, hidden_size=hidden_size, cell=cell,
                        attention=attention, dtype=dtype, seed=7)
        opt = Adam(model.parameters(), lr=0.02)
        rng = np.random.default_rng(0)
        for _ in range(steps):
            src, lengths, tgt = copy_batch(rng, 32)
            model.zero_grad()
            model.loss(src, lengths, tgt)
            model.backward()
            opt.step()
        _COPY_MODELS[key] = model
    return _COPY_MODELS[key]
