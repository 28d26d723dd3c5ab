"""Eight Python threads call different layers and cells at once, forward and backward, again and
again for a few seconds: every result equals, bit for bit, the same call made alone beforehand.

The kernels release the GIL, so the calls really run side by side. The library's thread team
serves one call at a time; a call that finds it busy runs on its caller's thread instead. Either
way the work is sliced by the thread count alone (left at its default here), so the bits cannot
depend on which call got the team. A deadlock fails the test after a timeout instead of hanging.

FUSEDRNN_STRESS_SECONDS sets how long the threads keep calling (default 2).
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from fusedrnn import nn

SECONDS = float(os.environ.get("FUSEDRNN_STRESS_SECONDS", "2"))
MIN_CALLS = 3  # per thread, however short SECONDS is: enough for calls to overlap
HANG_SECONDS = 120  # beyond SECONDS: a thread still calling by then is stuck


def layer_training(cls, sizes, dtype, seed, lengths=None, **options):
    """A training call on a layer of its own: T, N, I, H = sizes."""
    T, N, I, H = sizes
    layer = cls(I, H, dtype=dtype, seed=seed, **options)
    rng = np.random.default_rng(seed)
    batch_first = options.get("batch_first", False)
    x = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(dtype)
    D = 2 if options.get("bidirectional") else 1
    dout = rng.standard_normal(x.shape[:2] + (D * H,)).astype(dtype)

    def call():
        layer.zero_grad()
        out, state = layer(x, lengths=lengths)
        dx, dstate = layer.backward(dout)
        states = list(state) if isinstance(state, tuple) else [state]
        dstates = list(dstate) if isinstance(dstate, tuple) else [dstate]
        return [out, *states, dx, *dstates] + [p.grad for p in layer.parameters()]
    return call


def cell_training(cls, sizes, dtype, seed):
    """A cell of its own unrolled over T steps, then back-propagated step by step."""
    T, N, I, H = sizes
    cell = cls(I, H, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, N, I)).astype(dtype)
    dloss = rng.standard_normal((T, N, H)).astype(dtype)
    is_lstm = cls is nn.LSTMCell

    def call():
        cell.zero_grad()
        state, outputs = None, []
        for x in xs:
            state = cell(x, state)
            outputs.append(state[0] if is_lstm else state)
        dh, dc, dxs = np.zeros((N, H), dtype), None, []
        for t in reversed(range(T)):
            if is_lstm:
                dx, (dh, dc) = cell.backward(dloss[t] + dh, dc)
            else:
                dx, dh = cell.backward(dloss[t] + dh)
            dxs.append(dx)
        return outputs + dxs + [dh] + [p.grad for p in cell.parameters()]
    return call


def shared_inference(layer, seed, sizes, lengths):
    """An eval-mode call on a layer other threads call too (inference keeps no state)."""
    T, N, I, _ = sizes
    x = np.random.default_rng(seed).standard_normal((T, N, I)).astype(layer.dtype)

    def call():
        out, state = layer(x, lengths=lengths)
        return [out, *(state if isinstance(state, tuple) else (state,))]
    return call


def make_calls():
    """Eight calls, one per thread: layers of every cell, shapes and options (bidirectional,
    stacked, batch first, variable lengths; one shape where the two directions run side by side
    on the team), two cells, and two threads sharing one eval-mode layer."""
    shared = nn.GRU(6, 40, num_layers=2, bidirectional=True, dtype=np.float64, seed=7).eval()
    return [
        layer_training(nn.LSTM, (12, 5, 16, 32), np.float32, 1, num_layers=2,
                       bidirectional=True, lengths=np.array([12, 3, 0, 7, 1])),
        layer_training(nn.GRU, (20, 3, 8, 64), np.float64, 2, batch_first=True),
        layer_training(nn.RNN, (16, 4, 10, 48), np.float32, 3, num_layers=3,
                       nonlinearity="relu"),
        layer_training(nn.LSTM, (24, 2, 64, 128), np.float32, 4, bidirectional=True),
        cell_training(nn.LSTMCell, (6, 4, 10, 24), np.float32, 5),
        cell_training(nn.GRUCell, (5, 3, 7, 17), np.float64, 6),
        shared_inference(shared, 8, (15, 4, 6, 40), np.array([15, 9, 2, 11])),
        shared_inference(shared, 9, (9, 6, 6, 40), None),
    ]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_threads_calling_at_once_get_the_bits_of_calls_made_alone():
    calls = make_calls()
    expected = [call() for call in calls]  # each call alone, before any thread starts
    barrier = threading.Barrier(len(calls))
    errors, counts, spans = [], [0] * len(calls), [[] for _ in calls]

    def worker(k):
        try:
            barrier.wait()
            deadline = time.monotonic() + SECONDS
            while counts[k] < MIN_CALLS or time.monotonic() < deadline:
                start = time.monotonic()
                got = calls[k]()
                spans[k].append((start, time.monotonic()))
                counts[k] += 1
                mismatched = [i for i, (a, b) in enumerate(zip(got, expected[k]))
                              if not same_bits(a, b)]
                if len(got) != len(expected[k]) or mismatched:
                    errors.append(f"thread {k}, call {counts[k]}: results {mismatched} differ "
                                  f"from the call made alone")
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the main thread)
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + HANG_SECONDS)
    stuck = [k for k, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"threads {stuck} still running after {SECONDS + HANG_SECONDS} s: a deadlock?"
    assert not errors, errors
    assert min(counts) >= MIN_CALLS, counts
    # the calls really overlapped: some call of every thread ran while another thread's did
    for k, own in enumerate(spans):
        others = [span for j, theirs in enumerate(spans) if j != k for span in theirs]
        assert any(s < e_other and s_other < e for s, e in own for s_other, e_other in others), \
            f"thread {k} never ran alongside another"
