"""The CUDA kernels (fusedrnn._C_cuda through fusedrnn.functional on CuPy arrays) against the NumPy
float64 references and against cuDNN (torch.nn on CUDA, TF32 off): forward outputs and every
gradient, odd sizes (H=97, H=401 with a partial last block, N=17), variable lengths mixing 0, 1
and T, both directions, float64 and float32, both time-loop algorithms (stepwise, persistent).

GPU tests skip cleanly without CuPy, without the CUDA build or without a visible GPU. The first
tests run everywhere: a CUDA array given to a build without the CUDA backend raises a clear error.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import (CELLS, DTYPES, TOLERANCES, cell_backward, cell_forward, make_problem,
                      reference, relative_error)

fusedrnn = pytest.importorskip("fusedrnn", reason="the extension fusedrnn._C is not built")
functional = fusedrnn.functional
from fusedrnn import cuda as fcuda  # noqa: E402  (imports on every build)

try:  # (torch's device objects are taken where a device is named)
    from torch import device as torch_device
except ImportError:
    torch_device = None


class FakeCudaArray:
    """Exposes __cuda_array_interface__ and nothing else (as a foreign CUDA array would)."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False),
                                         "version": 3}


def _call_lstm_with(x):
    w = np.zeros((8, 2), np.float32)
    return functional.lstm_forward(x, None, None, w, w)


# ---------------------------------------------------------------------------- everywhere
def test_cuda_array_without_cuda_backend_raises_clear_error(monkeypatch):
    # Pretend the CUDA extension is absent (as on a CPU-only build), whatever this build has.
    monkeypatch.setitem(sys.modules, "fusedrnn._C_cuda", None)
    monkeypatch.delattr(fusedrnn, "_C_cuda", raising=False)
    monkeypatch.setattr(fcuda, "_kernels", None)
    with pytest.raises(fcuda.CudaUnavailableError, match="CUDA backend is not built"):
        _call_lstm_with(FakeCudaArray((3, 2, 2)))
    with pytest.raises(RuntimeError, match="not built"):
        fcuda.kernels()
    with pytest.raises(TypeError, match="not built"):  # also a TypeError, as DESIGN.md asks
        fcuda.array_module()
    assert fcuda.is_available() is False


def test_cuda_array_on_this_build_is_never_silently_accepted():
    """On a CPU-only build (the usual CI), the real import path gives the clear error."""
    try:
        import fusedrnn._C_cuda  # noqa: F401
        built = True
    except ImportError:
        built = False
    if built:
        pytest.skip("this build has the CUDA backend; the GPU tests below cover it")
    with pytest.raises(fcuda.CudaUnavailableError, match="CUDA backend is not built"):
        _call_lstm_with(FakeCudaArray((3, 2, 2)))


def test_cuda_knows_every_cell_the_functional_kernels_pass():
    """(The reset-before GRU and the LayerNorm-LSTM were once refused by the CUDA path's
    own table of cells before reaching its kernels.)"""
    from fusedrnn import functional
    for cell, gates in functional.GATES.items():
        assert fcuda.GATES.get(cell) == gates, cell


def test_cuda_settings_validate_and_default_to_full_fp32():
    assert fcuda.get_allow_tf32() is False
    assert fcuda.get_algorithm() == "auto"
    with pytest.raises(TypeError, match="allow: expected a bool"):
        fcuda.set_allow_tf32("yes")
    fcuda.set_allow_tf32(np.False_)  # (a NumPy bool: "expected a bool, got bool")
    assert fcuda.get_allow_tf32() is False
    with pytest.raises(ValueError, match="algorithm|expected one of"):
        fcuda.set_algorithm("fast")
    with fcuda.options(allow_tf32=True, algorithm="stepwise"):
        assert fcuda.get_allow_tf32() is True and fcuda.get_algorithm() == "stepwise"
    assert fcuda.get_allow_tf32() is False and fcuda.get_algorithm() == "auto"


# ---------------------------------------------------------------------------- GPU setup
def _gpu_skip_reason():
    try:
        import cupy
    except ImportError:
        return "cupy is not installed"
    try:
        import fusedrnn._C_cuda  # noqa: F401
    except ImportError:
        return "fusedrnn was built without the CUDA backend"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no GPU visible"
    except Exception as exc:  # no driver, no device
        return f"no GPU visible ({type(exc).__name__})"
    return None


_SKIP = _gpu_skip_reason()
gpu = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


@pytest.fixture
def cp():
    import cupy
    return cupy


# name -> (T, N, I, H)
SHAPES = {"T1_N1_I1_H97": (1, 1, 1, 97), "T5_N4_I3_H97": (5, 4, 3, 97),
          "T7_N5_I13_H1": (7, 5, 13, 1), "T6_N1_I5_H17": (6, 1, 5, 17),
          "T9_N6_I33_H401": (9, 6, 33, 401), "T4_N17_I8_H97": (4, 17, 8, 97)}
ALGORITHMS = ("stepwise", "persistent")


def to_numpy(value):
    if value is None:
        return None
    import cupy
    return cupy.asnumpy(value)


def run(module, cell, nonlinearity, p, reverse, to_device=None, cast=None, precision=None):
    """Forward (training) then backward; returns every output and gradient as NumPy arrays."""
    def c(a):
        if a is None:
            return None
        a = a if cast is None else a.astype(cast)
        return a if to_device is None else to_device(a)

    y, h_n, c_n, ctx = cell_forward(module, cell, nonlinearity, c(p["x"]), c(p["h0"]),
                                    c(p["c0"]), c(p["w_ih"]), c(p["w_hh"]), c(p["b_ih"]),
                                    c(p["b_hh"]), lengths=p["lengths"], reverse=reverse,
                                    precision=precision)
    grads = cell_backward(module, cell, ctx, c(p["dy"]), c(p["dh_n"]),
                          c(p["dc_n"]) if cell == "lstm" else None)
    out = dict(grads, y=y, h_n=h_n, c_n=c_n)
    return {k: (to_numpy(v) if to_device is not None else v) for k, v in out.items()}


