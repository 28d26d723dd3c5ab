"""bfloat16 autocast (fusedrnn.amp): float32 CPU forwards (inference and training) with the
recurrent products from bfloat16 W_hh and h, float32 accumulation; the backward stays float32.
The kernels are held to the NumPy reference with the same rounding (reference
precision="bfloat16"): one step exactly up to float32 accumulation, a sequence within the rare
flips of a state's bfloat16 rounding; and to the float64 reference within bounds measured
against torch.autocast's bfloat16 layers."""
import threading

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn import _C
from fusedrnn import functional as F
from fusedrnn import reference as R

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _problem(cell, T, N, I, H, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    s = scale / np.sqrt(H)
    w = dict(w_ih=(rng.standard_normal((G * H, I)) * s).astype(np.float32),
             w_hh=(rng.standard_normal((G * H, H)) * s).astype(np.float32),
             b_ih=(rng.standard_normal(G * H) * 0.1).astype(np.float32),
             b_hh=(rng.standard_normal(G * H) * 0.1).astype(np.float32))
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    h0 = (rng.standard_normal((N, H)) * 0.5).astype(np.float32)
    return x, h0, h0.copy(), w


def _ours(cell, x, h0, c0, w, **kw):
    args = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    if cell == "lstm":
        return F.lstm_forward(x, h0, c0, *args, **kw)[0]
    return getattr(F, cell + "_forward")(x, h0, *args, **kw)[0]


def _ref(cell, x, h0, c0, w, **kw):
    args = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    if cell == "lstm":
        return R.lstm_forward(x, h0, c0, *args, **kw)[0]
    return getattr(R, cell + "_forward")(x, h0, *args, **kw)[0]


def test_round_bf16_ties_to_even_and_keeps_specials():
    a = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, -2.5, np.inf,
                  -np.inf, np.nan, 3.4028235e38], np.float32)
    r = R.round_bf16(a)
    assert list(r[:5]) == [1.0, 1.0, 1.0 + 4 * 2 ** -8, 1.0 + 2 ** -7, -2.5]
    assert r[5] == np.inf and r[6] == -np.inf and np.isnan(r[7]) and r[8] == np.inf


@pytest.mark.parametrize("N", [1, 20])
def test_kernels_round_x_as_the_reference(N):
    """The kernels' own rounding of x (16 lanes at a time with AVX-512, the tail one by one):
    ties to even, just above a tie. A ReLU RNN with W_ih = I and W_hh = 0 gives y =
    relu(round(x)) exactly; with N=20 the AMX projection reads the same rounded pairs. (NaN and
    inf cannot show through a product: 0 * inf is NaN in every output; nor can subnormals: the
    bfloat16 dot instructions, vdpbf16ps and TDPBF16PS, read them as zero, as torch's do.)"""
    I = 40  # two vectors of 16 values and a tail of 8
    ties = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, 2.5,
                     3.0 + 2 ** -7, 0.5 + 2 ** -9, 0.75 + 2 ** -10, 1.5], np.float32)
    rng = np.random.default_rng(N)
    x = rng.uniform(0.5, 2.0, (3, N, I)).astype(np.float32)
    x[:, :, 5:5 + ties.size] = ties  # in the first vector ...
    x[:, :, 32:] = ties  # ... and in the tail
    y = F.rnn_forward(x, None, np.eye(I, dtype=np.float32), np.zeros((I, I), np.float32),
                      nonlinearity="relu", precision="bfloat16")[0]
    np.testing.assert_array_equal(y, np.maximum(R.round_bf16(x), 0.0).astype(np.float32))
    assert not np.array_equal(y, x)  # the rounding shows


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("N,I,H", [(1, 3, 1), (1, 16, 33), (2, 7, 64), (3, 5, 17), (5, 24, 160),
                                   (13, 9, 160), (8, 40, 48), (16, 9, 64), (20, 5, 96),
                                   (37, 33, 100)])
def test_one_step_matches_the_bf16_reference(cell, N, I, H, threads):
    """One step: the same rounded operands, so only float32 accumulation differs (every tile
    width, odd H and I, padding rows and pairs, both loop splits; AMX sample tiles of N below
    16, whole, and padded, where the CPU has AMX)."""
    x, h0, c0, w = _problem(cell, 1, N, I, H, seed=N * 100 + H)
    ours = _ours(cell, x, h0, c0, w, precision="bfloat16")
    ref = _ref(cell, x, h0, c0, w, precision="bfloat16")
    exact = _ref(cell, x, h0, c0, w)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    if H > 1:  # the rounding shows: not the float32 result
        assert np.abs(ours - exact).max() > 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
