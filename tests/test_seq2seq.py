"""Seq2Seq and Captioner: the whole loss against central differences in float64 (each score,
both decoder styles, LSTM and GRU, bidirectional and multi-layer encoders, mixed source lengths,
padded targets, teacher forcing below 1); greedy = beam search with k=1; batched decoding =
decoding one sample at a time; a short seeded `dates` run beats chance; the CLI end to end."""
import json

import numpy as np
import pytest

from conftest import (FINITE_DIFFERENCE_EPS, TOLERANCES, random_batch,
                      relative_error, trained_copy_model)
import fusedrnn as fr
from fusedrnn.cli import main
from fusedrnn.data.dates import FORMATS, dates_split, format_date
from fusedrnn.nn import Captioner, Seq2Seq

SRC = np.array([[3, 4, 5, 6, 7], [5, 3, 0, 0, 0], [4, 8, 4, 1, 0]])
SRC_LENGTHS = np.array([5, 2, 4])
TGT = np.array([[3, 4, 2, 0], [5, 2, 0, 0], [6, 3, 7, 2]])


def check_gradients(model, loss, rng, per_parameter=6):
    """Analytic gradients vs central differences on a few entries of every parameter."""
    model.zero_grad()
    loss()
    model.backward()
    analytic, numeric = [], []
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, min(per_parameter, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + FINITE_DIFFERENCE_EPS
            up = loss()
            flat[i] = old - FINITE_DIFFERENCE_EPS
            down = loss()
            flat[i] = old
            numeric.append((up - down) / (2 * FINITE_DIFFERENCE_EPS))
            analytic.append(p.grad.reshape(-1)[i])
    return relative_error(analytic, numeric)


CONFIGS = [  # cell, attention style, score, bidirectional, layers
    ("lstm", "bahdanau", "additive", True, 1),
    ("gru", "bahdanau", "additive", False, 2),
    ("lstm", "luong", "general", True, 2),
    ("gru", "luong", "general", True, 1),
    ("lstm", "luong", "dot", False, 1),
    ("gru", "bahdanau", "dot", True, 1),
]


@pytest.mark.parametrize("cell,attention,score,bidirectional,layers", CONFIGS)
def test_seq2seq_loss_gradients_vs_finite_differences(cell, attention, score, bidirectional,
                                                      layers, rng):
    # dot needs query size == key size: hidden 4 and a one-direction encoder, or hidden 4 with
    # a bidirectional encoder whose keys (8) meet a Luong/Bahdanau query of 4 -> use general
    model = Seq2Seq(9, 8, embed_size=5, hidden_size=4, num_layers=layers,
                    bidirectional=bidirectional, cell=cell, attention=attention,
                    score=score if not (score == "dot" and bidirectional) else "general",
                    dtype=np.float64, seed=3)
    err = check_gradients(model, lambda: model.loss(SRC, SRC_LENGTHS, TGT), rng)
    assert err < TOLERANCES["reference_vs_finite_differences"]


def test_seq2seq_teacher_forcing_ratio_gradients(rng):
    """With a ratio below 1 some inputs are the model's own argmax (a constant for the
    gradient); a fixed seed makes every evaluation pick the same ones."""
    model = Seq2Seq(9, 8, embed_size=5, hidden_size=4, attention="luong", dtype=np.float64,
                    seed=4)
    err = check_gradients(model, lambda: model.loss(SRC, SRC_LENGTHS, TGT, teacher_forcing=0.5,
                                                    rng=np.random.default_rng(0)), rng)
    assert err < TOLERANCES["reference_vs_finite_differences"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_captioner_loss_gradients_vs_finite_differences(cell, rng):
    model = Captioner(6, 8, embed_size=5, hidden_size=4, num_layers=2, cell=cell,
                      dtype=np.float64, seed=5)
    x = rng.standard_normal((3, 6))
    err = check_gradients(model, lambda: model.loss(x, TGT), rng)
    assert err < TOLERANCES["reference_vs_finite_differences"]


def test_source_padding_changes_nothing():
    """Extra padding columns (and whatever token they hold) leave the loss and every
    gradient unchanged, the embedding table's too: the encoder stops at each length, attention
    masks the rest, and no gradient leaks into padding steps."""
    model = Seq2Seq(9, 8, embed_size=5, hidden_size=4, dtype=np.float64, seed=6)
    model.zero_grad()
    loss = model.loss(SRC, SRC_LENGTHS, TGT)
    model.backward()
    grads = {k: p.grad.copy() for k, p in model.named_parameters()}
    wide = np.concatenate([SRC, np.full((3, 3), 7)], axis=1)
    model.zero_grad()
    assert model.loss(wide, SRC_LENGTHS, TGT) == pytest.approx(loss, rel=1e-12)
    model.backward()
    # src_embedding.weight included: the padding tokens (7, a real row) get a zero dx
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, grads[k], rtol=1e-10, atol=1e-13, err_msg=k)


def _trained(attention="bahdanau", cell="lstm"):
    return trained_copy_model(cell, attention, 16, np.float64, 80)


def _same_results(a, b, rtol=1e-9):
    assert len(a.tokens) == len(b.tokens)
    for ta, tb in zip(a.tokens, b.tokens):
        np.testing.assert_array_equal(ta, tb)
    np.testing.assert_allclose(a.scores, b.scores, rtol=rtol)
    np.testing.assert_allclose(a.log_probs, b.log_probs, rtol=rtol)
    np.testing.assert_array_equal(a.finished, b.finished)
    assert (a.attention is None) == (b.attention is None)
    for wa, wb in zip(a.attention or [], b.attention or []):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_beam_search_k1_equals_greedy(attention, rng):
    model = _trained(attention, "lstm" if attention == "bahdanau" else "gru")
    src, lengths = random_batch(rng)
    greedy = model.greedy_decode(src, lengths, max_len=9)
    beam = model.beam_search(src, lengths, beam_size=1, max_len=9)
    _same_results(greedy, beam)
    assert len({len(t) for t in greedy.tokens}) > 1       # some stop early, some later
    for t, w, n in zip(greedy.tokens, greedy.attention, lengths):
        assert w.shape == (len(t), n)
        np.testing.assert_allclose(w.sum(axis=1), 1.0)


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("attention,cell", [("bahdanau", "lstm"), ("luong", "gru")])
def test_batched_decoding_equals_one_at_a_time(attention, cell, beam_size, rng):
    model = _trained(attention, cell)
    src, lengths = random_batch(rng)

    def decode(s, l):
        if beam_size == 1:
            return model.greedy_decode(s, l, max_len=9)
        return model.beam_search(s, l, beam_size=beam_size, max_len=9)

    batched = decode(src, lengths)
    for n in range(len(src)):
        single = decode(src[n:n + 1, :lengths[n]], lengths[n:n + 1])
        np.testing.assert_array_equal(batched.tokens[n], single.tokens[0])
        assert batched.scores[n] == pytest.approx(single.scores[0], rel=1e-9)
        np.testing.assert_allclose(batched.attention[n], single.attention[0], rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_decode_cut_by_max_len_is_marked_unfinished(beam_size, rng):
    """A hypothesis still going at max_len competes by its score over its tokens (no end
    token): finished tells the user which samples that was (nothing did)."""
    model = _trained("bahdanau", "lstm")
    src, lengths = random_batch(rng)

    def decode(max_len):
        if beam_size == 1:
            return model.greedy_decode(src, lengths, max_len=max_len)
        return model.beam_search(src, lengths, beam_size=beam_size, max_len=max_len)

    full, cut = decode(40), decode(2)
    assert full.finished.dtype == bool and full.finished.all()
    # finished: the end token came within the 2 steps (at most one token before it)
    np.testing.assert_array_equal(cut.finished, [len(t) < 2 for t in cut.tokens])
    if beam_size == 1:  # (greedy: cut exactly where the full decode is longer)
        np.testing.assert_array_equal(cut.finished, [len(t) < 2 for t in full.tokens])
    assert not cut.finished.all()


def test_beam_search_finds_at_least_greedy_likelihood(rng):
    model = _trained("luong", "gru")
    src, lengths = random_batch(rng, N=8)
    greedy = model.greedy_decode(src, lengths, max_len=9, length_penalty=0.0)
    beam = model.beam_search(src, lengths, beam_size=4, max_len=9, length_penalty=0.0)
    assert np.all(beam.log_probs >= greedy.log_probs - 1e-12)


def test_captioner_decoding():
    model = Captioner(6, 8, embed_size=5, hidden_size=6, dtype=np.float64, seed=8)
    model.decoder.out.bias.data[2] += 1.0
    x = np.random.default_rng(1).standard_normal((5, 6))
    greedy = model.greedy_decode(x, max_len=6)
    _same_results(greedy, model.beam_search(x, beam_size=1, max_len=6))
    assert greedy.attention is None
    for n in range(5):
        np.testing.assert_array_equal(model.beam_search(x[n:n + 1], beam_size=3, max_len=6)
                                      .tokens[0], model.beam_search(x, beam_size=3, max_len=6)
                                      .tokens[n])


def test_decoder_backward_checks_dlogits_before_taking_its_steps():
    """Decoder.backward called directly with dlogits of another vocabulary size, batch or
    kind is named and keeps the saved steps (it cleared them first, then failed in a
    reshape): the corrected call back-propagates them."""
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0)
    logits = model.forward(SRC, SRC_LENGTHS, TGT)  # [N, T, V]
    good = np.ascontiguousarray(np.swapaxes(np.ones_like(logits), 0, 1))  # [T, N, V]
    for wrong, error in ((good[:, :, :-1], ValueError), (good[:, :-1], ValueError),
                         (good.tolist(), TypeError), (good.astype(np.int64), TypeError)):
        with pytest.raises(error, match="^dlogits: expected"):
            model.decoder.backward(wrong)
    dh0 = model.decoder.backward(good)[0]
    assert np.isfinite(dh0).all() and model.decoder._steps == []


def test_decoder_step_keeps_its_own_tokens_and_checks_them():
    """A decode loop refilling one token buffer in place trains as with new arrays each step
    (the step kept the caller's array, and backward read the later ids: wrong embedding
    rows); ids out of the vocabulary are named in eval mode too (-1 read the last row)."""
    r = np.random.default_rng(0)
    N, S, K, V = 2, 3, 4, 7
    keys, tgt = r.standard_normal((N, S, K)), np.array([[3, 4, 5], [6, 3, 2]])
    dlogits = r.standard_normal((3, N, V))

    def embedding_grad(reuse):
        d = fr.nn.Decoder(V, 3, 4, key_size=K, dtype=np.float64, seed=0)
        d.attention.set_memory(keys)
        state, buf = d.initial_state(np.zeros((1, N, 4))), np.ones(N, np.int64)
        for t in range(3):
            _, state, _ = d.step(buf if reuse else buf.copy(), state)
            buf[:] = tgt[:, t]
        d.backward(dlogits)
        return d.embedding.weight.grad

    fresh = embedding_grad(False)
    assert sorted(np.nonzero(fresh.any(axis=1))[0]) == [1, 3, 4, 6]
    np.testing.assert_array_equal(embedding_grad(True), fresh)
    d = fr.nn.Decoder(V, 3, 4, attention=None, dtype=np.float64, seed=0).eval()
    state = d.initial_state(np.zeros((1, N, 4)))
    for bad, match in (([-1, 3], r"tokens: expected token ids in \[0, 6\]"),
                       ([7, 3], r"tokens: expected token ids in \[0, 6\]"),
                       ([1.0, 3.0], r"tokens: expected an integer array \[N\]"),
                       ([1, 2, 3], r"tokens: expected shape \(2,\)")):
        with pytest.raises(ValueError, match=match):
            d.step(np.array(bad), state)


def test_dropout_is_checked_with_one_layer_too():
    """One layer has no dropout between layers, but a wrong value is still named (it passed
    unchecked), as every layer names it."""
    for dropout in (-5, "abc", 2.0, True):
        with pytest.raises(ValueError, match=r"^dropout: expected a number in \[0, 1\]"):
            Seq2Seq(9, 9, embed_size=4, hidden_size=5, dropout=dropout)
    assert Seq2Seq(9, 9, embed_size=4, hidden_size=5, dropout=0.5).encoder.dropout == 0.0


def test_decoding_and_loss_refuse_bad_arguments():
    """Named errors, not NumPy's: max_len < 1, float or out-of-range source lengths, targets
    of another batch size or of no step; an empty batch decodes to nothing by either search."""
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0)
    for decode in (model.greedy_decode, model.beam_search):
        for max_len in (0, -1, 2.5):
            with pytest.raises((ValueError, TypeError), match="max_len"):
                decode(SRC, SRC_LENGTHS, max_len=max_len)
        assert decode(SRC[:0], SRC_LENGTHS[:0], max_len=3).tokens == []
    with pytest.raises(TypeError, match="src_lengths: expected an integer array"):
        model.loss(SRC, SRC_LENGTHS + 0.5, TGT)
    with pytest.raises(ValueError, match=r"src_lengths: expected values in \[0, 5\]"):
        model.greedy_decode(SRC, SRC_LENGTHS + 1)
    for bad in (SRC + 1, SRC - 1):  # the source vocabulary, named as src (not Embedding's)
        with pytest.raises(ValueError, match=r"src: expected token ids in \[0, 8\]"):
            model.greedy_decode(bad, SRC_LENGTHS)
    for tgt in (TGT[:2], TGT[:, :0]):
        with pytest.raises(ValueError, match=r"tgt: expected \[3, T\] with T >= 1"):
            model.loss(SRC, SRC_LENGTHS, tgt)
    ragged = [[3, 4, 5], [6, 7], [2, 2, 2]]  # named, not NumPy's inhomogeneous shape
    with pytest.raises(ValueError, match=r"src: expected an integer array \[N, S\], got a list"):
        model.loss(ragged, SRC_LENGTHS, TGT)
    with pytest.raises(ValueError, match=r"tgt: expected an integer array \[N, T\], got a list"):
        model.loss(SRC, SRC_LENGTHS, ragged)
    captioner = Captioner(6, 8, embed_size=5, hidden_size=6, seed=8)
    with pytest.raises(ValueError, match=r"tgt: expected \[5, T\]"):
        captioner.loss(np.zeros((5, 6)), TGT)
    with pytest.raises(ValueError, match="max_len"):
        captioner.greedy_decode(np.zeros((5, 6)), max_len=0)


