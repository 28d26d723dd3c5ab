"""``fusedrnn.onnx.export``: a recurrent layer, a ``Sequential`` of our layers or a ``Seq2Seq``'s
encoder as an ONNX model with dynamic batch and time axes.

Each layer becomes one ONNX ``LSTM``/``GRU``/``RNN`` node per layer (both directions in it),
weights as initializers in ONNX's gate order (``_layout``); between layers the node's Y
[T, D, N, H] is laid out as the next layer's [T, N, D*H]. The cells ONNX has no node for (the
LSTM with ``proj_size``, the LayerNorm-LSTM) become a ``Scan`` per direction whose body is the
cell's step; variable lengths enter that step as a mask, so a finished sample keeps its state
and outputs 0, exactly the kernels' semantics.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import __version__, _atomic
from ..io import checked_path
from ..nn.layers import Dropout, Embedding, Identity, Linear, Sequential
from ..nn.module import to_host
from ..nn.recurrent import RNNBase
from ..nn.seq2seq import Seq2Seq
from ._layout import to_onnx

ONNX_CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
GRAPH_NAMES = ("x", "h0", "c0", "lengths", "y", "h_n", "c_n")
MIN_OPSET = 14  # the recurrent nodes' layout attribute, Squeeze/Slice with axes as inputs
SEQUENTIAL_PARTS = (RNNBase, Linear, Embedding, Dropout, Identity)


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError('fusedrnn.onnx needs the onnx package: pip install "fusedrnn[onnx]"') \
            from e
    return onnx


class _Graph:
    """Nodes, initializers, inputs and outputs of the graph being built, with unique names."""

    def __init__(self, onnx, dtype):
        self.onnx, self.helper = onnx, onnx.helper
        self.dtype = np.dtype(dtype)
        self.elem = self.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._used = set(GRAPH_NAMES)  # kept for the graph's own inputs and outputs

    def name(self, base):
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def const(self, base, array):
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(array, order="C"),
                                                                   name))
        return name

    def ints(self, base, values):
        return self.const(base, np.asarray(values, np.int64))

    def node(self, op, inputs, outputs=1, base=None, **attributes):
        """Add a node; returns its output name (or names for ``outputs`` > 1; "" keeps one
        optional output out)."""
        base = base or op.lower()
        names = [self.name(f"{base}_out{k}" if outputs > 1 else base) for k in range(outputs)]
        self.nodes.append(self.helper.make_node(op, list(inputs), names,
                                                name=self.name(f"{base}_node"), **attributes))
        return names if outputs > 1 else names[0]

    def output(self, name, value, shape, op="Identity", **attributes):
        """The graph output ``name``: ``op`` (a copy by default) of ``value``."""
        self.nodes.append(self.helper.make_node(op, [value], [name],
                                                name=self.name(f"{name}_node"), **attributes))
        self.outputs.append(self.value_info(name, shape))

    def value_info(self, name, shape, elem=None):
        self._used.add(name)
        return self.helper.make_tensor_value_info(name, self.elem if elem is None else elem, shape)


# ---------------------------------------------------------------------------- recurrent layers
def _layer_weights(layer, k, direction):
    """One layer direction's weights as NumPy arrays in our layout."""
    def data(p):  # (a CUDA layer's parameters copied to the host)
        return None if p is None else to_host(p.data)
    w_ih, w_hh, b_ih, b_hh = (data(p) for p in layer._weights(k, direction))
    return dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                w_ph=data(layer._peepholes(k, direction)),
                w_hr=data(layer._projection(k, direction)),
                ln=[data(p) for p in layer._layer_norm_params(k, direction) or []] or None)


def _state_slice(g, state, k, D, base):
    """Layer k's directions [D, N, W] of an initial state [L*D, N, W], or ""."""
    if not state:
        return ""
    return g.node("Slice", [state, g.ints(f"{base}_start", [k * D]),
                            g.ints(f"{base}_end", [(k + 1) * D]), g.ints(f"{base}_axis", [0])],
                  base=base)


