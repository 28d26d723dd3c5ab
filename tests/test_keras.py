"""fusedrnn.keras: convert() and load_weights() against Keras 3 itself (backend torch), outputs
and, through torch's autograd on Keras' graph, the gradients of backward()."""
import json
import os
import sys
import warnings
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
pytest.importorskip("h5py")
if keras.backend.backend() != "torch":  # the gradients come from torch's autograd
    pytest.skip(f"Keras runs on {keras.backend.backend()}, not torch", allow_module_level=True)

import fusedrnn.keras as fk

# Keras' own NumPy 2 __array__ deprecation, not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

ATOL = 1e-5


def _randomize(layer, rng):
    """Random weights (Keras' biases start at zero, which would hide a misplaced bias)."""
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(w.dtype)
                       for w in layer.get_weights()])


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _keras_grads(layer, x, initial_state, cotangents):
    """Keras' outputs and the gradients of sum(output * cotangent) w.r.t. x, the initial states
    and the layer's weights (forward then backward layer for a Bidirectional)."""
    xt = torch.tensor(x, requires_grad=True)
    st = None if initial_state is None else [torch.tensor(s, requires_grad=True)
                                             for s in initial_state]
    outputs = layer(xt, initial_state=st)
    loss = sum((y * torch.tensor(g)).sum() for y, g in zip(_as_tuple(outputs), cotangents))
    loss.backward()
    weights = [v.value.grad.numpy() for v in layer.trainable_weights]
    return (outputs, xt.grad.numpy(), None if st is None else [s.grad.numpy() for s in st],
            weights)


def _check(layer, x, initial_state, rng):
    """convert(layer) returns Keras' structure and values, and its backward Keras' gradients."""
    _randomize(layer, rng)
    module = fk.convert(layer)
    ours = module(x, initial_state)
    cotangents = [rng.standard_normal(y.shape).astype(y.dtype) for y in _as_tuple(ours)]
    theirs, dx_k, dstates_k, dweights_k = _keras_grads(layer, x, initial_state, cotangents)

    assert isinstance(ours, tuple) == isinstance(theirs, tuple)
    assert len(_as_tuple(ours)) == len(_as_tuple(theirs))
    for a, b in zip(_as_tuple(ours), _as_tuple(theirs)):
        assert isinstance(a, np.ndarray) and a.dtype == x.dtype
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=0, atol=ATOL)

    dx, dstates = module.backward(tuple(cotangents) if len(cotangents) > 1 else cotangents[0])
    np.testing.assert_allclose(dx, dx_k, rtol=0, atol=ATOL)
    if initial_state is not None:
        assert len(dstates) == len(dstates_k)
        for a, b in zip(dstates, dstates_k):
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)

    # Keras' weight gradients in torch's names: the same mapping as the weights themselves; a
    # single Keras bias feeds both of ours, so each gets its gradient
    entry = keras.saving.serialize_keras_object(layer)
    spec, bidirectional, _ = fk._layer_spec(entry, "layer")
    per_direction = len(dweights_k) // (2 if bidirectional else 1)
    ours_grads = {name: p.grad for name, p in module.rnn.named_parameters()}
    for d in range(2 if bidirectional else 1):
        suffix = "_reverse" if d else ""
        expected = fk._torch_state_dict(
            spec, dweights_k[d * per_direction:(d + 1) * per_direction], suffix, "grads")
        for name, want in expected.items():
            if name.startswith("bias_hh") and not (spec.keras_class == "GRU" and spec.reset_after):
                want = expected[name.replace("bias_hh", "bias_ih")]
            np.testing.assert_allclose(ours_grads[name], want, rtol=0, atol=ATOL, err_msg=name)
    return module


def _inputs(seed, states_per_direction, directions, with_state, dtype=np.float32):
    rng = np.random.default_rng(seed)
    N, T, I, H = (int(v) for v in rng.integers(1, 6, 4) + (0, 1, 0, 1))
    x = rng.standard_normal((N, T, I)).astype(dtype)
    states = [rng.standard_normal((N, H)).astype(dtype)
              for _ in range(states_per_direction * directions)] if with_state else None
    return rng, x, H, states


def _rnn_of_lstm_cell(units, **options):
    """keras.layers.RNN(LSTMCell): the cell's options to the cell, the rest to the RNN."""
    cell_options = {k: options.pop(k) for k in ("use_bias", "dropout", "recurrent_dropout")
                    if k in options}
    return keras.layers.RNN(keras.layers.LSTMCell(units, **cell_options), **options)


