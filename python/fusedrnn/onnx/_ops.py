"""The ONNX ops that exporters put around recurrent nodes, in NumPy, for the backend: the shape
ops (a batch-first transpose, the direction axis squeezed or reshaped away, initial states
sliced per layer or expanded from zeros, the weights stacked), the casts and comparisons of
``sequence_lens``, and the small arithmetic of an embedding or a linear head. Enough to run what
``fusedrnn.onnx.export`` and ``torch.onnx.export`` (both exporters) write for LSTM/GRU/RNN
models; each op follows the ONNX operator spec (opset 13 and later; ``axes``/``starts``/... as
attributes for the older opsets too).

``GLUE[op_type](attributes, inputs) -> outputs``: ``inputs`` a list of arrays, None where an
optional input is left out ("")."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _given(inputs, k, attributes, name):
    """Input k where given (opset >= 13 for axes, >= 10 for Slice), else attribute ``name``."""
    if len(inputs) > k and inputs[k] is not None:
        return _ints(inputs[k])
    return attributes.get(name)


def _constant(at, xs):
    if "value" in at:
        return [numpy_helper.to_array(at["value"])]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in at:
            return [np.array(at[key], dtype)]
    raise ValueError(f"Constant: expected a tensor, float(s) or int(s) value, got "
                     f"{sorted(at)}")


def _shape(at, xs):
    return [np.array(xs[0].shape, np.int64)[at.get("start", 0):at.get("end")]]


def _squeeze(at, xs):
    axes = _given(xs, 1, at, "axes")
    return [np.squeeze(xs[0], axis=None if axes is None else tuple(axes))]


def _reshape(at, xs):
    x, shape = xs[0], _ints(xs[1])
    if not at.get("allowzero", 0):  # 0: that dimension of the input
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _slice(at, xs):
    x = xs[0]
    starts, ends = _given(xs, 1, at, "starts"), _given(xs, 2, at, "ends")
    axes = _given(xs, 3, at, "axes") or list(range(len(starts)))
    steps = _given(xs, 4, at, "steps") or [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(start, end, step)
    return [x[tuple(index)]]


def _expand(at, xs):
    x = xs[0]
    return [np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(xs[1])))))]


def _constant_of_shape(at, xs):
    value = numpy_helper.to_array(at["value"]) if "value" in at else np.zeros(1, np.float32)
    return [np.full(tuple(_ints(xs[0])), value.reshape(-1)[0], value.dtype)]


def _gemm(at, xs):
    a, b = xs[0], xs[1]
    a = a.T if at.get("transA", 0) else a
    b = b.T if at.get("transB", 0) else b
    y = at.get("alpha", 1.0) * (a @ b)
    if len(xs) > 2 and xs[2] is not None:
        y = y + at.get("beta", 1.0) * xs[2]
    return [y.astype(a.dtype, copy=False)]


def _divide(at, xs):
    a, b = xs
    if a.dtype.kind in "iu":  # ONNX's integer division truncates toward zero, in integers
        if not np.all(b):      # (through float64, 2**62 + 1 lost its last bit)
            raise ValueError("Div: integer division by zero")
        if a.dtype.kind == "i" and np.any((a == np.iinfo(a.dtype).min) & (b == -1)):
            raise ValueError(f"Div: {np.iinfo(a.dtype).min} / -1 overflows {a.dtype}")
        # a - fmod(a, b) is a multiple of b: exact, and no abs() to overflow at the minimum
        return [((a - np.fmod(a, b)) // b).astype(a.dtype)]
    return [a / b]


def _sigmoid(at, xs):
    x = xs[0]
    return [(1 / (1 + np.exp(-x))).astype(x.dtype, copy=False)]


GLUE = {
    "Identity": lambda at, xs: [xs[0]],
    "Constant": _constant,
    "Shape": _shape,
    "Gather": lambda at, xs: [np.take(xs[0], xs[1].astype(np.int64), axis=at.get("axis", 0))],
    "Unsqueeze": lambda at, xs: [np.expand_dims(xs[0], tuple(_given(xs, 1, at, "axes")))],
    "Squeeze": _squeeze,
    "Concat": lambda at, xs: [np.concatenate(xs, axis=at["axis"])],
    "Transpose": lambda at, xs: [np.transpose(xs[0], at.get("perm"))],
    "Reshape": _reshape,
    "Slice": _slice,
    "Cast": lambda at, xs: [xs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(at["to"]))],
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Where": lambda at, xs: [np.where(*xs)],
    "Equal": lambda at, xs: [np.equal(*xs)],
    "Less": lambda at, xs: [np.less(*xs)],
    "Greater": lambda at, xs: [np.greater(*xs)],
    "Not": lambda at, xs: [np.logical_not(xs[0])],
    "Add": lambda at, xs: [xs[0] + xs[1]],
    "Sub": lambda at, xs: [xs[0] - xs[1]],
    "Mul": lambda at, xs: [xs[0] * xs[1]],
    "Div": _divide,
    "MatMul": lambda at, xs: [np.matmul(*xs)],
    "Gemm": _gemm,
    "Tanh": lambda at, xs: [np.tanh(xs[0])],
    "Sigmoid": _sigmoid,
    "Relu": lambda at, xs: [np.maximum(xs[0], xs[0].dtype.type(0))],
}
