"""fusedrnn.nn.RNN/LSTM/GRU against torch.nn.RNN/LSTM/GRU with the same weights: outputs, final
states, the gradients of the input and of the initial states, and every weight gradient.

Weights go from a torch module's state_dict (as arrays) into ours with load_state_dict, and from
ours into torch. The truth is torch in float64 run on the same values ours gets (for a float32
layer: weights, inputs and loss weights rounded to float32 first), held to the tolerance table's
"kernel_vs_reference" entry (torch float64 is one more reference). Variable lengths are compared with pack_padded_sequence
(enforce_sorted=False) and pad_packed_sequence(total_length=T). The scalar loss is
sum(out * R) + sum(h_n * R2) (+ sum(c_n * R3) for LSTM), so dout = R and dh_n = R2.
"""
import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn  # noqa: E402
from fusedrnn import nn  # noqa: E402

from conftest import TOLERANCES, relative_error  # noqa: E402

TOLERANCE = TOLERANCES["kernel_vs_reference"]

T, N, I, H = 7, 3, 5, 6
CELLS = [("RNN", "tanh"), ("RNN", "relu"), ("LSTM", None), ("GRU", None)]


def _torch_module(cell, nonlinearity, **kw):
    if cell == "RNN":
        return torch.nn.RNN(I, H, nonlinearity=nonlinearity, **kw)
    return getattr(torch.nn, cell)(I, H, **kw)


def _our_module(cell, nonlinearity, dtype, **kw):
    if cell == "RNN":
        return nn.RNN(I, H, nonlinearity=nonlinearity, dtype=dtype, **kw)
    return getattr(nn, cell)(I, H, dtype=dtype, **kw)


def _to_numpy_state(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _assert_close(name, ours, truth, dtype):
    assert np.shape(ours) == np.shape(truth), (name, np.shape(ours), np.shape(truth))
    err = relative_error(ours, truth)
    assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3e} > {TOLERANCE[dtype]:.0e}"