def test_sequences_match_the_bf16_reference(cell, reverse, threads):
    """Every sample (each tile position, each length) is the bfloat16 reference's, much closer
    to it than the float32 result is: a sample run without the rounding fails."""
    x, h0, c0, w = _problem(cell, 30, 7, 12, 48, seed=3, scale=0.8)
    lengths = np.array([30, 0, 1, 17, 30, 5, 29])
    ours = _ours(cell, x, h0, c0, w, precision="bfloat16", lengths=lengths, reverse=reverse)
    ref = _ref(cell, x, h0, c0, w, precision="bfloat16", lengths=lengths, reverse=reverse)
    exact = _ref(cell, x, h0, c0, w, lengths=lengths, reverse=reverse)
    # a state's float32 value may round to the other neighbouring bfloat16 than float64's does
    # (rarely): then an error of one bfloat16 step of h (2^-8 at |h| < 1), not of a wrong product
    assert np.abs(ours - ref).max() < 2.0 ** -8
    assert np.median(np.abs(ours - ref)) < 1e-6
    # per sample over its real steps (padding zeros would hide one sample): 2^-8 alone is the
    # whole bfloat16-vs-float32 gap, the median is not
    for n in np.flatnonzero(lengths):
        valid = slice(0, lengths[n])
        mine = np.median(np.abs(ours[valid, n] - ref[valid, n]))
        gap = np.median(np.abs(exact[valid, n] - ref[valid, n]))
        assert mine < 0.01 * gap, (n, mine, gap)
    assert np.abs(ours - exact).max() < 2e-2
    assert np.all(ours[~(np.arange(30)[:, None] < lengths[None, :])] == 0)  # padding stays 0


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bf16_bits_do_not_depend_on_the_threads(cell):
    """Neither the loop (by units, by samples) nor the slices change a sum's order: 1 and 2
    threads give the same bits, both directions."""
    for T, N, I, H in ((20, 16, 24, 64), (7, 37, 9, 100), (5, 3, 8, 256), (6, 64, 32, 128)):
        x, h0, c0, w = _problem(cell, T, N, I, H, seed=T + N)
        before = fr.get_num_threads()
        runs = []
        try:
            for n in (1, 2):
                fr.set_num_threads(n)
                runs.append([_ours(cell, x, h0, c0, w, precision="bfloat16", reverse=r)
                             for r in (False, True)])
        finally:
            fr.set_num_threads(before)
        for one, two in zip(*runs):
            np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_pipelined_projection_gives_the_up_front_bits(cell):
    """A step too small to split: on 2 threads one runs the steps while the other projects the
    inputs a chunk ahead (the pipelined plan); its rows' sums are those of the projection up
    front on 1 thread, bit for bit, both directions, with lengths too."""
    from fusedrnn import _C
    T, N, I, H = 100, 1, 128, 96
    assert _C.plan(cell, "tanh", T, N, I, H, np.dtype(np.float32), False, 2,
                   precision="bfloat16")["forward"]["loop"] == "pipelined"
    assert _C.plan(cell, "tanh", T, N, I, H, np.dtype(np.float32), False, 1,
                   precision="bfloat16")["forward"]["loop"] != "pipelined"
    x, h0, c0, w = _problem(cell, T, N, I, H, seed=5)
    before = fr.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            fr.set_num_threads(n)
            runs.append([_ours(cell, x, h0, c0, w, precision="bfloat16", reverse=r, lengths=n)
                         for r in (False, True) for n in (None, np.array([61]))])
    finally:
        fr.set_num_threads(before)
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_projection_in_the_steps_gives_the_up_front_bits(cell):
    """With vdpbf16ps tiles (and no AMX tiles for the batch), a step of 4 samples or more
    projects its own rows in its W_hh product's pass (a GRU's just before it); a lone sample
    projects every step up front. Every sample of a batch of 6 gets the bits it gets alone: outputs, and a training
    forward's backward (dx, dh0), both directions, with lengths, by units (1 thread) and by
    samples (2 threads: 3 samples a slice, up front)."""
    T, N, I, H = 9, 6, 40, 48
    vdp = "vdpbf16ps" in fr.info()["bf16_products"]  # (AMX tiles start at batch 8)

    def projection(n, threads):
        return _C.plan(cell, "tanh", T, n, I, H, np.dtype(np.float32), False, threads,
                       precision="bfloat16")["forward"]["projection"]

    in_steps = "in the steps' products"
    assert (projection(N, 1) == in_steps) == vdp
    assert projection(1, 1) != in_steps
    x, h0, c0, w = _problem(cell, T, N, I, H, seed=3)
    dy = np.random.default_rng(4).standard_normal((T, N, H)).astype(np.float32)
    lengths = np.array([9, 4, 9, 1, 7, 9])
    args = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    fwd, bwd = getattr(F, cell + "_forward"), getattr(F, cell + "_backward")

    def run(n0, n1, reverse, lens):
        st = (h0[n0:n1], c0[n0:n1]) if cell == "lstm" else (h0[n0:n1],)
        ln = None if lens is None else lens[n0:n1]
        y = fwd(x[:, n0:n1].copy(), *st, *args, lengths=ln, reverse=reverse,
                precision="bfloat16")[0]
        out = fwd(x[:, n0:n1].copy(), *st, *args, lengths=ln, reverse=reverse, training=True,
                  precision="bfloat16")
        dx, dh0 = bwd(out[-1], dy[:, n0:n1].copy())[:2]
        return y, out[0], dx, dh0

    before = fr.get_num_threads()
    try:
        for threads in (1, 2):
            fr.set_num_threads(threads)
            for reverse in (False, True):
                for lens in (None, lengths):
                    whole = run(0, N, reverse, lens)
                    for n in range(N):
                        alone = run(n, n + 1, reverse, lens)
                        for a, b in zip(whole, alone):
                            np.testing.assert_array_equal(a[..., n:n + 1, :], b)
    finally:
        fr.set_num_threads(before)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bf16_backward_bits_do_not_depend_on_the_threads(cell):
    """The bfloat16 backward by units (1 thread) and by samples (2 threads, a small W_hh) give
    the same dx and dh0, bit for bit (each sum's order is the tiles', not the slices')."""
    x, h0, c0, w = _problem(cell, 9, 24, 10, 48, seed=11)
    args = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    state = (h0, c0) if cell == "lstm" else (h0,)
    dy = np.random.default_rng(12).standard_normal((9, 24, 48)).astype(np.float32)
    before = fr.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            fr.set_num_threads(n)
            ctx = getattr(F, cell + "_forward")(x, *state, *args, training=True,
                                                precision="bfloat16")[-1]
            runs.append(getattr(F, cell + "_backward")(ctx, dy)[:2])
    finally:
        fr.set_num_threads(before)
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one, two)