def _node_layer(g, layer, k, x, h0, c0, lengths, empty, prefix):
    """Layer k as one ONNX recurrent node. Returns (y [T, N, D*H], h_n [D, N, H], c_n).
    ``empty``: bool [1, N, 1], the samples of length 0 (or None): ONNX Runtime gives them final
    states of 0, our layers their initial state, which a Where restores."""
    cell, D, H = layer._cell, layer.num_directions, layer.hidden_size
    parts = [to_onnx(cell, **{n: v for n, v in _layer_weights(layer, k, d).items()
                              if n in ("w_ih", "w_hh", "b_ih", "b_hh", "w_ph")})
             for d in range(D)]
    W, R, B, P = (None if parts[0][j] is None else np.stack([p[j] for p in parts])
                  for j in range(4))
    inputs = [x, g.const(f"{prefix}W", W), g.const(f"{prefix}R", R),
              "" if B is None else g.const(f"{prefix}B", B), lengths or "",
              _state_slice(g, h0, k, D, f"{prefix}h0")]
    attributes = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
    if cell == "lstm":
        inputs += [_state_slice(g, c0, k, D, f"{prefix}c0"),
                   "" if P is None else g.const(f"{prefix}P", P)]
    elif cell == "gru":
        attributes["linear_before_reset"] = int(layer.reset_after)
    else:
        attributes["activations"] = [layer.nonlinearity.capitalize()] * D
    while inputs[-1] == "":
        inputs.pop()
    outputs = g.node(ONNX_CELLS[cell], inputs, outputs=3 if cell == "lstm" else 2,
                     base=prefix.rstrip("_") or cell, **attributes)
    Y, h_n = outputs[0], outputs[1]
    c_n = outputs[2] if cell == "lstm" else None
    if empty and h0:
        h_n = g.node("Where", [empty, inputs[5], h_n], base=f"{prefix}h_n")
        if c_n:
            c_n = g.node("Where", [empty, inputs[6], c_n], base=f"{prefix}c_n")
    if D == 1:
        y = g.node("Squeeze", [Y, g.ints(f"{prefix}axis", [1])], base=f"{prefix}y")
    else:
        y = g.node("Reshape", [g.node("Transpose", [Y], perm=[0, 2, 1, 3], base=f"{prefix}tndh"),
                               g.ints(f"{prefix}shape", [0, 0, D * H])],  # (not -1: no
                    base=f"{prefix}y")                   # element to infer it from at T = 0)
    return y, h_n, c_n