def assert_errors_below(ours, oracle, tolerance, what=""):
    for name, value in ours.items():
        assert (value is None) == (oracle[name] is None), name
    errors = {name: relative_error(ours[name], oracle[name]) for name in ours}
    assert max(errors.values()) <= tolerance, (what, errors)
    return errors


# ---------------------------------------------------------------------------- GPU vs reference
@gpu
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, "mixed"], ids=["full", "lengths"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_cuda_matches_reference(name, shape_name, lengths, reverse, dtype_name, algorithm, rng,
                                cp):
    cell, nonlinearity = CELLS[name]
    dtype = DTYPES[dtype_name]
    T, N, I, H = SHAPES[shape_name]
    if algorithm == "persistent":
        assert fcuda.persistent_forward_fits(cell, T, N, I, H, dtype, nonlinearity)
    p = make_problem(rng, cell, SHAPES[shape_name], dtype, lengths=lengths)
    with fcuda.options(algorithm=algorithm):
        ours = run(functional, cell, nonlinearity, p, reverse, to_device=cp.asarray)
        # inference mode: the same outputs, no context
        xd = {k: (None if v is None or k == "lengths" else cp.asarray(v)) for k, v in p.items()}
        y, h_n, c_n, ctx = cell_forward(functional, cell, nonlinearity, xd["x"], xd["h0"],
                                        xd["c0"], xd["w_ih"], xd["w_hh"], xd["b_ih"], xd["b_hh"],
                                        lengths=p["lengths"], reverse=reverse, training=False)
    assert ctx is None
    assert isinstance(y, cp.ndarray) and y.dtype == dtype
    oracle = run(reference, cell, nonlinearity, p, reverse, cast=np.float64)
    for key, value in ours.items():
        if value is not None:
            assert value.dtype == dtype and value.shape == oracle[key].shape, key
    assert_errors_below(ours, oracle, TOLERANCES["kernel_vs_reference"][dtype])
    tolerance = TOLERANCES["kernel_vs_reference"][dtype]
    assert relative_error(to_numpy(y), ours["y"]) <= tolerance
    assert relative_error(to_numpy(h_n), ours["h_n"]) <= tolerance
    if cell == "lstm":
        assert relative_error(to_numpy(c_n), ours["c_n"]) <= tolerance


@gpu
@pytest.mark.parametrize("name", list(CELLS))
def test_cuda_without_bias_matches_reference(name, rng, cp):
    cell, nonlinearity = CELLS[name]
    p = make_problem(rng, cell, (5, 4, 3, 97), np.float64, bias=False)
    ours = run(functional, cell, nonlinearity, p, False, to_device=cp.asarray)
    oracle = run(reference, cell, nonlinearity, p, False)
    assert ours["db_ih"] is None and ours["db_hh"] is None
    assert_errors_below(ours, oracle, TOLERANCES["kernel_vs_reference"][np.float64])


@gpu
@pytest.mark.parametrize("H", [512, 1024])
@pytest.mark.parametrize("name", list(CELLS))
def test_persistent_matches_stepwise_at_benchmark_sizes(name, H, rng, cp):
    """Several hidden units per block (H > number of SMs), N=8, float32: the persistent kernels
    agree with the stepwise path and with the float64 reference."""
    cell, nonlinearity = CELLS[name]
    shape = (24, 8, 64, H)
    if not fcuda.persistent_forward_fits(cell, *shape, np.float32, nonlinearity):
        pytest.skip("the persistent kernel does not fit this device for this size")
    p = make_problem(rng, cell, shape, np.float32, lengths=np.array([24, 1, 0, 12, 24, 7, 24, 3]))
    tolerance = TOLERANCES["kernel_vs_reference"][np.float32]
    if not fcuda.persistent_backward_fits(cell, *shape, np.float32, nonlinearity):
        # (LSTM H=1024: one step's gate gradients of the batch exceed shared memory) forward
        # only; forced persistent training refuses clearly.
        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
        outputs = {}
        for algorithm in ALGORITHMS:
            with fcuda.options(algorithm=algorithm):
                y, h_n, c_n, _ = cell_forward(functional, cell, nonlinearity,
                                              *(cp.asarray(p[k]) for k in names),
                                              lengths=p["lengths"], training=False)
            outputs[algorithm] = dict(y=to_numpy(y), h_n=to_numpy(h_n), c_n=to_numpy(c_n))
        y, h_n, c_n, _ = cell_forward(reference, cell, nonlinearity,
                                      *(p[k].astype(np.float64) for k in names),
                                      lengths=p["lengths"], training=False)
        assert_errors_below(outputs["persistent"], outputs["stepwise"], tolerance, "vs stepwise")
        assert_errors_below(outputs["persistent"], dict(y=y, h_n=h_n, c_n=c_n), tolerance,
                            "vs reference")
        with fcuda.options(algorithm="persistent"), pytest.raises(RuntimeError,
                                                                  match="does not fit"):
            run(functional, cell, nonlinearity, p, False, to_device=cp.asarray)
        return
    results = {}
    for algorithm in ALGORITHMS:
        with fcuda.options(algorithm=algorithm):
            results[algorithm] = run(functional, cell, nonlinearity, p, False,
                                     to_device=cp.asarray)
    oracle = run(reference, cell, nonlinearity, p, False, cast=np.float64)
    assert_errors_below(results["persistent"], results["stepwise"], tolerance, "vs stepwise")
    assert_errors_below(results["persistent"], oracle, tolerance, "vs reference")


@gpu
def test_persistent_refuses_what_does_not_fit(rng, cp):
    shape = (2, 4096, 8, 1024)  # the whole state of 4096 samples cannot sit in shared memory
    assert not fcuda.persistent_forward_fits("lstm", *shape, np.float32)
    p = make_problem(rng, "lstm", shape, np.float32, lengths=None)
    with fcuda.options(algorithm="persistent"), pytest.raises(RuntimeError, match="does not fit"):
        run(functional, "lstm", "tanh", p, False, to_device=cp.asarray)


@gpu
def test_tf32_is_opt_in(rng, cp):
    """TF32 GEMMs stay within ~1e-2 of the float64 reference; the default is full fp32."""
    p = make_problem(rng, "lstm", (6, 64, 256, 256), np.float32, lengths=None)
    oracle = run(reference, "lstm", "tanh", p, False, cast=np.float64)
    with fcuda.options(allow_tf32=True):
        tf32 = run(functional, "lstm", "tanh", p, False, to_device=cp.asarray)
    assert_errors_below(tf32, oracle, 1e-2, "tf32")
    fp32 = run(functional, "lstm", "tanh", p, False, to_device=cp.asarray)
    assert_errors_below(fp32, oracle, TOLERANCES["kernel_vs_reference"][np.float32], "fp32")


@gpu
def test_runs_on_the_current_cupy_stream(rng, cp):
    p = make_problem(rng, "gru", (8, 3, 5, 97), np.float64)
    expected = run(functional, "gru", "tanh", p, True, to_device=cp.asarray)
    with cp.cuda.Stream(non_blocking=True) as stream:
        got = run(functional, "gru", "tanh", p, True, to_device=cp.asarray)
        stream.synchronize()
    assert_errors_below(got, expected, 1e-14)


@gpu
def test_accepts_torch_cuda_tensors_and_dlpack(rng, cp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    p = make_problem(rng, "lstm", (5, 3, 4, 17), np.float64, lengths=None)
    expected = run(functional, "lstm", "tanh", p, False, to_device=cp.asarray)
    got = run(functional, "lstm", "tanh", p, False,
              to_device=lambda a: torch.from_numpy(a).cuda())
    assert_errors_below(got, expected, 1e-14, "torch tensors")
    tensor = torch.from_numpy(p["x"]).cuda()
    assert cp.allclose(fcuda.as_cupy(tensor), cp.asarray(p["x"]))

    class DLPackOnly:
        def __init__(self, t):
            self._t = t

        def __dlpack__(self, *args, **kwargs):
            return self._t.__dlpack__(*args, **kwargs)

        def __dlpack_device__(self):
            return self._t.__dlpack_device__()

    assert cp.array_equal(fcuda.as_cupy(DLPackOnly(tensor)), cp.asarray(p["x"]))


@gpu
def test_bad_device_arguments_raise(rng, cp):
    p = make_problem(rng, "lstm", (3, 2, 4, 5), np.float32, lengths=None)
    x = cp.asarray(p["x"])
    w_ih, w_hh = cp.asarray(p["w_ih"]), cp.asarray(p["w_hh"])
    with pytest.raises(TypeError, match="w_ih"):
        functional.lstm_forward(x, None, None, w_ih.astype(cp.float64), w_hh)
    with pytest.raises(ValueError, match="w_ih"):
        functional.lstm_forward(x, None, None, w_ih[:, :3], w_hh)
    with pytest.raises(TypeError, match="w_ih"):
        functional.lstm_forward(x, None, None, p["w_ih"], w_hh)  # host array with a device x
    with pytest.raises(ValueError, match="lengths"):
        functional.lstm_forward(x, None, None, w_ih, w_hh, lengths=np.array([4, 1]))


# ---------------------------------------------------------------------------- GPU vs cuDNN
def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@gpu
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_cuda_matches_cudnn(name, dtype_name, with_lengths, rng, cp):
    torch = _torch_cuda()
    if torch is None:
        pytest.skip("torch with CUDA is not available")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cell, nonlinearity = CELLS[name]
    dtype = DTYPES[dtype_name]
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    T, N, I, H = 11, 6, 13, 97
    lengths = np.array([11, 1, 5, 11, 2, 8]) if with_lengths else None
    p = make_problem(rng, cell, (T, N, I, H), dtype, lengths=lengths)
    ours = run(functional, cell, nonlinearity, p, False, to_device=cp.asarray)

    kwargs = dict(nonlinearity=nonlinearity) if cell == "rnn" else {}
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        I, H, **kwargs).to(device="cuda", dtype=tdtype)
    with torch.no_grad():
        for tname, key in (("weight_ih_l0", "w_ih"), ("weight_hh_l0", "w_hh"),
                           ("bias_ih_l0", "b_ih"), ("bias_hh_l0", "b_hh")):
            getattr(module, tname).copy_(torch.from_numpy(p[key]))

    def t(a, grad=False):
        return torch.tensor(a, device="cuda", dtype=tdtype, requires_grad=grad)

    x, h0, c0 = t(p["x"], True), t(p["h0"][None], True), t(p["c0"][None], True)
    state = (h0, c0) if cell == "lstm" else h0
    if with_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.from_numpy(lengths),
                                                         enforce_sorted=False)
        out_packed, final = module(packed, state)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, total_length=T)
    else:
        y, final = module(x, state)
    h_n, c_n = final if cell == "lstm" else (final, None)
    loss = (y * t(p["dy"])).sum() + (h_n * t(p["dh_n"][None])).sum()
    if cell == "lstm":
        loss = loss + (c_n * t(p["dc_n"][None])).sum()
    loss.backward()

    def host(v):
        return v.detach().cpu().numpy()

    cudnn = dict(y=host(y), h_n=host(h_n)[0], c_n=host(c_n)[0] if cell == "lstm" else None,
                 dx=host(x.grad), dh0=host(h0.grad)[0],
                 dc0=host(c0.grad)[0] if cell == "lstm" else None,
                 dw_ih=host(module.weight_ih_l0.grad), dw_hh=host(module.weight_hh_l0.grad),
                 db_ih=host(module.bias_ih_l0.grad), db_hh=host(module.bias_hh_l0.grad))
    # cuDNN is one more implementation at the same precision: ours and it each sit within the
    # kernel tolerance of the truth, so they sit within twice that of each other.
    assert_errors_below(ours, cudnn, 2 * TOLERANCES["kernel_vs_reference"][dtype], "vs cuDNN")


