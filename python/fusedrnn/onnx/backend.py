"""An ONNX backend (``onnx.backend.base.Backend``) for graphs of ONNX ``LSTM``, ``GRU`` and ``RNN``
nodes, run on fusedrnn's kernels, with the shape, cast and small arithmetic ops exporters put
around them (``_ops.GLUE``, in NumPy: what ``fusedrnn.onnx.export`` and ``torch.onnx.export``
write for these layers): ``Backend.prepare(model).run(inputs)`` returns the graph's outputs in
order. It takes every attribute and input ONNX's own backend node tests use: ``direction``
(forward, reverse, bidirectional), ``layout`` 0 and 1, ``sequence_lens``,
``initial_h``/``initial_c``, peepholes ``P``, ``linear_before_reset`` 0 and 1, RNN activations
Tanh and Relu, ``hidden_size``. What it cannot run (``clip``, other activations,
``input_forget``, another op such as the ``Scan`` of an exported projected or LayerNorm-LSTM)
is refused at ``prepare`` with the node and the attribute named. The ops whose inputs are all
constants (stacked weights, reshaped biases) run once, at ``prepare``.
A sample of length 0 in ``sequence_lens`` gets final states ``Y_h``/``Y_c`` of 0, as ONNX
Runtime gives it (ONNX leaves that case open; fusedrnn's own layers return its initial state).

``load(path)`` turns the recurrent nodes of a model whose weights are initializers into
``fr.nn`` layers with those weights.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

try:
    import onnx
except ModuleNotFoundError as error:
    raise ModuleNotFoundError('fusedrnn.onnx\'s backend needs onnx: pip install "fusedrnn[onnx]"',
                              name=error.name) from error
from onnx import numpy_helper
from onnx.backend.base import Backend as OnnxBackend
from onnx.backend.base import BackendRep

from .. import functional as F
from ..io import checked_path
from ._layout import from_onnx
from ._ops import GLUE

CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# each cell's activations per direction, the only ones the kernels compute (RNN: either)
ACTIVATIONS = {"lstm": [("sigmoid", "tanh", "tanh")], "gru": [("sigmoid", "tanh")],
               "rnn": [("tanh",), ("relu",)]}
INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


@dataclass
class RecurrentNode:
    """One ONNX recurrent node, checked: what the kernels need to run it."""

    name: str
    cell: str
    inputs: dict  # role ("X", "W", ...) -> value name, the given ones
    outputs: list  # Y, Y_h[, Y_c] value names ("" where not asked for)
    direction: str = "forward"
    hidden_size: int = 0  # 0: from R's shape
    layout: int = 0
    linear_before_reset: int = 0
    nonlinearities: list = field(default_factory=list)  # per direction (RNN)

    @property
    def num_directions(self):
        """2 for a bidirectional node, else 1."""
        return DIRECTIONS[self.direction]


@dataclass
class GlueNode:
    """One of the ops around the recurrent nodes (``_ops.GLUE``)."""

    name: str
    op_type: str
    inputs: list  # value names, "" for an optional input left out
    outputs: list
    attributes: dict
    folded: bool = False  # its inputs are constants: run once, at prepare

    def run(self, values):
        """The node's outputs from ``values`` (a dict by value name)."""
        try:
            return GLUE[self.op_type](self.attributes, [values[n] if n else None
                                                        for n in self.inputs])
        except (ValueError, TypeError, IndexError, KeyError) as error:  # (AxisError: both)
            raise ValueError(f"ONNX node {self.name!r} ({self.op_type}): {error}") from None


def _fold(specs, constants):
    """``constants`` with the outputs of the glue nodes whose inputs are all constants (the
    weights an exporter stacks or reshapes), each such node marked ``folded``."""
    for spec in specs:
        if isinstance(spec, GlueNode) and all(n in constants for n in spec.inputs if n):
            constants.update(zip(spec.outputs, spec.run(constants)))
            spec.folded = True
    return constants


def _refuse(node, what):
    raise ValueError(f"ONNX node {node.name or node.op_type!r} ({node.op_type}): {what}")