def test_inputs_may_be_given_by_keyword_as_forward_takes_them():
    """loss, greedy_decode and beam_search took their inputs by position only (forward by
    keyword too): ``model.loss(src, lengths, tgt=tgt)`` was a TypeError."""
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0)
    assert model.loss(SRC, SRC_LENGTHS, tgt=TGT) == model.loss(SRC, SRC_LENGTHS, TGT) == \
        model.loss(src=SRC, src_lengths=SRC_LENGTHS, tgt=TGT)
    by_keyword = model.greedy_decode(src=SRC, src_lengths=SRC_LENGTHS)
    _same_results(by_keyword, model.greedy_decode(SRC, SRC_LENGTHS))
    _same_results(model.beam_search(SRC, src_lengths=SRC_LENGTHS, beam_size=2),
                  model.beam_search(SRC, SRC_LENGTHS, beam_size=2))
    with pytest.raises(TypeError, match=r"expected the inputs \(src, src_lengths\), the last 1 "
                                        r"optional, got 'src_len' by keyword$"):
        model.greedy_decode(SRC, src_len=SRC_LENGTHS)
    with pytest.raises(TypeError, match="got 'src' by keyword too"):
        model.beam_search(SRC, src=SRC)


def test_special_ids_targets_and_options_are_checked():
    """Ids the vocabulary cannot hold, an end token equal to the padding (never learned),
    targets out of the vocabulary (-1 wrapped around silently), and the decoding and
    teacher-forcing options: errors naming the argument."""
    for options, name in ((dict(eos_idx=9), "eos_idx"), (dict(eos_idx=-1), "eos_idx"),
                          (dict(bos_idx=6), "bos_idx"), (dict(pad_idx=2), "eos_idx"),
                          (dict(seed="a"), "seed"), (dict(attention="luong", attention_size=7),
                                                     "attention_size"),
                          (dict(score="dot"), "bidirectional=False")):  # (the default encoder)
        with pytest.raises((ValueError, TypeError), match=name):
            Seq2Seq(9, 6, embed_size=4, hidden_size=5, **options)
    with pytest.raises(ValueError, match="eos_idx"):
        Captioner(6, 2, embed_size=5, hidden_size=6)
    with pytest.raises(ValueError, match="^dropout: expected a number in"):
        Captioner(6, 8, embed_size=5, hidden_size=6, dropout=1.5)
    captioner = Captioner(6, 8, embed_size=5, hidden_size=6, seed=0)
    features = np.ones((2, 6), np.float32)
    for decode in (captioner.greedy_decode, captioner.beam_search):
        for inputs in ((), (features, features)):
            with pytest.raises(TypeError, match=r"expected the inputs \(features\), got"):
                decode(*inputs)
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0)
    for bad in (-1, 9, -100):
        tgt = TGT.copy()
        tgt[0, 0] = bad
        with pytest.raises(ValueError, match=r"tgt: expected token ids in \[0, 8\]"):
            model.loss(SRC, SRC_LENGTHS, tgt)
    for teacher_forcing in (2, -1, float("nan"), "x"):
        with pytest.raises(ValueError, match="teacher_forcing: expected a number in"):
            model.loss(SRC, SRC_LENGTHS, TGT, teacher_forcing=teacher_forcing)
    with pytest.raises(TypeError, match="rng: expected a numpy.random.Generator"):
        model.loss(SRC, SRC_LENGTHS, TGT, teacher_forcing=0.5, rng=0)
    for penalty in ("x", float("nan")):
        with pytest.raises(ValueError, match="length_penalty: expected a finite number"):
            model.beam_search(SRC, SRC_LENGTHS, length_penalty=penalty)
    with pytest.raises(TypeError, match="features: expected a float array"):
        Captioner(6, 8, embed_size=5, hidden_size=6).greedy_decode(np.full((2, 6), "a"))


