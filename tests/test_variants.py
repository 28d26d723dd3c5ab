"""Cell variants.

The LSTM with peepholes (ONNX semantics: i and f see c_{t-1}, o sees c_t): the float64
reference against central differences; the kernels (every loop: batch 1 to 40, SIMD widths and
odd H, lengths, both directions, 1 and 2 threads, float32 and float64, bfloat16 products)
against the reference; the layer (stacks, directions, dropout, batch_first) against the
reference layer by layer, the cell and seq2seq; and ONNX Runtime's LSTM with P.

The GRU with the reset gate before the product (reset_after=False): its float64 reference
against central differences; the kernels (the two-phase step: packed, BLAS and row products,
batch 1 to 70, lengths, both directions, 1 and 2 threads, float32 and float64) against the
reference; the layer, the cell and seq2seq; the reference and the kernels against Keras'
GRU(reset_after=False) and ONNX Runtime's GRU with linear_before_reset=0.

The LSTM with projections (torch's proj_size) and the LayerNorm-LSTM: each reference against
central differences, the kernels against it on every plan, 1 and 2 threads (bit-identical under
set_deterministic), and the layers (torch.nn.LSTM(proj_size) for the projection; the reference
layer by layer for the LayerNorm-LSTM)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import TOLERANCES, relative_error

fr = pytest.importorskip("fusedrnn", reason="the extension fusedrnn._C is not built")
F = fr.functional
R = fr.reference

GRADS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_ph")


def _problem(T, N, I, H, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-bound, bound, shape).astype(dtype)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return dict(x=normal(T, N, I), h0=normal(N, H), c0=normal(N, H), w_ih=u(4 * H, I),
                w_hh=u(4 * H, H), b_ih=u(4 * H), b_hh=u(4 * H), w_ph=u(3 * H) * 4,
                dy=normal(T, N, H), dh_n=normal(N, H), dc_n=normal(N, H))


def _numeric_gradient(loss, p, name, eps=1e-6):
    """Central differences of loss(problem) with respect to p[name], one element at a time."""
    numeric = np.zeros_like(p[name])
    for i in range(p[name].size):
        q = {k: v.copy() for k, v in p.items()}
        q[name].flat[i] += eps
        up = loss(q)
        q[name].flat[i] -= 2 * eps
        numeric.flat[i] = (up - loss(q)) / (2 * eps)
    return numeric


def _assert_thread_independent(run, lengths):
    """run(lengths) -> {name: array} on 1 and 2 threads: they agree, and bit for bit under
    fr.set_deterministic(True)."""
    before, was = fr.get_num_threads(), fr.get_deterministic()
    try:
        for deterministic in (False, True):
            fr.set_deterministic(deterministic)
            results = []
            for n in (1, 2):
                fr.set_num_threads(n)
                results.append(run(lengths))
            for name in results[0]:
                if deterministic:
                    np.testing.assert_array_equal(results[0][name], results[1][name], name)
                else:
                    assert relative_error(results[0][name], results[1][name]) <= \
                        TOLERANCES["threads"][np.float32], name
    finally:
        fr.set_num_threads(before)
        fr.set_deterministic(was)


def _run(module, p, lengths=None, reverse=False, precision=None, weight_grad_precision=None):
    """``weight_grad_precision``: the reference's (its ctx's; see reference._grad_product)."""
    y, h_n, c_n, ctx = module.lstm_forward(
        p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], lengths=lengths,
        reverse=reverse, training=True, precision=precision, w_ph=p["w_ph"])
    if weight_grad_precision is not None:
        ctx = dict(ctx, weight_grad_precision=weight_grad_precision)
    grads = module.lstm_backward(ctx, p["dy"], p["dh_n"], p["dc_n"])
    assert len(grads) == 8  # the peepholes' gradient last
    return dict(zip(GRADS, grads), y=y, h_n=h_n, c_n=c_n)


# ---------------------------------------------------------------------------- reference
@pytest.mark.parametrize("reverse", [False, True])
def test_peephole_reference_matches_finite_differences(reverse):
    p = _problem(5, 3, 4, 6, seed=1)
    lengths = np.array([5, 2, 0])
    got = _run(R, p, lengths, reverse)

    def loss(q):
        y, h_n, c_n, _ = R.lstm_forward(q["x"], q["h0"], q["c0"], q["w_ih"], q["w_hh"],
                                        q["b_ih"], q["b_hh"], lengths=lengths, reverse=reverse,
                                        w_ph=q["w_ph"])
        return (y * p["dy"]).sum() + (h_n * p["dh_n"]).sum() + (c_n * p["dc_n"]).sum()

    for name, grad in (("w_ph", "dw_ph"), ("c0", "dc0"), ("h0", "dh0"), ("w_hh", "dw_hh"),
                       ("x", "dx")):
        assert np.abs(_numeric_gradient(loss, p, name) - got[grad]).max() < \
            TOLERANCES["reference_vs_finite_differences"], name


def test_zero_peepholes_are_the_plain_lstm():
    p = _problem(4, 2, 3, 5, seed=2)
    p["w_ph"] = np.zeros_like(p["w_ph"])
    with_ph = _run(F, p)
    plain = F.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                           training=True)
    np.testing.assert_array_equal(with_ph["y"], plain[0])
    grads = F.lstm_backward(plain[-1], p["dy"], p["dh_n"], p["dc_n"])
    assert len(grads) == 7
    for name, g in zip(GRADS, grads):
        np.testing.assert_allclose(with_ph[name], g, rtol=0, atol=1e-14, err_msg=name)


# ---------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("N,H", [(1, 32), (3, 17), (5, 64), (40, 48), (16, 128)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_peephole_kernels_match_the_reference(N, H, reverse, dtype, threads):
    """Every loop the plans choose (by units, by samples, packed or not; SIMD widths and odd
    H), lengths mixing 0, 1 and T."""
    T = 9
    p = _problem(T, N, 7, H, seed=N * 1000 + H, dtype=dtype)
    lengths = np.arange(N) % (T + 1)
    lengths[0] = T
    ours = _run(F, p, lengths, reverse)
    expected = _run(R, p, lengths, reverse)
    tolerance = TOLERANCES["kernel_vs_reference"][dtype]
    for name, value in ours.items():
        assert value.dtype == dtype, name
        assert relative_error(value, expected[name]) <= tolerance, name
    y, h_n, c_n, ctx = F.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"],
                                      p["b_hh"], lengths=lengths, reverse=reverse,
                                      w_ph=p["w_ph"])  # inference: the same outputs
    assert ctx is None
    for name, value in (("y", y), ("h_n", h_n), ("c_n", c_n)):
        assert relative_error(value, ours[name]) <= tolerance, name


@pytest.mark.parametrize("N,H", [(1, 64), (24, 96)])
def test_peephole_results_do_not_depend_on_the_threads(N, H):
    """1 and 2 threads agree (the plans may sum in another order), and bit for bit under
    fr.set_deterministic(True) (the peephole gradients sum each unit's rows in order)."""
    p = _problem(12, N, 10, H, seed=7, dtype=np.float32)
    _assert_thread_independent(lambda lengths: _run(F, p, lengths), np.arange(N) % 13)


@pytest.mark.parametrize("N,H", [(1, 48), (20, 64)])
def test_peephole_under_bfloat16_matches_the_bf16_reference(N, H):
    """bfloat16 products (the peepholes themselves stay float32, a pointwise term); 40 steps,
    so that a batch of 1 has the rows for bfloat16 weight gradients too."""
    p = _problem(40, N, 12, H, seed=8, dtype=np.float32)
    lengths = np.arange(N) % 41
    lengths[0] = 40
    ours = _run(F, p, lengths, precision="bfloat16")
    # the weight gradients' operands as the plan takes them (float32 with AVX2 kernels)
    bf16_weights = fr._C.plan("lstm", "tanh", 40, N, 12, H, np.dtype(np.float32), True,
                              fr.get_num_threads(), precision="bfloat16")["backward"][
                                  "bfloat16_weight_grads"]
    expected = _run(R, p, lengths, precision="bfloat16",
                    weight_grad_precision="bfloat16" if bf16_weights else "float32")
    for name, value in ours.items():
        e = expected[name]
        scale = np.abs(e).max()
        assert np.abs(value - e).max() <= 2.0 ** -7 * scale, name
        assert np.median(np.abs(value - e)) <= 1e-5 * scale, name


def test_peephole_arguments_are_checked():
    p = _problem(3, 2, 4, 5, seed=3, dtype=np.float32)
    gru = (np.zeros((15, 4), np.float32), np.zeros((15, 5), np.float32),
           np.zeros(15, np.float32), np.zeros(15, np.float32))
    with pytest.raises(ValueError, match="w_ph: peepholes belong to an LSTM"):
        fr._C.recurrent_forward("gru", "tanh", p["x"], p["h0"], None, *gru, None, False, False,
                                None, None, p["w_ph"])
    with pytest.raises(ValueError, match="w_ph: peepholes belong to an LSTM"):
        F._forward("gru", p["x"], p["h0"], None, *gru, None, False, False, "tanh",
                   w_ph=p["w_ph"])
    with pytest.raises(ValueError, match=r"w_ph: expected shape \(15,\)"):
        F.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], w_ph=p["w_ph"][:10])
    with pytest.raises(TypeError, match="w_ph: expected dtype float32"):
        F.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"],
                       w_ph=p["w_ph"].astype(np.float64))


