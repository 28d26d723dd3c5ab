"""fusedrnn.torch: drop-in torch.nn recurrent modules held to torch.nn itself (outputs, states
and every gradient), torch.autograd.gradcheck, torch.library.opcheck and
torch.compile(fullgraph=True); under torch.autocast, to fusedrnn.functional's bfloat16 kernels,
torch.nn's dtypes and the float64 reference."""
import copy
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
frt = pytest.importorskip("fusedrnn.torch")
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence,  # noqa: E402
                                pad_packed_sequence)

from fusedrnn import functional as F, reference as R  # noqa: E402
from fusedrnn.benchmark_bf16 import onednn_refusal, torch_autocast  # noqa: E402
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
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype).to(s.device)).sum()
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


@pytest.mark.parametrize("cell, kw", [("LSTM", {}), ("GRU", {}), ("RNN", {}),
                                       ("LSTM", {"proj_size": 2})])
@pytest.mark.parametrize("packed", [False, True])
def test_final_states_may_be_changed_in_place_as_torch_nn_s(cell, kw, packed):
    """One layer, one direction: h_n and c_n were torch views of the kernel's arrays, and
    autograd refuses in-place changes to a Function's view outputs (``h_n.detach_()``, a
    truncated-BPTT idiom, raised). They are tensors of their own, with torch.nn's gradients."""
    torch.manual_seed(0)
    ref, ours = pair(cell, 3, 4, **kw)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for layer in (ref, ours):
        with torch.no_grad():
            _, hidden = layer(pack_padded_sequence(x, torch.tensor([5, 3])) if packed else x)
            (hidden[0] if isinstance(hidden, tuple) else hidden).detach_()
        xg = x.clone().requires_grad_(True)
        out, hidden = layer(pack_padded_sequence(xg, torch.tensor([5, 3])) if packed else xg)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        for h in states:
            h.mul_(3.0)
        loss = sum((h * h).sum() for h in states)
        grads.append(torch.autograd.grad(loss, [xg, *layer.parameters()]))
    assert_close(grads[1], grads[0], 1e-10, "gradients")


@pytest.mark.parametrize("packed", [False, True])
def test_dropout_between_layers_draws_torch_nn_s_masks(packed):
    """In training mode with dropout, the same seed gives torch.nn's masks, so the same
    numbers: over the padded output, or over the packed rows of a PackedSequence input."""
    ref, ours = pair("LSTM", 4, 6, num_layers=3, bidirectional=True, dropout=0.4)
    lengths = torch.tensor([3, 6, 1, 6, 4]) if packed else None
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    results = []
    for layer in (ref, ours):
        torch.manual_seed(21)
        results.append(run(layer, x, None, lengths))
    assert_close(results[1][0], results[0][0], 1e-10, "outputs")
    assert_close(results[1][1], results[0][1], 1e-10, "gradients")


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


def test_a_packed_batch_of_the_wrong_form_is_named_by_its_data():
    # (checked after padding, the message quoted the padded tensor's shape; data with rows
    # beyond the sum of batch_sizes ran on the first of them, as torch.nn's forward does)
    gru = frt.GRU(3, 4)
    for data, message in ((torch.randn(7, 1, 3), r"data \[rows, 3\] .*got data of shape "
                                                 r"\(7, 1, 3\)"),
                          (torch.randn(7, 5), r"got data of shape \(7, 5\)"),
                          (torch.randn(9, 3), "expected a PackedSequence of 7 rows \\(the sum "
                                              "of its batch_sizes\\), got data of 9")):
        with pytest.raises(ValueError, match=message):
            gru(PackedSequence(data, torch.tensor([3, 2, 1, 1])))


