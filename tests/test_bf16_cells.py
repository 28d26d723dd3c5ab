"""bfloat16 autocast in the cells (fusedrnn.nn.RNNCell, LSTMCell, GRUCell) and the seq2seq
decoder that steps them: a step under fr.autocast is the functional kernel's step with
precision="bfloat16", bit for bit, in eval and training mode (its backward too), from the
converted weights the cell keeps between steps (KeptWeights, as the layers keep theirs), which
no change to a weight through the public API ever leaves stale; float64 cells and
enabled=False stay float32. A seq2seq model decodes and trains under autocast close to float32."""
import json

import numpy as np
import pytest

from conftest import copy_batch, trained_copy_model
import fusedrnn as fr
from fusedrnn import functional as F
from fusedrnn.cli import main
from fusedrnn.nn import Seq2Seq
from fusedrnn.optim import SGD

N, I, H = 3, 12, 40
CELLS = {"lstm": ("LSTMCell", {}), "gru": ("GRUCell", {}), "rnn_tanh": ("RNNCell", {}),
         "rnn_relu": ("RNNCell", {"nonlinearity": "relu"})}


def make(name, dtype=np.float32, **kw):
    cls, extra = CELLS[name]
    return getattr(fr.nn, cls)(I, H, dtype=dtype, seed=0, **extra, **kw)