# ---------------------------------------------------------------------------- layers: device=
LAYERS = {"rnn_relu": lambda **kw: fusedrnn.nn.RNN(nonlinearity="relu", **kw),
          "lstm": lambda **kw: fusedrnn.nn.LSTM(**kw), "gru": lambda **kw: fusedrnn.nn.GRU(**kw)}


def test_layer_device_argument_validates():
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        fusedrnn.nn.LSTM(3, 4, device="tpu")
    with pytest.raises(TypeError, match="device"):
        fusedrnn.nn.GRU(3, 4, device=0)
    m = fusedrnn.nn.RNN(3, 4)
    assert m.device == "cpu" and all(p.device == "cpu" for p in m.parameters())
    assert m.to("cpu") is m


@pytest.mark.parametrize("name", list(LAYERS))
def test_cuda_layer_without_cuda_backend_raises_clear_error(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "fusedrnn._C_cuda", None)
    monkeypatch.delattr(fusedrnn, "_C_cuda", raising=False)
    with pytest.raises(fcuda.CudaUnavailableError, match="CUDA backend is not built"):
        LAYERS[name](input_size=3, hidden_size=4, device="cuda")
    m = LAYERS[name](input_size=3, hidden_size=4)
    with pytest.raises(fcuda.CudaUnavailableError, match="CUDA backend is not built"):
        m.to("cuda")
    assert m.device == "cpu" and all(isinstance(p.data, np.ndarray) for p in m.parameters())


