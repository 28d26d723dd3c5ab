"""The packed weights a layer keeps between inference calls (fusedrnn._C.WeightCache, chosen by
nn.module.KeptWeights from Parameter versions): a repeated call packs nothing, and no change to a
weight, by any path, is ever answered from a stale pack. Each test changes the weights one way
and compares the layer's output bit for bit with a call that packs afresh (the functional API,
no cache: the same plan, so the same bits)."""
import copy
import pickle
import subprocess
import sys
import threading
import weakref

import fusedrnn as fr
import numpy as np
import pytest
from fusedrnn import _C
from fusedrnn import functional as F
from fusedrnn.optim import SGD, Adam, parameters_to_vector, vector_to_parameters

SHAPE = (40, 2, 24, 32)  # T, N, I, H: long enough that every thread count packs W_hh


def make(cell="LSTM", **kw):
    m = getattr(fr.nn, cell)(SHAPE[2], SHAPE[3], seed=0, **kw)
    m.eval()
    return m


def fresh(m, x):
    """The layer's output computed from its current weights without any kept pack."""
    out = x
    for layer in range(m.num_layers):
        ys = []
        for d in range(m.num_directions):
            w = [None if p is None else np.array(p._data) for p in m._weights(layer, d)]
            y = F._forward(m._cell, out, None, None, *w, None, d == 1, False, m.nonlinearity)[0]
            ys.append(y)
        out = np.concatenate(ys, axis=2) if len(ys) > 1 else ys[0]
    return out


def kept_forms(m):
    return sum(cache.forms for _, cache, _ in m._kept.values())


@pytest.fixture
def x():
    T, N, I, _ = SHAPE
    return np.random.default_rng(1).standard_normal((T, N, I)).astype(np.float32)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_repeated_call_packs_nothing_and_gives_the_same_bits(cell, threads, x, restore_threads):
    fr.set_num_threads(threads)
    m = make(cell, bidirectional=True, num_layers=2)
    first = m(x)[0]
    caches = [c for _, c, _ in m._kept.values()]
    assert len(caches) == 4 and kept_forms(m) > 0
    second = m(x)[0]
    assert [c for _, c, _ in m._kept.values()] == caches  # the same caches served
    assert np.array_equal(first, second) and np.array_equal(first, fresh(m, x))


# Short calls (T, N) that pack W_hh only because a layer in eval mode passes a WeightCache (the
# functional API's call without one multiplies unpacked rows): H=256, whose W_hh packing would
# not pay within one such call.
SHORT_CALLS = [(4, 1), (10, 1), (6, 2), (4, 8)]


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("T,N", SHORT_CALLS)
def test_short_calls_pack_and_give_the_same_bits_kept_or_not(cell, T, N, restore_threads):
    fr.set_num_threads(2)
    I, H = 40, 256
    x = np.random.default_rng(2).standard_normal((T, N, I)).astype(np.float32)
    m = getattr(fr.nn, cell)(I, H, seed=0)
    m.eval()
    assert _C.plan(cell.lower(), "tanh", T, N, I, H, np.dtype(np.float32), False, 2,
                   cache=True)["forward"]["step_product"] == "packed W_hh"
    kept = m(x)[0]
    assert kept_forms(m) > 0
    held = m.weight_hh_l0.data  # a reference kept elsewhere: the layer keeps nothing now
    unkept = m(x)[0]
    assert 0 not in m._kept
    assert np.array_equal(kept, unkept)
    w = [np.float64(p._data) for p in m._weights(0, 0)]
    h0 = np.zeros((N, H))
    ref = getattr(fr.reference, cell.lower() + "_forward")(
        x.astype(np.float64), h0, *((h0,) if cell == "LSTM" else ()), *w)[0]
    np.testing.assert_allclose(kept, ref, rtol=0, atol=2e-6)
    del held


def test_training_mode_keeps_nothing(x):
    m = make()
    m.train()
    m(x)
    assert not m._kept


def change_by_optimizer(m, x):
    opt = SGD(m.parameters(), lr=0.1)
    m.train()
    out, _ = m(x)
    m.backward(np.ones_like(out))
    opt.step()
    m.eval()


def change_by_adam(m, x):
    opt = Adam(m.parameters(), lr=0.1)
    for p in m.parameters():
        p.grad = np.ones_like(p._data)
    opt.step()