@pytest.mark.parametrize("frozen", ["none", "all", "layer 0"])
@pytest.mark.parametrize("x_grad", [False, True], ids=["data", "x_grad"])
@pytest.mark.parametrize("form", ["one direction", "bidirectional packed", "cell", "compiled"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_gradients_not_wanted_are_not_made_and_the_rest_match(cell, form, x_grad, frozen,
                                                              monkeypatch):
    # an input that is data and frozen parameters: the kernels are asked for no dx and no
    # parameters' gradients (a quarter to half of a backward); what is wanted matches torch.nn's
    # (eager, and through the operators under torch.compile)
    asked = []  # (input_grad, weight_grads) of each kernel call's backward

    def spy(args, input_grad, weight_grads):
        asked.append((input_grad, weight_grads))
        return wanting(args, input_grad, weight_grads)
    wanting = F.backward_args_wanting
    monkeypatch.setattr(F, "backward_args_wanting", spy)
    part = "_l0"  # what "layer 0" freezes (a cell's: its input weights)
    if form == "cell":
        part = "_ih"
        kinds = (getattr(torch.nn, cell + "Cell"), getattr(frt, cell + "Cell"))
        ref, ours = (k(4, 6, dtype=torch.float64) for k in kinds)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(3, 4, dtype=torch.float64)
    else:
        ref, ours = pair(cell, 4, 6, num_layers=2,
                         bidirectional=form not in ("one direction", "compiled"))
        x = torch.randn(5, 3, 4, dtype=torch.float64)
    results = []
    for layer in (ref, ours):
        for name, p in layer.named_parameters():
            p.requires_grad_(not (frozen == "all" or frozen == "layer 0" and part in name))
        xx = x.clone().requires_grad_(x_grad)
        inp = xx if form != "bidirectional packed" else \
            pack_padded_sequence(xx, [5, 2, 4], enforce_sorted=False)
        if form == "compiled" and layer is ours:
            torch._dynamo.reset()  # (each case traced anew: which gradients it wants)
            layer = torch.compile(layer, fullgraph=True, backend="aot_eager")
        out = layer(inp)
        out = out[0] if isinstance(out, tuple) else out
        out = out.data if isinstance(out, PackedSequence) else out
        if out.requires_grad:
            out.sin().sum().backward()
        results.append([xx.grad, *(p.grad for p in (ref if layer is ref else ours).parameters())])
    for want, got in zip(*results):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # per layer (per direction): dx where its input needs one, the weights' where they train
    layers, directions = (1, 1) if form == "cell" else \
        (2, 1 + (form not in ("one direction", "compiled")))
    trains = [frozen != "all" and not (frozen == "layer 0" and part == "_l0" and layer == 0)
              for layer in range(layers)]
    expected = [(x_grad or any(trains[:layer]), trains[layer])
                for layer in range(layers) for _ in range(directions)]
    assert sorted(asked) == sorted(e for e in expected if any(e))  # (none: no backward)


def test_a_cell_step_s_backward_that_failed_may_be_tried_again(monkeypatch):
    # torch keeps a node's saved tensors where its backward raised: so does a step its arrays
    layer = frt.GRUCell(4, 6)
    h = layer(torch.randn(3, 4))
    sync = _ops._sync_threads

    def fails_once():
        monkeypatch.setattr(_ops, "_sync_threads", sync)
        raise MemoryError("simulated")
    monkeypatch.setattr(_ops, "_sync_threads", fails_once)
    with pytest.raises(MemoryError, match="simulated"):
        h.sum().backward()
    h.sum().backward()
    assert layer.weight_hh.grad is not None and h.grad_fn.step is None


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell"])
def test_a_cell_step_lets_its_saved_arrays_go_at_backward_as_torch_does(cell):
    # torch frees a node's saved tensors at its backward (unless retain_graph): so does a
    # step's kept arrays, though its outputs live on (a loss held until the next iteration)
    layer = getattr(frt, cell)(4, 6)
    x = torch.randn(3, 4)
    out = layer(x)
    h = out[0] if cell == "LSTMCell" else out
    node = h.grad_fn
    h.sum().backward(retain_graph=True)
    assert node.step is not None
    h.sum().backward()
    assert node.step is None
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        h.sum().backward()


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
    kwargs = dict(proj_size=3, num_layers=2, batch_first=True, dropout=0.5, bidirectional=True)
    assert repr(torch.nn.LSTM(4, 6, **kwargs)) == repr(frt.LSTM(4, 6, **kwargs))


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_match_torch_nn(cell):
    torch.manual_seed(6)
    kw = {"nonlinearity": "relu"} if cell == "RNNCell" else {}
    ref = getattr(torch.nn, cell)(4, 6, dtype=torch.float64, **kw)
    ours = getattr(frt, cell)(4, 6, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    for batched, given in itertools.product((True, False), (True, False)):  # hx given or None
        x = torch.randn((3, 4) if batched else (4,), dtype=torch.float64)
        h = torch.randn((3, 6) if batched else (6,), dtype=torch.float64)
        hx = (h, torch.randn_like(h)) if cell == "LSTMCell" else h
        results = []
        for layer in (ref, ours):
            xl = x.clone().requires_grad_(True)
            hl = tuple(t.clone().requires_grad_(True) for t in hx) if cell == "LSTMCell" \
                else hx.clone().requires_grad_(True)
            out = layer(xl, hl if given else None)
            outs = out if isinstance(out, tuple) else (out,)
            sum(o.pow(2).sum() for o in outs).backward()
            hgrads = ([t.grad for t in hl] if cell == "LSTMCell" else [hl.grad]) if given else []
            results.append(([*outs], [xl.grad, *hgrads, *(p.grad for p in layer.parameters())]))
            layer.zero_grad()
        assert_close(results[1][0], results[0][0], 1e-10, "outputs")
        assert_close(results[1][1], results[0][1], 1e-10, "gradients")


def test_every_change_of_a_weight_reaches_the_next_cell_step():
    """A cell keeps its weights' NumPy views between steps (_ops.WeightViews): a write in
    place, a new ``.data``, the same address seen transposed (a square weight), each must
    reach the next step as it reaches torch.nn's; copies start without the views."""
    torch.manual_seed(3)
    ref, ours = torch.nn.RNNCell(6, 6), frt.RNNCell(6, 6)
    ours.load_state_dict(ref.state_dict())
    x, h = torch.randn(2, 6), torch.randn(2, 6)
    changes = [lambda m: m.weight_hh.mul_(1.5),
               lambda m: setattr(m.weight_ih, "data", m.weight_ih.data * 0.5),
               lambda m: setattr(m.weight_hh, "data", m.weight_hh.data.t()),  # same address
               lambda m: setattr(m.bias_hh, "data", m.bias_hh.data[:3].repeat(2))]
    for change in [lambda m: None] + changes:
        for m in (ref, ours):
            with torch.no_grad():
                change(m)
        with torch.no_grad():
            torch.testing.assert_close(ours(x, h), ref(x, h), rtol=0, atol=1e-6)
    assert ours._weight_views.kept[0] is not None  # (kept: what this test is about; W_hh,
    assert ours._weight_views.kept[1] is None      # transposed, is a copy: never kept)
    assert copy.deepcopy(ours)._weight_views.kept == [None] * 4
    ours.double()  # (converted or loaded: the views, which hold the old storages, go)
    assert ours._weight_views.kept == [None] * 4
    torch.testing.assert_close(ours(x.double(), h.double()), ref.double()(x.double(), h.double()),
                               rtol=0, atol=1e-6)


def test_swapping_parameters_works_after_calls_as_for_torch_nn():
    """Under torch's swap-on-conversion, ``.to()`` and ``load_state_dict`` swap each parameter,
    which torch.utils.swap_tensors refuses while a weak reference to it lives: the forms a
    call keeps of its weights (their views; bfloat16 forms in an autocast region) are dropped
    first, as torch.nn.RNNBase drops its own references."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        x = torch.randn(5, 2, 3)
        for make, call in ((lambda: frt.LSTM(3, 4), lambda m, t: m(t)),
                           (lambda: frt.GRUCell(3, 4), lambda m, t: m(t[0]))):
            for autocast in (False, True):
                m = make()
                with torch.autocast("cpu", dtype=BF16, enabled=autocast):
                    call(m, x)
                    m.load_state_dict(make().state_dict())
                    m.to(torch.float64)
                assert call(m, x.double())[0].dtype == torch.float64
                assert all(p.dtype == torch.float64 for p in m.parameters())
        # a cell's weight tied to a torch.nn.Linear, which its parent converts first
        parent = torch.nn.Module()
        parent.linear, parent.cell = torch.nn.Linear(3, 4), frt.RNNCell(3, 4)
        parent.linear.weight = parent.cell.weight_ih
        parent.cell(x[0])
        parent.to(torch.float64)
        assert parent.cell(x[0].double()).dtype == torch.float64
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


@pytest.mark.parametrize("cell,bias", [("LSTMCell", True), ("LSTMCell", False),
                                       ("GRUCell", True), ("RNNCell", False)])
def test_cell_loops_with_gradients_match_torch_nn(cell, bias):
    """A decoder's loop: the cell stepped with gradients (each step the kernels' own autograd
    step, _ops.cell_step), its h fed back, an LSTM's c' left unused at the last step; every
    gradient as torch.nn's. Then what torch refuses, refused: a backward after a weight changed
    in place, and a gradient of a gradient."""
    torch.manual_seed(13)
    ref = getattr(torch.nn, cell)(5, 4, bias=bias, dtype=torch.float64)
    ours = getattr(frt, cell)(5, 4, bias=bias, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    xs = torch.randn(6, 3, 5, dtype=torch.float64)
    results = []
    for layer in (ref, ours):
        x = xs.clone().requires_grad_(True)
        h0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        h0.requires_grad_(True)
        state, loss = (h0, torch.zeros_like(h0)) if cell == "LSTMCell" else h0, 0
        for t in range(6):
            state = layer(x[t], state)
            loss = loss + (state[0] if cell == "LSTMCell" else state).sin().sum()
        loss.backward()
        results.append([x.grad, h0.grad, *(p.grad for p in layer.parameters())])
    assert_close(results[1], results[0], 1e-10, "gradients")
    if bias:  # a frozen bias_ih leaves bias_hh training
        for layer in (ref, ours):
            layer.zero_grad()
            layer.bias_ih.requires_grad_(False)
            out = layer(xs[0])
            (out[0] if cell == "LSTMCell" else out).sum().backward()
            layer.bias_ih.requires_grad_(True)
        assert ours.bias_ih.grad is None and ref.bias_ih.grad is None
        assert_close([ours.bias_hh.grad], [ref.bias_hh.grad], 1e-10, "bias_hh")
    x = xs[0].clone().requires_grad_(True)
    out = ours(x)
    out = out[0] if cell == "LSTMCell" else out
    with torch.no_grad():
        ours.weight_hh.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    out = ours(x)
    out = out[0] if cell == "LSTMCell" else out
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_saved_tensor_hooks_see_a_layers_activations(bidirectional):
    """torch.utils.checkpoint (and activation offloading) work through saved-tensor hooks: a
    layer's saved activations pass through them, and a checkpointed layer's gradients are the
    layer's own."""
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(14)
    layer = frt.LSTM(4, 6, bidirectional=bidirectional, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.numel()) or t,
                                                  lambda t: t):
        out, _ = layer(x)
    directions = 2 if bidirectional else 1
    assert sum(packed) >= 5 * 3 * 4 * 6 * directions  # the gates of every step at least
    grads = []
    for checkpointed in (False, True):
        x.grad = None
        layer.zero_grad()
        y = checkpoint(lambda v: layer(v)[0], x, use_reentrant=False) if checkpointed \
            else layer(x)[0]
        y.sin().sum().backward()
        grads.append([x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    assert_close(grads[1], grads[0], 1e-12, "checkpointed")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_gradcheck(cell):
    """torch.autograd.gradcheck w.r.t. the input, the initial state and every parameter (a
    weight or bias gradient off by a fraction fails), of a 2-layer bidirectional layer."""
    torch.manual_seed(8)
    layer = CELLS[cell][1](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())

    def f(x, h0, *ps):  # the parameters as inputs, so gradcheck perturbs them too
        hx = (h0, h0 * 0.5) if cell == "LSTM" else h0
        out, state = torch.func.functional_call(layer, dict(zip(names, ps)), (x, hx))
        return (out, *(state if isinstance(state, tuple) else (state,)))

    torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7)


def _op_args(cell, D, training, lengths=True, dtype=torch.float64, precision="float32", P=0,
             device="cpu"):
    """layer_forward's arguments; P > 0: an LSTM with projections of that size. The lengths
    stay on the host (as pad_packed_sequence gives them)."""
    T, N, I, H = 4, 3, 2, 5
    S = P or H
    G = _ops.GATES[cell]
    r = lambda *s: torch.randn(*s, dtype=dtype).to(device)  # noqa: E731
    return (r(T, N, I).requires_grad_(training), r(D, N, S),
            r(D, N, H) if cell == "lstm" else torch.empty(0, dtype=dtype, device=device),
            [r(G * H, I).requires_grad_(training) for _ in range(D)],
            [r(G * H, S).requires_grad_(training) for _ in range(D)],
            [r(G * H) for _ in range(D)], [r(G * H) for _ in range(D)],
            [r(P, H).requires_grad_(training) for _ in range(D)] if P else [],
            torch.tensor([4, 1, 0][:N]) if lengths else None, cell, "tanh", training, precision)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, precision", [(torch.float64, "float32"),
                                              (torch.float32, "bfloat16")])
def test_opcheck(cell, D, training, dtype, precision):
    torch.library.opcheck(_ops.layer_forward, _op_args(cell, D, training, dtype=dtype,
                                                       precision=precision))


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_opcheck_with_projections(D, training):
    torch.library.opcheck(_ops.layer_forward, _op_args("lstm", D, training, P=3))


def test_op_precision_is_checked_and_reaches_the_kernels():
    args = _op_args("lstm", 2, False, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"^precision: expected 'float32' or 'bfloat16', got "
                                         r"'half'"):
        _ops.layer_forward(*args[:-1], "half")
    plain, bf16 = (_ops.layer_forward(*args[:-1], p)[0] for p in ("float32", "bfloat16"))
    assert 1e-6 < (plain - bf16).abs().max() < 1e-2
    # a float64 layer keeps its precision, as fusedrnn.functional's
    args = _op_args("gru", 1, False)
    assert torch.equal(_ops.layer_forward(*args[:-1], "bfloat16")[0],
                       _ops.layer_forward(*args)[0])


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


@pytest.mark.filterwarnings("ignore::FutureWarning")  # (torch's own, from its pytree)
def test_aot_inductor_package_runs(tmp_path):
    """torch.export then AOTInductor (a deployed package, no Python at run time): a layer
    without biases or a projection, whose absent lists AOTInductor's runtime turned into None
    ("Expected a value of type 'List[Tensor]' for argument 'w_hr'"), gives eager's output."""
    from torch._inductor import aoti_compile_and_package, aoti_load_package
    torch.manual_seed(0)
    model = frt.GRU(3, 4, bias=False).eval()
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        path = aoti_compile_and_package(program, package_path=str(tmp_path / "gru.pt2"))
        out, h_n = aoti_load_package(path)(x)
        expected, expected_h = model(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h_n, expected_h)


