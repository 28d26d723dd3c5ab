"""fusedrnn.nn: Module/Parameter bookkeeping and the RNN/LSTM/GRU layers against the NumPy float64
reference stack (fusedrnn.reference.recurrent_forward/backward), dropout, and gradient checks by
central finite differences in float64."""
from collections import OrderedDict

import numpy as np
import pytest

import fusedrnn
from fusedrnn import nn
from conftest import FINITE_DIFFERENCE_EPS, TOLERANCES, relative_error

reference = fusedrnn.reference

T, N, I, H = 6, 4, 5, 7
MODES = {"rnn_tanh": ("RNN_TANH", "tanh"), "rnn_relu": ("RNN_RELU", "relu"),
         "lstm": ("LSTM", None), "gru": ("GRU", None)}


def make_layer(name, dtype=np.float64, **kw):
    mode, nonlinearity = MODES[name]
    if mode.startswith("RNN"):
        return nn.RNN(I, H, nonlinearity=nonlinearity, dtype=dtype, **kw)
    return getattr(nn, mode)(I, H, dtype=dtype, **kw)


def is_lstm(m):
    return isinstance(m, nn.LSTM)


def loss_weights(rng, m, batch_first=False, dtype=np.float64):
    """R (like out), R2 (like h_n) and, for LSTM, R3 (like c_n)."""
    D = m.num_directions
    R = rng.standard_normal((N, T, D * H) if batch_first else (T, N, D * H)).astype(dtype)
    R2 = rng.standard_normal((m.num_layers * D, N, H)).astype(dtype)
    R3 = rng.standard_normal((m.num_layers * D, N, H)).astype(dtype) if is_lstm(m) else None
    return R, R2, R3


def scalar_loss(m, x, hx, R, R2, R3, lengths=None, seed=None):
    if seed is not None:
        m.manual_seed(seed)
    out, state = m(x, hx, lengths=lengths)
    h_n, c_n = state if is_lstm(m) else (state, None)
    loss = np.sum(out * R) + np.sum(h_n * R2)
    if c_n is not None:
        loss += np.sum(c_n * R3)
    return float(loss)


def random_state(rng, m, dtype=np.float64):
    shape = (m.num_layers * m.num_directions, N, H)
    h0 = (0.5 * rng.standard_normal(shape)).astype(dtype)
    if is_lstm(m):
        return h0, (0.5 * rng.standard_normal(shape)).astype(dtype)
    return h0


# ---------------------------------------------------------------------------- vs the reference
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tn", "bf"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_layer_matches_reference_stack(rng, name, dtype, bidirectional, batch_first, with_lengths):
    m = make_layer(name, dtype, num_layers=2, bidirectional=bidirectional,
                   batch_first=batch_first, seed=1)
    mode, nonlinearity = MODES[name]
    x = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(dtype)
    hx = random_state(rng, m, dtype)
    lengths = np.array([T, 1, 0, 3]) if with_lengths else None
    R, R2, R3 = loss_weights(rng, m, batch_first, dtype)

    out, state = m(x, hx, lengths=lengths)
    dhx = (R2, R3) if is_lstm(m) else R2
    m.zero_grad()
    dx, dstate = m.backward(R, dhx)

    tn = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    params = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    ref_out, ref_h, ref_c, cache = reference.recurrent_forward(
        mode, tn(x), params, num_layers=2, bidirectional=bidirectional, hx=hx, lengths=lengths,
        nonlinearity=nonlinearity or "tanh")
    ref_dx, ref_dh0, ref_dc0, ref_grads = reference.recurrent_backward(cache, tn(R), R2, R3)

    tol = TOLERANCES["kernel_vs_reference"][dtype]
    h_n, c_n = state if is_lstm(m) else (state, None)
    dh0, dc0 = dstate if is_lstm(m) else (dstate, None)
    checks = [("out", out, tn(ref_out)), ("h_n", h_n, ref_h), ("dx", dx, tn(ref_dx)),
              ("dh0", dh0, ref_dh0)]
    if is_lstm(m):
        checks += [("c_n", c_n, ref_c), ("dc0", dc0, ref_dc0)]
    checks += [("grad." + k, p.grad, ref_grads[k]) for k, p in m.named_parameters()]
    assert sorted(ref_grads) == sorted(k for k, _ in m.named_parameters())
    for label, ours, ref in checks:
        assert ours.dtype == dtype, label
        assert ours.shape == ref.shape, label
        err = relative_error(ours, ref)
        assert err <= tol, f"{label}: relative error {err:.2e} > {tol:.0e}"
    if with_lengths:  # outputs past a sample's length are exactly 0
        out_tn = tn(out)
        assert np.all(out_tn[1:, 1] == 0) and np.all(out_tn[:, 2] == 0) and np.all(out_tn[3:, 3] == 0)


@pytest.mark.parametrize("variant", [dict(proj_size=3), dict(peephole=True),
                                     dict(proj_size=2, peephole=True)], ids=str)
def test_lstm_variants_match_the_reference_stack(rng, variant):
    """The stack reference computes the projection and the peepholes (it dropped weight_ph
    silently, 4.6e-2 off, and refused weight_hr with a shape error) and refuses what it does
    not compute (a LayerNorm-LSTM's norms)."""
    m = make_layer("lstm", num_layers=2, bidirectional=True, seed=3, **variant)
    S = variant.get("proj_size") or H
    x = rng.standard_normal((T, N, I))
    hx = (rng.standard_normal((4, N, S)), rng.standard_normal((4, N, H)))
    lengths = np.array([T, 1, 0, 3])
    R, R2, R3 = (rng.standard_normal(s) for s in ((T, N, 2 * S), (4, N, S), (4, N, H)))
    out, (h_n, c_n) = m(x, hx, lengths=lengths)
    dx, (dh0, dc0) = m.backward(R, (R2, R3))
    ref_out, ref_h, ref_c, cache = reference.recurrent_forward(
        "LSTM", x, m.state_dict(), num_layers=2, bidirectional=True, hx=hx, lengths=lengths)
    ref_dx, ref_dh0, ref_dc0, ref_grads = reference.recurrent_backward(cache, R, R2, R3)
    assert sorted(ref_grads) == sorted(k for k, _ in m.named_parameters())
    for ours, ref in [(out, ref_out), (h_n, ref_h), (c_n, ref_c), (dx, ref_dx), (dh0, ref_dh0),
                      (dc0, ref_dc0)] + [(p.grad, ref_grads[k]) for k, p in m.named_parameters()]:
        assert relative_error(ours, ref) <= 1e-12
    norms = nn.LayerNormLSTM(I, H, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"^params: unexpected \['ln_bias_c_l0', "):
        reference.recurrent_forward("LSTM", x, norms, num_layers=1, bidirectional=False)


@pytest.mark.parametrize("name", list(MODES))
def test_layer_gradients_match_finite_differences(rng, name):
    m = make_layer(name, num_layers=2, bidirectional=True, seed=2)
    x = rng.standard_normal((T, N, I))
    hx = random_state(rng, m)
    R, R2, R3 = loss_weights(rng, m)
    lengths = np.array([T, 2, 0, 5])
    m.zero_grad()
    m(x, hx, lengths=lengths)
    dx, dstate = m.backward(R, (R2, R3) if is_lstm(m) else R2)
    _check_finite_differences(rng, m, x, hx, dx, dstate, R, R2, R3, lengths, seed=None)