def test_accuracy_within_torch_autocast_bf16():
    """The relative error of the outputs against float64 stays within 1.5x of what
    torch.autocast("cpu", bfloat16) gives on the same LSTM (measured: ours 2.1e-3..2.5e-3,
    torch's 3.1e-3..3.3e-3 on oneDNN (Xeon, AMX), 4.6e-3..4.7e-3 on its native path where oneDNN
    refuses the layer (Zen 3, AVX2): ``benchmark_bf16.torch_autocast``)."""
    torch = pytest.importorskip("torch")
    from fusedrnn.benchmark_bf16 import torch_autocast
    rng = np.random.default_rng(0)
    for (T, N, I, H) in ((50, 4, 64, 128), (20, 1, 32, 256)):
        torch.manual_seed(T)
        lstm = torch.nn.LSTM(I, H)
        x = rng.standard_normal((T, N, I)).astype(np.float32)
        sd = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
        args = (sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"])
        exact = R.lstm_forward(x, None, None, *args)[0]
        ours = F.lstm_forward(x, None, None, *args, precision="bfloat16")[0]
        with torch.no_grad(), torch_autocast("LSTM"):
            theirs = lstm(torch.from_numpy(x))[0].float().numpy()

        def rel(a, exact=exact):
            return np.linalg.norm(a - exact) / np.linalg.norm(exact)
        assert rel(ours) <= 1.5 * rel(theirs), (rel(ours), rel(theirs))
        assert rel(ours) > 1e-5  # bfloat16 did run


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_layers_under_autocast_are_the_kernels_bf16(mode):
    """Every inference path of a layer (the short call, kept weights, stacks, both directions)
    gives under autocast what the functional kernels give with precision="bfloat16"."""
    x = np.random.default_rng(1).standard_normal((12, 3, 10)).astype(np.float32)
    for kwargs in ({}, {"num_layers": 2}, {"bidirectional": True, "num_layers": 2}):
        m = getattr(fr.nn, mode)(10, 24, **kwargs)
        m.eval()
        plain = m(x)[0]
        with fr.autocast("bfloat16"):
            first, again = m(x)[0], m(x)[0]  # the second reads the kept bfloat16 weights
        np.testing.assert_array_equal(first, again)
        assert 1e-6 < np.abs(first - plain).max() < 1e-2
        if not kwargs:
            cell = mode.lower()
            w = dict(w_ih=m.weight_ih_l0.data, w_hh=m.weight_hh_l0.data,
                     b_ih=m.bias_ih_l0.data, b_hh=m.bias_hh_l0.data)
            np.testing.assert_array_equal(first, _ours(cell, x, None, None, w,
                                                       precision="bfloat16"))


def test_changed_weights_are_seen_under_autocast():
    x = np.random.default_rng(2).standard_normal((8, 2, 6)).astype(np.float32)
    m = fr.nn.LSTM(6, 16)
    m.eval()
    with fr.autocast():
        before = m(x)[0]
        m.weight_hh_l0.data[3] += 0.5  # in place, through the public API
        after = m(x)[0]
    w = dict(w_ih=m.weight_ih_l0.data, w_hh=m.weight_hh_l0.data, b_ih=m.bias_ih_l0.data,
             b_hh=m.bias_hh_l0.data)
    np.testing.assert_array_equal(after, _ours("lstm", x, None, None, w, precision="bfloat16"))
    assert np.abs(after - before).max() > 1e-3


def test_what_autocast_leaves_in_float32():
    """float64 layers and an enabled=False block run as without autocast, bit for bit (the
    cells: tests/test_bf16_cells.py)."""
    x = np.random.default_rng(3).standard_normal((6, 2, 5)).astype(np.float32)
    m = fr.nn.GRU(5, 8)
    m64 = fr.nn.LSTM(5, 8, dtype=np.float64)
    m64.eval()
    x64 = x.astype(np.float64)
    plain = m64(x64)[0]
    with fr.autocast():
        np.testing.assert_array_equal(m64(x64)[0], plain)
    m.eval()
    plain = m(x)[0]
    with fr.autocast(), fr.autocast(enabled=False):
        np.testing.assert_array_equal(m(x)[0], plain)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("T,N,I,H", [(25, 5, 12, 40), (4, 38, 11, 42), (5, 19, 2, 66),
                                     (6, 24, 128, 40)])
def test_training_under_bf16_matches_the_reference(cell, T, N, I, H, threads):
    """A training forward with bfloat16 products gives inference's bits and saves what the
    backward needs; the backward's products dgates W_hh, dgates W_ih and (with AVX-512 kernels)
    the weight gradients run in bfloat16 too (float32 sums): its gradients are the reference's
    with the same rounding up to float32 sums, and not the float32 run's. (Batches where float32 would run by samples,
    dx in the loop: the bfloat16 plan computes dx after it.)"""
    x, h0, c0, w = _problem(cell, T, N, I, H, seed=4, scale=0.8)
    lengths = np.random.default_rng(N).integers(0, T + 1, N)
    lengths[0] = T
    kw = dict(lengths=lengths, precision="bfloat16")
    args = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    state = (h0, c0) if cell == "lstm" else (h0,)
    fwd, rfwd = getattr(F, cell + "_forward"), getattr(R, cell + "_forward")
    ours = fwd(x, *state, *args, training=True, **kw)
    np.testing.assert_array_equal(ours[0], fwd(x, *state, *args, **kw)[0])
    ref = rfwd(x, *state, *args, training=True, **kw)
    dy = np.random.default_rng(5).standard_normal(ours[0].shape).astype(np.float32)
    grads = getattr(F, cell + "_backward")(ours[-1], dy)
    # the weight gradients' operands as the plan takes them (float32 with AVX2 kernels)
    bf16_weights = _C.plan(cell, "tanh", T, N, I, H, np.dtype(np.float32), True,
                           fr.get_num_threads(), precision="bfloat16")["backward"][
                               "bfloat16_weight_grads"]
    expected = getattr(R, cell + "_backward")(
        dict(ref[-1], weight_grad_precision="bfloat16" if bf16_weights else "float32"), dy)
    fp32 = getattr(R, cell + "_backward")(rfwd(x, *state, *args, training=True,
                                               lengths=lengths)[-1], dy)
    for name, g, e, f in zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")
                             if cell == "lstm" else ("dx", "dh0", "dw_ih", "dw_hh", "db_ih",
                                                     "db_hh"), grads, expected, fp32):
        scale = np.abs(e).max()
        # a rare flip of a bfloat16 rounding (a state's, a gate gradient's: float32 and float64
        # round to different neighbours) moves a few values by about one bfloat16 step
        assert np.abs(g - e).max() <= 2.0 ** -7 * scale, name
        assert np.median(np.abs(g - e)) <= 1e-5 * scale, name
        assert np.abs(g - f).max() > 1e-6 * scale, name  # the bf16 forward is what it saw


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("T,N", [(1, 3), (2, 20), (10, 1)])
def test_short_backward_under_bf16_keeps_float32_products(cell, T, N, threads):
    """A backward of fewer than 4 steps (a decoder's step) takes float32 products, and one of
    fewer than 32 rows float32 weight gradients: packing the weights into bfloat16 pairs and
    summing whole 32-row tiles would cost it more than its products (the plan's
    bf16_backward_min_steps, bf16_weight_grads_min_rows). The short ones' gradients are the
    reference's backward of the same bfloat16 forward with exact products; the longer one's
    (bfloat16 products in its steps) within a bfloat16 step of the rounded reference's."""
    I, H = 12, 40
    x, h0, c0, w = _problem(cell, T, N, I, H, seed=6, scale=0.8)
    args = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    state = (h0, c0) if cell == "lstm" else (h0,)
    plan = _C.plan(cell, "tanh", T, N, I, H, np.dtype(np.float32), True, fr.get_num_threads(),
                   precision="bfloat16")["backward"]
    assert plan["bfloat16_products"] == (T >= 4)
    assert not plan["bfloat16_weight_grads"]
    ours = getattr(F, cell + "_forward")(x, *state, *args, training=True, precision="bfloat16")
    ref = getattr(R, cell + "_forward")(x, *state, *args, training=True, precision="bfloat16")
    dy = np.random.default_rng(7).standard_normal(ours[0].shape).astype(np.float32)
    grads = getattr(F, cell + "_backward")(ours[-1], dy)
    exact = getattr(R, cell + "_backward")(dict(ref[-1], precision="float32"), dy)
    rounded = getattr(R, cell + "_backward")(ref[-1], dy)
    names = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh") if cell == "lstm" else \
        ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
    for name, g, e, r in zip(names, grads, exact, rounded):
        scale = np.abs(r).max()
        if T >= 4:
            assert np.abs(g - r).max() <= 2.0 ** -7 * scale, name
            continue
        assert np.abs(g - e).max() <= 2e-5 * scale, name
        if name.startswith("dw"):  # (not the bfloat16 operands' sums)
            assert np.abs(g - r).max() > 1e-4 * scale, name