def test_inductor_cpp_wrapper_trains_and_infers():
    """Inductor's cpp_wrapper calls only operators that return tensors (it refused the lists
    the operators returned before: "fallback kernels with runtime lookup currently only support
    tensor returns"): a bidirectional projected LSTM, every operator output slot in use, gives
    eager's outputs and gradients."""
    import torch._inductor.config as inductor_config
    torch.manual_seed(3)
    model = frt.LSTM(3, 5, proj_size=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with inductor_config.patch(cpp_wrapper=True):
        compiled = torch.compile(model, fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x)[0], model(x)[0], rtol=0, atol=1e-12)
        x_c = x.clone().requires_grad_()
        compiled(x_c)[0].square().sum().backward()
    grads = [x_c.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x_e = x.clone().requires_grad_()
    model(x_e)[0].square().sum().backward()
    for a, b in zip(grads, [x_e.grad] + [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_torch_compile_fullgraph(cell):
    torch.manual_seed(9)
    model = Tagger(CELLS[cell][1](6, 8, num_layers=2, bidirectional=True, batch_first=True))
    _assert_compiles_fullgraph(model, torch.randint(0, 20, (3, 7)))


def _assert_compiles_fullgraph(model, tokens):
    """torch.compile(fullgraph=True) gives the eager model's outputs and gradients."""
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


def test_torch_jit_script_says_what_works_instead():
    """torch.jit.script of a model holding our layers or cells failed with a TorchScript parse
    error inside our forward ("Module 'LSTM' has no attribute '_parameters'"): it now names
    trace, export, compile and to_torch_nn; the model to_torch_nn gives scripts."""
    model = frt.convert(Tagger(torch.nn.LSTM(6, 8, bidirectional=True)))
    for scripted in (model, frt.GRUCell(3, 4)):
        with pytest.raises(RuntimeError, match=r"^torch\.jit\.script: fusedrnn\.torch's layers "
                                               r"and cells cannot be scripted .*to_torch_nn"):
            torch.jit.script(scripted)
    tokens = torch.randint(0, 20, (5, 2))
    plain = frt.to_torch_nn(model, inplace=False)
    torch.testing.assert_close(torch.jit.script(plain)(tokens), model(tokens))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks, as torch.nn's
@pytest.mark.parametrize("frozen", [False, True])
def test_torch_jit_trace_records_the_operator(frozen, tmp_path):
    """A traced model holds the operator, not one call's outputs as constants: new inputs give
    eager's outputs, before and after torch.jit.save / load, and the trace passes torch.jit's
    own check. Traced in eval() mode it still gives eager's gradients, as torch.nn's layers do;
    with frozen parameters it traces for inference alone (nothing saved for a backward)."""
    torch.manual_seed(12)
    model = Tagger(frt.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)).eval()
    model.requires_grad_(not frozen)
    traced = torch.jit.trace(model, (torch.randint(0, 20, (3, 7)),))
    torch.jit.save(traced, tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    tokens = torch.randint(0, 20, (2, 5))
    eager = model(tokens)
    for m in (traced, loaded):
        assert (m(tokens) - eager).abs().max() < 1e-6
    cell = frt.GRUCell(3, 4).requires_grad_(not frozen)
    traced_cell = torch.jit.trace(cell, (torch.randn(2, 3),))
    x = torch.randn(4, 3)
    assert (traced_cell(x) - cell(x)).abs().max() < 1e-6
    if not frozen:
        traced(tokens).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        eager.sum().backward()
        for a, b in zip(grads, model.parameters()):
            assert (a - b.grad).abs().max() < 1e-5


def test_convert_swaps_layers_with_the_same_weights():
    """convert swaps layers and cells in place, each computing what it did before (a cell that
    lost its weights or its ReLU fails)."""
    torch.manual_seed(10)
    model = Tagger(torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True))
    model.cell = torch.nn.GRUCell(4, 4)
    model.relu_cell = torch.nn.RNNCell(4, 4, nonlinearity="relu")
    model.lstm_cell = torch.nn.LSTMCell(4, 4)
    model.proj = torch.nn.LSTM(4, 8, proj_size=3)
    model.fp16 = torch.nn.GRU(4, 4).half()
    tokens = torch.randint(0, 20, (2, 5))
    before = model(tokens)
    x = torch.randn(5, 2, 4)
    proj_before = model.proj(x)[0]

    def cells():  # (Tagger's forward runs none of them)
        h = x[1]
        return [model.cell(x[0], h), model.relu_cell(x[0], h), *model.lstm_cell(x[0], (h, h))]

    cells_before = cells()
    with pytest.warns(UserWarning, match=r"fp16: dtype torch.float16"):
        same = frt.convert(model)
    assert same is model
    assert isinstance(model.rnn, frt.LSTM) and isinstance(model.cell, frt.GRUCell)
    assert isinstance(model.relu_cell, frt.RNNCell) and isinstance(model.lstm_cell, frt.LSTMCell)
    assert isinstance(model.proj, frt.LSTM) and model.proj.proj_size == 3
    assert isinstance(model.fp16, torch.nn.GRU)
    assert (model(tokens) - before).abs().max() < 1e-5
    assert (model.proj(x)[0] - proj_before).abs().max() < 1e-5
    for after, want in zip(cells(), cells_before):
        assert (after - want).abs().max() < 1e-6
    single = frt.convert(torch.nn.RNN(3, 4, nonlinearity="relu"))
    assert isinstance(single, frt.RNN) and single.nonlinearity == "relu"
    untouched = torch.nn.GRU(3, 4)
    copy = frt.convert(torch.nn.Sequential(untouched), inplace=False)
    assert isinstance(copy[0], frt.GRU) and isinstance(untouched, torch.nn.GRU)


def _flat(result):
    """(out, h_n) or (out, (h_n, c_n)) -> [out, h_n(, c_n)]."""
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def test_meta_and_fake_tensors_give_torch_nn_s_shapes():
    """Deferred initialisation (device="meta", then to_empty and a state_dict) and shape
    inference (meta inputs, FakeTensorMode) work as with torch.nn: the operators' fake
    implementations answer, the kernels never see such tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    torch.manual_seed(3)
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    ours = frt.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, device="meta")
    assert ours.weight_hh_l1_reverse.device.type == "meta"
    x = torch.randn(4, 2, 3)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got = ours(x.to("meta").requires_grad_(grad))
        assert [t.shape for t in _flat(got)] == [t.shape for t in _flat(ref(x))]
        assert all(t.device.type == "meta" for t in _flat(got))
    # a packed batch of meta data too (its padded rows were picked by a boolean mask, whose
    # nonzero meta tensors cannot run); dropout between the layers in training mode picks them
    packed = pack_padded_sequence(x, torch.tensor([4, 2]), enforce_sorted=False)
    packed_meta = PackedSequence(packed.data.to("meta"), packed.batch_sizes,
                                 packed.sorted_indices, packed.unsorted_indices)
    ours.dropout = 0.5
    (out, (h, c)), (ref_out, (ref_h, ref_c)) = ours(packed_meta), ref(packed)
    assert (out.data.shape, h.shape, c.shape) == (ref_out.data.shape, ref_h.shape, ref_c.shape)
    assert out.data.device.type == "meta" and torch.equal(out.batch_sizes, ref_out.batch_sizes)
    ours.dropout = 0.0
    ours.to_empty(device="cpu").load_state_dict(ref.state_dict())
    assert_close(_flat(ours(x)), _flat(ref(x)), 1e-6, "outputs after to_empty")
    with FakeTensorMode():
        cell, gru = frt.GRUCell(3, 4), frt.GRU(3, 4, batch_first=True)
        assert cell(torch.randn(2, 3)).shape == (2, 4)
        assert gru(torch.randn(2, 6, 3))[0].shape == (2, 6, 4)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN", "GRUCell"])
def test_torch_func_grad_matches_torch_nn(cell):
    """torch.func.grad and vjp over functional_call (per-model gradients as MAML-style code
    takes them) give torch.nn's gradients; transforms our layers have no rule for (vmap, and
    jacrev which uses it), and gradients of gradients, raise a clear error."""
    from torch.func import functional_call, grad, jacrev, vjp, vmap
    torch.manual_seed(4)
    is_cell = cell.endswith("Cell")
    kw = {} if is_cell else dict(num_layers=2, bidirectional=True)
    ref = getattr(torch.nn, cell)(3, 4, dtype=torch.float64, **kw)
    ours = getattr(frt, cell)(3, 4, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((2, 3) if is_cell else (5, 2, 3), dtype=torch.float64)

    def loss(m):
        def f(params, x):
            out = functional_call(m, params, (x,))
            return (out[0] if isinstance(out, tuple) else out).pow(2).sum()
        return f
    expected = grad(loss(ref), argnums=(0, 1))(dict(ref.named_parameters()), x)
    got = grad(loss(ours), argnums=(0, 1))(dict(ours.named_parameters()), x)
    assert_close([got[1], *got[0].values()], [expected[1], *expected[0].values()], 1e-10,
                 "torch.func.grad")
    outs = [vjp(lambda x: loss(m)(dict(m.named_parameters()), x), x) for m in (ref, ours)]
    assert_close(outs[1][1](torch.tensor(1.0, dtype=torch.float64)),
                 outs[0][1](torch.tensor(1.0, dtype=torch.float64)), 1e-10, "torch.func.vjp")
    with pytest.raises(RuntimeError, match="double backward"):
        grad(lambda x: grad(loss(ours), argnums=1)(dict(ours.named_parameters()), x).sum())(x)
    with pytest.raises(RuntimeError, match="fusedrnn: torch.func.vmap over the recurrent"):
        vmap(lambda x: loss(ours)(dict(ours.named_parameters()), x))(x[None])
    with pytest.raises(RuntimeError, match="fusedrnn: torch.func.vmap over the recurrent"):
        jacrev(lambda x: loss(ours)(dict(ours.named_parameters()), x).reshape(1))(x)


def test_convert_draws_nothing_from_torch_s_generator():
    """Seeded, converted and trained, a model draws the dropout masks it draws unconverted
    (each swap built a module that drew its own weights, then took the layer's)."""
    def first_output(swap):
        torch.manual_seed(0)
        model = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5, dtype=torch.float64)
        if swap:
            model = frt.convert(model)
        return model(torch.ones(2, 1, 3, dtype=torch.float64))[0]

    torch.testing.assert_close(first_output(True), first_output(False), rtol=0, atol=1e-14)
    for layer in (torch.nn.LSTM(8, 8, proj_size=4, bidirectional=True), torch.nn.GRUCell(3, 4)):
        state = torch.get_rng_state()
        back = frt.to_torch_nn(frt.convert(layer, inplace=False))
        assert torch.equal(state, torch.get_rng_state())
        for (name, a), b in zip(layer.named_parameters(), back.parameters()):
            assert torch.equal(a, b) and not b.is_meta, name


def test_an_optimizer_made_before_convert_trains_the_converted_layers():
    """convert (and to_torch_nn) hand the layers' own Parameter objects to the new modules, so
    an optimizer made before the swap trains the same weights as without it."""
    def run(swap):
        torch.manual_seed(14)
        model = Tagger(torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True))
        model.double()
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        names = [n for n, _ in model.named_parameters()]
        swap(model)
        assert [n for n, _ in model.named_parameters()] == names
        tokens = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            opt.zero_grad()
            model(tokens).pow(2).mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]
    expected = run(lambda m: None)
    assert_close(run(frt.convert), expected, 1e-10, "convert")
    assert_close(run(lambda m: frt.to_torch_nn(frt.convert(m))), expected, 1e-10, "and back")