def test_no_cuda_device_is_a_clear_error_and_cuda_arrays_save_as_host_arrays(monkeypatch,
                                                                              tmp_path):
    """CuPy without a device gave CuPy's raw error at the first allocation, and the extension's
    device queries "driver version is insufficient": CudaUnavailableError now (what a
    fallback to the CPU catches). fr.cuda is there after import fusedrnn (it was not). A CUDA
    model's optimizer moments are saved as host arrays (fr.save refused them)."""
    import types
    assert fusedrnn.cuda is fcuda

    class NoDevice(Exception):
        pass

    def count():
        raise NoDevice("cudaErrorNoDevice: no CUDA-capable device is detected")
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=count)))
    monkeypatch.setattr(fcuda, "_cupy", lambda: fake)
    monkeypatch.setattr(fcuda, "_device_seen", False)
    with pytest.raises(fcuda.CudaUnavailableError, match="no usable CUDA device"):
        fcuda.array_module()
    if not fcuda.is_available():  # (the extension's own device queries, where it is built)
        import importlib
        try:
            importlib.import_module("fusedrnn._C_cuda")
        except ImportError:
            pass
        else:
            with pytest.raises(fcuda.CudaUnavailableError, match="no usable CUDA device"):
                fcuda.device_summary()
    lstm = fusedrnn.nn.LSTM(2, 2)
    opt = fusedrnn.optim.Adam(lstm.parameters())
    moment = FakeCudaArray((3,))
    moment.get = lambda: np.ones(3, np.float32)
    moment.copy = lambda: moment
    opt.state[next(iter(lstm.parameters()))] = {"step": 1, "exp_avg": moment}
    fusedrnn.save({"optimizer": opt}, tmp_path / "c.npz")
    saved = fusedrnn.load(tmp_path / "c.npz")["optimizer"]["state"][0]["exp_avg"]
    np.testing.assert_array_equal(saved, np.ones(3, np.float32))
    for device in ("cuda:0", torch_device("cpu") if torch_device else "cpu"):
        if device == "cuda:0":
            with pytest.raises(ValueError, match="CuPy's current device; pass 'cuda'"):
                lstm.to(device)
        else:
            assert lstm.to(device) is lstm


def test_cuda_layer_on_this_build_is_clear():
    if _SKIP is None:
        pytest.skip("this build has a usable CUDA backend; the GPU layer tests cover it")
    with pytest.raises(fcuda.CudaUnavailableError):
        fusedrnn.nn.LSTM(3, 4, device="cuda")


@gpu
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_cuda_layer_matches_cpu_layer(name, algorithm, cp):
    """A 2-layer bidirectional batch_first layer with dropout and lengths, float64: the CUDA layer
    gives the CPU layer's outputs, input and state gradients and parameter gradients."""
    kw = dict(input_size=5, hidden_size=33, num_layers=2, bidirectional=True, batch_first=True,
              dropout=0.25, dtype=np.float64, seed=3)
    cpu_layer = LAYERS[name](**kw)
    gpu_layer = LAYERS[name](**kw, device="cuda")
    assert gpu_layer.device == "cuda" and "device='cuda'" in repr(gpu_layer)
    for (n1, p1), (n2, p2) in zip(cpu_layer.named_parameters(), gpu_layer.named_parameters()):
        assert n1 == n2 and isinstance(p2.data, cp.ndarray)
        assert np.array_equal(p1.data, cp.asnumpy(p2.data))
    rng = np.random.default_rng(1)
    N, T, H = 4, 7, 33
    x = rng.standard_normal((N, T, 5))
    lengths = np.array([7, 0, 3, 1])
    lstm = name == "lstm"
    h0 = rng.standard_normal((4, N, H))
    hx = (h0, rng.standard_normal((4, N, H))) if lstm else h0
    dout = rng.standard_normal((N, T, 2 * H))
    dh = rng.standard_normal((4, N, H))
    dhx = (dh, rng.standard_normal((4, N, H))) if lstm else dh

    def dev(v):
        return tuple(cp.asarray(a) for a in v) if isinstance(v, tuple) else cp.asarray(v)

    def host(v):
        return tuple(cp.asnumpy(a) for a in v) if isinstance(v, tuple) else cp.asnumpy(v)

    cpu_layer.manual_seed(7)  # the same dropout masks on both devices
    gpu_layer.manual_seed(7)
    out_c, st_c = cpu_layer(x, hx, lengths=lengths)
    dx_c, dst_c = cpu_layer.backward(dout, dhx)
    with fcuda.options(algorithm=algorithm):
        out_g, st_g = gpu_layer(dev(x), dev(hx), lengths=cp.asarray(lengths))
        assert isinstance(out_g, cp.ndarray) and out_g.shape == out_c.shape
        dx_g, dst_g = gpu_layer.backward(dev(dout), dev(dhx))
    tol = TOLERANCES["kernel_vs_reference"][np.float64]
    assert relative_error(cp.asnumpy(out_g), out_c) <= tol
    for a, b in zip(np.atleast_1d(host(st_g)), np.atleast_1d(st_c)):
        assert relative_error(np.asarray(a), np.asarray(b)) <= tol
    assert relative_error(cp.asnumpy(dx_g), dx_c) <= tol
    for a, b in zip(np.atleast_1d(host(dst_g)), np.atleast_1d(dst_c)):
        assert relative_error(np.asarray(a), np.asarray(b)) <= tol
    for (n1, p1), (_, p2) in zip(cpu_layer.named_parameters(), gpu_layer.named_parameters()):
        assert isinstance(p2.grad, cp.ndarray), n1
        assert relative_error(cp.asnumpy(p2.grad), p1.grad) <= tol, n1
    # gradients accumulate (+=) on the device too
    gpu_layer.manual_seed(7)
    gpu_layer(dev(x), dev(hx), lengths=lengths)
    gpu_layer.backward(dev(dout), dev(dhx))
    first = next(iter(cpu_layer.parameters()))
    assert relative_error(cp.asnumpy(next(iter(gpu_layer.parameters())).grad),
                          2 * first.grad) <= tol
    # eval mode: inference on the device, unbatched input too
    gpu_layer.eval()
    cpu_layer.eval()
    y_g, _ = gpu_layer(dev(x[0]))
    y_c, _ = cpu_layer(x[0])
    assert isinstance(y_g, cp.ndarray) and relative_error(cp.asnumpy(y_g), y_c) <= tol