def _step_body(g, layer, weights, H, S, masked):
    """The Scan body of one step of the projected LSTM or the LayerNorm-LSTM (one direction):
    states h [N, S], c [N, H]; scan inputs x_t [N, I] (and mask_t [N, 1]); outputs the next
    states and y_t."""
    helper = g.helper
    body = _Graph(g.onnx, g.dtype)
    names = ["h", "c", "x_t"] + (["mask_t"] if masked else [])
    shapes = [["N", S], ["N", H], ["N", weights["w_ih"].shape[1]], ["N", 1]]
    elems = [None] * 3 + [g.onnx.TensorProto.BOOL]
    body.inputs = [body.value_info(n, s, e) for n, s, e in zip(names, shapes, elems)]
    eps = float(getattr(layer, "eps", 1e-5))

    def product(a, w, base):
        return body.node("MatMul", [a, body.const(f"{base}_T", w.T)], base=base)

    def layer_norm(a, gamma, beta, base):
        """LayerNormalization over the last axis; for float64 spelled out, since the operator's
        epsilon is a float32 attribute (1e-3 became 0.0010000000475: 1e-9 off our layers)."""
        if g.dtype != np.float64:
            return body.node("LayerNormalization", [a, body.const(f"{base}_g", gamma),
                                                    body.const(f"{base}_b", beta)],
                             axis=-1, epsilon=eps, base=base)
        mean_of = body.const(f"{base}_avg", np.full((len(gamma), 1), 1.0 / len(gamma)))
        d = body.node("Sub", [a, body.node("MatMul", [a, mean_of])], base=f"{base}_d")
        var = body.node("MatMul", [body.node("Mul", [d, d]), mean_of], base=f"{base}_var")
        std = body.node("Sqrt", [body.node("Add", [var, body.const(f"{base}_eps",
                                                                   np.array(eps))])])
        return body.node("Add", [body.node("Mul", [body.node("Div", [d, std]),
                                                   body.const(f"{base}_g", gamma)]),
                                 body.const(f"{base}_b", beta)], base=base)

    ax, ah = product("x_t", weights["w_ih"], "wx"), product("h", weights["w_hh"], "wh")
    G = 4 * H
    zeros = np.zeros(G, g.dtype)
    b_ih = zeros if weights["b_ih"] is None else weights["b_ih"]
    b_hh = zeros if weights["b_hh"] is None else weights["b_hh"]
    if weights["ln"] is not None:  # the biases come after the norms: LayerNormalization's B
        g_ih, g_hh, g_c, b_c = weights["ln"]
        ax = layer_norm(ax, g_ih, b_ih, "ln_x")
        ah = layer_norm(ah, g_hh, b_hh, "ln_h")
        a = body.node("Add", [ax, ah], base="a")
    else:
        a = body.node("Add", [body.node("Add", [ax, ah]), body.const("b", b_ih + b_hh)], base="a")
    i, f, gg, o = body.node("Split", [a, body.ints("split", [H] * 4)], outputs=4, axis=1,
                            base="gates")
    w_ph = weights["w_ph"]
    if w_ph is not None:  # i and f see c_{t-1}, o sees c_t
        i = body.node("Add", [i, body.node("Mul", ["c", body.const("p_i", w_ph[:H])])])
        f = body.node("Add", [f, body.node("Mul", ["c", body.const("p_f", w_ph[H:2 * H])])])
    c_new = body.node("Add", [body.node("Mul", [body.node("Sigmoid", [f]), "c"]),
                              body.node("Mul", [body.node("Sigmoid", [i]),
                                                body.node("Tanh", [gg])])], base="c_new")
    if w_ph is not None:
        o = body.node("Add", [o, body.node("Mul", [c_new, body.const("p_o", w_ph[2 * H:])])])
    c_out = c_new
    if weights["ln"] is not None:
        c_out = layer_norm(c_new, g_c, b_c, "ln_c")
    h_new = body.node("Mul", [body.node("Sigmoid", [o]), body.node("Tanh", [c_out])], base="m")
    if weights["w_hr"] is not None:
        h_new = product(h_new, weights["w_hr"], "projection")
    if masked:  # a finished sample keeps its state and outputs 0 (chosen, not multiplied by
        # 0 and 1: whatever its padding computed, NaN or inf, never reaches it)
        h_out = body.node("Where", ["mask_t", h_new, "h"], base="h_next")
        c_next = body.node("Where", ["mask_t", c_new, "c"], base="c_next")
        y_t = body.node("Where", ["mask_t", h_new, body.const("y_padded", np.zeros(1, g.dtype))],
                        base="y_t")
    else:
        h_out, c_next = h_new, c_new
        y_t = body.node("Identity", [h_new], base="y_t")
    h_next = body.node("Identity", [h_out], base="h_next_out")
    c_next = body.node("Identity", [c_next], base="c_next_out")
    body.outputs = [body.value_info(n, s) for n, s in
                    zip((h_next, c_next, y_t), (["N", S], ["N", H], ["N", S]))]
    return helper.make_graph(body.nodes, "step", body.inputs, body.outputs, body.initializers)


def _scan_layer(g, layer, k, x, h0, c0, mask, prefix):
    """Layer k as one Scan per direction (the cells ONNX has no node for). Returns
    (y [T, N, D*S], h_n [D, N, S], c_n [D, N, H])."""
    D, H, S = layer.num_directions, layer.hidden_size, layer._state_size
    ys, hs, cs = [], [], []
    for d in range(D):
        base = f"{prefix}d{d}_"
        states = []
        for state, width, name in ((h0, S, "h0"), (c0, H, "c0")):
            if state:  # this layer direction's [N, W]
                index = g.ints(f"{base}{name}_index", k * D + d)
                states.append(g.node("Gather", [state, index], axis=0, base=f"{base}{name}"))
            else:  # zeros [N, W]
                batch = g.node("Slice", [g.node("Shape", [x], base=f"{base}shape"),
                                         g.ints(f"{base}one", [1]), g.ints(f"{base}two", [2])],
                               base=f"{base}batch")
                shape = g.node("Concat", [batch, g.ints(f"{base}{name}_width", [width])], axis=0)
                states.append(g.node("ConstantOfShape", [shape],
                                     value=g.onnx.numpy_helper.from_array(np.zeros(1, g.dtype)),
                                     base=f"{base}{name}"))
        body = _step_body(g, layer, _layer_weights(layer, k, d), H, S, masked=bool(mask))
        reverse = [d] * (2 if mask else 1)
        h_n, c_n, y = g.node("Scan", states + [x] + ([mask] if mask else []), outputs=3,
                             base=f"{base}scan", body=body, num_scan_inputs=len(reverse),
                             scan_input_directions=reverse, scan_output_directions=[d])
        unsqueeze = g.ints(f"{base}axis", [0])
        hs.append(g.node("Unsqueeze", [h_n, unsqueeze], base=f"{base}h_n"))
        cs.append(g.node("Unsqueeze", [c_n, unsqueeze], base=f"{base}c_n"))
        ys.append(y)
    if D == 1:
        return ys[0], hs[0], cs[0]
    return (g.node("Concat", ys, axis=2, base=f"{prefix}y"),
            g.node("Concat", hs, axis=0, base=f"{prefix}h_n"),
            g.node("Concat", cs, axis=0, base=f"{prefix}c_n"))