def parse_node(node):
    """A NodeProto -> RecurrentNode or GlueNode, or ValueError naming the node and what it
    cannot take."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in (*CELLS, *GLUE):
        _refuse(node, f"fusedrnn's ONNX backend runs LSTM, GRU and RNN nodes and the ops "
                      f"exporters put around them ({', '.join(GLUE)}); not this one")
    if node.op_type in GLUE:
        return GlueNode(name=node.name or node.op_type, op_type=node.op_type,
                        inputs=list(node.input), outputs=list(node.output),
                        attributes={a.name: onnx.helper.get_attribute_value(a)
                                    for a in node.attribute})
    cell = CELLS[node.op_type]
    roles = INPUTS[:8 if cell == "lstm" else 6]
    if len(node.input) > len(roles):
        _refuse(node, f"expected at most {len(roles)} inputs {roles}, got {len(node.input)}")
    spec = RecurrentNode(name=node.name or node.op_type, cell=cell,
                         inputs={r: n for r, n in zip(roles, node.input) if n},
                         outputs=list(node.output))
    for role in ("X", "W", "R"):
        if role not in spec.inputs:
            _refuse(node, f"input {role} is required")
    activations, parameters = None, []
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if a.name == "direction":
            spec.direction = value.decode() if isinstance(value, bytes) else value
            if spec.direction not in DIRECTIONS:
                _refuse(node, f"attribute direction: expected one of {list(DIRECTIONS)}, got "
                              f"{spec.direction!r}")
        elif a.name == "hidden_size":
            spec.hidden_size = int(value)
        elif a.name == "layout":
            if value not in (0, 1):
                _refuse(node, f"attribute layout: expected 0 or 1, got {value}")
            spec.layout = int(value)
        elif a.name == "linear_before_reset" and cell == "gru":
            spec.linear_before_reset = int(value)
        elif a.name == "input_forget" and cell == "lstm":
            if value:
                _refuse(node, f"attribute input_forget={value} (coupled input and forget gates) "
                              f"is not supported; expected 0")
        elif a.name == "activations":
            activations = [v.decode().lower() if isinstance(v, bytes) else v.lower()
                           for v in value]
        elif a.name == "clip":
            _refuse(node, "attribute clip is not supported (the kernels compute the cells' own "
                          "activations, unclipped)")
        elif a.name in ("activation_alpha", "activation_beta"):
            if not isinstance(value, (list, tuple)) or len(value):  # (an empty list: none)
                parameters.append(a.name)  # refused after the activations they belong to
        else:
            _refuse(node, f"attribute {a.name} is not supported")
    D = spec.num_directions
    allowed = ACTIVATIONS[cell]
    n = len(allowed[0])
    if not activations:  # absent, or an empty list: the defaults, as onnxruntime takes it
        activations = list(allowed[0]) * D
    elif cell == "rnn" and D == 1 and len(activations) == 2:
        # the RNN schema's default lists two (Tanh, Tanh); a one-direction node given two
        # runs the first, as onnxruntime does
        activations = activations[:1]
    if len(activations) != n * D:
        _refuse(node, f"attribute activations: expected {n * D} ({n} per direction), got "
                      f"{len(activations)}")
    for d in range(D):
        if tuple(activations[d * n:(d + 1) * n]) not in allowed:
            _refuse(node, f"attribute activations: expected "
                          f"{' or '.join(str(list(a)) for a in allowed)} per direction, got "
                          f"{activations[d * n:(d + 1) * n]}")
        spec.nonlinearities.append(activations[d * n + n - 1] if cell == "rnn" else "tanh")
    if parameters:
        _refuse(node, f"attribute {parameters[0]} is not supported (the cells' own activations "
                      f"take no parameters)")
    return spec


def _weights(spec, values, d):
    """Direction d's weights in our layout (w_ih, w_hh, b_ih, b_hh, w_ph), contiguous."""
    def given(role):
        return values[spec.inputs[role]][d] if role in spec.inputs else None
    return tuple(None if a is None else np.ascontiguousarray(a) for a in from_onnx(
        spec.cell, given("W"), given("R"), given("B"), given("P") if spec.cell == "lstm" else None))


