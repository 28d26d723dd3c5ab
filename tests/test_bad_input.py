"""Bad input to the nn layers raises ValueError/TypeError (RuntimeError for a backward with
nothing to go back through) whose message names the argument and states what was expected and
what was given; odd but valid input (non-contiguous views, NaN) computes the right thing."""
import numpy as np
import pytest

from conftest import CELLS, GATES, cell_backward, cell_forward, reference
from fusedrnn import functional as F
from fusedrnn import nn

T, N, I, H = 5, 3, 4, 6


def layers(dtype=np.float32, **kw):
    return [nn.RNN(I, H, dtype=dtype, seed=0, **kw), nn.LSTM(I, H, dtype=dtype, seed=0, **kw),
            nn.GRU(I, H, dtype=dtype, seed=0, **kw)]


def x_of(dtype=np.float32, shape=(T, N, I)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def state_of(m, h0):
    return (h0, np.zeros_like(h0)) if isinstance(m, nn.LSTM) else h0


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_wrong_ndim(m):
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions \[T, N, I\].*got shape \(5, 3, 4, 1\)"):
        m(x_of(shape=(T, N, I, 1)))
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions.*got shape \(4,\)"):
        m(x_of(shape=(I,)))


def test_wrong_ndim_batch_first_names_the_layout():
    m = nn.GRU(I, H, batch_first=True)
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions \[N, T, I\]"):
        m(x_of(shape=(1, N, T, I)))


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_wrong_feature_size(m):
    with pytest.raises(ValueError, match=r"x: expected input_size 4 .*got shape \(5, 3, 7\)"):
        m(x_of(shape=(T, N, 7)))


@pytest.mark.parametrize("m", layers(num_layers=2), ids=["rnn", "lstm", "gru"])
def test_wrong_hx_shape(m):
    name = "h0" if isinstance(m, nn.LSTM) else "hx"
    with pytest.raises(ValueError, match=fr"{name}: expected shape \(2, 3, 6\).*got \(1, 3, 6\)"):
        m(x_of(), state_of(m, np.zeros((1, N, H), np.float32)))
    with pytest.raises(ValueError, match=fr"{name}: expected shape \(2, 3, 6\).*got \(2, 3\)"):
        m(x_of(), state_of(m, np.zeros((2, N), np.float32)))


def test_wrong_c0_shape_and_lstm_state_not_a_tuple():
    m = nn.LSTM(I, H)
    h0 = np.zeros((1, N, H), np.float32)
    with pytest.raises(ValueError, match=r"c0: expected shape \(1, 3, 6\).*got \(1, 2, 6\)"):
        m(x_of(), (h0, np.zeros((1, 2, H), np.float32)))
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h0, c0\).*got ndarray"):
        m(x_of(), h0)


