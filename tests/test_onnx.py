"""fusedrnn.onnx: export (checked by onnx.checker and run in ONNX Runtime against our own
outputs), the backend on graphs we build (ONNX's own node tests: test_onnx_node_suite.py), load,
and the errors that name what is wrong."""
import re

import numpy as np
import pytest

import fusedrnn as fr

onnx = pytest.importorskip("onnx")
from fusedrnn.onnx import Backend, export, load

ATOL = 1e-5


def _ort_run(path, feeds):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _flat(result):
    """(out, h_n) or (out, (h_n, c_n)) -> [out, h_n(, c_n)]."""
    out, finals = result
    return [out] + (list(finals) if isinstance(finals, tuple) else [finals])


def _random_layer(seed):
    """A random layer configuration of every cell and variant."""
    rng = np.random.default_rng(seed)
    kind = ["lstm", "gru", "rnn", "peephole", "reset_before", "proj", "layernorm",
            "relu"][seed % 8]
    I, H = int(rng.integers(1, 9)), int(rng.integers(2, 12))
    common = dict(num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                  batch_first=bool(rng.integers(2)),
                  bias=bool(rng.integers(2)) or kind == "layernorm",
                  seed=seed)
    if kind == "layernorm":
        return fr.nn.LayerNormLSTM(I, H, **common)
    if kind in ("lstm", "peephole", "proj"):
        # (a projected one: peepholes with states or lengths alone, seed // 8 of 1 or 2)
        return fr.nn.LSTM(I, H, peephole=kind == "peephole" or (kind == "proj" and
                                                                seed // 8 % 4 in (1, 2)),
                          proj_size=int(rng.integers(1, H)) if kind == "proj" else 0, **common)
    if kind in ("gru", "reset_before"):
        return fr.nn.GRU(I, H, reset_after=kind == "gru", **common)
    return fr.nn.RNN(I, H, nonlinearity="relu" if kind == "relu" else "tanh", **common)


def _inputs(layer, rng, T, N, with_state, with_lengths):
    shape = (N, T, layer.input_size) if layer.batch_first else (T, N, layer.input_size)
    x = rng.standard_normal(shape).astype(np.float32)
    LD = layer.num_layers * layer.num_directions
    hx = None
    if with_state:
        h0 = rng.standard_normal((LD, N, layer.proj_size or layer.hidden_size)).astype(np.float32)
        hx = (h0, rng.standard_normal((LD, N, layer.hidden_size)).astype(np.float32)) \
            if layer._cell == "lstm" else h0
    lengths = None
    if with_lengths:  # 0 and T among them wherever N allows
        lengths = rng.integers(0, T + 1, N).astype(np.int64)
        lengths[:2] = [0, T][:N]
    return x, hx, lengths


def _feeds(x, hx, lengths):
    feeds = {"x": x}
    if hx is not None:
        feeds.update(zip(("h0", "c0"), hx) if isinstance(hx, tuple) else [("h0", hx)])
    if lengths is not None:
        feeds["lengths"] = lengths
    return feeds


@pytest.mark.parametrize("seed", range(32))
def test_export_runs_in_onnxruntime_with_our_outputs(seed, tmp_path):
    """Random layers (every cell and variant, 1-3 layers, directions, batch_first, bias,
    initial states, lengths with 0 and T) exported, checked, run by ONNX Runtime at two batch
    sizes and two lengths (the axes are dynamic): our outputs to 1e-5; every cell and variant
    with and without initial states and lengths (an export that drops one kind's states fails)."""
    layer = _random_layer(seed)
    rng = np.random.default_rng(100 + seed)
    # seed % 8 picks the kind: the flags come from the bits above it, so each kind gets all four
    with_state, with_lengths = bool(seed & 8), bool(seed & 16)
    path = tmp_path / "layer.onnx"
    x, hx, lengths = _inputs(layer, rng, 5, 3, with_state, with_lengths)
    export(layer, path, x, hx, lengths)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == list(_feeds(x, hx, lengths))
    layer.eval()
    for T, N in ((5, 3), (7, 1)):
        x, hx, lengths = _inputs(layer, rng, T, N, with_state, with_lengths)
        got = _ort_run(path, _feeds(x, hx, lengths))
        expected = _flat(layer(x, hx, lengths))
        assert [o.name for o in model.graph.output] == ["y", "h_n", "c_n"][:len(expected)]
        for ours, theirs in zip(expected, got):
            np.testing.assert_allclose(theirs, ours, rtol=0, atol=ATOL)


def test_export_uses_onnx_recurrent_nodes_where_onnx_has_the_cell(tmp_path):
    """Plain, peephole and reset-before cells are ONNX LSTM/GRU/RNN nodes (one per layer); the
    projected LSTM and the LayerNorm-LSTM are Scans of the step."""
    x = np.zeros((2, 1, 3), np.float32)
    cases = [(fr.nn.LSTM(3, 4, 2, peephole=True), "LSTM"),
             (fr.nn.GRU(3, 4, 2, reset_after=False), "GRU"), (fr.nn.RNN(3, 4, 2), "RNN"),
             (fr.nn.LSTM(3, 4, 2, proj_size=2), "Scan"), (fr.nn.LayerNormLSTM(3, 4, 2), "Scan")]
    for layer, op in cases:
        ops = [n.op_type for n in export(layer, tmp_path / "m.onnx", x).graph.node]
        assert ops.count(op) == 2, (layer, ops)
    gru = export(fr.nn.GRU(3, 4, reset_after=False), tmp_path / "g.onnx", x).graph.node
    attribute = [a for n in gru if n.op_type == "GRU" for a in n.attribute
                 if a.name == "linear_before_reset"]
    assert attribute[0].i == 0


def test_export_sequential_and_seq2seq_encoder(tmp_path):
    rng = np.random.default_rng(3)
    model = fr.nn.Sequential(fr.nn.Embedding(11, 5, seed=0),
                             fr.nn.LSTM(5, 8, bidirectional=True, batch_first=True, seed=1),
                             fr.nn.Dropout(0.3), fr.nn.GRU(16, 6, batch_first=True, seed=2),
                             fr.nn.Linear(6, 4, seed=3))
    tokens = rng.integers(0, 11, (3, 7)).astype(np.int64)
    export(model, tmp_path / "seq.onnx", tokens)
    model.eval()
    np.testing.assert_allclose(_ort_run(tmp_path / "seq.onnx", {"x": tokens})[0], model(tokens),
                               rtol=0, atol=ATOL)

    lengths = np.array([7, 3, 1], np.int64)
    for kwargs in (dict(num_layers=2, cell="gru"), dict(cell="lstm", proj_size=4)):
        s2s = fr.nn.Seq2Seq(12, 9, embed_size=5, hidden_size=6, seed=0, **kwargs)
        export(s2s, tmp_path / "s2s.onnx", tokens, lengths=lengths)
        got = _ort_run(tmp_path / "s2s.onnx", {"x": tokens, "lengths": lengths})
        out, finals = s2s.encoder(s2s.src_embedding(tokens.T), lengths=lengths)
        np.testing.assert_allclose(got[0], out.transpose(1, 0, 2), rtol=0, atol=ATOL)
        for a, b in zip(got[1:], finals if isinstance(finals, tuple) else [finals]):
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def test_export_sequential_takes_ids_of_any_rank_and_integer_dtype(tmp_path):
    """An Embedding first takes the example's ids as the model does: any rank, any integer
    dtype (the graph's input has it; a Cast feeds Gather where it takes no such indices)."""
    model = fr.nn.Sequential(fr.nn.Embedding(10, 4, seed=0), fr.nn.Linear(4, 2, seed=1))
    for ids in (np.array([1, 2, 3]), np.array([[1, 2], [3, 4]], np.int32),
                np.array([[[1, 9]], [[3, 0]]], np.uint8)):
        export(model, tmp_path / "m.onnx", ids)
        expected = model(ids)
        np.testing.assert_allclose(_ort_run(tmp_path / "m.onnx", {"x": ids})[0], expected,
                                   rtol=0, atol=ATOL)
        got, = Backend.prepare(onnx.load(tmp_path / "m.onnx")).run([ids])
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_export_of_parts_that_pass_x_on_and_of_no_steps(tmp_path):
    """Dropout or Identity before the Embedding: the graph takes ids (it declared floats, which
    Gather refused); a bidirectional layer's y on an x of no time steps (its Reshape inferred
    a -1 from no element) in ONNX Runtime and our Backend."""
    model = fr.nn.Sequential(fr.nn.Dropout(0.1), fr.nn.Identity(), fr.nn.Embedding(10, 3, seed=0),
                             fr.nn.LSTM(3, 4, batch_first=True, seed=0)).eval()
    ids = np.random.default_rng(0).integers(0, 10, (2, 5))
    export(model, tmp_path / "m.onnx", ids)
    np.testing.assert_allclose(_ort_run(tmp_path / "m.onnx", {"x": ids})[0], model(ids),
                               rtol=0, atol=ATOL)
    for layer in (fr.nn.LSTM(3, 4, bidirectional=True, seed=1),
                  fr.nn.RNN(3, 4, 2, bidirectional=True, seed=2)):
        layer.eval()
        export(layer, tmp_path / "b.onnx", np.ones((2, 2, 3), np.float32))
        x = np.zeros((0, 2, 3), np.float32)
        assert _ort_run(tmp_path / "b.onnx", {"x": x})[0].shape == layer(x)[0].shape == (0, 2, 8)
        got, *_ = Backend.prepare(onnx.load(tmp_path / "b.onnx")).run([x])
        assert got.shape == (0, 2, 8)


def test_backend_runs_a_graph_whose_inputs_and_outputs_have_no_shape(tmp_path):
    """onnx.checker requires the field, ONNX Runtime runs such a model: so does prepare (it
    raised the checker's error, naming nothing)."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
               for n, s in (("W", (1, 4, 3)), ("R", (1, 4, 4)))]
    for x_shape, y_shape in ((None, [5, 1, 2, 4]), ([5, 2, 3], None)):
        graph = helper.make_graph(
            [helper.make_node("RNN", ["x", "W", "R"], ["Y"], hidden_size=4)], "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, y_shape)], weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, tmp_path / "m.onnx")
        expected = _ort_run(tmp_path / "m.onnx", {"x": x})[0]
        got, = Backend.prepare(model).run([x])
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_export_restores_training_mode_and_writes_atomically(tmp_path):
    layer = fr.nn.LSTM(3, 4, dropout=0.0)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"precious")
    with pytest.raises(ValueError, match="x: expected input_size 3"):
        export(layer, path, np.zeros((2, 1, 5), np.float32))
    assert path.read_bytes() == b"precious"  # a failed export leaves the file as it was
    assert layer.training
    export(layer, path, np.zeros((2, 1, 3), np.float32))
    assert layer.training and onnx.load(str(path)).graph.node


def test_export_errors_name_the_argument(tmp_path):
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(TypeError, match="model: expected a fusedrnn recurrent layer"):
        export(object(), tmp_path / "m.onnx", x)
    with pytest.raises(ValueError, match="opset: expected an int in"):
        export(fr.nn.LSTM(3, 4), tmp_path / "m.onnx", x, opset=9)
    with pytest.raises(ValueError, match=r"opset: expected an int in \[17,"):
        export(fr.nn.LayerNormLSTM(3, 4), tmp_path / "m.onnx", x, opset=16)
    with pytest.raises(TypeError, match="path: expected a str"):
        export(fr.nn.LSTM(3, 4), 3, x)
    with pytest.raises(ValueError, match="x: expected a batched input"):
        export(fr.nn.LSTM(3, 4), tmp_path / "m.onnx", x[:, 0])
    with pytest.raises(TypeError, match=r"model\[0\]: expected a recurrent layer"):
        export(fr.nn.Sequential(fr.nn.CrossEntropyLoss()), tmp_path / "m.onnx", x)
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left


@pytest.mark.parametrize("seed", range(8))
def test_backend_runs_our_exported_nodes_like_the_layer(seed, tmp_path):
    """The backend on the graph of one layer's node (every direction, layout, state, lengths
    with 0): the layer's outputs, in ONNX's Y [T, D, N, H] layout, but for a sample of no step,
    whose final states are 0 as ONNX Runtime gives them (the layer: its initial state); and
    ONNX Runtime's outputs on the same graph (layout 0)."""
    rng = np.random.default_rng(seed)
    cell = ["lstm", "gru", "rnn", "peephole"][seed % 4]
    layout = seed // 4 % 2
    T, N, I, H = 4, 3, 5, 6
    layer = {"lstm": fr.nn.LSTM(I, H, bidirectional=True, seed=seed),
             "peephole": fr.nn.LSTM(I, H, peephole=True, seed=seed),
             "gru": fr.nn.GRU(I, H, bidirectional=True, reset_after=bool(seed % 3), seed=seed),
             "rnn": fr.nn.RNN(I, H, nonlinearity="relu", seed=seed)}[cell]
    layer.eval()
    x, hx, lengths = _inputs(layer, rng, T, N, True, True)
    export(layer, tmp_path / "m.onnx", x, hx, lengths)
    model = onnx.load(str(tmp_path / "m.onnx"))
    node = next(n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN"))
    D = layer.num_directions
    if layout:
        node.attribute.append(onnx.helper.make_attribute("layout", 1))
    ours = _flat(layer(x, hx, lengths))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds = {node.input[0]: x.transpose(1, 0, 2) if layout else x,
             node.input[4]: lengths.astype(np.int32)}
    states = [hx] if not isinstance(hx, tuple) else list(hx)
    for name, state in zip(node.input[5:7], states):
        feeds[name] = state.transpose(1, 0, 2) if layout else state
    inputs = [feeds[n] if n in feeds else weights[n] for n in node.input if n]
    Y, *finals = Backend.run_node(node, inputs)
    # the same node in a graph whose weights are initializers (reordered once, at prepare)
    initializers = [t for t in model.graph.initializer if t.name in node.input]
    graph_inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(
        feeds[n].dtype), feeds[n].shape) for n in node.input if n in feeds]
    graph_outputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, a.shape)
                     for n, a in zip(node.output, [Y, *finals])]
    pure = onnx.helper.make_model(
        onnx.helper.make_graph([node], "g", graph_inputs, graph_outputs, initializers),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    again = Backend.prepare(pure).run({n: feeds[n] for n in feeds})
    for a, b in zip(again, [Y, *finals]):
        np.testing.assert_array_equal(a, b)
    if not layout:  # (ONNX Runtime's CPU kernels refuse layout 1)
        pytest.importorskip("onnxruntime")
        onnx.save(pure, str(tmp_path / "pure.onnx"))
        for a, b in zip(_ort_run(tmp_path / "pure.onnx", feeds), [Y, *finals]):
            np.testing.assert_allclose(b, a, rtol=0, atol=ATOL)
    if layout:
        Y, finals = Y.transpose(1, 2, 0, 3), [f.transpose(1, 0, 2) for f in finals]
    np.testing.assert_allclose(Y.transpose(0, 2, 1, 3).reshape(T, N, D * H), ours[0],
                               rtol=0, atol=ATOL)
    assert not lengths.all()
    for got, expected in zip(finals, ours[1:]):
        np.testing.assert_allclose(got, np.where((lengths == 0)[:, None], 0, expected),
                                   rtol=0, atol=ATOL)


def _node_model(op, attributes=None, inputs=("X", "W", "R"), outputs=("Y", "Y_h"), extra=None):
    H, I, G = 3, 2, {"LSTM": 4, "GRU": 3, "RNN": 1}.get(op, 1)
    node = onnx.helper.make_node(op, list(inputs), list(outputs), name="rnn0", hidden_size=H,
                                 **(attributes or {}))
    float_ = onnx.TensorProto.FLOAT
    shapes = {"X": [2, 1, I], "W": [1, G * H, I], "R": [1, G * H, H], "Y": [2, 1, 1, H],
              "Y_h": [1, 1, H], "Z": [2, 1, 1, H]}
    graph = onnx.helper.make_graph(
        [node] + (extra or []), "g",
        [onnx.helper.make_tensor_value_info(n, float_, shapes[n]) for n in inputs],
        [onnx.helper.make_tensor_value_info(n, float_, shapes[n]) for n in outputs])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_backend_outputs_are_the_callers_own_arrays():
    """As ONNX Runtime's: a write into an output reaches neither the fed input it came from (a
    Reshape's view, an Identity), another output, nor a later run (a constant folded at
    prepare)."""
    helper, float_ = onnx.helper, onnx.TensorProto.FLOAT
    W, R = np.ones((1, 3, 2), np.float32), np.full((1, 3, 3), 0.1, np.float32)
    nodes = [helper.make_node("RNN", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=3),
             helper.make_node("Reshape", ["X", "shape"], ["X_flat"]),
             helper.make_node("Add", ["W", "W"], ["W2"]),
             helper.make_node("Identity", ["X"], ["X_same"]),
             helper.make_node("Identity", ["Y_h"], ["Y_h_same"])]
    outputs = {"Y_h": [1, 1, 3], "X_flat": [4], "W2": [1, 3, 2], "X_same": [2, 1, 2],
               "Y_h_same": [1, 1, 3]}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", float_, [2, 1, 2])],
        [helper.make_tensor_value_info(n, float_, s) for n, s in outputs.items()],
        [onnx.numpy_helper.from_array(a, n)
         for a, n in ((W, "W"), (R, "R"), (np.array([-1]), "shape"))])
    rep = Backend.prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.ones((2, 1, 2), np.float32)
    first = rep.run([x])
    first[0][...] = 9.0  # the two outputs of one value are two arrays
    assert not (first[4] == 9.0).any()
    for out in first:
        out[...] = 7.0
    np.testing.assert_array_equal(x, 1.0)
    again = rep.run([x.copy()])
    np.testing.assert_array_equal(again[2], 2.0)
    np.testing.assert_array_equal(again[0], Backend.run_node(nodes[0], [x, W, R])[1])