def change_by_load_state_dict(m, x):
    state = {k: v * 1.5 for k, v in m.state_dict().items()}
    m.load_state_dict(state)


def change_by_assigning_data(m, x):
    m.weight_hh_l0.data = m.weight_hh_l0.data * 0.5


def change_by_augmented_assignment(m, x):
    m.weight_hh_l0.data -= 0.25


def change_in_place(m, x):
    m.weight_hh_l0.data[...] = 0.125


def change_a_bias_in_place(m, x):
    m.bias_ih_l0.data[:4] = 3.0


def change_through_a_kept_name(m, x):
    w = m.weight_hh_l0.data  # taken before the call that packs ...
    m(x)
    w *= -1.0  # ... and written after it, without touching the Parameter


def change_through_a_view(m, x):
    v = m.weight_ih_l0.data[:, :3]
    m(x)
    v[...] = 7.0


def change_through_numpy_out(m, x):
    np.multiply(m.weight_hh_l0.data, 2.0, out=m.weight_hh_l0.data)


def change_through_a_weak_reference(m, x):
    r = weakref.ref(m.weight_hh_l0.data)
    m(x)
    r()[...] *= 3.0  # (a weak reference counts no reference: checked apart)


def change_through_a_shallow_copy(m, x):
    q = copy.copy(m.weight_hh_l0)  # a second Parameter over the same array ...
    q.data[...] *= 2.0
    del q  # ... gone before the next call: only the copy's version moved with the write


def change_by_vector_to_parameters(m, x):
    vector_to_parameters(parameters_to_vector(m.parameters()) * 0.75, m.parameters())


def change_by_new_parameter(m, x):
    m.weight_hh_l0 = fr.nn.Parameter(np.full_like(m.weight_hh_l0._data, 0.01))


def change_by_reset(m, x):
    m.reset_parameters(seed=5)


CHANGES = [change_by_optimizer, change_by_adam, change_by_load_state_dict,
           change_by_assigning_data, change_by_augmented_assignment, change_in_place,
           change_a_bias_in_place, change_through_a_kept_name, change_through_a_view,
           change_through_numpy_out, change_through_a_weak_reference,
           change_through_a_shallow_copy,
           change_by_vector_to_parameters, change_by_new_parameter,
           change_by_reset]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("threads", [1, 2])
def test_no_change_is_answered_from_a_stale_pack(change, threads, x, restore_threads):
    fr.set_num_threads(threads)
    m = make()
    before = m(x)[0]
    assert kept_forms(m) > 0
    change(m, x)
    after = m(x)[0]
    assert not np.array_equal(before, after)
    assert np.array_equal(after, fresh(m, x))
    again = m(x)[0]  # kept again from the new values
    assert np.array_equal(again, after)


def test_a_shared_array_is_never_kept(x):
    m = make()
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(m.weight_hh_l0._data)  # shares the memory
    m(x)
    assert 0 not in m._kept
    t.mul_(2.0)
    assert np.array_equal(m(x)[0], fresh(m, x))


def test_no_bias_keeps_its_own_zeros(x):
    m = make(bias=False)
    a = m(x)[0]
    assert kept_forms(m) > 0
    assert np.array_equal(a, m(x)[0]) and np.array_equal(a, fresh(m, x))


def test_a_copy_starts_without_the_packs_and_is_independent(x):
    m = make()
    m(x)
    clone = copy.deepcopy(m)
    assert not clone._kept
    clone.weight_hh_l0.data[...] = 0.0
    assert np.array_equal(m(x)[0], fresh(m, x))
    assert np.array_equal(clone(x)[0], fresh(clone, x))