def test_backward_checks_dlogits_and_a_decode_between_refuses_it_up_front():
    """dlogits of another shape is named before anything is consumed; a decode between the
    forward and the backward discards the saved steps, so the backward refuses before adding
    to any gradient (it used to add the output layer's, then fail in the attention)."""
    for model, inputs in ((Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0), (SRC, SRC_LENGTHS)),
                          (Captioner(6, 9, embed_size=5, hidden_size=6, dropout=0.2, seed=8),
                           (np.ones((3, 6)),))):
        model.zero_grad()
        logits = model.forward(*inputs, TGT)
        for wrong in (logits[:, :, :-1], logits.transpose(1, 0, 2)):
            with pytest.raises(ValueError, match=r"dlogits: expected shape \(3, 4, 9\)"):
                model.backward(wrong)
        model.backward(np.ones_like(logits))  # still there after the refusals
        model.zero_grad()
        model.loss(*inputs, TGT)
        model.greedy_decode(*inputs, max_len=3)
        assert model.training
        with pytest.raises(RuntimeError, match="after a greedy_decode/beam_search"):
            model.backward()
        assert all(p.grad is None for p in model.parameters())


def test_decoding_from_threads_equals_serial():
    """One model decoded from several threads at once: each call's own result (decodes hold
    the model's lock; they used to share the attention's memory and the eval switch)."""
    import threading
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=8, seed=3)
    rng = np.random.default_rng(0)
    requests = [(rng.integers(3, 9, (n, 5)), np.full(n, 5)) for n in (1, 2, 3, 2) * 3]
    expected = [model.greedy_decode(*r, max_len=6).tokens for r in requests]
    got = [None] * len(requests)

    def work(i):
        got[i] = model.greedy_decode(*requests[i], max_len=6).tokens
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, expected):
        assert [list(x) for x in a] == [list(x) for x in b]
    assert model.training
    import copy
    twin = copy.deepcopy(model)  # the lock is not in the model: copies still work
    assert [list(x) for x in twin.greedy_decode(*requests[0], max_len=6).tokens] == \
        [list(x) for x in expected[0]]