WEIGHT_ROLES = ("W", "R", "B", "P")


def constant_weights(spec, constants):
    """Every direction's weights in our layout, where the node's weights are initializers
    (reordered once, at prepare), else None."""
    if any(spec.inputs[r] not in constants for r in WEIGHT_ROLES if r in spec.inputs):
        return None
    _check_weights(spec, constants)  # (named now, not as an error deep in the reordering)
    return [_weights(spec, constants, d) for d in range(spec.num_directions)]


def _refuse_input(spec, role, expected, got):
    raise ValueError(f"ONNX node {spec.name!r} ({spec.cell.upper()}): input {role} "
                     f"({spec.inputs[role]!r}): expected {expected}, got {got}")


def _hidden_size(spec, values):
    """The node's hidden_size, or R's last axis where the attribute is not given."""
    return spec.hidden_size or values[spec.inputs["R"]].shape[-1]


def _check_weights(spec, values, dtype=None, I=None):
    """ValueError naming the node and the weight input (W, R, B, P) whose shape or dtype does
    not fit the node's directions, gates and hidden size; ``dtype`` and ``I`` are X's where it
    is known (a run), else W's (at prepare and load, the weights being initializers)."""
    D, G = spec.num_directions, GATES[spec.cell]
    W, H = values[spec.inputs["W"]], _hidden_size(spec, values)
    I = W.shape[-1] if I is None else I
    dtype = W.dtype if dtype is None else dtype
    expected = {"W": (D, G * H, I), "R": (D, G * H, H), "B": (D, 2 * G * H), "P": (D, 3 * H)}
    for role, shape in expected.items():
        if role in spec.inputs:
            a = values[spec.inputs[role]]
            if a.shape != shape:
                _refuse_input(spec, role, f"shape {shape}", f"shape {a.shape}")
            if a.dtype != dtype:
                _refuse_input(spec, role, f"dtype {dtype} (X's, or W's)", a.dtype)


def _check_shapes(spec, values):
    """ValueError naming the node and the input whose shape or dtype does not fit."""
    X = values[spec.inputs["X"]]
    D = spec.num_directions
    if X.ndim != 3:
        _refuse_input(spec, "X", "3 dimensions", f"shape {X.shape}")
    if X.dtype not in (np.float32, np.float64):
        _refuse_input(spec, "X", "float32 or float64", X.dtype)
    _check_weights(spec, values, X.dtype, X.shape[2])
    H = _hidden_size(spec, values)
    N = X.shape[1 - spec.layout]
    expected = {"sequence_lens": (N,), "initial_h": (N, D, H) if spec.layout else (D, N, H)}
    expected["initial_c"] = expected["initial_h"]
    for role, shape in expected.items():
        if role in spec.inputs:
            a = values[spec.inputs[role]]
            if a.shape != shape:
                _refuse_input(spec, role, f"shape {shape}", f"shape {a.shape}")
            if role != "sequence_lens" and a.dtype != X.dtype:
                _refuse_input(spec, role, f"dtype {X.dtype} (X's)", a.dtype)
    if "sequence_lens" in spec.inputs:
        lengths = values[spec.inputs["sequence_lens"]]
        if lengths.dtype.kind not in "iu":
            _refuse_input(spec, "sequence_lens", "integers (int32)", lengths.dtype)
        T = X.shape[spec.layout]
        if lengths.size and (lengths.min() < 0 or lengths.max() > T):
            _refuse_input(spec, "sequence_lens", f"values in [0, {T}] (X's sequence length)",
                          f"min {lengths.min()} and max {lengths.max()}")


