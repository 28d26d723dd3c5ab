"""Bad input to the nn layers raises ValueError/TypeError (RuntimeError for a backward with
nothing to go back through) whose message names the argument and states what was expected and
what was given; odd but valid input (non-contiguous views, NaN) computes the right thing."""
import numpy as np
import pytest

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