def _recurrent(g, layer, x, h0=None, c0=None, lengths=None, prefix=""):
    """A whole layer on x [T, N, I] (time-major). ``lengths``: int64 [N] or None. Returns
    (y [T, N, D*S], h_n [L*D, N, S], c_n [L*D, N, H] or None)."""
    scanned = layer.proj_size or layer._layer_norm
    sequence_lens = mask = empty = None
    if lengths and not scanned:
        sequence_lens = g.node("Cast", [lengths], to=g.onnx.TensorProto.INT32, base="sequence_lens")
        if h0:
            empty = g.node("Unsqueeze", [g.node("Equal", [lengths, g.ints("no_steps", 0)]),
                                         g.ints("empty_axes", [0, 2])], base="empty")
    elif lengths:  # mask [T, N, 1] bool: t < lengths[n]
        T = g.node("Gather", [g.node("Shape", [x], base="x_shape"), g.ints("zero", 0)],
                   axis=0, base="T")
        steps = g.node("Range", [g.ints("start", 0), T, g.ints("delta", 1)], base="steps")
        mask = g.node("Less", [g.node("Unsqueeze", [steps, g.ints("step_axis", [1])]), lengths],
                      base="active")
        mask = g.node("Unsqueeze", [mask, g.ints("mask_axis", [2])], base="mask")
    hs, cs = [], []
    for k in range(layer.num_layers):
        where = f"{prefix}l{k}_"
        if scanned:
            x, h_n, c_n = _scan_layer(g, layer, k, x, h0, c0, mask, where)
        else:
            x, h_n, c_n = _node_layer(g, layer, k, x, h0, c0, sequence_lens, empty, where)
        hs.append(h_n)
        cs.append(c_n)

    def joined(parts, base):
        if parts[0] is None:
            return None
        return parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=0, base=base)
    return x, joined(hs, f"{prefix}h_n"), joined(cs, f"{prefix}c_n")


# ---------------------------------------------------------------------------- models
def _export_recurrent(g, layer, hx, lengths):
    batch_first = layer.batch_first
    x_dims = ["batch", "time"] if batch_first else ["time", "batch"]
    g.inputs.append(g.value_info("x", x_dims + [layer.input_size]))
    LD = layer.num_layers * layer.num_directions
    h0 = c0 = None
    if hx is not None:
        g.inputs.append(g.value_info("h0", [LD, "batch", layer._state_size]))
        h0 = "h0"
        if layer._cell == "lstm":
            g.inputs.append(g.value_info("c0", [LD, "batch", layer.hidden_size]))
            c0 = "c0"
    if lengths is not None:
        g.inputs.append(g.value_info("lengths", ["batch"], g.onnx.TensorProto.INT64))
        lengths = "lengths"
    x_tni = g.node("Transpose", ["x"], perm=[1, 0, 2], base="x_tni") if batch_first else "x"
    y, h_n, c_n = _recurrent(g, layer, x_tni, h0, c0, lengths)
    D_S = layer.num_directions * layer._state_size
    g.output("y", y, x_dims + [D_S], **(dict(op="Transpose", perm=[1, 0, 2])
                                             if batch_first else {}))
    finals = [("h_n", h_n, layer._state_size)] + ([("c_n", c_n, layer.hidden_size)]
                                                  if c_n else [])
    for name, value, width in finals:
        g.output(name, value, [LD, "batch", width])