# ---------------------------------------------------------------------------- the layer
def test_peephole_layer_is_the_reference_layer_by_layer():
    """Two bidirectional layers, batch_first, lengths: each layer direction is the reference
    cell with its own weight_ph_l{k}[_reverse]; the gradients reach every parameter."""
    m = fr.nn.LSTM(5, 24, num_layers=2, bidirectional=True, batch_first=True, peephole=True,
                   dtype=np.float64, seed=0)
    names = list(m.state_dict())
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ph_l0"]
    assert "weight_ph_l1_reverse" in names and m.weight_ph_l1_reverse.shape == (72,)
    assert "peephole=True" in repr(m)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8, 5))
    lengths = np.array([8, 5, 1])
    out, (h_n, c_n) = m(x, lengths=lengths)
    dout = rng.standard_normal(out.shape)
    m.backward(dout)

    inp = x.transpose(1, 0, 2)
    ctxs = []
    for layer in range(2):
        ys = []
        for d, suffix in enumerate(("", "_reverse")):
            w = [getattr(m, f"{n}_l{layer}{suffix}").data
                 for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ph")]
            y, h, c, ctx = R.lstm_forward(inp, None, None, *w[:4], lengths=lengths,
                                          reverse=d == 1, training=True, w_ph=w[4])
            np.testing.assert_allclose(h_n[2 * layer + d], h, atol=1e-12)
            np.testing.assert_allclose(c_n[2 * layer + d], c, atol=1e-12)
            ys.append(y)
            ctxs.append(ctx)
        inp = np.concatenate(ys, axis=2)
    np.testing.assert_allclose(out, inp.transpose(1, 0, 2), atol=1e-12)
    # the last layer's peephole gradients, from the reference
    grad_out = dout.transpose(1, 0, 2)
    for d, suffix in enumerate(("", "_reverse")):
        g = R.lstm_backward(ctxs[2 + d], grad_out[:, :, d * 24:(d + 1) * 24])
        np.testing.assert_allclose(getattr(m, f"weight_ph_l1{suffix}").grad, g[7], atol=1e-10)
    for name, param in m.named_parameters():
        assert param.grad is not None and np.abs(param.grad).max() > 0, name


def test_peephole_layer_with_dropout_and_eval_fast_path():
    m = fr.nn.LSTM(4, 16, num_layers=2, dropout=0.3, peephole=True, seed=2)
    x = np.random.default_rng(3).standard_normal((6, 2, 4)).astype(np.float32)
    out, _ = m(x)
    m.backward(np.ones_like(out))
    assert np.abs(m.weight_ph_l0.grad).max() > 0
    single = fr.nn.LSTM(4, 16, peephole=True, seed=2).eval()  # one layer: the short-call path
    y, (h, c) = single(x)
    w = [getattr(single, n).data for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                           "bias_hh_l0", "weight_ph_l0")]
    ref = R.lstm_forward(x, None, None, *w[:4], w_ph=w[4])
    assert relative_error(y, ref[0]) < 1e-5 and relative_error(c[0], ref[2]) < 1e-5
    plain = fr.nn.LSTM(4, 16, seed=2).eval()
    assert relative_error(plain(x)[0], y) > 1e-3  # the peepholes do something


# ---------------------------------------------------------------------------- ONNX Runtime
def _onnx_lstm(H, direction, with_lengths):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    D = 2 if direction == "bidirectional" else 1
    inputs = ["X", "W", "R", "B", "sequence_lens" if with_lengths else "", "initial_h",
              "initial_c", "P"]
    node = helper.make_node("LSTM", inputs, ["Y", "Y_h", "Y_c"], hidden_size=H,
                            direction=direction)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "lstm",
        [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else f, None)
         for n in inputs if n],
        [helper.make_tensor_value_info(n, f, None) for n in ("Y", "Y_h", "Y_c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model.SerializeToString(), D


def _to_onnx_gates(w, H):
    """Our gate blocks i, f, g, o -> ONNX's i, o, f, c."""
    return np.concatenate([w[0:H], w[3 * H:4 * H], w[H:2 * H], w[2 * H:3 * H]])


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_peephole_lstm_matches_onnxruntime(direction, with_lengths):
    ort = pytest.importorskip("onnxruntime")
    T, N, I, H = 7, 3, 5, 16
    model, D = _onnx_lstm(H, direction, with_lengths)
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    ps = [_problem(T, N, I, H, seed=10 + d, dtype=np.float32) for d in range(D)]
    x = ps[0]["x"]
    lengths = np.array([7, 4, 1]) if with_lengths else None
    feeds = {"X": x,
             "W": np.stack([_to_onnx_gates(p["w_ih"], H) for p in ps]),
             "R": np.stack([_to_onnx_gates(p["w_hh"], H) for p in ps]),
             "B": np.stack([np.concatenate([_to_onnx_gates(p["b_ih"], H),
                                            _to_onnx_gates(p["b_hh"], H)]) for p in ps]),
             "initial_h": np.stack([p["h0"] for p in ps]),
             "initial_c": np.stack([p["c0"] for p in ps]),
             # ONNX's P is i, o, f; ours i, f, o
             "P": np.stack([np.concatenate([p["w_ph"][:H], p["w_ph"][2 * H:], p["w_ph"][H:2 * H]])
                            for p in ps])}
    if with_lengths:
        feeds["sequence_lens"] = lengths.astype(np.int32)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    Y, Y_h, Y_c = sess.run(None, feeds)
    for d, (p, reverse) in enumerate(zip(ps, dirs)):
        y, h_n, c_n, _ = F.lstm_forward(x, p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"],
                                        p["b_hh"], lengths=lengths, reverse=reverse,
                                        w_ph=p["w_ph"])
        np.testing.assert_allclose(y, Y[:, d], rtol=0, atol=1e-5)
        np.testing.assert_allclose(h_n, Y_h[d], rtol=0, atol=1e-5)
        np.testing.assert_allclose(c_n, Y_c[d], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- cells, seq2seq
def test_peephole_cell_steps_are_the_sequence_kernel():
    """LSTMCell(peephole=True) stepped by hand is the sequence call with the same weights, its
    backward steps (in reverse) give the sequence's gradients, weight_ph's included."""
    cell = fr.nn.LSTMCell(5, 16, peephole=True, dtype=np.float64, seed=4)
    assert "peephole=True" in repr(cell) and cell.weight_ph.shape == (48,)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 5))
    dy = rng.standard_normal((6, 3, 16))
    h = c = None
    hs = []
    for t in range(6):
        h, c = cell(x[t], None if h is None else (h, c))
        hs.append(h)
    dh, dc = np.zeros((3, 16)), None
    for t in reversed(range(6)):
        _, (dh, dc) = cell.backward(dy[t] + dh, dc)
    w = (cell.weight_ih.data, cell.weight_hh.data, cell.bias_ih.data, cell.bias_hh.data)
    y, _, _, ctx = R.lstm_forward(x, None, None, *w, training=True, w_ph=cell.weight_ph.data)
    np.testing.assert_allclose(np.stack(hs), y, atol=1e-12)
    g = R.lstm_backward(ctx, dy)
    np.testing.assert_allclose(cell.weight_ph.grad, g[7], atol=1e-10)
    np.testing.assert_allclose(cell.weight_hh.grad, g[4], atol=1e-10)
    cell.eval()  # the short-call path takes the peepholes too
    np.testing.assert_allclose(cell(x[0])[1], R.lstm_forward(x[:1], None, None, *w,
                                                             w_ph=cell.weight_ph.data)[2],
                               atol=1e-12)


def test_seq2seq_with_peepholes_trains_by_its_gradients():
    """A peephole Seq2Seq (encoder layers and decoder cells): the loss's gradients against
    central differences for every parameter, weight_ph included."""
    from fusedrnn.nn import Seq2Seq
    from test_seq2seq import SRC, SRC_LENGTHS, TGT, check_gradients
    model = Seq2Seq(9, 8, embed_size=5, hidden_size=4, num_layers=1, peephole=True,
                    dtype=np.float64, seed=3)
    names = [k for k, _ in model.named_parameters()]
    assert "encoder.weight_ph_l0_reverse" in names and "decoder.cells.0.weight_ph" in names
    err = check_gradients(model, lambda: model.loss(SRC, SRC_LENGTHS, TGT),
                          np.random.default_rng(0))
    assert err < TOLERANCES["reference_vs_finite_differences"]
    with pytest.raises(ValueError, match="peephole: LSTM peepholes need cell='lstm'"):
        Seq2Seq(9, 8, cell="gru", peephole=True)


# ---------------------------------------------------------------------------- GRU, reset before
# The reference first (the kernels follow it): n = tanh(W_in x + b_in + W_hn (r*h) + b_hn).
def _gru_problem(T, N, I, H, seed):
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(H)
    return dict(x=rng.standard_normal((T, N, I)), h0=rng.standard_normal((N, H)),
                w_ih=rng.uniform(-bound, bound, (3 * H, I)),
                w_hh=rng.uniform(-bound, bound, (3 * H, H)) * 3,
                b_ih=rng.uniform(-bound, bound, 3 * H), b_hh=rng.uniform(-bound, bound, 3 * H),
                dy=rng.standard_normal((T, N, H)), dh_n=rng.standard_normal((N, H)))


@pytest.mark.parametrize("reverse", [False, True])
def test_reset_before_gru_reference_matches_finite_differences(reverse):
    p = _gru_problem(5, 3, 4, 6, seed=11)
    lengths = np.array([5, 2, 0])
    kw = dict(lengths=lengths, reverse=reverse, reset_after=False)
    y, h_n, ctx = R.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                training=True, **kw)
    got = dict(zip(("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
                   R.gru_backward(ctx, p["dy"], p["dh_n"])))

    def loss(q):
        y, h_n, _ = R.gru_forward(q["x"], q["h0"], q["w_ih"], q["w_hh"], q["b_ih"], q["b_hh"],
                                  **kw)
        return (y * p["dy"]).sum() + (h_n * p["dh_n"]).sum()

    for name in ("w_hh", "b_hh", "h0", "x", "w_ih", "b_ih"):
        assert np.abs(_numeric_gradient(loss, p, name) - got[name]).max() < \
            TOLERANCES["reference_vs_finite_differences"], name
    # not the reset-after GRU: the reset gate's place matters
    after = R.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                          lengths=lengths, reverse=reverse)[0]
    assert np.abs(after - y).max() > 1e-3