def test_backend_uses_a_fed_value_of_an_initializer_that_is_a_graph_input():
    """W both an initializer (the default) and a graph input (every weight of an IR < 4 model):
    a fed W is the one used, as ONNX Runtime does; without it, the initializer."""
    rng = np.random.default_rng(0)
    model = _node_model("LSTM")
    W, R = (rng.standard_normal([int(d.dim_value) for d in i.type.tensor_type.shape.dim])
            .astype(np.float32) for i in model.graph.input[1:])
    model.graph.initializer.extend([onnx.numpy_helper.from_array(W, "W"),
                                    onnx.numpy_helper.from_array(R, "R")])
    x = rng.standard_normal((2, 1, 2)).astype(np.float32)
    rep = Backend.prepare(model)
    node = model.graph.node[0]
    for fed in ({}, {"W": 0.5 * W}, {"R": -R}):
        expected = Backend.run_node(node, [x, fed.get("W", W), fed.get("R", R)])
        for a, b in zip(rep.run({"X": x, **fed}), expected):
            np.testing.assert_array_equal(a, b)
    del model.graph.input[1:]  # W and R now constants only (ONNX IR >= 4): not to be fed
    with pytest.raises(ValueError, match=r"inputs: \['W'\] are not inputs of the graph"):
        Backend.prepare(model).run({"X": x, "W": W})