def _check_finite_differences(rng, m, x, hx, dx, dstate, R, R2, R3, lengths, seed):
    """Directional derivatives along random directions: the input, each initial state, each
    parameter, each against the analytic gradient."""
    eps, tol = FINITE_DIFFERENCE_EPS, TOLERANCES["reference_vs_finite_differences"]

    def loss():
        return scalar_loss(m, x, hx, R, R2, R3, lengths, seed)

    def directional(array, grad, label):
        v = rng.standard_normal(array.shape)
        saved = array.copy()
        array += eps * v
        plus = loss()
        array[...] = saved - eps * v
        minus = loss()
        array[...] = saved
        numeric = (plus - minus) / (2 * eps)
        analytic = float(np.sum(grad * v))
        err = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)
        assert err <= tol, f"{label}: numeric {numeric:.10g} vs analytic {analytic:.10g}"

    directional(x, dx, "dx")
    states = zip(hx, dstate, ("dh0", "dc0")) if is_lstm(m) else [(hx, dstate, "dh0")]
    for array, grad, label in states:
        directional(array, grad, label)
    for name, p in m.named_parameters():
        directional(p.data, p.grad, name)


def test_initial_state_gradient_is_zero_without_hx(rng):
    for name in MODES:
        m = make_layer(name, num_layers=2)
        x = rng.standard_normal((T, N, I))
        out, state = m(x)
        dx, dstate = m.backward(np.ones_like(out))
        for d in (dstate if is_lstm(m) else (dstate,)):
            assert d.shape == (2, N, H)
            assert np.all(d == 0)


