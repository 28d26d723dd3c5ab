"""Truncated BPTT (k = T equals full BPTT; k < T carries the state and stops the gradient at
chunk boundaries) and the fit loop."""
import math

import numpy as np
import pytest

import fusedrnn as fr
from conftest import relative_error
from fusedrnn.tasks.common import RecurrentLM
from fusedrnn.training import TruncatedBPTT, fit


def make(cell, seed=0):
    model = RecurrentLM(cell, vocab_size=7, embedding_dim=3, hidden_size=5, seed=seed)
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    for m in model.modules():
        if hasattr(m, "dtype"):
            m.dtype = np.dtype(np.float64)
    return model


def grads(model):
    return {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_tbptt_with_k_equal_T_is_full_bptt(cell, rng):
    T, N = 12, 3
    x = rng.integers(0, 7, (T, N))
    y = rng.integers(0, 7, (T, N))
    full = make(cell)
    loss_fn = fr.nn.CrossEntropyLoss()
    logits, _ = full(x)
    full_loss = loss_fn(logits, y)
    full.backward(loss_fn.backward())

    chunked = make(cell)
    loss, _ = TruncatedBPTT(chunked, fr.nn.CrossEntropyLoss(), k=T).run(x, y)
    assert loss == pytest.approx(full_loss, rel=1e-12)
    g_full, g_chunk = grads(full), grads(chunked)
    for name in g_full:
        assert relative_error(g_chunk[name], g_full[name]) < 1e-12, name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tbptt_carries_state_and_stops_gradients(cell, rng):
    T, N, k = 12, 3, 4
    x = rng.integers(0, 7, (T, N))
    y = rng.integers(0, 7, (T, N))
    model = make(cell)
    loss, state = TruncatedBPTT(model, fr.nn.CrossEntropyLoss(), k=k).run(x, y)
    g_tbptt = grads(model)

    # The same chunk losses from one uninterrupted forward: the state was carried.
    ref = make(cell)
    ref.eval()
    logits, final = ref(x)
    ce = fr.nn.CrossEntropyLoss()
    assert loss == pytest.approx(np.mean([ce(logits[s:s + k], y[s:s + k]) for s in range(0, T, k)]),
                                 rel=1e-12)
    for a, b in zip(state if cell == "lstm" else [state], final if cell == "lstm" else [final]):
        np.testing.assert_allclose(a, b, rtol=1e-12)

    # Independently: each chunk back-propagated alone from the true boundary state, with the
    # gradient into that state thrown away, summed over chunks.
    ref.train()
    ref.zero_grad()
    s_in = None
    for s in range(0, T, k):
        out, s_out = ref(x[s:s + k], s_in)
        ce(out, y[s:s + k])
        ref.backward(ce.backward())
        s_in = s_out
    for name, g in grads(ref).items():
        assert relative_error(g_tbptt[name], g) < 1e-12, name

    # And it is not full BPTT.
    full = make(cell)
    lg, _ = full(x)
    ce(lg, y)
    full.backward(ce.backward())
    assert relative_error(g_tbptt["rnn.weight_hh_l0"], full.rnn.weight_hh_l0.grad) > 1e-6


def test_tbptt_with_optimizer_learns(rng):
    text = np.tile(np.arange(7), 40)  # a periodic sequence is easy to predict
    x = np.stack([np.roll(text, s) for s in range(4)], axis=1)  # [280, 4]
    model = RecurrentLM("gru", 7, 4, 16, seed=1)
    opt = fr.optim.Adam(model.parameters(), lr=0.03)
    trainer = TruncatedBPTT(model, fr.nn.CrossEntropyLoss(), k=10, optimizer=opt, clip_norm=5.0)
    model.eval()
    first = fr.nn.CrossEntropyLoss()(model(x[:-1])[0], x[1:])
    model.train()
    state = None
    for _ in range(4):
        last, state = trainer.run(x[:-1], x[1:], state)
    assert first > 1.5 and last < 0.2


def test_tbptt_clips_the_gradients_before_each_step(rng):
    """clip_norm clips the gradients' norm before the optimizer's step (a trainer that clips
    nothing fails): one SGD step of lr 1 moves the parameters by clip_norm, in norm."""
    x, y = rng.integers(0, 7, (8, 3)), rng.integers(0, 7, (8, 3))
    model = make("gru", seed=1)
    before = [p.data.copy() for p in model.parameters()]
    opt = fr.optim.SGD(model.parameters(), lr=1.0)
    TruncatedBPTT(model, fr.nn.CrossEntropyLoss(), k=8, optimizer=opt, clip_norm=1e-3).run(x, y)
    step = math.sqrt(sum(((p.data - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    # (the unclipped norm is far above 1e-3: the clip scales it by 1e-3 / (norm + 1e-6))
    assert 0.99e-3 < step <= 1e-3 * (1 + 1e-9), step


def test_fit_loop_history():
    seen = []
    history = fit(lambda b: seen.append(b) or float(b), lambda e: [1, 2, 3], epochs=2,
                  evaluate=lambda e: {"metric": 10.0 * e}, progress=False)
    assert seen == [1, 2, 3, 1, 2, 3]
    assert [h["loss"] for h in history] == [2.0, 2.0]
    assert [h["metric"] for h in history] == [10.0, 20.0]
    # index arrays (fusedrnn.data.batches'): each batch weighs its samples, as Keras' History
    per_sample = np.r_[np.full(32, 1.0), np.full(8, 5.0)]
    history = fit(lambda i: per_sample[i].mean(),
                  lambda e: list(fr.data.batches(40, 32, shuffle=False)), 1, progress=False)
    assert history[0]["loss"] == pytest.approx(per_sample.mean())  # (the batches' mean: 3.0)
    history = fit(lambda i: per_sample[i].mean() if len(i) else np.nan,  # an empty batch
                  lambda e: [np.arange(32), np.arange(0), np.arange(32, 40)], 1,  # weighs nothing
                  progress=False)
    assert history[0]["loss"] == pytest.approx(per_sample.mean())


def test_truncated_bptt_and_checkpointer_check_their_arguments():
    lstm = fr.nn.LSTM(2, 3, seed=0)
    loss = fr.nn.MSELoss()
    for k, error in ((2.7, TypeError), ("3", TypeError), (0, ValueError), (None, TypeError)):
        with pytest.raises(error, match="k: expected an integer"):
            TruncatedBPTT(lstm, loss, k)
    with pytest.raises(TypeError, match="optimizer: expected a fusedrnn.optim optimizer"):
        TruncatedBPTT(lstm, loss, 2, optimizer="sgd")
    with pytest.raises(ValueError, match="clip_norm"):
        TruncatedBPTT(lstm, loss, 2, clip_norm=-1)
    with pytest.raises(TypeError, match="x: expected an array"):
        TruncatedBPTT(lstm, loss, 2).run([[0.0]], np.zeros((1, 1, 3)))
    from fusedrnn.training import Checkpointer
    for every in (0, -1, "x"):
        with pytest.raises((TypeError, ValueError), match="every: expected an integer"):
            Checkpointer("/tmp/unused.ckpt", every=every)


def test_checkpointer_refuses_a_path_it_cannot_write_before_training(tmp_path):
    """A path in a missing folder, or a folder, is refused when the Checkpointer is made, as
    the CLI refuses it: not at its first write, after `every` steps were trained."""
    from fusedrnn.training import Checkpointer, fit
    steps = []
    for path, error in ((tmp_path / "no_such_dir" / "run.ckpt", FileNotFoundError),
                        (tmp_path, IsADirectoryError)):
        with pytest.raises(error, match=str(tmp_path)):
            fit(lambda b: steps.append(b) or 0.0, lambda e: range(50), 3, progress=False,
                state={}, checkpoint=Checkpointer(path))
    assert steps == [] and list(tmp_path.iterdir()) == []


def test_truncated_bptt_refuses_what_it_cannot_train_and_averages_counted_targets():
    """A bidirectional layer trained in chunks read its reverse direction's state at a chunk's
    start as the next chunk's end (0.27-0.57 off the full forward's state, silently); clip_norm
    without an optimizer clipped nothing; a chunk of ignored targets (loss 0) counted in the
    mean as a chunk of real ones; a sequence of ignored targets alone gave NaN where the loss
    gives 0."""
    loss = fr.nn.CrossEntropyLoss()
    model = fr.nn.Sequential(fr.nn.GRU(2, 3, bidirectional=True, seed=0), fr.nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"^model: 0 is bidirectional; truncated BPTT cannot"):
        TruncatedBPTT(model, loss, 4)
    with pytest.raises(ValueError, match=r"^clip_norm: clips the gradients before each "
                                         r"optimizer step; give an optimizer"):
        TruncatedBPTT(fr.nn.GRU(2, 3, seed=0), loss, 4, clip_norm=1.0)
    # batch_first: the chunks were samples, each starting from the previous sample's state
    with pytest.raises(ValueError, match=r"^model: the model is batch_first; truncated BPTT"):
        TruncatedBPTT(fr.nn.GRU(2, 3, batch_first=True, seed=0), loss, 4)
    with pytest.raises(ValueError, match=r"^loss_fn: expected reduction 'mean' or 'sum'"):
        TruncatedBPTT(fr.nn.GRU(2, 3, seed=0), fr.nn.MSELoss(reduction="none"), 4)

    class Head(fr.nn.Module):  # logits from a bias alone: every counted target's loss alike
        def __init__(self):
            super().__init__()
            self.lin = fr.nn.Linear(2, 3, dtype=np.float64, seed=0)

        def forward(self, x, state=None):
            return self.lin(x), None

        def backward(self, d):
            self.lin.backward(d)

    x, y = np.zeros((8, 1, 2)), np.zeros((8, 1), int)
    y[4:] = -100
    head = Head()
    expected = loss(head.lin(x[:4]), y[:4])
    mean, _ = TruncatedBPTT(head, loss, 4).run(x, y)
    assert mean == pytest.approx(float(expected), rel=1e-12)
    y[:] = -100  # nothing counted: the loss's own mean of nothing (0), as the whole's
    assert TruncatedBPTT(head, loss, 4).run(x, y)[0] == float(loss(head.lin(x), y)) == 0.0
    y[:4], summed = 0, fr.nn.CrossEntropyLoss(reduction="sum")  # sums: the sequence's sum
    total = float(summed(head.lin(x[:4]), y[:4]))
    assert TruncatedBPTT(head, summed, 4).run(x, y)[0] == pytest.approx(total, rel=1e-12)


def test_a_stage_name_runs_once_under_a_checkpointer(tmp_path):
    """Two fits with the same desc under one Checkpointer (pretraining, then fine-tuning, both
    "train"): a resumed run gave the first the second's state and retrained the second from
    its start (0.034 off the uninterrupted run, silently). The second is refused up front."""
    from fusedrnn.training import Checkpointer
    checkpoint = Checkpointer(tmp_path / "run.ckpt")
    fit(lambda b: 0.0, lambda e: [1, 2], 1, progress=False, checkpoint=checkpoint)
    with pytest.raises(ValueError, match=r"^desc: the stage 'train' already ran under this "
                                         r"Checkpointer; give each fit of a run its own desc"):
        fit(lambda b: 0.0, lambda e: [1, 2], 1, progress=False, checkpoint=checkpoint)
    fit(lambda b: 0.0, lambda e: [1, 2], 1, progress=False, checkpoint=checkpoint, desc="tune")


def test_fit_checks_batches_keeps_other_stages_and_an_ignored_sigint(tmp_path):
    """With a checkpoint, batches and state fr.save cannot store are refused before training
    (they failed at the first write); a resumed file's stages this run does not reach stay in the files it
    writes (a renamed desc lost the interrupted run); SIGINT ignored stays ignored."""
    import os
    import signal
    from fusedrnn.training import Checkpointer
    path = tmp_path / "run.ckpt"
    with pytest.raises(TypeError, match="make_batches: with a checkpoint"):
        fit(lambda b: 0.0, lambda e: [slice(0, 4)], 1, progress=False,
            checkpoint=Checkpointer(path, 2))
    steps = []  # a state it cannot save: refused before the first step, not at the first write
    with pytest.raises(TypeError, match=r"state: with a checkpoint.*cannot save an object of "
                                        r"type set"):
        fit(lambda b: steps.append(b) or 0.0, lambda e: [np.arange(2)] * 5, 3, progress=False,
            state={"carry": {"state": (np.zeros(2), {1, 2})}}, checkpoint=Checkpointer(path, 4))
    assert steps == [] and not path.exists()
    fit(lambda b: 0.0, lambda e: [np.arange(2)] * 3, 1, progress=False, desc="phase-a",
        checkpoint=Checkpointer(path, 2))
    fit(lambda b: 0.0, lambda e: [np.arange(2)] * 3, 1, progress=False, desc="phase-b",
        checkpoint=Checkpointer(path, 2, resume=path))
    assert sorted(fr.load(path)["stages"]) == ["phase-a", "phase-b"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        steps = []

        def step(batch):
            os.kill(os.getpid(), signal.SIGINT)  # ignored: training goes on
            steps.append(batch)
            return 0.0
        fit(step, lambda e: [np.arange(2)] * 3, 2, progress=False,
            checkpoint=Checkpointer(tmp_path / "other.ckpt", 2))
        assert len(steps) == 6
    finally:
        signal.signal(signal.SIGINT, previous)


def test_fit_names_bad_arguments_before_any_work():
    def batches(epoch):
        raise AssertionError("fit called make_batches before checking its arguments")
    for args, error, match in (((lambda b: 0.0, batches, 2.5), TypeError, "^epochs"),
                               ((lambda b: 0.0, batches, "2"), TypeError, "^epochs"),
                               ((lambda b: 0.0, batches, -1), ValueError, "^epochs"),
                               ((3, batches, 1), TypeError, "^train_step: expected a callable"),
                               ((lambda b: 0.0, 5, 1), TypeError, "^make_batches: expected")):
        with pytest.raises(error, match=match):
            fit(*args, progress=False)
    with pytest.raises(TypeError, match="^scheduler: expected an object with a step"):
        fit(lambda b: 0.0, batches, 1, scheduler=object(), progress=False)  # (was after epoch 1)
    assert fit(lambda b: 0.0, batches, 0, progress=False) == []


def test_fit_refuses_metrics_that_are_no_dict_or_would_replace_the_loss():
    """evaluate returning a number failed deep in dict.update; returning {"loss": ...}
    replaced the training loss in the history, silently."""
    for metrics, error, match in ((0.9, TypeError, "^evaluate: expected it to return a dict"),
                                  ({"loss": 5.0}, ValueError, "^evaluate: returned the metric "
                                                              "'loss'.*'val_loss'")):
        with pytest.raises(error, match=match):
            fit(lambda b: 1.0, lambda e: [0], 1, evaluate=lambda e: metrics, progress=False)
    history = fit(lambda b: 1.0, lambda e: [0], 1, evaluate=lambda e: {"val_loss": 5.0},
                  progress=False)
    assert history[0]["loss"] == 1.0 and history[0]["val_loss"] == 5.0


def test_a_resume_that_does_not_fit_changes_nothing(tmp_path):
    """A checkpoint refused for one object leaves every object as it was (those restored
    before it were overwritten)."""
    from fusedrnn.training import Checkpointer
    path = tmp_path / "a.ckpt"
    batches = lambda epoch: [np.array([0]), np.array([1])]  # noqa: E731
    fit(lambda b: 0.5, batches, 1, progress=False,
        state={"rng": np.random.default_rng(0), "model": fr.nn.Linear(3, 2, seed=0)},
        checkpoint=Checkpointer(path, every=1))
    rng, model = np.random.default_rng(123), fr.nn.Linear(4, 2, seed=1)
    rng_before, weights_before = rng.bit_generator.state, model.state_dict()
    with pytest.raises(ValueError, match="does not fit this run"):
        fit(lambda b: 0.5, batches, 2, progress=False, state={"rng": rng, "model": model},
            checkpoint=Checkpointer(tmp_path / "b.ckpt", every=1, resume=path))
    assert rng.bit_generator.state == rng_before
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, weights_before[k])


def test_truncated_bptt_returns_a_summed_loss_whole(rng):
    """With reduction "sum" each chunk's sum was weighted by its steps and divided by T: the
    returned loss shrank with k (52.8 for k=6, 8.8 for k=1)."""
    x = rng.standard_normal((6, 3, 2))
    y = rng.standard_normal((6, 3, 4))
    full = None
    for k in (6, 3, 1):
        model = fr.nn.LSTM(2, 4, seed=0, dtype=np.float64)
        got, _ = TruncatedBPTT(model, fr.nn.MSELoss(reduction="sum"), k).run(x, y)
        if full is None:
            full = float(((model.eval()(x)[0] - y) ** 2).sum())
        assert got == pytest.approx(full, rel=1e-12)


def test_training_comes_with_import_fusedrnn():
    """The README calls fusedrnn.training.fit after `import fusedrnn as fr`: an AttributeError."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", "import fusedrnn as fr; fr.training.fit, "
                           "fr.training.TruncatedBPTT, fr.training.Checkpointer"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_fit_checks_progress_before_restoring_a_checkpoint(tmp_path):
    """A bad ``progress`` was named only after the checkpoint had been read back into the
    caller's objects (the model already rewound to the saved run's weights)."""
    from fusedrnn.training import Checkpointer
    path = tmp_path / "run.ckpt"
    lin = fr.nn.Linear(2, 2)

    def step(batch):
        lin.weight.data += 1.0
        return 0.0
    fit(step, lambda e: [np.arange(2)] * 3, 1, progress=False, state={"model": lin},
        checkpoint=Checkpointer(path, 2))
    lin.weight.data[:] = -5.0
    with pytest.raises(TypeError, match="^progress: "):
        fit(step, lambda e: [np.arange(2)] * 3, 2, progress="no", state={"model": lin},
            checkpoint=Checkpointer(path, 2, resume=path))
    assert (lin.weight.data == -5.0).all()


def test_truncated_bptt_refuses_a_bare_cell():
    """A cell (one step a call) was run on chunks as batches and failed unpacking its h."""
    with pytest.raises(TypeError, match="^model: a GRUCell takes one step a call"):
        TruncatedBPTT(fr.nn.GRUCell(3, 4), fr.nn.MSELoss(), 3)


def test_truncated_bptt_takes_a_cell_subclass_that_runs_chunks():
    """The refusal of a bare cell caught a subclass whose own forward runs whole chunks."""

    class ChunkGRU(fr.nn.GRUCell):
        def forward(self, x, h=None):
            ys = []
            for x_t in x:
                h = super().forward(x_t, h)
                ys.append(h)
            return np.stack(ys), h

        def backward(self, dout):
            dh, dxs = None, []
            for dy in dout[::-1]:
                dx, dh = super().backward(dy if dh is None else dy + dh)
                dxs.append(dx)
            return np.stack(dxs[::-1]), dh
    TruncatedBPTT(ChunkGRU(3, 4), fr.nn.MSELoss(), 3)  # (no refusal)