@pytest.mark.parametrize("attributes, message", [
    (dict(clip=1.0), "attribute clip is not supported"),
    (dict(activations=["Sigmoid", "Tanh", "Relu"]), "attribute activations: expected"),
    (dict(input_forget=1), "attribute input_forget=1"),
    (dict(activation_alpha=[0.5]), "attribute activation_alpha is not supported"),
    (dict(direction="sideways"), "attribute direction: expected one of"),
])
def test_backend_refuses_what_it_cannot_run_naming_node_and_attribute(attributes, message):
    with pytest.raises(ValueError, match=f"ONNX node 'rnn0' \\(LSTM\\): {message}"):
        Backend.prepare(_node_model("LSTM", attributes), "CPU")


def test_backend_refuses_other_ops_devices_and_bad_inputs():
    model = _node_model("RNN", outputs=("Y", "Y_h"),
                        extra=[onnx.helper.make_node("Softplus", ["Y"], ["Z"], name="soft0")])
    with pytest.raises(ValueError, match="ONNX node 'soft0' \\(Softplus\\): fusedrnn's ONNX "
                                         "backend runs LSTM, GRU and RNN nodes and the ops "
                                         "exporters put around them \\(Identity, .*\\); not this "
                                         "one"):
        Backend.prepare(model, "CPU")
    with pytest.raises(ValueError, match="device: fusedrnn's ONNX backend runs on 'CPU'"):
        Backend.prepare(_node_model("RNN"), "CUDA")
    assert Backend.supports_device("CPU") and not Backend.supports_device("CUDA")
    rep = Backend.prepare(_node_model("GRU"), "CPU")
    x = np.ones((2, 1, 2), np.float32)
    w, r = np.ones((1, 9, 2), np.float32), np.ones((1, 9, 3), np.float32)
    assert [a.shape for a in rep.run([x, w, r])] == [(2, 1, 1, 3), (1, 1, 3)]
    assert np.allclose(rep.run({"X": x, "W": w, "R": r})[1], rep.run([x, w, r])[1])
    import fusedrnn.onnx as fo  # ONNX's module-level backend interface, as onnx.backend's
    assert fo.supports_device("CPU")
    np.testing.assert_array_equal(fo.run_model(_node_model("GRU"), [x, w, r])[1],
                                  fo.prepare(_node_model("GRU")).run([x, w, r])[1])
    np.testing.assert_array_equal(fo.run_node(_node_model("GRU").graph.node[0], [x, w, r])[1],
                                  fo.prepare(_node_model("GRU")).run([x, w, r])[1])
    # a fed array of another rank or fixed size than its graph input declares, as ONNX
    # Runtime refuses it (a graph unrolled over 5 steps fed 7 gave the first 5 steps' result);
    # where the graph leaves the size open, the node's own check names the weight
    masked = np.ma.MaskedArray(x, mask=np.ones(x.shape, bool))
    for fed in ([masked, w, r], {"X": masked, "W": w, "R": r}):  # (its masked values were used)
        with pytest.raises(TypeError, match=r"inputs\[(0|'X')\]: expected a plain numpy"):
            rep.run(fed)
    for wrong in (np.ones((1, 9, 4), np.float32), np.ones((9, 3), np.float32)):
        with pytest.raises(ValueError, match=r"inputs: 'R': expected shape \[1, 9, 3\] \(the "
                                             r"graph input's; \? any size\), got "):
            rep.run([x, w, wrong])
    open_sizes = _node_model("GRU")
    for d in open_sizes.graph.input[2].type.tensor_type.shape.dim:
        d.dim_param = "n"
    open_sizes.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    open_rep = Backend.prepare(open_sizes, "CPU")
    assert open_rep.run([np.ones((5, 1, 2), np.float32), w, r])[0].shape == (5, 1, 1, 3)
    with pytest.raises(ValueError, match=r"input R \('R'\): expected shape \(1, 9, 3\), got "
                                         r"shape \(1, 9, 4\)"):
        open_rep.run([x, w, np.ones((1, 9, 4), np.float32)])
    for wrong in (np.int64, np.float64):  # ONNX Runtime's check: the graph input's type
        with pytest.raises(TypeError, match=f"inputs: 'X': expected float32 \\(the graph "
                                            f"input's type\\), got {np.dtype(wrong)}"):
            rep.run([x.astype(wrong), w, r])
    with pytest.raises(ValueError, match="input X .*: expected float32 or float64, got int64"):
        Backend.run_node(_node_model("GRU").graph.node[0], [x.astype(np.int64), w, r])
    with pytest.raises(ValueError, match=r"inputs: expected 3 arrays \['X', 'W', 'R'\], got 2"):
        rep.run([x, w])
    with pytest.raises(ValueError, match=r"inputs: missing graph inputs \['R'\]"):
        rep.run({"X": x, "W": w})
    node = _node_model("GRU").graph.node[0]
    for inputs in ([x, w], [x, w, r, r]):
        with pytest.raises(ValueError, match=r"inputs: expected 3 arrays \['X', 'W', 'R'\] \(the "
                                             r"node's given inputs\), got"):
            Backend.run_node(node, inputs)


