"""fr.set_deterministic(True): results independent of the thread count, bit for bit, on shapes
whose default plans differ between 1 and 2 threads (a loop split by samples, the pipelined
batch-1 loop, inputs taken into the steps' products, GEMMs split over the threads), forward and
backward, for the kernels and the layers (stacked, bidirectional). Without the flag these
calls differ between 1 and 2 threads (LSTM float32 at every shape here): the tests fail then."""
import numpy as np
import pytest

import fusedrnn as fr
from conftest import CELLS, DTYPES, cell_backward, cell_forward, make_problem
from fusedrnn import _C, functional

# (T, N, I, H): by samples (N=16), pipelined (N=1), inputs in the steps (N=8, H=256), big
# GEMMs split (N=32), decoder steps (T=2: each slice projects its own units' inputs), a short
# call (T=3): each plan is a different one on 1 and on 2 threads by default.
SHAPES = {"by_samples": (12, 16, 32, 64), "pipelined": (40, 1, 64, 64),
          "step_inputs": (6, 8, 64, 256), "split_gemms": (10, 32, 128, 128),
          "decoder_steps": (2, 16, 33, 96),
          # a short call of a batch past the table's blas_batch: its steps' products split by
          # units (OpenBLAS rounds a slice's GEMM by its shape: row kernels in these plans)
          "short_call": (3, _C.tuning()["blas_batch"] + 3, 17, 65),
          # an odd H: the inputs' projection in one call up front (1 thread) or gate by gate
          # in each slice (2): a gate's last row outside the blocks of 4 rows took another
          # order of sums (AVX-512, float32: 1 ulp)
          "odd_hidden": (3, 3, 17, 129)}
THREAD_COUNTS = (1, 2, 3)


@pytest.fixture
def deterministic():
    threads = fr.get_num_threads()
    fr.set_deterministic(True)
    yield
    fr.set_deterministic(False)
    fr.set_num_threads(threads)


def run(cell, nonlinearity, p, reverse):
    y, h_n, c_n, ctx = cell_forward(functional, cell, nonlinearity, p["x"], p["h0"], p["c0"],
                                    p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                    lengths=p["lengths"], reverse=reverse)
    grads = cell_backward(functional, cell, ctx, p["dy"], p["dh_n"],
                          p["dc_n"] if cell == "lstm" else None)
    return [y, h_n, c_n, *grads.values()]


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_kernels_do_not_depend_on_the_thread_count(name, dtype_name, shape_name, rng,
                                                   deterministic):
    cell, nonlinearity = CELLS[name]
    dtype, shape = DTYPES[dtype_name], SHAPES[shape_name]
    p = make_problem(rng, cell, shape, dtype)
    for reverse in (False, True):
        results = []
        for threads in THREAD_COUNTS:
            fr.set_num_threads(threads)
            results.append(run(cell, nonlinearity, p, reverse))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("cls", [fr.nn.LSTM, fr.nn.GRU, fr.nn.RNN])
def test_layers_do_not_depend_on_the_thread_count(cls, deterministic):
    x = np.random.default_rng(1).standard_normal((30, 8, 64)).astype(np.float32)
    results = []
    for threads in THREAD_COUNTS:
        fr.set_num_threads(threads)
        for layer in (cls(64, 64, num_layers=2, seed=2), cls(64, 64, bidirectional=True, seed=2)):
            y, _ = layer(x)
            dx, _ = layer.backward(np.ones_like(y))
            results.append((y, dx, *(q.grad.copy() for q in layer.parameters())))
    per_threads = len(results) // len(THREAD_COUNTS)
    for k in range(per_threads, len(results)):
        for a, b in zip(results[k % per_threads], results[k]):
            assert np.array_equal(a, b)


def test_flag_is_shown_and_checked():
    assert fr.get_deterministic() is False and fr.info()["deterministic"] is False
    with pytest.raises(TypeError, match="^on: expected a bool"):
        fr.set_deterministic("yes")


def test_the_torch_adapter_follows_torch_use_deterministic_algorithms():
    # torch.nn's LSTM gives the same bits on any thread count under torch's switch; the adapter
    # turns our mode on with it (and off after), but never turns off one the user set
    torch = pytest.importorskip("torch")
    frt = pytest.importorskip("fusedrnn.torch")
    torch_threads = torch.get_num_threads()
    x = torch.randn(12, 16, 32, generator=torch.Generator().manual_seed(0))  # (split by samples)
    torch.manual_seed(0)
    layer = frt.LSTM(32, 64)
    try:
        torch.use_deterministic_algorithms(True)
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            layer.zero_grad()
            y = layer(x)[0]
            y.sin().sum().backward()
            results.append([y.detach(), *(p.grad for p in layer.parameters())])
            assert fr.get_deterministic()
        for a, b in zip(*results):
            assert torch.equal(a, b)
        torch.use_deterministic_algorithms(False)
        layer(x)
        assert not fr.get_deterministic()
        fr.set_deterministic(True)  # the user's: stays
        torch.use_deterministic_algorithms(True)
        layer(x)
        torch.use_deterministic_algorithms(False)
        layer(x)
        assert fr.get_deterministic()
    finally:
        torch.use_deterministic_algorithms(False)
        fr.set_deterministic(False)
        torch.set_num_threads(torch_threads)