def run_recurrent(spec, values, weights=None):
    """The node's outputs (Y, Y_h[, Y_c]) on the kernels, in the node's layout. ``weights``:
    constant_weights' result, or None to reorder the node's weights now."""
    _check_shapes(spec, values)
    X = values[spec.inputs["X"]]
    if spec.layout:  # batch-major [N, T, I] (and states [N, D, H]): the kernels' [T, N, I]
        X = X.transpose(1, 0, 2)
    X = np.ascontiguousarray(X)

    def state(role, d):
        if role not in spec.inputs:
            return None
        a = values[spec.inputs[role]]
        return np.ascontiguousarray(a[:, d] if spec.layout else a[d])
    lengths = values.get(spec.inputs.get("sequence_lens"))
    if lengths is not None:
        lengths = np.asarray(lengths, np.int64)
    ys, hs, cs = [], [], []
    for d in range(spec.num_directions):
        w_ih, w_hh, b_ih, b_hh, w_ph = weights[d] if weights else _weights(spec, values, d)
        common = dict(lengths=lengths, reverse=d == 1 or spec.direction == "reverse")
        h0 = state("initial_h", d)
        if spec.cell == "lstm":
            y, h, c, _ = F.lstm_forward(X, h0, state("initial_c", d), w_ih, w_hh, b_ih, b_hh,
                                        w_ph=w_ph, **common)
            cs.append(c)
        elif spec.cell == "gru":
            y, h, _ = F.gru_forward(X, h0, w_ih, w_hh, b_ih, b_hh,
                                    reset_after=bool(spec.linear_before_reset), **common)
        else:
            y, h, _ = F.rnn_forward(X, h0, w_ih, w_hh, b_ih, b_hh,
                                    nonlinearity=spec.nonlinearities[d], **common)
        ys.append(y)
        hs.append(h)
    # ONNX Runtime's final states of no step: 0 (an X of no steps at all: every sample's)
    empty = lengths == 0 if lengths is not None else np.full(X.shape[1], X.shape[0] == 0)
    if empty.any():
        empty = empty[:, None]
        hs = [np.where(empty, 0, h) for h in hs]
        cs = [np.where(empty, 0, c) for c in cs]
    if len(ys) == 1:  # views, no copy
        Y, finals = ys[0][:, None], [hs[0][None]] + ([cs[0][None]] if cs else [])
    else:
        Y = np.stack(ys, axis=1)  # [T, D, N, H]
        finals = [np.stack(hs)] + ([np.stack(cs)] if cs else [])  # [D, N, H]
    if spec.layout:
        Y = Y.transpose(2, 0, 1, 3)  # [N, T, D, H]
        finals = [a.transpose(1, 0, 2) for a in finals]  # [N, D, H]
    return [np.ascontiguousarray(a) for a in [Y] + finals]


def _initializers(graph):
    """The graph's initializers by name as arrays, its sparse ones made dense (as ONNX Runtime
    takes them: named by their values tensor)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for sparse in graph.sparse_initializer:
        nonzero = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices)
        dims = tuple(sparse.dims)
        dense = np.zeros(int(np.prod(dims)), nonzero.dtype)
        # indices: [NNZ] positions in the flattened tensor, or [NNZ, rank] coordinates
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
        dense[flat] = nonzero
        values[sparse.values.name] = dense.reshape(dims)
    return values


def _with_shapes(model):
    """``model``, or a copy whose graph inputs and outputs declared without a shape have one
    of unknown rank for onnx.checker, which requires the field where ONNX Runtime runs the
    model without it (the shapes are not read here: the arrays fed are)."""
    def shapeless(v):
        return v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")
    if not any(map(shapeless, (*model.graph.input, *model.graph.output))):
        return model
    checked = onnx.ModelProto()
    checked.CopyFrom(model)
    for v in (*checked.graph.input, *checked.graph.output):
        if shapeless(v):
            v.type.tensor_type.shape.SetInParent()
    return checked


def _read_model(path, name):
    """``path`` itself where it is a ModelProto, the model serialized in it where it is bytes (as
    ONNX Runtime's InferenceSession reads bytes), else the one in the file it names (or the open
    binary file it is); TypeError naming ``name`` for anything else, ValueError naming the file
    (or the bytes) where it holds no model (a truncated, empty or other file: protobuf's
    DecodeError named neither)."""
    if isinstance(path, onnx.ModelProto):
        return path
    if isinstance(path, (bytes, bytearray, memoryview)):
        source, shown = bytes(path), "the bytes given are"
        hint = " (a file name goes as a str or a pathlib.Path)"
    elif isinstance(path, (str, os.PathLike)) or hasattr(path, "read"):
        source = checked_path(path, "read", name)
        shown = source if isinstance(source, str) else getattr(source, "name", "the file object")
        shown, hint = f"{shown} is", ""
    else:
        raise TypeError(f"{name}: expected an onnx.ModelProto, its serialized bytes, a path to "
                        f"one or a binary file open for reading, got {type(path).__name__}")
    try:  # (a file's model with its external data, where it keeps some)
        model = onnx.load_model_from_string(source) if isinstance(source, bytes) else \
            onnx.load(source)
    except OSError:  # as open() gives it: missing, a folder
        raise
    except Exception as error:  # protobuf's DecodeError, not importable by a stable name
        raise ValueError(f"{name}: {shown} not an ONNX model (it does not parse: "
                         f"{error}){hint}") from None
    if not model.ir_version and not model.graph.node:
        raise ValueError(f"{name}: {shown} not an ONNX model (empty){hint}")
    if isinstance(source, bytes) and _external_tensors(model):  # (else read from the working
        raise ValueError(f"{name}: the bytes given are a model whose tensors "  # folder, or
                         f"{_external_tensors(model)[:3]} lie in external data files; give "
                         f"the model file's path (its data is found beside it)")  # refused
    return model


def _external_tensors(model):
    """The names of ``model``'s tensors stored in external data files (not loaded)."""
    from onnx import external_data_helper
    return [t.name for t in external_data_helper._get_all_tensors(model)
            if external_data_helper.uses_external_data(t)]