def test_convert_keeps_a_parameter_tied_across_a_layer_s_slots():
    """One Parameter filling two slots of a layer (both directions' W_hh) stays one, both ways."""
    torch.manual_seed(17)
    gru = torch.nn.GRU(3, 4, bidirectional=True)
    gru.weight_hh_l0_reverse = gru.weight_hh_l0
    x = torch.randn(5, 2, 3)
    expected = gru(x)[0]
    ours = frt.convert(gru)
    assert ours.weight_hh_l0_reverse is ours.weight_hh_l0
    assert (ours(x)[0] - expected).abs().max() < 1e-6
    back = frt.to_torch_nn(ours)
    assert back.weight_hh_l0_reverse is back.weight_hh_l0
    assert (back(x)[0] - expected).abs().max() < 1e-6


def test_convert_keeps_shared_layers_shared_and_leaves_rewritten_weights_to_torch_nn():
    """A layer reached by two paths becomes one module (tied weights stay tied); layers whose
    weights hooks rewrite (pruning, weight norm, parametrizations), layers with hooks and
    subclasses stay torch.nn's, each named in the one warning."""
    import torch.nn.utils.prune as prune

    class MyGRU(torch.nn.GRU):
        pass

    torch.manual_seed(11)
    model = torch.nn.Module()
    model.enc = torch.nn.GRU(4, 4)
    model.dec = model.enc
    model.pruned = torch.nn.LSTM(4, 4)
    prune.l1_unstructured(model.pruned, "weight_hh_l0", amount=0.5)
    model.normed = torch.nn.utils.parametrizations.weight_norm(torch.nn.GRUCell(4, 4),
                                                                "weight_hh")
    model.hooked = torch.nn.RNN(4, 4)
    model.hooked.register_forward_hook(lambda *args: None)
    model.loads_old_keys = torch.nn.LSTM(4, 4)  # (a checkpoint its hook renames would break)
    model.loads_old_keys.register_load_state_dict_pre_hook(lambda *args: None)
    model.masked = torch.nn.GRU(4, 4)
    model.masked.register_buffer("mask", torch.ones(4), persistent=False)
    model.with_child = torch.nn.RNN(4, 4)
    model.with_child.drop = torch.nn.Dropout(0.5)
    model.tagged = torch.nn.LSTMCell(4, 4)
    model.tagged.role = "decoder"  # a plain attribute goes along
    model.mine = MyGRU(4, 4)
    x = torch.randn(3, 2, 4)
    before = model.enc(x)[0]
    with pytest.warns(UserWarning) as record:
        frt.convert(model)
    message = str(record[0].message)
    assert isinstance(model.enc, frt.GRU) and model.dec is model.enc
    assert (model.enc(x)[0] - before).abs().max() < 1e-6
    assert sum(p.numel() for p in model.enc.parameters()) == 120
    assert isinstance(model.tagged, frt.LSTMCell) and model.tagged.role == "decoder"
    for name, why in (("pruned", "weight_hh_l0_mask"), ("normed", "parametrized weights"),
                      ("hooked", "hooks registered on it"),
                      ("loads_old_keys", "hooks registered on it"),
                      ("masked", "buffers other than its weights (mask"),
                      ("with_child", "modules of its own (drop)"),
                      ("mine", "MyGRU, a subclass of torch.nn.modules.rnn.GRU")):
        assert f"{name}: " in message and why in message, (name, message)
        assert not type(getattr(model, name)).__module__.startswith("fusedrnn"), name


def test_torch_onnx_export_writes_onnx_s_own_recurrent_nodes(tmp_path):
    """torch.onnx.export's default (dynamo) path exports our layers and cells as ONNX's
    LSTM/GRU/RNN nodes (gates reordered, torch's GRU as linear_before_reset): ONNX Runtime then
    gives our outputs, on the example's shapes and on others (dynamic batch and time)."""
    pytest.importorskip("onnxscript")  # torch's exporter needs it
    onnxruntime = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 6)
            self.lstm = frt.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = frt.GRU(16, 5, batch_first=True)
            self.rnn = frt.RNN(5, 4, nonlinearity="relu", batch_first=True, bias=False)
            self.cell = frt.LSTMCell(4, 3)

        def forward(self, tokens):
            y, (h, c) = self.lstm(self.embed(tokens))
            y, h_gru = self.gru(y)
            y, h_rnn = self.rnn(y)
            return (y, h, c, h_gru, h_rnn, *self.cell(y[:, -1]))

    torch.manual_seed(16)
    model = Stack().eval()
    path = tmp_path / "stack.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randint(0, 20, (3, 7)),), str(path),
                          input_names=["tokens"],
                          dynamic_shapes={"tokens": {0: "batch", 1: "time"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"LSTM", "GRU", "RNN"} <= ops and not any("fusedrnn" in op for op in ops)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((3, 7), (5, 2)):
        tokens = torch.randint(0, 20, shape)
        with torch.no_grad():
            ours = model(tokens)
        for got, want in zip(session.run(None, {"tokens": tokens.numpy()}), ours):
            assert np.abs(got - want.numpy()).max() < 1e-5


@pytest.mark.parametrize("dynamo", [True, False])
def test_torch_onnx_export_of_a_projection_says_where_it_can_go(tmp_path, dynamo):
    """Neither torch.onnx path can write a projected LSTM (ONNX's LSTM has none): both say so
    and name fusedrnn.onnx.export. The default path's retry under Dynamo (which folds
    torch.onnx.is_in_onnx_export() to False) ended in "No ONNX function found for
    fusedrnn.layer_forward" instead."""
    if dynamo:
        pytest.importorskip("onnxscript")
    model = frt.LSTM(3, 5, proj_size=2)
    with warnings.catch_warnings(), pytest.raises(Exception) as caught:
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(4, 2, 3),), str(tmp_path / "p.onnx"),
                          dynamo=dynamo)
    assert "torch.onnx.export cannot write an LSTM with proj_size" in str(caught.value)
    assert "fusedrnn.onnx.export writes a fusedrnn.nn.LSTM with one" in str(caught.value)


def test_to_torch_nn_is_convert_s_inverse_and_exports_to_onnx(tmp_path):
    """to_torch_nn gives back torch.nn's layers and cells with the same weights, modes and
    flags (shared layers stay shared), so torch.onnx.export, which knows only those, exports a
    model that ran on our kernels; ONNX Runtime then gives our outputs."""
    torch.manual_seed(13)
    model = Tagger(frt.GRU(6, 8, num_layers=2, bidirectional=True, batch_first=True))
    model.cell = frt.LSTMCell(4, 4)
    model.tied = model.cell
    model.proj = frt.LSTM(4, 8, proj_size=3)
    model.eval()
    model.rnn.weight_hh_l1.requires_grad_(False)
    tokens = torch.randint(0, 20, (2, 5))
    ours = model(tokens)
    back = frt.to_torch_nn(model, inplace=False)
    assert isinstance(model.rnn, frt.GRU)  # inplace=False: the original is untouched
    assert type(back.rnn) is torch.nn.GRU and type(back.cell) is torch.nn.LSTMCell
    assert back.tied is back.cell and back.proj.proj_size == 3 and not back.rnn.training
    assert not back.rnn.weight_hh_l1.requires_grad
    assert (back(tokens) - ours).abs().max() < 1e-5
    assert isinstance(frt.convert(back).rnn, frt.GRU)
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "tagger.onnx"
    exported = frt.to_torch_nn(model, inplace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exported, (tokens,), str(path), dynamo=False, input_names=["tokens"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"tokens": tokens.numpy()})[0]
    assert np.abs(got - ours.detach().numpy()).max() < 1e-5