def test_teacher_forcing_draws_from_the_model_seed():
    """teacher_forcing < 1 without an rng: the same seed, the same draws (they came from a
    fresh unseeded generator)."""
    def losses():
        model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=2)
        return [model.loss(SRC, SRC_LENGTHS, TGT, teacher_forcing=0.5) for _ in range(3)]
    assert losses() == losses()


@pytest.mark.parametrize("decode", ["greedy_decode", "beam_search"])
@pytest.mark.parametrize("make", [lambda **ids: Seq2Seq(9, 7, embed_size=4, hidden_size=5,
                                                        dtype=np.float64, seed=0, **ids),
                                  lambda **ids: Captioner(3, 7, hidden_size=5, dtype=np.float64,
                                                          seed=0, **ids)])
@pytest.mark.parametrize("ids", [{}, {"pad_idx": 4, "bos_idx": 5, "eos_idx": 6},
                                 {"bos_idx": 2, "eos_idx": 2}])
def test_decoding_never_emits_the_padding_or_start_ids(decode, make, ids):
    # a model that favours them (untrained, or a source of padding alone): the next best id,
    # scored by its probability under the whole vocabulary's softmax
    model = make(**ids)
    pad, bos, eos = model.pad_idx, model.bos_idx, model.eos_idx
    banned = {pad, bos} - {eos}  # (a start id that is the end id too ends a decode)
    model.decoder.out.bias.data[list(banned)] += 30.0
    inputs = (SRC, SRC_LENGTHS) if isinstance(model, Seq2Seq) else \
        (np.random.default_rng(0).standard_normal((3, 3)),)
    result = getattr(model, decode)(*inputs, max_len=5)
    assert all(len(t) and not banned & set(t.tolist()) for t in result.tokens)
    for n, tokens in enumerate(result.tokens):  # the steps' log-probabilities, teacher-forced
        row = tuple(a[n:n + 1] for a in inputs)
        tgt = np.array([[*tokens, eos]]) if len(tokens) < 5 else tokens[None]
        logits = model.eval().forward(*row, tgt)
        lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        expected = lp[0, np.arange(tgt.shape[1]), tgt[0]].sum()  # (logits [N, T, V])
        assert result.log_probs[n] == pytest.approx(expected, rel=1e-9)