def test_shapes_batch_first_and_unbatched():
    m = nn.GRU(I, H, num_layers=3, bidirectional=True, batch_first=True, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((N, T, I))
    out, h_n = m(x)
    assert out.shape == (N, T, 2 * H) and h_n.shape == (6, N, H)
    dx, dh0 = m.backward(np.ones_like(out), np.ones_like(h_n))
    assert dx.shape == x.shape and dh0.shape == h_n.shape
    batch_of_one, _ = m(x[:1])
    dx_batch_of_one, _ = m.backward(np.ones_like(batch_of_one))
    out1, h1 = m(x[0])  # unbatched: [T, I], batch_first does not apply
    assert out1.shape == (T, 2 * H) and h1.shape == (6, H)
    np.testing.assert_allclose(out1, batch_of_one[0], rtol=1e-12, atol=1e-12)
    dx1, dh01 = m.backward(np.ones_like(out1))
    assert dx1.shape == x[0].shape and dh01.shape == (6, H)
    np.testing.assert_allclose(dx1, dx_batch_of_one[0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- Module bookkeeping
class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(I, H, num_layers=2, dtype=np.float64, seed=0)
        self.decoder = nn.GRU(H, H, dtype=np.float64, seed=1)
        self.scale = nn.Parameter(np.ones(3))


def test_named_parameters_are_dotted_and_in_order():
    s = _Stack()
    names = [n for n, _ in s.named_parameters()]
    assert names[0] == "scale"  # own parameters first, then children in assignment order
    assert names[1:9] == [f"encoder.{w}_l{k}" for k in range(2)
                          for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert names[9:] == [f"decoder.{w}_l0" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert len(list(s.parameters())) == len(names)
    assert [n for n, _ in s.named_children()] == ["encoder", "decoder"]
    assert s.encoder.weight_ih_l1.shape == (4 * H, H)
    assert isinstance(s.encoder.weight_ih_l1, nn.Parameter)


def test_shared_parameter_listed_once_and_plain_attributes_not_registered():
    s = _Stack()
    s.alias = s.scale
    s.note = np.zeros(2)  # a plain array is an attribute, not a parameter
    names = [n for n, _ in s.named_parameters()]
    assert names.count("scale") == 1 and "alias" not in names and "note" not in names
    with pytest.raises(TypeError, match="scale"):
        s.scale = np.zeros(3)


def test_registration_and_attributes_agree():
    """Every way of registering, replacing and removing a parameter or submodule leaves the
    attribute and the two registries (named_parameters, named_children) telling the same story,
    through copies and pickles too."""
    import copy
    import pickle
    m = nn.Module()
    p, q, child = nn.Parameter(np.ones(2)), nn.Parameter(np.zeros(3)), nn.Linear(2, 2)
    m.w = p
    assert m.w is p and dict(m.named_parameters()) == {"w": p}
    m.w = None  # a registered parameter set to None stays registered, absent
    assert m.w is None and "w" in m._parameters and list(m.named_parameters()) == []
    m.register_parameter("w", q)
    assert m.w is q
    with pytest.raises(TypeError, match="^w: cannot assign Linear to a parameter"):
        m.w = child  # a parameter's name is not taken by a submodule, as torch refuses it
    assert m.w is q and dict(m.named_parameters()) == {"w": q}
    del m.w
    m.w = child  # (once the parameter is gone)
    assert m.w is child and "w" not in m._parameters and dict(m.named_children()) == {"w": child}
    m.add_module("w", None)
    assert m.w is None and list(m.named_children()) == []
    with pytest.raises(KeyError, match="attribute 'w' already exists"):
        m.register_parameter("w", p)  # a submodule's name (None too), as torch refuses it
    del m.w
    m.register_parameter("w", p)  # and back
    assert m.w is p and "w" not in m._modules and dict(m.named_parameters()) == {"w": p}
    with pytest.raises(KeyError, match="attribute 'w' already exists"):
        m.add_module("w", child)  # (a parameter was dropped for it)
    assert m.w is p and dict(m.named_parameters()) == {"w": p}
    del m.w
    assert not hasattr(m, "w") and list(m.named_parameters()) == []
    with pytest.raises(AttributeError, match="'Module' object has no attribute 'w'"):
        m.w
    m.w, m.sub = p, child
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert other.w is other._parameters["w"] and other.sub is other._modules["sub"]
        assert other.w is not p and np.array_equal(other.w.data, p.data)
        other.w = None
        assert other.w is None and m.w is p


def test_train_eval_propagate_to_children():
    s = _Stack()
    assert s.training and s.encoder.training
    assert s.eval() is s
    assert not s.training and not s.encoder.training and not s.decoder.training
    s.train()
    assert s.training and s.decoder.training
    assert s.train(np.bool_(False)).training is False  # (a NumPy bool, as the flags take)
    with pytest.raises(TypeError, match=r"mode: expected a bool \(True or False\), got int"):
        s.train(2)
    assert s.train(0).training is False  # (0 and 1 are flags, as a config gives them)


def test_state_dict_round_trip():
    a = make_layer("lstm", num_layers=2, bidirectional=True, seed=0)
    b = make_layer("lstm", num_layers=2, bidirectional=True, seed=1)
    state = a.state_dict()
    assert isinstance(state, OrderedDict)
    assert list(state) == [n for n, _ in a.named_parameters()]
    state["weight_ih_l0"][...] += 1  # a copy: the module is untouched
    assert not np.array_equal(a.weight_ih_l0.data, state["weight_ih_l0"])
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)
    x = np.random.default_rng(0).standard_normal((T, N, I))
    np.testing.assert_array_equal(a.eval()(x)[0], b.eval()(x)[0])


def test_torch_nn_s_positional_and_keyword_forms():
    """What a torch.nn user writes means the same here: LSTM's proj_size as the 8th positional
    argument, CrossEntropyLoss's first one (weight, not ignore_index: refused by name, not
    read as an index), state_dict(prefix=, keep_vars=)."""
    lstm = nn.LSTM(8, 16, 2, True, True, 0.0, True, 4)
    assert (lstm.num_layers, lstm.bias, lstm.batch_first, lstm.bidirectional,
            lstm.proj_size) == (2, True, True, True, 4)
    with pytest.raises(TypeError, match="^weight: class weights are not supported"):
        nn.CrossEntropyLoss(np.ones(3))
    assert nn.CrossEntropyLoss(None, 5).ignore_index == 5
    linear = nn.Linear(2, 3, seed=0)
    assert list(linear.state_dict(prefix="head.")) == ["head.weight", "head.bias"]
    kept = linear.state_dict(keep_vars=True)
    assert kept["weight"] is linear.weight and kept["bias"] is linear.bias
    with pytest.raises(TypeError, match="prefix: expected a str"):
        linear.state_dict(prefix=1)


def test_load_state_dict_casts_to_the_layer_dtype():
    a = make_layer("gru", np.float64, seed=0)
    b = make_layer("gru", np.float32, seed=1)
    b.load_state_dict(a.state_dict())
    for name, p in b.named_parameters():
        assert p.data.dtype == np.float32
        np.testing.assert_array_equal(p.data, a.state_dict()[name].astype(np.float32))


def test_load_state_dict_into_read_only_arrays_loads_every_key(tmp_path):
    """A parameter holding a read-only array (np.load's mmap_mode="r") is given a new one:
    the load failed half way there, two keys written and two not."""
    layer = make_layer("lstm", np.float32, seed=0)
    original = layer.bias_ih_l0.data.copy()
    np.save(tmp_path / "b.npy", original)
    layer.bias_ih_l0.data = np.load(tmp_path / "b.npy", mmap_mode="r")
    target = {k: v + 1 for k, v in layer.state_dict().items()}
    layer.load_state_dict(target)
    for name, p in layer.named_parameters():
        np.testing.assert_array_equal(p.data, target[name])
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), original)  # (the file as it was)


def test_load_state_dict_takes_nan_and_refuses_an_overflowing_cast():
    """NaN and infinity were refused, so a diverged model saved by `train --save` could not be
    loaded again (torch's load_state_dict takes them); float64 values past float32's range
    would become infinity: that is refused, naming the key."""
    b = make_layer("gru", np.float32, seed=1)
    state = b.state_dict()
    state["weight_ih_l0"][0, 0], state["bias_hh_l0"][1] = np.nan, -np.inf
    b.load_state_dict(state)
    assert np.isnan(b.weight_ih_l0.data[0, 0]) and b.bias_hh_l0.data[1] == -np.inf
    wide = {k: v.astype(np.float64) for k, v in make_layer("gru", seed=1).state_dict().items()}
    wide["weight_hh_l0"][0, 0] = 1e300
    with pytest.raises(ValueError, match=r"^state_dict\['weight_hh_l0'\]: values beyond the "
                                         r"range of float32 \(from float64\)"):
        b.load_state_dict(wide)
    assert np.isnan(b.weight_ih_l0.data[0, 0])  # (nothing changed)


def test_load_state_dict_errors_name_the_keys():
    m = make_layer("rnn_tanh", num_layers=2)
    state = m.state_dict()
    missing = dict(state)
    del missing["bias_hh_l1"]
    with pytest.raises(ValueError, match="missing keys.*bias_hh_l1"):
        m.load_state_dict(missing)
    extra = dict(state, weight_ih_l2=np.zeros((H, H)))
    with pytest.raises(ValueError, match="unexpected keys.*weight_ih_l2"):
        m.load_state_dict(extra)
    wrong = dict(state, weight_hh_l0=np.zeros((H, H + 1)))
    with pytest.raises(ValueError, match=r"weight_hh_l0.*expected shape \(7, 7\), got \(7, 8\)"):
        m.load_state_dict(wrong)
    bad = dict(state, bias_ih_l0=np.full(H, 5.0), bias_hh_l1=np.zeros(H + 1))
    with pytest.raises(ValueError, match=r"bias_hh_l1.*expected shape"):  # (the last key)
        m.load_state_dict(bad)
    # a failed load changes nothing
    for name, p in m.named_parameters():
        np.testing.assert_array_equal(p.data, state[name])
    result = m.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["bias_hh_l1"] and result.unexpected_keys == []
    result = m.load_state_dict(extra, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["weight_ih_l2"]


# ---------------------------------------------------------------------------- gradients
def test_zero_grad(rng):
    m = make_layer("lstm")
    assert all(p.grad is None for p in m.parameters())
    out, _ = m(rng.standard_normal((T, N, I)))
    m.backward(np.ones_like(out))
    assert all(p.grad is not None and p.grad.shape == p.data.shape for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_a_frozen_part_takes_no_gradient_and_its_inputs_still_get_theirs(rng):
    # torch's requires_grad_(False): grad stays None (optimizers and clip_grad_norm_ pass the
    # parameter by), the input gradient is unchanged, and unfreezing starts from nothing
    import copy
    import pickle
    m = make_layer("lstm", num_layers=2)
    x = rng.standard_normal((T, N, I))
    out, _ = m(x)
    R = rng.standard_normal(out.shape)
    dx_trained = m.backward(R)[0]
    one_step = {k: p.grad.copy() for k, p in m.named_parameters()}
    m.zero_grad()
    assert m.requires_grad_(False) is m
    assert not any(p.requires_grad for p in m.parameters())
    assert "requires_grad=False" in repr(m.weight_ih_l0)
    for _ in range(3):
        m(x)
        dx_frozen = m.backward(R)[0]
        np.testing.assert_array_equal(dx_frozen, dx_trained)
    assert all(p.grad is None for p in m.parameters())
    assert fusedrnn.optim.clip_grad_norm_(m.parameters(), 1.0) == 0.0
    for copied in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert not any(p.requires_grad for p in copied.parameters())
    m.weight_hh_l1.requires_grad = True  # one parameter thawed: it alone gets its gradient
    m(x)
    m.backward(R)
    np.testing.assert_array_equal(m.weight_hh_l1.grad, one_step["weight_hh_l1"])
    assert [k for k, p in m.named_parameters() if p.grad is not None] == ["weight_hh_l1"]
    emb = nn.Embedding(10, 3).requires_grad_(False)  # (it skips its gradient's work)
    emb(np.array([1, 2]))
    assert emb.backward(np.ones((2, 3), np.float32)) is None and emb.weight.grad is None
    with pytest.raises(TypeError,
                       match=r"requires_grad: expected a bool \(True or False\), got str"):
        m.requires_grad_("no")
    with pytest.raises(TypeError, match="requires_grad: expected a bool"):
        m.weight_hh_l1.requires_grad = 2


FROZEN_MODULES = {
    "lstm_projection_peephole": lambda: nn.LSTM(I, H, num_layers=2, proj_size=3, peephole=True,
                                                bidirectional=True, dtype=np.float64, seed=0),
    "layernorm_lstm": lambda: nn.LayerNormLSTM(I, H, num_layers=2, dtype=np.float64, seed=0),
    "gru_cell": lambda: nn.GRUCell(I, H, dtype=np.float64, seed=0),
    "lstm_cell_projection": lambda: nn.LSTMCell(I, H, proj_size=3, peephole=True,
                                                dtype=np.float64, seed=0),
    "layernorm_lstm_cell": lambda: nn.LayerNormLSTMCell(I, H, dtype=np.float64, seed=0)}


@pytest.mark.parametrize("name", list(FROZEN_MODULES))
def test_frozen_layers_and_cells_give_the_same_input_gradients(name, rng):
    # a frozen layer (of a stack) or cell: the kernels skip the parameters' gradients, the
    # input's come out bitwise the same; a stack's other layer still gets its own
    m = FROZEN_MODULES[name]()
    cell = "cell" in name
    x = rng.standard_normal((N, I) if cell else (T, N, I))

    def step():
        out = m(x)
        out = out[0] if isinstance(out, tuple) else out
        return m.backward(np.ones_like(out))[0]
    dx = step()
    trained = {k: p.grad.copy() for k, p in m.named_parameters()}
    m.zero_grad()
    frozen = [p for k, p in m.named_parameters() if cell or "_l0" in k]
    for p in frozen:
        p.requires_grad = False
    np.testing.assert_array_equal(step(), dx)
    for k, p in m.named_parameters():
        if p.requires_grad:
            np.testing.assert_array_equal(p.grad, trained[k], err_msg=k)
        else:
            assert p.grad is None, k
    assert len(frozen) < len(trained) or cell


@pytest.mark.parametrize("name", list(MODES))
def test_gradients_accumulate(rng, name):
    m = make_layer(name, num_layers=2, bidirectional=True)
    x1, x2 = rng.standard_normal((2, T, N, I))
    out, _ = m(x1)
    R = rng.standard_normal(out.shape)
    m.backward(R)
    once = {k: p.grad.copy() for k, p in m.named_parameters()}
    m.backward(R)  # backward twice on the same forward: twice the gradient
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[k], rtol=1e-12, atol=1e-14)
    m.zero_grad()
    m(x2)
    m.backward(R)
    second = {k: p.grad.copy() for k, p in m.named_parameters()}
    m.zero_grad()
    m(x1)
    m.backward(R)
    m(x2)
    m.backward(R)  # two forward/backward pairs: the sum
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, once[k] + second[k], rtol=1e-12, atol=1e-14)


def test_backward_after_eval_forward_raises(rng):
    m = make_layer("gru")
    x = rng.standard_normal((T, N, I))
    with pytest.raises(RuntimeError, match="backward called before a training-mode forward"):
        m.backward(np.zeros((T, N, H)))
    out, _ = m(x)
    m.eval()
    m(x)
    # (the message said no training-mode forward had been made: it had, and is let go)
    with pytest.raises(RuntimeError, match="^backward: an eval-mode forward came after the "
                                           "latest training-mode forward and let its saved"):
        m.backward(np.ones_like(out))


def test_a_move_that_moves_nothing_keeps_the_saved_forward(rng):
    """.cpu() on a CPU layer, or a refused .to(), dropped the saved forward (backward then said
    no training forward had been made); a Sequential's .cpu() did not (it never reached the
    layer's own to)."""
    m = make_layer("lstm")
    x = rng.standard_normal((T, N, I))
    out, _ = m(x)
    m.cpu()
    with pytest.raises(ValueError, match="device"):
        m.to("gpu")
    dx, _ = m.backward(np.ones_like(out))
    assert dx.shape == x.shape
    stack = nn.Sequential(m)
    out = stack(x)
    stack.cpu()
    assert stack.backward(np.ones_like(out)).shape == x.shape


@pytest.mark.parametrize("module", ["lstm", "cell", "linear"])
@pytest.mark.parametrize("write", ["step", "load_state_dict", "new data", "reset"])
def test_backward_after_its_parameters_were_written_raises(rng, module, write):
    """An optimizer step (or load_state_dict, or a new data array) between a forward and its
    backward mixed the new weights with the forward's activations (dx 0.54 off, silently);
    torch raises there, and so does this now. Reading ``data`` in between is no write."""
    m = {"lstm": lambda: make_layer("lstm"), "cell": lambda: nn.LSTMCell(I, H, seed=0),
         "linear": lambda: nn.Linear(I, H, seed=0)}[module]()
    x = rng.standard_normal((T, N, I) if module == "lstm" else (N, I)).astype(m.dtype)
    out = m(x)
    out = out[0] if isinstance(out, tuple) else out
    float(sum(p.data.sum() for p in m.parameters()))  # a read
    m.backward(np.ones_like(out))
    m(x)
    if write == "step":
        fusedrnn.optim.SGD(m.parameters(), lr=0.1).step()
    elif write == "load_state_dict":
        m.load_state_dict(m.state_dict())
    elif write == "reset":
        m.reset_parameters(seed=1)
    else:
        first = next(iter(m.parameters()))
        first.data = first.data.copy()
    with pytest.raises(RuntimeError, match=r"\.backward: a parameter was written \(an optimizer "
                                           r"step, load_state_dict or a new data array\) after "
                                           r"the forward"):
        m.backward(np.ones_like(out))
    m(x)
    m.backward(np.ones_like(out))  # a new forward: fine
    for p in m.parameters():  # a Parameter unpickled from a release before the stamp
        del p._written
    m(x)
    m.backward(np.ones_like(out))


# ---------------------------------------------------------------------------- dropout
def test_dropout_seeded_reproducible(rng):
    x = rng.standard_normal((T, N, I))
    a = make_layer("lstm", num_layers=3, dropout=0.5, seed=11)
    b = make_layer("lstm", num_layers=3, dropout=0.5, seed=11)
    out_a, _ = a(x)
    out_b, _ = b(x)
    np.testing.assert_array_equal(out_a, out_b)
    a.manual_seed(5)
    first, _ = a(x)
    a.manual_seed(5)
    again, _ = a(x)
    np.testing.assert_array_equal(first, again)
    other, _ = a(x)  # the generator moved on: new masks
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("make", [
    lambda seed: nn.LSTM(3, 4, seed=seed), lambda seed: nn.LSTMCell(3, 4, seed=seed),
    lambda seed: nn.Linear(3, 4, seed=seed), lambda seed: nn.Embedding(5, 3, seed=seed)])
def test_reset_parameters_draws_from_the_module_s_own_seeded_generator(make):
    """Cells, Linear and Embedding drew a reset without a seed from fresh entropy (the layers
    from their own Generator), so a seeded model could not be initialised again reproducibly."""
    a, b = make(7), make(7)
    a.reset_parameters()
    b.reset_parameters()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert not np.array_equal(next(a.parameters()).data, next(make(7).parameters()).data)


@pytest.mark.parametrize("make", [lambda seed: nn.GRU(4, 8, num_layers=2, dropout=0.5, seed=seed),
                                  lambda seed: nn.Dropout(0.5, seed=seed)])
def test_a_copy_of_an_unseeded_module_draws_its_own_masks(make):
    """A deep copy drew the very masks of the original (its Generator copied with its state):
    an ensemble of copies had one dropout noise. Unseeded copies now draw from fresh entropy,
    as torch's (one global stream); seeded ones go on with the original's numbers."""
    import copy
    x = np.ones((5, 3, 4), np.float32)

    def outs(m):  # the original's output and its copy's
        c = copy.deepcopy(m)
        return [y[0] if isinstance(y, tuple) else y for y in (m(x), c(x))]

    assert not np.array_equal(*outs(make(None)))
    np.testing.assert_array_equal(*outs(make(3)))
    m = make(None)
    m.manual_seed(4)  # (Dropout has it too now)
    np.testing.assert_array_equal(*outs(m))


@pytest.mark.parametrize("name", list(MODES))
def test_dropout_identity_in_eval_and_active_in_train(rng, name):
    x = rng.standard_normal((T, N, I))
    with_dropout = make_layer(name, num_layers=2, dropout=0.4, bidirectional=True, seed=3)
    without = make_layer(name, num_layers=2, dropout=0.0, bidirectional=True, seed=4)
    without.load_state_dict(with_dropout.state_dict())
    reference_out, _ = without(x)
    train_out, _ = with_dropout(x)
    assert not np.allclose(train_out, reference_out)
    eval_out, _ = with_dropout.eval()(x)
    np.testing.assert_array_equal(eval_out, reference_out)
    # the first layer sees no dropout, the last layer's output is never dropped:
    single = make_layer(name, num_layers=1, bidirectional=True)
    with pytest.warns(UserWarning, match="dropout"):
        single_drop = make_layer(name, num_layers=1, dropout=0.9, bidirectional=True)
    single_drop.load_state_dict(single.state_dict())
    np.testing.assert_array_equal(single(x)[0], single_drop(x)[0])


def test_dropout_one_zeroes_upper_layer_input(rng):
    m = make_layer("rnn_tanh", num_layers=2, dropout=1.0, bias=False)
    out, h_n = m(rng.standard_normal((T, N, I)))
    assert np.all(out == 0) and np.all(h_n[1] == 0)  # layer 1 saw zeros, no bias, h0 = 0


def test_dropout_scales_the_kept_units_by_1_over_1_minus_p(rng):
    """Between layers a unit is dropped or scaled by 1/(1-p) (a mask without the rescale fails):
    layer 1 of a ReLU RNN made the identity gives out = mask * layer 0's output."""
    p = 0.5
    m = make_layer("rnn_relu", num_layers=2, dropout=p, bias=False, seed=0)
    m.weight_ih_l1.data = np.eye(H)  # layer 1 passes its (dropped) non-negative input through
    m.weight_hh_l1.data = np.zeros((H, H))
    one = make_layer("rnn_relu", bias=False)
    one.weight_ih_l0.data, one.weight_hh_l0.data = m.weight_ih_l0.data, m.weight_hh_l0.data
    x = rng.standard_normal((T, N, I))
    y0, out = one(x)[0], m(x)[0]
    kept = y0 > 1e-6
    ratio = out[kept] / y0[kept]
    dropped = np.isclose(ratio, 0)
    assert np.all(dropped | np.isclose(ratio, 1 / (1 - p))), np.unique(ratio.round(6))
    assert 0.3 < dropped.mean() < 0.7


@pytest.mark.parametrize("name", list(MODES))
def test_backward_through_dropout_matches_finite_differences(rng, name):
    m = make_layer(name, num_layers=3, bidirectional=True, dropout=0.3, seed=8)
    x = rng.standard_normal((T, N, I))
    hx = random_state(rng, m)
    R, R2, R3 = loss_weights(rng, m)
    m.zero_grad()
    m.manual_seed(123)
    m(x, hx)
    dx, dstate = m.backward(R, (R2, R3) if is_lstm(m) else R2)
    _check_finite_differences(rng, m, x, hx, dx, dstate, R, R2, R3, None, seed=123)


def test_constructor_validation():
    with pytest.raises(ValueError, match="dropout"):
        nn.LSTM(I, H, num_layers=2, dropout=1.5)
    with pytest.raises(ValueError, match="dropout"):
        nn.LSTM(I, H, num_layers=2, dropout=-0.1)
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size"):
        nn.GRU(I, 0)
    with pytest.raises(TypeError, match="dtype"):
        nn.GRU(I, H, dtype=np.int32)
    assert "bidirectional=True" in repr(nn.GRU(I, H, bidirectional=True))


def test_lstm_state_gradients_may_be_partly_none(rng):
    m = make_layer("lstm", num_layers=2, bidirectional=True)
    x = rng.standard_normal((T, N, I))
    out, (h_n, c_n) = m(x)
    R, R2, R3 = loss_weights(rng, m)
    full = m.backward(R, (np.zeros_like(h_n), R3))
    partial = m.backward(R, (None, R3))
    np.testing.assert_array_equal(full[0], partial[0])
    none = m.backward(R, None)
    zeros = m.backward(R, (np.zeros_like(h_n), np.zeros_like(c_n)))
    np.testing.assert_array_equal(none[0], zeros[0])


def test_deepcopy_gives_an_independent_layer(rng):
    import copy
    m = make_layer("gru", num_layers=2)
    clone = copy.deepcopy(m)
    x = rng.standard_normal((T, N, I))
    np.testing.assert_array_equal(m(x)[0], clone(x)[0])
    clone.weight_hh_l0.data[...] = 0
    assert not np.array_equal(m(x)[0], clone(x)[0])
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in m.named_parameters()]


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layers_on_a_backend_without_the_grouped_kernels(rng, monkeypatch, name, bidirectional):
    """The CUDA kernels have no recurrent_forward_many/_stack or recurrent_backward_many: the
    layers then call the kernels one by one (layer after layer, direction after direction), with
    the results of the grouped calls."""
    from fusedrnn import _C, functional

    class OneByOne:  # the single-call kernels only
        recurrent_forward = staticmethod(_C.recurrent_forward)
        recurrent_backward = staticmethod(_C.recurrent_backward)

    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[name]
    m = cls(6, 16, num_layers=2, bidirectional=bidirectional, seed=3)
    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    dout = rng.standard_normal((7, 3, 16 * (2 if bidirectional else 1))).astype(np.float32)

    def run():
        m.zero_grad()
        out, _ = m(x)
        dx, _ = m.backward(dout)
        return [out, dx] + [p.grad.copy() for p in m.parameters()]

    grouped = run()
    monkeypatch.setattr(functional, "_backend", lambda a: (np, OneByOne))
    for a, b in zip(run(), grouped):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- long-tail lengths
def _long_tail(rng, N, T):
    lengths = np.clip(np.round(np.exp(rng.normal(np.log(T / 6), 0.8, N))), 0, T).astype(int)
    lengths[0], lengths[3] = T, 0
    return lengths


def test_length_groups_cover_every_sample_once_by_length():
    """A long-tail batch splits into groups of similar lengths, each cut to its longest; even
    lengths stay one call, cut where the longest is well short of T."""
    from fusedrnn import functional as F
    rng = np.random.default_rng(0)
    lengths = _long_tail(rng, 64, 400)
    groups = F._length_groups(lengths, 400)
    assert 2 <= len(groups) <= F.MAX_LENGTH_GROUPS
    assert sorted(np.concatenate([idx for idx, _ in groups]).tolist()) == list(range(64))
    assert [steps for _, steps in groups] == [lengths[idx].max() for idx, _ in groups]
    assert groups[0][1] == 400 and all(a[1] >= b[1] for a, b in zip(groups, groups[1:]))
    assert F._length_groups(None, 10) is None
    assert F._length_groups(rng.integers(1, 101, 32), 100) is None  # (even lengths)
    (everyone, steps), = F._length_groups(np.array([3, 2, 0, 1]), 10)
    assert everyone == slice(None) and steps == 3


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_long_tail_inference_in_groups_gives_the_one_call_outputs(rng, monkeypatch, name, dtype):
    """An inference call of long-tail lengths runs as groups of samples (2-4.6x faster on a
    Zen 4: LSTM B=64 T=400 H=128, a quarter of it real steps, 32.5 -> 14.4 ms): the outputs and
    final states of one call, NaN in the padding read by none; a training call runs whole (its
    backward's sums cover the padding, as the reference's)."""
    from fusedrnn import functional as F
    N, T = 64, 60
    m = make_layer(name, dtype, num_layers=2, bidirectional=True, seed=4)
    lengths = _long_tail(rng, N, T)
    assert len(F._length_groups(lengths, T)) > 1
    x = rng.standard_normal((T, N, I)).astype(dtype)
    x[T - 5:, 5] = np.nan  # padding of a short sample
    h0 = rng.standard_normal((4, N, H)).astype(dtype)
    hx = (h0, 0.5 * h0) if is_lstm(m) else h0
    m.eval()
    out, state = m(x, hx, lengths=lengths)
    monkeypatch.setattr(F, "MIN_GROUP_SAVING", 2.0)  # (never worth it: one call)
    whole_out, whole_state = m(x, hx, lengths=lengths)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.isfinite(out).all() and np.abs(out - whole_out).max() <= tol
    for a, b in zip(state if is_lstm(m) else (state,),
                    whole_state if is_lstm(m) else (whole_state,)):
        assert np.abs(a - b).max() <= tol
    monkeypatch.setattr(F, "MIN_GROUP_SAVING", 0.25)
    monkeypatch.setattr(F, "_run_groups", None)  # a training call must not reach it
    m.train()
    m(np.nan_to_num(x), hx, lengths=lengths)


def test_tied_parameters_and_shared_modules_as_torch_nn_keys_them():
    """A state dict keys a tied parameter (and a shared submodule's) under every name, as
    torch.nn's does, so that one loads into the other (the second name was dropped); the
    parameters and children list each once."""
    torch = pytest.importorskip("torch")
    ours, theirs = nn.Module(), torch.nn.Module()
    ours.a, ours.b = nn.Linear(3, 2), nn.Linear(3, 2)
    ours.b.weight = ours.a.weight
    ours.c = ours.a
    theirs.a, theirs.b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    theirs.b.weight = theirs.a.weight
    theirs.c = theirs.a
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.load_state_dict(theirs.state_dict())
    assert len(list(ours.parameters())) == len(list(theirs.parameters())) == 3
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]


