"""fusedrnn.torch: drop-in torch.nn recurrent modules held to torch.nn itself (outputs, states
and every gradient), torch.autograd.gradcheck, torch.library.opcheck and
torch.compile(fullgraph=True)."""
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
frt = pytest.importorskip("fusedrnn.torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from fusedrnn.torch import _ops  # noqa: E402

CELLS = {"LSTM": (torch.nn.LSTM, frt.LSTM), "GRU": (torch.nn.GRU, frt.GRU),
         "RNN": (torch.nn.RNN, frt.RNN)}
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def pair(cell, I, H, dtype=torch.float64, **kw):
    """(torch.nn layer, ours) with the same weights."""
    ref = CELLS[cell][0](I, H, dtype=dtype, **kw)
    ours = CELLS[cell][1](I, H, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run(layer, x, hx, packed_lengths=None):
    """Forward and backward of a loss touching every output; returns outputs and grads."""
    x = x.detach().clone().requires_grad_(True)
    hx_leaf = None
    if hx is not None:
        hx_leaf = tuple(h.detach().clone().requires_grad_(True) for h in hx) \
            if isinstance(hx, tuple) else hx.detach().clone().requires_grad_(True)
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, batch_first=layer.batch_first,
                                   enforce_sorted=False)
    out, state = layer(inp, hx_leaf)
    if packed_lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=layer.batch_first)
    states = state if isinstance(state, tuple) else (state,)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    loss.backward()
    grads = [x.grad]
    if hx_leaf is not None:
        grads += [h.grad for h in (hx_leaf if isinstance(hx_leaf, tuple) else (hx_leaf,))]
    grads += [p.grad for p in layer.parameters()]
    return [out, *states], grads


def assert_close(a, b, tol, what):
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, (what, i, u.shape, v.shape)
        err = (u - v).abs().max().item() / max(1.0, v.abs().max().item())
        assert err < tol, (what, i, err)


CONFIGS = list(itertools.product(["LSTM", "GRU", "RNN"], [1, 2], [False, True], [False, True],
                                 [True, False], [torch.float64, torch.float32]))


@pytest.mark.parametrize("cell, layers, bidirectional, batch_first, bias, dtype", CONFIGS)
def test_matches_torch_nn(cell, layers, bidirectional, batch_first, bias, dtype):
    rng = np.random.default_rng(hash((cell, layers, bidirectional, batch_first, bias)) % 2**32)
    T, N, I, H = int(rng.integers(1, 7)), int(rng.integers(1, 5)), 5, 7
    torch.manual_seed(int(rng.integers(1 << 30)))
    ref, ours = pair(cell, I, H, dtype, num_layers=layers, bidirectional=bidirectional,
                     batch_first=batch_first, bias=bias)
    x = torch.randn((N, T, I) if batch_first else (T, N, I), dtype=dtype)
    D = 2 if bidirectional else 1
    for hx in (None, torch.randn(layers * D, N, H, dtype=dtype)):
        if cell == "LSTM" and hx is not None:
            hx = (hx, torch.randn(layers * D, N, H, dtype=dtype))
        out_ref, grads_ref = run(ref, x, hx)
        out_ours, grads_ours = run(ours, x, hx)
        assert_close(out_ours, out_ref, TOL[dtype], "outputs")
        assert_close(grads_ours, grads_ref, TOL[dtype], "gradients")
        ref.zero_grad()
        ours.zero_grad()


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_with_unsorted_lengths(cell, batch_first):
    torch.manual_seed(1)
    ref, ours = pair(cell, 4, 6, num_layers=2, bidirectional=True, batch_first=batch_first)
    lengths = torch.tensor([3, 6, 1, 6, 4])
    x = torch.randn((5, 6, 4) if batch_first else (6, 5, 4), dtype=torch.float64)
    hx = torch.randn(4, 5, 6, dtype=torch.float64)
    hx = (hx, torch.randn(4, 5, 6, dtype=torch.float64)) if cell == "LSTM" else hx
    out_ref, grads_ref = run(ref, x, hx, lengths)
    out_ours, grads_ours = run(ours, x, hx, lengths)
    assert_close(out_ours, out_ref, 1e-10, "outputs")
    assert_close(grads_ours, grads_ref, 1e-10, "gradients")