CELLS = {  # name -> (layer factory (units, **options), states per direction)
    "lstm": (lambda H, **o: keras.layers.LSTM(H, **o), 2),
    "gru": (lambda H, **o: keras.layers.GRU(H, **o), 1),
    "gru_reset_before": (lambda H, **o: keras.layers.GRU(H, reset_after=False, **o), 1),
    "simple_tanh": (lambda H, **o: keras.layers.SimpleRNN(H, **o), 1),
    "simple_relu": (lambda H, **o: keras.layers.SimpleRNN(H, activation="relu", **o), 1),
    "rnn_of_lstm_cell": (_rnn_of_lstm_cell, 2),
}

OPTIONS = [  # (options, with an initial state)
    ({}, False),
    ({"return_sequences": True}, False),
    ({"return_sequences": True, "return_state": True, "go_backwards": True}, False),
    ({"return_state": True, "use_bias": False}, False),
    ({"return_sequences": True, "go_backwards": True, "use_bias": False}, True),
    ({"return_state": True, "dropout": 0.3, "recurrent_dropout": 0.2}, True),  # training only
]


@pytest.mark.parametrize("options_index", range(len(OPTIONS)))
@pytest.mark.parametrize("cell", list(CELLS))
def test_convert_matches_keras(cell, options_index):
    make, S = CELLS[cell]
    options, with_state = OPTIONS[options_index]
    rng, x, H, states = _inputs(10 * options_index + len(cell), S, 1, with_state)
    layer = make(H, **options)
    layer.build(x.shape)
    module = _check(layer, x, states, rng)
    assert module.return_sequences == options.get("return_sequences", False)
    assert module.go_backwards == options.get("go_backwards", False)


BIDIRECTIONAL_OPTIONS = [({}, False), ({"return_sequences": True, "return_state": True}, True)]


@pytest.mark.parametrize("options_index", range(len(BIDIRECTIONAL_OPTIONS)))
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before", "simple_relu"])
def test_convert_bidirectional_matches_keras(cell, merge_mode, options_index):
    make, S = CELLS[cell]
    options, with_state = BIDIRECTIONAL_OPTIONS[options_index]
    rng, x, H, states = _inputs(7 * options_index + len(cell) + len(str(merge_mode)), S, 2,
                                with_state)
    layer = keras.layers.Bidirectional(make(H, **options), merge_mode=merge_mode)
    layer.build(x.shape)
    module = _check(layer, x, states, rng)
    assert module.rnn.bidirectional and module.merge_mode == merge_mode


def test_convert_bidirectional_with_its_own_backward_layer():
    rng, x, H, states = _inputs(3, 2, 2, True)
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(H, return_sequences=True, use_bias=False),
        backward_layer=keras.layers.LSTM(H, return_sequences=True, use_bias=False,
                                         go_backwards=True, name="back"))
    layer.build(x.shape)
    _check(layer, x, states, rng)


def test_convert_float64():
    rng, x, H, states = _inputs(4, 1, 1, True, dtype=np.float64)
    layer = keras.layers.GRU(H, return_sequences=True, return_state=True, dtype="float64")
    layer.build(x.shape)
    module = _check(layer, x, states, rng)
    assert module.rnn.dtype == np.float64


def test_convert_lone_initial_state_and_repr():
    rng, x, H, states = _inputs(5, 1, 1, True)
    layer = keras.layers.SimpleRNN(H, return_sequences=True, name="encoder")
    layer.build(x.shape)
    _randomize(layer, rng)
    module = fk.convert(layer)
    # Keras takes a lone array for a one-state layer
    np.testing.assert_allclose(module(x, states[0]), module(x, states), rtol=0, atol=0)
    assert repr(module).startswith("KerasRecurrent(\n  'encoder', return_sequences=True\n"
                                   "  (rnn): RNN(")
    assert set(module.state_dict()) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0",
                                        "rnn.bias_ih_l0", "rnn.bias_hh_l0"}


# ---------------------------------------------------------------------------- refusals
class MyLSTM(keras.layers.LSTM):
    pass


def _built(layer):
    layer.build((2, 5, 3))
    return layer


def _tanh_that_is_relu(x):
    return keras.ops.relu(x)


_tanh_that_is_relu.__name__ = "tanh"