def test_scheduled_sampling_feeds_back_what_a_decode_would(monkeypatch):
    # teacher_forcing < 1 fed the argmax of every id back, padding and start ids included
    model = Seq2Seq(9, 7, embed_size=4, hidden_size=5, dtype=np.float64, seed=0)
    model.decoder.out.bias.data[[model.pad_idx, model.bos_idx]] += 30.0
    fed, step = [], model.decoder.step
    monkeypatch.setattr(model.decoder, "step",
                        lambda tokens, *a: (fed.append(np.array(tokens)), step(tokens, *a))[1])
    model.loss(SRC, SRC_LENGTHS, np.array([[3, 4, 2], [5, 2, 0], [6, 6, 2]]),
               teacher_forcing=0.0)
    assert (fed[0] == model.bos_idx).all()  # the start, then the model's own choices
    assert not np.isin(np.concatenate(fed[1:]), [model.pad_idx, model.bos_idx]).any()


def test_beam_search_of_a_model_gone_nan_gives_nan_scores():
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0)
    model.decoder.out.bias.data[:] = np.nan
    result = model.beam_search(SRC, SRC_LENGTHS, beam_size=2, max_len=3)
    assert np.isnan(result.scores).all() and len(result.tokens) == 3


@pytest.mark.parametrize("decode", ["greedy_decode", "beam_search"])
def test_an_empty_result_s_attention_has_the_model_s_dtype(decode):
    """A result that is eos at once came with float64 attention rows from a float32 model."""
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0, eos_idx=2)
    model.decoder.out.bias.data[2] = 50  # eos first, always
    result = getattr(model, decode)(SRC, SRC_LENGTHS, max_len=3)
    assert [len(t) for t in result.tokens] == [0, 0, 0]
    assert [(a.dtype, a.shape) for a in result.attention] == [
        (np.float32, (0, n)) for n in SRC_LENGTHS]


