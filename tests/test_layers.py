"""Linear, Embedding, Dropout, Sequential and the single-step cells: backward against central
differences (float64), cells against the NumPy references, the sequence kernels and torch."""
import numpy as np
import pytest

import fusedrnn as fr
from conftest import FINITE_DIFFERENCE_EPS, TOLERANCES, reference, relative_error

FD_TOL = TOLERANCES["reference_vs_finite_differences"]


def numeric_grad(f, array, eps=FINITE_DIFFERENCE_EPS):
    """Central differences of the scalar f() with respect to every element of ``array``."""
    g = np.zeros_like(array)
    it = np.nditer(array, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = array[i]
        array[i] = old + eps
        fp = f()
        array[i] = old - eps
        fm = f()
        array[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def check_module_grads(module, x, forward):
    """forward(x) -> output; loss = sum(output * R). Checks dx and every parameter's grad."""
    rng = np.random.default_rng(1)
    out = forward(x)
    R = rng.standard_normal(out.shape)
    module.zero_grad()
    dx = module.backward(R)

    def loss():
        return float(np.sum(forward(x) * R))

    for name, p in module.named_parameters():
        assert relative_error(p.grad, numeric_grad(loss, p.data)) < FD_TOL, name
    if dx is not None:
        assert relative_error(dx, numeric_grad(loss, x)) < FD_TOL
    return dx


def test_linear_backward_matches_finite_differences(rng):
    lin = fr.nn.Linear(5, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 2, 5))  # leading dims are batch-like
    check_module_grads(lin, x, lin)


def test_linear_without_bias_and_grad_accumulates(rng):
    lin = fr.nn.Linear(3, 2, bias=False, dtype=np.float64, seed=0)
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    x = rng.standard_normal((4, 3))
    lin(x)
    lin.backward(np.ones((4, 2)))
    g1 = lin.weight.grad.copy()
    lin(x)
    lin.backward(np.ones((4, 2)))
    np.testing.assert_allclose(lin.weight.grad, 2 * g1)


def test_embedding_backward_and_padding_idx(rng):
    emb = fr.nn.Embedding(6, 4, padding_idx=0, dtype=np.float64, seed=0)
    assert np.all(emb.weight.data[0] == 0)
    idx = np.array([[0, 1, 2], [2, 0, 5]])
    assert emb.backward is not None
    out = emb(idx)
    assert out.shape == (2, 3, 4)
    R = rng.standard_normal(out.shape)
    emb.backward(R)

    def loss():
        return float(np.sum(emb(idx) * R))

    expected = numeric_grad(loss, emb.weight.data)
    expected[0] = 0  # the padding row never learns
    assert relative_error(emb.weight.grad, expected) < FD_TOL
    assert np.all(emb.weight.grad[0] == 0) and np.all(emb.weight.grad[3] == 0)
    with pytest.raises(ValueError, match="indices"):
        emb(np.array([6]))


def test_dropout_train_and_eval(rng):
    drop = fr.nn.Dropout(0.5, seed=3)
    x = rng.standard_normal((200, 50))
    y = drop(x)
    kept = y != 0
    assert 0.4 < kept.mean() < 0.6
    np.testing.assert_allclose(y[kept], 2 * x[kept])
    np.testing.assert_allclose(drop.backward(np.ones_like(x)), 2.0 * kept)
    drop.eval()
    assert drop(x) is x


def test_sequential_backward_matches_finite_differences(rng):
    model = fr.nn.Sequential(fr.nn.Linear(4, 6, dtype=np.float64, seed=1),
                             fr.nn.Linear(6, 2, dtype=np.float64, seed=2))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    check_module_grads(model, rng.standard_normal((3, 4)), model)


# ---------------------------------------------------------------------------- cells
CELL_CLASSES = {"rnn_tanh": (fr.nn.RNNCell, "rnn", "tanh"), "rnn_relu": (fr.nn.RNNCell, "rnn", "relu"),
                "lstm": (fr.nn.LSTMCell, "lstm", "tanh"), "gru": (fr.nn.GRUCell, "gru", "tanh")}


def make_cell(name, I, H, bias=True, seed=0):
    cls, cell, nl = CELL_CLASSES[name]
    kw = {"nonlinearity": nl} if cell == "rnn" else {}
    return cls(I, H, bias=bias, dtype=np.float64, seed=seed, **kw), cell, nl


def run_cell(c, cell, xs, state):
    """Run the cell over xs [T, N, I]; returns the list of outputs h_t and the final state."""
    hs = []
    for t in range(xs.shape[0]):
        state = c(xs[t], state)
        hs.append(state[0] if cell == "lstm" else state)
    return hs, state


def backprop_cell(c, cell, dhs, dh_T, dc_T=None):
    """Backward through the steps in reverse; dhs[t] is the gradient arriving at h_t from
    outside. Returns (dx [T, N, I], dh0, dc0)."""
    dh, dc, dxs = dh_T, dc_T, []
    for t in reversed(range(len(dhs))):
        dh = dhs[t] + (0 if dh is None else dh)
        if cell == "lstm":
            dx, (dh, dc) = c.backward(dh, dc)
        else:
            dx, dh = c.backward(dh)
        dxs.append(dx)
    return np.stack(dxs[::-1]), dh, dc


@pytest.mark.parametrize("name", list(CELL_CLASSES))
@pytest.mark.parametrize("bias", [True, False])
def test_cell_steps_equal_the_reference_sequence(name, bias, rng):
    """T calls of the cell, then T backward calls, equal the reference's whole-sequence
    forward and BPTT (outputs, final state, every gradient)."""
    T, N, I, H = 5, 3, 4, 7
    c, cell, nl = make_cell(name, I, H, bias)
    xs = rng.standard_normal((T, N, I))
    h0 = rng.standard_normal((N, H))
    c0 = rng.standard_normal((N, H))
    state = (h0, c0) if cell == "lstm" else h0
    hs, final = run_cell(c, cell, xs, state)
    assert c.pending_steps == T
    w = [p.data for p in c.parameters()] + ([None, None] if not bias else [])
    if cell == "lstm":
        y, h_n, c_n, ctx = reference.lstm_forward(xs, h0, c0, *w, training=True)
    elif cell == "gru":
        y, h_n, ctx = reference.gru_forward(xs, h0, *w, training=True)
    else:
        y, h_n, ctx = reference.rnn_forward(xs, h0, *w, nonlinearity=nl, training=True)
    assert relative_error(np.stack(hs), y) < 1e-12
    assert relative_error(final[0] if cell == "lstm" else final, h_n) < 1e-12

    dy = rng.standard_normal((T, N, H))
    dh_T = rng.standard_normal((N, H))
    dc_T = rng.standard_normal((N, H)) if cell == "lstm" else None
    dx, dh0, dc0 = backprop_cell(c, cell, list(dy), dh_T, dc_T)
    assert c.pending_steps == 0
    if cell == "lstm":
        ref = reference.lstm_backward(ctx, dy, dh_T, dc_T)
        ref_dx, ref_dh0, ref_dc0, *ref_dw = ref
        assert relative_error(dc0, ref_dc0) < 1e-10
    else:
        backward = reference.gru_backward if cell == "gru" else reference.rnn_backward
        ref_dx, ref_dh0, *ref_dw = backward(ctx, dy, dh_T)
    assert relative_error(dx, ref_dx) < 1e-10
    assert relative_error(dh0, ref_dh0) < 1e-10
    for p, g in zip(c.parameters(), ref_dw):
        assert relative_error(p.grad, g) < 1e-10


@pytest.mark.parametrize("name", list(CELL_CLASSES))
def test_cell_backward_matches_finite_differences(name, rng):
    """dx, dh, every weight gradient and (LSTM) dc against central differences; the LSTM loss
    reads c_n too, so a dropped or wrong dc path (in or out) fails."""
    N, I, H = 2, 3, 4
    c, cell, _ = make_cell(name, I, H)
    x = rng.standard_normal((N, I))
    h = rng.standard_normal((N, H))
    cc = rng.standard_normal((N, H))
    R = rng.standard_normal((N, H))
    R2 = rng.standard_normal((N, H))  # dc_n, LSTM only

    def loss():
        c.eval()
        out = c(x, (h, cc)) if cell == "lstm" else c(x, h)
        c.train()
        if cell == "lstm":
            return float(np.sum(out[0] * R) + np.sum(out[1] * R2))
        return float(np.sum(out * R))

    c.zero_grad()
    c(x, (h, cc)) if cell == "lstm" else c(x, h)
    dx, dstate = c.backward(R, R2) if cell == "lstm" else c.backward(R)
    dh = dstate[0] if cell == "lstm" else dstate
    assert relative_error(dx, numeric_grad(loss, x)) < FD_TOL
    assert relative_error(dh, numeric_grad(loss, h)) < FD_TOL
    if cell == "lstm":
        assert relative_error(dstate[1], numeric_grad(loss, cc)) < FD_TOL
    for pname, p in c.named_parameters():
        assert relative_error(p.grad, numeric_grad(loss, p.data)) < FD_TOL, pname


def test_cell_unbatched_and_errors(rng):
    c = fr.nn.GRUCell(3, 4, dtype=np.float64, seed=0)
    h = c(rng.standard_normal(3))
    assert h.shape == (4,)
    dx, dh = c.backward(np.ones(4))
    assert dx.shape == (3,) and dh.shape == (4,)
    with pytest.raises(RuntimeError, match="no training-mode step"):
        c.backward(np.ones(4))
    with pytest.raises(ValueError, match="input"):
        c(rng.standard_normal((2, 5)))
    c.eval()
    c(rng.standard_normal((2, 3)))
    assert c.pending_steps == 0  # inference saves nothing


def test_a_cell_warns_once_when_its_training_steps_pile_up(monkeypatch):
    """Training-mode steps wait for their backward however long (torch frees a graph no one
    holds): 13.7 MB a thousand steps at N=8 H=64 grew silently in a loop of steps without
    backward; the cell now says so once, at PENDING_STEPS_WARNING steps."""
    from fusedrnn.nn import cells
    monkeypatch.setattr(cells, "PENDING_STEPS_WARNING", 5)
    cell = fr.nn.GRUCell(3, 4, seed=0)
    x = np.ones((2, 3), np.float32)
    for _ in range(4):
        cell(x)
    with pytest.warns(RuntimeWarning, match="GRUCell: 5 training-mode steps wait for their "
                                            "backward") as caught:
        cell(x)
    assert caught[0].filename == __file__  # (the user's line, not Module.__call__'s)
    for _ in range(3):
        cell(x)  # (once: filterwarnings=error would raise a second)
    assert cell.pending_steps == 8
    cell.clear_steps()
    cell.eval()
    for _ in range(6):
        cell(x)
    assert cell.pending_steps == 0

def test_cell_parameter_names_are_torch_names():
    names = [n for n, _ in fr.nn.LSTMCell(3, 4).named_parameters()]
    assert names == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert fr.nn.LSTMCell(3, 4).weight_ih.shape == (16, 3)


@pytest.mark.parametrize("name", list(CELL_CLASSES))
def test_cells_match_torch(name, rng):
    torch = pytest.importorskip("torch")
    N, I, H, T = 3, 4, 5, 3
    c, cell, nl = make_cell(name, I, H, seed=7)
    tcls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell]
    tc = tcls(I, H, nonlinearity=nl).double() if cell == "rnn" else tcls(I, H).double()
    tc.load_state_dict({k: torch.from_numpy(v) for k, v in c.state_dict().items()})
    xs = rng.standard_normal((T, N, I))
    hs, _ = run_cell(c, cell, xs, None)
    dys = rng.standard_normal((T, N, H))
    dx, _, _ = backprop_cell(c, cell, list(dys), None)

    txs = torch.from_numpy(xs).requires_grad_(True)
    state, touts = None, []
    for t in range(T):
        state = tc(txs[t], state)
        touts.append(state[0] if cell == "lstm" else state)
    tout = torch.stack(touts)
    (tout * torch.from_numpy(dys)).sum().backward()
    assert relative_error(np.stack(hs), tout.detach().numpy()) < 1e-12
    assert relative_error(dx, txs.grad.numpy()) < 1e-10
    for (pname, p), (_, tp) in zip(c.named_parameters(), tc.named_parameters()):
        assert relative_error(p.grad, tp.grad.numpy()) < 1e-10, pname


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CELL_CLASSES))
def test_an_eval_step_gives_the_training_steps_bits(name, dtype, rng):
    """Eval-mode steps go straight to the kernel (RNNCellBase._step); training-mode steps
    through fusedrnn.functional. The same arithmetic: the same bits, states given or not,
    batched or not, strided or not."""
    cls, cell, nl = CELL_CLASSES[name]
    c = cls(5, 6, dtype=dtype, seed=0, **({"nonlinearity": nl} if cell == "rnn" else {}))
    x = rng.standard_normal((3, 5)).astype(dtype)
    h = rng.standard_normal((3, 6)).astype(dtype)
    state = (h, h * 0.5) if cell == "lstm" else h
    wide = np.repeat(x, 2, axis=1)[:, ::2]  # strided: the general path in both modes
    for args in [(x,), (x, state), (x[0],), (wide, state)]:
        c.train()
        want = c(*args)
        c.clear_steps()
        c.eval()
        got = c(*args)
        for a, b in zip(got if cell == "lstm" else [got], want if cell == "lstm" else [want]):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_reset_parameters_gives_the_construction_distribution_and_torch_state_dicts_load():
    """A LayerNorm-LSTM's norms reset to gains 1 and bias 0 (they were drawn uniform); a
    bfloat16 torch state_dict loads (NumPy has no bfloat16: widened exactly)."""
    import fusedrnn as fr
    layer = fr.nn.LayerNormLSTM(3, 4, seed=0)
    layer.reset_parameters(seed=1)
    assert (layer.ln_weight_c_l0.data == 1).all() and (layer.ln_bias_c_l0.data == 0).all()
    assert (layer.ln_weight_ih_l0.data == 1).all()
    assert np.abs(layer.weight_ih_l0.data).max() <= 0.5 and layer.weight_ih_l0.data.std() > 0
    x = np.ones((2, 3), np.float32)
    for module in (fr.nn.Linear(3, 4), fr.nn.LSTMCell(3, 4).eval(),
                   fr.nn.LayerNormLSTMCell(3, 4).eval(), fr.nn.Embedding(5, 3, padding_idx=1)):
        before = [p.data.copy() for p in module.parameters()]
        out = module(x) if not isinstance(module, fr.nn.Embedding) else None
        module.reset_parameters(seed=2)  # as torch's modules have it; the kept packs renewed
        for name, p in module.named_parameters():
            changed = not np.array_equal(p.data, before.pop(0))
            assert changed == (not name.startswith("ln_")), name
        if isinstance(module, fr.nn.Embedding):
            assert not module.weight.data[1].any()
        else:
            again = module(x)
            assert not np.array_equal(again[0] if isinstance(again, tuple) else again,
                                      out[0] if isinstance(out, tuple) else out)
    torch = pytest.importorskip("torch")
    module = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    lstm = fr.nn.LSTM(3, 4)
    lstm.load_state_dict(module.state_dict())
    np.testing.assert_array_equal(lstm.weight_hh_l0.data,
                                  module.weight_hh_l0.detach().float().numpy())
