"""The NumPy references against central finite differences (float64), and their packed-sequence
semantics (lengths, reverse) against running each sample on its own. Tiny sizes: seconds."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import (CELLS, FINITE_DIFFERENCE_EPS, TOLERANCES, cell_backward, cell_forward,
                      make_weights, mixed_lengths, reference, relative_error)

T, N, I, H = 4, 3, 2, 3
LENGTHS = {"full": None, "0_1_T": np.array([T, 0, 1]), "partial": np.array([2, 1, T])}


def numerical_gradients(loss, inputs, eps=FINITE_DIFFERENCE_EPS):
    """Central differences of the scalar ``loss(inputs)`` w.r.t. every element of every array
    in the dict ``inputs`` (perturbed in place and restored)."""
    grads = {}
    for name, value in inputs.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            plus = loss(inputs)
            value[index] = saved - eps
            minus = loss(inputs)
            value[index] = saved
            grad[index] = (plus - minus) / (2 * eps)
        grads[name] = grad
    return grads


def assert_gradients_match(analytic, numeric, tolerance):
    errors = {name: relative_error(analytic[name], numeric[name]) for name in numeric}
    assert max(errors.values()) <= tolerance, errors
    for name, value in numeric.items():  # a gradient identically zero would hide nothing
        assert np.any(value != 0) or not np.any(analytic[name] != 0), name


# ---------------------------------------------------------------------------- cells vs finite differences
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths_name", list(LENGTHS))
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_gradients_match_finite_differences(name, lengths_name, reverse, bias, rng):
    cell, nonlinearity = CELLS[name]
    lengths = LENGTHS[lengths_name]
    w_ih, w_hh, b_ih, b_hh = make_weights(rng, cell, I, H, bias=bias, scale=0.8)
    inputs = {"x": rng.standard_normal((T, N, I)), "h0": rng.standard_normal((N, H)) * 0.5,
              "w_ih": w_ih, "w_hh": w_hh}
    if cell == "lstm":
        inputs["c0"] = rng.standard_normal((N, H)) * 0.5
    if bias:
        inputs["b_ih"], inputs["b_hh"] = b_ih, b_hh
    R = rng.standard_normal((T, N, H))  # dy, nonzero at padded positions too: they must not count
    R_h = rng.standard_normal((N, H))
    R_c = rng.standard_normal((N, H)) if cell == "lstm" else None

    def run(p):
        return cell_forward(reference, cell, nonlinearity, p["x"], p["h0"], p.get("c0"),
                            p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"),
                            lengths=lengths, reverse=reverse)

    def loss(p):
        y, h_n, c_n, _ = run(p)
        total = np.sum(y * R) + np.sum(h_n * R_h)
        return total + (np.sum(c_n * R_c) if cell == "lstm" else 0.0)

    _, _, _, ctx = run(inputs)
    grads = cell_backward(reference, cell, ctx, R, R_h, R_c)
    analytic = {"x": grads["dx"], "h0": grads["dh0"], "c0": grads["dc0"], "w_ih": grads["dw_ih"],
                "w_hh": grads["dw_hh"], "b_ih": grads["db_ih"], "b_hh": grads["db_hh"]}
    if not bias:
        assert grads["db_ih"] is None and grads["db_hh"] is None
    if cell != "lstm":
        assert grads["dc0"] is None
    numeric = numerical_gradients(loss, inputs)
    assert_gradients_match(analytic, numeric, TOLERANCES["reference_vs_finite_differences"])


# ---------------------------------------------------------------------------- packed-sequence semantics
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(CELLS))
def test_lengths_equal_running_each_sample_alone(name, reverse, rng):
    """With lengths, sample n gives what it gives alone on x[:lengths[n]]; zeros past its length;
    a length of 0 gives y = 0 and the initial state back."""
    cell, nonlinearity = CELLS[name]
    n_samples = 5
    lengths = mixed_lengths(T, n_samples)
    assert set(lengths) >= {0, 1, T}
    w_ih, w_hh, b_ih, b_hh = make_weights(rng, cell, I, H)
    x = rng.standard_normal((T, n_samples, I))
    h0 = rng.standard_normal((n_samples, H))
    c0 = rng.standard_normal((n_samples, H))
    y, h_n, c_n, _ = cell_forward(reference, cell, nonlinearity, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                  lengths=lengths, reverse=reverse)
    for n, length in enumerate(lengths):
        assert np.all(y[length:, n] == 0)
        if length == 0:
            assert np.array_equal(h_n[n], h0[n])
            if cell == "lstm":
                assert np.array_equal(c_n[n], c0[n])
            continue
        y1, h1, c1, _ = cell_forward(reference, cell, nonlinearity, x[:length, n:n + 1],
                                     h0[n:n + 1], c0[n:n + 1], w_ih, w_hh, b_ih, b_hh,
                                     reverse=reverse)
        assert relative_error(y[:length, n], y1[:, 0]) <= 1e-15
        assert relative_error(h_n[n], h1[0]) <= 1e-15
        if cell == "lstm":
            assert relative_error(c_n[n], c1[0]) <= 1e-15


@pytest.mark.parametrize("name", list(CELLS))
def test_reverse_is_forward_on_flipped_time(name, rng):
    cell, nonlinearity = CELLS[name]
    w_ih, w_hh, b_ih, b_hh = make_weights(rng, cell, I, H)
    x = rng.standard_normal((T, N, I))
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    yr, hr, cr, _ = cell_forward(reference, cell, nonlinearity, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                 reverse=True)
    yf, hf, cf, _ = cell_forward(reference, cell, nonlinearity, x[::-1], h0, c0, w_ih, w_hh,
                                 b_ih, b_hh)
    assert relative_error(yr, yf[::-1]) <= 1e-15
    assert relative_error(hr, hf) <= 1e-15
    assert relative_error(cr, cf) <= 1e-15


@pytest.mark.parametrize("name", list(CELLS))
def test_missing_gradients_mean_zeros_and_dtype_is_float64(name, rng):
    cell, nonlinearity = CELLS[name]
    w_ih, w_hh, b_ih, b_hh = make_weights(rng, cell, I, H, dtype=np.float32)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y, h_n, c_n, ctx = cell_forward(reference, cell, nonlinearity, x, None, None, w_ih, w_hh,
                                    b_ih, b_hh, lengths=LENGTHS["0_1_T"])
    assert y.dtype == h_n.dtype == np.float64
    dy = np.ones((T, N, H))
    zeros = np.zeros((N, H))
    implicit = cell_backward(reference, cell, ctx, dy, None, None)
    explicit = cell_backward(reference, cell, ctx, dy, zeros, zeros if cell == "lstm" else None)
    for key in implicit:
        assert relative_error(implicit[key], explicit[key]) == 0.0, key
        assert implicit[key] is None or implicit[key].dtype == np.float64
    none_dy = cell_backward(reference, cell, ctx, None, None, None)
    assert all(v is None or not np.any(v) for v in none_dy.values())


# ---------------------------------------------------------------------------- the layer stack
LAYER_T, LAYER_N, LAYER_I, LAYER_H, LAYER_L = 3, 3, 2, 2, 2
MODES = {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "lstm": "LSTM", "gru": "GRU"}


def make_layer_params(rng, cell, num_layers, bidirectional, bias):
    params = {}
    for layer in range(num_layers):
        input_size = LAYER_I if layer == 0 else LAYER_H * (2 if bidirectional else 1)
        for suffix in ([""] + (["_reverse"] if bidirectional else [])):
            k = f"_l{layer}{suffix}"
            w_ih, w_hh, b_ih, b_hh = make_weights(rng, cell, input_size, LAYER_H, bias=bias,
                                                  scale=0.8)
            params["weight_ih" + k], params["weight_hh" + k] = w_ih, w_hh
            if bias:
                params["bias_ih" + k], params["bias_hh" + k] = b_ih, b_hh
    return params


@pytest.mark.parametrize("lengths, bias, bidirectional",
                         [(None, True, True), ((LAYER_T, 0, 1), False, True),
                          ((1, LAYER_T, 2), True, False)],
                         ids=["full-bias-bidir", "0_1_T-nobias-bidir", "partial-bias-unidir"])
@pytest.mark.parametrize("name", list(MODES))
def test_layer_gradients_match_finite_differences(name, lengths, bias, bidirectional, rng):
    cell, _ = CELLS[name]
    mode = MODES[name]
    D = 2 if bidirectional else 1
    lengths = None if lengths is None else np.array(lengths)
    inputs = make_layer_params(rng, cell, LAYER_L, bidirectional, bias)
    param_names = list(inputs)
    state_shape = (LAYER_L * D, LAYER_N, LAYER_H)
    inputs["x"] = rng.standard_normal((LAYER_T, LAYER_N, LAYER_I))
    inputs["h0"] = rng.standard_normal(state_shape) * 0.5
    if cell == "lstm":
        inputs["c0"] = rng.standard_normal(state_shape) * 0.5
    R = rng.standard_normal((LAYER_T, LAYER_N, D * LAYER_H))
    R_h = rng.standard_normal(state_shape)
    R_c = rng.standard_normal(state_shape) if cell == "lstm" else None

    def run(p):
        hx = (p["h0"], p["c0"]) if cell == "lstm" else p["h0"]
        return reference.recurrent_forward(mode, p["x"], {k: p[k] for k in param_names},
                                           num_layers=LAYER_L, bidirectional=bidirectional,
                                           hx=hx, lengths=lengths)

    def loss(p):
        out, h_n, c_n, _ = run(p)
        total = np.sum(out * R) + np.sum(h_n * R_h)
        return total + (np.sum(c_n * R_c) if cell == "lstm" else 0.0)

    out, h_n, c_n, cache = run(inputs)
    assert out.shape == (LAYER_T, LAYER_N, D * LAYER_H) and h_n.shape == state_shape
    assert (c_n is None) == (cell != "lstm")
    dx, dh0, dc0, grads = reference.recurrent_backward(cache, R, R_h, R_c)
    assert sorted(grads) == sorted(param_names)
    analytic = dict(grads, x=dx, h0=dh0)
    if cell == "lstm":
        analytic["c0"] = dc0
    else:
        assert dc0 is None
    numeric = numerical_gradients(loss, inputs)
    assert_gradients_match(analytic, numeric, TOLERANCES["reference_vs_finite_differences"])


@pytest.mark.parametrize("name", list(MODES))
def test_one_layer_one_direction_is_the_cell(name, rng):
    cell, nonlinearity = CELLS[name]
    w_ih, w_hh, b_ih, b_hh = make_weights(rng, cell, I, H)
    params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}
    x = rng.standard_normal((T, N, I))
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    lengths = LENGTHS["0_1_T"]
    hx = (h0[None], c0[None]) if cell == "lstm" else h0[None]
    out, h_n, c_n, _ = reference.recurrent_forward(MODES[name], x, params, num_layers=1,
                                                   bidirectional=False, hx=hx, lengths=lengths)
    y, h1, c1, _ = cell_forward(reference, cell, nonlinearity, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                lengths=lengths)
    assert np.array_equal(out, y) and np.array_equal(h_n[0], h1)
    if cell == "lstm":
        assert np.array_equal(c_n[0], c1)
    # the "RNN" mode takes its activation from nonlinearity
    if cell == "rnn":
        out2, _, _, _ = reference.recurrent_forward("RNN", x, params, num_layers=1,
                                                    bidirectional=False, hx=hx, lengths=lengths,
                                                    nonlinearity=nonlinearity)
        assert np.array_equal(out, out2)


def test_the_reference_refuses_what_it_would_answer_wrongly():
    """The oracle checks its inputs as the kernels do: a gradient of another layout was
    reshaped silently ([N, T, H] for [T, N, H]: steps and samples mixed), attention took an
    unknown kind for "general", negative or fractional lengths, a complex x lost its imaginary
    part; a 1-D w_hr, eps <= 0 and a missing layer failed deep inside."""
    from fusedrnn.reference import attention, cells, layers
    rng = np.random.default_rng(0)
    T, N, I, H = 4, 3, 2, 5
    x = rng.standard_normal((T, N, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    _, _, _, ctx = cells.lstm_forward(x, None, None, w_ih, w_hh, training=True)
    with pytest.raises(ValueError, match=r"^dy: expected shape \(4, 3, 5\), got \(3, 4, 5\)"):
        cells.lstm_backward(ctx, np.ones((N, T, H)))
    with pytest.raises(ValueError, match=r"^dh_n: expected shape \(3, 5\), got \(15,\)"):
        cells.lstm_backward(ctx, None, np.ones(N * H))
    with pytest.raises(TypeError, match="^x: expected real numbers, got dtype complex128"):
        cells.lstm_forward(x + 1j, None, None, w_ih, w_hh)
    with pytest.raises(ValueError, match=r"^w_hr: expected shape \[P, H\]"):
        cells.lstm_forward(x, None, None, w_ih, w_hh, w_hr=np.ones(H))
    with pytest.raises(ValueError, match="^eps: expected a positive number, got 0"):
        cells.layernorm_lstm_forward(x, None, None, w_ih, w_hh, eps=0)
    params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
    with pytest.raises(ValueError, match=r"params: missing \['weight_hh_l0_reverse', "
                                         r"'weight_ih_l0_reverse'\]"):
        layers.recurrent_forward("LSTM", x, params, num_layers=1, bidirectional=True)
    out, h_n, c_n, cache = layers.recurrent_forward("LSTM", x, params, num_layers=1,
                                                    bidirectional=False)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(4, 3, 5\)"):
        layers.recurrent_backward(cache, np.ones((N, T, H)))
    q, k = rng.standard_normal((N, 3)), rng.standard_normal((N, 6, 3))
    for kind, params_, lengths, match in [
            ("Dot", (np.eye(3),), None, "^kind: expected one of"),
            ("dot", (np.eye(3),), None, "^params: expected 0 arrays for 'dot', got 1"),
            ("dot", (), [-1, 6, 6], r"^lengths: expected 3 integers in \[0, 6\]"),
            ("dot", (), [1.7, 6, 6], r"^lengths: expected 3 integers"),
            ("dot", (), [7, 6, 6], r"^lengths: expected 3 integers in \[0, 6\]")]:
        for call in (attention.attention_forward, lambda *a: attention.attention_backward(
                *a, np.ones((N, 3)))):
            with pytest.raises(ValueError, match=match):
                call(kind, q, k, lengths, params_)
    with pytest.raises(ValueError, match=r"^query, keys: expected \[N, Q\] and \[N, S, K\]"):
        attention.attention_forward("dot", q[:2], k, None, ())


def test_the_reference_sigmoid_keeps_its_relative_accuracy():
    """0.5 (1 + tanh(a/2)) gave 1.7e-5 relative error at a = -30 and 0 below -37."""
    from fusedrnn.reference import cells
    a = np.array([-700.0, -100.0, -37.5, -30.0, -1.0, 0.0, 1.0, 30.0, 800.0, np.inf, -np.inf])
    exact = np.array([float(1 / (1 + np.exp(np.longdouble(-v)))) if np.isfinite(v) else float(v > 0)
                      for v in a])
    got = cells.sigmoid(a)
    np.testing.assert_allclose(got, exact, rtol=1e-15, atol=0)
    assert np.isnan(cells.sigmoid(np.array([np.nan]))).all()


def test_stack_reference_runs_a_reset_before_gru():
    """recurrent_forward had no reset_after: a reset-before GRU's state_dict (named as a plain
    GRU's) ran as the plain GRU, 0.2 off, unsaid."""
    import fusedrnn as fr
    from fusedrnn.reference import recurrent_backward, recurrent_forward
    gru = fr.nn.GRU(5, 6, num_layers=2, bidirectional=True, reset_after=False,
                    dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 5))
    out, h_n = gru(x)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    dx, _ = gru.backward(dout)
    ref, ref_h, _, cache = recurrent_forward("GRU", x, gru.state_dict(), num_layers=2,
                                             bidirectional=True, reset_after=False)
    np.testing.assert_allclose(ref, out, atol=1e-12)
    np.testing.assert_allclose(ref_h, h_n, atol=1e-12)
    ref_dx, _, _, grads = recurrent_backward(cache, dout)
    np.testing.assert_allclose(ref_dx, dx, atol=1e-12)
    for name, p in gru.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad, atol=1e-12)
    with pytest.raises(ValueError, match="^reset_after: a GRU's option"):
        recurrent_forward("LSTM", x, {}, num_layers=1, bidirectional=False, reset_after=False)