@gpu
def test_cuda_layer_state_dict_and_moves(cp):
    torch = _torch_cuda()
    m = fusedrnn.nn.LSTM(4, 6, num_layers=2, seed=0, device="cuda")
    sd = m.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())  # host copies, like .cpu()
    cpu = fusedrnn.nn.LSTM(4, 6, num_layers=2, seed=1)
    cpu.load_state_dict(sd)
    for (_, a), (_, b) in zip(cpu.named_parameters(), m.named_parameters()):
        assert np.array_equal(a.data, cp.asnumpy(b.data))
    # load from CuPy arrays, and from torch tensors on the GPU
    other = fusedrnn.nn.LSTM(4, 6, num_layers=2, seed=2, device="cuda")
    other.load_state_dict({k: cp.asarray(v) for k, v in sd.items()})
    assert all(isinstance(p.data, cp.ndarray) for p in other.parameters())
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in sd.items())
    if torch is not None:
        other = fusedrnn.nn.LSTM(4, 6, num_layers=2, seed=2, device="cuda")
        other.load_state_dict({k: torch.from_numpy(v).cuda() for k, v in sd.items()})
        assert all(np.array_equal(other.state_dict()[k], v) for k, v in sd.items())
    # .to moves parameters and gradients both ways; results agree
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    y_gpu, _ = m(cp.asarray(x))
    m.backward(cp.ones_like(y_gpu))
    m.to("cpu")
    assert m.device == "cpu" and all(isinstance(p.data, np.ndarray) and
                                     isinstance(p.grad, np.ndarray) for p in m.parameters())
    y_cpu, _ = m(x)
    assert relative_error(cp.asnumpy(y_gpu), y_cpu) <= 1e-5
    m.to("cuda")
    assert all(isinstance(p.data, cp.ndarray) for p in m.parameters())
    # wrong device inputs are named
    with pytest.raises(TypeError, match="x: expected a CuPy array"):
        m(x)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        cpu(cp.asarray(x))
    with pytest.raises(TypeError, match="h0: expected a CuPy array"):
        m(cp.asarray(x), (np.zeros((2, 2, 6), np.float32), cp.zeros((2, 2, 6), cp.float32)))
    with pytest.raises(TypeError, match="runs on NumPy arrays only"):
        fusedrnn.nn.Linear(3, 4).to("cuda")


@gpu
@pytest.mark.parametrize("make", [
    lambda ps: fusedrnn.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: fusedrnn.optim.Adam(ps, lr=0.01, weight_decay=0.01),
    lambda ps: fusedrnn.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True)],
    ids=["sgd_momentum", "adam", "rmsprop"])
def test_cuda_optimizers_match_the_cpu(make, cp):
    """fr.optim on a CUDA layer: its state on the device, the same steps as on the CPU (float64),
    clipping, and a state_dict that moves between devices."""
    kw = dict(input_size=3, hidden_size=8, dtype=np.float64, seed=4)
    layers = [fusedrnn.nn.GRU(**kw), fusedrnn.nn.GRU(**kw, device="cuda")]
    opts = [make(list(m.parameters())) for m in layers]
    x = np.random.default_rng(5).standard_normal((6, 2, 3))
    for _ in range(3):
        for m, opt, xs in zip(layers, opts, (x, cp.asarray(x))):
            y, _ = m(xs)
            m.backward(y)  # the gradient of sum(y**2)/2
            fusedrnn.optim.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    for (n, a), (_, b) in zip(layers[0].named_parameters(), layers[1].named_parameters()):
        assert isinstance(b.data, cp.ndarray) and relative_error(cp.asnumpy(b.data), a.data) < 1e-9, n
    states = [s for st in opts[1].state.values() for s in st.values() if hasattr(s, "shape")]
    assert states and all(isinstance(s, cp.ndarray) for s in states)
    moved = make(list(layers[0].parameters()))
    moved.load_state_dict(opts[1].state_dict())  # device state into a CPU optimizer
    assert all(isinstance(s, np.ndarray) for st in moved.state.values()
               for s in st.values() if hasattr(s, "shape"))