def test_unsupported_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"proj_size: expected an integer in \[0, hidden_size\)"):
        frt.LSTM(4, 8, proj_size=8)
    for layer in (frt.GRU, frt.RNN):  # a ValueError, as torch.nn's (a TypeError before)
        with pytest.raises(ValueError, match=r"^proj_size: projections belong to an LSTM"):
            layer(4, 8, proj_size=2)
    with pytest.raises(ValueError, match=r"device: fusedrnn.torch runs on the CPU and on CUDA "
                                         r"devices \(and takes meta tensors for shapes\), got mps"):
        frt.GRU(4, 8, device="mps")
    if frt.modules.cuda_unavailable() is not None:  # the reason is named
        with pytest.raises(ValueError, match=r"device: got cuda(:0)?, but fusedrnn's CUDA "
                                             r"kernels cannot run here \("):
            frt.LSTM(4, 8, device="cuda")
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
    # the hx of another form: a TypeError, and the RuntimeError torch.nn raises there
    for hx in (torch.zeros(2, 2, 8), (torch.zeros(2, 2, 8),) * 3):
        with pytest.raises(TypeError, match="hx: expected a tuple"):
            layer(torch.randn(3, 2, 4), hx)
        with pytest.raises(RuntimeError, match="hx: expected a tuple"):
            layer(torch.randn(3, 2, 4), hx)
    with pytest.raises(TypeError, match="input: expected a torch.Tensor"):
        layer(np.zeros((3, 2, 4), np.float32))
    cell = frt.LSTMCell(4, 8)  # hx: a pair, as torch.nn's (a [2, H] tensor for one sample)
    with pytest.raises(RuntimeError, match=r"hx: expected a tuple \(h_0, c_0\)"):
        cell(torch.randn(2, 4), torch.zeros(2, 2, 8))
    with pytest.raises(TypeError, match="hx: expected a tuple"):
        cell(torch.randn(2, 4), 3)
    for hx in ((torch.zeros(2, 8),) * 3, (torch.zeros(2, 8),)):
        with pytest.raises(RuntimeError, match="hx: expected two hidden states"):
            cell(torch.randn(2, 4), hx)
    pair = torch.randn(2, 8)
    assert all(torch.equal(a, b) for a, b in zip(cell(torch.ones(4), pair),
                                                 cell(torch.ones(4), (pair[0], pair[1]))))


def test_wrong_shapes_and_dtypes_are_caught_as_torch_nns_errors_are():
    """Each bad call raises ours (named) and is caught by what catches torch.nn's error."""
    x, f64 = torch.randn(3, 2, 4), torch.float64
    nn = torch.nn
    for ours, theirs in ((frt.LSTM(4, 8), nn.LSTM(4, 8)), (frt.LSTMCell(4, 8), nn.LSTMCell(4, 8))):
        cell = isinstance(ours, frt.LSTMCell)
        xx = x[0] if cell else x
        h = torch.zeros(2, 8) if cell else torch.zeros(1, 2, 8)
        bad_h = torch.zeros(3, 8) if cell else torch.zeros(1, 3, 8)
        for call, error in (((xx.to(f64),), frt.DtypeMismatchError),
                            ((xx[..., :3],), frt.ShapeMismatchError),
                            ((xx, (bad_h, h)), frt.ShapeMismatchError),
                            ((xx, (h.to(f64), h)), frt.DtypeMismatchError)):
            with pytest.raises(Exception) as torch_nn:
                theirs(*call)
            with pytest.raises(error) as fusedrnn:
                ours(*call)
            assert isinstance(fusedrnn.value, type(torch_nn.value)), (call, torch_nn.value)
    assert issubclass(frt.DtypeMismatchError, TypeError)  # (fusedrnn's kind of error too)
    assert issubclass(frt.ShapeMismatchError, ValueError)


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


# ---------------------------------------------------------------------------- torch.autocast
BF16 = torch.bfloat16


def _functional_layers(layer, x, precision):
    """(y, h_n, c_n) of a fusedrnn.torch layer (zero initial state) run call by call through
    fusedrnn.functional with ``precision``: NumPy float32 arrays."""
    inp, h_n, c_n = x.numpy(), [], []
    for k in range(layer.num_layers):
        ys = []
        for d in range(layer.num_directions):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            w = [getattr(layer, name + suffix).detach().numpy()
                 for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            kw = {"reverse": d == 1, "precision": precision}
            if layer._cell == "lstm":
                y, h, c, _ = F.lstm_forward(inp, None, None, *w, **kw)
                c_n.append(c)
            else:
                y, h, _ = getattr(F, layer._cell + "_forward")(inp, None, *w, **kw)
            ys.append(y)
            h_n.append(h)
        inp = np.concatenate(ys, axis=2)
    return inp, np.stack(h_n), np.stack(c_n) if c_n else None


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_autocast_bfloat16_runs_the_kernels_bf16(cell):
    """Under torch.autocast("cpu", bfloat16) a float32 layer (stacked, bidirectional), in
    inference and in training, gives fusedrnn.functional's precision="bfloat16" results, cast to
    torch.nn's output dtype there (bit for bit), not the float32 run's."""
    torch.manual_seed(13)
    ref, ours = pair(cell, 5, 24, torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(9, 3, 5)
    expected = _functional_layers(ours, x, "bfloat16")
    plain = _functional_layers(ours, x, "float32")
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=BF16):
            out, state = ours(x.clone().requires_grad_(grad))
            # torch.nn's layer fails where oneDNN refuses it (CPUs without bfloat16
            # instructions); ours runs there and keeps the dtype torch.nn has elsewhere
            theirs = None if onednn_refusal(cell) else ref(x)[0]
        assert out.dtype == (torch.float32 if cell == "GRU" else BF16)
        assert theirs is None or theirs.dtype == out.dtype
        states = state if cell == "LSTM" else (state,)
        for got, want, fp32 in zip((out, *states), expected, plain):
            assert got.dtype == out.dtype
            assert torch.equal(got.detach(), torch.from_numpy(want).to(got.dtype))
            assert not torch.equal(got.detach(), torch.from_numpy(fp32).to(got.dtype))


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_autocast_bfloat16_cells_run_the_kernels_bf16(cell):
    """The cells under autocast: one step of the functional kernels with precision="bfloat16",
    in torch.nn's dtype (float32 state given: float32 but for the RNNCell)."""
    torch.manual_seed(14)
    ours = getattr(frt, cell)(6, 16)
    x, h = torch.randn(3, 6), torch.randn(3, 16)
    hx = (h, h) if cell == "LSTMCell" else h
    w = [p.detach().numpy() for p in ours.parameters()]
    name = cell[:-4].lower()
    state = (h.numpy(),) * (2 if name == "lstm" else 1)
    expected = getattr(F, name + "_forward")(x[None].numpy(), *state, *w, precision="bfloat16")
    with torch.no_grad():
        plain = ours(x, hx)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=BF16):
            got = ours(x.clone().requires_grad_(grad), hx)
        pairs = zip(got, plain, expected[1:3]) if name == "lstm" else [(got, plain, expected[1])]
        for g, fp32, want in pairs:
            assert g.dtype == (BF16 if cell == "RNNCell" else torch.float32)
            assert torch.equal(g.detach(), torch.from_numpy(want).to(g.dtype))
            assert not torch.equal(g.detach(), fp32.to(g.dtype))


def _bf16_step(module, x, hx):
    """(h', c'?) of a cell, or (y, h_n, c_n?) of a layer, with precision="bfloat16" through
    fusedrnn.functional on the module's current weights (converted by this call alone)."""
    w = [p.detach().numpy().copy() for p in module.parameters()]
    if len(w) == 2:
        w += [np.zeros(w[1].shape[0], np.float32)] * 2
    name = type(module).__name__.replace("Cell", "").lower()
    xs = x.numpy() if x.dim() == 3 else x[None].numpy()
    states = tuple(s.numpy() for s in (hx if isinstance(hx, tuple) else (hx,)))
    if x.dim() == 3:
        states = tuple(s[0] for s in states)
    out = getattr(F, name + "_forward")(xs, *states, *w, precision="bfloat16")
    return out[1:3] if name == "lstm" else out[1:2]


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell", "GRU"])
@pytest.mark.parametrize("bias", [True, False])
def test_autocast_keeps_bfloat16_weights_for_the_region(cell, bias):
    """As torch.autocast keeps its casts of a parameter for the region, the steps of one region
    convert the weights once, and a write to a weight within it (an optimizer's, a new .data)
    renews them: every step equals fusedrnn.functional's fresh conversion of the current
    weights, bit for bit; the kept forms go when the region ends, or when their weights do."""
    torch.manual_seed(21)
    module = getattr(frt, cell)(6, 16, bias=bias)
    layered = cell == "GRU"
    x = torch.randn(1, 3, 6) if layered else torch.randn(3, 6)
    h = torch.randn(1, 3, 16) if layered else torch.randn(3, 16)
    hx = (h, h.clone()) if cell == "LSTMCell" else h

    def check(grad):
        with torch.set_grad_enabled(grad):
            got = module(x, hx)
        got = got[1:] if layered else got if isinstance(got, tuple) else (got,)
        for g, want in zip(got, _bf16_step(module, x, hx)):
            # (in torch.nn's output dtype: bfloat16 for the RNNCell)
            assert torch.equal(g.detach().reshape(want.shape), torch.from_numpy(want).to(g.dtype))

    with torch.autocast("cpu", dtype=BF16):
        for grad in (False, True, False):
            check(grad)
        assert len(_ops._KEPT_FORMS) == 1
        kept = next(iter(_ops._KEPT_FORMS.values()))
        check(False)
        assert next(iter(_ops._KEPT_FORMS.values())) is kept  # nothing converted again
        with torch.no_grad():
            module.weight_hh.mul_(-1.5) if not layered else module.weight_hh_l0.mul_(-1.5)
        check(False)  # an in-place write: the version moved
        assert next(iter(_ops._KEPT_FORMS.values())) is not kept
        p = module.weight_ih if not layered else module.weight_ih_l0
        for _ in range(2):  # new storage (twice: the allocator may give back a freed address)
            p.data = torch.randn_like(p)
        check(True)
        with torch.autocast("cpu", dtype=BF16, enabled=False):  # nested: the region goes on
            pass
        assert len(_ops._KEPT_FORMS) == 1
    assert not _ops._KEPT_FORMS  # the region ended
    with torch.autocast("cpu", dtype=BF16):
        check(False)
        assert len(_ops._KEPT_FORMS) == 1
        del module, p
        assert not _ops._KEPT_FORMS  # the weights are gone