def _export_sequential(g, model, x, y):
    # the first part that reads x (Dropout and Identity before it pass it on)
    first = next((m for m in model if not isinstance(m, (Dropout, Identity))), None)
    value = "x"
    if isinstance(first, Embedding):  # ids of any rank, in the example's integer dtype
        elem = g.helper.np_dtype_to_tensor_dtype(x.dtype)
        g.inputs.append(g.value_info("x", [f"d{k}" for k in range(x.ndim)], elem))
        if x.dtype not in (np.int32, np.int64):  # (Gather's indices are either)
            value = g.node("Cast", [value], to=g.onnx.TensorProto.INT64, base="ids")
    else:
        g.inputs.append(g.value_info("x", ["d0", "d1", x.shape[-1]] if x.ndim == 3
                                     else [f"d{k}" for k in range(x.ndim - 1)] + [x.shape[-1]]))
    for index, m in enumerate(model):
        where = f"m{index}_"
        if isinstance(m, RNNBase):
            if m.batch_first:
                value = g.node("Transpose", [value], perm=[1, 0, 2], base=f"{where}x_tni")
            value = _recurrent(g, m, value, prefix=where)[0]
            if m.batch_first:
                value = g.node("Transpose", [value], perm=[1, 0, 2], base=f"{where}out")
        elif isinstance(m, Linear):
            weight = np.asarray(m.weight.data)
            value = g.node("MatMul", [value, g.const(f"{where}weight_T", weight.T)],
                           base=f"{where}matmul")
            if m.bias is not None:
                value = g.node("Add", [value, g.const(f"{where}bias", np.asarray(m.bias.data))],
                               base=f"{where}linear")
        elif isinstance(m, Embedding):
            value = g.node("Gather", [g.const(f"{where}weight", np.asarray(m.weight.data)), value],
                           axis=0, base=f"{where}embedding")
        # Dropout and Identity: the identity at inference
    g.output("y", value, [f"d{k}" for k in range(y.ndim - 1)] + [y.shape[-1]])


def _export_seq2seq(g, model, lengths):
    """The encoder side: token ids x [N, S] (int64) -> y [N, S, D*H] (the encoder's outputs, the
    decoder's attention keys; D*proj_size wide where the encoder projects), h_n, c_n (the
    encoder's final states)."""
    encoder = model.encoder
    g.inputs.append(g.value_info("x", ["batch", "time"], g.onnx.TensorProto.INT64))
    if lengths is not None:
        g.inputs.append(g.value_info("lengths", ["batch"], g.onnx.TensorProto.INT64))
        lengths = "lengths"
    tokens = g.node("Transpose", ["x"], perm=[1, 0], base="tokens_tn")
    table = g.const("src_embedding", np.asarray(model.src_embedding.weight.data))
    embedded = g.node("Gather", [table, tokens], axis=0, base="embedded")
    y, h_n, c_n = _recurrent(g, encoder, embedded, lengths=lengths, prefix="encoder_")
    S = encoder._state_size  # proj_size where the encoder has one, else hidden_size
    g.output("y", y, ["batch", "time", encoder.num_directions * S], op="Transpose", perm=[1, 0, 2])
    LD = encoder.num_layers * encoder.num_directions
    for name, value, width in (("h_n", h_n, S), ("c_n", c_n, encoder.hidden_size)):
        if value:
            g.output(name, value, [LD, "batch", width])


def _check_opset(onnx, opset, needs):
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) \
            or not needs <= opset <= latest:
        raise ValueError(f"opset: expected an int in [{needs}, {latest}] (this model needs "
                         f"{needs}; the installed onnx knows up to {latest}), got {opset!r}")
    return int(opset)