@pytest.mark.skipif("libasan" in __import__("os").environ.get("LD_PRELOAD", ""),
                    reason="fresh interpreters under the sanitizers report CPython's own leaks")
def test_widened_bf16_backward_takes_float32_weight_grads():
    """Where the kernels are AVX2 (their bfloat16 pairs widen to float32 FMAs) a backward under
    autocast keeps the steps' bfloat16 products but takes its weight gradients from float32
    operands (OpenBLAS): bf16_weight_grads_min_rows is "never" there (tuning_for). In a fresh
    process with FUSEDRNN_ISA=avx2: the plan says so, dx and dh0 stay within a bfloat16 step
    of the rounded reference, and the weight gradients are not its bfloat16-operand sums."""
    import json
    import os
    import subprocess
    import sys
    code = (
        "import json, numpy as np, fusedrnn as fr\n"
        "from fusedrnn import _C, functional as F, reference as R\n"
        "rng = np.random.default_rng(9); T, N, I, H = 10, 32, 12, 40; out = {}\n"
        "for cell, G in (('lstm', 4), ('gru', 3), ('rnn', 1)):\n"
        "    s = 0.8 / np.sqrt(H)\n"
        "    w = [(rng.standard_normal(sh) * sc).astype(np.float32) for sh, sc in"
        " (((G * H, I), s), ((G * H, H), s), ((G * H,), 0.1), ((G * H,), 0.1))]\n"
        "    x = rng.standard_normal((T, N, I)).astype(np.float32)\n"
        "    dy = rng.standard_normal((T, N, H)).astype(np.float32)\n"
        "    st = (None, None) if cell == 'lstm' else (None,)\n"
        "    plan = _C.plan(cell, 'tanh', T, N, I, H, np.dtype(np.float32), True,"
        " fr.get_num_threads(), precision='bfloat16')['backward']\n"
        "    ours = getattr(F, cell + '_forward')(x, *st, *w, training=True,"
        " precision='bfloat16')\n"
        "    ref = getattr(R, cell + '_forward')(x, *st, *w, training=True,"
        " precision='bfloat16')\n"
        "    g = getattr(F, cell + '_backward')(ours[-1], dy)\n"
        "    r = getattr(R, cell + '_backward')(ref[-1], dy)\n"
        "    r32 = getattr(R, cell + '_backward')(dict(ref[-1],"
        " weight_grad_precision='float32'), dy)\n"
        "    errs = [float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(g, r)]\n"
        "    meds = [float(np.median(np.abs(a - b)) / np.abs(b).max()) for a, b in zip(g, r32)]\n"
        "    # dx, dh0 first; dw_ih, dw_hh the fourth and third from the end\n"
        "    out[cell] = [plan['bfloat16_products'], plan['bfloat16_weight_grads'],"
        " errs[0], errs[1], errs[-4], errs[-3], meds[-4], meds[-3]]\n"
        "print(json.dumps([fr.info()['bf16_products'], out]))\n")
    env = dict(os.environ, FUSEDRNN_ISA="avx2")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    path, out = json.loads(run.stdout)
    assert "widened" in path
    for cell, (products, weight_grads, dx, dh0, dw_ih, dw_hh, m_ih, m_hh) in out.items():
        assert products and not weight_grads, cell
        assert dx <= 2.0 ** -7 and dh0 <= 2.0 ** -7, (cell, dx, dh0)
        # float32 operands: not the rounded reference's sums, but the reference's with float32
        # weight-gradient operands (up to a rare flip of a bfloat16 rounding in the loop)
        assert 1e-4 < dw_ih <= 2.0 ** -7 and 1e-4 < dw_hh <= 2.0 ** -7, (cell, dw_ih, dw_hh)
        assert m_ih <= 1e-5 and m_hh <= 1e-5, (cell, m_ih, m_hh)
    if fr.info()["kernels"] == "avx512":  # this process: the rows' rule
        plan = _C.plan("lstm", "tanh", 10, 32, 12, 40, np.dtype(np.float32), True, 1,
                       precision="bfloat16")["backward"]
        assert plan["bfloat16_weight_grads"]