def test_convert_takes_keras_ops_activations():
    layer = _built(keras.layers.GRU(3, activation=keras.ops.tanh,
                                    recurrent_activation=keras.ops.sigmoid))
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(fk.convert(layer)(x), layer(x).detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("make, error, words", [
    (lambda: keras.layers.Dense(3), TypeError, ["layer (Dense 'dense", "expected an LSTM"]),
    (lambda: keras.layers.LSTM(3, activation="relu"), ValueError,
     ["layer (LSTM 'lstm", "activation: expected 'tanh'", "got 'relu'"]),
    (lambda: keras.layers.GRU(3, recurrent_activation="hard_sigmoid"), ValueError,
     ["recurrent_activation: expected 'sigmoid'", "got 'hard_sigmoid'"]),
    (lambda: keras.layers.SimpleRNN(3, activation="sigmoid"), ValueError,
     ["activation: expected 'tanh' or 'relu'", "got 'sigmoid'"]),
    (lambda: keras.layers.LSTM(3, stateful=True), ValueError, ["stateful: expected False"]),
    (lambda: keras.layers.LSTM(3, dtype="mixed_float16"), ValueError,
     ["dtype: expected the float32 or float64 policy", "got 'mixed_float16'"]),
    (lambda: MyLSTM(3), TypeError, ["MyLSTM", "subclass or custom class"]),
    (lambda: keras.layers.RNN([keras.layers.GRUCell(3), keras.layers.GRUCell(3)]), TypeError,
     ["cell: expected one LSTMCell, GRUCell or SimpleRNNCell", "StackedRNNCells"]),
    (lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(3), backward_layer=keras.layers.LSTM(4, go_backwards=True)),
     ValueError, ["backward layer: units: expected the forward layer's 3", "got 4"]),
    (lambda: keras.layers.Bidirectional(
        keras.layers.GRU(3, go_backwards=True), backward_layer=keras.layers.GRU(3)),
     ValueError, ["go_backwards: expected False for the forward layer", "got True and False"]),
    (lambda: keras.layers.Bidirectional(keras.layers.LSTM(3, activation="relu")), ValueError,
     ["layer (Bidirectional 'bidirectional", "forward layer: activation"]),
    (lambda: keras.layers.LSTM(3), ValueError, ["expected a built layer"]),  # not built
    # Keras computes an RNN in its cell's dtype policy, which the RNN's does not set
    (lambda: _built(keras.layers.RNN(keras.layers.LSTMCell(3, dtype="mixed_float16"))),
     ValueError, ["cell: dtype: expected the float32 or float64 policy", "'mixed_float16'"]),
    (lambda: _built(keras.layers.RNN(keras.layers.GRUCell(3, dtype="float64"))), ValueError,
     ["cell: dtype: expected the RNN's policy 'float32'", "got 'float64'"]),
    # a user's function serializes by its name when that names a Keras activation
    (lambda: _built(keras.layers.SimpleRNN(3, activation=_tanh_that_is_relu)), ValueError,
     ["activation: expected Keras' own 'tanh'", "got a function of that name"]),
])
def test_convert_refuses_what_it_cannot_reproduce(make, error, words):
    with pytest.raises(error) as info:
        fk.convert(make())
    for word in words:
        assert word in str(info.value)


def test_convert_refuses_a_non_keras_object():
    with pytest.raises(TypeError, match="layer: expected a Keras 3 layer"):
        fk.convert(fk)


def test_module_bad_inputs():
    _, x, H, states = _inputs(6, 2, 2, True)
    layer = keras.layers.Bidirectional(keras.layers.LSTM(H, return_state=True), merge_mode=None)
    layer.build(x.shape)
    module = fk.convert(layer)
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions \[N, T, I\]"):
        module(x[0])
    # float64 data into a float32 layer: cast, as Keras casts it (it was refused)
    for a, b in zip(module(x.astype(np.float64)), module(x)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="x: expected"):
        module(x.astype(str))
    with pytest.raises(ValueError, match=r"initial_state: expected 4 arrays \[h_forward, "
                                         r"c_forward, h_backward, c_backward\].*got 2"):
        module(x, states[:2])
    with pytest.raises(ValueError, match=r"initial_state\[3\]: expected shape"):
        module(x, states[:3] + [states[3][:, :-1]])
    module.eval()
    module(x)
    with pytest.raises(RuntimeError, match="backward called before a training-mode forward"):
        module.backward(None)
    module.train()
    outputs = module(x)
    with pytest.raises(TypeError, match="dout: expected a tuple of 6 arrays or None"):
        module.backward(outputs[0])
    with pytest.raises(ValueError, match=r"dout\[1\]: expected shape"):
        module.backward((None, outputs[1][:, :-1]) + (None,) * 4)
    dx, dstates = module.backward((outputs[0],) + (None,) * 5)  # None: zeros
    assert dx.shape == x.shape and len(dstates) == 4
    with pytest.raises(TypeError, match="rnn: expected a fusedrnn.nn.LSTM, GRU or RNN"):
        fk.KerasRecurrent(layer)
    with pytest.raises(ValueError, match="go_backwards: expected False for a bidirectional"):
        fk.KerasRecurrent(module.rnn, go_backwards=True)