def test_names_that_would_hide_something_are_refused():
    m = nn.Linear(2, 2)
    for name in ("", "a.b", "forward", "in_features"):
        with pytest.raises(KeyError, match="name: "):
            m.add_module(name, nn.Linear(2, 2))
        with pytest.raises(KeyError, match="name: "):
            m.register_parameter(name, nn.Parameter(np.zeros(1)))
    m.register_parameter("weight", nn.Parameter(np.zeros((2, 2), np.float32)))  # (its own: replaced)


class _Wrap(nn.Module):
    """A user's module around another (a place of its own in a Sequential)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

    def backward(self, dout):
        return self.inner.backward(dout)


class _WrapByForward(_Wrap):
    """One that runs its module by ``.forward`` (not counted by ``__call__``)."""

    def forward(self, x):
        return self.inner.forward(x)


def test_sequential_slices_appends_and_refuses_one_module_twice_in_training():
    """A slice keeps the children's names, as torch.nn's (its state_dict keys are the whole's);
    a module placed twice is refused in training through nested Sequentials too (a nested
    place trained with the other place's saved forward: weight gradients 0.3-0.6 off), and
    through a user's module around it (2.5 off); inside one child, its uses are its own; a
    module another child only holds (a tied output layer) is not refused."""
    lin = nn.Linear(3, 3, seed=0)
    s = nn.Sequential(nn.Linear(3, 3, seed=1), lin)
    assert isinstance(s[1:], nn.Sequential) and s[1:][0] is lin
    assert list(s[1:].state_dict()) == ["1.weight", "1.bias"]
    assert list(nn.Sequential(OrderedDict(enc=lin)).state_dict()) == ["enc.weight", "enc.bias"]
    assert len(s.append(nn.Identity())) == 3
    tail = s[1:].append(nn.Identity())  # names 1, 2: the next is 3, not a second 2
    assert list(tail._modules) == ["1", "2", "3"]
    x = np.ones((2, 3), np.float32)
    for twice, where in [(nn.Sequential(lin, lin), "at 0 is at 1 too"),
                         (nn.Sequential(lin, nn.Sequential(lin)), "at 0 is at 1.0 too"),
                         (nn.Sequential(nn.Sequential(lin), nn.Sequential(lin)),
                          "at 0.0 is at 1.0 too"),
                         (nn.Sequential(lin, _Wrap(lin)), "at 0 is at 1.inner too"),
                         (nn.Sequential(lin, _WrapByForward(lin)), "at 0 is at 1.inner too"),
                         (nn.Sequential(_Wrap(nn.Sequential(lin)), nn.Sequential(lin)),
                          "at 0.inner.0 is at 1.0 too")]:
        twice.eval()(x)  # (inference keeps nothing: fine)
        with pytest.raises(ValueError, match=f"the module {where}"):
            twice.train()(x)
    aliased = _Wrap(lin)
    aliased.alias = lin  # one place, two names: the wrapper's own business
    nn.Sequential(aliased, nn.Linear(3, 3, seed=1)).train()(x)
    # a child holding another's module without running it (an output layer tied to the
    # embedding) trains: only a second run in one forward is refused
    held = _Wrap(nn.Identity())
    held.tied = lin
    tied = nn.Sequential(lin, held)
    tied.train()(x)
    tied.backward(np.ones((2, 3), np.float32))
    assert lin.weight.grad is not None


def _container_edits(lib):
    """The same edits on a ModuleList and a ModuleDict of ``lib`` (fusedrnn.nn or torch.nn);
    returns the state_dict keys and child names after each step."""
    seen = []

    def lin(k):
        return lib.Linear(2, 1 + k)

    class Owner(lib.Module):
        def __init__(self):
            super().__init__()
            self.blocks = lib.ModuleList([lin(0), lin(1)])
            self.heads = lib.ModuleDict({"a": lin(2)})

    m = Owner()
    edits = [lambda: m.blocks.append(lin(3)), lambda: m.blocks.insert(1, lin(4)),
             lambda: m.blocks.insert(3, lin(5)), lambda: m.blocks.pop(0),
             lambda: m.blocks.__delitem__(slice(0, 2)), lambda: m.blocks.extend([lin(6)]),
             lambda: m.blocks.__setitem__(-1, lin(7)), lambda: m.blocks.__iadd__([lin(8)]),
             lambda: m.heads.update([("b", lin(9))]), lambda: m.heads.__setitem__("a", lin(10)),
             lambda: m.heads.update({"c": lin(11)}), lambda: m.heads.pop("b"),
             lambda: m.blocks.extend(lib.Sequential(lin(12), lin(13))),
             lambda: m.blocks.__iadd__(lib.ModuleList(lin(k) for k in (14, 15))),
             lambda: m.blocks.__setitem__(True, lin(16)),
             lambda: setattr(m, "blocks", lib.ModuleList(m.blocks))]
    for edit in edits:
        edit()
        seen.append((list(m.state_dict()),
                     [list(m.blocks[i].state_dict()["weight"].shape) for i in range(len(m.blocks))],
                     [k for k in m.heads], [n for n, _ in m.named_modules()]))
    sliced = m.blocks[1:]
    seen.append(([n for n, _ in sliced.named_children()], len(m.blocks + sliced),
                 len(m.blocks + [lin(0)]), type(sliced).__name__,
                 "c" in m.heads, list(m.heads.keys())))
    m.heads.clear()
    seen.append(list(m.state_dict()))
    return seen


def test_module_list_and_dict_follow_torch():
    """ModuleList and ModuleDict register their modules as torch.nn's do: the same state_dict
    keys and names after appends, inserts, deletes that renumber, slices, pops and updates; a
    state_dict moves to torch's. (A negative insert is list.insert's here; torch's raises.)"""
    ours = _container_edits(nn)
    class Blocks(nn.ModuleList):
        pass
    assert type(Blocks([nn.Identity()] * 2)[1:]) is Blocks  # (a slice keeps the class)
    assert list(nn.ModuleList([None, nn.Identity()])._modules) == ["0", "1"]  # (None, as torch)
    tail = nn.ModuleList([nn.Identity(), nn.Linear(1, 1)])
    tail.insert(-1, nn.Linear(2, 2))
    assert [type(m).__name__ for m in tail] == ["Identity", "Linear", "Linear"]
    assert tail[1].in_features == 2
    torch = pytest.importorskip("torch")
    assert ours == _container_edits(torch.nn)
    blocks = nn.ModuleList([nn.Linear(2, 3, seed=0), nn.LSTM(3, 4, seed=0)])
    theirs = torch.nn.ModuleList([torch.nn.Linear(2, 3), torch.nn.LSTM(3, 4)])
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in blocks.state_dict().items()})
    assert all(np.array_equal(v.numpy(), blocks.state_dict()[k])
               for k, v in theirs.state_dict().items())