def _run_gru(module, p, lengths=None, reverse=False, precision=None):
    y, h_n, ctx = module.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"],
                                     p["b_hh"], lengths=lengths, reverse=reverse, training=True,
                                     precision=precision, reset_after=False)
    grads = module.gru_backward(ctx, p["dy"], p["dh_n"])
    return dict(zip(("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"), grads), y=y, h_n=h_n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("T,N,H", [(9, 1, 32), (9, 3, 17), (9, 40, 48), (2, 70, 20),
                                   (1, 5, 130), (30, 16, 128)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reset_before_gru_kernels_match_the_reference(T, N, H, reverse, dtype, threads):
    """The two-phase step by units (packed W_hh for sequences; BLAS or row products for short
    calls, inference's), lengths mixing 0, 1 and T; inference gives training's outputs."""
    p = {k: v.astype(dtype) for k, v in _gru_problem(T, N, 7, H, seed=N * 100 + H).items()}
    lengths = np.arange(N) % (T + 1)
    lengths[0] = T
    ours = _run_gru(F, p, lengths, reverse)
    expected = _run_gru(R, p, lengths, reverse)
    tolerance = TOLERANCES["kernel_vs_reference"][dtype]
    for name, value in ours.items():
        assert value.dtype == dtype, name
        assert relative_error(value, expected[name]) <= tolerance, name
    for lens in (lengths, None):
        y, h_n, ctx = F.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                    lengths=lens, reverse=reverse, reset_after=False)
        ref = R.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                            lengths=lens, reverse=reverse, reset_after=False)
        assert ctx is None
        assert relative_error(y, ref[0]) <= tolerance and relative_error(h_n, ref[1]) <= tolerance


@pytest.mark.parametrize("N,H", [(1, 64), (24, 96)])
def test_reset_before_gru_results_do_not_depend_on_the_threads(N, H):
    """1 and 2 threads agree, and bit for bit under fr.set_deterministic(True)."""
    p = {k: v.astype(np.float32) for k, v in _gru_problem(12, N, 10, H, seed=7).items()}
    _assert_thread_independent(lambda lengths: _run_gru(F, p, lengths), np.arange(N) % 13)


def _bf16_lengths(T, N):
    """Lengths mixing T, 0, 1 and the rest for the bfloat16 sequence tests."""
    lengths = np.arange(N) % (T + 1)
    lengths[:2] = (T, 0)
    return lengths


def _assert_bf16_step(infer, p, atol):
    """``infer(module, p, **kw)`` -> outputs: one inference with bfloat16 products is the
    reference with the same rounded operands up to float32 accumulation, and the rounding
    shows (not the float32 result). Over more than one step the state is rounded to bfloat16
    between steps, and float32's last bits may flip that rounding of an element (the float32
    activations and the float64 reference's differ by a few ulp): there the median, and every
    element within one flip's effect."""
    ours = infer(F, p, precision="bfloat16")
    ref = infer(R, p, precision="bfloat16")
    for got, want in zip(ours, ref):
        if p["x"].shape[0] == 1:
            np.testing.assert_allclose(got, want, rtol=0, atol=atol)
        else:
            assert np.median(np.abs(got - want)) <= atol
            assert np.abs(got - want).max() < 2.0 ** -7
    assert np.abs(ours[0] - infer(R, p)[0]).max() > 1e-5


def _assert_bf16_sequences(infer, p, reverse, amplified=False):
    """Sequences with lengths (0, 1, T) under autocast: the bf16 reference's outputs where no
    state's rounding flipped (the median) and within one flip's effect at most (``amplified``:
    a cell whose norms amplify a flip, held to be as close to the float64 result as the bf16
    reference is); padding zero; the same bits on 1 and 2 threads under set_deterministic."""
    T, N = p["x"].shape[:2]
    lengths = _bf16_lengths(T, N)
    with fr.autocast():
        ours = infer(F, p, lengths=lengths, reverse=reverse)
    ref = infer(R, p, precision="bfloat16", lengths=lengths, reverse=reverse)
    exact = infer(R, p, lengths=lengths, reverse=reverse)
    for got, want, full in zip(ours, ref, exact):
        assert np.median(np.abs(got - want)) < 1e-6
        if amplified:
            assert np.abs(got - full).max() < 1.5 * np.abs(want - full).max() + 1e-3
        else:
            assert np.abs(got - want).max() < 2.0 ** -7
            assert np.abs(got - full).max() < 5e-2
    assert np.all(ours[0][~(np.arange(T)[:, None] < lengths[None, :])] == 0)
    fr.set_deterministic(True)
    try:
        runs = []
        for n in (1, 2):
            fr.set_num_threads(n)
            runs.append(infer(F, p, precision="bfloat16", lengths=lengths, reverse=reverse))
    finally:
        fr.set_deterministic(False)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def _reset_before_inference(module, p, **kw):
    return module.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                              reset_after=False, **kw)[:2]


@pytest.mark.parametrize("N,H", [(1, 32), (3, 17), (20, 48), (37, 130), (16, 64)])
def test_reset_before_gru_bf16_step_matches_the_bf16_reference(N, H, threads):
    """One inference step with bfloat16 products (W_ih x, W_h{r,z} h, W_hn (r * h)): odd H,
    padding pairs, AMX sample tiles whole and padded where the CPU has AMX; by units and by
    samples."""
    p = {k: v.astype(np.float32) for k, v in _gru_problem(1, N, 9, H, seed=N + H).items()}
    _assert_bf16_step(_reset_before_inference, p, 3e-6)


@pytest.mark.parametrize("N,H", [(7, 48), (24, 96)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reset_before_gru_bf16_sequences_match_the_bf16_reference(N, H, reverse, threads):
    p = {k: v.astype(np.float32) for k, v in _gru_problem(30, N, 12, H, seed=3).items()}
    _assert_bf16_sequences(_reset_before_inference, p, reverse)


def test_reset_before_gru_arguments_are_checked():
    p = _gru_problem(3, 2, 4, 5, seed=3)
    with pytest.raises(TypeError, match="reset_after: expected a bool"):
        F.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], reset_after="no")
    with pytest.raises(TypeError, match="reset_after: expected a bool"):
        fr.nn.GRU(4, 5, reset_after=np.array([1, 0]))  # the layers take flags as torch.nn
    _, _, ctx = F.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], training=True,
                              reset_after=False)
    with pytest.raises(ValueError, match="ctx: expected a context from lstm_forward"):
        F.lstm_backward(ctx, p["dy"])
    with pytest.raises(ValueError, match="reset_after: reset_after=False is a GRU's"):
        fr.nn.Seq2Seq(9, 8, cell="lstm", reset_after=False)