# ---------------------------------------------------------------------------- load_weights
def _save(model, tmp_path, name):
    rng = np.random.default_rng(len(name))
    for layer in model.layers:
        _randomize(layer, rng)
    path = tmp_path / name
    model.save(path)
    return path


def _load_without_keras(path, monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "keras", None)  # load_weights must not need Keras
        return fk.load_weights(path)


def _sequential():
    T, I = 6, 3
    return keras.Sequential([
        keras.Input((T, I)),
        keras.layers.LSTM(5, return_sequences=True, name="first"),
        keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True, reset_after=False),
                                   merge_mode="sum", name="both_ways"),
        keras.layers.LSTM(3, return_sequences=True, go_backwards=True, use_bias=False),
        keras.layers.SimpleRNN(2, activation="relu"),
    ])


def test_load_weights_sequential(tmp_path, monkeypatch):
    model = _sequential()
    path = _save(model, tmp_path, "sequential.keras")
    modules = _load_without_keras(path, monkeypatch)
    assert list(modules) == [layer.name for layer in model.layers]
    x = np.random.default_rng(1).standard_normal((4, 6, 3)).astype(np.float32)
    y = x
    for module in modules.values():  # the chain of our modules is the model
        y = module(y)
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=0, atol=ATOL)
    assert isinstance(modules["both_ways"], fk.KerasRecurrent)
    assert modules["both_ways"].merge_mode == "sum"


def test_load_weights_reads_an_unzipped_save(tmp_path, monkeypatch):
    """model.save(folder, zipped=False) (Keras 3) was "no such file" though the folder was
    there."""
    model = _sequential()
    model.save(tmp_path / "folder", zipped=False)
    modules = _load_without_keras(tmp_path / "folder", monkeypatch)
    x = np.random.default_rng(1).standard_normal((4, 6, 3)).astype(np.float32)
    y = x
    for module in modules.values():
        y = module(y)
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=0, atol=ATOL)


def test_load_weights_functional_with_a_nested_model(tmp_path, monkeypatch):
    T, I = 5, 4
    inner = keras.Sequential([keras.Input((T, 6)),
                              keras.layers.LSTM(3, return_sequences=True, name="y_lstm"),
                              keras.layers.LSTM(3, return_sequences=True, name="x_lstm")],
                             name="inner")
    inputs = keras.Input((T, I))
    a = keras.layers.RNN(keras.layers.GRUCell(6), return_sequences=True, name="generic")(inputs)
    b = inner(a)
    c = keras.layers.Bidirectional(keras.layers.LSTM(2, return_sequences=True),
                                   backward_layer=keras.layers.LSTM(2, return_sequences=True,
                                                                    go_backwards=True),
                                   name="z_bi")(b)
    d = keras.layers.GRU(3, name="a_gru")(inputs)  # a second branch from the input
    e = keras.layers.Dense(2)(keras.layers.Concatenate()([keras.layers.Flatten()(c), d]))
    model = keras.Model(inputs, e)
    path = _save(model, tmp_path, "functional.keras")
    modules = _load_without_keras(path, monkeypatch)
    # the model's order (the h5 groups are numbered in it), not the names' order
    expected = [name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)
                for name in ([f"inner/{inner_layer.name}" for inner_layer in layer.layers]
                             if layer is inner else [layer.name])
                if name in ("generic", "inner/y_lstm", "inner/x_lstm", "z_bi", "a_gru")]
    assert list(modules) == expected and len(expected) == 5
    keras_layers = {name: (inner.get_layer(name.split("/")[1]) if "/" in name
                           else model.get_layer(name)) for name in modules}
    rng = np.random.default_rng(2)
    for name, module in modules.items():
        x = rng.standard_normal((3, T, module.rnn.input_size)).astype(np.float32)
        np.testing.assert_allclose(module(x), keras_layers[name](x).detach().numpy(), rtol=0,
                                   atol=ATOL, err_msg=name)


def test_load_weights_without_h5py(tmp_path, monkeypatch):
    path = _save(_sequential(), tmp_path, "model.keras")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r'needs h5py.*pip install "fusedrnn\[keras\]"'):
        fk.load_weights(path)