def test_backend_checks_sequence_lens_naming_node_and_input():
    float_, int32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    node = onnx.helper.make_node("GRU", ["X", "W", "R", "", "L"], ["Y"], name="rnn0",
                                 hidden_size=3)
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("X", float_, [2, 1, 2]),
                      onnx.helper.make_tensor_value_info("W", float_, [1, 9, 2]),
                      onnx.helper.make_tensor_value_info("R", float_, [1, 9, 3]),
                      onnx.helper.make_tensor_value_info("L", int32, [1])],
        [onnx.helper.make_tensor_value_info("Y", float_, [2, 1, 1, 3])]))
    x, w, r = np.ones((2, 1, 2), np.float32), np.ones((1, 9, 2), np.float32), \
        np.ones((1, 9, 3), np.float32)
    with pytest.raises(ValueError, match=r"ONNX node 'rnn0' \(GRU\): input sequence_lens "
                                         r"\('L'\): expected values in \[0, 2\]"):
        Backend.run_node(node, [x, w, r, np.array([3], np.int32)])
    with pytest.raises(ValueError, match=r"input sequence_lens \('L'\): expected integers"):
        Backend.run_node(node, [x, w, r, np.array([1.5], np.float32)])
    with pytest.raises(TypeError, match=r"inputs: 'L': expected int32"):
        Backend.prepare(model).run([x, w, r, np.array([1], np.int64)])
    assert Backend.prepare(model).run([x, w, r, np.array([1], np.int32)])[0].shape == (2, 1, 1, 3)