def test_gradients_within_torch_autocast_bf16():
    """Training under autocast: the gradients' relative error against float64 stays within 1.5x
    of torch.autocast("cpu", bfloat16)'s on the same layer (measured here: ours 6.4e-4..3.8e-3,
    torch's 3.8e-3..8.7e-3: both round every product's operands; torch keeps its activations in
    bfloat16 too, ours stay float32; where oneDNN refuses torch's LSTM, its native path:
    ``benchmark_bf16.torch_autocast``)."""
    torch = pytest.importorskip("torch")
    from fusedrnn.benchmark_bf16 import torch_autocast
    rng = np.random.default_rng(0)
    T, N, I, H = 30, 3, 32, 96
    for mode in ("LSTM", "GRU", "RNN"):
        torch.manual_seed(1)
        m = getattr(torch.nn, mode)(I, H)
        cell = mode.lower()
        x = rng.standard_normal((T, N, I)).astype(np.float32)
        dy = rng.standard_normal((T, N, H)).astype(np.float32)
        sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        args = (sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"])
        state = (None, None) if cell == "lstm" else (None,)
        exact = getattr(R, cell + "_backward")(
            getattr(R, cell + "_forward")(x, *state, *args, training=True)[-1], dy)
        ctx = getattr(F, cell + "_forward")(x, *state, *args, training=True,
                                            precision="bfloat16")[-1]
        ours = getattr(F, cell + "_backward")(ctx, dy)
        xt = torch.from_numpy(x).requires_grad_()
        with torch_autocast(mode):
            y = m(xt)[0]
        y.float().backward(torch.from_numpy(dy))
        theirs = {"dx": xt.grad, "dw_ih": m.weight_ih_l0.grad, "dw_hh": m.weight_hh_l0.grad,
                  "db_hh": m.bias_hh_l0.grad}
        at = {"dx": 0, "dw_ih": -4, "dw_hh": -3, "db_hh": -1}
        for name, t in theirs.items():
            e = exact[at[name]]

            def rel(a, e=e):
                return np.linalg.norm(a - e) / np.linalg.norm(e)
            mine, torchs = rel(ours[at[name]]), rel(t.float().numpy())
            assert 1e-6 < mine <= 1.5 * torchs, (mode, name, mine, torchs)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_layers_train_under_autocast(mode):
    """A layer's training forward and backward under autocast are the functional kernels' with
    precision="bfloat16"; so is each direction of each layer of a bidirectional stack, and each
    is bfloat16 by the NumPy reference (a direction that ignores autocast fails)."""
    x = np.random.default_rng(6).standard_normal((9, 4, 7)).astype(np.float32)
    m = getattr(fr.nn, mode)(7, 20)
    with fr.autocast():
        y = m(x)[0]
        dx = m.backward(np.ones_like(y))[0]
    cell = mode.lower()
    w = (m.weight_ih_l0.data, m.weight_hh_l0.data, m.bias_ih_l0.data, m.bias_hh_l0.data)
    state = (None, None) if cell == "lstm" else (None,)
    out = getattr(F, cell + "_forward")(x, *state, *w, training=True, precision="bfloat16")
    np.testing.assert_array_equal(y, out[0])
    np.testing.assert_array_equal(dx, getattr(F, cell + "_backward")(out[-1],
                                                                     np.ones_like(y))[0])
    deep = getattr(fr.nn, mode)(7, 20, num_layers=2, bidirectional=True)
    y32 = deep(x)[0]
    g32 = deep.backward(np.ones_like(y32))[0]
    with fr.autocast():
        y16 = deep(x)[0]
        g16 = deep.backward(np.ones_like(y16))[0]
    assert 1e-6 < np.abs(y16 - y32).max() < 2e-2
    assert 1e-7 < np.abs(g16 - g32).max() < 5e-2 * np.abs(g32).max()
    # layer by layer, direction by direction: the bf16 kernel call on that direction's weights
    inp = x
    for layer in range(2):
        outs = []
        for d, sfx in enumerate(("", "_reverse")):
            w = dict(zip(("w_ih", "w_hh", "b_ih", "b_hh"),
                         (getattr(deep, f"{n}_l{layer}{sfx}").data
                          for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))))
            ours = _ours(cell, inp, None, None, w, reverse=bool(d), training=True,
                         precision="bfloat16")
            # and bfloat16 by the NumPy reference, which shares no code with the layers or the
            # kernels (a float32 direction is as far from it as the float32 reference is)
            ref = _ref(cell, inp, None, None, w, reverse=bool(d), precision="bfloat16")
            exact = _ref(cell, inp, None, None, w, reverse=bool(d))
            mine, gap = np.median(np.abs(ours - ref)), np.median(np.abs(exact - ref))
            assert mine < 0.01 * gap, (layer, d, mine, gap)
            outs.append(ours)
        inp = np.concatenate(outs, axis=-1)
    np.testing.assert_array_equal(y16, inp)