@pytest.mark.parametrize("make", [
    lambda seed: Seq2Seq(9, 9, embed_size=4, hidden_size=8, num_layers=2, dropout=0.5, seed=seed),
    lambda seed: Captioner(4, 9, hidden_size=8, dropout=0.5, seed=seed)])
def test_a_deep_copy_of_an_unseeded_model_draws_its_own_masks(make):
    """A model built without a seed gave its parts fixed seeds: its deep copies repeated its
    dropout masks (and teacher forcing's draws), unlike its layers' copies."""
    import copy
    tgt = np.array([[3, 4, 5, 2]] * 3)
    inputs = (np.ones((3, 4), np.float32),) if isinstance(make(0), Captioner) else (
        np.array([[3, 4, 5, 6]] * 3), np.array([4, 4, 4]))
    for seed, same in ((None, False), (3, True)):
        model = make(seed)
        twin = copy.deepcopy(model)
        assert np.array_equal(model(*inputs, tgt, teacher_forcing=0.5),
                              twin(*inputs, tgt, teacher_forcing=0.5)) == same, seed
    # the README's remedy for copies of a seeded model: manual_seed on each
    twin = copy.deepcopy(model)
    twin.manual_seed(4)
    assert not np.array_equal(model(*inputs, tgt, teacher_forcing=0.5),
                              twin(*inputs, tgt, teacher_forcing=0.5))
    model.manual_seed(4)
    twin.manual_seed(4)
    np.testing.assert_array_equal(model(*inputs, tgt, teacher_forcing=0.5),
                                  twin(*inputs, tgt, teacher_forcing=0.5))