def _run_torch(tm, x, hx, lengths, R, R2, R3, batch_first):
    """Forward + backward in torch (float64). Returns a dict of arrays."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    is_lstm = isinstance(tm, torch.nn.LSTM)
    hxt = None
    if hx is not None:
        hxt = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in hx) \
            if is_lstm else torch.tensor(hx, dtype=torch.float64, requires_grad=True)
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        out_p, state = tm(packed, hxt)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=batch_first,
                                                        total_length=x.shape[1 if batch_first else 0])
    else:
        out, state = tm(xt, hxt)
    h_n, c_n = state if is_lstm else (state, None)
    loss = (out * torch.tensor(R)).sum() + (h_n * torch.tensor(R2)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(R3)).sum()
    loss.backward()
    res = {"out": out.detach().numpy(), "h_n": h_n.detach().numpy(), "dx": xt.grad.numpy()}
    if c_n is not None:
        res["c_n"] = c_n.detach().numpy()
    if hx is not None:
        if is_lstm:
            res["dh0"], res["dc0"] = hxt[0].grad.numpy(), hxt[1].grad.numpy()
        else:
            res["dh0"] = hxt.grad.numpy()
    for name, p in tm.named_parameters():
        res["grad." + name] = p.grad.numpy()
    return res


def _run_ours(m, x, hx, lengths, R, R2, R3):
    dtype = m.dtype
    cast = (lambda a: None if a is None else np.asarray(a, dtype))
    is_lstm = isinstance(m, nn.LSTM)
    hx_ = None if hx is None else (tuple(cast(a) for a in hx) if is_lstm else cast(hx))
    m.zero_grad()
    out, state = m(cast(x), hx_, lengths=lengths)
    h_n, c_n = state if is_lstm else (state, None)
    dhx = (cast(R2), cast(R3)) if is_lstm else cast(R2)
    dx, dh0 = m.backward(cast(R), dhx)
    res = {"out": out, "h_n": h_n, "dx": dx}
    if is_lstm:
        res["c_n"] = c_n
    if hx is not None:
        if is_lstm:
            res["dh0"], res["dc0"] = dh0
        else:
            res["dh0"] = dh0
    for name, p in m.named_parameters():
        res["grad." + name] = p.grad
    for value in res.values():
        assert value.dtype == dtype
    return res


def _compare(cell, nonlinearity, dtype, *, num_layers=2, bidirectional=True, batch_first=False,
             with_hx=True, with_lengths=False, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              bias=bias)
    tm = _torch_module(cell, nonlinearity, **kw).to(torch.float64 if dtype == np.float64
                                                     else torch.float32).double()
    m = _our_module(cell, nonlinearity, dtype, **kw)
    m.load_state_dict(_to_numpy_state(tm))
    D = 2 if bidirectional else 1

    def draw(*shape, scale=1.0):  # values exactly representable in ``dtype``
        return (rng.standard_normal(shape) * scale).astype(dtype).astype(np.float64)

    x = draw(*((N, T, I) if batch_first else (T, N, I)))
    hx = None
    if with_hx:
        hx = draw(num_layers * D, N, H, scale=0.5)
        if cell == "LSTM":
            hx = (hx, draw(num_layers * D, N, H, scale=0.5))
    lengths = np.array([T, 2, 5])[:N] if with_lengths else None
    R = draw(*((N, T, D * H) if batch_first else (T, N, D * H)))
    R2 = draw(num_layers * D, N, H)
    R3 = draw(num_layers * D, N, H) if cell == "LSTM" else None

    truth = _run_torch(tm, x, hx, lengths, R, R2, R3, batch_first)
    ours = _run_ours(m, x, hx, lengths, R, R2, R3)
    assert sorted(ours) == sorted(truth)
    for key in truth:
        _assert_close(key, ours[key], truth[key], dtype)
    return ours, truth


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tn", "bf"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_two_layer_bidirectional_matches_torch(cell, nonlinearity, dtype, batch_first,
                                               with_lengths, with_hx):
    _compare(cell, nonlinearity, dtype, batch_first=batch_first, with_lengths=with_lengths,
             with_hx=with_hx)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional,bias",
                         [(1, False, True), (1, True, True), (3, False, True), (2, False, False)],
                         ids=["1uni", "1bi", "3uni", "2uni_nobias"])
def test_other_stacks_match_torch(cell, nonlinearity, dtype, num_layers, bidirectional, bias):
    _compare(cell, nonlinearity, dtype, num_layers=num_layers, bidirectional=bidirectional,
             bias=bias, with_lengths=True, seed=1)


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_state_dict_from_ours_into_torch(cell, nonlinearity):
    m = _our_module(cell, nonlinearity, np.float64, num_layers=2, bidirectional=True, seed=3)
    tm = _torch_module(cell, nonlinearity, num_layers=2, bidirectional=True).double()
    ours_state = m.state_dict()
    assert list(ours_state) == list(tm.state_dict())  # same names in the same order
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in ours_state.items()})
    x = np.random.default_rng(3).standard_normal((T, N, I))
    out_t, _ = tm(torch.from_numpy(x))
    out, _ = m.eval()(x)
    _assert_close("out", out, out_t.detach().numpy(), np.float64)


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_load_torch_tensors_directly(cell, nonlinearity):
    """load_state_dict takes torch tensors too (float32 tensors into a float64 layer are cast)."""
    tm = _torch_module(cell, nonlinearity, num_layers=2)
    m = _our_module(cell, nonlinearity, np.float64, num_layers=2)
    m.load_state_dict(tm.state_dict())
    for name, p in m.named_parameters():
        assert p.data.dtype == np.float64
        np.testing.assert_array_equal(p.data, tm.state_dict()[name].numpy().astype(np.float64))


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_parameter_shapes_and_init_range_match_torch(cell, nonlinearity):
    """Names and shapes as torch's; values uniform(-1/sqrt(H), 1/sqrt(H)): within the bound, and
    filling it (a smaller bound or zeros fail)."""
    tm = _torch_module(cell, nonlinearity, num_layers=2, bidirectional=True)
    m = _our_module(cell, nonlinearity, np.float32, num_layers=2, bidirectional=True, seed=0)
    ours = dict(m.named_parameters())
    assert list(ours) == [name for name, _ in tm.named_parameters()]
    bound = 1 / np.sqrt(H)
    for name, p in tm.named_parameters():
        assert ours[name].data.shape == tuple(p.shape)
        assert np.all(np.abs(ours[name].data) <= bound)
    # all parameters pooled (396 values or more; seeded): the largest nears the bound, and the
    # spread is uniform's b/sqrt(3) (its sampling error is ~2% here)
    w = np.concatenate([p.data.ravel() for p in ours.values()]).astype(np.float64)
    assert np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3), w.std()


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_unbatched_input_matches_torch(cell, nonlinearity):
    rng = np.random.default_rng(5)
    tm = _torch_module(cell, nonlinearity, num_layers=2, bidirectional=True).double()
    m = _our_module(cell, nonlinearity, np.float64, num_layers=2, bidirectional=True)
    m.load_state_dict(_to_numpy_state(tm))
    x = rng.standard_normal((T, I))
    h0 = rng.standard_normal((4, H))
    hx = (h0, rng.standard_normal((4, H))) if cell == "LSTM" else h0
    thx = tuple(torch.from_numpy(a) for a in hx) if cell == "LSTM" else torch.from_numpy(hx)
    out_t, state_t = tm(torch.from_numpy(x), thx)
    out, state = m(x, hx)
    assert out.shape == (T, 2 * H)
    _assert_close("out", out, out_t.detach().numpy(), np.float64)
    if cell == "LSTM":
        for a, b in zip(state, state_t):
            assert a.shape == (4, H)
            _assert_close("state", a, b.detach().numpy(), np.float64)
    else:
        assert state.shape == (4, H)
        _assert_close("h_n", state, state_t.detach().numpy(), np.float64)


def test_float32_error_is_float32_sized():
    """Ours in float32 is no worse than a small multiple of torch's own float32 error."""
    for (cell, nonlinearity), batch_first in itertools.product(CELLS, [False, True]):
        torch.manual_seed(7)
        tm32 = _torch_module(cell, nonlinearity, num_layers=2, bidirectional=True,
                             batch_first=batch_first)
        rng = np.random.default_rng(7)
        x = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(np.float32)
        out32, _ = tm32(torch.from_numpy(x))
        tm64 = _torch_module(cell, nonlinearity, num_layers=2, bidirectional=True,
                             batch_first=batch_first).double()
        tm64.load_state_dict(tm32.state_dict())
        out64, _ = tm64(torch.from_numpy(x.astype(np.float64)))
        torch_err = relative_error(out32.detach().numpy(), out64.detach().numpy())
        m = _our_module(cell, nonlinearity, np.float32, num_layers=2, bidirectional=True,
                        batch_first=batch_first)
        m.load_state_dict(tm32.state_dict())
        out, _ = m.eval()(x)
        our_err = relative_error(out, out64.detach().numpy())
        assert our_err <= 10 * torch_err + 1e-6, (cell, nonlinearity, our_err, torch_err)


@pytest.mark.parametrize("norm_type", [1.0, 3.0, math.inf], ids=["1", "3", "inf"])
def test_clip_grad_norm_other_norms_match_torch(norm_type):
    """clip_grad_norm_ with norm_type 1, 3 and inf: the total norm and the clipped gradients are
    torch's (a norm_type read as 2 fails)."""
    from fusedrnn.optim import clip_grad_norm_
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ours = [nn.Parameter(np.zeros_like(g)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, t, g in zip(ours, theirs, grads):
        p.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
    # max_norm below every one of these norms, so the gradients are scaled
    total = clip_grad_norm_(ours, 0.5, norm_type)
    total_t = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type)
    assert total > 0.5
    assert total == pytest.approx(float(total_t), rel=1e-12)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)