def test_autocast_is_thread_local_nestable_and_a_decorator():
    from fusedrnn.amp import autocast_precision
    assert autocast_precision() is None
    seen = []
    with fr.autocast():
        t = threading.Thread(target=lambda: seen.append(autocast_precision()))
        t.start()
        t.join()
        assert autocast_precision() == "bfloat16"
        with fr.autocast(enabled=False):
            assert autocast_precision() is None
        assert autocast_precision() == "bfloat16"
    assert autocast_precision() is None and seen == [None]

    @fr.autocast()
    def inside():
        return autocast_precision()
    assert inside() == "bfloat16" and autocast_precision() is None


@pytest.mark.parametrize("caller", [True, False])
def test_a_generator_ending_its_block_ends_its_own(caller):
    """A generator suspended inside a block, resumed to its end inside a block of the caller's:
    popping the top of the stack ended the caller's block (bfloat16 came back in an
    enabled=False block); each block now ends its own entry."""
    from fusedrnn.amp import autocast_precision

    def gen():
        with fr.autocast():
            yield

    g = gen()
    next(g)
    with fr.autocast(enabled=caller):
        next(g, None)
        assert autocast_precision() == ("bfloat16" if caller else None)
    assert autocast_precision() is None
    reused = fr.autocast()
    with reused:
        with reused:  # (one object nested: the inner exit ends the inner entry)
            pass
        assert autocast_precision() == "bfloat16"
    assert autocast_precision() is None