def test_unbatched_input_with_batched_hx():
    m = nn.RNN(I, H)
    with pytest.raises(ValueError, match=r"hx: expected shape \(1, 6\).*unbatched.*got \(1, 1, 6\)"):
        m(x_of(shape=(T, I)), np.zeros((1, 1, H), np.float32))


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_lengths_out_of_range(m):
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\].*got min 1 and max 6"):
        m(x_of(), lengths=np.array([1, 6, 2]))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\].*got min -1"):
        m(x_of(), lengths=np.array([-1, 5, 2]))


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_lengths_wrong_size(m):
    with pytest.raises(ValueError, match=r"lengths: expected shape \(3,\).*got \(2,\)"):
        m(x_of(), lengths=np.array([1, 2]))


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_lengths_wrong_dtype(m):
    with pytest.raises(TypeError, match=r"lengths: expected an integer array, got dtype float64"):
        m(x_of(), lengths=np.array([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_mismatched_dtype(m):
    with pytest.raises(TypeError, match=r"x: expected dtype float32 .*got float64"):
        m(x_of(np.float64))
    name = "h0" if isinstance(m, nn.LSTM) else "hx"
    with pytest.raises(TypeError, match=fr"{name}: expected dtype float32 .*got float64"):
        m(x_of(), state_of(m, np.zeros((1, N, H), np.float64)))
    out, _ = m(x_of())
    with pytest.raises(TypeError, match=r"dout: expected dtype float32 .*got float64"):
        m.backward(out.astype(np.float64))


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_non_array_input(m):
    with pytest.raises(TypeError, match=r"x: expected a numpy.ndarray, got list"):
        m(x_of().tolist())
    with pytest.raises(TypeError, match=r"x: expected a numpy.ndarray, got NoneType"):
        m(None)


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_wrong_dout_and_dhx_shapes(m):
    out, _ = m(x_of())
    with pytest.raises(ValueError, match=r"dout: expected shape \(5, 3, 6\).*got \(5, 3, 5\)"):
        m.backward(np.zeros((T, N, H - 1), np.float32))
    name = "dh_n" if isinstance(m, nn.LSTM) else "dhx"
    with pytest.raises(ValueError, match=fr"{name}: expected shape \(1, 3, 6\).*got \(3, 6\)"):
        m.backward(out, state_of(m, np.zeros((N, H), np.float32)))


def test_load_state_dict_wrong_shape():
    m = nn.LSTM(I, H, num_layers=2)
    state = m.state_dict()
    state["weight_ih_l1"] = np.zeros((4 * H, I), np.float32)
    with pytest.raises(ValueError, match=r"weight_ih_l1.*expected shape \(24, 6\), got \(24, 4\)"):
        m.load_state_dict(state)
    with pytest.raises(TypeError, match="state_dict: expected a mapping"):
        m.load_state_dict([1, 2])


@pytest.mark.parametrize("make, key, value, error, message", [
    (lambda: nn.LSTM(4, 6), "weight_hh_l0", np.zeros((2, 2), np.float32), ValueError,
     r"weight_hh_l0: expected shape \(24, 6\) for LSTM\(4, 6\), got \(2, 2\)"),
    (lambda: nn.RNN(4, 6), "weight_hh_l0", np.zeros((2, 2), np.float32), ValueError,
     r"weight_hh_l0: expected shape \(6, 6\)"),
    (lambda: nn.GRU(4, 6), "bias_ih_l0", None, ValueError,
     "bias_ih_l0, bias_hh_l0: give both biases or neither .*bias_ih_l0 is None"),
    (lambda: nn.LSTM(4, 6), "weight_ih_l0", None, TypeError,
     r"weight_ih_l0: expected a Parameter of shape \(24, 4\), got None"),
    (lambda: nn.GRUCell(4, 6), "weight_hh", np.zeros((2, 2), np.float32), ValueError,
     r"weight_hh: expected shape \(18, 6\) for GRUCell"),
    (lambda: nn.LSTMCell(4, 6), "bias_hh", None, ValueError,
     "bias_ih, bias_hh: give both biases or neither .*bias_hh is None"),
    (lambda: nn.LSTM(4, 6), "weight_hh_l0", np.zeros((24, 6)), TypeError,
     "weight_hh_l0: expected dtype float32 .*, got float64"),
    (lambda: nn.GRUCell(4, 6), "bias_hh", np.zeros(18), TypeError,
     "bias_hh: expected dtype float32 .*, got float64"),
    (lambda: nn.Linear(4, 6), "weight", np.zeros((6, 3), np.float32), ValueError,
     r"weight: expected shape \(6, 4\) for Linear"),
    (lambda: nn.Linear(4, 6), "bias", np.zeros(6, np.float64), TypeError,
     "bias: expected dtype float32 .*, got float64"),
])
@pytest.mark.parametrize("training", [True, False])
def test_a_replaced_parameter_of_another_form_is_named_by_its_key(make, key, value, error, message,
                                                                  training):
    m = make().train(training)
    m(np.zeros((3, 2, 4) if isinstance(m, nn.RNNBase) else (2, 4), np.float32))
    m.__dict__.pop("_weight_shapes", None)  # (as a module pickled before they were kept)
    m(np.zeros((3, 2, 4) if isinstance(m, nn.RNNBase) else (2, 4), np.float32))
    setattr(m, key, None if value is None else nn.Parameter(value))
    x = np.zeros((3, 2, 4) if isinstance(m, nn.RNNBase) else (2, 4), np.float32)
    with pytest.raises(error, match=message):
        m(x)


def test_an_embedding_refuses_a_weight_of_another_dtype():
    emb = nn.Embedding(10, 4)
    emb.weight.data = emb.weight.data.astype(np.float64)
    with pytest.raises(TypeError, match="weight: expected dtype float32"):
        emb(np.array([1, 2]))


@pytest.mark.parametrize("m", layers(), ids=["rnn", "lstm", "gru"])
def test_backward_before_training_forward(m):
    with pytest.raises(RuntimeError, match="backward called before a training-mode forward"):
        m.backward(np.zeros((T, N, H), np.float32))


@pytest.mark.parametrize("m", layers(np.float64, num_layers=2, bidirectional=True),
                         ids=["rnn", "lstm", "gru"])
def test_non_contiguous_input_matches_contiguous_copy(m):
    base = x_of(np.float64, shape=(2 * T, N, I))
    for view in (base[::2],                                 # strided in time
                 x_of(np.float64, (N, T, I)).transpose(1, 0, 2),  # transposed
                 x_of(np.float64, (T, N, 2 * I))[:, :, ::2]):      # strided features
        assert not view.flags.c_contiguous
        out_v, state_v = m(view)
        grad = np.ones_like(out_v)
        dx_v, _ = m.backward(grad)
        out_c, state_c = m(np.ascontiguousarray(view))
        dx_c, _ = m.backward(grad)
        np.testing.assert_array_equal(out_v, out_c)
        np.testing.assert_array_equal(dx_v, dx_c)
    h0 = np.zeros((N, 4, H)).transpose(1, 0, 2)  # non-contiguous initial state
    out_v, _ = m(base[:T], state_of(m, h0))
    out_c, _ = m(base[:T], state_of(m, np.ascontiguousarray(h0)))
    np.testing.assert_array_equal(out_v, out_c)


@pytest.mark.parametrize("m", layers(np.float64, num_layers=2, bidirectional=True)
                         + [nn.RNN(I, H, 2, "relu", bidirectional=True, dtype=np.float64, seed=0)],
                         ids=["rnn", "lstm", "gru", "rnn_relu"])
def test_nan_stays_in_its_sample(m):
    x = x_of(np.float64)
    clean, clean_state = m(x)
    x[2, 1, 0] = np.nan
    out, state = m(x)
    h_n = state[0] if isinstance(m, nn.LSTM) else state
    clean_h = clean_state[0] if isinstance(m, nn.LSTM) else clean_state
    assert np.isnan(out[:, 1]).any() and np.isnan(h_n[:, 1]).any()
    for n in (0, 2):
        np.testing.assert_array_equal(out[:, n], clean[:, n])
        np.testing.assert_array_equal(h_n[:, n], clean_h[:, n])
    dx, _ = m.backward(np.ones_like(out))
    if not (isinstance(m, nn.RNN) and m.nonlinearity == "relu"):
        # (ReLU's derivative at a NaN output is 1 in torch too, so no NaN need reach dx there)
        assert np.isnan(dx[:, 1]).any()
    assert np.all(np.isfinite(dx[:, [0, 2]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_unpickled_arrays_are_accepted(dtype):
    """An unpickled array's dtype equals float32 (or float64) but is another object: the kernels
    take it, with the same results, in the recurrent and the attention kernels."""
    import pickle
    from fusedrnn.nn.attention import attention_step_forward

    def unpickled(a):
        a = pickle.loads(pickle.dumps(a))
        assert a.dtype == dtype and a.dtype is not np.dtype(dtype)
        return a

    for m in layers(dtype):
        x = x_of(dtype)
        m.load_state_dict({k: unpickled(v) for k, v in m.state_dict().items()})
        out, _ = m(x)
        again, _ = m(unpickled(x))
        np.testing.assert_array_equal(again, out)
        dx, _ = m.backward(unpickled(np.ones_like(out)))
        assert dx.shape == x.shape
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((2, 4), (2, 3, 4), (2, 3, 5)))
    mask = np.ones((2, 3), np.uint8)
    context, weights, _ = attention_step_forward("dot", q, k, v, mask)
    context2, weights2, _ = attention_step_forward("dot", unpickled(q), unpickled(k),
                                                   unpickled(v), mask)
    np.testing.assert_array_equal(context2, context)


# ---------------------------------------------------------------------------- every argument named
def functional_args(cell, dtype=np.float64):
    """Valid arguments of F.<cell>_forward (a dict in signature order, c0 for the LSTM only)."""
    G = GATES[cell]
    rng = np.random.default_rng(0)
    args = dict(x=rng.standard_normal((T, N, I)), h0=np.zeros((N, H)), c0=np.zeros((N, H)),
                w_ih=rng.standard_normal((G * H, I)), w_hh=rng.standard_normal((G * H, H)),
                b_ih=np.zeros(G * H), b_hh=np.zeros(G * H))
    if cell != "lstm":
        del args["c0"]
    return {k: v.astype(dtype) for k, v in args.items()}


def forward_of(cell):
    return getattr(F, f"{cell}_forward"), getattr(F, f"{cell}_backward")


# wrong for every argument of the kernels and layers (N = 3 samples: [1, 2] is no lengths either)
BAD_VALUES = [None, [1, 2], "abc", 3, 1.5, True, np.array(1.0), np.array([1, 0]),
              np.zeros((2, 3)), np.zeros((T, N, I), np.int32), [[1], [2, 3]], [1, [2]],
              np.array([{"a": 1}], dtype=object), np.float64(1.0), object()]


def assert_named(name, call):
    """``call()`` raises TypeError or ValueError whose message starts with ``name``."""
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    message = str(info.value)
    assert message.startswith(name) or (name in ("b_ih", "b_hh")
                                        and message.startswith("b_ih, b_hh")), (name, message)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_functional_argument_is_validated_and_named(cell):
    """Each argument of the functional forward and backward, given a wrong value, raises a
    TypeError/ValueError whose message starts with its name (ragged lengths gave NumPy's
    message, an array for reverse/training or nonlinearity "truth value is ambiguous")."""
    forward, backward = forward_of(cell)
    good = functional_args(cell)
    names = list(good) + ["lengths", "reverse", "training"]
    if cell == "rnn":
        names.append("nonlinearity")
    optional = {"h0", "c0", "b_ih", "b_hh", "lengths"}  # None means zeros / no bias / length T
    for name in names:
        for bad in BAD_VALUES:
            if bad is None and name in optional:
                continue
            if name in ("reverse", "training") and bad is True:
                continue
            args = dict(good)
            kwargs = {}
            if name in good:
                args[name] = bad
            else:
                kwargs[name] = bad
            assert_named(name, lambda: forward(*args.values(), **kwargs))
    y, *_, ctx = forward(*good.values(), training=True)
    grads = ["dy", "dh_n"] + (["dc_n"] if cell == "lstm" else [])
    for name in ["ctx"] + grads:
        for bad in BAD_VALUES:
            if bad is None:
                continue
            kwargs = {"ctx": ctx, "dy": y, name: bad}
            assert_named(name, lambda: backward(**kwargs))


@pytest.mark.parametrize("m", layers(np.float64), ids=["rnn", "lstm", "gru"])
def test_ragged_or_fractional_lengths_are_named(m):
    x = x_of(np.float64)
    with pytest.raises(ValueError, match=r"^lengths: expected 3 integers"):
        m(x, lengths=[1, [2], 3])
    with pytest.raises(TypeError, match=r"^lengths: expected an integer array, got dtype float64"):
        m(x, lengths=np.array([1.5, 2.0, 3.0]))
    with pytest.raises(TypeError, match=r"^lengths: expected an integer array, got dtype object"):
        m(x, lengths=[1, None, 2])
    # lists and tuples of ints are lengths as they were
    out, _ = m(x, lengths=np.array([1, 5, 2]))
    for lengths in ([1, 5, 2], (1, 5, 2), [np.int32(1), 5, np.int64(2)]):
        np.testing.assert_array_equal(m(x, lengths=lengths)[0], out)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_reverse_and_training_must_be_bools(cell):
    forward, _ = forward_of(cell)
    args = functional_args(cell)
    for name in ("reverse", "training"):
        for bad in (np.array([1, 0]), np.array(True), 2, 1.0, "yes", None):
            with pytest.raises(TypeError, match=fr"^{name}: expected a bool \(True or False\), "
                                                fr"got {type(bad).__name__}"):
                forward(*args.values(), **{name: bad})
    y, *_ = forward(*args.values(), reverse=True)
    np.testing.assert_array_equal(forward(*args.values(), reverse=1)[0], y)  # (0 and 1 are flags)
    y_np, *rest = forward(*args.values(), reverse=np.bool_(True), training=np.bool_(True))
    np.testing.assert_array_equal(y_np, y)
    assert rest[-1] is not None  # training=np.True_ kept the context


def test_nonlinearity_must_be_a_known_name():
    forward, _ = forward_of("rnn")
    args = functional_args("rnn")
    with pytest.raises(TypeError, match=r"^nonlinearity: expected 'tanh' or 'relu' \(a str\), "
                                        r"got ndarray"):
        forward(*args.values(), nonlinearity=np.array(["tanh", "relu"]))
    with pytest.raises(ValueError, match=r"^nonlinearity: expected 'tanh' or 'relu', got 'gelu'"):
        forward(*args.values(), nonlinearity="gelu")
    with pytest.raises(TypeError, match=r"^nonlinearity: "):
        nn.RNN(I, H, nonlinearity=np.array(["tanh", "relu"]))
    with pytest.raises(TypeError, match=r"^nonlinearity: "):
        nn.RNNCell(I, H, nonlinearity=None)


@pytest.mark.parametrize("m", layers(np.float64) + [nn.RNNCell(I, H, dtype=np.float64),
                                                    nn.LSTMCell(I, H, dtype=np.float64),
                                                    nn.GRUCell(I, H, dtype=np.float64)],
                         ids=["rnn", "lstm", "gru", "rnn_cell", "lstm_cell", "gru_cell"])
def test_layer_forward_arguments_are_named(m):
    """hx and lengths of the layers (hx of the cells), given anything wrong, raise TypeError or
    ValueError whose message starts with their name (h0/c0 for the parts of an LSTM's hx)."""
    cell = isinstance(m, (nn.RNNCell, nn.LSTMCell, nn.GRUCell))
    x = x_of(np.float64, (N, I) if cell else (T, N, I))
    for bad in BAD_VALUES + [(1, 2, 3), ([1], [2])]:
        if bad is not None:
            with pytest.raises((TypeError, ValueError), match=r"^(hx|h0|c0)"):
                m(x, bad)
    for bad in BAD_VALUES:
        if not cell and bad is not None:
            with pytest.raises((TypeError, ValueError), match=r"^lengths"):
                m(x, lengths=bad)
    if cell:
        m(x)
        with pytest.raises(TypeError, match=r"^dh: expected an array of real numbers "
                                            r"\(float64\), got a list NumPy cannot read"):
            m.backward([[1.0], [1.0, 2.0]])
        m.clear_steps()


@pytest.mark.parametrize("make", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_refused_cell_backward_keeps_its_step(make):
    """A cell's backward refused for its gradient pops no step: the corrected call then
    back-propagates the latest step (not the one before it), as a fresh cell does."""
    lstm = make is nn.LSTMCell
    xs = x_of(np.float64, (2, N, I))
    dh = np.linspace(-1, 1, N * H).reshape(N, H)

    def two_steps(cell):
        state = cell(xs[0])
        cell(xs[1], state)
        return cell

    cell, fresh = two_steps(make(I, H, dtype=np.float64, seed=3)), \
        two_steps(make(I, H, dtype=np.float64, seed=3))
    for bad in (dh[:, :1], dh[None], "dh"):
        with pytest.raises((TypeError, ValueError), match=r"^dh"):
            cell.backward(bad)
        assert cell.pending_steps == 2
    if lstm:
        with pytest.raises(ValueError, match=r"^dc"):
            cell.backward(dh, dh[:1])
        assert cell.pending_steps == 2
    got, want = cell.backward(dh), fresh.backward(dh)
    np.testing.assert_array_equal(got[0], want[0])
    assert cell.pending_steps == 1
    for p, q in zip(cell.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    # steps whose parameters were written since cannot be back-propagated: all pending ones
    # are dropped as the backward refuses, so that a new forward's step is the next one taken
    cell(xs[0])
    assert cell.pending_steps == 2
    cell.weight_hh.data = cell.weight_hh.data.copy()
    with pytest.raises(RuntimeError, match="a parameter was written"):
        cell.backward(dh)
    assert cell.pending_steps == 0
    cell(xs[0])
    cell.backward(dh)
    assert cell.pending_steps == 0


# ---------------------------------------------------------------------------- zero-size work
class NoKernels:
    """A stand-in for fusedrnn._C whose every kernel fails the test if called."""

    def __getattr__(self, name):
        def kernel(*args, **kwargs):
            raise AssertionError(f"the kernel {name} ran on a call with nothing to compute")
        return kernel


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (3, 0, 4, 5), (3, 2, 4, 0), (0, 0, 0, 0)],
                         ids=["T0", "N0", "H0", "all0"])
@pytest.mark.parametrize("name", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_zero_size_work_returns_at_once_like_the_reference(name, shape, with_lengths, monkeypatch):
    """T, N or H zero: no kernel runs (it walked every empty step: T = 10**9 with N = 0 took a
    minute); outputs and every gradient have the reference's shapes and values (y zeros, the
    final state the initial one, dh0 = dh_n, zero weight gradients)."""
    cell, nonlinearity = CELLS[name]
    T_, N_, I_, H_ = shape
    G = GATES[cell]
    rng = np.random.default_rng(1)

    def normal(*s):
        return rng.standard_normal(s).astype(np.float32)

    p = dict(x=normal(T_, N_, I_), h0=normal(N_, H_), c0=normal(N_, H_),
             w_ih=normal(G * H_, I_), w_hh=normal(G * H_, H_), b_ih=normal(G * H_),
             b_hh=normal(G * H_), dy=normal(T_, N_, H_), dh_n=normal(N_, H_), dc_n=normal(N_, H_))
    lengths = np.minimum(np.arange(N_), T_) if with_lengths else None
    monkeypatch.setattr(F, "_C", NoKernels())
    results = {}
    for module in (F, reference):
        y, h_n, c_n, ctx = cell_forward(module, cell, nonlinearity, p["x"], p["h0"],
                                        p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                        lengths=lengths, reverse=True)
        grads = cell_backward(module, cell, ctx, p["dy"], p["dh_n"],
                              p["dc_n"] if cell == "lstm" else None)
        results[module] = dict(grads, y=y, h_n=h_n, c_n=c_n)
    for key, ours in results[F].items():
        expected = results[reference][key]
        assert (ours is None) == (expected is None), key
        if ours is not None:
            assert ours.dtype == np.float32 and ours.shape == expected.shape, key
            np.testing.assert_allclose(ours, expected, err_msg=key)
    assert results[F]["h_n"] is not p["h0"]  # a new array, as the kernel returns


def test_zero_size_huge_sequence_returns_at_once(monkeypatch):
    """x of shape (10**9, 0, I) (no element: free to make) in every forward and backward, the
    layers (a stack, bidirectional with dropout) and the cells (N = 0) included."""
    monkeypatch.setattr(F, "_C", NoKernels())
    x = np.empty((10 ** 9, 0, I), np.float32)
    for cell in ("rnn", "lstm", "gru"):
        forward, backward = forward_of(cell)
        args = functional_args(cell, np.float32)
        args["x"], args["h0"] = x, np.zeros((0, H), np.float32)
        if cell == "lstm":
            args["c0"] = np.zeros((0, H), np.float32)
        y, *states, ctx = forward(*args.values(), training=True)
        assert y.shape == (10 ** 9, 0, H)
        assert all(s.shape == (0, H) for s in states if s is not None)
        dx, dh0, *rest = backward(ctx, np.empty((10 ** 9, 0, H), np.float32))
        assert dx.shape == x.shape and dh0.shape == (0, H)
        assert all(not g.any() for g in rest if g is not None)
    for m in (layers(num_layers=2) + layers(num_layers=2, bidirectional=True, dropout=0.5)):
        out, _ = m(x)
        assert out.shape == (10 ** 9, 0, m.num_directions * H)
        dx, _ = m.backward(np.empty(out.shape, np.float32))
        assert dx.shape == x.shape
    for m in (nn.RNNCell(I, H), nn.LSTMCell(I, H), nn.GRUCell(I, H)):
        out = m(np.empty((0, I), np.float32))
        h = out[0] if isinstance(out, tuple) else out
        assert h.shape == (0, H)
        dx, _ = m.backward(np.empty((0, H), np.float32))
        assert dx.shape == (0, I)


def test_thread_counts_are_checked_and_numpy_integers_taken():
    import fusedrnn as fr
    saved = fr.get_num_threads()
    try:
        for n, error in ((0, ValueError), (10 ** 12, ValueError), (2 ** 31, ValueError),
                         (2.0, TypeError), (True, TypeError), ("2", TypeError)):
            with pytest.raises(error, match="^n: expected"):
                fr.set_num_threads(n)
        fr.set_num_threads(np.int64(1))
        assert fr.get_num_threads() == 1
    finally:
        fr.set_num_threads(saved)


def test_the_binding_itself_refuses_what_would_crash_or_misread():
    """fusedrnn._C directly (users can reach it): a call tuple's x that is not an ndarray (a
    list became a temporary array freed before the kernel read it: wrong numbers), a thread
    count past 4096 (a typo started threads up to the process limit), a call that is an
    iterator (its arrays were freed before the kernel read them), a flag that is not a bool,
    a plan of nonsense sizes, a kept WeightCache given
    other shapes at the same addresses (it served the old forms), and no sample or no hidden
    unit with a huge T (the time loop walked every empty step)."""
    from fusedrnn import _C
    rng = np.random.default_rng(0)
    x, h0, c0 = (rng.standard_normal(s) for s in ((T, N, I), (N, H), (N, H)))
    w_ih, w_hh, b = (rng.standard_normal(s) for s in ((4 * H, I), (4 * H, H), (4 * H,)))
    call = (x, h0, c0, w_ih, w_hh, b, b, None, False, False)
    for many in (_C.recurrent_forward_many, _C.recurrent_forward_stack):
        with pytest.raises(TypeError, match="x: expected a numpy.ndarray, got list"):
            many("lstm", "tanh", [(x.tolist(),) + call[1:]])
    y = _C.recurrent_forward_many("lstm", "tanh", [call])[0][0]
    np.testing.assert_array_equal(y, _C.recurrent_forward("lstm", "tanh", *call)[0])
    # a call given as an iterator: its arrays lived in a temporary tuple freed before the
    # kernel read them (a segfault, or wrong numbers); a list is kept alive by the calls list
    with pytest.raises(TypeError, match="calls: expected tuples of arguments, got generator"):
        _C.recurrent_forward_many("lstm", "tanh", [call, (a for a in call)])
    np.testing.assert_array_equal(_C.recurrent_forward_many("lstm", "tanh", [list(call)])[0][0], y)
    for i, name in ((8, "reverse"), (9, "training")):  # (None was taken as False)
        for bad in (None, "yes"):
            with pytest.raises(TypeError, match=f"{name}: expected a bool, got "):
                _C.recurrent_forward_many("lstm", "tanh", [call[:i] + (bad,) + call[i + 1:]])
    for threads in (0, 10 ** 6):  # (10**6 was planned for, past set_num_threads' 4096)
        with pytest.raises(ValueError, match=f"threads: expected 1 to 4096, got {threads}"):
            _C.plan("lstm", "tanh", T, N, I, H, np.dtype(np.float32), False, threads)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int8"):
        _C.plan("lstm", "tanh", T, N, I, H, np.dtype(np.int8), False, 2)
    # sizes whose products overflow int64 were planned for (undefined arithmetic); the side by
    # side test took negative sizes and read any dtype but float64 as float32
    with pytest.raises(ValueError, match="T, N, I, H: sizes whose element counts overflow"):
        _C.plan("gru", "tanh", *[2 ** 62] * 4, np.dtype(np.float32), True, 4)
    with pytest.raises(ValueError, match=r"T, N, I, H: expected sizes \(T, N, I >= 0"):
        _C.runs_side_by_side("gru", "tanh", [(1, -1, 1, 1)], np.dtype(np.float32))
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int8"):
        _C.runs_side_by_side("gru", "tanh", [(1, 1, 1, 1)], np.dtype(np.int8))
    for n in (0, 4097, 10 ** 5):
        with pytest.raises(ValueError, match="n: expected 1 to 4096 threads"):
            _C.set_num_threads(n)
    # one buffer seen as an LSTM's weights (H = 6: W_hh [24, 6]), then at the same addresses
    # as an RNN's (H = 12: W_hh [12, 12], as many elements)
    xs = rng.standard_normal((12, 2, I)).astype(np.float32)
    w = rng.standard_normal(24 * I + 24 * H + 48).astype(np.float32)
    lstm = (w[:24 * I].reshape(24, I), w[24 * I:24 * I + 24 * H].reshape(24, H),
            w[-48:-24], w[-24:])
    rnn = (w[:12 * I].reshape(12, I), w[24 * I:24 * I + 144].reshape(12, 12),
           w[-48:-36], w[-24:-12])
    cache = _C.WeightCache()
    _C.recurrent_forward("lstm", "tanh", xs, np.zeros((2, H), np.float32),
                         np.zeros((2, H), np.float32), *lstm, None, False, False, cache)
    state = np.zeros((2, 12), np.float32)
    cached, plain = (_C.recurrent_forward("rnn", "tanh", xs, state, None, *rnn, None, False,
                                          False, c)[0] for c in (cache, _C.WeightCache()))
    np.testing.assert_array_equal(cached, plain)
    huge = np.empty((2 ** 40, 0, I), np.float32)
    out = _C.recurrent_forward("rnn", "tanh", huge, np.zeros((0, H), np.float32), None,
                               *(a.astype(np.float32)[:H] for a in (w_ih, w_hh, b, b)), None,
                               False, False)
    assert out[0].shape == (2 ** 40, 0, H)
    # T*N from 2^31 on is refused before anything is allocated (the weight gradients sum T*N
    # rows in one product, and OpenBLAS's dimensions are 32-bit); x of no columns holds nothing
    rows = np.empty((2 ** 16, 2 ** 15, 0), np.float32)
    weights = (np.zeros((H, 0), np.float32), np.zeros((H, H), np.float32),
               np.zeros(H, np.float32), np.zeros(H, np.float32))
    for training in (False, True):
        with pytest.raises(ValueError, match=r"x: expected T\*N below 2\^31 .*= 2147483648"):
            _C.recurrent_forward("rnn", "tanh", rows, np.zeros((2 ** 15, H), np.float32), None,
                                 *weights, None, False, training)
    # no hidden unit: what a LayerNorm-LSTM saves still has 3 numbers a step and sample
    for _ in range(3):  # (freed memory of another call's values, each time)
        np.full(10 ** 4, 1e300).sum()
        extra = _C.recurrent_forward(
            "layernorm_lstm", "tanh", x, np.zeros((N, 0)), np.zeros((N, 0)), np.zeros((0, I)),
            np.zeros((0, 0)), np.zeros(0), np.zeros(0), None, False, True, None, None, None,
            None, np.zeros(0), 1e-5)[4]
        assert extra.shape == (T, N, 3) and not extra.any()


@pytest.mark.skipif("libasan" in __import__("os").environ.get("LD_PRELOAD", ""),
                    reason="an address-space limit leaves the sanitizers no room")
def test_threads_the_system_refuses_are_a_runtime_error_not_an_abort():
    """A team of 4096 threads under a memory limit (as a container's) that cannot start them
    all: RuntimeError naming what to do, and the process goes on (it was std::terminate)."""
    import subprocess
    import sys
    script = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))\n"
              "import numpy as np, fusedrnn as fr\n"
              "fr.set_num_threads(4096)\n"
              "try:\n"
              "    fr.nn.LSTM(8, 16)(np.ones((5, 3, 8), np.float32))\n"
              "except RuntimeError as e:\n"
              "    print('refused:', e)\n"
              "fr.set_num_threads(2)\n"
              "print(fr.nn.LSTM(8, 16)(np.ones((5, 3, 8), np.float32))[0].shape)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    if "refused:" not in proc.stdout:
        pytest.skip("this machine started 4096 threads within the limit")
    assert "use fewer: fusedrnn.set_num_threads(n)" in proc.stdout
    assert proc.stdout.strip().endswith("(5, 3, 16)")


def test_matmul_transposes_only_matrices_and_seeds_are_named():
    """matmul(a [2, 3, 4], b, trans_a=True) returned a.T's (4, 3, 2) product, every axis
    reversed; the flags are bools. A seed NumPy refuses is named as the layers' argument."""
    import fusedrnn as fr
    from fusedrnn.functional import matmul
    a, b = np.ones((2, 3, 4), np.float32), np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="trans_a: a transpose needs a of 2 dimensions"):
        matmul(a, b, trans_a=True)
    with pytest.raises(TypeError, match="trans_a: expected a bool"):
        matmul(b.T, b, trans_a="no")
    assert matmul(a, np.ones((4, 5), np.float32)).shape == (2, 3, 5)
    for make in (lambda s: fr.nn.LSTM(3, 4, seed=s), lambda s: fr.nn.Linear(3, 4, seed=s),
                 lambda s: fr.nn.Dropout(0.5, seed=s), lambda s: fr.nn.LSTM(3, 4).manual_seed(s),
                 lambda s: fr.data.adding_problem(4, 5, seed=s)):
        for bad, error in ((-1, ValueError), (1.5, TypeError), ("a", TypeError)):
            with pytest.raises(error, match="seed: expected an integer"):
                make(bad)


def test_a_missing_extra_names_the_install_for_the_adapter_and_the_backend():
    import subprocess
    import sys
    for blocked, statement, hint in (("torch", "import fusedrnn.torch", "fusedrnn[torch]"),
                                     ("onnx", "import fusedrnn.onnx as o; o.Backend",
                                      "fusedrnn[onnx]")):
        code = f"import sys; sys.modules[{blocked!r}] = None\n{statement}"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and f'pip install "{hint}"' in r.stderr, r.stderr


@pytest.mark.parametrize("bad", ["complex", "object", "str", "bool"])
@pytest.mark.parametrize("module", ["Linear", "Embedding", "GRUCell", "LSTMCell c",
                                    "BahdanauAttention"])
def test_a_gradient_of_no_real_numbers_is_refused_by_name_and_changes_nothing(module, bad):
    # complex lost its imaginary part with a warning, None became NaN in every gradient
    if module == "Linear":
        m = nn.Linear(I, H, dtype=np.float64)
        shape, name = (N, H), "dout"
        m(x_of(np.float64, (N, I)))
    elif module == "Embedding":
        m = nn.Embedding(5, H, dtype=np.float64)
        shape, name = (N, H), "dout"
        m(np.arange(N) % 5)
    elif module == "BahdanauAttention":
        m = nn.BahdanauAttention(H, I, attention_size=3, dtype=np.float64)
        m.set_memory(x_of(np.float64, (N, T, I)), np.full(N, T))
        m(x_of(np.float64, (N, H)))
        shape, name = (N, I), "dcontext"
    else:
        m = getattr(nn, module.split()[0])(I, H, dtype=np.float64)
        m(x_of(np.float64, (N, I)))
        shape, name = (N, H), "dc" if module.endswith(" c") else "dh"
    good = np.ones(shape)
    value = {"complex": good + 1j, "object": np.full(shape, None), "str": np.full(shape, "1"),
             "bool": good > 0}[bad]
    call = {"dout": lambda d: m.backward(d), "dcontext": lambda d: m.backward(d),
            "dh": lambda d: m.backward(d), "dc": lambda d: m.backward(good, d)}[name]
    with pytest.raises(TypeError, match=rf"^{name}: expected an array of real numbers "
                                        rf"\(float64\), got dtype"):
        call(value)
    assert all(p.grad is None for p in m.parameters())
    call(good)  # the forward's step is still there


def test_to_a_dtype_says_how_to_change_one_and_lengths_name_what_they_take():
    layer = nn.Linear(2, 3)
    for dtype in (np.float64, np.dtype(np.float64)):
        with pytest.raises(TypeError, match=r"^device: expected 'cpu' or 'cuda', got the dtype "
                                            r".*build the module with dtype=\.\.\. and give it"):
            layer.to(dtype)
    with pytest.raises(TypeError, match=r"^lengths: expected integers, one per sample \(a NumPy "
                                        r"array or a list\), got int"):
        nn.GRU(I, H)(x_of(), lengths=5)


def _with_grad(p, grad):
    p.grad = grad
    return p


def _masked(a):
    m = np.ma.MaskedArray(a, mask=np.zeros(a.shape, bool))
    m.mask.flat[0] = True
    return m


@pytest.mark.parametrize("where", ["x", "h0", "w_hh", "lengths", "layer x", "layer dout",
                                   "linear x", "indices", "logits", "target", "mse input",
                                   "cell input", "cell state", "dropout", "accumulate_grad",
                                   "vector", "pad_sequences", "src", "dlogits", "features",
                                   "clip", "decode ids",
                                   "parameter data", "state_dict", "save"])
def test_a_masked_array_is_refused_by_name(where, tmp_path):
    """A masked array passed every isinstance(ndarray) check and its masked values were used
    (a 1e6 under the mask went through the GRU; fr.io.save stored the hidden values)."""
    import fusedrnn as fr
    from fusedrnn import io, optim
    x, w_ih, w_hh = x_of(), x_of(shape=(3 * H, I)), x_of(shape=(3 * H, H))
    h0 = np.zeros((N, H), np.float32)
    gru, lin = nn.GRU(I, H, seed=0), nn.Linear(I, 2, seed=0)
    seq = nn.Seq2Seq(5, 5, 3, 4, seed=0)
    calls = {
        "x": ("x", lambda: F.gru_forward(_masked(x), None, w_ih, w_hh)),
        "h0": ("h0", lambda: F.gru_forward(x, _masked(h0), w_ih, w_hh)),
        "w_hh": ("w_hh", lambda: F.gru_forward(x, None, w_ih, _masked(w_hh))),
        "lengths": ("lengths", lambda: F.gru_forward(x, None, w_ih, w_hh,
                                                     lengths=_masked(np.full(N, T)))),
        "layer x": ("x", lambda: gru(_masked(x))),
        "layer dout": ("dout", lambda: (gru(x), gru.backward(_masked(x_of(shape=(T, N, H)))))),
        "linear x": ("x", lambda: lin(_masked(x))),
        "indices": ("indices", lambda: nn.Embedding(4, 2)(_masked(np.arange(4)))),
        "logits": ("logits", lambda: nn.CrossEntropyLoss()(_masked(x), np.zeros((T, N), int))),
        "target": ("target", lambda: nn.CrossEntropyLoss()(x, _masked(np.zeros((T, N), int)))),
        "mse input": ("input", lambda: nn.MSELoss()(_masked(x), x)),
        "cell input": ("input", lambda: nn.GRUCell(I, H)(_masked(x[0]))),
        "cell state": ("hx", lambda: nn.GRUCell(I, H)(x[0], _masked(h0))),
        "parameter data": ("data", lambda: setattr(lin.weight, "data", _masked(lin.weight.data))),
        "state_dict": (r"state_dict\['weight'\]", lambda: lin.load_state_dict(
            {"weight": _masked(lin.weight.data), "bias": lin.bias.data})),
        "save": (r"obj\['w'\]", lambda: io.save({"w": _masked(x)}, tmp_path / "w.fr")),
        "dropout": ("x", lambda: nn.Dropout(0.5)(_masked(x))),
        "accumulate_grad": ("grad", lambda: lin.weight.accumulate_grad(_masked(lin.weight.data))),
        "vector": ("vector", lambda: optim.vector_to_parameters(
            _masked(optim.parameters_to_vector(lin.parameters())), lin.parameters())),
        "pad_sequences": (r"sequences\[1\]", lambda: fr.data.pad_sequences([x[0], _masked(x[1])])),
        "src": ("src", lambda: seq.greedy_decode(_masked(np.ones((1, 3), int)))),
        "dlogits": ("dlogits", lambda: (seq.train().loss(np.ones((1, 3), int), None,
                                                         np.ones((1, 2), int)),
                                        seq.backward(_masked(np.zeros((1, 2, 5)))))),
        "features": ("features", lambda: nn.Captioner(4, 5, 3, 4).greedy_decode(
            _masked(np.ones((1, 4))))),
        "clip": (r"parameters\[0\]\.grad", lambda: optim.clip_grad_norm_(
            [_with_grad(lin.weight, _masked(np.ones((2, I), np.float32)))], 1.0)),
        "decode ids": ("ids", lambda: fr.data.CharVocab("abc").decode(_masked(np.arange(3))))}
    name, call = calls[where]
    with pytest.raises(TypeError, match=f"^{name}: expected a plain numpy.ndarray, got a masked"):
        call()
    assert not (tmp_path / "w.fr").exists()


class _Tagged(np.ndarray):
    """A user's ndarray subclass (as np.matrix, whose @ gave a matrix back through Linear)."""


def test_an_ndarray_subclass_comes_back_as_a_plain_array():
    lin = nn.Linear(I, 2, seed=0)
    x = x_of(shape=(3, I))
    y = lin(x.view(_Tagged))
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, lin(x))


def _bad_argument_calls():
    import fusedrnn as fr
    from fusedrnn import optim
    from fusedrnn.keras import KerasRecurrent
    p = nn.Parameter(np.zeros(2))
    return {
        # an int path was a file descriptor, read and closed (stdout's)
        "load_text fd": (lambda: fr.data.load_text(1), TypeError, "^path: expected a str"),
        "csv fd": (lambda: fr.data.read_text_classification_csv(0), TypeError, "^path: expected"),
        # NumPy's permutation of 2**63 is empty: batches of nothing without end
        "batches n": (lambda: fr.data.batches(2**63, 2), ValueError, r"^n: expected an integer in"),
        "batches shuffle": (lambda: fr.data.batches(4, 2, shuffle="no"), TypeError, "^shuffle: "),
        "decode past": (lambda: fr.data.CharVocab("abc").decode([3]), ValueError,
                        r"^ids: expected integers in \[0, 3\)"),
        "decode -1": (lambda: fr.data.CharVocab("abc").decode([-1]), ValueError, "^ids: "),
        "decode 1.5": (lambda: fr.data.CharVocab("abc").decode([1.5]), ValueError, "^ids: "),
        "vocab None": (lambda: fr.data.CharVocab(None), TypeError, "^chars: expected a str"),
        "pad None": (lambda: fr.data.pad_sequences(None), TypeError, "^sequences: expected"),
        "pad dtype": (lambda: fr.data.pad_sequences([np.ones(2)], dtype="x"), TypeError,
                      "^dtype: expected a NumPy dtype"),
        # a string flag read as true ("no" turned amsgrad on)
        "amsgrad": (lambda: optim.Adam([p], amsgrad="no"), TypeError, "amsgrad: expected a bool"),
        "nesterov": (lambda: optim.SGD([p], lr=0.1, momentum=0.9, nesterov="x"), TypeError,
                     "nesterov: expected a bool"),
        "batch_first": (lambda: nn.LSTM(2, 3, batch_first="no"), TypeError, "^batch_first: "),
        "bias": (lambda: nn.GRU(2, 3, bias=None), TypeError, "^bias: expected a bool"),
        "set_to_none": (lambda: p.zero_grad("x"), TypeError, "^set_to_none: expected a bool"),
        "strict": (lambda: nn.Linear(2, 2).load_state_dict({}, strict="no"), TypeError,
                   "^strict: expected a bool"),
        "error_if_nonfinite": (lambda: optim.clip_grad_norm_([p], 1.0, error_if_nonfinite="x"),
                               TypeError, "^error_if_nonfinite: "),
        "return_sequences": (lambda: KerasRecurrent(nn.LSTM(2, 3, batch_first=True),
                                                            return_sequences="no"),
                             TypeError, "^return_sequences: "),
        "softmax None": (lambda: nn.softmax(None), TypeError, "^logits: expected a float"),
        "softmax axis": (lambda: nn.log_softmax(np.ones(3), axis=2**63), ValueError, "^axis: "),
        "cond_size": (lambda: nn.Decoder(5, 3, 4, cond_size=-1), ValueError, "^cond_size: "),
        "key_size": (lambda: nn.Decoder(5, 3, 4, key_size=1.5), TypeError, "^key_size: "),
        "embed_size": (lambda: nn.Seq2Seq(5, 5, embed_size=0), ValueError, "^embed_size: "),
        "reduction array": (lambda: nn.MSELoss(reduction=np.zeros(0)), ValueError,
                            "^reduction: expected one of"),
        "score array": (lambda: nn.LuongAttention(3, 3, score=np.zeros(0)), ValueError,
                        "^score: expected"),
        "proj_size None": (lambda: nn.Seq2Seq(5, 5, proj_size=None), TypeError, "^proj_size: "),
        "params None": (lambda: optim.SGD(None, lr=0.1), TypeError, "^params: expected a Module"),
        "empty path": (lambda: fr.save({}, ""), FileNotFoundError, "an empty name"),
        "Linear bias": (lambda: nn.Linear(2, 3, bias="no"), TypeError, "^bias: expected a bool"),
        "Seq2Seq bidirectional": (lambda: nn.Seq2Seq(5, 5, bidirectional="no"), TypeError,
                                  "^bidirectional: expected a bool"),
        "module zero_grad": (lambda: nn.Identity().zero_grad("no"), TypeError,
                             "^set_to_none: expected a bool")}


@pytest.mark.parametrize("name", list(_bad_argument_calls()))
def test_bad_arguments_are_named(name):
    """An error-path audit (a helper's): each of these leaked another library's message, an
    AttributeError, or took the value silently (a flag "no" read as true)."""
    call, error, match = _bad_argument_calls()[name]
    with pytest.raises(error, match=match):
        call()


def test_flags_take_bools_and_0_or_1():
    """As torch.nn takes them from a config: 0 and 1 are flags; numpy's bools too."""
    assert nn.LSTM(2, 3, batch_first=1).batch_first is True
    assert nn.GRU(2, 3, bias=np.False_).bias is False
    assert nn.RNN(2, 3, bidirectional=0).bidirectional is False


def test_pad_sequences_refuses_a_padding_value_its_dtype_cannot_hold():
    """np.full cast the value unsafely: NaN padded int64 with -2**63, 1e10 int32 with -2**31,
    "<pad>" a 2-character string array with "<p" (torch refuses the overflow)."""
    from fusedrnn.data import pad_sequences
    for seqs, value, dtype, shown in (([[1, 2], [3]], np.nan, np.int64, "-9223372036854775808"),
                                      ([[1, 2], [3]], 1e10, np.int32, "-2147483648"),
                                      ([[1, 2], [3]], 1.5, None, "1"),
                                      ([np.array(["ab", "cd"]), np.array(["e"])], "<pad>", None,
                                       "'<p'")):
        with pytest.raises(ValueError, match=f"^padding_value: .* does not fit dtype .* \\(it "
                                             f"would pad with {shown}\\)"):
            pad_sequences(seqs, padding_value=value, dtype=dtype)
    with pytest.raises(ValueError, match=r"^padding_value: expected one value, got shape \(2,\)"):
        pad_sequences([[1, 2], [3]], padding_value=[1, 2])
    padded, _ = pad_sequences([[1.0, 2.0], [3.0]], padding_value=np.nan)
    assert np.isnan(padded[1, 1]) and pad_sequences([[1, 2], [3]], 0.0)[0].dtype == np.int64
    floats = [np.ones(2, np.float32), np.ones(1, np.float32)]  # (rounded, as torch pads)
    assert pad_sequences(floats, padding_value=0.1)[0][1, 1] == np.float32(0.1)
    with pytest.raises(ValueError, match=r"^padding_value: 1e\+300 does not fit dtype float32"):
        pad_sequences(floats, padding_value=1e300)
    with pytest.raises(ValueError, match="^padding_value: 'a' does not fit dtype float32"):
        pad_sequences(floats, padding_value="a")
    with pytest.raises(ValueError, match=r"^padding_value: \(1\+2j\) does not fit dtype "
                                         r"float32"):  # (its 2j was dropped, with a warning)
        pad_sequences(floats, padding_value=1 + 2j)


_EMPTIED_WHILE_READ = r"""
import sys
import numpy as np
from fusedrnn import _C
rng = np.random.default_rng(0)
f = lambda *s: rng.standard_normal(s).astype(np.float32)
class Emptying:  # a flag whose truth empties the calls list while the binding reads it
    def __bool__(self):
        calls.clear()
        return False
def forward_call(reverse=False, x=True, I=4):
    return (f(3, 2, I) if x else None, f(2, 5), None, f(5, I), f(5, 5), f(5), f(5), None,
            reverse, False)
many = sys.argv[1]
if many == "recurrent_forward_many":
    calls = [forward_call(), forward_call(Emptying())] + [forward_call() for _ in range(50)]
elif many == "recurrent_forward_stack":
    calls = [forward_call()] + [forward_call(Emptying() if k == 0 else False, x=False, I=5)
                                for k in range(50)]
else:
    def backward_call(reverse=False):
        x, w_ih, w_hh = f(3, 2, 4), f(5, 4), f(5, 5)
        y, h_n, _, gates, extra, h_prev = _C.recurrent_forward(
            "rnn", "tanh", x, f(2, 5), None, w_ih, w_hh, f(5), f(5), None, False, True)
        return (x, w_ih, w_hh, None, reverse, gates, extra, h_prev, f(*y.shape), f(2, 5), None)
    calls = [backward_call(), backward_call(Emptying())] + [backward_call() for _ in range(50)]
out = getattr(_C, many)("rnn", "tanh", calls)
assert len(out) in (51, 52) and all(np.isfinite(o[0]).all() for o in out)
print("ok")
"""


@pytest.mark.parametrize("many", ["recurrent_forward_many", "recurrent_forward_stack",
                                  "recurrent_backward_many"])
def test_a_calls_list_emptied_while_it_is_read(many):
    """Python code run while the binding read the calls (a flag's __bool__, a __del__,
    another thread) could empty the list: the arrays of calls read before were freed under
    the pointers kept for them (a segfault, or NaN from a stack's freed layer). The binding
    reads a snapshot and keeps every call's arguments until the kernels ran."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _EMPTIED_WHILE_READ, many],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