def test_reset_before_gru_layer_is_the_reference_layer_by_layer():
    """Two bidirectional layers, batch_first, lengths: each layer direction is the reference
    reset-before GRU with the layer's weights (torch's names); gradients reach every
    parameter; the eval-mode short call agrees."""
    m = fr.nn.GRU(5, 24, num_layers=2, bidirectional=True, batch_first=True, reset_after=False,
                  dtype=np.float64, seed=0)
    assert "reset_after=False" in repr(m)
    assert list(m.state_dict())[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                        "bias_hh_l0"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8, 5))
    lengths = np.array([8, 5, 1])
    out, h_n = m(x, lengths=lengths)
    dout = rng.standard_normal(out.shape)
    m.backward(dout)
    inp = x.transpose(1, 0, 2)
    ctxs = []
    for layer in range(2):
        ys = []
        for d, suffix in enumerate(("", "_reverse")):
            w = [getattr(m, f"{n}_l{layer}{suffix}").data
                 for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            y, h, ctx = R.gru_forward(inp, None, *w, lengths=lengths, reverse=d == 1,
                                      training=True, reset_after=False)
            np.testing.assert_allclose(h_n[2 * layer + d], h, atol=1e-12)
            ys.append(y)
            ctxs.append(ctx)
        inp = np.concatenate(ys, axis=2)
    np.testing.assert_allclose(out, inp.transpose(1, 0, 2), atol=1e-12)
    grad_out = dout.transpose(1, 0, 2)
    for d, suffix in enumerate(("", "_reverse")):
        g = R.gru_backward(ctxs[2 + d], grad_out[:, :, d * 24:(d + 1) * 24])
        np.testing.assert_allclose(getattr(m, f"weight_hh_l1{suffix}").grad, g[3], atol=1e-10)
        np.testing.assert_allclose(getattr(m, f"bias_hh_l1{suffix}").grad, g[5], atol=1e-10)
    for name, param in m.named_parameters():
        assert param.grad is not None and np.abs(param.grad).max() > 0, name
    single = fr.nn.GRU(4, 16, reset_after=False, seed=2).eval()  # the short-call path
    x32 = rng.standard_normal((6, 2, 4)).astype(np.float32)
    y, h = single(x32)
    w = [getattr(single, n).data for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                           "bias_hh_l0")]
    ref = R.gru_forward(x32, None, *w, reset_after=False)
    assert relative_error(y, ref[0]) < 1e-5 and relative_error(h[0], ref[1]) < 1e-5
    plain = fr.nn.GRU(4, 16, seed=2).eval()
    assert relative_error(plain(x32)[0], y) > 1e-3  # the reset gate's place matters
    dropped = fr.nn.GRU(4, 16, num_layers=2, dropout=0.3, reset_after=False, seed=2)
    out, _ = dropped(x32)
    dropped.backward(np.ones_like(out))
    assert np.abs(dropped.weight_hh_l0.grad).max() > 0


def test_reset_before_gru_cell_steps_are_the_sequence_kernel():
    """GRUCell(reset_after=False) stepped by hand is the reference sequence; its backward steps
    give the sequence's gradients."""
    cell = fr.nn.GRUCell(5, 16, reset_after=False, dtype=np.float64, seed=4)
    assert "reset_after=False" in repr(cell)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 5))
    dy = rng.standard_normal((6, 3, 16))
    h, hs = None, []
    for t in range(6):
        h = cell(x[t], h)
        hs.append(h)
    dh = np.zeros((3, 16))
    for t in reversed(range(6)):
        _, dh = cell.backward(dy[t] + dh)
    w = (cell.weight_ih.data, cell.weight_hh.data, cell.bias_ih.data, cell.bias_hh.data)
    y, _, ctx = R.gru_forward(x, None, *w, training=True, reset_after=False)
    np.testing.assert_allclose(np.stack(hs), y, atol=1e-12)
    g = R.gru_backward(ctx, dy)
    np.testing.assert_allclose(cell.weight_hh.grad, g[3], atol=1e-10)
    np.testing.assert_allclose(cell.weight_ih.grad, g[2], atol=1e-10)
    cell.eval()  # the short-call path
    np.testing.assert_allclose(cell(x[0]), R.gru_forward(x[:1], None, *w, reset_after=False)[1],
                               atol=1e-12)


def test_seq2seq_with_reset_before_gru_trains_by_its_gradients():
    from fusedrnn.nn import Seq2Seq
    from test_seq2seq import SRC, SRC_LENGTHS, TGT, check_gradients
    model = Seq2Seq(9, 8, embed_size=5, hidden_size=4, num_layers=1, cell="gru",
                    reset_after=False, dtype=np.float64, seed=3)
    assert model.encoder.reset_after is False and model.decoder.cells[0].reset_after is False
    err = check_gradients(model, lambda: model.loss(SRC, SRC_LENGTHS, TGT),
                          np.random.default_rng(0))
    assert err < TOLERANCES["reference_vs_finite_differences"]


@pytest.mark.parametrize("module", ["reference", "kernels"])
def test_reset_before_gru_matches_keras(module):
    """Keras 3 GRU(reset_after=False), backend torch: kernel [I, 3H] and recurrent_kernel
    [H, 3H] in Keras' gate order z, r, h; one bias [3H] (ours b_ih; b_hh zero), set non-zero
    (Keras initialises it to zeros) so that a bias dropped or put in the wrong gate fails."""
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    T, N, I, H = 6, 3, 5, 8
    rng = np.random.default_rng(12)
    x = rng.standard_normal((N, T, I)).astype(np.float32)
    with warnings.catch_warnings():  # Keras' own NumPy 2 __array__ deprecation, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        layer = keras.layers.GRU(H, reset_after=False, return_sequences=True, return_state=True)
        layer.build((N, T, I))
        kernel, recurrent, bias = layer.get_weights()
        bias = rng.uniform(-0.5, 0.5, bias.shape).astype(np.float32)
        layer.set_weights([kernel, recurrent, bias])
        y_k, h_k = (a.detach().cpu().numpy() for a in layer(x))  # torch tensors

    def ours(a):  # Keras' z, r, h blocks -> our r, z, n rows
        z, r, h = np.split(a, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1).T

    y, h_n, _ = (R if module == "reference" else F).gru_forward(
        x.transpose(1, 0, 2), None, ours(kernel), ours(recurrent), ours(bias[None])[:, 0],
        np.zeros(3 * H, np.float32), reset_after=False)
    np.testing.assert_allclose(y.transpose(1, 0, 2), y_k, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, h_k, rtol=0, atol=1e-5)


@pytest.mark.parametrize("module", ["reference", "kernels"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_reset_before_gru_matches_onnxruntime(with_lengths, module):
    """ONNX Runtime's GRU with linear_before_reset=0 (ONNX's default), gates z, r, h."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    T, N, I, H = 7, 3, 5, 16
    p = _gru_problem(T, N, I, H, seed=13)
    inputs = ["X", "W", "R", "B", "sequence_lens" if with_lengths else "", "initial_h"]
    node = helper.make_node("GRU", inputs, ["Y", "Y_h"], hidden_size=H, linear_before_reset=0)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "gru",
        [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else f, None)
         for n in inputs if n],
        [helper.make_tensor_value_info(n, f, None) for n in ("Y", "Y_h")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8

    def onnx_order(a):  # our r, z, n -> ONNX's z, r, h
        r, z, n = np.split(a, 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    lengths = np.array([7, 4, 1]) if with_lengths else None
    f32 = {k: v.astype(np.float32) for k, v in p.items()}
    feeds = {"X": f32["x"], "W": onnx_order(f32["w_ih"])[None],
             "R": onnx_order(f32["w_hh"])[None],
             "B": np.concatenate([onnx_order(f32["b_ih"]), onnx_order(f32["b_hh"])])[None],
             "initial_h": f32["h0"][None]}
    if with_lengths:
        feeds["sequence_lens"] = lengths.astype(np.int32)
    Y, Y_h = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, feeds)
    y, h_n, _ = (R if module == "reference" else F).gru_forward(
        f32["x"], f32["h0"], f32["w_ih"], f32["w_hh"], f32["b_ih"], f32["b_hh"],
        lengths=lengths, reset_after=False)
    np.testing.assert_allclose(y, Y[:, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, Y_h[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- LSTM projections
# torch's proj_size: h = W_hr (o * tanh(c)), P < H wide; w_hh [4H, P]; c stays H wide.
def _proj_problem(T, N, I, H, P, seed, dtype=np.float64):
    p = _problem(T, N, I, H, seed, dtype)
    rng = np.random.default_rng(seed + 1)
    bound = 1.0 / np.sqrt(H)
    p.update(w_hh=rng.uniform(-bound, bound, (4 * H, P)).astype(dtype),
             w_hr=rng.uniform(-bound, bound, (P, H)).astype(dtype) * 3,
             h0=rng.standard_normal((N, P)).astype(dtype),
             dy=rng.standard_normal((T, N, P)).astype(dtype),
             dh_n=rng.standard_normal((N, P)).astype(dtype))
    return p


def _run_proj(module, p, lengths=None, reverse=False, peephole=False, precision=None):
    y, h_n, c_n, ctx = module.lstm_forward(
        p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], lengths=lengths,
        reverse=reverse, training=True, precision=precision,
        w_ph=p["w_ph"] if peephole else None, w_hr=p["w_hr"])
    grads = module.lstm_backward(ctx, p["dy"], p["dh_n"], p["dc_n"])
    names = GRADS[:7] + (("dw_ph",) if peephole else ()) + ("dw_hr",)
    assert len(grads) == len(names)  # dw_hr last
    return dict(zip(names, grads), y=y, h_n=h_n, c_n=c_n)


@pytest.mark.parametrize("reverse", [False, True])
def test_projection_reference_matches_finite_differences(reverse):
    p = _proj_problem(5, 3, 4, 6, 3, seed=21)
    lengths = np.array([5, 2, 0])
    got = _run_proj(R, p, lengths, reverse, peephole=True)

    def loss(q):
        y, h_n, c_n, _ = R.lstm_forward(q["x"], q["h0"], q["c0"], q["w_ih"], q["w_hh"],
                                        q["b_ih"], q["b_hh"], lengths=lengths, reverse=reverse,
                                        w_ph=q["w_ph"], w_hr=q["w_hr"])
        return (y * p["dy"]).sum() + (h_n * p["dh_n"]).sum() + (c_n * p["dc_n"]).sum()

    for name in ("w_hr", "w_hh", "h0", "c0", "x", "w_ih", "b_hh", "w_ph"):
        assert np.abs(_numeric_gradient(loss, p, name) - got["d" + name]).max() < \
            TOLERANCES["reference_vs_finite_differences"], name


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("T,N,H,P", [(9, 1, 32, 16), (9, 3, 17, 5), (9, 40, 48, 20),
                                     (2, 70, 20, 7), (1, 5, 130, 64), (30, 16, 128, 32)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_projection_kernels_match_the_reference(T, N, H, P, reverse, dtype, threads):
    """The two-phase step (cell math, then h = W_hr m) by units and by samples, packed, BLAS
    and row products; lengths mixing 0, 1 and T; peepholes with it; inference's outputs."""
    p = _proj_problem(T, N, 7, H, P, seed=N * 100 + H, dtype=dtype)
    lengths = np.arange(N) % (T + 1)
    lengths[0] = T
    tolerance = TOLERANCES["kernel_vs_reference"][dtype]
    for peephole in (False, True):
        ours = _run_proj(F, p, lengths, reverse, peephole)
        expected = _run_proj(R, p, lengths, reverse, peephole)
        for name, value in ours.items():
            assert value.dtype == dtype and value.shape == expected[name].shape, name
            assert relative_error(value, expected[name]) <= tolerance, (peephole, name)
    for lens in (lengths, None):
        y, h_n, c_n, ctx = F.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"],
                                          p["b_ih"], p["b_hh"], lengths=lens, reverse=reverse,
                                          w_hr=p["w_hr"])
        ref = R.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"],
                             p["b_hh"], lengths=lens, reverse=reverse, w_hr=p["w_hr"])
        assert ctx is None
        for got, want in zip((y, h_n, c_n), ref[:3]):
            assert relative_error(got, want) <= tolerance