@pytest.mark.parametrize("op", ["LSTM", "RNN"])
def test_backend_gives_final_states_of_0_for_an_x_of_no_steps(op):
    """An X of no time steps without sequence_lens gave the initial states back where ONNX
    Runtime gives 0, as it does (and we did) for sequence_lens of 0."""
    G = {"LSTM": 4, "RNN": 1}[op]
    states = ["H0", "C0"] if op == "LSTM" else ["H0"]
    node = onnx.helper.make_node(op, ["X", "W", "R", "", ""] + states,
                                 ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else []), hidden_size=2)
    rng = np.random.default_rng(0)
    w, r = (rng.standard_normal(s).astype(np.float32) for s in ((1, 2 * G, 3), (1, 2 * G, 2)))
    ones = [np.ones((1, 1, 2), np.float32)] * len(states)
    for x, lengths in ((np.zeros((0, 1, 3), np.float32), None),
                       (np.zeros((2, 1, 3), np.float32), np.zeros(1, np.int32))):
        if lengths is not None:
            node.input[4] = "L"
        y, *finals = Backend.run_node(node, [x, w, r] + ([lengths] if lengths is not None
                                                         else []) + ones)
        assert y.shape == (x.shape[0], 1, 1, 2)
        for f in finals:
            np.testing.assert_array_equal(f, np.zeros((1, 1, 2), np.float32))