def test_autocast_keeps_no_weights_where_torch_keeps_no_casts():
    """torch.autocast keeps no cast with its cache off, nor of a weight that is not a leaf
    parameter requiring grad; neither do the kernels, nor of weights made under
    torch.inference_mode (which count no versions), which run all the same."""
    torch.manual_seed(22)
    cell = frt.LSTMCell(6, 16)
    x = torch.randn(3, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16, cache_enabled=False):
        cell(x)
    assert not _ops._KEPT_FORMS
    cell.weight_hh.requires_grad_(False)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        cell(x)
        assert not _ops._KEPT_FORMS
    with torch.inference_mode():  # made there: its weights count no versions
        served = frt.LSTMCell(6, 16)
        served.load_state_dict(cell.state_dict())
        with torch.autocast("cpu", dtype=BF16):
            got = served(x)
            assert not _ops._KEPT_FORMS
            want = cell(x)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def _dtypes(result):
    if isinstance(result, torch.nn.utils.rnn.PackedSequence):
        return result.data.dtype
    if isinstance(result, tuple):
        return tuple(_dtypes(r) for r in result)
    return result.dtype


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("cell", ["LSTM", "LSTM_proj", "GRU", "RNN", "LSTMCell", "GRUCell",
                                  "RNNCell"])
def test_autocast_bfloat16_output_dtypes_are_torch_nn_s(cell, onednn, monkeypatch):
    """torch.nn's dtypes under bfloat16 autocast depend on the cell, the input's form and the
    given state's dtype, and for the LSTM on whether oneDNN takes it (see
    modules._autocast_output_dtype; a projected LSTM never goes there): ours are the same for
    every combination, oneDNN on and off, and gradients reach a bfloat16 input as bfloat16, the
    parameters as float32."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    torch.manual_seed(15)
    cell, kwargs = ("LSTM", {"proj_size": 3}) if cell == "LSTM_proj" else (cell, {})
    S = kwargs.get("proj_size", 6)  # the width of h
    layer = cell in CELLS
    ref = getattr(torch.nn, cell)(4, 6, **kwargs)
    ours = getattr(frt, cell)(4, 6, **kwargs)
    ours.load_state_dict(ref.state_dict())
    forms = (False, True) if layer else (False,)  # padded, packed
    for x_dtype, h_dtype, packed in itertools.product((torch.float32, BF16, torch.float16),
                                                      (None, torch.float32, BF16), forms):
        for c_dtype in (torch.float32, BF16) if cell.startswith("LSTM") and h_dtype else (None,):
            x = torch.randn((3, 2, 4) if layer else (2, 4), dtype=x_dtype)
            hx = None
            if h_dtype is not None:
                h = torch.randn((1, 2, S) if layer else (2, S), dtype=h_dtype)
                c = torch.randn((1, 2, 6) if layer else (2, 6), dtype=c_dtype or h_dtype)
                hx = (h, c) if c_dtype else h
            results = []
            for m in (ref, ours):
                xl = x.clone().requires_grad_(True)
                inp = pack_padded_sequence(xl, torch.tensor([3, 2])) if packed else xl
                try:
                    with torch.autocast("cpu", dtype=BF16):
                        out = m(inp, hx)
                except RuntimeError:
                    if m is not ref or onednn_refusal(cell) is None:
                        raise
                    results.append(None)  # oneDNN refuses torch.nn's layer on this CPU
                    continue
                first = out[0] if isinstance(out, tuple) else out
                first = first.data if packed else first
                first.float().sum().backward()
                results.append((_dtypes(out), xl.grad.dtype,
                                [p.grad.dtype for p in m.parameters()]))
                m.zero_grad()
            if results[0] is None:  # torch.nn's dtypes where oneDNN can run it (AMX Xeon)
                assert results[1][0] == (BF16, (BF16, BF16)), (x_dtype, h_dtype, c_dtype)
            else:
                assert results[1] == results[0], (x_dtype, h_dtype, c_dtype, packed)
            assert results[1][1] == x_dtype and set(results[1][2]) == {torch.float32}


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_autocast_bfloat16_accuracy_within_torch_nn_s(cell):
    """Outputs and gradients (input, every parameter) under autocast, relative error against the
    float64 reference within 1.5x of torch.nn's under the same autocast (measured: outputs ours
    2.9e-3 LSTM, 2.4e-3 GRU, 3.1e-3 RNN, torch's 3.2e-3, 4.1e-3, 3.9e-3; gradients ours
    4.2e-4..2.8e-3, torch's 3.0e-3..9.1e-3: our backward runs in float32); and our gradients
    are fusedrnn.functional's backward of its precision="bfloat16" forward to 1e-5 (the bound
    above passes a gradient 1% off)."""
    T, N, I, H = 30, 3, 32, 96
    torch.manual_seed(1)
    ref, ours = pair(cell, I, H, torch.float32)
    x = torch.randn(T, N, I)
    dy = torch.randn(T, N, H).to(BF16).float()  # exact in bfloat16: its casts lose nothing
    name = cell.lower()
    w = [p.detach().double().numpy() for p in ref.parameters()]
    state = (None, None) if name == "lstm" else (None,)
    y, *_, ctx = getattr(R, name + "_forward")(x.double().numpy(), *state, *w, training=True)
    dx, *_, dw_ih, dw_hh, db_ih, db_hh = getattr(R, name + "_backward")(ctx, dy.double().numpy())
    exact = [y, dx, dw_ih, dw_hh, db_ih, db_hh]
    *_, ctx = getattr(F, name + "_forward")(x.numpy(), *state, *(v.astype(np.float32) for v in w),
                                            training=True, precision="bfloat16")
    dx, *_, dw_ih, dw_hh, db_ih, db_hh = getattr(F, name + "_backward")(ctx, dy.numpy())
    kernels = [dx, dw_ih, dw_hh, db_ih, db_hh]
    errors = []
    for m in (ref, ours):
        xl = x.clone().requires_grad_(True)
        with torch_autocast(cell):  # oneDNN off where it refuses torch.nn's layer here
            out = m(xl)[0]
        (out.float() * dy).sum().backward()
        got = [out, xl.grad, *(p.grad for p in m.parameters())]
        errors.append([np.linalg.norm(g.detach().double().numpy() - e) / np.linalg.norm(e)
                       for g, e in zip(got, exact)])
    for g, want in zip(got[1:], kernels):  # (ours: the loop's last)
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-5, atol=1e-6)
    for what, theirs, mine in zip(("y", "dx", "dw_ih", "dw_hh", "db_ih", "db_hh"), *errors):
        assert 1e-5 < mine <= 1.5 * theirs, (what, mine, theirs)


def test_training_under_autocast_with_an_optimizer():
    """A few Adam steps of a model holding each layer, under autocast: the loss falls, the
    parameters and their gradients stay float32."""
    for cell in ("LSTM", "GRU", "RNN"):
        torch.manual_seed(16)
        model = torch.nn.ModuleDict({"proj": torch.nn.Linear(3, 8),
                                     "rnn": CELLS[cell][1](8, 16, batch_first=True),
                                     "head": torch.nn.Linear(16, 1)})
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x = torch.randn(8, 10, 3)
        target = x.cumsum(1)[..., :1] * 0.3
        losses = []
        for _ in range(25):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=BF16):
                out, _ = model["rnn"](model["proj"](x))
                loss = (model["head"](out).float() - target).pow(2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (cell, losses)
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())


def test_torch_compile_fullgraph_under_autocast():
    """Compiled under autocast, the layer's operator runs with precision "bfloat16": the same
    features as eager autocast, bit for bit, and the same gradients (up to the bfloat16 head's
    rounding)."""
    torch.manual_seed(17)
    model = Tagger(frt.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True))
    tokens = torch.randint(0, 20, (3, 7))

    def step(tokens):
        features, _ = model.rnn(model.embed(tokens))
        return model.head(features), features

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=BF16):
        eager = step(tokens)
        out = compiled(tokens)
    assert out[1].dtype == BF16 and torch.equal(out[1], eager[1])
    assert not torch.equal(eager[1], step(tokens)[1].to(BF16))  # not the float32 run, cast
    assert (out[0].float() - eager[0].float()).abs().max() < 1e-2
    out[0].float().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager[0].float().sum().backward()
    for a, b in zip(grads, model.parameters()):
        assert (a - b.grad).abs().max() <= 1e-2 * b.grad.abs().max()


def test_what_torch_autocast_leaves_alone():
    """float64 layers under bfloat16 autocast, and float32 layers under float16 autocast (no
    float16 kernels; a float16 input is computed in float32), run as without autocast, bit for
    bit, and return their parameters' dtype."""
    torch.manual_seed(18)
    for cell in ("LSTM", "GRU", "RNN"):
        for dtype, autocast_dtype in ((torch.float64, BF16), (torch.float32, torch.float16)):
            layer = CELLS[cell][1](4, 6, dtype=dtype)
            x = torch.randn(5, 2, 4, dtype=dtype)
            plain = layer(x)[0]
            with torch.autocast("cpu", dtype=autocast_dtype):
                got = layer(x)[0]
                half = layer(x.to(autocast_dtype))[0] if dtype == torch.float32 else got
            assert got.dtype == half.dtype == dtype
            assert torch.equal(got, plain) and (half - plain).abs().max() < 1e-2
    cell = frt.LSTMCell(4, 6, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    plain = cell(x)
    with torch.autocast("cpu", dtype=BF16):
        assert all(torch.equal(a, b) for a, b in zip(cell(x), plain))


def test_zero_size_work_returns_at_once_like_torch_nn():
    """No sample (even with 10**9 steps: nothing is computed): as torch.nn. (No step, T = 0,
    torch.nn refuses: "Expected sequence length to be larger than 0"; ours returns h_n = h_0,
    as fusedrnn's NumPy layers do.)"""
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


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_with_projections_matches_torch(num_layers, bidirectional):
    """proj_size as torch.nn.LSTM's: the same state_dict keys, outputs and every gradient
    (the input, h_0, c_0 and weight_hr included), batch_first, a packed input."""
    torch.manual_seed(11)
    ref = torch.nn.LSTM(5, 12, num_layers=num_layers, bidirectional=bidirectional,
                        batch_first=True, proj_size=4, dtype=torch.float64)
    ours = frt.LSTM(5, 12, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=True, proj_size=4, dtype=torch.float64)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert "proj_size=4" in repr(ours)
    ours.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    h0 = torch.randn(num_layers * D, 3, 4, dtype=torch.float64)
    c0 = torch.randn(num_layers * D, 3, 12, dtype=torch.float64)
    results = []
    for layer in (ref, ours):
        xs, hs, cs = (t.clone().requires_grad_(True) for t in (x, h0, c0))
        out, (h_n, c_n) = layer(xs, (hs, cs))
        (out.sin().sum() + h_n.sum() + 2 * c_n.sum()).backward()
        results.append([out, h_n, c_n, xs.grad, hs.grad, cs.grad]
                       + [p.grad for p in layer.parameters()])
        layer.zero_grad()
    for a, b in zip(*results):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-10
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [7, 4, 1], batch_first=True,
                                                     enforce_sorted=False)
    a, b = ref(packed)[0], ours(packed)[0]
    assert (torch.nn.utils.rnn.pad_packed_sequence(a)[0]
            - torch.nn.utils.rnn.pad_packed_sequence(b)[0]).abs().max() < 1e-10