def test_a_block_ended_in_another_thread_ends_there_too():
    """A generator entered its block in one thread and was finished in another: the exit found
    nothing in that thread's stack, and the first thread stayed in bfloat16 for good."""
    from fusedrnn.amp import autocast_precision

    def gen():
        with fr.autocast():
            yield

    g = gen()
    next(g)
    assert autocast_precision() == "bfloat16"
    t = threading.Thread(target=lambda: next(g, None))
    t.start()
    t.join()
    assert autocast_precision() is None


def test_bad_precision_arguments_are_named():
    x, h0, c0, w = _problem("lstm", 2, 1, 3, 4)
    with pytest.raises(ValueError, match="precision"):
        _ours("lstm", x, h0, c0, w, precision="float16")
    with pytest.raises(TypeError, match="precision"):
        _ours("lstm", x, h0, c0, w, precision=16)
    with pytest.raises(ValueError, match="dtype"):
        fr.autocast("float16")
    for given in ("float32", "cpu"):  # (the message offered float32, which is refused)
        with pytest.raises(ValueError, match="^dtype: expected 'bfloat16' .*got '" + given):
            fr.autocast(given)
    with pytest.raises(ValueError, match="not torch.autocast's device_type"):
        fr.autocast("cpu")
    with pytest.raises(TypeError, match="enabled"):
        fr.autocast(enabled="yes")
    args = (x, h0, c0, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], None, False)
    with pytest.raises(TypeError, match="float32"):
        _C.recurrent_forward("lstm", "tanh", *(a.astype(np.float64) if isinstance(a, np.ndarray)
                                               else a for a in args), False, None, "bfloat16")
    with pytest.raises(ValueError, match="precision"):
        _C.recurrent_forward("lstm", "tanh", *args, False, None, "half")


