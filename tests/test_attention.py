"""Attention: the float64 reference against central differences; the modules (fused step,
keys projected once, several steps summed) against the reference; masking of padded source
positions (exactly zero weight, exactly zero gradient); bad input."""
import numpy as np
import pytest

from conftest import FINITE_DIFFERENCE_EPS, TOLERANCES, relative_error
from fusedrnn.nn.attention import (BahdanauAttention, LuongAttention, attention_step_forward,
                                   make_attention)
from fusedrnn.reference.attention import attention_backward, attention_forward

KINDS = ["additive", "dot", "general"]
N, S, Q, K, A = 4, 7, 5, 6, 3
LENGTHS = np.array([7, 3, 0, 1])


# Sizes (Q, K, A) wider than the CPU's SIMD vectors (8 or 16 floats), with tails: the kernel's
# vector loops over A (the additive score's tanh, the dot products) and K (the context's).
VECTOR_SIZES = (19, 21, 37)


def _module(kind, dtype=np.float64, seed=0, sizes=(Q, K, A)):
    q = sizes[1] if kind == "dot" else sizes[0]
    return make_attention(kind, q, sizes[1], sizes[2], dtype=dtype, seed=seed), q


def _params(m):
    return tuple(p.data for p in m.parameters())


def _inputs(rng, q, dtype=np.float64, k=K):
    return rng.standard_normal((N, q)).astype(dtype), rng.standard_normal((N, S, k)).astype(dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_backward_vs_finite_differences(kind, rng):
    m, q = _module(kind)
    params = [p.copy() for p in _params(m)]
    query, keys = _inputs(rng, q)
    dcontext, dweights = rng.standard_normal((N, K)), rng.standard_normal((N, S))

    def loss():
        c, w = attention_forward(kind, query, keys, LENGTHS, params)
        return float((c * dcontext).sum() + (w * dweights).sum())

    def numeric(a):
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + FINITE_DIFFERENCE_EPS
            up = loss()
            a[i] = old - FINITE_DIFFERENCE_EPS
            down = loss()
            a[i] = old
            g[i] = (up - down) / (2 * FINITE_DIFFERENCE_EPS)
        return g

    dquery, dkeys, dparams = attention_backward(kind, query, keys, LENGTHS, params, dcontext,
                                                dweights)
    tol = TOLERANCES["reference_vs_finite_differences"]
    assert relative_error(dquery, numeric(query)) < tol
    assert relative_error(dkeys, numeric(keys)) < tol
    for p, d in zip(params, dparams):
        assert relative_error(d, numeric(p)) < tol


@pytest.mark.parametrize("sizes", [(Q, K, A), VECTOR_SIZES], ids=["small", "vectors"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_module_matches_reference_over_steps(kind, dtype, sizes, rng):
    """Three decoder steps on one memory: outputs per step, and after the backward of every
    step (and a refused one) the query gradients, the key gradients (summed over steps) and
    parameter gradients."""
    m, q = _module(kind, dtype, sizes=sizes)
    params = tuple(p.astype(np.float64) for p in _params(m))
    _, keys = _inputs(rng, q, dtype, k=sizes[1])
    queries = [rng.standard_normal((N, q)).astype(dtype) for _ in range(3)]
    dcs = [rng.standard_normal((N, sizes[1])).astype(dtype) for _ in range(3)]
    dws = [rng.standard_normal((N, S)).astype(dtype) for _ in range(3)]
    tol = TOLERANCES["kernel_vs_reference"][dtype]
    m.set_memory(keys, LENGTHS)
    for query in queries:
        c, w = m(query)
        rc, rw = attention_forward(kind, query, keys, LENGTHS, params)
        assert c.dtype == dtype and w.dtype == dtype
        assert relative_error(c, rc) < tol and relative_error(w, rw) < tol
    with pytest.raises(ValueError, match="dcontext"):  # refused, and the step stays to go back
        m.backward(np.zeros((N + 1, sizes[1]), dtype))
    dqueries = [m.backward(dc, dw) for dc, dw in zip(dcs[::-1], dws[::-1])][::-1]
    dkeys = m.memory_backward()
    ref_dkeys = np.zeros(keys.shape)
    ref_dparams = [np.zeros(p.shape) for p in params]
    for query, dc, dw, dq in zip(queries, dcs, dws, dqueries):
        rq, rk, rp = attention_backward(kind, query, keys, LENGTHS, params, dc, dw)
        assert relative_error(dq, rq) < tol
        ref_dkeys += rk
        for acc, d in zip(ref_dparams, rp):
            acc += d
    assert relative_error(dkeys, ref_dkeys) < tol
    for p, d in zip(m.parameters(), ref_dparams):
        assert relative_error(p.grad, d) < tol


@pytest.mark.parametrize("kind", KINDS)
def test_padding_gets_exactly_zero_weight_and_gradient(kind, rng):
    m, q = _module(kind)
    query, keys = _inputs(rng, q)
    m.set_memory(keys, LENGTHS)
    c, w = m(query)
    pad = np.arange(S)[None, :] >= LENGTHS[:, None]
    assert np.all(w[pad] == 0)
    assert np.allclose(w.sum(axis=1), (LENGTHS > 0).astype(float))
    assert np.all(c[LENGTHS == 0] == 0)                  # an empty source: no context
    dq = m.backward(rng.standard_normal((N, K)), rng.standard_normal((N, S)))
    dkeys = m.memory_backward()
    assert np.all(dkeys[pad] == 0)
    assert np.all(dq[LENGTHS == 0] == 0)
    # whatever sits in the padded positions changes nothing
    m2, _ = _module(kind)
    keys2 = keys.copy()
    keys2[pad] = 1e3 * rng.standard_normal(keys2[pad].shape)
    m2.set_memory(keys2, LENGTHS)
    c2, w2 = m2(query)
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_allclose(c, c2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_keys_projected_once_per_sequence(kind, rng, monkeypatch):
    m, q = _module(kind)
    calls = []
    original = type(m)._project_keys
    monkeypatch.setattr(type(m), "_project_keys",
                        lambda self, keys: calls.append(1) or original(self, keys))
    query, keys = _inputs(rng, q)
    m.set_memory(keys, LENGTHS)
    for _ in range(5):
        m(query)
    assert len(calls) == 1


def test_fused_step_checks_its_mask_and_keeps_its_own_weights():
    """The mask is bool or 0/1 integers (0.5 and 256 were cast to 0: every position masked,
    silently); the weights returned may be changed by the caller (a plot's scaling) without
    changing the backward."""
    q, k = np.ones((1, 2)), np.ones((1, 3, 2))
    for bad, error in ((np.full((1, 3), 0.5), TypeError), (np.full((1, 3), 256), ValueError),
                       (None, TypeError), ([[1, 1, 1]], TypeError)):
        with pytest.raises(error, match="^mask: expected"):
            attention_step_forward("dot", q, k, k, bad)
    as_ints = attention_step_forward("dot", q, k, k, np.array([[1, 0, 1]]))[1]
    np.testing.assert_array_equal(as_ints, [[0.5, 0.0, 0.5]])
    rng = np.random.default_rng(0)
    keys, query, dcontext = (rng.standard_normal(s) for s in ((2, 3, 4), (2, 4), (2, 4)))
    for m in (BahdanauAttention(4, 4, dtype=np.float64, seed=0),
              LuongAttention(4, 4, dtype=np.float64, seed=0)):
        m.set_memory(keys)
        m(query)
        clean = m.backward(dcontext)
        m.memory_backward()
        m.set_memory(keys)
        _, weights = m(query)
        weights *= 10.0
        np.testing.assert_array_equal(m.backward(dcontext), clean)


def test_fused_step_all_positions_masked_is_finite():
    mask = np.zeros((2, 3), bool)
    context, weights, _ = attention_step_forward("dot", np.ones((2, 4)), np.ones((2, 3, 4)),
                                                 np.ones((2, 3, 4)), mask)
    assert np.all(weights == 0) and np.all(context == 0)


@pytest.mark.parametrize("make", [lambda: BahdanauAttention(3, 3, dtype=np.float64, seed=0),
                                  lambda: LuongAttention(3, 3, "general", dtype=np.float64,
                                                         seed=0)])
def test_a_weight_written_between_forward_and_backward_is_refused(make):
    """As the layers, cells and Linear (and torch): the step's backward and memory_backward
    would mix the new weights with the old activations (the query's and the keys'
    projections); a write after set_memory, before memory_backward, too."""
    rng = np.random.default_rng(0)
    keys, q, dc = (rng.standard_normal(s) for s in ((2, 4, 3), (2, 3), (2, 3)))
    for write_before in ("backward", "memory_backward"):
        att = make()
        att.train()
        att.set_memory(keys)
        att(q)
        if write_before == "memory_backward":
            att.backward(dc)
        p = next(iter(att.parameters()))
        p.data = p.data + 1.0
        with pytest.raises(RuntimeError, match="a parameter was written"):
            getattr(att, write_before)(*((dc,) if write_before == "backward" else ()))
    att = make()  # unwritten: both run
    att.train()
    att.set_memory(keys)
    att(q)
    att.backward(dc)
    assert att.memory_backward().shape == keys.shape


@pytest.mark.parametrize("kind", ["additive", "general"])  # (dot has no weights)
def test_a_weight_written_after_set_memory_is_read_by_the_next_step(kind, rng):
    """The keys were projected by the weights of set_memory's time: after an optimizer step or
    load_state_dict the steps used the old projection, silently (0.2-0.8 off torch). A step
    now projects them again (steps still to back-propagate refuse, as a backward would)."""
    m, q = _module(kind)
    query, keys = _inputs(rng, q)
    m.set_memory(keys, LENGTHS)
    for p in m.parameters():
        p.data = p.data * 1.5
    fresh = _module(kind)[0]
    fresh.load_state_dict(m.state_dict())
    fresh.set_memory(keys, LENGTHS)
    np.testing.assert_array_equal(m(query)[0], fresh(query)[0])
    p = next(iter(m.parameters()))
    p.data = p.data * 0.5
    with pytest.raises(RuntimeError, match=r"\.forward: a parameter was written"):
        m(query)  # (a step above waits for its backward)


@pytest.mark.parametrize("kind", KINDS)
def test_steps_keep_their_own_query_and_keys(kind, rng):
    """A decoder loop refilling one query buffer (and the caller writing into its keys) gave
    the backward the buffer's last contents: dkeys 0.5-1.0 off, weight gradients 0.5-4.0."""
    queries = [rng.standard_normal((N, Q if kind != "dot" else K)) for _ in range(3)]
    keys = rng.standard_normal((N, S, K))
    results = []
    for reuse in (True, False):
        m, q = _module(kind)
        buffer, memory = np.empty_like(queries[0]), keys.copy()
        m.set_memory(memory)  # (no padding: the keys as given, copied)
        if reuse:  # (the other run's keys are never written)
            memory[...] = 7.0
        for query in queries:
            buffer[...] = query
            m(buffer if reuse else query.copy())
        dqs = [m.backward(np.ones((N, K))) for _ in queries]
        results.append([*dqs, m.memory_backward(), *(p.grad for p in m.parameters())])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_memory_backward_is_asked_for_before_the_next_memory(rng):
    """Steps back-propagated without memory_backward lost the key and query projections'
    gradients at the next set_memory (torch has every gradient after backward)."""
    m, q = _module("additive")
    query, keys = _inputs(rng, q)
    m.set_memory(keys, LENGTHS)
    m(query)
    m.set_memory(keys, LENGTHS)  # (a step not back-propagated is let go, as before)
    m(query)
    m.backward(np.ones((N, K)))
    with pytest.raises(RuntimeError, match="set_memory: steps of the memory set last were "
                                           "back-propagated, but not memory_backward"):
        m.set_memory(keys, LENGTHS)
    m.memory_backward()
    m.set_memory(keys, LENGTHS)
    assert all(p.grad is not None for p in m.parameters())
    for _ in range(2):  # a truncated backward: clear_steps lets the rest go
        m(query)
    m.backward(np.ones((N, K)))
    m.clear_steps()
    m.set_memory(keys, LENGTHS)
    dot, q = _module("dot")  # (no weights: nothing to lose, nothing refused)
    dot.set_memory(keys, LENGTHS)
    dot(_inputs(rng, q)[0])
    dot.backward(np.ones((N, K)))
    dot.set_memory(keys, LENGTHS)


def test_bad_input():
    m = BahdanauAttention(4, 6)
    with pytest.raises(RuntimeError, match="set_memory"):
        m(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="keys"):
        m.set_memory(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(TypeError, match="keys"):
        m.set_memory(np.zeros((2, 3, 6), np.float64))
    m.set_memory(np.zeros((2, 3, 6), np.float32), np.array([3, 1]))
    with pytest.raises(ValueError, match="query"):
        m(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="lengths"):
        m.set_memory(np.zeros((2, 3, 6), np.float32), np.array([4, 1]))
    with pytest.raises(ValueError, match="key_size"):
        LuongAttention(4, 6, "dot")
    with pytest.raises(ValueError, match="score"):
        make_attention("cosine", 4, 4)
    with pytest.raises(RuntimeError, match="no training-mode step"):
        m.backward(np.zeros((2, 6), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_a_truncated_backward_gets_every_gradient_of_its_steps(kind, rng):
    # the projections' gradients came only from memory_backward, which refused pending steps,
    # and clear_steps() dropped what the back-propagated ones gathered: v alone had its share.
    # A step left out adds what a zero dcontext adds: nothing
    query, keys = _inputs(rng, _module(kind)[1])
    dcs = [rng.standard_normal((N, K)) for _ in range(3)]
    results = []
    for truncated in (True, False):
        m, _ = _module(kind)
        m.set_memory(keys, LENGTHS)
        for _ in range(3):
            m(query)
        m.backward(dcs[2])
        m.backward(dcs[1])
        if truncated:
            with pytest.raises(RuntimeError, match=r"1 steps still wait for their backward: "
                                                   r"back-propagate them, or memory_backward\("
                                                   r"drop_pending=True\)"):
                m.memory_backward()
            dkeys = m.memory_backward(drop_pending=True)
        else:
            m.backward(np.zeros((N, K)))
            dkeys = m.memory_backward()
        results.append([dkeys, *(p.grad for p in m.parameters())])
    assert all(g is not None for g in results[0])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_forward_after_a_write_with_steps_pending_names_the_way_out(rng):
    m, q = _module("additive")
    query, keys = _inputs(rng, q)
    m.set_memory(keys, LENGTHS)
    m(query)
    m.weight_query.mark_written()  # (an optimizer step)
    with pytest.raises(RuntimeError, match=r"^BahdanauAttention.forward: a parameter was written "
                                           r".* or let them go with clear_steps\(\)"):
        m(query)
    m.clear_steps()
    m(query)
    m.clear_steps()
    with pytest.raises(RuntimeError, match=r"no training-mode step left \(set_memory and "
                                           r"clear_steps\(\) let"):
        m.backward(np.ones((N, K)))