def test_module_list_and_dict_refuse_what_torch_refuses():
    blocks = nn.ModuleList([nn.Identity()])
    with pytest.raises(IndexError, match="index: 1 is out of range for 1 modules"):
        blocks[1]
    with pytest.raises(TypeError, match="index: expected an int"):
        blocks["0"]
    with pytest.raises(TypeError, match=r"modules\[1\]: expected a Module, got int"):
        blocks.extend([nn.Identity(), 3])
    assert len(blocks) == 1  # (checked before any is added)
    with pytest.raises(TypeError, match="modules: expected an iterable of Modules"):
        blocks.extend(nn.Identity())
    heads = nn.ModuleDict()
    with pytest.raises(KeyError, match="attribute 'keys' already exists"):
        heads["keys"] = nn.Identity()
    with pytest.raises(KeyError, match="name: "):
        heads.update({"ok": nn.Identity(), "a.b": nn.Identity()})
    assert len(heads) == 0
    with pytest.raises(ValueError, match=r"modules\[0\]: expected a \(key, module\) pair"):
        heads.update([("a", nn.Identity(), 1)])
    with pytest.raises(NotImplementedError, match="ModuleList does not define forward"):
        blocks(np.zeros(1))
    with pytest.raises(KeyError):
        del heads["missing"]