def test_lstm_with_projections_under_autocast():
    """Under torch.autocast("cpu", bfloat16) a projected LSTM runs the kernels' bfloat16
    products (fusedrnn.functional's precision="bfloat16" bits), in inference and in training's
    forward (its backward float32), gradients into every parameter."""
    torch.manual_seed(12)
    layer = frt.LSTM(6, 16, proj_size=5)
    x = torch.randn(7, 3, 6)
    w = [getattr(layer, n + "_l0").detach().numpy()
         for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]

    def functional(precision, training):
        return F.lstm_forward(x.numpy(), None, None, *w[:4], w_hr=w[4], precision=precision,
                              training=training)[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out, _ = layer(x)
    assert torch.equal(out, torch.from_numpy(functional("bfloat16", False)).to(out.dtype))
    assert not torch.equal(out, torch.from_numpy(functional("float32", False)).to(out.dtype))
    with torch.autocast("cpu", dtype=BF16):
        out, _ = layer(x.clone().requires_grad_(True))
    assert torch.equal(out.detach(), torch.from_numpy(functional("bfloat16", True)).to(out.dtype))
    assert not torch.equal(out.detach(),
                           torch.from_numpy(functional("float32", True)).to(out.dtype))
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


def test_inputs_on_another_device_than_the_parameters_are_named():
    """A ValueError naming the argument, and the RuntimeError torch.nn raises there."""
    layer, cell = frt.GRU(4, 8), frt.LSTMCell(4, 8)
    x = torch.randn(3, 2, 4, device="meta")
    with pytest.raises(ValueError, match=r"input: expected a tensor on cpu \(the parameters' "
                                         r"device\), got one on meta"):
        layer(x)
    with pytest.raises(RuntimeError, match=r"hx: expected a tensor on cpu"):
        layer(torch.randn(3, 2, 4), torch.zeros(1, 2, 8, device="meta"))
    with pytest.raises(ValueError, match=r"input: expected a tensor on cpu"):
        cell(torch.randn(2, 4, device="meta"))
    with pytest.raises(ValueError, match=r"cx: expected a tensor on cpu"):
        cell(torch.randn(2, 4), (torch.zeros(2, 8), torch.zeros(2, 8, device="meta")))


def test_sparse_and_nested_tensors_are_named():
    """A sparse or nested input or state is refused by name (the kernels read dense arrays);
    it failed inside torch's own calls with messages that named none of them."""
    layer, cell = frt.GRU(3, 4), frt.LSTMCell(3, 4)
    dense = r"expected a dense tensor \(layout torch\.strided\), got "
    with pytest.raises(TypeError, match="^input: " + dense + "layout torch.sparse_coo"):
        layer(torch.randn(5, 2, 3).to_sparse())
    with pytest.raises(TypeError, match="^hx: " + dense + "layout torch.sparse_coo"):
        layer(torch.randn(5, 2, 3), torch.randn(1, 2, 4).to_sparse())
    with pytest.raises(TypeError, match="^cx: " + dense):
        cell(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4).to_sparse()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (CSR and nested tensors: beta and prototype APIs)
        csr = torch.randn(2, 3).to_sparse_csr()
        nested = torch.nested.nested_tensor([torch.randn(5, 3), torch.randn(4, 3)])
    with pytest.raises(TypeError, match="^input: " + dense + "layout torch.sparse_csr"):
        cell(csr)
    for module in (layer, cell):
        with pytest.raises(TypeError, match="^input: " + dense + "a nested tensor"):
            module(nested)


class _TwoLayers(torch.nn.Module):
    """A model for torch.fx: a layer (tuple unpacking of its output) and two cells."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.cell, self.step = layer, frt.LSTMCell(4, 4), frt.GRUCell(4, 4)

    def forward(self, x, h, c):
        out, _ = self.layer(x)
        h1, c1 = self.cell(out[-1], (h, c))
        return self.step(h1, h) + c1


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_torch_fx_records_the_layers_as_modules(kind):
    """torch.fx.symbolic_trace records our layers and cells as single call_module nodes, as it
    records torch.nn's (its default tracer keeps torch.nn's modules as leaves; it traced into
    ours and failed on the Proxy), so FX tools (quantization, feature extraction) take a
    converted model; the traced module computes what the model does. Traced alone, a layer is
    refused by name (torch.nn's fails there too)."""
    torch.manual_seed(3)
    model = _TwoLayers(getattr(frt, kind)(3, 4, num_layers=2))
    traced = torch.fx.symbolic_trace(model)
    modules = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert modules == ["layer", "cell", "step"]
    args = (torch.randn(5, 2, 3), torch.randn(2, 4), torch.randn(2, 4))
    torch.testing.assert_close(traced(*args), model(*args), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"^torch\.fx\.symbolic_trace: a fusedrnn\.torch\."
                                         + kind + " is recorded as one node"):
        torch.fx.symbolic_trace(model.layer)


# ---------------------------------------------------------------------------- CUDA tensors
def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return frt.modules.cuda_unavailable()


_CUDA_SKIP = _cuda_skip_reason()
cuda = pytest.mark.skipif(_CUDA_SKIP is not None, reason=f"CUDA adapter: {_CUDA_SKIP}")


def _cuda_pair(cell, I, H, dtype=torch.float64, **kw):
    """(torch.nn layer on the CPU, ours on the GPU) with the same weights."""
    ref, ours = pair(cell, I, H, dtype, **kw)
    return ref, ours.cuda()


def _on_host(tensors):
    return [t.detach().cpu() for t in tensors]


@cuda
@pytest.mark.parametrize("cell, layers, bidirectional, batch_first, bias, dtype",
                         [c for c in CONFIGS if c[1] == 2 and c[2]])
def test_cuda_matches_torch_nn(cell, layers, bidirectional, batch_first, bias, dtype):
    """CUDA tensors in and out, every output, state and gradient against torch.nn on the CPU
    (the float32 GEMMs in full fp32: fusedrnn.cuda's default)."""
    torch.manual_seed(hash((cell, layers, bidirectional, batch_first, bias)) % 2**30)
    T, N, I, H = 5, 3, 5, 7
    ref, ours = _cuda_pair(cell, I, H, dtype, num_layers=layers, bidirectional=bidirectional,
                           batch_first=batch_first, bias=bias)
    x = torch.randn((N, T, I) if batch_first else (T, N, I), dtype=dtype)
    D = 2 if bidirectional else 1
    hx = torch.randn(layers * D, N, H, dtype=dtype)
    hx = (hx, torch.randn(layers * D, N, H, dtype=dtype)) if cell == "LSTM" else hx
    to_gpu = (lambda h: tuple(t.cuda() for t in h)) if cell == "LSTM" else (lambda h: h.cuda())
    for state in (None, hx):
        out_ref, grads_ref = run(ref, x, state)
        out_ours, grads_ours = run(ours, x.cuda(), None if state is None else to_gpu(state))
        assert all(t.is_cuda for t in out_ours + grads_ours)
        assert_close(_on_host(out_ours), out_ref, TOL[dtype], "outputs")
        assert_close(_on_host(grads_ours), grads_ref, TOL[dtype], "gradients")
        ref.zero_grad()
        ours.zero_grad()


@cuda
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_cuda_packed_sequence_and_cells(cell):
    torch.manual_seed(21)
    ref, ours = _cuda_pair(cell, 4, 6, num_layers=2, bidirectional=True)
    lengths = torch.tensor([3, 6, 1, 6, 4])
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    out_ref, grads_ref = run(ref, x, None, lengths)
    out_ours, grads_ours = run(ours, x.cuda(), None, lengths)
    assert_close(_on_host(out_ours), out_ref, 1e-10, "packed outputs")
    assert_close(_on_host(grads_ours), grads_ref, 1e-10, "packed gradients")
    name = cell + "Cell"
    ref_cell = getattr(torch.nn, name)(4, 6, dtype=torch.float64)
    our_cell = getattr(frt, name)(4, 6, dtype=torch.float64, device="cuda")
    our_cell.load_state_dict(ref_cell.state_dict())
    inp = torch.randn(3, 4, dtype=torch.float64)
    want = ref_cell(inp)
    got = our_cell(inp.cuda())
    for a, b in zip(got if cell == "LSTM" else (got,), want if cell == "LSTM" else (want,)):
        assert a.is_cuda and (a.cpu() - b).abs().max() < 1e-10


@cuda
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("training", [True, False])
def test_cuda_opcheck(cell, training):
    torch.library.opcheck(_ops.layer_forward, _op_args(cell, 2, training, device="cuda"))


@cuda
def test_cuda_torch_compile_fullgraph_and_convert():
    torch.manual_seed(22)
    model = Tagger(torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True,
                                 batch_first=True)).cuda()
    tokens = torch.randint(0, 20, (3, 7), device="cuda")
    before = model(tokens)
    frt.convert(model)
    assert isinstance(model.rnn, frt.LSTM) and model.rnn.weight_ih_l0.is_cuda
    assert (model(tokens) - before).abs().max() < 1e-4
    _assert_compiles_fullgraph(model, tokens)