class FusedRnnRep(BackendRep):
    """A prepared model: ``run(inputs)`` takes the graph's inputs (a list in graph order, the
    initializers left out, or a dict by name) and returns its outputs as a list in graph order."""

    def __init__(self, graph, nodes):
        self._graph, self._nodes = graph, nodes
        self._constants = _initializers(graph)
        self.input_names = [i.name for i in graph.input if i.name not in self._constants]
        self._fed_names = {i.name for i in graph.input}  # initializers listed there too
        # initializers a run may feed anew (IR < 4, keep_initializers_as_inputs): such a run
        # computes from the fed values, the others from what prepare computed once
        self._feedable = self._fed_names & set(self._constants)
        self._prepared = _fold(nodes, dict(self._constants))
        self._weights = [None if isinstance(spec, GlueNode) else
                         constant_weights(spec, self._prepared) for spec in nodes]
        self._dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                        for i in graph.input if i.type.tensor_type.elem_type}
        # declared shapes: a fixed size (dim_value) per axis, None for a named or unknown one
        self._shapes = {i.name: [d.dim_value if d.HasField("dim_value") else None
                                 for d in i.type.tensor_type.shape.dim]
                        for i in graph.input if i.type.tensor_type.HasField("shape")}
        self.output_names = [o.name for o in graph.output]

    def run(self, inputs, **kwargs):
        """The graph's outputs (a list of arrays in graph order) for ``inputs``."""
        fed_initializers = isinstance(inputs, dict) and bool(self._feedable & set(inputs))
        values = dict(self._constants if fed_initializers else self._prepared)
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise ValueError(f"inputs: missing graph inputs {missing}")
            unknown = sorted(set(inputs) - self._fed_names)
            if unknown:
                raise ValueError(f"inputs: {unknown} are not inputs of the graph (its inputs: "
                                 f"{sorted(self._fed_names)})")
            values.update({k: np.asarray(F.check_unmasked(v, f"inputs[{k!r}]"))
                           for k, v in inputs.items()})
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(inputs) != len(self.input_names):
                raise ValueError(f"inputs: expected {len(self.input_names)} arrays "
                                 f"{self.input_names}, got {len(inputs)}")
            values.update(zip(self.input_names, (np.asarray(F.check_unmasked(v, f"inputs[{k}]"))
                                                 for k, v in enumerate(inputs))))
        given = [v for v in values.values() if isinstance(v, np.ndarray)]  # not made by the run
        fed = set(inputs) if isinstance(inputs, dict) else set(self.input_names)
        for name in fed:  # ONNX Runtime's checks: a fed array has its graph input's type
            if name in self._dtypes and values[name].dtype != self._dtypes[name]:
                raise TypeError(f"inputs: {name!r}: expected {self._dtypes[name]} (the graph "
                                f"input's type), got {values[name].dtype}")
            # and its declared rank and fixed sizes (a graph unrolled over 5 steps, fed 7,
            # gave the first 5 steps' result)
            dims, shape = self._shapes.get(name), values[name].shape
            if dims is not None and (len(dims) != len(shape) or any(
                    d is not None and d != s for d, s in zip(dims, shape))):
                declared = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
                raise ValueError(f"inputs: {name!r}: expected shape {declared} (the graph "
                                 f"input's; ? any size), got {shape}")
        for spec, weights in zip(self._nodes, self._weights):
            if isinstance(spec, GlueNode):
                if fed_initializers or not spec.folded:
                    values.update(zip(spec.outputs, spec.run(values)))
                continue
            weights = None if fed_initializers else weights
            for name, value in zip(spec.outputs, run_recurrent(spec, values, weights)):
                if name:
                    values[name] = value
        # the caller's own arrays, as ONNX Runtime's: never a prepared constant (a write would
        # reach every later run), a fed input or a view of one, nor a view of another output
        # (a write would reach it)
        outputs = []
        for v in (values[n] for n in self.output_names):
            if not isinstance(v, np.ndarray) or any(np.may_share_memory(v, g) for g in given):
                v = np.array(v, copy=True)
            outputs.append(v)
            given.append(v)
        return outputs