def inputs(steps, dtype=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((steps, N, I)).astype(dtype)


def step(cell, x, state):
    """One cell call: (the new state as a tuple of arrays, what to pass as the next state)."""
    out = cell(x, state)
    return (out if isinstance(out, tuple) else (out,)), out


def functional(cell, x, state, precision, training=False):
    """The cell's step through the functional kernel from copies of its weights (no kept
    forms): (the new state as a tuple, ctx)."""
    w = [None if p is None else np.array(p._data)
         for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
    h0, c0 = (state if isinstance(state, tuple) else (state, None)) if state is not None \
        else (None, None)
    kw = dict(training=training, precision=precision)
    if cell._cell == "lstm":
        _, h, c, ctx = F.lstm_forward(x[None], h0, c0, *w, **kw)
        return (h, c), ctx
    if cell._cell == "gru":
        _, h, ctx = F.gru_forward(x[None], h0, *w, **kw)
    else:
        _, h, ctx = F.rnn_forward(x[None], h0, *w, nonlinearity=cell.nonlinearity, **kw)
    return (h,), ctx


def initial_state(name, seed=3):
    """A non-zero state (from zeros the first step's W_hh h would be 0 in any precision)."""
    h = (np.random.default_rng(seed).standard_normal((N, H)) * 0.5).astype(np.float32)
    return (h, h * 0.5) if name == "lstm" else h


def kept_cache(cell):
    kept = cell._kept.get(0)
    return None if kept is None else kept[1]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("name", list(CELLS))
def test_eval_steps_under_autocast_are_the_kernels_bf16(name, bias, threads):
    """Every step (the first converts W_hh, the next ones read the kept conversion) equals the
    functional kernel's with precision="bfloat16" and differs from float32's."""
    cell = make(name, bias=bias)
    cell.eval()
    xs = inputs(4)
    state, caches = initial_state(name), set()
    with fr.autocast("bfloat16"):
        for x in xs:
            want, _ = functional(cell, x, state, "bfloat16")
            exact, _ = functional(cell, x, state, "float32")
            got, state = step(cell, x, state)
            caches.add(id(kept_cache(cell)))
            for g, w, e in zip(got, want, exact):
                np.testing.assert_array_equal(g, w)
                assert 1e-7 < np.abs(g - e).max() < 1e-2
    assert len(caches) == 1 and kept_cache(cell).forms > 0  # one conversion for every step


@pytest.mark.parametrize("name", list(CELLS))
def test_training_steps_and_backward_under_autocast_are_the_kernels_bf16(name, threads):
    """A training-mode sequence of steps (the pending steps' contexts do not cost the kept
    conversion), then its backward: the functional kernels' with precision="bfloat16" forward
    and float32 backward, bit for bit."""
    cell = make(name)
    xs = inputs(4)
    state, expected, caches = initial_state(name), [], set()
    with fr.autocast():
        for x in xs:
            want, ctx = functional(cell, x, state, "bfloat16", training=True)
            exact, _ = functional(cell, x, state, "float32", training=True)
            got, state = step(cell, x, state)
            caches.add(id(kept_cache(cell)))
            expected.append(ctx)
            for g, w, e in zip(got, want, exact):
                np.testing.assert_array_equal(g, w)
                assert 1e-7 < np.abs(g - e).max() < 1e-2
    assert len(caches) == 1 and kept_cache(cell).forms > 0 and cell.pending_steps == len(xs)
    dh = np.random.default_rng(2).standard_normal((N, H)).astype(np.float32)
    dnext = (dh, None) if name == "lstm" else (dh,)
    grads = {"dw_ih": 0, "dw_hh": 0, "db_ih": 0, "db_hh": 0}
    for ctx in reversed(expected):
        if name == "lstm":
            dx, (dh0, dc0) = cell.backward(*dnext)
            fdx, fdh0, fdc0, *dw = F.lstm_backward(ctx, None, *dnext)
            np.testing.assert_array_equal(dc0, fdc0)
            dnext = (dh0 + dh, dc0)
        else:
            dx, dh0 = cell.backward(*dnext)
            fdx, fdh0, *dw = getattr(F, cell._cell + "_backward")(ctx, None, *dnext)
            dnext = (dh0 + dh,)
        np.testing.assert_array_equal(dx, fdx[0])
        np.testing.assert_array_equal(dh0, fdh0)
        grads = {k: g + d for (k, g), d in zip(grads.items(), dw)}
    for k, p in zip(grads, (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)):
        np.testing.assert_array_equal(p.grad, grads[k])
    assert not cell._kept.held  # every step popped: no reference counted any more


@pytest.mark.parametrize("name", list(CELLS))
def test_what_stays_float32(name):
    """float64 cells under autocast, and float32 cells in an enabled=False block, give the
    functional kernel's own-precision steps bit for bit (from their kept packs), in eval and
    training mode."""
    for dtype, block in ((np.float64, fr.autocast()), (np.float32, fr.autocast(enabled=False))):
        for training in (False, True):
            cell = make(name, dtype=dtype)
            cell.train(training)
            state = initial_state(name)
            state = tuple(a.astype(dtype) for a in state) if isinstance(state, tuple) \
                else state.astype(dtype)
            for x in inputs(3, dtype):
                want, _ = functional(cell, x, state, "float32", training)
                with fr.autocast(), block:
                    got, state = step(cell, x, state)
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w)
            assert kept_cache(cell) is not None


# ---------------------------------------------------------------------------- no stale weights
# Each changes the cell's weights through the public API between two steps under autocast.
def change_by_optimizer(cell, x):
    opt = SGD(cell.parameters(), lr=0.5)
    cell.zero_grad()
    was = cell.training
    cell.train()
    out = cell(x)
    h = out[0] if isinstance(out, tuple) else out
    cell.backward(np.ones_like(h))
    opt.step()
    cell.train(was)


def change_in_place(cell, x):
    cell.weight_hh.data[...] = cell.weight_hh.data[::-1].copy()


def change_a_bias_in_place(cell, x):
    cell.bias_hh.data[:5] = 0.5


def change_by_load_state_dict(cell, x):
    cell.load_state_dict({k: v * 1.5 for k, v in cell.state_dict().items()})


def change_through_a_kept_name(cell, x):
    w = cell.weight_hh.data  # taken before the step that converts W_hh ...
    step(cell, x, None)
    w *= -1.0  # ... and written after it, without touching the Parameter


CHANGES = [change_by_optimizer, change_in_place, change_a_bias_in_place,
           change_by_load_state_dict, change_through_a_kept_name]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "training"])
@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_no_change_is_answered_from_a_stale_conversion(name, change, training):
    cell = make(name)
    cell.train(training)
    xs = inputs(3, seed=4)
    with fr.autocast():
        _, state = step(cell, xs[0], initial_state(name))  # converts and keeps W_hh
        assert kept_cache(cell) is not None
        change(cell, xs[1])
        after, _ = step(cell, xs[2], state)
        want, _ = functional(cell, xs[2], state, "bfloat16")
        again, _ = step(cell, xs[2], state)  # kept again from the new values
    for a, w, g in zip(after, want, again):
        np.testing.assert_array_equal(a, w)
        np.testing.assert_array_equal(g, w)
    stale = make(name)  # the old weights on the same input: the change did change the step
    stale.train(training)
    with fr.autocast():
        old, _ = step(stale, xs[2], state)
    assert not all(np.array_equal(o, a) for o, a in zip(old, after))