def export(model, path, x, hx=None, lengths=None, opset=17):
    """Write ``model`` to ``path`` as an ONNX model (atomically); returns the ``ModelProto``.

    ``model``: a recurrent layer (``fr.nn.RNN/LSTM/GRU/LayerNormLSTM``, any variant, layers,
    directions, ``batch_first``): graph inputs ``x``, ``h0``, ``c0`` (where ``hx`` is given),
    ``lengths`` (int64 [N], where given; ONNX's ``sequence_lens``), outputs ``y``, ``h_n``,
    ``c_n`` (LSTM); a ``Sequential`` of recurrent layers, ``Linear``, ``Embedding``,
    ``Dropout`` and ``Identity`` (input ``x``, output ``y``, each recurrent layer passing its
    output sequence on); or a ``Seq2Seq``, whose encoder side is exported (``x`` the source
    token ids [N, S] int64, ``lengths``; outputs ``y`` [N, S, D*H], ``h_n``, ``c_n``).
    Batch and time are dynamic axes. ``x`` (with ``hx`` and ``lengths``) is an example input:
    the model runs on it once (in eval mode) so that a wrong input fails here, not in the
    runtime. Dropout is left out (an inference graph)."""
    onnx = _onnx()
    if isinstance(model, RNNBase):
        needs = 17 if model._layer_norm else MIN_OPSET
    elif isinstance(model, (Sequential, Seq2Seq)):
        layers = [m for m in model.modules() if isinstance(m, RNNBase)]
        needs = 17 if any(m._layer_norm for m in layers) else MIN_OPSET
    else:
        raise TypeError(f"model: expected a fusedrnn recurrent layer, Sequential or Seq2Seq, got "
                        f"{type(model).__name__}")
    opset = _check_opset(onnx, opset, needs)
    path = checked_path(path, "write")

    was_training = model.training
    model.eval()
    try:
        if isinstance(model, RNNBase):
            model(x, hx, lengths)  # checks every argument, names the wrong one
            dtype = model.dtype
            if np.asarray(x).ndim != 3:
                raise ValueError(f"x: expected a batched input (3 dimensions) to export, got shape "
                                 f"{np.shape(x)}")
        elif isinstance(model, Sequential):
            if hx is not None or lengths is not None:
                raise ValueError("hx, lengths: a Sequential takes x alone; export its recurrent "
                                 "layer on its own for initial states or lengths")
            for index, m in enumerate(model):
                if not isinstance(m, SEQUENTIAL_PARTS):
                    raise TypeError(f"model[{index}]: expected a recurrent layer, Linear, "
                                    f"Embedding, Dropout or Identity to export, got "
                                    f"{type(m).__name__}")
            if not isinstance(x, np.ndarray):
                raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
            y = model(x)
            if any(isinstance(m, RNNBase) for m in model) and np.ndim(y) != 3:
                raise ValueError(f"x: expected a batched input to export (its recurrent layers' "
                                 f"output of 3 dimensions), got shape {np.shape(x)}, which gives "
                                 f"{np.ndim(y)}")
            floats = [p.data.dtype for p in model.parameters()]
            dtype = floats[0] if floats else x.dtype
        else:
            if hx is not None:
                raise ValueError("hx: a Seq2Seq's encoder starts from zeros; expected None")
            src = np.asarray(x)
            model._encode(*model._check_src(src, lengths))
            dtype = model.dtype
    finally:
        model.train(was_training)

    g = _Graph(onnx, dtype)
    if isinstance(model, RNNBase):
        _export_recurrent(g, model, hx, lengths)
    elif isinstance(model, Sequential):
        _export_sequential(g, model, x, y)
    else:
        _export_seq2seq(g, model, lengths)
    graph = g.helper.make_graph(g.nodes, type(model).__name__, g.inputs, g.outputs,
                                g.initializers)
    proto = g.helper.make_model(graph, producer_name="fusedrnn", producer_version=__version__,
                                doc_string=f"fusedrnn.onnx.export of a {type(model).__name__}",
                                opset_imports=[g.helper.make_opsetid("", opset)])
    proto.ir_version = min(proto.ir_version, _ir_version(onnx, opset))
    onnx.checker.check_model(proto, full_check=True)
    _atomic.atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return proto


def _ir_version(onnx, opset):
    """The IR version that opset came with (runtimes refuse a newer IR than they know)."""
    table = onnx.helper.VERSION_TABLE  # (release, ir, ai.onnx opset, ml opset, ...)
    irs = [row[1] for row in table if row[2] == opset]
    return min(irs) if irs else onnx.IR_VERSION