# ---------------------------------------------------------------------------- bench --device cuda
def test_bench_device_cuda_dispatches_and_selects_shapes(capsys):
    import argparse

    from fusedrnn import benchmark, benchmark_gpu
    ap = argparse.ArgumentParser()
    benchmark.add_arguments(ap)
    args = ap.parse_args(["--device", "cuda", "--cells", "GRU,LSTM", "--quick"])
    assert [s[0] for s in benchmark_gpu.select_shapes(args)] == ["lstm"] * 3 + ["gru"]
    args2 = ap.parse_args(["--device", "cuda", "--cells", "RNN", "--shapes", "2,3,4,5"])
    assert benchmark_gpu.select_shapes(args2) == [("rnn", 2, 3, 4, 5)]
    if _SKIP is not None:  # no GPU here: one clear line and exit status 2, no traceback
        from fusedrnn import cli
        assert cli.main(["bench", "--device", "cuda", "--cells", "GRU", "--quick"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("cupy" in err or "CUDA" in err), err
    bad = ap.parse_args(["--device", "cuda", "--precisions", "fp32,fp16"])
    with pytest.raises(ValueError, match="--precisions: expected names from fp32,tf32,bf16, "
                                         "got 'fp16'"):
        benchmark.run(bad)


@gpu
def test_bench_device_cuda_bf16_rows(tmp_path, capsys):
    """--precisions bf16: ours with bfloat16 products against cuDNN under torch.autocast."""
    from fusedrnn import cli
    path = tmp_path / "g.json"
    assert cli.main(["bench", "--device", "cuda", "--cells", "LSTM", "--shapes", "4,8,16,32",
                     "--precisions", "bf16", "--budget", "0.05", "--json", str(path)]) == 0
    import json
    (row,) = json.loads(path.read_text())["rows"]
    assert row["precision"] == "bf16" and row["ours_infer_ms"] > 0
    assert 1e-5 < row["rel_diff_y"] < 2e-2  # bfloat16 products against cuDNN's float32


@gpu
@pytest.mark.parametrize("exchange", ["barrier", "flagged"])
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_persistent_exchange_modes_match_stepwise(name, exchange, rng, cp, monkeypatch):
    """float32 persistent kernels with either exchange between blocks (the default grid barrier,
    or FUSEDRNN_CUDA_EXCHANGE=flagged words) against the stepwise loop, forward and backward,
    several hidden units per block and lengths."""
    monkeypatch.setenv("FUSEDRNN_CUDA_EXCHANGE", exchange)
    cell, nonlinearity = CELLS[name]
    shape = (30, 16, 24, 384)
    if not (fcuda.persistent_forward_fits(cell, *shape, np.float32, nonlinearity) and
            fcuda.persistent_backward_fits(cell, *shape, np.float32, nonlinearity)):
        pytest.skip("the persistent kernels do not fit this device for this size")
    p = make_problem(rng, cell, shape, np.float32, lengths="mixed")
    results = {}
    for algorithm in ALGORITHMS:
        with fcuda.options(algorithm=algorithm):
            results[algorithm] = run(functional, cell, nonlinearity, p, True, to_device=cp.asarray)
    assert_errors_below(results["persistent"], results["stepwise"],
                        TOLERANCES["kernel_vs_reference"][np.float32], exchange)


# ---------------------------------------------------------------------------- bfloat16 products
def test_bf16_workspaces_and_refusals_without_a_gpu():
    """The bfloat16 buffers are sized on the host (no device needed): they come after the
    float32 workspace; bfloat16 products of a float64 call are refused by name."""
    ext = pytest.importorskip("fusedrnn._C_cuda", reason="built without the CUDA backend")
    T, N, I, H = 10, 4, 8, 32
    for cell in ("lstm", "gru", "rnn"):
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        fwd = ext.forward_workspace_size(cell, "tanh", T, N, I, H, True)
        bwd = ext.backward_workspace_size(cell, "tanh", T, N, I, H)
        # x, W_ih, W_hh, h as bfloat16 (2 bytes, in 4-byte elements)
        assert ext.forward_workspace_size(cell, "tanh", T, N, I, H, True, True) >= \
            fwd + (T * N * I + G * H * I + G * H * H + N * H) // 2
        # the gate gradients, W_ih, W_hh, x, h_prev (the weight gradients' operands)
        assert ext.backward_workspace_size(cell, "tanh", T, N, I, H, True) >= \
            bwd + (T * N * G * H + G * H * I + G * H * H + T * N * I + T * N * H) // 2
    with pytest.raises(ValueError, match="bf16: bfloat16 products need dtype 'float32'"):
        ext.recurrent_forward("lstm", "tanh", "float64", T, N, I, H, (0,) * 18, False, -1, 0,
                              False, 0, True)
    with pytest.raises(ValueError, match="bf16: bfloat16 products need dtype 'float32'"):
        ext.persistent_backward_fits("gru", "tanh", "float64", T, N, I, H, True)


def test_projection_workspace_and_refusals_without_a_gpu():
    """The LSTM projection's backward room (dh and m of every step, two [N, H] rows) and the
    LayerNorm-LSTM's are sized on the host; a projection of another cell, or P >= H, is refused
    by name."""
    ext = pytest.importorskip("fusedrnn._C_cuda", reason="built without the CUDA backend")
    T, N, I, H, P = 10, 4, 8, 32, 8
    assert ext.backward_workspace_size("lstm", "tanh", T, N, I, H, False, P) >= \
        ext.backward_workspace_size("lstm", "tanh", T, N, I, H) + T * N * (P + H) + 2 * N * H
    for cell, bad_p in (("gru", P), ("lstm", H), ("lstm", -1)):
        with pytest.raises(ValueError, match="P: expected 0, or 0 < P < H"):
            ext.forward_workspace_size(cell, "tanh", T, N, I, H, True, False, bad_p)
    # the LayerNorm-LSTM: dgx and dgh apart (as a GRU's), then da and d_cn of every step
    assert ext.backward_workspace_size("layernorm_lstm", "tanh", T, N, I, H) >= \
        ext.backward_workspace_size("lstm", "tanh", T, N, I, H) + T * N * 4 * H + T * N * 5 * H


def _bf16_checks(ours, expected, fp32, what):
    """ours against the float64 reference with the same bfloat16 rounding (float32 sums; a rare
    flip of a rounding moves a value by about one bfloat16 step) and not the float32 result."""
    for name, value in ours.items():
        if value is None:
            continue
        e = expected[name]
        scale = max(np.abs(e).max(), 1e-30)
        assert np.abs(value - e).max() <= 2.0 ** -7 * scale, (what, name)
        assert np.median(np.abs(value - e)) <= 1e-5 * scale, (what, name)
        if name in ("y", "dx", "dh0", "dw_hh"):
            assert np.abs(value - fp32[name]).max() > 1e-6 * scale, (what, name)


@gpu
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", [(9, 6, 33, 401), (25, 5, 12, 40), (4, 17, 8, 97),
                                   (6, 1, 5, 17)], ids=str)