def test_attention_reads_no_padding_in_backward():
    """Keys past a sample's length are never read: NaN there leaves every gradient finite."""
    for score in ("additive", "general", "dot"):
        att = fr.nn.attention.make_attention(score, 4, 4, dtype=np.float64, seed=0)
        keys = np.random.default_rng(1).standard_normal((2, 4, 4))
        keys[1, 2:] = np.nan
        att.set_memory(keys, np.array([4, 2]))
        context, weights = att(np.ones((2, 4)))
        assert np.isfinite(context).all() and (weights[1, 2:] == 0).all()
        dquery = att.backward(np.ones((2, 4)))
        dkeys = att.memory_backward()
        assert np.isfinite(dquery).all() and np.isfinite(dkeys).all()
        assert (dkeys[1, 2:] == 0).all()
        for name, p in att.named_parameters():
            assert np.isfinite(p.grad).all(), (score, name)


def test_fused_attention_step_reads_no_padding_in_backward():
    """The C++ step itself (without set_memory's zeroing): NaN in padded keys and values leaves
    the gradients finite (the backward's first loop read them, 0 * NaN)."""
    from fusedrnn.nn.attention import attention_step_backward, attention_step_forward
    rng = np.random.default_rng(0)
    N, S, A = 2, 5, 4
    mask = np.ones((N, S), bool)
    mask[1, 2:] = False
    keys = rng.standard_normal((N, S, A))
    keys[~mask] = np.nan
    for score, v in (("additive", rng.standard_normal(A)), ("dot", None)):
        context, weights, saved = attention_step_forward(score, rng.standard_normal((N, A)),
                                                         keys, keys, mask, v)
        assert np.isfinite(context).all() and (weights[~mask] == 0).all()
        grads = attention_step_backward(saved, np.ones((N, A)), np.ones((N, S)))
        for g in grads:
            if g is not None:
                assert np.isfinite(g).all(), score
        assert (grads[1][~mask] == 0).all() and (grads[2][~mask] == 0).all()


def test_date_generator_is_seeded_and_held_out():
    train, test = dates_split(3000, 300, seed=2)
    assert (train, test) == dates_split(3000, 300, seed=2)
    assert {b for _, b in train}.isdisjoint({b for _, b in test})
    assert len({len(a) for a, _ in train}) > 10
    import datetime
    d = datetime.date(1999, 5, 3)
    written = {format_date(d, f) for f in FORMATS}
    assert {"3rd of May 1999", "05/03/99", "Monday, May 3, 1999", "1999-05-03"} <= written


def _run_json(capsys, *argv):
    extra = ["--no-progress"] if argv[0] == "train" else []
    assert main(list(argv) + ["--json"] + extra) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_short_dates_run_beats_chance_and_translates(capsys, tmp_path):
    """A few seconds of training: exact matches far above chance (which is ~0 for a 10-character
    answer); --save then `fusedrnn translate` reads the model back; --plot writes the maps."""
    pytest.importorskip("matplotlib")
    model_path, plot = tmp_path / "dates.npz", tmp_path / "att.png"
    m = _run_json(capsys, "train", "dates", "--train-size", "1500", "--test-size", "200",
                  "--epochs", "3", "--hidden", "32", "--lr", "0.01", "--batch-size", "32",
                  "--beam", "1", "--seed", "1", "--save", str(model_path), "--plot", str(plot))
    assert m["test_exact_match"] > 0.2
    assert plot.stat().st_size > 1000
    saved = fr.load(model_path)
    assert saved["task"] == "dates" and "decoder.attention.v" in saved["model"]
    out = _run_json(capsys, "translate", "--model", str(model_path), "3rd of May 1999",
                    "05/03/99", "--beam", "2")
    assert len(out["outputs"]) == 2 and all(len(o) > 0 for o in out["outputs"])