def test_module_list_trains_inside_a_module_of_ones_own(rng):
    """The layers of a ModuleList are the owner's: their gradients reach the optimizer."""

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(3, 3, seed=k, dtype=np.float64)
                                        for k in range(2))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

        def backward(self, d):
            for layer in reversed(self.layers):
                d = layer.backward(d)
            return d

    m, x = Stack(), rng.standard_normal((4, 3))
    m(x)
    m.backward(np.ones((4, 3)))
    assert [n for n, _ in m.named_parameters()] == ["layers.0.weight", "layers.0.bias",
                                                    "layers.1.weight", "layers.1.bias"]
    w0, w1 = (l.weight.data for l in m.layers)
    np.testing.assert_allclose(m.layers[1].weight.grad, np.ones((3, 4)) @ (x @ w0.T + m.layers[0].bias.data))
    np.testing.assert_allclose(m.layers[0].weight.grad, (np.ones((4, 3)) @ w1).T @ x)


@pytest.mark.parametrize("cell", ["RNNCell", "LSTMCell", "GRUCell"])
def test_what_a_step_keeps_for_backward_is_its_own_copy(rng, cell):
    """A step loop that refills one buffer for x and one for the state: the backward used the
    buffers' last contents (weight_ih.grad 0.6-4.2 off; torch would raise). Training-mode steps,
    Linear and Embedding keep copies (the recurrent layers keep x itself: the README says)."""
    xs = rng.standard_normal((3, 2, 3))

    def gradients(reuse):
        c = getattr(nn, cell)(3, 4, seed=0, dtype=np.float64)
        lstm = cell == "LSTMCell"
        xbuf, hbuf, cbuf = np.empty((2, 3)), np.zeros((2, 4)), np.zeros((2, 4))
        state = (hbuf, cbuf) if lstm else hbuf
        for s in range(3):
            xbuf[...] = xs[s]
            out = c(xbuf if reuse else xs[s].copy(), state)
            if reuse:
                hbuf[...], cbuf[...] = (out if lstm else (out, 0))
            else:
                state = out
        d = None
        for s in range(3):
            g = np.ones((2, 4))
            if lstm:
                _, d = c.backward(g, None) if d is None else c.backward(g + d[0], d[1])
            else:
                _, d = c.backward(g if d is None else g + d)
        return [p.grad for p in c.parameters()]

    for a, b in zip(gradients(True), gradients(False)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)

    lin, emb = nn.Linear(3, 2, seed=0, dtype=np.float64), nn.Embedding(5, 2, seed=0)
    x, idx = rng.standard_normal((4, 3)), np.array([1, 2, 2])
    lin(x), emb(idx)
    expected = np.ones((4, 2)).T @ x
    x[...] = 7.0
    idx[...] = 4
    lin.backward(np.ones((4, 2)))
    emb.backward(np.ones((3, 2), np.float32))
    np.testing.assert_allclose(lin.weight.grad, expected, rtol=1e-12)
    np.testing.assert_array_equal(emb.weight.grad[:, 0], [0, 1, 2, 0, 0])