@pytest.mark.parametrize("op, attributes", [
    ("RNN", dict(activations=["Tanh", "Tanh"])),   # the RNN schema's own default, spelled out
    ("RNN", dict(activations=["Relu", "Tanh"])),   # a one-direction node runs the first
    ("LSTM", dict(activations=onnx.AttributeProto.STRINGS)),  # empty: the defaults
    ("GRU", dict(activation_alpha=onnx.AttributeProto.FLOATS,  # empty: no parameter
                 activation_beta=onnx.AttributeProto.FLOATS)),
])
def test_backend_takes_activation_lists_as_onnxruntime_does(op, attributes):
    """Activation lists onnxruntime runs: the RNN schema's default (two) on a one-direction
    node, and empty lists (an attribute type given: an empty list of it)."""
    ort = pytest.importorskip("onnxruntime")
    empty = {k: v for k, v in attributes.items() if not isinstance(v, list)}
    model = _node_model(op, {k: v for k, v in attributes.items() if k not in empty})
    model.graph.node[0].attribute.extend(onnx.helper.make_attribute(k, [], attr_type=t)
                                         for k, t in empty.items())
    rng = np.random.default_rng(4)
    feeds = {i.name: rng.standard_normal([int(d.dim_value) for d in i.type.tensor_type.shape.dim])
             .astype(np.float32) for i in model.graph.input}
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, expected in zip(Backend.prepare(model).run(feeds), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_backend_names_the_activation_before_its_parameters():
    model = _node_model("RNN", dict(activations=["LeakyRelu"], activation_alpha=[0.1]))
    with pytest.raises(ValueError, match=r"attribute activations: expected \['tanh'\] or "
                                         r"\['relu'\] per direction, got \['leakyrelu'\]"):
        Backend.prepare(model)


def test_export_with_lengths_and_states_keeps_the_state_of_an_empty_sample(tmp_path):
    """A sample of length 0 ends where it started in our layers; ONNX's nodes give it 0 in
    ONNX Runtime, so the export restores the initial state there (every node cell, stacked,
    both directions)."""
    rng = np.random.default_rng(0)
    for layer in (fr.nn.LSTM(3, 4, 2, bidirectional=True, seed=1), fr.nn.GRU(3, 4, seed=2),
                  fr.nn.RNN(3, 4, 2, seed=3)):
        layer.eval()
        x, hx, lengths = _inputs(layer, rng, 5, 3, True, True)
        export(layer, tmp_path / "m.onnx", x, hx, lengths)
        expected = _flat(layer(x, hx, lengths))
        got = _ort_run(tmp_path / "m.onnx", _feeds(x, hx, lengths))
        state = hx if isinstance(hx, tuple) else (hx,)
        for ours, theirs, start in zip(expected[1:], got[1:], state):
            np.testing.assert_array_equal(ours[:, 0], start[:, 0])  # lengths[0] == 0
            np.testing.assert_allclose(theirs, ours, rtol=0, atol=ATOL)


def test_export_ignores_what_the_padding_holds_as_the_layers_do(tmp_path):
    """NaN or inf past a sample's length never reaches its state or outputs in our layers (nor
    in ONNX's recurrent nodes): the Scan forms (projection, LayerNorm) choose the kept state
    rather than multiply by a 0/1 mask (NaN x 0 is NaN)."""
    rng = np.random.default_rng(4)
    for layer in (fr.nn.LSTM(3, 4, 2, proj_size=2, bidirectional=True, seed=1),
                  fr.nn.LayerNormLSTM(3, 4, seed=2), fr.nn.GRU(3, 4, seed=3)):
        layer.eval()
        x, hx, _ = _inputs(layer, rng, 5, 3, False, False)
        lengths = np.array([5, 2, 0])
        export(layer, tmp_path / "m.onnx", x, hx, lengths)
        x[2:, 1], x[:, 2] = np.nan, np.inf
        expected = _flat(layer(x, hx, lengths))
        got = _ort_run(tmp_path / "m.onnx", _feeds(x, hx, lengths))
        for ours, theirs in zip(expected, got):
            assert np.isfinite(ours).all()
            np.testing.assert_allclose(theirs, ours, rtol=0, atol=ATOL)


def test_export_refuses_an_unbatched_sequential_by_name(tmp_path):
    model = fr.nn.Sequential(fr.nn.LSTM(5, 4, seed=0), fr.nn.Linear(4, 2, seed=1))
    with pytest.raises(ValueError, match=r"x: expected a batched input to export .* got shape "
                                         r"\(6, 5\)"):
        export(model, tmp_path / "m.onnx", np.zeros((6, 5), np.float32))
    assert not (tmp_path / "m.onnx").exists()


def test_load_keeps_unnamed_and_repeated_nodes_and_refuses_stored_states():
    rng = np.random.default_rng(0)
    H, I = 3, 2
    W, R = (rng.standard_normal(s).astype(np.float32) for s in ((1, 4 * H, I), (1, 4 * H, H)))
    weights = [onnx.numpy_helper.from_array(W, "W"), onnx.numpy_helper.from_array(R, "R"),
               onnx.numpy_helper.from_array(
                   rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R2")]
    nodes = [onnx.helper.make_node("LSTM", ["X", "W", "R"], ["Y1"], hidden_size=H),
             onnx.helper.make_node("LSTM", ["X", "W", "R2"], ["Y2"], hidden_size=H),
             onnx.helper.make_node("LSTM", ["X", "W", "R"], ["Y3"], hidden_size=H, name="same"),
             onnx.helper.make_node("LSTM", ["X", "W", "R"], ["Y4"], hidden_size=H, name="same")]
    float_ = onnx.TensorProto.FLOAT
    model = onnx.helper.make_model(onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("X", float_, [2, 1, I])],
        [onnx.helper.make_tensor_value_info(f"Y{k}", float_, [2, 1, 1, H]) for k in range(1, 5)],
        weights))
    layers = load(model)
    assert list(layers) == ["LSTM", "LSTM_1", "same", "same_3"]
    hh = {k: layer.weight_hh_l0.data for k, layer in layers.items()}
    np.testing.assert_array_equal(hh["LSTM"], hh["same_3"])
    assert not np.array_equal(hh["LSTM"], hh["LSTM_1"])  # the second node's own R
    h0 = onnx.numpy_helper.from_array(np.ones((1, 1, H), np.float32), "h0")
    model.graph.initializer.append(h0)
    model.graph.node[0].input.extend(["", "", "h0"])
    with pytest.raises(ValueError, match=r"input initial_h \('h0'\) is stored in the model"):
        load(model)
    # a stored zero state is the layer's default, if shaped as the node's (torch's dynamo
    # export of a projected LSTM stored one [1, 2, 6] for hidden_size 2: not this layer)
    for shape, fits in (((1, 5, H), True), ((1, 1, H + 1), False), ((2, 1, H), False)):
        model.graph.initializer.remove(model.graph.initializer[-1])
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(shape, np.float32),
                                                                    "h0"))
        if fits:
            assert list(load(model)) == list(layers)
        else:
            with pytest.raises(ValueError, match=r"input initial_h \('h0'\) has shape "
                                                 + re.escape(f"{shape}, expected [1, batch, {H}]")):
                load(model)