def test_caption_digits_short_run(capsys):
    m = _run_json(capsys, "train", "caption-digits", "--epochs", "2", "--beam", "2", "--seed", "1")
    assert m["test_exact_match"] > 3 * m["chance_exact_match"]


_FORK_WHILE_DECODING = """
import os, signal, sys, threading
import numpy as np
from fusedrnn.nn import Seq2Seq
from fusedrnn.nn.seq2seq import _lock
model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, seed=0)
src, lengths = np.array([[3, 4, 5], [6, 7, 0]]), np.array([3, 2])
held, release = threading.Event(), threading.Event()

def decoding():  # another thread in the middle of a decode: it holds the model's lock
    with _lock(model):
        held.set()
        release.wait()

threading.Thread(target=decoding, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a hung child ends itself
    model.greedy_decode(src, lengths, max_len=3)
    os._exit(0)
release.set()
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_forked_during_another_threads_decode_can_decode():
    """The model's lock was copied into the child held by a thread that is not there: the
    child's first decode waited forever."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _FORK_WHILE_DECODING], timeout=60)
    assert done.returncode == 0


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_backward_checks_everything_before_it_adds_anything(attention):
    """A step of decoder.out's (or combine's) weights between loss and backward went unseen
    (gradients 1e-3 off; torch raises); a refused backward had added some gradients already;
    backward() after a forward without loss back-propagated the loss before it; a second
    backward said no forward had been made; a part in eval mode failed half-way."""
    model = Seq2Seq(9, 9, embed_size=4, hidden_size=5, attention=attention, seed=0,
                    dtype=np.float64)
    opt = fr.optim.SGD([model.decoder.out.weight], lr=1.0)
    model.loss(SRC, SRC_LENGTHS, TGT)
    model.backward()
    model.loss(SRC, SRC_LENGTHS, TGT)
    opt.step()
    model.zero_grad()
    with pytest.raises(RuntimeError, match="a parameter was written"):
        model.backward()
    assert all(p.grad is None for p in model.parameters())
    logits = model(SRC, SRC_LENGTHS, TGT)  # a forward without loss
    with pytest.raises(RuntimeError, match=r"backward\(\) back-propagates the loss of loss"):
        model.backward()
    model.backward(np.ones_like(logits))  # (its own dlogits: fine)
    model.zero_grad()
    model.criterion(model(SRC, SRC_LENGTHS, TGT), TGT)  # the criterion on the logits: a loss
    model.backward()
    by_criterion = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.loss(SRC, SRC_LENGTHS, TGT)
    model.backward()
    for a, p in zip(by_criterion, model.parameters()):
        np.testing.assert_array_equal(a, p.grad)
    # a criterion's gradient of another shape: refused naming [N, T, V], the forward kept
    logits = model(SRC, SRC_LENGTHS, TGT)
    model.criterion(logits[:, :-1], TGT[:, :-1])
    with pytest.raises(ValueError, match=r"dlogits: expected shape \(3, 4, 9\) \(\[N, T, V\]"):
        model.backward()
    model.backward(np.ones_like(logits))
    # one criterion shared by two models: the other's forward does not take this one's loss
    other = Seq2Seq(9, 9, embed_size=4, hidden_size=5, attention=attention, seed=1,
                    dtype=np.float64)
    other.criterion = model.criterion
    model.loss(SRC, SRC_LENGTHS, TGT)
    other(SRC, SRC_LENGTHS, TGT)
    model.backward()
    with pytest.raises(RuntimeError, match="the latest forward was back-propagated already"):
        model.backward(np.ones_like(logits))
    with pytest.raises(ValueError, match=r"^pad_idx: expected an id of the source vocabulary"):
        Seq2Seq(7, 12, pad_idx=10, eos_idx=2)
    # a part in eval mode kept nothing for backward: refused up front (it failed at the
    # encoder with the decoder's gradients added, and the forward could not be back-propagated)
    model.zero_grad()
    model.encoder.eval()
    model.loss(SRC, SRC_LENGTHS, TGT)
    with pytest.raises(RuntimeError, match="Seq2Seq.backward: encoder ran in eval mode"):
        model.backward()
    assert all(p.grad is None for p in model.parameters())
    model.train()
    model.loss(SRC, SRC_LENGTHS, TGT)
    model.backward()