def test_a_decode_gives_each_module_its_own_mode_back():
    from fusedrnn.nn import Seq2Seq
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0)
    model.train()
    model.encoder.eval()  # a frozen encoder
    model.greedy_decode(np.array([[3, 4, 5]]), None, max_len=3)
    assert model.training and not model.encoder.training and model.decoder.training


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [H, 16])  # (16: the SIMD units' path, whole vectors)
def test_relu_backward_gives_an_inactive_unit_no_gradient_whatever_arrives(rng, dtype, H):
    """dh * {0, 1} made an inf gradient at a unit relu had switched off NaN (inf * 0), and W_hh
    spread it to every gradient; torch selects, as the kernels and the reference now do."""
    F, R = fusedrnn.functional, fusedrnn.reference
    x = rng.standard_normal((T, N, I)).astype(dtype)
    w = [rng.uniform(-0.5, 0.5, s).astype(dtype) for s in ((H, I), (H, H), (H,), (H,))]
    for forward, backward in ((F.rnn_forward, F.rnn_backward), (R.rnn_forward, R.rnn_backward)):
        y, _, ctx = forward(x, None, *w, nonlinearity="relu", training=True)
        assert (y == 0).any() and (y > 0).any()
        finite = backward(ctx, np.where(y == 0, 0.0, 1.0).astype(dtype), None)
        grads = backward(ctx, np.where(y == 0, np.inf, 1.0).astype(dtype), None)
        for got, want in zip(grads, finite):
            np.testing.assert_array_equal(got, want)


def test_train_calls_each_child_s_own_train_and_apply_visits_children_first():
    # a child's train() override (one keeping a frozen part in eval mode) was never called:
    # the flags were set on every module directly; torch calls each child's train()
    torch = pytest.importorskip("torch")
    made = {}
    for lib in (nn, torch.nn):
        class Frozen(lib.Module):
            def __init__(self):
                super().__init__()
                self.lin = lib.Linear(2, 2)

            def train(self, mode=True):
                super().train(mode)
                self.lin.train(False)
                return self

        class Outer(lib.Module):
            def __init__(self):
                super().__init__()
                self.f, self.head = Frozen(), lib.Linear(2, 1)
        o = Outer()
        assert o.train() is o
        made[lib] = [o.training, o.f.training, o.f.lin.training, o.head.training]
        order = []
        assert o.apply(lambda m: order.append(type(m).__name__)) is o
        made[lib] += order
    assert made[nn] == made[torch.nn] == [True, True, False, True, "Linear", "Frozen", "Linear",
                                          "Outer"]


def test_a_parameter_reads_as_its_array_and_plain_attributes_may_precede_init():
    p = nn.Parameter(np.arange(6, dtype=np.float32).reshape(2, 3))
    version = p.version
    assert np.asarray(p) is p._data and p.version != version  # (a view: data handed out)
    assert np.sum(p) == 15 and np.array_equal(p, p._data) and np.zeros_like(p).shape == (2, 3)
    assert np.asarray(p, dtype=np.float64).dtype == np.float64
    assert np.array(p, copy=True) is not p._data

    class Net(nn.Module):
        def __init__(self, n):
            self.n = n  # (before Module.__init__, as torch allows a plain value)
            super().__init__()
            self.lin = nn.Linear(n, 1)
    assert Net(3).n == 3

    class Early(nn.Module):
        def __init__(self):
            self.lin = nn.Linear(1, 1)
            super().__init__()
    with pytest.raises(AttributeError, match=r"^lin: call Module.__init__\(\) before assigning "
                                             r"parameters and submodules"):
        Early()


