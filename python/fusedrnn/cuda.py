"""The CUDA backend: the kernels of ``fusedrnn._C_cuda`` on CuPy arrays.

``fusedrnn.functional`` routes any array exposing ``__cuda_array_interface__`` here. This module
checks shapes and dtypes, converts inputs to C-contiguous CuPy arrays (CuPy, PyTorch CUDA tensors,
anything with ``__cuda_array_interface__`` or DLPack), allocates the outputs and the workspace,
and hands their device addresses to the extension with CuPy's current stream.

Importing this module always works; on a build without the CUDA extension, or without CuPy,
:func:`kernels` and :func:`array_module` raise :class:`CudaUnavailableError` saying which.

Numerics: float32 GEMMs run in full fp32 by default; :func:`set_allow_tf32` opts in to TF32.
Under ``fusedrnn.autocast("bfloat16")`` (or ``precision="bfloat16"``) float32 calls run every
product (W_ih x, W_hh h; in the backward dgates W_hh, dgates W_ih and the weight gradients) from
bfloat16-rounded operands on tensor cores with fp32 accumulation, as the CPU kernels do; the
gate math and the state stay fp32.
The time loops (forward and backward) run a persistent kernel for small batches when it fits on
the device and a per-step cuBLAS GEMM plus fused kernel otherwise; :func:`set_algorithm` forces
either.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .functional import GATES, check_flag  # (every cell the kernels know, the CPU's and CUDA's alike)
ALGORITHMS = {"auto": 0, "stepwise": 1, "persistent": 2}

_settings = {"allow_tf32": False, "algorithm": "auto"}


class CudaUnavailableError(RuntimeError, TypeError):
    """The CUDA backend cannot run here: the extension was not built, or CuPy is missing.
    A RuntimeError, and a TypeError too (a CUDA array given to a CPU-only build is a wrong type
    of argument there)."""


# ---------------------------------------------------------------------------- availability
def _extension():
    try:
        from . import _C_cuda
    except ImportError as exc:
        raise CudaUnavailableError(
            "fusedrnn: the CUDA backend is not built (no fusedrnn._C_cuda "
            "in this install; rebuild with nvcc and cuBLAS present, e.g. FUSEDRNN_CUDA=ON pip "
            f"install .), or it failed to load: {exc}") from exc
    return _C_cuda


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise CudaUnavailableError(
            "fusedrnn: the CUDA backend needs CuPy, which is missing: it allocates and returns "
            "CuPy arrays (pip install \"fusedrnn[cuda]\": cupy-cuda13x and nvidia-cublas)") from exc
    return cupy


def is_available() -> bool:
    """True when the CUDA extension and CuPy import and a GPU is visible."""
    try:
        _extension()
        cupy = _cupy()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


_device_seen = False  # a device was found once: not asked again


def _with_device(cupy):
    """``cupy``, once a CUDA device is visible (CudaUnavailableError otherwise, not CuPy's
    raw error from the first allocation)."""
    global _device_seen
    if not _device_seen:
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # (CuPy's CUDARuntimeError: no driver, no device)
            raise CudaUnavailableError(f"fusedrnn: no usable CUDA device ({exc})") from exc
        if count < 1:
            raise CudaUnavailableError("fusedrnn: no CUDA device is visible")
        _device_seen = True
    return cupy


def array_module():
    """CuPy, the array module of the CUDA backend (raises CudaUnavailableError if unusable:
    no extension, no CuPy, no device)."""
    _extension()
    return _with_device(_cupy())


def kernels():
    """The CUDA kernels object used by fusedrnn.functional (raises CudaUnavailableError)."""
    global _kernels
    if _kernels is None:
        _kernels = _Kernels(_extension(), _with_device(_cupy()))
    return _kernels


def _on_device(call):
    """``call()`` of the extension, a missing device or driver as CudaUnavailableError (the
    runtime's own words: "driver version is insufficient" where there is no GPU at all)."""
    try:
        return call()
    except RuntimeError as exc:
        if isinstance(exc, CudaUnavailableError) or "CUDA" not in str(exc):
            raise
        raise CudaUnavailableError(f"fusedrnn: no usable CUDA device ({exc})") from exc


def device_summary() -> str:
    """Name, compute capability and multiprocessor count of the current device."""
    ext = _extension()
    return _on_device(ext.device_summary)


# ---------------------------------------------------------------------------- settings
def set_allow_tf32(allow: bool) -> None:
    """Let float32 GEMMs use TF32 tensor cores (faster, ~1e-3 relative error). Off by default."""
    _settings["allow_tf32"] = check_flag(allow, "allow")


def get_allow_tf32() -> bool:
    """Whether float32 GEMMs may use TF32 tensor cores (see :func:`set_allow_tf32`)."""
    return _settings["allow_tf32"]


def set_algorithm(name: str) -> None:
    """Time loops: 'auto' (default), 'stepwise' or 'persistent' ('persistent' raises
    RuntimeError for a problem it cannot hold on chip)."""
    if name not in ALGORITHMS:
        raise ValueError(f"name: expected one of {sorted(ALGORITHMS)}, got {name!r}")
    _settings["algorithm"] = name


def get_algorithm() -> str:
    """The time-loop algorithm in use: 'auto', 'stepwise' or 'persistent' (see
    :func:`set_algorithm`)."""
    return _settings["algorithm"]


@contextlib.contextmanager
def options(allow_tf32=None, algorithm=None):
    """Temporarily change :func:`set_allow_tf32` / :func:`set_algorithm` (restored on exit)."""
    saved = dict(_settings)
    try:
        if allow_tf32 is not None:
            set_allow_tf32(allow_tf32)
        if algorithm is not None:
            set_algorithm(algorithm)
        yield
    finally:
        _settings.update(saved)


def persistent_forward_fits(cell, T, N, I, H, dtype=np.float32, nonlinearity="tanh",
                            precision=None) -> bool:
    """Can the persistent forward kernel hold this problem on the current device?
    ``precision="bfloat16"``: its bfloat16 form (W_hh at half the bytes: it holds more)."""
    ext = _extension()
    return bool(_on_device(lambda: ext.persistent_forward_fits(
        cell, nonlinearity, np.dtype(dtype).name, T, N, I, H, _bf16(precision))))


def persistent_backward_fits(cell, T, N, I, H, dtype=np.float32, nonlinearity="tanh",
                             precision=None) -> bool:
    """Can the persistent backward kernel hold this problem on the current device? (It needs
    the whole batch's gate gradients of one step on chip, so it fits less than the forward.)"""
    ext = _extension()
    return bool(_on_device(lambda: ext.persistent_backward_fits(
        cell, nonlinearity, np.dtype(dtype).name, T, N, I, H, _bf16(precision))))


def _bf16(precision):
    """Whether ``precision`` asks for bfloat16 products (checked; None and "float32" do not)."""
    from .amp import check_precision
    return check_precision(precision) == "bfloat16"


# ---------------------------------------------------------------------------- conversion
def as_cupy(value, name="array"):
    """A CuPy view (or copy) of a CuPy array, any ``__cuda_array_interface__`` object or a
    DLPack-capable device array."""
    cupy = array_module()
    if isinstance(value, cupy.ndarray):
        return value
    if hasattr(value, "__cuda_array_interface__"):
        return cupy.asarray(value)
    if hasattr(value, "__dlpack__"):
        return cupy.from_dlpack(value)
    raise TypeError(f"{name}: expected a CUDA array (CuPy, __cuda_array_interface__ or DLPack), "
                    f"got {type(value).__name__}")


def _address(a):
    return 0 if a is None else int(a.data.ptr)


class _Kernels:
    """recurrent_forward / recurrent_backward with the signatures of fusedrnn._C, on CuPy."""

    def __init__(self, ext, cupy):
        self._ext = ext
        self._cp = cupy

    # -- helpers
    def _array(self, value, name, shape, dtype, optional=False):
        if value is None:
            if optional:
                return None
            raise TypeError(f"{name}: expected a CUDA array of shape {tuple(shape)}, got None")
        arr = as_cupy(value, name)
        if arr.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), "
                            f"got {arr.dtype}")
        if arr.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
        if arr.device.id != self._cp.cuda.Device().id:
            raise ValueError(f"{name}: expected an array on the current device "
                             f"{self._cp.cuda.Device().id}, got one on device {arr.device.id}")
        return self._cp.ascontiguousarray(arr)

    def _lengths(self, lengths, T, N):
        if lengths is None:
            return None
        host = np.asarray(lengths)
        if host.dtype.kind not in "iu" or host.shape != (N,):
            raise ValueError(f"lengths: expected an integer array of shape ({N},), "
                             f"got dtype {host.dtype} and shape {host.shape}")
        if N and (host.min() < 0 or host.max() > T):
            raise ValueError(f"lengths: expected values in [0, {T}], got min {host.min()} "
                             f"and max {host.max()}")
        return self._cp.asarray(np.ascontiguousarray(host, dtype=np.int64))

    @staticmethod
    def _dtype(x):
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"x: expected dtype float32 or float64, got {x.dtype}")
        return np.dtype(x.dtype)

    def _device_and_stream(self):
        """CuPy's current device and stream: the kernels run there."""
        return self._cp.cuda.Device().id, int(self._cp.cuda.get_current_stream().ptr)

    # -- the kernels
    def _sizes(self, cell, x, w_hh, w_hr=None):
        """x, w_hh and w_hr as CuPy arrays, the dtype, and (T, N, I, H, G*H, P, S): P the LSTM's
        projection size (0: none), S the width of h (P, or H); raises naming the argument."""
        if cell not in GATES:
            raise ValueError(f"cell: expected 'rnn', 'lstm', 'gru', 'gru_reset_before' or "
                             f"'layernorm_lstm', got {cell!r}")
        x = as_cupy(x, "x")
        dtype = self._dtype(x)
        if x.ndim != 3:
            raise ValueError(f"x: expected 3 dimensions [T, N, I], got shape {x.shape}")
        T, N, I = x.shape
        w_hh = as_cupy(w_hh, "w_hh")
        G = GATES[cell]
        P = 0
        if w_hr is not None:  # h is P wide: w_hh [G*H, P]
            if cell != "lstm":
                raise ValueError(f"w_hr: projections (proj_size) belong to an LSTM, got one for "
                                 f"{cell.upper()}")
            w_hr = as_cupy(w_hr, "w_hr")
            if w_hr.ndim != 2 or not 0 < w_hr.shape[0] < w_hr.shape[1]:
                raise ValueError(f"w_hr: expected shape (P, H) with 0 < P < H, got {w_hr.shape}")
            P, H = w_hr.shape
            w_hr = self._array(w_hr, "w_hr", (P, H), dtype)
            if w_hh.shape != (G * H, P):
                raise ValueError(f"w_hh: expected shape {(G * H, P)} with the projection, got "
                                 f"{w_hh.shape}")
        elif w_hh.ndim != 2 or w_hh.shape[0] != G * w_hh.shape[1] or w_hh.shape[1] < 1:
            raise ValueError(f"w_hh: expected shape ({G}*H, H) for {cell.upper()}, "
                             f"got {w_hh.shape}")
        else:
            H = w_hh.shape[1]
        return x, w_hh, w_hr, dtype, (T, N, I, H, G * H, P, P or H)

    def recurrent_forward(self, cell, nonlinearity, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
                          reverse, training, cache=None, precision=None, w_ph=None, w_hr=None,
                          ln=None, ln_eps=None):
        """``cache``: the CPU kernels' kept weights, unused here (the bfloat16 weights are
        converted on the device each call); ``precision="bfloat16"``: bfloat16 products;
        ``w_ph``: an LSTM's peepholes [3H]; ``w_hr``: its projection [P, H] (stepwise);
        ``ln``, ``ln_eps``: the LayerNorm-LSTM's norm parameters [10H] and epsilon."""
        cp = self._cp
        x, w_hh, w_hr, dtype, (T, N, I, H, GH, P, S) = self._sizes(cell, x, w_hh, w_hr)
        x = self._array(x, "x", (T, N, I), dtype)
        w_hh = self._array(w_hh, "w_hh", (GH, S), dtype)
        w_ih = self._array(w_ih, "w_ih", (GH, I), dtype)
        b_ih = (cp.zeros(GH, dtype) if b_ih is None else self._array(b_ih, "b_ih", (GH,), dtype))
        b_hh = (cp.zeros(GH, dtype) if b_hh is None else self._array(b_hh, "b_hh", (GH,), dtype))
        h0 = cp.zeros((N, S), dtype) if h0 is None else self._array(h0, "h0", (N, S), dtype)
        lstm = cell in ("lstm", "layernorm_lstm")  # (a cell state)
        if lstm:
            c0 = cp.zeros((N, H), dtype) if c0 is None else self._array(c0, "c0", (N, H), dtype)
        else:
            c0 = None
        d_lengths = self._lengths(lengths, T, N)
        w_ph = self._peepholes(cell, w_ph, H, dtype)
        ln = self._layer_norm(cell, ln, H, dtype)

        y = cp.empty((T, N, S), dtype)
        h_n = cp.empty((N, S), dtype)
        c_n = cp.empty((N, H), dtype) if lstm else None
        gates = cp.empty((T, N, GH), dtype)
        uses_extra = cell != "rnn"
        E = 10 * H + 3 if cell == "layernorm_lstm" else H  # (cells/layernorm_lstm_cell.h)
        # (zeros where there is no hidden unit: the kernels then write no step, and the
        # LayerNorm-LSTM's extra still has 3 numbers a step and sample; and with lengths,
        # whose padded steps the kernels leave unwritten there: every output a function of
        # the inputs, as on the CPU)
        extra = ((cp.zeros if H == 0 or d_lengths is not None else cp.empty)(
            (T if uses_extra else 0, N, E), dtype) if training else None)
        h_prev = cp.empty((T, N, S), dtype) if training else None
        bf16 = _bf16(precision) and dtype == np.float32
        workspace = cp.empty(self._ext.forward_workspace_size(cell, nonlinearity, T, N, I, H,
                                                              bool(training), bf16, P), dtype)
        pointers = (_address(x), _address(h0), _address(c0), _address(w_ih), _address(w_hh),
                    _address(b_ih), _address(b_hh), _address(d_lengths), _address(y),
                    _address(h_n), _address(c_n), _address(gates),
                    _address(extra) if (training and uses_extra) else 0, _address(h_prev),
                    _address(workspace), _address(w_ph), _address(w_hr), _address(ln))
        self._ext.recurrent_forward(cell, nonlinearity, dtype.name, T, N, I, H, pointers,
                                    bool(reverse), *self._device_and_stream(),
                                    _settings["allow_tf32"], ALGORITHMS[_settings["algorithm"]],
                                    bf16, P, 1e-5 if ln_eps is None else float(ln_eps))
        if not training:
            return y, h_n, c_n, None, None, None
        return y, h_n, c_n, gates, extra, h_prev

    def recurrent_backward(self, cell, nonlinearity, x, w_ih, w_hh, lengths, reverse, gates,
                           extra, h_prev, dy, dh_n, dc_n, precision=None, w_ph=None, w_hr=None,
                           ln=None, input_grad=True, weight_grads=True):
        cp = self._cp
        x, w_hh, w_hr, dtype, (T, N, I, H, GH, P, S) = self._sizes(cell, x, w_hh, w_hr)
        lstm = cell in ("lstm", "layernorm_lstm")  # (a cell state)
        uses_extra = cell != "rnn"
        E = 10 * H + 3 if cell == "layernorm_lstm" else H
        x = self._array(x, "x", (T, N, I), dtype)
        w_ih = self._array(w_ih, "w_ih", (GH, I), dtype)
        w_hh = self._array(w_hh, "w_hh", (GH, S), dtype)
        gates = self._array(gates, "gates", (T, N, GH), dtype)
        extra = self._array(extra, "extra", (T, N, E), dtype) if uses_extra else None
        h_prev = self._array(h_prev, "h_prev", (T, N, S), dtype)
        dy = self._array(dy, "dy", (T, N, S), dtype)
        dh_n = self._array(dh_n, "dh_n", (N, S), dtype)
        dc_n = self._array(dc_n, "dc_n", (N, H), dtype) if lstm else None
        d_lengths = self._lengths(lengths, T, N)
        w_ph = self._peepholes(cell, w_ph, H, dtype)
        dw_ph = None if w_ph is None else cp.empty((3 * H,), dtype)
        dw_hr = None if w_hr is None else cp.empty((P, H), dtype)
        ln = self._layer_norm(cell, ln, H, dtype)
        dln = None if ln is None else cp.empty((10 * H,), dtype)

        dx = cp.empty((T, N, I), dtype)
        dh0 = cp.empty((N, S), dtype)
        dc0 = cp.empty((N, H), dtype) if lstm else None
        dw_ih = cp.empty((GH, I), dtype)
        dw_hh = cp.empty((GH, S), dtype)
        db_ih = cp.empty((GH,), dtype)
        db_hh = cp.empty((GH,), dtype)
        bf16 = _bf16(precision) and dtype == np.float32
        workspace = cp.empty(self._ext.backward_workspace_size(cell, nonlinearity, T, N, I, H,
                                                               bf16, P), dtype)
        pointers = (_address(x), _address(w_ih), _address(w_hh), _address(d_lengths),
                    _address(gates), _address(extra), _address(h_prev), _address(dy),
                    _address(dh_n), _address(dc_n), _address(dx), _address(dh0), _address(dc0),
                    _address(dw_ih), _address(dw_hh), _address(db_ih), _address(db_hh),
                    _address(workspace), _address(w_ph), _address(dw_ph), _address(w_hr),
                    _address(dw_hr), _address(ln), _address(dln))
        self._ext.recurrent_backward(cell, nonlinearity, dtype.name, T, N, I, H, pointers,
                                     bool(reverse), *self._device_and_stream(),
                                     _settings["allow_tf32"], ALGORITHMS[_settings["algorithm"]],
                                     bf16, P)
        params = (dw_ih, dw_hh, db_ih, db_hh) + tuple(g for g in (dw_ph, dw_hr, dln)
                                                      if g is not None)
        # (computed whatever was asked: the CUDA kernels make every gradient in one pass)
        return ((dx if input_grad else None, dh0, dc0)
                + (params if weight_grads else (None,) * len(params)))

    def _layer_norm(self, cell, ln, H, dtype):
        """The LayerNorm-LSTM's norm parameters [10H] (required for it), or None."""
        if cell != "layernorm_lstm":
            if ln is not None:
                raise ValueError(f"ln: layer-norm parameters belong to the LayerNorm-LSTM, got "
                                 f"them for {cell.upper()}")
            return None
        if ln is None:
            raise ValueError("ln: the LayerNorm-LSTM needs its norm parameters [10H]")
        return self._array(ln, "ln", (10 * H,), dtype)

    def _peepholes(self, cell, w_ph, H, dtype):
        if w_ph is None:
            return None
        if cell != "lstm":
            raise ValueError(f"w_ph: peepholes belong to an LSTM, got them for {cell.upper()}")
        return self._array(w_ph, "w_ph", (3 * H,), dtype)


_kernels = None