@pytest.mark.skipif("libasan" in __import__("os").environ.get("LD_PRELOAD", ""),
                    reason="fresh interpreters under the sanitizers report CPython's own leaks")
def test_every_bf16_path_matches_the_reference():
    """The widening tiles (every CPU), vdpbf16ps (AVX-512 with AVX512-BF16) and AMX tiles (from
    batch 1 with amx_min_batch=1), whichever this CPU has, each in a fresh process: a short
    sequence of a batch of 6 to 2e-6 of the reference; info names the path."""
    import json
    import os
    import subprocess
    import sys
    code = (
        "import json, numpy as np, fusedrnn as fr\n"
        "from fusedrnn import functional as F, reference as R\n"
        "rng = np.random.default_rng(5); H = 33\n"
        "x = rng.standard_normal((3, 6, 7)).astype(np.float32)\n"
        "h0 = rng.standard_normal((6, H)).astype(np.float32)\n"
        "w = [(rng.standard_normal(s) * 0.2).astype(np.float32)"
        " for s in ((4 * H, 7), (4 * H, H), (4 * H,), (4 * H,))]\n"
        "a = F.lstm_forward(x, h0, h0, *w, precision='bfloat16')[0]\n"
        "b = R.lstm_forward(x, h0, h0, *w, precision='bfloat16')[0]\n"
        "print(json.dumps([fr.info()['bf16_products'], float(np.abs(a - b).max())]))\n")
    seen = set()
    for env in ({}, {"FUSEDRNN_TUNING": "amx_min_batch=1"}, {"FUSEDRNN_NO_AMX": "1"},
                {"FUSEDRNN_NO_BF16_DOT": "1", "FUSEDRNN_NO_AMX": "1"}, {"FUSEDRNN_ISA": "avx2"}):
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                             capture_output=True, text=True, check=True).stdout
        path, diff = json.loads(out)
        assert diff < 2e-6, (env, path, diff)
        seen.add(path)
    assert "bfloat16 pairs widened to float32 FMAs" in seen
    assert fr.info()["bf16_products"] in seen


def test_widening_tiles_sum_alike_whatever_the_batch():
    """The widening tiles (forced on any CPU) sum each output over k in the same order in a
    tile of 4 or 2 samples and in a lone sample's four-chunk tile: every sample of a batch of 7
    gets the bits it gets alone (forward outputs, backward dx and dh0), both directions."""
    import os
    import subprocess
    import sys
    code = (
        "import numpy as np, fusedrnn as fr\n"
        "from fusedrnn import functional as F\n"
        "fr.set_num_threads(1)\n"
        "rng = np.random.default_rng(8); T, N, I, H = 5, 7, 9, 72\n"
        "for cell, G in (('lstm', 4), ('gru', 3), ('rnn', 1)):\n"
        "    x = rng.standard_normal((T, N, I)).astype(np.float32)\n"
        "    dy = rng.standard_normal((T, N, H)).astype(np.float32)\n"
        "    w = [(rng.standard_normal(s) * 0.2).astype(np.float32)"
        " for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]\n"
        "    st = (None, None) if cell == 'lstm' else (None,)\n"
        "    fwd, bwd = getattr(F, cell + '_forward'), getattr(F, cell + '_backward')\n"
        "    for reverse in (False, True):\n"
        "        def run(xs, dys):\n"
        "            out = fwd(xs, *st, *w, training=True, reverse=reverse,"
        " precision='bfloat16')\n"
        "            return out[0], *bwd(out[-1], dys)[:2]\n"
        "        whole = run(x, dy)\n"
        "        for n in range(N):\n"
        "            alone = run(x[:, n:n + 1].copy(), dy[:, n:n + 1].copy())\n"
        "            for a, b in zip(whole, alone):\n"
        "                assert np.array_equal(a[..., n:n + 1, :], b), (cell, reverse, n)\n"
        "print(fr.info()['bf16_products'])\n")
    env = dict(os.environ, FUSEDRNN_NO_AMX="1", FUSEDRNN_NO_BF16_DOT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "widened" in out.stdout