def test_load_weights_refuses_an_unsupported_layer(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4, 2)),
                              keras.layers.GRU(3, recurrent_activation="tanh", name="odd")])
    path = _save(model, tmp_path, "odd.keras")
    with pytest.raises(ValueError, match=r"path: .*odd\.keras.*layer \(GRU 'odd'\): "
                                         r"recurrent_activation: expected 'sigmoid'"):
        _load_without_keras(path, monkeypatch)


@pytest.mark.parametrize("masking", ["masking", "embedding"])
def test_load_weights_refuses_a_recurrent_layer_after_a_mask(masking, tmp_path, monkeypatch):
    """Keras skips the masked steps of a Masking layer's or Embedding(mask_zero=True)'s input,
    which the converted layers cannot: refused by name (they were silently computed over the
    padding), in a nested model too; a mask-free model still loads."""
    first = (keras.layers.Masking(0.0, name="pad") if masking == "masking"
             else keras.layers.Embedding(9, 2, mask_zero=True, name="pad"))
    shape = (4, 2) if masking == "masking" else (4,)
    inner = keras.Sequential([keras.Input(shape), first, keras.layers.LSTM(3, name="enc")],
                             name="inner")
    for model, where in ((inner, "enc"), (keras.Sequential([keras.Input(shape), inner]),
                                          "enc")):
        path = _save(model, tmp_path, "masked.keras")
        with pytest.raises(ValueError, match=rf"layer \(LSTM '{where}'\) comes after "
                                             r"'(inner/)?pad', which makes a Keras mask"):
            _load_without_keras(path, monkeypatch)
    plain = keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(3, name="enc")])
    assert list(_load_without_keras(_save(plain, tmp_path, "plain.keras"), monkeypatch)) == ["enc"]
    # functional: the layer called with a mask is refused; one on a mask-free branch loads
    tokens, series = keras.Input((4,)), keras.Input((4, 2))
    embedded = keras.layers.Embedding(9, 2, mask_zero=True, name="pad")(tokens)
    masked = keras.layers.GRU(3, name="masked")(keras.layers.Dropout(0.1)(embedded))
    branches = keras.Model([tokens, series], [keras.layers.GlobalAveragePooling1D()(embedded),
                                              keras.layers.LSTM(3, name="free")(series)])
    assert list(_load_without_keras(_save(branches, tmp_path, "b.keras"), monkeypatch)) == ["free"]
    # (named by the layer making the mask, not Keras' op computing it, 'not_equal')
    with pytest.raises(ValueError, match=r"layer \(GRU 'masked'\) comes after 'pad', which"):
        _load_without_keras(_save(keras.Model(tokens, masked), tmp_path, "m.keras"), monkeypatch)
    # functional: a mask fed into a nested model reaches its recurrent layers; a mask made in
    # a nested model reaches none of its siblings
    series = keras.Input((4, 2))
    nested = keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(3, name="enc")],
                              name="inner")
    with warnings.catch_warnings():  # Keras warns that a Sequential "destroys" the mask; its
        warnings.simplefilter("ignore")  # LSTM skips the masked steps all the same
        fed = keras.Model(series, nested(keras.layers.Masking(0.0, name="pad")(series)))
    with pytest.raises(ValueError, match=r"layer \(LSTM 'enc'\) comes after '"):
        _load_without_keras(_save(fed, tmp_path, "fed.keras"), monkeypatch)
    a, b = keras.Input((4, 2)), keras.Input((4, 2))
    masks = keras.Sequential([keras.Input((4, 2)), keras.layers.Masking(0.0, name="msk"),
                              keras.layers.Dense(2)], name="masks")
    apart = keras.Model([a, b], [masks(a), keras.layers.LSTM(3, name="free")(b)])
    assert list(_load_without_keras(_save(apart, tmp_path, "apart.keras"), monkeypatch)) == \
        ["free"]
    # a nested model of two inputs records a list of masks (nulls here): none is fed
    a, b = keras.Input((4, 2)), keras.Input((4, 2))
    pair = keras.Model([a, b], keras.layers.LSTM(3, name="enc")(
        keras.layers.Concatenate()([a, b])), name="pair")
    x, y = keras.Input((4, 2)), keras.Input((4, 2))
    two = keras.Model([x, y], pair([x, y]))
    assert list(_load_without_keras(_save(two, tmp_path, "two.keras"), monkeypatch)) == \
        ["pair/enc"]
    # functional: a mask carried through a nested model (the node after it records none) or
    # made in one reaches the recurrent layer after it (both loaded, wrong by 0.1-0.4)
    series = keras.Input((4, 2))
    j = keras.Input((4, 2))
    dense = keras.Model(j, keras.layers.Dense(2)(j), name="dense")
    i = keras.Input((4, 2))
    makes = keras.Model(i, keras.layers.Dense(2)(keras.layers.Masking(0.0, name="msk")(i)),
                        name="makes")
    for source in ("pad", "makes/msk"):
        with warnings.catch_warnings():  # (Keras' warning that nested models "destroy" it)
            warnings.simplefilter("ignore")
            carried = dense(keras.layers.Masking(0.0, name="pad")(series)) \
                if source == "pad" else makes(series)
            model = keras.Model(series, keras.layers.GRU(3, name="g")(carried))
            path = _save(model, tmp_path, "carried.keras")
        with pytest.raises(ValueError, match=rf"layer \(GRU 'g'\) comes after '{source}'"):
            _load_without_keras(path, monkeypatch)
    # ... but not past a layer that ends it (pooling, a convolution, a reshape, a last step;
    # Keras runs the recurrent layer after them unmasked), nor through a shared layer's call
    # on unmasked input, nor out of a nested model that pools it: those load (they were
    # refused)
    with warnings.catch_warnings():  # (Keras' warnings that these layers "destroy" the mask)
        warnings.simplefilter("ignore")
        steps = keras.Input((4, 2))
        masked = keras.layers.Masking(0.0, name="pad")(steps)
        for ends in (keras.layers.Flatten(), keras.layers.Conv1D(2, 1)):
            carried = keras.layers.Reshape((4, 2))(ends(masked)) if isinstance(
                ends, keras.layers.Flatten) else ends(masked)
            model = keras.Model(steps, keras.layers.LSTM(3, name="after")(carried))
            assert list(_load_without_keras(_save(model, tmp_path, "ends.keras"), monkeypatch)) == \
                ["after"]
        a, b = keras.Input((4, 2)), keras.Input((4, 2))
        shared = keras.layers.Dense(2, name="shared")
        pooled = keras.layers.GlobalAveragePooling1D()(shared(keras.layers.Masking(0.0)(a)))
        model = keras.Model([a, b], [pooled, keras.layers.LSTM(3, name="free")(shared(b))])
        loaded = _load_without_keras(_save(model, tmp_path, "sh.keras"), monkeypatch)
        assert list(loaded) == ["free"]
        i = keras.Input((4, 2))
        pools = keras.Model(i, keras.layers.RepeatVector(4)(keras.layers.GlobalAveragePooling1D()(
            keras.layers.Masking(0.0)(i))), name="pools")
        model = keras.Model(steps, keras.layers.LSTM(3, name="after")(pools(steps)))
        assert list(_load_without_keras(_save(model, tmp_path, "pools.keras"), monkeypatch)) == \
            ["after"]
    # a nested model whose output is another nested model's carries the mask (Keras numbers
    # that output's node from 1: the walk found no call and loaded the layer, 0.01 off);
    # dict outputs are read (KeyError); a Lambda given no mask function drops it (refused)
    with warnings.catch_warnings():  # (Keras' warnings that these "destroy" the mask)
        warnings.simplefilter("ignore")
        ids = keras.Input((None,), dtype="int32")
        n_in = keras.Input((None, 3))
        inner = keras.Model(n_in, keras.layers.Dense(3)(n_in), name="inner")
        m_in = keras.Input((None, 3))
        outer = keras.Model(m_in, inner(m_in), name="outer")
        masked = keras.layers.Embedding(6, 3, mask_zero=True, name="pad")(ids)
        model = keras.Model(ids, keras.layers.LSTM(2, name="after")(outer(masked)))
        with pytest.raises(ValueError, match=r"layer \(LSTM 'after'\) comes after 'pad'"):
            _load_without_keras(_save(model, tmp_path, "twice.keras"), monkeypatch)
        as_dict = keras.Model(n_in, {"a": keras.layers.Dense(3)(n_in)}, name="as_dict")
        plain = keras.layers.Embedding(6, 3)(ids)
        model = keras.Model(ids, keras.layers.LSTM(2, name="after")(as_dict(plain)["a"]))
        loaded = _load_without_keras(_save(model, tmp_path, "d.keras"), monkeypatch)
        assert list(loaded) == ["after"]
        doubled = keras.layers.Lambda(lambda t: t * 2)(masked)
        model = keras.Model(ids, keras.layers.LSTM(2, name="after")(doubled))
        loaded = _load_without_keras(_save(model, tmp_path, "l.keras"), monkeypatch)
        assert list(loaded) == ["after"]
    # a merge carries a mask where all its inputs do (Keras runs the layer after Add(masked,
    # unmasked) unmasked: it loads; Add of two masked inputs is refused)
    ids, series = keras.Input((4,), dtype="int32"), keras.Input((4, 2))
    masked = keras.layers.Embedding(9, 2, mask_zero=True, name="pad")(ids)
    for other, loads in ((series, True), (keras.layers.Dense(2)(masked), False)):
        merged = keras.layers.Add()([masked, other])
        model = keras.Model([ids, series], keras.layers.LSTM(3, name="after")(merged))
        path = _save(model, tmp_path, "add.keras")
        if loads:
            assert list(_load_without_keras(path, monkeypatch)) == ["after"]
        else:
            with pytest.raises(ValueError, match=r"layer \(LSTM 'after'\) comes after 'pad'"):
                _load_without_keras(path, monkeypatch)
    # in a Sequential too, a layer that ends the mask lets the recurrent layer after it load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ended = keras.Sequential([keras.Input((4,)), keras.layers.Embedding(9, 2, mask_zero=True),
                                  keras.layers.Conv1D(2, 1), keras.layers.LSTM(3, name="after")])
        loaded = _load_without_keras(_save(ended, tmp_path, "ended.keras"), monkeypatch)
    assert list(loaded) == ["after"]
    # a functional model that makes a mask, in a Sequential: the layers after it are refused
    i = keras.Input((4, 2))
    masking = keras.Model(i, keras.layers.Dense(2)(keras.layers.Masking(0.0, name="msk")(i)),
                          name="masking")
    held = keras.Sequential([keras.Input((4, 2)), masking, keras.layers.LSTM(3, name="after")])
    with pytest.raises(ValueError, match=r"layer \(LSTM 'after'\) comes after 'masking/msk'"):
        _load_without_keras(_save(held, tmp_path, "held.keras"), monkeypatch)