@pytest.mark.parametrize("seed", range(32))
def test_backend_runs_what_export_writes_as_onnxruntime_does(seed, tmp_path):
    """The whole exported graph (the nodes and the ops around them: transposes, squeezes,
    slices of the states, the Where of an empty sample) through the backend: ONNX Runtime's
    outputs, at the export's shapes and others; the Scans of the projected and LayerNorm-LSTMs
    (and the Range of their masks) are refused by name."""
    layer = _random_layer(seed)
    rng = np.random.default_rng(200 + seed)
    with_state, with_lengths = bool(seed & 8), bool(seed & 16)  # (every kind gets all four)
    path = tmp_path / "layer.onnx"
    export(layer, path, *_inputs(layer, rng, 5, 3, with_state, with_lengths))
    if layer.proj_size or layer._layer_norm:
        with pytest.raises(ValueError, match=r"\((Scan|Range)\): fusedrnn's ONNX backend "
                                             r"runs"):
            Backend.prepare(str(path))
        return
    rep = Backend.prepare(str(path))
    for T, N in ((5, 3), (7, 2)):
        feeds = _feeds(*_inputs(layer, rng, T, N, with_state, with_lengths))
        for ours, theirs in zip(rep.run(feeds), _ort_run(path, feeds)):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


@pytest.mark.filterwarnings("ignore")  # (the exporters: deprecation, tracer warnings)
def test_backend_and_load_take_torch_exports(tmp_path):
    """torch.onnx.export of torch.nn's LSTM/GRU/RNN (stacked, bidirectional, batch_first), by
    the TorchScript exporter and the default (dynamo) one: the backend gives ONNX Runtime's
    outputs, and load's layers, chained, torch's output (the weights the exporters stack or
    slice out of initializers are computed once)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    exporters = [dict(dynamo=False)]
    try:
        import onnxscript  # noqa: F401 (the default exporter's)
        exporters.append({})
    except ImportError:
        pass
    for cls in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN):
        torch.manual_seed(0)
        module = cls(3, 4, 2, bidirectional=True, batch_first=True).eval()
        with torch.no_grad():
            expected = module(torch.from_numpy(x))[0].numpy()
        for options in exporters:
            path = tmp_path / f"{cls.__name__}.onnx"
            torch.onnx.export(module, (torch.from_numpy(x),), str(path), **options)
            model = onnx.load(str(path))
            feeds = {model.graph.input[0].name: x}
            for ours, theirs in zip(Backend.prepare(model).run(feeds), _ort_run(path, feeds)):
                np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
            if not any(n.op_type in ("LSTM", "GRU", "RNN") for n in model.graph.node):
                continue  # (the dynamo exporter writes torch's RNN as the ops of its steps)
            layers = list(load(model).values())
            y = x
            for layer in layers:  # one layer each, batch-major as exported
                layer.eval()
                y = layer(y.transpose(1, 0, 2) if not layer.batch_first else y)[0]
                y = y.transpose(1, 0, 2) if not layer.batch_first else y
            np.testing.assert_allclose(y, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("seed", range(6))
def test_load_turns_nodes_into_layers_with_their_weights(seed, tmp_path):
    """export then load: each node a one-layer fr.nn layer whose outputs, stacked, are the
    original's (every cell ONNX has a node for)."""
    rng = np.random.default_rng(seed)
    layer = [fr.nn.LSTM(4, 5, 2, bidirectional=True, seed=seed),
             fr.nn.LSTM(4, 5, peephole=True, bias=False, seed=seed),
             fr.nn.GRU(4, 5, 2, reset_after=False, seed=seed),
             fr.nn.GRU(4, 5, bidirectional=True, seed=seed),
             fr.nn.RNN(4, 5, 2, nonlinearity="relu", seed=seed),
             fr.nn.RNN(4, 5, bidirectional=True, seed=seed)][seed]
    layer.eval()
    x = rng.standard_normal((6, 2, 4)).astype(np.float32)
    export(layer, tmp_path / "m.onnx", x)
    loaded = load(tmp_path / "m.onnx")
    assert len(loaded) == layer.num_layers
    y = x
    for part in loaded.values():
        assert isinstance(part, type(layer)) and part.bidirectional == layer.bidirectional
        assert part.peephole == layer.peephole and part.reset_after == layer.reset_after
        part.eval()
        y = part(y)[0]
    np.testing.assert_allclose(y, layer(x)[0], rtol=0, atol=ATOL)


def test_load_refuses_weights_that_are_graph_inputs():
    with pytest.raises(ValueError, match=r"input W \('W'\) is not an initializer"):
        load(_node_model("LSTM"))
    with pytest.raises(TypeError, match="path: expected an onnx.ModelProto, its serialized bytes, a path to one"):
        load(3)


def test_load_says_when_there_is_no_recurrent_node(tmp_path):
    x = np.zeros((2, 1, 3), np.float32)
    export(fr.nn.LayerNormLSTM(3, 4), tmp_path / "ln.onnx", x)
    with pytest.raises(ValueError, match=r"path: expected a model with LSTM, GRU or RNN nodes, "
                                         r"found none \(its ops: .*'Scan'"):
        load(tmp_path / "ln.onnx")


def test_a_float64_layernorm_lstm_keeps_its_eps(tmp_path):
    """ONNX's LayerNormalization takes epsilon as a float32 attribute: a float64 model's eps of
    1e-3 became 0.0010000000475 (ONNX Runtime 8.6e-10 off our layer). Spelled out in float64."""
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).standard_normal((5, 2, 4))
    layer = fr.nn.LayerNormLSTM(4, 6, eps=1e-3, seed=0, dtype=np.float64).eval()
    export(layer, tmp_path / "ln.onnx", x)
    y = ort.InferenceSession(str(tmp_path / "ln.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, layer(x)[0], rtol=0, atol=1e-13)


def _lstm_model(D, direction, shapes=None, sparse_bias=False):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    shapes = {"W": (D, 20, 4), "R": (D, 20, 5), "B": (D, 40), **(shapes or {})}
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=5,
                            direction=direction, name="lstm0")
    dense = [numpy_helper.from_array(a, k) for k, a in arrays.items()
             if not (sparse_bias and k == "B")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                          [3, 2, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                                             [3, None, 2, 5])],
                              dense)
    if sparse_bias:  # B as a sparse initializer: every value stored, by flat position
        values = numpy_helper.from_array(arrays["B"].ravel(), "B")
        indices = numpy_helper.from_array(np.arange(arrays["B"].size, dtype=np.int64), "B_idx")
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices,
                                                                  arrays["B"].shape))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), arrays