def test_packed_in_packed_out_keeps_the_layout():
    torch.manual_seed(2)
    ref, ours = pair("GRU", 3, 4)
    packed = pack_padded_sequence(torch.randn(5, 4, 3, dtype=torch.float64),
                                  torch.tensor([2, 5, 5, 1]), enforce_sorted=False)
    a, _ = ref(packed)
    b, _ = ours(packed)
    assert isinstance(b, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(a.batch_sizes, b.batch_sizes)
    assert torch.equal(a.sorted_indices, b.sorted_indices)
    assert torch.equal(a.unsorted_indices, b.unsorted_indices)
    assert (a.data - b.data).abs().max() < 1e-12


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_unbatched_input(cell):
    torch.manual_seed(3)
    ref, ours = pair(cell, 3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(4, 3, dtype=torch.float64)
    hx = torch.randn(4, 5, dtype=torch.float64)
    hx = (hx, torch.randn(4, 5, dtype=torch.float64)) if cell == "LSTM" else hx
    out_ref, grads_ref = run(ref, x, hx)
    out_ours, grads_ours = run(ours, x, hx)
    assert_close(out_ours, out_ref, 1e-10, "outputs")
    assert_close(grads_ours, grads_ref, 1e-10, "gradients")


def test_same_seed_same_initial_weights_and_state_dict_both_ways():
    for cell, (torch_cls, our_cls) in CELLS.items():
        torch.manual_seed(5)
        a = torch_cls(4, 6, num_layers=2, bidirectional=True)
        torch.manual_seed(5)
        b = our_cls(4, 6, num_layers=2, bidirectional=True)
        assert list(a.state_dict()) == list(b.state_dict())
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), (cell, k)
        b.reset_parameters()
        a.load_state_dict(b.state_dict())
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        assert repr(a) == repr(b)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_match_torch_nn(cell):
    torch.manual_seed(6)
    kw = {"nonlinearity": "relu"} if cell == "RNNCell" else {}
    ref = getattr(torch.nn, cell)(4, 6, dtype=torch.float64, **kw)
    ours = getattr(frt, cell)(4, 6, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    for batched in (True, False):
        x = torch.randn((3, 4) if batched else (4,), dtype=torch.float64)
        h = torch.randn((3, 6) if batched else (6,), dtype=torch.float64)
        hx = (h, torch.randn_like(h)) if cell == "LSTMCell" else h
        results = []
        for layer in (ref, ours):
            xl = x.clone().requires_grad_(True)
            hl = tuple(t.clone().requires_grad_(True) for t in hx) if cell == "LSTMCell" \
                else hx.clone().requires_grad_(True)
            out = layer(xl, hl)
            outs = out if isinstance(out, tuple) else (out,)
            sum(o.pow(2).sum() for o in outs).backward()
            hgrads = [t.grad for t in hl] if cell == "LSTMCell" else [hl.grad]
            results.append(([*outs], [xl.grad, *hgrads, *(p.grad for p in layer.parameters())]))
            layer.zero_grad()
        assert_close(results[1][0], results[0][0], 1e-10, "outputs")
        assert_close(results[1][1], results[0][1], 1e-10, "gradients")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_gradcheck(cell):
    torch.manual_seed(8)
    layer = CELLS[cell][1](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def f(x, h0, *ps):
        for p, v in zip(params, ps):
            p.data = v.detach()
        hx = (h0, h0 * 0.5) if cell == "LSTM" else h0
        out, state = layer(x, hx)
        return (out, *(state if isinstance(state, tuple) else (state,)))

    torch.autograd.gradcheck(f, (x, h0), eps=1e-6, atol=1e-7)
    # gradients of the parameters through the same layer
    out, _ = layer(x, (h0, h0) if cell == "LSTM" else h0)
    w = layer.weight_hh_l0
    g, = torch.autograd.grad(out.sum(), w)
    with torch.no_grad():
        e = torch.zeros_like(w)
        e[1, 2] = 1e-6
        w += e
        up = layer(x, (h0, h0) if cell == "LSTM" else h0)[0].sum()
        w -= 2 * e
        down = layer(x, (h0, h0) if cell == "LSTM" else h0)[0].sum()
        w += e
    assert abs((up - down).item() / 2e-6 - g[1, 2].item()) < 1e-6


def _op_args(cell, D, training, lengths=True, dtype=torch.float64):
    T, N, I, H = 4, 3, 2, 5
    G = _ops.GATES[cell]
    r = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    return (r(T, N, I).requires_grad_(training), r(D, N, H),
            r(D, N, H) if cell == "lstm" else torch.empty(0, dtype=dtype),
            [r(G * H, I).requires_grad_(training) for _ in range(D)],
            [r(G * H, H).requires_grad_(training) for _ in range(D)],
            [r(G * H) for _ in range(D)], [r(G * H) for _ in range(D)],
            torch.tensor([4, 1, 0][:N]) if lengths else None, cell, "tanh", training)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_opcheck(cell, D, training):
    torch.library.opcheck(_ops.layer_forward, _op_args(cell, D, training))


def test_double_backward_is_refused_clearly():
    layer = frt.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(2, 1, 3, dtype=torch.float64, requires_grad=True)
    out, _ = layer(x)
    with pytest.raises(RuntimeError, match="double backward"):  # at once, or at the second
        g, = torch.autograd.grad(out.sum(), x, create_graph=True)
        g.sum().backward()
    # the operator (torch.compile's path) refuses it too
    args = _op_args("gru", 1, True)
    y = _ops.layer_forward(*args)[0]
    with pytest.raises(RuntimeError, match="double backward"):
        g, = torch.autograd.grad(y.sum(), args[0], create_graph=True)
        g.sum().backward()


class Tagger(torch.nn.Module):
    def __init__(self, recurrent):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 6)
        self.rnn = recurrent
        self.head = torch.nn.Linear(2 * 8, 5)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_torch_compile_fullgraph(cell):
    torch.manual_seed(9)
    model = Tagger(CELLS[cell][1](6, 8, num_layers=2, bidirectional=True, batch_first=True))
    tokens = torch.randint(0, 20, (3, 7))
    eager = model(tokens)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(tokens)
    assert (out - eager).abs().max() < 1e-5
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager.sum().backward()
    for a, b in zip(grads, model.parameters()):
        assert (a - b.grad).abs().max() < 1e-5


def test_convert_swaps_layers_with_the_same_weights():
    torch.manual_seed(10)
    model = Tagger(torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True))
    model.cell = torch.nn.GRUCell(4, 4)
    model.proj = torch.nn.LSTM(4, 8, proj_size=3)
    tokens = torch.randint(0, 20, (2, 5))
    before = model(tokens)
    with pytest.warns(UserWarning, match=r"proj: proj_size > 0"):
        same = frt.convert(model)
    assert same is model
    assert isinstance(model.rnn, frt.LSTM) and isinstance(model.cell, frt.GRUCell)
    assert isinstance(model.proj, torch.nn.LSTM)
    assert (model(tokens) - before).abs().max() < 1e-5
    single = frt.convert(torch.nn.RNN(3, 4, nonlinearity="relu"))
    assert isinstance(single, frt.RNN) and single.nonlinearity == "relu"
    untouched = torch.nn.GRU(3, 4)
    copy = frt.convert(torch.nn.Sequential(untouched), inplace=False)
    assert isinstance(copy[0], frt.GRU) and isinstance(untouched, torch.nn.GRU)


def test_unsupported_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="proj_size"):
        frt.LSTM(4, 8, proj_size=2)
    with pytest.raises(ValueError, match="device"):
        frt.GRU(4, 8, device="meta")
    with pytest.raises(TypeError, match="dtype"):
        frt.RNN(4, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="hidden_size"):
        frt.LSTM(4, 0)
    with pytest.raises(ValueError, match="nonlinearity"):
        frt.RNN(4, 8, nonlinearity="sigmoid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="dropout"):
            frt.LSTM(4, 8, dropout=1.5)


def test_bad_inputs_name_the_argument():
    layer = frt.LSTM(4, 8, num_layers=2)
    with pytest.raises(ValueError, match=r"input: expected size 4"):
        layer(torch.randn(3, 2, 5))
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32"):
        layer(torch.randn(3, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"hx\[0\] \(h_0\): expected shape \(2, 2, 8\)"):
        layer(torch.randn(3, 2, 4), (torch.zeros(1, 2, 8), torch.zeros(2, 2, 8)))
    with pytest.raises(TypeError, match="hx: expected a tuple"):
        layer(torch.randn(3, 2, 4), torch.zeros(2, 2, 8))
    with pytest.raises(TypeError, match="input: expected a torch.Tensor"):
        layer(np.zeros((3, 2, 4), np.float32))


def test_no_grad_saves_nothing_and_threads_follow_torch():
    import fusedrnn as fr
    layer = frt.LSTM(4, 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            out, _ = layer(torch.randn(3, 2, 4))
        assert fr.get_num_threads() == 1
        assert out.grad_fn is None
    finally:
        torch.set_num_threads(before)


def test_autocast_bfloat16_computes_in_float32():
    """Under torch.autocast the layer takes the bfloat16 output of a Linear and computes in
    float32 (the bfloat16 kernels are a later issue), as torch.nn's LSTM returns float32."""
    torch.manual_seed(11)
    proj = torch.nn.Linear(4, 6)
    ref, ours = pair("LSTM", 6, 8, torch.float32)
    cell_ref, cell_ours = torch.nn.GRUCell(6, 8), frt.GRUCell(6, 8)
    cell_ours.load_state_dict(cell_ref.state_dict())
    x = torch.randn(5, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = proj(x)
        assert z.dtype == torch.bfloat16
        a, _ = ref(z)
        b, _ = ours(z)
        c = cell_ours(z[0])
        d = cell_ref(z[0])
    assert b.dtype == torch.float32 and c.dtype == torch.float32
    assert (a.float() - b).abs().max() < 1e-2
    assert (c - d.float()).abs().max() < 1e-2


def test_zero_size_work_returns_at_once_like_torch_nn():
    """No sample (even with 10**9 steps: nothing is computed), or no step: as torch.nn."""
    layer = frt.GRU(4, 3, num_layers=2, bidirectional=True)
    out, h = layer(torch.empty(10**9, 0, 4))
    assert out.shape == (10**9, 0, 6) and h.shape == (4, 0, 3)
    torch.manual_seed(12)
    ref, ours = pair("LSTM", 4, 3, num_layers=2)
    x = torch.randn(3, 0, 4, dtype=torch.float64, requires_grad=True)
    (a, (ha, ca)), (b, (hb, cb)) = ref(x), ours(x)
    assert a.shape == b.shape and ha.shape == hb.shape and cb.shape == ca.shape
    b.sum().backward()
    assert x.grad.shape == x.shape