def test_load_weights_knows_the_other_mask_makers(tmp_path, monkeypatch):
    """A Lambda given a mask and a ReversibleEmbedding(mask_zero=True) make masks as Masking
    does (they loaded silently, 0.02-0.3 off Keras); a custom layer may, unseen: a warning."""
    L = keras.layers
    lam = L.Lambda(lambda t: t, name="lam",
                   mask=lambda t, mask=None: keras.ops.any(keras.ops.not_equal(t, 0), axis=-1))
    for first, shape in ((lam, (4, 2)), (L.ReversibleEmbedding(9, 2, mask_zero=True,
                                                                name="lam"), (4,))):
        model = keras.Sequential([keras.Input(shape), first, L.LSTM(3, name="enc")])
        with pytest.raises(ValueError, match=r"layer \(LSTM 'enc'\) comes after 'lam', which "
                                             r"makes a Keras mask"):
            _load_without_keras(_save(model, tmp_path, "lam.keras"), monkeypatch)

    @keras.saving.register_keras_serializable(package="fusedrnn_test")
    class Scale(L.Layer):
        def call(self, x):
            return 2 * x
    model = keras.Sequential([keras.Input((4, 2)), Scale(name="scale"), L.LSTM(3, name="enc")])
    with warnings.catch_warnings():  # (Keras' own, saving a custom layer)
        warnings.simplefilter("ignore", DeprecationWarning)
        path = _save(model, tmp_path, "c.keras")
    with pytest.warns(UserWarning, match=r"layer \(LSTM 'enc'\) comes after the custom layer "
                                         r"'scale': if it makes a Keras mask"):
        assert list(_load_without_keras(path, monkeypatch)) == ["enc"]
    wrapped = keras.Sequential([keras.Input((2, 4, 2)), L.TimeDistributed(L.LSTM(3), name="td")])
    path = _save(wrapped, tmp_path, "td.keras")
    with pytest.warns(UserWarning, match=r"layer \(TimeDistributed 'td'\) holds a LSTM, which "
                                         r"load_weights leaves out"):
        assert _load_without_keras(path, monkeypatch) == {}

    @keras.saving.register_keras_serializable(package="fusedrnn_test")
    class MyLSTM(L.LSTM):  # (it was left out without a word)
        pass
    for functional in (False, True):
        inp = keras.Input((5, 4))
        out = MyLSTM(3, name="mine")(L.LSTM(3, return_sequences=True, name="a")(inp))
        model = keras.Model(inp, out) if functional else keras.Sequential(
            [keras.Input((5, 4)), L.LSTM(3, return_sequences=True, name="a"),
             MyLSTM(3, name="mine")])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            path = _save(model, tmp_path, f"sub{functional}.keras")
        with pytest.warns(UserWarning, match=r"layer \(MyLSTM 'mine'\) looks recurrent but is a "
                                             r"custom class"):
            assert list(_load_without_keras(path, monkeypatch)) == ["a"]