class Backend(OnnxBackend):
    """fusedrnn's kernels as an ONNX backend (device "CPU")."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """True for "CPU" (the CUDA kernels are not behind this backend yet)."""
        return str(device).upper().split(":")[0] == "CPU"

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        """``prepare(model, device).run(inputs)``."""
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        """Check ``model`` (a ModelProto, its serialized bytes, a path or an open binary file)
        and every node; returns the rep to run."""
        model = _read_model(model, "model")
        if not cls.supports_device(device):
            raise ValueError(f"device: fusedrnn's ONNX backend runs on 'CPU', got {device!r}")
        onnx.checker.check_model(_with_shapes(model))
        return FusedRnnRep(model.graph, [parse_node(n) for n in model.graph.node])

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """One node on ``inputs`` (arrays in the node's input order, "" inputs skipped)."""
        if not cls.supports_device(device):
            raise ValueError(f"device: fusedrnn's ONNX backend runs on 'CPU', got {device!r}")
        spec = parse_node(node)
        named = [n for n in node.input if n]
        inputs = list(inputs)
        if len(inputs) != len(named):
            raise ValueError(f"inputs: expected {len(named)} arrays {named} (the node's given "
                             f"inputs), got {len(inputs)}")
        values = dict(zip(named, (np.asarray(v) for v in inputs)))
        if isinstance(spec, GlueNode):
            return spec.run(values)
        return [v for n, v in zip(spec.outputs, run_recurrent(spec, values)) if n]


def prepare(model, device="CPU", **kwargs):
    """:meth:`Backend.prepare` (ONNX's module-level backend interface)."""
    return Backend.prepare(model, device, **kwargs)


def run_model(model, inputs, device="CPU", **kwargs):
    """:meth:`Backend.run_model`."""
    return Backend.run_model(model, inputs, device, **kwargs)


def run_node(node, inputs, device="CPU", **kwargs):
    """:meth:`Backend.run_node`."""
    return Backend.run_node(node, inputs, device, **kwargs)


def supports_device(device):
    """:meth:`Backend.supports_device`."""
    return Backend.supports_device(device)


def load(path):
    """The recurrent nodes of the ONNX model at ``path`` (or a ModelProto) as ``fr.nn`` layers
    with their weights: an OrderedDict {node name: layer}, in graph order (a node without a name
    by its op type; a name an earlier node has, with the node's index in the graph: "LSTM_3").
    A node's W, R (and B, P) must be initializers, or computed from them by the ops around the
    nodes; the layer is one layer deep with the node's directions,
    ``batch_first`` for layout 1, ``peephole`` for P, ``reset_after`` from linear_before_reset,
    the RNN's nonlinearity from its activations (the same for both directions)."""
    from .. import nn
    model = _read_model(path, "path")
    constants = _fold([parse_node(n) for n in model.graph.node if n.op_type in GLUE],
                      _initializers(model.graph))
    layers = OrderedDict()
    for index, node in enumerate(model.graph.node):
        if node.op_type not in CELLS:
            continue
        spec = parse_node(node)
        for role in ("W", "R", "B", "P"):
            if role in spec.inputs and spec.inputs[role] not in constants:
                _refuse(node, f"input {role} ({spec.inputs[role]!r}) is not an initializer; "
                              f"load takes weights stored in the model")
        for role in ("sequence_lens", "initial_h", "initial_c"):  # (a stored zero state is
            stored = constants.get(spec.inputs.get(role))            # the layers' default)
            if stored is not None and (role == "sequence_lens" or stored.any()):
                _refuse(node, f"input {role} ({spec.inputs[role]!r}) is stored in the model, "
                              f"which a fr.nn layer does not hold; run the model with Backend")
        if len(set(spec.nonlinearities)) > 1:
            _refuse(node, f"activations {spec.nonlinearities} differ between directions; a "
                          f"fr.nn.RNN has one nonlinearity")
        _check_weights(spec, constants)  # (W's first axis agrees with the node's direction)
        W = constants[spec.inputs["W"]]
        D, I = spec.num_directions, W.shape[2]
        H = _hidden_size(spec, constants)
        for role in ("initial_h", "initial_c"):  # (a stored zero state: shaped as the node's)
            stored = constants.get(spec.inputs.get(role))
            if stored is not None and (stored.ndim != 3 or stored.shape[::2] != (D, H)):
                _refuse(node, f"input {role} ({spec.inputs[role]!r}) has shape {stored.shape}, "
                              f"expected [{D}, batch, {H}] (the node's directions and "
                              f"hidden_size)")
        options = dict(bias="B" in spec.inputs, batch_first=bool(spec.layout),
                       bidirectional=D == 2, dtype=W.dtype)
        if spec.direction == "reverse":
            _refuse(node, "direction 'reverse' alone has no fr.nn layer (a layer runs forward, "
                          "or both directions); run it with Backend")
        if spec.cell == "lstm":
            layer = nn.LSTM(I, H, peephole="P" in spec.inputs, **options)
        elif spec.cell == "gru":
            layer = nn.GRU(I, H, reset_after=bool(spec.linear_before_reset), **options)
        else:
            layer = nn.RNN(I, H, nonlinearity=spec.nonlinearities[0], **options)
        state = {}
        for d in range(D):
            suffix = "_reverse" if d else ""
            w_ih, w_hh, b_ih, b_hh, w_ph = _weights(spec, constants, d)
            state[f"weight_ih_l0{suffix}"], state[f"weight_hh_l0{suffix}"] = w_ih, w_hh
            if options["bias"]:
                state[f"bias_ih_l0{suffix}"], state[f"bias_hh_l0{suffix}"] = b_ih, b_hh
            if w_ph is not None:
                state[f"weight_ph_l0{suffix}"] = w_ph
        layer.load_state_dict(state)
        key = spec.name  # (an unnamed node's: its op type)
        if key in layers:  # a name taken: with the node's index in the graph, "LSTM_3"
            key = f"{key}_{index}"
        layers[key] = layer
    if not layers:
        ops = sorted({n.op_type for n in model.graph.node})
        raise ValueError(f"path: expected a model with LSTM, GRU or RNN nodes, found none (its "
                         f"ops: {ops}; a layer exported as the ops of its steps, such as the "
                         f"Scans of fusedrnn's projected and LayerNorm-LSTMs or torch's RNN by "
                         f"the dynamo exporter, cannot be read back as a layer)")
    return layers