def test_weights_that_do_not_fit_the_node_are_named_at_load_and_prepare():
    """load made a forward node with two directions' weights a bidirectional layer (and the
    reverse), silently; prepare failed deep in the reordering (IndexError, "array split does
    not result in an equal division"); ONNX Runtime names the input and the shape."""
    for D, direction in ((2, "forward"), (1, "bidirectional")):
        model, _ = _lstm_model(D, direction)
        for call in (load, Backend.prepare):
            with pytest.raises(ValueError, match=r"ONNX node 'lstm0' \(LSTM\): input W \('W'\): "
                                                 r"expected shape"):
                call(model)
    model, _ = _lstm_model(1, "forward", {"B": (1, 41)})
    with pytest.raises(ValueError, match=r"input B \('B'\): expected shape \(1, 40\)"):
        Backend.prepare(model)


def test_a_sparse_initializer_is_read_as_onnx_runtime_reads_it():
    """A bias stored as a sparse initializer was not seen (KeyError 'B')."""
    ort = pytest.importorskip("onnxruntime")
    model, arrays = _lstm_model(1, "forward", sparse_bias=True)
    x = np.random.default_rng(1).standard_normal((3, 2, 4)).astype(np.float32)
    ours = Backend.prepare(model).run({"X": x})[0]
    theirs = ort.InferenceSession(model.SerializeToString()).run(None, {"X": x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_integer_division_stays_in_integers():
    """Div of int64 went through float64 (2**62 + 1 lost its last bit) and gave the int64
    minimum for a division by zero, which ONNX Runtime refuses."""
    from onnx import helper
    node = helper.make_node("Div", ["a", "b"], ["q"])
    a = np.array([2 ** 62 + 1, -7, 7, -7, -2 ** 63], np.int64)
    b = np.array([1, 2, -2, -2, 2], np.int64)
    assert Backend.run_node(node, [a, b])[0].tolist() == [2 ** 62 + 1, -3, -3, 3, -2 ** 62]
    small = Backend.run_node(node, [np.array([-128, 7], np.int8), np.array([2, -2], np.int8)])[0]
    assert small.dtype == np.int8 and small.tolist() == [-64, -3]
    with pytest.raises(ValueError, match="integer division by zero"):
        Backend.run_node(node, [a, np.zeros(5, np.int64)])
    with pytest.raises(ValueError, match="-9223372036854775808 / -1 overflows int64"):
        Backend.run_node(node, [a[-1:], np.array([-1], np.int64)])


def test_a_file_that_holds_no_model_is_named(tmp_path):
    """A truncated or empty file gave protobuf's DecodeError (no path) or an ir_version
    complaint; both loaders name the file (or the bytes)."""
    from fusedrnn.onnx import Backend, load
    empty, garbage = tmp_path / "empty.onnx", tmp_path / "garbage.onnx"
    empty.write_bytes(b"")
    garbage.write_bytes(b"\x12\x99garbage" * 3)
    for call, name in ((load, "path"), (Backend.prepare, "model")):
        with pytest.raises(ValueError, match=f"^{name}: .*empty.onnx is not an ONNX model "
                                             f"\\(empty\\)"):
            call(empty)
        with pytest.raises(ValueError, match=f"^{name}: .*garbage.onnx is not an ONNX model "
                                             f"\\(it does not parse"):
            call(str(garbage))
        with pytest.raises(FileNotFoundError):
            call(tmp_path / "missing.onnx")
        with pytest.raises(ValueError, match=f"^{name}: the bytes given are not an ONNX model "
                                             f"\\(it does not parse.*a file name goes as a "
                                             f"str or a pathlib.Path"):
            call(garbage.read_bytes())
        with pytest.raises(ValueError, match=f"^{name}: the bytes given are not an ONNX model "
                                             f"\\(empty\\)"):
            call(b"")
        with pytest.raises(ValueError, match=f"^{name}: the bytes given are not an ONNX model"):
            call(bytes(garbage))  # (a file name as bytes: no serialized model)
        with pytest.raises(TypeError, match=f"^{name}: expected an onnx.ModelProto, its "
                                            f"serialized bytes, a path"):
            call(3.5)


def test_serialized_bytes_load_as_onnx_runtime_reads_them(tmp_path):
    """ONNX Runtime's InferenceSession takes a model's bytes; ours took any bytes for a file
    name (a model without a NUL byte was looked for as a file)."""
    import fusedrnn as fr
    from fusedrnn.onnx import Backend, export, load
    layer = fr.nn.GRU(3, 4, seed=1)
    path = tmp_path / "gru.onnx"
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    model = export(layer, path, x)
    assert (model.producer_name, model.producer_version) == ("fusedrnn", fr.__version__)
    data = path.read_bytes()
    want = Backend.prepare(path).run([x])
    for given in (data, bytearray(data), memoryview(data)):
        got = Backend.prepare(given).run([x])
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        (loaded,) = load(given).values()
        assert all(np.array_equal(a, b) for a, b in
                   zip(loaded.state_dict().values(), layer.state_dict().values()))
    # bytes whose tensors lie in external files: refused (they were looked for in the working
    # folder, where a file of that name would have been read, whatever it held)
    import onnx
    onnx.save_model(onnx.load(path), tmp_path / "ext.onnx", save_as_external_data=True,
                    location="ext.data", size_threshold=0)
    for call, name in ((load, "path"), (Backend.prepare, "model")):
        with pytest.raises(ValueError, match=f"^{name}: the bytes given are a model whose "
                                             f"tensors .* lie in external data files"):
            call((tmp_path / "ext.onnx").read_bytes())
    assert all(np.array_equal(a, b) for a, b in
               zip(Backend.prepare(tmp_path / "ext.onnx").run([x]), want))