def _rewrite(path, member, change):
    """A copy of the .keras zip ``path`` whose ``member`` is change(its bytes)."""
    copy = path.with_name("changed_" + path.name)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, change(data) if info.filename == member else data)
    return copy


def test_load_weights_checks_the_h5_layout(tmp_path):
    """Recent Keras writes each layer's name beside its weights: a config whose layers are in
    another order than the h5 groups' is refused, not read into the wrong layers."""
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.GRU(3, return_sequences=True,
                                                                     name="one"),
                              keras.layers.GRU(3, name="two")])
    path = _save(model, tmp_path, "two.keras")

    def swap_layers(data):
        config = json.loads(data)
        layers = config["config"]["layers"]
        layers[-2], layers[-1] = layers[-1], layers[-2]
        return json.dumps(config).encode()

    with pytest.raises(ValueError, match=r"weights at layers/gru belong to layer 'one', "
                                         r"expected 'two'"):
        fk.load_weights(_rewrite(path, "config.json", swap_layers))
    with pytest.raises(ValueError, match="model.weights.h5 of .* is not an HDF5 file"):
        fk.load_weights(_rewrite(path, "model.weights.h5", lambda data: b"garbage"))


def test_load_weights_bad_paths(tmp_path):
    with pytest.raises(TypeError, match="path: expected a str, bytes or os.PathLike file name, got int"):
        fk.load_weights(3)
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        fk.load_weights(tmp_path / "missing.keras")
    text = tmp_path / "model.h5"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="path: expected a Keras 3 .keras file .* not a zip"):
        fk.load_weights(text)
    partial = tmp_path / "partial.keras"
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="without model.weights.h5"):
        fk.load_weights(partial)
    subclassed = tmp_path / "subclassed.keras"
    with zipfile.ZipFile(subclassed, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "MyModel", "config": {}}))
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(ValueError, match="expected a Sequential or functional model .* "
                                         "got 'MyModel'"):
        fk.load_weights(subclassed)