@cuda
def test_cuda_runs_on_torchs_current_stream_with_torchs_memory():
    """On a side stream (non-blocking: nothing orders it with CuPy's default stream) the input
    is written after a long sleep; a kernel on any other stream would read it unwritten. The
    outputs come from torch's caching allocator (counted by torch.cuda.memory_allocated)."""
    torch.manual_seed(23)
    layer = frt.GRU(64, 128, device="cuda")
    x = torch.randn(50, 8, 64, device="cuda")
    with torch.no_grad():
        want, _ = layer(x)
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            late = torch.zeros_like(x)
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles
            late.copy_(x)
            before = torch.cuda.memory_allocated()
            got, h = layer(late)
            held = torch.cuda.memory_allocated() - before
        side.synchronize()
    assert torch.equal(got, want)
    assert held >= got.numel() * got.element_size() + h.numel() * h.element_size()


@cuda
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_cuda_autocast_bfloat16(cell):
    """Under torch.autocast("cuda", bfloat16) a float32 layer runs the CUDA kernels' bfloat16
    products (the functional call with precision="bfloat16" on the same CuPy arrays) and returns
    torch.nn's (cuDNN's) output dtype there."""
    torch.manual_seed(24)
    ref, ours = _cuda_pair(cell, 16, 32, torch.float32)
    ref = ref.cuda()
    x = torch.randn(9, 3, 16, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=BF16):
        out, _ = ours(x)
        theirs, _ = ref(x)
    with torch.no_grad():
        plain, _ = ours(x)
    assert out.dtype == theirs.dtype
    assert (out.float() - theirs.float()).abs().max() < 3e-2
    assert not torch.equal(out.float(), plain.to(out.dtype).float())


def test_inference_mode_batched_gradients_and_forward_ad():
    """enable_grad inside inference_mode runs as torch.nn's (it tried to save inference tensors
    for a backward); batched gradients (is_grads_batched, jacobian(vectorize=True)) and
    forward-mode AD are refused by name (torch's messages named an alias batching rule and a
    jvp to implement); the unbatched jacobian is torch.nn's."""
    torch.manual_seed(0)
    ours = frt.GRU(3, 4, dtype=torch.float64)
    theirs = torch.nn.GRU(3, 4, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.inference_mode(), torch.enable_grad():
        out, _ = ours(x)
        cell_out = frt.LSTMCell(3, 4, dtype=torch.float64)(x[0])[0]
    assert not out.requires_grad and not cell_out.requires_grad
    xx = x.clone().requires_grad_()
    y, _ = ours(xx)
    with pytest.raises(RuntimeError, match="is_grads_batched=True"):
        torch.autograd.grad(y, xx, torch.eye(y.numel(), dtype=y.dtype).view(-1, *y.shape),
                            is_grads_batched=True)
    with pytest.raises(RuntimeError, match="vmap over the recurrent layers"):
        torch.autograd.functional.jacobian(lambda t: ours(t)[0], x, vectorize=True)
    torch.testing.assert_close(torch.autograd.functional.jacobian(lambda t: ours(t)[0], x),
                               torch.autograd.functional.jacobian(lambda t: theirs(t)[0], x))
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        torch.func.jvp(lambda t: ours(t)[0], (x,), (torch.ones_like(x),))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_long_tail_packed_sequences_match_torch_nn(cell):
    """A PackedSequence of long-tail lengths in any order (most samples short): the layers run
    in the packed order (no reordering of the padded steps) and their inference as groups of
    similar lengths (fusedrnn.functional._length_groups; it took 1.3-2x torch.nn's time, now
    0.7-0.8x on a Zen 4 at B=64 T=400 H=128): outputs, final states and gradients are torch.nn's."""
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(5)
    ref, ours = pair(cell, 6, 8, num_layers=2, bidirectional=True)
    N, T = 40, 50
    lengths = torch.tensor(np.clip(np.round(np.exp(np.random.default_rng(5).normal(
        np.log(T / 6), 0.8, N))), 1, T).astype(int))
    lengths[7] = T
    x = torch.randn(T, N, 6, dtype=torch.float64)
    h0 = torch.randn(4, N, 8, dtype=torch.float64)
    hx = (h0, 0.5 * h0) if cell == "LSTM" else h0
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        got, want = ours(packed, hx), ref(packed, hx)
    torch.testing.assert_close(got[0].data, want[0].data, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    for module in (ours, ref):
        out, state = module(packed, hx)
        (out.data.square().sum() + (state[0] if cell == "LSTM" else state).sum()).backward()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_a_layer_weight_of_another_dtype_is_a_dtype_mismatch_naming_it(cell):
    """torch.func.functional_call with one weight of another dtype: the layers checked the
    first weight alone, and the kernel's plain TypeError "w_hh: ... (the dtype of x)" came."""
    layer = getattr(frt, cell)(3, 4, num_layers=2, dtype=torch.float64)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    params["weight_hh_l1"] = params["weight_hh_l1"].float()
    with pytest.raises(frt.DtypeMismatchError, match="^weight_hh_l1: expected dtype "
                                                     "torch.float64 .the dtype of weight_ih_l0."):
        torch.func.functional_call(layer, params, (torch.randn(5, 2, 3, dtype=torch.float64),))


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_cell_weight_of_another_dtype_is_a_dtype_mismatch_naming_it(cell):
    """weight_hh cast alone (.data = w.float()) gave the kernel's plain TypeError "w_hh: ...",
    which code catching torch.nn's RuntimeError missed."""
    layer = getattr(frt, cell)(4, 5, dtype=torch.float64)
    layer.weight_hh.data = layer.weight_hh.data.float()
    with pytest.raises(frt.DtypeMismatchError, match="^weight_hh: expected dtype torch.float64"):
        layer(torch.randn(3, 4, dtype=torch.float64))


def test_flags_are_bools_or_0_and_1():
    """A string flag is refused (torch.nn's "no" is true: batch_first="no" ran batch-first;
    convert(inplace="False") converted the user's module in place)."""
    with pytest.raises(TypeError, match="^batch_first: expected a bool"):
        frt.LSTM(3, 4, batch_first="no")
    with pytest.raises(TypeError, match="^bias: expected a bool"):
        frt.GRUCell(3, 4, bias="no")
    with pytest.raises(TypeError, match="^inplace: expected a bool"):
        frt.convert(torch.nn.Sequential(torch.nn.LSTM(3, 4)), inplace="False")
    assert frt.GRU(3, 4, bidirectional=1).bidirectional is True
    # a torch.nn layer built with a flag torch takes and we do not is left, with the warning
    model = torch.nn.Sequential(torch.nn.LSTM(3, 4, bidirectional=2), torch.nn.GRU(4, 4))
    with pytest.warns(UserWarning, match=r"0: bidirectional=2 \(the adapter takes a bool"):
        frt.convert(model)
    assert type(model[0]) is torch.nn.LSTM and isinstance(model[1], frt.GRU)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_a_weight_dropping_wrapper_sets_flat_weights_as_in_torch_nn(cell):
    """torch.nn's layers run on the list a wrapper gives `_flat_weights` (a WeightDrop sets a
    dropped W_hh there) until an attribute is set anew or `_init_flat_weights()` runs; the
    adapter's was a read-only property, and it had no `_init_flat_weights`."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cell)(3, 4, num_layers=2)
    ours = getattr(frt, cell)(3, 4, num_layers=2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3)
    got = []
    for m in (theirs, ours):
        torch.manual_seed(1)
        m._flat_weights = [torch.nn.functional.dropout(w, 0.5) if n == "weight_hh_l0" else w
                           for n, w in zip(m._flat_weights_names, m._flat_weights)]
        y = m(x)[0]
        y.sum().backward()
        dropped = y.detach()
        m._init_flat_weights()
        got.append((dropped, m(x)[0].detach(), m.weight_hh_l0.grad, m.weight_ih_l1.grad))
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[1][0], got[1][1])  # (the dropped weights were used)
    with pytest.raises(ValueError, match="^_flat_weights: expected 8 tensors"):
        ours._flat_weights = []
    ours._flat_weights = list(ours._flat_weights)
    ours.weight_hh_l0 = torch.nn.Parameter(torch.zeros(4 * 4 if cell == "LSTM" else 12, 4))
    assert ours._flat_weights[1] is ours.weight_hh_l0  # (an attribute set anew: re-read)
    # an item set in the list, a conversion, a copy, convert: each as torch.nn's list does
    ours.load_state_dict(theirs.state_dict())
    for m in (theirs, ours):
        m._flat_weights[1] = (m.weight_hh_l0 * 0.25).detach()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)
    copies = [copy.deepcopy(m) for m in (theirs, ours)]  # (read their attributes anew)
    torch.testing.assert_close(copies[1](x)[0], copies[0](x)[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(copies[1](x)[0], ours(x)[0])
    with pytest.warns(UserWarning, match="weights given to its _flat_weights list"):
        frt.convert(torch.nn.Sequential(theirs))
    for m in (theirs, ours):
        m.float()  # (torch.nn reads its attributes again)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)
