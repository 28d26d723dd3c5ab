"""fusedrnn.functional.matmul (csrc/cpu/matmul.cpp): op(a) @ op(b) on the kernels' threads, for
fusedrnn's own dense layers, held to NumPy's product."""
import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn import _C
from fusedrnn import functional as F


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("M,K,N", [(3, 4, 5), (300, 200, 100), (40, 500, 700), (1, 64, 1),
                                   (4096, 64, 1)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_matches_numpy(dtype, tol, M, K, N, trans_a, trans_b):
    rng = np.random.default_rng(M + K + N)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    for got in (F.matmul(a, b, trans_a, trans_b), _C.matmul(a, b, trans_a, trans_b)):
        assert got.dtype == dtype and got.shape == (M, N)
        assert np.max(np.abs(got - want)) <= tol * np.sqrt(K) * np.max(np.abs(want))


def test_matmul_leading_dimensions_views_and_empty(monkeypatch):
    # products past _POOL_MIN_MACS, so that the kernels' matmul takes them (smaller ones go to
    # NumPy's @: the test compared @ with itself)
    calls = []
    real = _C.matmul
    monkeypatch.setattr(_C, "matmul", lambda *args: calls.append(args[2:]) or real(*args))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 64, 64)).astype(np.float32)
    w = rng.standard_normal((128, 64)).astype(np.float32)
    np.testing.assert_allclose(F.matmul(x, w, trans_b=True), x @ w.T, rtol=1e-5, atol=1e-4)
    strided = x[:, ::2].reshape(-1, 64)[:, ::-1]  # not contiguous: copied first
    np.testing.assert_allclose(F.matmul(strided, w.T), strided @ w.T, rtol=1e-5, atol=1e-4)
    assert calls == [(False, True), (False, False)]
    np.testing.assert_allclose(F.matmul(x[0, 0], w, trans_b=True), x[0, 0] @ w.T, rtol=1e-5)
    assert _C.matmul(np.ones((0, 3)), np.ones((3, 4))).shape == (0, 4)
    empty_sum = _C.matmul(np.ones((2, 0)), np.ones((0, 3)))
    assert empty_sum.shape == (2, 3) and not empty_sum.any()
    # what the kernels do not take goes to NumPy's @ (mixed dtypes promote there)
    assert F.matmul(np.ones((2, 3), np.float32), np.ones((3, 2))).dtype == np.float64


def test_matmul_checks_its_arguments():
    f = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="b: expected 3 rows in op"):
        _C.matmul(f, np.ones((4, 5), np.float32))
    with pytest.raises(TypeError, match="b: expected the dtype of a"):
        _C.matmul(f, np.ones((3, 2)))
    with pytest.raises(TypeError, match="a: expected dtype float32 or float64, got int64"):
        _C.matmul(np.ones((2, 3), np.int64), np.ones((3, 2)))
    with pytest.raises(ValueError, match="a: expected a 2-D array, got 3-D"):
        _C.matmul(np.ones((2, 3, 4), np.float32), f)
    with pytest.raises(ValueError, match="b: expected a C-contiguous array"):
        _C.matmul(f, np.ones((2, 3), np.float32).T)
    with pytest.raises(TypeError, match="a: expected a numpy.ndarray"):
        _C.matmul([[1.0]], f)


def test_matmul_split_is_thread_independent_when_deterministic():
    # A product big enough to split over the team: in deterministic mode its blocks are fixed,
    # so one thread and two give the same bits.
    rng = np.random.default_rng(2)
    a = rng.standard_normal((600, 300)).astype(np.float32)
    b = rng.standard_normal((300, 500)).astype(np.float32)
    threads = fr.get_num_threads()
    fr.set_deterministic(True)
    try:
        fr.set_num_threads(1)
        one = F.matmul(a, b)
        fr.set_num_threads(2)
        two = F.matmul(a, b)
    finally:
        fr.set_deterministic(False)
        fr.set_num_threads(threads)
    assert np.array_equal(one, two)


def test_dense_layers_multiply_on_the_kernels_threads(monkeypatch):
    # fr.nn.Linear's forward and both gradients go through the kernels' matmul, not NumPy's @
    # (whose OpenBLAS pool would spin beside the kernels' team); products small enough for
    # OpenBLAS to run without its pool stay with @.
    calls = []
    real = _C.matmul
    monkeypatch.setattr(_C, "matmul", lambda *args: calls.append(args[2:]) or real(*args))
    layer = fr.nn.Linear(32, 256)  # 512 rows: 4 Mi multiply-adds a product
    x = np.random.default_rng(3).standard_normal((64, 8, 32)).astype(np.float32)
    y = layer(x)
    np.testing.assert_allclose(y, x @ layer.weight.data.T + layer.bias.data, rtol=1e-5, atol=1e-5)
    layer.backward(np.ones_like(y))
    assert calls == [(False, True), (True, False), (False, False)]
    calls.clear()
    small = fr.nn.Linear(6, 4)
    small.backward(np.ones_like(small(x[:2, :, :6].copy())))
    assert calls == []