def test_load_weights_takes_a_recurrent_layer_after_an_op_that_drops_the_mask(tmp_path,
                                                                              monkeypatch):
    """Keras 3 gives the result of an op between layers (x[:, :-1], the teacher-forcing input
    of a seq2seq, or x * 2) no mask: its LSTM runs unmasked, which load_weights refused as
    masked; in a Sequential, a layer that ends the mask also ends a custom layer's."""
    tokens = keras.Input((6,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True, name="emb")(tokens)
    for cut in (embedded[:, :-1], embedded * 2.0):
        model = keras.Model(tokens, keras.layers.LSTM(5, name="rnn")(cut))
        path = _save(model, tmp_path, "op.keras")
        assert list(_load_without_keras(path, monkeypatch)) == ["rnn"]
    # an op that may give its input back, mask and all (a cast to the input's own dtype): the
    # LSTM after it runs masked in Keras, and is refused
    model = keras.Model(tokens, keras.layers.LSTM(5, name="rnn")(
        keras.ops.cast(embedded, "float32")))
    with pytest.raises(ValueError, match=r"layer \(LSTM 'rnn'\) comes after 'emb', which "
                                         r"makes a Keras mask"):
        _load_without_keras(_save(model, tmp_path, "cast.keras"), monkeypatch)

    class PadMask(keras.layers.Layer):
        def compute_mask(self, x, mask=None):
            return keras.ops.any(keras.ops.not_equal(x, 0.0), axis=-1)

        def call(self, x):
            return x
    with warnings.catch_warnings():  # (Keras warns that Conv1D destroys the mask)
        warnings.simplefilter("ignore")
        seq = keras.Sequential([keras.Input((4, 2)), PadMask(name="pm"),
                                keras.layers.Conv1D(4, 1, name="conv"),
                                keras.layers.LSTM(3, name="enc")])
        path = _save(seq, tmp_path, "c.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (it warned that the custom layer may make a mask)
        assert list(_load_without_keras(path, monkeypatch)) == ["enc"]