@pytest.mark.parametrize("name", list(CELLS))
def test_cuda_bf16_matches_the_bf16_reference(name, shape, reverse, algorithm, rng, cp):
    """Under bfloat16 products the CUDA kernels (cuBLAS bfloat16 GEMMs stepwise, warp MMAs in the
    persistent kernels) give the reference's results with the same rounding of x, W_ih, h, W_hh
    (and in the backward of the gate gradients), forward and every gradient; odd sizes (padding
    of the 16 x 16 tiles), lengths, both directions."""
    cell, nonlinearity = CELLS[name]
    if algorithm == "persistent" and not (
            fcuda.persistent_forward_fits(cell, *shape, np.float32, nonlinearity, "bfloat16")
            and fcuda.persistent_backward_fits(cell, *shape, np.float32, nonlinearity,
                                               "bfloat16")):
        pytest.skip("the persistent kernels do not hold this size on this device")
    p = make_problem(rng, cell, shape, np.float32, lengths="mixed")
    with fcuda.options(algorithm=algorithm):
        ours = run(functional, cell, nonlinearity, p, reverse, to_device=cp.asarray,
                   precision="bfloat16")
        with fusedrnn.autocast("bfloat16"):  # autocast reaches the CUDA kernels too
            auto = run(functional, cell, nonlinearity, p, reverse, to_device=cp.asarray)
    for key in ours:
        np.testing.assert_array_equal(auto[key], ours[key], err_msg=key)
    expected = run(reference, cell, nonlinearity, p, reverse, cast=np.float64,
                   precision="bfloat16")
    fp32 = run(reference, cell, nonlinearity, p, reverse, cast=np.float64)
    _bf16_checks(ours, expected, fp32, algorithm)


@gpu
@pytest.mark.parametrize("H", [512, 1024])
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_cuda_bf16_persistent_matches_stepwise(name, H, rng, cp):
    """Benchmark sizes (several hidden units per block, 16-sample tiles with N=8): the persistent
    bfloat16 kernels agree with the stepwise cuBLAS path and the reference (same rounded
    operands; fp32 sums in another order), the backward where it fits too; and the bfloat16
    forward kernel holds every size the float32 one holds (W_hh at half the bytes)."""
    cell, nonlinearity = CELLS[name]
    shape = (24, 8, 64, H)
    fits = [fcuda.persistent_forward_fits(cell, *shape, np.float32, nonlinearity, "bfloat16"),
            fcuda.persistent_backward_fits(cell, *shape, np.float32, nonlinearity, "bfloat16")]
    if fcuda.persistent_forward_fits(cell, *shape, np.float32, nonlinearity):
        assert fits[0]
    if not fits[0]:
        pytest.skip("the persistent bfloat16 kernel does not hold this size on this device")
    p = make_problem(rng, cell, shape, np.float32, lengths="mixed")
    expected = run(reference, cell, nonlinearity, p, False, cast=np.float64, precision="bfloat16")
    fp32 = run(reference, cell, nonlinearity, p, False, cast=np.float64)
    d = {k: (None if v is None or k == "lengths" else cp.asarray(v)) for k, v in p.items()}
    for algorithm in ALGORITHMS:
        with fcuda.options(algorithm=algorithm):
            y, h_n, c_n, _ = cell_forward(functional, cell, nonlinearity, d["x"], d["h0"],
                                          d["c0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                          lengths=p["lengths"], training=False,
                                          precision="bfloat16")
            ours = {"y": to_numpy(y), "h_n": to_numpy(h_n), "c_n": to_numpy(c_n)}
            _bf16_checks(ours, expected, fp32, algorithm + " inference")
            if algorithm == "stepwise" or fits[1]:
                ours = run(functional, cell, nonlinearity, p, False, to_device=cp.asarray,
                           precision="bfloat16")
                _bf16_checks(ours, expected, fp32, algorithm + " training")


@gpu
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cuda_peephole_lstm_matches_reference(reverse, dtype_name, algorithm, rng, cp):
    """LSTM peepholes (w_ph [3H]: i, f from c_{t-1}, o from c_t) in both time loops, forward
    and every gradient, dw_ph included, with lengths."""
    dtype = DTYPES[dtype_name]
    T, N, I, H = 9, 6, 33, 97
    p = make_problem(rng, "lstm", (T, N, I, H), dtype, lengths="mixed")
    w_ph = (rng.uniform(-0.5, 0.5, 3 * H)).astype(dtype)

    def run_peep(module, to_device=None):
        c = (lambda a: a) if to_device is None else to_device
        y, h_n, c_n, ctx = module.lstm_forward(
            c(p["x"]), c(p["h0"]), c(p["c0"]), c(p["w_ih"]), c(p["w_hh"]), c(p["b_ih"]),
            c(p["b_hh"]), lengths=p["lengths"], reverse=reverse, training=True, w_ph=c(w_ph))
        grads = module.lstm_backward(ctx, c(p["dy"]), c(p["dh_n"]), c(p["dc_n"]))
        out = dict(zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_ph"), grads),
                   y=y, h_n=h_n, c_n=c_n)
        return {k: to_numpy(v) if to_device is not None else v for k, v in out.items()}

    with fcuda.options(algorithm=algorithm):
        ours = run_peep(functional, cp.asarray)
    oracle = run_peep(reference)
    assert_errors_below(ours, oracle, TOLERANCES["kernel_vs_reference"][dtype])


@gpu
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", [(9, 6, 33, 97), (4, 17, 8, 401), (1, 1, 1, 17)],
                         ids=lambda s: "T{}_N{}_I{}_H{}".format(*s))