# ---------------------------------------------------------------------------- seq2seq
def _trained(cell):
    """A float32 copy model trained briefly (~1 s), so that decoding is decided, not a tie."""
    return trained_copy_model(cell, "bahdanau" if cell == "lstm" else "luong", 24, np.float32,
                              60)


@pytest.mark.parametrize("beam_size", [1, 3], ids=["greedy", "beam 3"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_seq2seq_decodes_under_autocast_close_to_float32(cell, beam_size):
    model = _trained(cell)
    src, lengths, _ = copy_batch(np.random.default_rng(5), 16)

    def decode():
        if beam_size == 1:
            return model.greedy_decode(src, lengths, max_len=8)
        return model.beam_search(src, lengths, beam_size=beam_size, max_len=8)

    exact = decode()
    with fr.autocast():
        bf16 = decode()
    assert kept_cache(model.decoder.cells[0]) is not None  # the decoder's cells kept W_hh
    same = sum(np.array_equal(a, b) for a, b in zip(exact.tokens, bf16.tokens))
    assert same >= len(src) - 1, (same, len(src))
    close = [np.array_equal(a, b) for a, b in zip(exact.tokens, bf16.tokens)]
    np.testing.assert_allclose(bf16.scores[close], exact.scores[close], atol=2e-2)
    assert not np.array_equal(bf16.scores, exact.scores)  # bfloat16 did run
    for a, b, c in zip(exact.attention, bf16.attention, close):
        if c:
            np.testing.assert_allclose(b, a, atol=2e-2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_seq2seq_trains_under_autocast(cell):
    """Teacher-forced training steps under autocast: the loss and the gradients are close to
    float32's (not equal: the decoder's products ran in bfloat16), and the loss falls."""
    def model():
        return Seq2Seq(12, 12, embed_size=8, hidden_size=24, cell=cell, seed=3)

    src, lengths, tgt = copy_batch(np.random.default_rng(6), 16)
    m32, m16 = model(), model()
    loss32 = m32.loss(src, lengths, tgt)
    m32.backward()
    with fr.autocast():
        loss16 = m16.loss(src, lengths, tgt)
        m16.backward()
    assert loss16 != loss32 and abs(loss16 - loss32) < 1e-2 * loss32
    for (name, p32), p16 in zip(m32.named_parameters(), m16.parameters()):
        err = np.linalg.norm(p16.grad - p32.grad) / np.linalg.norm(p32.grad)
        assert err < 3e-2, (name, err)
    opt = fr.optim.Adam(m16.parameters(), lr=0.02)
    losses = []
    with fr.autocast():
        for _ in range(15):
            m16.zero_grad()
            losses.append(m16.loss(src, lengths, tgt))
            m16.backward()
            opt.step()
    assert losses[-1] < 0.8 * losses[0]


def _run_json(capsys, *argv):
    assert main(list(argv) + ["--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_short_dates_run_under_bfloat16_reaches_float32(capsys):
    """`fusedrnn train dates --precision bfloat16` (encoder layers and decoder cells under
    autocast) reaches the float32 run's exact match within a small margin."""
    runs = {p: _run_json(capsys, "train", "dates", "--train-size", "1500", "--test-size", "200",
                         "--epochs", "2", "--hidden", "32", "--lr", "0.01", "--batch-size", "32",
                         "--beam", "1", "--seed", "1", "--precision", p)
            for p in ("float32", "bfloat16")}
    assert runs["bfloat16"]["precision"] == "bfloat16"
    assert runs["bfloat16"]["final_loss"] != runs["float32"]["final_loss"]  # bfloat16 did run
    assert runs["float32"]["test_exact_match"] > 0.1
    assert runs["bfloat16"]["test_exact_match"] >= runs["float32"]["test_exact_match"] - 0.05