PICKLE_IN_ONE_PROCESS = """
import pickle, sys, fusedrnn as fr
pickle.dump(fr.nn.{cell}(3, 4, seed=1).eval(), open(sys.argv[1], "wb"))
"""
WRITE_IN_ANOTHER = """
import pickle, sys, numpy as np, fusedrnn as fr
m = pickle.load(open(sys.argv[1], "rb"))
x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
m(x)  # kept from the versions the weights came with
for p in m.parameters():
    p.data[...] *= 0.5
y = m(x)[0]  # (before state_dict(), whose reads move the versions again)
fresh = fr.nn.{cell}(3, 4).eval()
fresh.load_state_dict(m.state_dict())
print(float(np.abs(y - fresh(x)[0]).max()))
"""


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_a_layer_pickled_in_another_process_sees_writes(cell, tmp_path):
    """Versions that came by pickle never meet the ones this process hands out (each process
    counts from its own random start): a kept pack is renewed after a write."""
    path = str(tmp_path / "layer.pkl")
    for code in (PICKLE_IN_ONE_PROCESS, WRITE_IN_ANOTHER):
        done = subprocess.run([sys.executable, "-c", code.format(cell=cell), path],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert float(done.stdout) == 0.0


def test_every_pickle_protocol(x):
    m = make()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert np.array_equal(pickle.loads(pickle.dumps(m, protocol))(x)[0], m(x)[0])


def test_threads_share_one_layer(x, restore_threads):
    fr.set_num_threads(2)
    m = make("GRU")
    expected = fresh(m, x)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(m(x)[0])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(np.array_equal(r, expected) for r in results)


def test_a_cache_serves_only_its_first_arrays():
    rng = np.random.default_rng(0)
    T, N, I, H = SHAPE
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    h0 = np.zeros((N, H), np.float32)
    w = [rng.uniform(-0.2, 0.2, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    cache = _C.WeightCache()
    first = _C.recurrent_forward("lstm", "tanh", x, h0, h0, *w, None, False, False, cache)
    other = [a.copy() * 2 for a in w]
    got = _C.recurrent_forward("lstm", "tanh", x, h0, h0, *other, None, False, False, cache)
    want = _C.recurrent_forward("lstm", "tanh", x, h0, h0, *other, None, False, False)
    assert np.array_equal(got[0], want[0]) and not np.array_equal(got[0], first[0])
    with pytest.raises(TypeError, match="cache"):
        _C.recurrent_forward("lstm", "tanh", x, h0, h0, *w, None, False, False, "nope")


def test_parameter_version_moves_on_every_handout():
    p = fr.nn.Parameter(np.zeros(3, np.float32))
    v = p.version
    p.data  # noqa: B018 - a read hands the array out
    assert p.version != v
    v = p.version
    assert p.shape == (3,) and p.dtype == np.float32 and p.version == v
    q = fr.nn.Parameter(np.zeros(3, np.float32))
    assert q.version != p.version  # never repeated across parameters


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_short_call_path_gives_the_general_paths_results(cell, bias, x):
    m = make(cell, bias=bias)
    assert m._single_inference_call(x, None, None) is not None  # the path under test is taken
    out, state = m(x)
    N, H = x.shape[1], m.hidden_size
    zeros = np.zeros((1, N, H), np.float32)
    hx = (zeros, zeros) if cell == "LSTM" else zeros
    assert m._single_inference_call(x, hx, None) is not None  # a carried state: still short
    general_out, general_state = m(x, hx, lengths=np.full(N, x.shape[0]))  # the general path
    assert np.array_equal(out, general_out)
    h = np.random.default_rng(3).standard_normal((1, N, H)).astype(np.float32)
    carried = (h, h * 0.5) if cell == "LSTM" else h
    short, long = m(x, carried), m(x, carried, lengths=np.full(N, x.shape[0]))
    assert np.array_equal(short[0], long[0])
    assert m._single_inference_call(x, (h[:, :, ::-1],) * 2 if cell == "LSTM" else h[:, :, ::-1],
                                    None) is None  # strided: the general path
    for a, b in zip(state if cell == "LSTM" else [state], general_state if cell == "LSTM"
                    else [general_state]):
        assert a.shape == b.shape and np.array_equal(a, b)
    m.weight_hh_l0.data = m.weight_hh_l0.data[:, ::-1]  # not contiguous: the general path
    assert m._single_inference_call(x, None, None) is None
    assert np.array_equal(m(x)[0], fresh(m, x))


def test_a_parameter_pickled_by_an_earlier_release_loads(monkeypatch):
    """Before Parameter had __getstate__, pickle stored its slots as (None, {slot: value})."""
    from fusedrnn.nn.module import Parameter
    p = Parameter(np.arange(3.0))
    with monkeypatch.context() as m:
        m.delattr(Parameter, "__getstate__")
        m.delattr(Parameter, "__setstate__")
        old = pickle.dumps(p, protocol=2)
    q = pickle.loads(old)
    assert np.array_equal(q.data, p.data) and q.grad is None