def test_an_unpickled_unseeded_module_draws_its_own_masks_as_a_deep_copy_does():
    import copy
    import pickle
    x = np.ones((4, 64), np.float32)
    for seed, same in ((None, False), (3, True)):
        for copied in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
            drop = nn.Dropout(0.5, seed=seed)
            other = copied(drop)  # (no draw between: the original's next mask is its first)
            assert np.array_equal(other(x), drop(x)) == same


def test_repr_lists_every_child_name_as_torch_s():
    torch = pytest.importorskip("torch")
    reprs = []
    for lib in (nn, torch.nn):
        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.a = lib.Linear(2, 3)
                self.b = self.a  # (shared: under both names)
                self.register_module("c", None) if lib is torch.nn else self.add_module("c", None)
        reprs.append(repr(Net()).replace("fusedrnn.nn.", ""))
    assert reprs[0] == reprs[1], reprs


def test_train_s_cycle_guard_is_per_thread_and_leaves_nothing_on_the_module():
    import copy
    import threading
    outer = _Stack()
    seen = []

    class Probe(nn.Module):  # a child whose train() another thread's eval() runs beside
        def train(self, mode=True):
            if mode:
                worker = threading.Thread(target=outer.eval)
                worker.start()
                worker.join()
                seen.append(outer.training)
            return super().train(mode)
    outer.probe = Probe()
    outer.train()
    assert seen == [False]  # (the other thread's eval() did run, while this train() was on)
    assert "_setting_mode" not in vars(outer) and copy.deepcopy(outer).eval().training is False


def test_a_gradient_of_another_shape_is_refused():
    """An assigned grad of another shape was taken, and one held from before ``data`` was
    replaced by another shape was broadcast into (torch refuses both)."""
    p = nn.Parameter(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"^grad: expected shape \(4, 3\) \(data's\), got \(5,\)"):
        p.grad = np.zeros(5)
    with pytest.raises(TypeError, match="^grad: expected an array or None, got list"):
        p.grad = [0.0] * 12
    p.accumulate_grad(np.ones((4, 3)))
    p.data = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match=r"the gradient held has shape \(4, 3\), data now "
                                         r"\(1, 3\) \(zero_grad\(\) first, set_to_none=True\)"):
        p.accumulate_grad(np.ones((1, 3)))
    p.zero_grad()
    p.accumulate_grad(np.ones((1, 3)))
    assert p.grad.shape == (1, 3)
    p.grad = np.ones((1, 3))  # (a float64 gradient is taken: the optimizers cast)


def test_traversals_leave_no_reference_cycles():
    """named_modules walked with a recursive closure: a cycle per call (parameters(),
    zero_grad(), every cell step's backward), garbage only the collector freed (memory grew
    without bound with gc disabled or frozen)."""
    import gc
    cell, tree = nn.GRUCell(4, 8, seed=0), nn.Sequential(nn.LSTM(2, 3), nn.Linear(3, 3))
    x = np.zeros((2, 4), np.float32)
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):  # (the first round's may make objects kept for later)
            gc.collect()
            for _ in range(200):
                cell.backward(np.ones_like(cell(x)))
                list(tree.parameters()), tree.zero_grad(), list(tree.named_modules())
            found = gc.collect()
    finally:
        gc.enable()
    assert found < 10  # (a cycle a call was 6 objects each: 2400 here)


def test_named_modules_takes_torch_memo_and_prefix():
    torch = pytest.importorskip("torch")
    shared = nn.Linear(2, 2)
    ours = nn.Sequential(shared, nn.Sequential(shared, nn.Dropout(0.1)), nn.Linear(2, 1))
    t_shared = torch.nn.Linear(2, 2)
    theirs = torch.nn.Sequential(t_shared, torch.nn.Sequential(t_shared, torch.nn.Dropout(0.1)),
                                 torch.nn.Linear(2, 1))
    for kwargs in ({}, {"prefix": "m"}, {"remove_duplicate": False}):
        assert [n for n, _ in ours.named_modules(**kwargs)] == \
            [n for n, _ in theirs.named_modules(**kwargs)]
    memo, t_memo = {shared}, {t_shared}
    assert [n for n, _ in ours.named_modules(memo)] == [n for n, _ in theirs.named_modules(t_memo)]
    assert len(memo) == len(t_memo) == 5
    with pytest.raises(TypeError, match="^prefix: expected a str, got int"):
        list(ours.named_modules(prefix=3))
    with pytest.raises(TypeError, match="^memo: expected a set of modules or None, got list"):
        list(ours.named_modules([shared]))


def test_module_api_as_torch_nn():
    """get_submodule, get_parameter, register_module; Sequential's list methods; ModuleList's
    folded repr; load_state_dict's refusals are RuntimeErrors too (torch.nn raises those)."""
    torch = pytest.importorskip("torch")
    ours = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2) for _ in range(3)]))
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 2),
                                 torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)]))
    assert repr(ours) == repr(theirs)
    assert repr(nn.ModuleList()) == repr(torch.nn.ModuleList()) == "ModuleList()"
    assert ours.get_submodule("1.2") is ours[1][2] and ours.get_submodule("") is ours
    assert ours.get_parameter("1.0.weight") is ours[1][0].weight
    with pytest.raises(AttributeError, match="'1.5' is not a submodule"):
        ours.get_submodule("1.5")
    with pytest.raises(AttributeError, match="'0.nope' is not a parameter"):
        ours.get_parameter("0.nope")
    ours.register_module("extra", nn.Linear(2, 1))
    assert ours.extra is ours._modules["extra"]
    # Sequential's list methods renumber as torch.nn's
    a, b, c, d = (nn.Linear(2, 2) for _ in range(4))
    s = nn.Sequential(a, b)
    s.insert(1, c).extend([d])
    assert list(s) == [a, c, b, d] and list(s._modules) == ["0", "1", "2", "3"]
    assert s.pop(1) is c and list(s) == [a, b, d] and list(s._modules) == ["0", "1", "2"]
    del s[0:2]
    s[0] = a
    assert list(s) == [a] and list((s + nn.Sequential(b))) == [a, b]
    s += [c]
    assert list(s) == [a, c]
    with pytest.raises(IndexError, match="index: 5 is out of range for 2 modules"):
        s[5] = b
    with pytest.raises(TypeError, match="^module: expected a Module, got int"):
        s[0] = 3
    with pytest.raises(IndexError, match="index: 5 is out of range for inserting into 2"):
        s.insert(5, b)  # (as torch.nn's Sequential; it clamped as list.insert)
    with pytest.raises(TypeError, match="^module: expected a Module, got NoneType"):
        s.insert(0, None)
    # refusals torch code catches as RuntimeError
    with pytest.raises(RuntimeError, match="missing keys"):
        nn.Linear(2, 2).load_state_dict({})
    with pytest.raises(nn.StateDictError, match=r"expected shape \(2, 2\), got \(3, 2\)"):
        nn.Linear(2, 2).load_state_dict({"weight": np.zeros((3, 2)), "bias": np.zeros(2)})
    with pytest.raises(TypeError, match="^p: expected a probability in"):
        nn.Dropout("0.5")


class _TaggedParameter(nn.Parameter):
    __slots__ = ("tag",)


def test_a_parameter_subclass_pickles_whole():
    """__getstate__ read type(self).__slots__: a subclass with slots of its own pickled
    without the data and the gradient (unpickled, it had neither)."""
    import copy
    import pickle
    p = _TaggedParameter(np.arange(3.0))
    p.grad, p.tag = np.ones(3), "t"
    for q in (pickle.loads(pickle.dumps(p)), pickle.loads(pickle.dumps(p, 0)), copy.deepcopy(p)):
        assert type(q) is _TaggedParameter and q.tag == "t"
        assert np.array_equal(q.data, p.data) and np.array_equal(q.grad, p.grad)