def test_projection_results_do_not_depend_on_the_threads():
    p = _proj_problem(12, 24, 10, 96, 32, seed=7, dtype=np.float32)
    _assert_thread_independent(lambda lengths: _run_proj(F, p, lengths), np.arange(24) % 13)


def _proj_inference(module, p, **kw):
    return module.lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"],
                               p["b_hh"], w_hr=p["w_hr"], **kw)[:3]


@pytest.mark.parametrize("T,N,H,P", [(1, 1, 32, 16), (1, 3, 17, 5), (1, 20, 48, 20),
                                     (1, 37, 130, 64), (1, 16, 64, 33)])
def test_projection_bf16_step_matches_the_bf16_reference(T, N, H, P, threads):
    """One inference step with bfloat16 products (W_ih x, W_hh h, W_hr m), with and without
    peepholes: odd H and P, padding pairs, AMX sample tiles whole and padded where the CPU
    has AMX; by units and by samples."""
    p = _proj_problem(T, N, 9, H, P, seed=N + H, dtype=np.float32)
    for w_ph in (None, p["w_ph"]):
        _assert_bf16_step(lambda module, q, **kw: _proj_inference(module, q, w_ph=w_ph, **kw),
                          p, 3e-6)


@pytest.mark.parametrize("N,H,P", [(7, 48, 12), (24, 96, 32)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_projection_bf16_sequences_match_the_bf16_reference(N, H, P, reverse, threads):
    _assert_bf16_sequences(_proj_inference, _proj_problem(30, N, 12, H, P, seed=3,
                                                          dtype=np.float32), reverse)


@pytest.mark.parametrize("kind", ["reset_before", "proj"])
def test_two_phase_layer_and_cell_run_bf16_inference_under_autocast(kind):
    """fr.nn.GRU/GRUCell(reset_after=False) and LSTM/LSTMCell(proj_size) in eval mode under
    autocast: the kernels' bfloat16 call (the layer's short-call path included); the cell's
    one step (its own plan: the sums' order may differ) to 1e-6, not float32's."""
    x = np.random.default_rng(1).standard_normal((5, 3, 6)).astype(np.float32)
    if kind == "reset_before":
        layer = fr.nn.GRU(6, 32, reset_after=False, seed=0).eval()
        cell = fr.nn.GRUCell(6, 32, reset_after=False).eval()
        extra = {"reset_after": False}
    else:
        layer = fr.nn.LSTM(6, 32, proj_size=8, seed=0).eval()
        cell = fr.nn.LSTMCell(6, 32, proj_size=8).eval()
        extra = {"w_hr": layer.weight_hr_l0.data}
    w = [getattr(layer, n + "_l0").data for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def kernels(x, **kw):
        if kind == "reset_before":
            return F.gru_forward(x, None, *w, **extra, **kw)[0]
        return F.lstm_forward(x, None, None, *w, **extra, **kw)[0]

    def step(x):
        out = cell(x)
        return out if kind == "reset_before" else out[0]
    want, float32 = kernels(x, precision="bfloat16"), kernels(x[:1])[0]
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    with fr.autocast():
        np.testing.assert_array_equal(layer(x)[0], want)
        np.testing.assert_array_equal(layer(x, lengths=[5, 5, 5])[0], want)
        np.testing.assert_allclose(step(x[0]), want[0], rtol=0, atol=1e-6)
        assert np.abs(step(x[0]) - float32).max() > 1e-6
    assert np.abs(layer(x)[0] - want).max() > 1e-6  # float32 outside autocast


def test_projection_arguments_are_checked():
    p = _proj_problem(3, 2, 4, 6, 3, seed=3, dtype=np.float32)
    args = (p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"])
    with pytest.raises(ValueError, match=r"w_hr: expected shape \(P, H\) with 0 < P < H"):
        F.lstm_forward(*args, w_hr=np.zeros((6, 6), np.float32))
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(4\*H, P\) = \(24, 2\)"):
        F.lstm_forward(*args, w_hr=np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 3\)"):
        F.lstm_forward(p["x"], np.zeros((2, 6), np.float32), *args[2:], w_hr=p["w_hr"])
    with pytest.raises(TypeError, match="w_hr: expected dtype float32"):
        F.lstm_forward(*args, w_hr=p["w_hr"].astype(np.float64))
    gru = (np.zeros((18, 4), np.float32), np.zeros((18, 6), np.float32))
    with pytest.raises(ValueError, match="w_hr: projections .* belong to an LSTM"):
        F._forward("gru", p["x"], None, None, *gru, None, None, None, False, False, "tanh",
                   w_hr=p["w_hr"])
    with pytest.raises(ValueError, match="w_hr: projections .* belong to an LSTM"):
        fr._C.recurrent_forward("gru", "tanh", p["x"], np.zeros((2, 6), np.float32), None, *gru,
                                np.zeros(18, np.float32), np.zeros(18, np.float32), None, False,
                                False, None, None, None, p["w_hr"])
    for bad in (6, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"proj_size: expected an integer in \[0, hidden_size\)"):
            fr.nn.LSTM(4, 6, proj_size=bad)


def test_projection_layer_is_torchs_lstm():
    """fr.nn.LSTM(proj_size=P) against torch.nn.LSTM(proj_size=P): the state_dict keys, the
    outputs and every gradient; lengths against the reference layer by layer; dropout; the
    eval-mode short call."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 24, num_layers=2, bidirectional=True, batch_first=True,
                        proj_size=7).double()
    m = fr.nn.LSTM(5, 24, num_layers=2, bidirectional=True, batch_first=True, proj_size=7,
                   dtype=np.float64)
    assert list(m.state_dict()) == list(ref.state_dict()) and "proj_size=7" in repr(m)
    m.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    rng = np.random.default_rng(1)
    x, h0, c0 = rng.standard_normal((3, 8, 5)), rng.standard_normal((4, 3, 7)), \
        rng.standard_normal((4, 3, 24))
    ts = [torch.tensor(a, requires_grad=True) for a in (x, h0, c0)]
    y_t, (h_t, c_t) = ref(ts[0], (ts[1], ts[2]))
    y, (h_n, c_n) = m(x, (h0, c0))
    assert y.shape == (3, 8, 14) and h_n.shape == (4, 3, 7) and c_n.shape == (4, 3, 24)
    for a, b in ((y, y_t), (h_n, h_t), (c_n, c_t)):
        np.testing.assert_allclose(a, b.detach().numpy(), atol=1e-12)
    dy = rng.standard_normal(y.shape)
    (y_t * torch.tensor(dy)).sum().backward()
    dx, (dh0, dc0) = m.backward(dy)
    for a, b in ((dx, ts[0]), (dh0, ts[1]), (dc0, ts[2])):
        np.testing.assert_allclose(a, b.grad.numpy(), atol=1e-12)
    grads = dict(ref.named_parameters())
    for name, param in m.named_parameters():
        np.testing.assert_allclose(param.grad, grads[name].grad.numpy(), atol=1e-12, err_msg=name)
    # lengths: each layer direction is the reference with its weights
    lengths = np.array([8, 5, 1])
    out, (h_n, _) = m(x, lengths=lengths)
    inp = x.transpose(1, 0, 2)
    for layer in range(2):
        ys = []
        for d, suffix in enumerate(("", "_reverse")):
            w = [getattr(m, f"{n}_l{layer}{suffix}").data
                 for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
            y_r, h_r, _, _ = R.lstm_forward(inp, None, None, *w[:4], lengths=lengths,
                                            reverse=d == 1, w_hr=w[4])
            np.testing.assert_allclose(h_n[2 * layer + d], h_r, atol=1e-12)
            ys.append(y_r)
        inp = np.concatenate(ys, axis=2)
    np.testing.assert_allclose(out, inp.transpose(1, 0, 2), atol=1e-12)
    dropped = fr.nn.LSTM(4, 16, num_layers=2, dropout=0.3, proj_size=5, seed=2)
    x32 = rng.standard_normal((6, 2, 4)).astype(np.float32)
    out, _ = dropped(x32)
    dropped.backward(np.ones_like(out))
    assert np.abs(dropped.weight_hr_l0.grad).max() > 0
    single = fr.nn.LSTM(4, 16, proj_size=5, seed=2).eval()  # the short-call path
    y, (h, c) = single(x32)
    w = [getattr(single, n).data for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                           "bias_hh_l0", "weight_hr_l0")]
    ref_y, _, ref_c, _ = R.lstm_forward(x32, None, None, *w[:4], w_hr=w[4])
    assert relative_error(y, ref_y) < 1e-5 and relative_error(c[0], ref_c) < 1e-5
    y2, _ = single(x32, (h, c))  # a carried state [1, N, P], [1, N, H]
    assert y2.shape == (6, 2, 5)


# ---------------------------------------------------------------------------- LayerNorm-LSTM
LN_GRADS = GRADS[:7] + ("dln",)


def _ln_problem(T, N, I, H, seed, dtype=np.float64):
    p = _problem(T, N, I, H, seed, dtype)
    del p["w_ph"]
    rng = np.random.default_rng(seed + 2)
    p["ln"] = np.concatenate([rng.uniform(0.5, 1.5, 9 * H),
                              rng.uniform(-0.5, 0.5, H)]).astype(dtype)
    return p


def _run_ln(module, p, lengths=None, reverse=False, precision=None):
    y, h_n, c_n, ctx = module.layernorm_lstm_forward(
        p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["ln"],
        lengths=lengths, reverse=reverse, training=True, precision=precision)
    grads = module.layernorm_lstm_backward(ctx, p["dy"], p["dh_n"], p["dc_n"])
    return dict(zip(LN_GRADS, grads), y=y, h_n=h_n, c_n=c_n)


@pytest.mark.parametrize("reverse", [False, True])
def test_layernorm_lstm_reference_matches_finite_differences(reverse):
    p = _ln_problem(5, 3, 4, 6, seed=31)
    lengths = np.array([5, 2, 0])
    got = _run_ln(R, p, lengths, reverse)

    def loss(q):
        y, h_n, c_n, _ = R.layernorm_lstm_forward(q["x"], q["h0"], q["c0"], q["w_ih"], q["w_hh"],
                                                  q["b_ih"], q["b_hh"], q["ln"],
                                                  lengths=lengths, reverse=reverse)
        return (y * p["dy"]).sum() + (h_n * p["dh_n"]).sum() + (c_n * p["dc_n"]).sum()

    for name in ("ln", "w_hh", "w_ih", "b_ih", "h0", "c0", "x"):
        assert np.abs(_numeric_gradient(loss, p, name) - got["d" + name]).max() < \
            TOLERANCES["reference_vs_finite_differences"], name


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("T,N,H", [(9, 1, 32), (9, 3, 17), (9, 40, 48), (2, 70, 20),
                                   (1, 5, 130), (30, 16, 128)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_layernorm_lstm_kernels_match_the_reference(T, N, H, reverse, dtype, threads):
    """By samples and on one thread; packed, BLAS and row products; SIMD and odd H; lengths
    mixing 0, 1 and T; inference's outputs."""
    p = _ln_problem(T, N, 7, H, seed=N * 100 + H, dtype=dtype)
    lengths = np.arange(N) % (T + 1)
    lengths[0] = T
    tolerance = TOLERANCES["kernel_vs_reference"][dtype]
    ours, expected = _run_ln(F, p, lengths, reverse), _run_ln(R, p, lengths, reverse)
    for name, value in ours.items():
        assert value.dtype == dtype and value.shape == expected[name].shape, name
        assert relative_error(value, expected[name]) <= tolerance, name
    y, h_n, c_n, ctx = F.layernorm_lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"],
                                                p["b_ih"], p["b_hh"], p["ln"], lengths=lengths,
                                                reverse=reverse)
    assert ctx is None
    for got, name in ((y, "y"), (h_n, "h_n"), (c_n, "c_n")):
        assert relative_error(got, expected[name]) <= tolerance, name


def test_layernorm_lstm_results_do_not_depend_on_the_threads():
    p = _ln_problem(12, 24, 10, 96, seed=7, dtype=np.float32)
    _assert_thread_independent(lambda lengths: _run_ln(F, p, lengths), np.arange(24) % 13)


def test_layernorm_lstm_defaults_and_arguments():
    """ln=None: gains one, the cell norm's bias zero; eps reaches the norms; bad arguments are
    named."""
    p = _ln_problem(4, 3, 5, 16, seed=5, dtype=np.float32)
    args = (p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    unit = np.concatenate([np.ones(144), np.zeros(16)]).astype(np.float32)
    np.testing.assert_array_equal(F.layernorm_lstm_forward(*args)[0],
                                  F.layernorm_lstm_forward(*args, unit)[0])
    assert relative_error(F.layernorm_lstm_forward(*args, eps=0.5)[0],
                          R.layernorm_lstm_forward(*args, eps=0.5)[0]) < 1e-5
    with pytest.raises(ValueError, match=r"ln: expected shape \(160,\)"):
        F.layernorm_lstm_forward(*args, unit[:10])
    for eps in (0, float("inf"), float("nan")):  # inf made every norm 0, silently
        with pytest.raises(ValueError, match="eps: expected a positive finite number"):
            F.layernorm_lstm_forward(*args, eps=eps)
    with pytest.raises(ValueError, match="ln: layer-norm parameters belong to the LayerNorm"):
        F._forward_many("lstm", [dict(zip(("x", "h0", "c0", "w_ih", "w_hh"), args), ln=unit)])
    with pytest.raises(ValueError, match="ln: layer-norm parameters belong to the LayerNorm"):
        fr._C.recurrent_forward("lstm", "tanh", *args, None, False, False, None, None, None,
                                None, unit)
    with pytest.raises(ValueError, match="ln: the LayerNorm-LSTM needs its norm parameters"):
        fr._C.recurrent_forward("layernorm_lstm", "tanh", *args, None, False, False)
    for eps in (-1.0, float("inf")):
        with pytest.raises(ValueError, match="eps: expected a positive finite number"):
            fr.nn.LayerNormLSTM(4, 8, eps=eps)
    # below float32's smallest normal number eps is 0 in the float32 kernels (they flush
    # subnormals), and a zero state's W_hh h0, a constant row, normalized to 0/0 = NaN
    tiny = np.finfo(np.float32).tiny
    with pytest.raises(ValueError, match=r"eps: expected at least 1\.175e-38 \(the smallest "
                                         r"normal float32"):
        F.layernorm_lstm_forward(*args, eps=tiny / 2)
    for make in (fr.nn.LayerNormLSTM, fr.nn.LayerNormLSTMCell):
        with pytest.raises(ValueError, match="eps: expected at least"):
            make(4, 8, eps=1e-40)
        make(4, 8, eps=1e-40, dtype=np.float64)  # a normal float64
    y = F.layernorm_lstm_forward(*args, eps=tiny)[0]  # the smallest allowed: finite
    assert np.isfinite(y).all()


def _ln_inference(module, p, **kw):
    return module.layernorm_lstm_forward(p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"],
                                         p["b_ih"], p["b_hh"], p["ln"], **kw)[:3]


@pytest.mark.parametrize("T,N,H", [(1, 1, 32), (1, 3, 17), (1, 20, 48), (1, 37, 130),
                                   (3, 16, 64)])
def test_layernorm_lstm_bf16_step_matches_the_bf16_reference(T, N, H, threads):
    """Inference with bfloat16 products (W_ih x, W_hh h; the norms float32): odd H, padding
    pairs, AMX sample tiles where the CPU has AMX; by samples, by units and on one thread."""
    _assert_bf16_step(_ln_inference, _ln_problem(T, N, 9, H, seed=N + H, dtype=np.float32),
                      2e-5)


@pytest.mark.parametrize("N,H", [(7, 48), (24, 96)])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_layernorm_lstm_bf16_sequences_match_the_bf16_reference(N, H, reverse, threads):
    """Sequences under autocast (the norms amplify a flip of a state's rounding: one bfloat16
    step of h, renormalized, reaches 1e-2 after a few steps in the reference and in ours); the
    layer and the cell in eval mode take the bfloat16 call too."""
    T = 30
    p = _ln_problem(T, N, 12, H, seed=3, dtype=np.float32)
    _assert_bf16_sequences(_ln_inference, p, reverse, amplified=True)
    layer = fr.nn.LayerNormLSTM(12, H).eval()
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    layer.load_state_dict(dict(zip([n + "_l0" for n in names],
                                   [p[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")]),
                               **dict(zip([f"ln_{k}_l0" for k in ("weight_ih", "weight_hh",
                                                                 "weight_c", "bias_c")],
                                          np.split(p["ln"], np.cumsum([4 * H, 4 * H, H]))))))
    want = F.layernorm_lstm_forward(p["x"], None, None, *[p[k] for k in ("w_ih", "w_hh", "b_ih",
                                                                        "b_hh")], p["ln"],
                                    precision="bfloat16")[0]
    with fr.autocast():
        np.testing.assert_array_equal(layer(p["x"])[0], want)
    cell = fr.nn.LayerNormLSTMCell(12, H).eval()
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    with fr.autocast():  # one step (its own plan: the sums' order may differ)
        np.testing.assert_allclose(cell(p["x"][0])[0], want[0], rtol=0, atol=2e-5)


def test_layernorm_lstm_layer_is_the_reference_layer_by_layer():
    """fr.nn.LayerNormLSTM: two bidirectional layers, batch_first, lengths; each layer direction
    is the reference with its parameters; the norms' gradients reach their parameters; dropout
    and the eval-mode short call."""
    m = fr.nn.LayerNormLSTM(5, 16, num_layers=2, bidirectional=True, batch_first=True,
                            dtype=np.float64, seed=0)
    names = list(m.state_dict())
    assert names[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "ln_weight_ih_l0", "ln_weight_hh_l0", "ln_weight_c_l0", "ln_bias_c_l0"]
    assert (m.ln_weight_c_l1_reverse.data == 1).all() and (m.ln_bias_c_l0.data == 0).all()
    rng = np.random.default_rng(1)
    for name, param in m.named_parameters():  # gains and biases away from their start
        if name.startswith("ln_"):
            param.data[...] = rng.uniform(0.5, 1.5, param.data.shape)
    x = rng.standard_normal((3, 8, 5))
    lengths = np.array([8, 5, 1])
    out, (h_n, c_n) = m(x, lengths=lengths)
    dout = rng.standard_normal(out.shape)
    m.backward(dout)
    inp, ctxs = x.transpose(1, 0, 2), []
    kinds = ("weight_ih", "weight_hh", "weight_c", "bias_c")
    for layer in range(2):
        ys = []
        for d, suffix in enumerate(("", "_reverse")):
            w = [getattr(m, f"{n}_l{layer}{suffix}").data
                 for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            ln = np.concatenate([getattr(m, f"ln_{k}_l{layer}{suffix}").data for k in kinds])
            y, h, c, ctx = R.layernorm_lstm_forward(inp, None, None, *w, ln, lengths=lengths,
                                                    reverse=d == 1, training=True)
            np.testing.assert_allclose(h_n[2 * layer + d], h, atol=1e-12)
            np.testing.assert_allclose(c_n[2 * layer + d], c, atol=1e-12)
            ys.append(y)
            ctxs.append(ctx)
        inp = np.concatenate(ys, axis=2)
    np.testing.assert_allclose(out, inp.transpose(1, 0, 2), atol=1e-12)
    grad_out = dout.transpose(1, 0, 2)
    for d, suffix in enumerate(("", "_reverse")):
        g = R.layernorm_lstm_backward(ctxs[2 + d], grad_out[:, :, d * 16:(d + 1) * 16])
        np.testing.assert_allclose(getattr(m, f"weight_hh_l1{suffix}").grad, g[4], atol=1e-10)
        dln = np.concatenate([getattr(m, f"ln_{k}_l1{suffix}").grad for k in kinds])
        np.testing.assert_allclose(dln, g[7], atol=1e-10)
    for name, param in m.named_parameters():
        assert param.grad is not None and np.abs(param.grad).max() > 0, name
    x32 = rng.standard_normal((6, 2, 4)).astype(np.float32)
    dropped = fr.nn.LayerNormLSTM(4, 16, num_layers=2, dropout=0.3, seed=2)
    out, _ = dropped(x32)
    dropped.backward(np.ones_like(out))
    assert np.abs(dropped.ln_weight_hh_l0.grad).max() > 0
    single = fr.nn.LayerNormLSTM(4, 16, eps=1e-3, seed=2).eval()  # the short-call path
    assert "eps=0.001" in repr(single)
    y, (h, c) = single(x32)
    w = [getattr(single, n).data for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                           "bias_hh_l0")]
    ref = R.layernorm_lstm_forward(x32, None, None, *w, eps=1e-3)
    assert relative_error(y, ref[0]) < 1e-5 and relative_error(c[0], ref[2]) < 1e-5


@pytest.mark.parametrize("kind", ["projection", "projection_peephole", "layernorm"])
def test_projected_and_layernorm_cells_step_as_the_reference(kind):
    """LSTMCell(proj_size=P) (with and without peepholes) and LayerNormLSTMCell stepped by hand
    are the float64 reference's sequence: outputs, states, and (backward steps in reverse)
    every parameter's gradient, the projection's and the norms' included; the eval-mode short
    call takes the variant too."""
    rng = np.random.default_rng(6)
    T, N, I, H, P = 6, 3, 5, 12, 4
    if kind == "layernorm":
        cell = fr.nn.LayerNormLSTMCell(I, H, dtype=np.float64, seed=4)
        for p in cell._layer_norm_params():  # gains and biases away from their start
            p.data[...] = rng.uniform(0.5, 1.5, p.data.shape)
        S, names = H, ["ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"]
    else:
        cell = fr.nn.LSTMCell(I, H, proj_size=P, peephole=kind.endswith("peephole"),
                              dtype=np.float64, seed=4)
        assert f"proj_size={P}" in repr(cell) and cell.weight_hh.shape == (4 * H, P)
        S, names = P, ["weight_hr"] + (["weight_ph"] if cell.peephole else [])
    x, dy = rng.standard_normal((T, N, I)), rng.standard_normal((T, N, S))
    h0, c0 = rng.standard_normal((N, S)), rng.standard_normal((N, H))
    h, c, hs = h0, c0, []
    for t in range(T):
        h, c = cell(x[t], (h, c))
        hs.append(h)
    dh, dc = np.zeros((N, S)), None
    for t in reversed(range(T)):
        dx, (dh, dc) = cell.backward(dy[t] + dh, dc)
    w = [cell.weight_ih.data, cell.weight_hh.data, cell.bias_ih.data, cell.bias_hh.data]
    if kind == "layernorm":
        ln = np.concatenate([p.data for p in cell._layer_norm_params()])
        y, h_n, c_n, ctx = R.layernorm_lstm_forward(x, h0, c0, *w, ln, training=True)
        g = R.layernorm_lstm_backward(ctx, dy)
        grads = np.split(g[7], np.cumsum([4 * H, 4 * H, H]))
    else:
        w_ph = cell.weight_ph.data if cell.peephole else None
        y, h_n, c_n, ctx = R.lstm_forward(x, h0, c0, *w, training=True, w_ph=w_ph,
                                          w_hr=cell.weight_hr.data)
        g = R.lstm_backward(ctx, dy)
        grads = [g[-1]] + ([g[7]] if cell.peephole else [])
    np.testing.assert_allclose(np.stack(hs), y, atol=1e-12)
    np.testing.assert_allclose(c, c_n, atol=1e-12)
    np.testing.assert_allclose(dh, g[1], atol=1e-10)
    np.testing.assert_allclose(dc, g[2], atol=1e-10)
    np.testing.assert_allclose(cell.weight_hh.grad, g[4], atol=1e-10)
    for name, expected in zip(names, grads):
        np.testing.assert_allclose(getattr(cell, name).grad, expected, atol=1e-10)
    cell.eval()
    np.testing.assert_allclose(cell(x[0], (h0, c0))[0], y[0], atol=1e-12)


def test_projected_and_layernorm_cells_check_their_arguments():
    with pytest.raises(ValueError, match=r"proj_size: expected an integer in \[0, hidden_size\)"):
        fr.nn.LSTMCell(3, 4, proj_size=4)
    for eps in (0, float("inf")):
        with pytest.raises(ValueError, match="eps: expected a positive finite number"):
            fr.nn.LayerNormLSTMCell(3, 4, eps=eps)
    cell = fr.nn.LSTMCell(3, 8, proj_size=2)
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(5, 2\), got \(5, 8\)"):
        cell(x, (np.zeros((5, 8), np.float32), np.zeros((5, 8), np.float32)))
    h, c = cell(x)
    assert h.shape == (5, 2) and c.shape == (5, 8)
    with pytest.raises(ValueError, match=r"dh: expected shape \(5, 2\), got \(5, 8\)"):
        cell.backward(np.zeros((5, 8), np.float32))
    ln = fr.nn.LayerNormLSTMCell(3, 4, eps=1e-3)
    assert "eps=0.001" in repr(ln) and list(ln.state_dict())[4:] == [
        "ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"]


@pytest.mark.parametrize("cell, options, attention", [
    ("layernorm_lstm", {}, "bahdanau"), ("layernorm_lstm", {}, "luong"),
    ("lstm", {"proj_size": 3}, "bahdanau"), ("lstm", {"proj_size": 3, "peephole": True}, "luong")])
def test_seq2seq_with_layernorm_or_projected_lstm_trains_by_its_gradients(cell, options,
                                                                        attention):
    """Seq2Seq with the LayerNorm-LSTM or the projected LSTM in the encoder's layers and the
    decoder's cells (h, the keys and the decoder's state proj_size wide): the loss's gradients
    against central differences for every parameter, and greedy decoding runs."""
    from fusedrnn.nn import Seq2Seq
    from test_seq2seq import SRC, SRC_LENGTHS, TGT, check_gradients
    model = Seq2Seq(9, 8, embed_size=5, hidden_size=6, num_layers=2, cell=cell,
                    attention=attention, dtype=np.float64, seed=3, **options)
    names = [k for k, _ in model.named_parameters()]
    if cell == "layernorm_lstm":
        assert "encoder.ln_bias_c_l1_reverse" in names and "decoder.cells.1.ln_weight_c" in names
    else:
        assert model.encoder.weight_hr_l0.shape == (3, 6)
        assert model.decoder.cells[1].weight_hh.shape == (24, 3)
        assert model.decoder.key_size == 6 and model.decoder.state_size == 3
    err = check_gradients(model, lambda: model.loss(SRC, SRC_LENGTHS, TGT),
                          np.random.default_rng(0))
    assert err < TOLERANCES["reference_vs_finite_differences"]
    result = model.greedy_decode(SRC, SRC_LENGTHS, max_len=4)
    assert len(result.tokens) == len(SRC)
    with pytest.raises(ValueError, match="proj_size: projections need cell='lstm'"):
        Seq2Seq(9, 8, cell="gru", proj_size=2)
    with pytest.raises(ValueError, match=r"cell: expected one of \['lstm', 'gru', "
                                         r"'layernorm_lstm'\], got 'rnn'"):
        Seq2Seq(9, 8, cell="rnn")


@pytest.mark.parametrize("kind", ["reset_before", "proj", "layernorm"])
def test_variant_bf16_weights_kept_between_calls_are_never_stale(kind):
    """Under autocast the variants keep W_hh's (and W_ih's) bfloat16 pairs between inference
    calls: a repeated call gives the same bits, and after a weight changes (load_state_dict,
    an in-place write) the call equals a fresh layer's with the new weights."""
    make = {"reset_before": lambda: fr.nn.GRU(6, 160, reset_after=False, seed=0),
            "proj": lambda: fr.nn.LSTM(6, 160, proj_size=8, seed=0),
            "layernorm": lambda: fr.nn.LayerNormLSTM(6, 160, seed=0)}[kind]
    layer = make().eval()
    # batch 1 (by units on 2 threads) and 20 (by samples), kept forms read back each time
    x = np.random.default_rng(2).standard_normal((7, 20, 6)).astype(np.float32)
    for one in (x[:, :1], x[:, :1]):
        with fr.autocast():
            np.testing.assert_array_equal(layer(np.ascontiguousarray(one))[0],
                                          make().eval()(np.ascontiguousarray(one))[0])
    rng = np.random.default_rng(3)
    with fr.autocast():
        first = layer(x)[0]
        np.testing.assert_array_equal(layer(x)[0], first)
        for change in ("load_state_dict", "in place"):
            state = layer.state_dict()
            if change == "load_state_dict":
                state["weight_hh_l0"] = rng.uniform(-0.2, 0.2, state["weight_hh_l0"].shape
                                                    ).astype(np.float32)
                layer.load_state_dict(state)
            else:
                layer.weight_ih_l0.data[...] *= 0.5
            fresh = make().eval()
            fresh.load_state_dict(layer.state_dict())
            got = layer(x)[0]
            np.testing.assert_array_equal(got, fresh(x)[0])
            assert np.abs(got - first).max() > 1e-4
            first = got


# ---------------------------------------------------------------------------- training under autocast
def _variant_run(kind, module, p, lengths, training=True, precision=None):
    """The kind's forward (and with ``training`` its backward): outputs and gradients by name."""
    if kind == "reset_before":
        if training:
            return _run_gru(module, p, lengths, precision=precision)
        y, h_n, _ = module.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"],
                                       p["b_hh"], lengths=lengths, reset_after=False)
        return {"y": y, "h_n": h_n}
    if kind == "proj":
        if training:
            return _run_proj(module, p, lengths, precision=precision)
        return dict(zip(("y", "h_n", "c_n"), _proj_inference(module, p, lengths=lengths)))
    if training:
        return _run_ln(module, p, lengths, precision=precision)
    return dict(zip(("y", "h_n", "c_n"), module.layernorm_lstm_forward(
        p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["ln"],
        lengths=lengths)[:3]))


def _variant_problem(kind, T, N, I, H, dtype):
    if kind == "reset_before":
        return {k: v.astype(dtype) for k, v in _gru_problem(T, N, I, H, seed=N + H).items()}
    if kind == "proj":
        return _proj_problem(T, N, I, H, H // 3, seed=N + H, dtype=dtype)
    return _ln_problem(T, N, I, H, seed=N + H, dtype=dtype)


@pytest.mark.parametrize("kind", ["reset_before", "proj"])
@pytest.mark.parametrize("N,H", [(1, 64), (3, 40), (24, 96)])
def test_variant_training_under_autocast_runs_a_bf16_forward(kind, N, H, threads):
    """Training under autocast (CPU): the forward runs the bfloat16 products, giving the bf16
    inference's outputs bit for bit (its context says so), and the backward float32 products
    at those activations: every output and gradient as close to the float64 one as the
    reference's with the same bfloat16 forward (its float64 backward) is, within 1.5x; by
    samples and by units (N), 1 and 2 threads."""
    T = 12
    p = _variant_problem(kind, T, N, 10, H, np.float32)
    lengths = _bf16_lengths(T, N) if N > 1 else None
    with fr.autocast():
        trained = _variant_run(kind, F, p, lengths)
        inferred = _variant_run(kind, F, p, lengths, training=False)
    plain = _variant_run(kind, F, p, lengths)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    exact = _variant_run(kind, R, p64, lengths)
    rounded = _variant_run(kind, R, p64, lengths, precision="bfloat16")
    for name, value in inferred.items():
        np.testing.assert_array_equal(trained[name], value, name)
    assert not np.array_equal(trained["y"], plain["y"])
    for name, value in exact.items():
        assert trained[name].dtype == np.float32, name
        assert relative_error(plain[name], value) < 1e-4, name
        assert relative_error(trained[name], value) <= \
            1.5 * relative_error(rounded[name], value) + 1e-4, name
    if kind == "proj":
        ctx = F.lstm_forward(p["x"], None, None, p["w_ih"], p["w_hh"], w_hr=p["w_hr"],
                             training=True, precision="bfloat16")[3]
    else:
        ctx = F.gru_forward(p["x"], None, p["w_ih"], p["w_hh"], training=True,
                            precision="bfloat16", reset_after=False)[2]
    assert ctx.precision == "bfloat16"


def test_layernorm_lstm_trains_in_float32_under_autocast():
    """The LayerNorm-LSTM's training keeps float32 products under autocast (its context says
    so; the same bits as without autocast): with a bfloat16 forward its gradients would be
    ~1e-1 from float64 here (the reference's too), where the two-phase variants' stay ~3e-3."""
    p = _variant_problem("layernorm", 12, 24, 10, 96, np.float32)
    lengths = _bf16_lengths(12, 24)
    with fr.autocast():
        cast = _variant_run("layernorm", F, p, lengths)
        ctx = F.layernorm_lstm_forward(p["x"], None, None, p["w_ih"], p["w_hh"], training=True)[3]
    assert ctx.precision is None
    plain = _variant_run("layernorm", F, p, lengths)
    for name, value in plain.items():
        np.testing.assert_array_equal(cast[name], value, name)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    exact = _variant_run("layernorm", R, p64, lengths)
    rounded = _variant_run("layernorm", R, p64, lengths, precision="bfloat16")
    assert relative_error(rounded["dw_hh"], exact["dw_hh"]) > 3e-2  # why it stays float32