def test_cuda_reset_before_gru_matches_reference(shape, reverse, dtype_name, rng, cp):
    """The GRU with reset_after=False (its two-phase step, stepwise), forward and every
    gradient, with lengths; it has no persistent kernel and says so."""
    dtype = DTYPES[dtype_name]
    p = make_problem(rng, "gru", shape, dtype, lengths="mixed")

    def run_rb(module, to_device=None):
        c = (lambda a: a) if to_device is None else to_device
        y, h_n, ctx = module.gru_forward(c(p["x"]), c(p["h0"]), c(p["w_ih"]), c(p["w_hh"]),
                                         c(p["b_ih"]), c(p["b_hh"]), lengths=p["lengths"],
                                         reverse=reverse, training=True, reset_after=False)
        grads = module.gru_backward(ctx, c(p["dy"]), c(p["dh_n"]))
        out = dict(zip(("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"), grads), y=y, h_n=h_n)
        return {k: to_numpy(v) if to_device is not None else v for k, v in out.items()}

    ours = run_rb(functional, cp.asarray)
    assert_errors_below(ours, run_rb(reference), TOLERANCES["kernel_vs_reference"][dtype])
    with fcuda.options(algorithm="persistent"), \
            pytest.raises(RuntimeError, match="reset-before GRU and the LSTM projection have no persistent kernel"):
        run_rb(functional, cp.asarray)
    layer = fusedrnn.nn.GRU(shape[2], shape[3], reset_after=False, dtype=dtype, seed=1)
    x = p["x"].astype(dtype)
    expected, _ = layer(x)
    got, _ = layer.to("cuda")(cp.asarray(x))
    assert relative_error(to_numpy(got), expected) <= TOLERANCES["kernel_vs_reference"][dtype]


@gpu
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_cuda_lstm_projection_matches_reference(peephole, reverse, dtype_name, rng, cp):
    """torch's proj_size (w_hr [P, H], h P wide), stepwise: forward and every gradient, dw_hr
    included, with lengths; the persistent algorithm refuses it by name."""
    dtype = DTYPES[dtype_name]
    T, N, I, H, P = 9, 6, 33, 97, 20
    p = make_problem(rng, "lstm", (T, N, I, H), dtype, lengths="mixed")
    p.update(w_hh=rng.uniform(-0.3, 0.3, (4 * H, P)).astype(dtype),
             h0=rng.standard_normal((N, P)).astype(dtype),
             dy=rng.standard_normal((T, N, P)).astype(dtype),
             dh_n=rng.standard_normal((N, P)).astype(dtype))
    w_hr = rng.uniform(-0.3, 0.3, (P, H)).astype(dtype)
    w_ph = rng.uniform(-0.5, 0.5, 3 * H).astype(dtype) if peephole else None

    def run_proj(module, to_device=None):
        c = (lambda a: a) if to_device is None else (lambda a: None if a is None else to_device(a))
        y, h_n, c_n, ctx = module.lstm_forward(
            c(p["x"]), c(p["h0"]), c(p["c0"]), c(p["w_ih"]), c(p["w_hh"]), c(p["b_ih"]),
            c(p["b_hh"]), lengths=p["lengths"], reverse=reverse, training=True, w_ph=c(w_ph),
            w_hr=c(w_hr))
        grads = module.lstm_backward(ctx, c(p["dy"]), c(p["dh_n"]), c(p["dc_n"]))
        names = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh") + \
            (("dw_ph",) if peephole else ()) + ("dw_hr",)
        out = dict(zip(names, grads), y=y, h_n=h_n, c_n=c_n)
        return {k: to_numpy(v) if to_device is not None else v for k, v in out.items()}

    ours = run_proj(functional, cp.asarray)
    assert_errors_below(ours, run_proj(reference), TOLERANCES["kernel_vs_reference"][dtype])
    with fcuda.options(algorithm="persistent"), \
            pytest.raises(RuntimeError, match="LSTM projection have no persistent kernel"):
        run_proj(functional, cp.asarray)


@gpu
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
# (I >= 3: with I=1 the norm of W_ih x hardly depends on x, and float32 dx is all cancellation)
@pytest.mark.parametrize("shape", [(9, 6, 33, 97), (4, 17, 8, 300), (1, 1, 3, 17)],
                         ids=lambda s: "T{}_N{}_I{}_H{}".format(*s))
def test_cuda_layernorm_lstm_matches_reference(shape, reverse, dtype_name, rng, cp):
    """The LayerNorm-LSTM (stepwise, a block per sample: the norms as block reductions),
    forward and every gradient, dln included, with lengths; the layer on the GPU is the layer
    on the CPU."""
    dtype = DTYPES[dtype_name]
    H = shape[3]
    p = make_problem(rng, "lstm", shape, dtype, lengths="mixed")
    ln = np.concatenate([rng.uniform(0.5, 1.5, 9 * H), rng.uniform(-0.5, 0.5, H)]).astype(dtype)

    def run_ln(module, to_device=None):
        c = (lambda a: a) if to_device is None else to_device
        y, h_n, c_n, ctx = module.layernorm_lstm_forward(
            c(p["x"]), c(p["h0"]), c(p["c0"]), c(p["w_ih"]), c(p["w_hh"]), c(p["b_ih"]),
            c(p["b_hh"]), c(ln), lengths=p["lengths"], reverse=reverse, training=True)
        grads = module.layernorm_lstm_backward(ctx, c(p["dy"]), c(p["dh_n"]), c(p["dc_n"]))
        out = dict(zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dln"), grads),
                   y=y, h_n=h_n, c_n=c_n)
        return {k: to_numpy(v) if to_device is not None else v for k, v in out.items()}

    poison = cp.full(1 << 23, np.nan, dtype)  # freed to CuPy's pool: the call's new arrays
    del poison                                 # (split from it) hold NaN where never written
    ours = run_ln(functional, cp.asarray)
    assert_errors_below(ours, run_ln(reference), TOLERANCES["kernel_vs_reference"][dtype])
    layer = fusedrnn.nn.LayerNormLSTM(shape[2], H, dtype=dtype, seed=1)
    x = p["x"].astype(dtype)
    expected, _ = layer(x)
    got, _ = layer.to("cuda")(cp.asarray(x))
    assert relative_error(to_numpy(got), expected) <= TOLERANCES["kernel_vs_reference"][dtype]
