"""The kernels' large outputs come from blocks kept between calls (csrc/cpu/block_cache.h,
output_array in csrc/bindings/module.cpp): a dead output's block serves the next output of its
size, a live one is never handed out again, the kept blocks stay within FUSEDRNN_OUTPUT_CACHE_MB
(a bad value is reported and the default serves), and a training loop stops faulting its
outputs' pages in afresh every step."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn import _C

# LSTM training outputs of 1 MiB and more (gates [T, N, 4H] 4 MiB).
T, N, H = 32, 16, 512


def lstm_problem(seed=0, T=T, N=N, H=H):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N, H)).astype(np.float32)
    h0 = np.zeros((N, H), np.float32)
    w = (rng.standard_normal((4 * H, H)) * 0.05).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    return x, h0, w, b


def forward(x, h0, w, b):
    return _C.recurrent_forward("lstm", "tanh", x, h0, h0, w, w, b, b, None, False, True)


def test_a_dead_outputs_block_serves_the_next_output_of_its_size():
    fr.empty_cache()
    x, h0, w, b = lstm_problem()
    y, _, _, gates, _, _ = forward(x, h0, w, b)
    address, expected = gates.ctypes.data, gates.copy()
    assert gates.nbytes >= _C.output_cache()["min_bytes"] and not gates.flags.owndata
    del y, gates
    assert _C.output_cache()["kept_bytes"] >= T * N * 4 * H * 4
    assert "kept of 256.0 MiB" in fr.info()["output_cache"]
    _, _, _, gates, _, _ = forward(x, h0, w, b)
    assert gates.ctypes.data == address
    np.testing.assert_array_equal(gates, expected)  # the same call, the same bits
    del gates
    fr.empty_cache()
    assert _C.output_cache()["kept_bytes"] == 0


def test_empty_cache_gives_back_the_calling_thread_s_workspaces():
    # a training call's backward keeps T*N*G*H floats for the next call; empty_cache returns
    # them, and the next call takes what it needs again (the same bits)
    x, h0, w, b = lstm_problem()
    y, h_n, c_n, gates, extra, h_prev = forward(x, h0, w, b)
    dy = np.ones_like(y)
    args = (x, w, w, None, False, gates, extra, h_prev, dy, h0, h0)
    first = _C.recurrent_backward("lstm", "tanh", *args)
    assert _C.thread_workspace_bytes() >= T * N * 4 * H * 4
    fr.empty_cache()
    assert _C.thread_workspace_bytes() == 0
    for want, got in zip(first, _C.recurrent_backward("lstm", "tanh", *args)):
        np.testing.assert_array_equal(got, want)
    fr.empty_cache()


_TEAM_THREADS = """
import os, numpy as np, fusedrnn as fr
fr.set_num_threads(2)
layer = fr.nn.LSTM(16, 64, bidirectional=True, seed=0)
x = np.ones((400, 4, 16), np.float32)
counts = []
for _ in range(2):
    layer(x)
    counts.append(len(os.listdir("/proc/self/task")))
    fr.empty_cache()
    counts.append(len(os.listdir("/proc/self/task")))
print(counts)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_empty_cache_ends_the_team_s_worker_and_a_call_starts_it_again():
    # (a fresh interpreter: one that imported fusedrnn.torch runs on torch's threads)
    out = subprocess.run([sys.executable, "-c", _TEAM_THREADS], capture_output=True, text=True,
                         check=True).stdout
    with_team, without, again, without_again = json.loads(out)
    assert with_team == again == without + 1 and without_again == without


def test_empty_cache_ends_the_team_s_threads_and_the_next_call_starts_them(restore_threads):
    # a bidirectional layer's directions run side by side, one on a team thread, whose
    # workspace goes with it; the team starts again at the next call (the same bits), and an
    # empty_cache from another thread waits for a running call's team
    import threading
    fr.set_num_threads(2)
    layer = fr.nn.LSTM(16, 64, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((400, 4, 16)).astype(np.float32)
    y, _ = layer(x)
    first = layer.backward(np.ones_like(y))[0]
    fr.empty_cache()
    assert _C.thread_workspace_bytes() == 0
    errors = []

    def empty_repeatedly():
        try:
            for _ in range(50):
                fr.empty_cache()
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    other = threading.Thread(target=empty_repeatedly)
    other.start()
    for _ in range(5):
        y2, _ = layer(x)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(layer.backward(np.ones_like(y))[0], first)
    other.join()
    assert not errors


def test_the_cache_counts_a_reused_block_at_its_own_size():
    """A kept block serves an output up to half its size; given back, it counts its own bytes
    (it counted the smaller output's, so variable-length batches held several times the limit
    while kept_bytes said less)."""
    m = fr.nn.LSTM(8, 64, seed=0).eval()  # y [T, 16, 64] float32: 4 KiB a step
    fr.empty_cache()
    y = m(np.ones((100, 16, 8), np.float32))[0]
    address = y.ctypes.data
    del y
    assert _C.output_cache()["kept_bytes"] == 100 * 4096
    for T in (70, 65):  # each in the kept block (at least half its size, 256 KiB or more)
        y = m(np.ones((T, 16, 8), np.float32))[0]
        assert y.ctypes.data == address
        del y
        assert _C.output_cache()["kept_bytes"] == 100 * 4096
    fr.empty_cache()


def test_live_outputs_are_never_handed_out_again():
    x, h0, w, b = lstm_problem()
    first = forward(x, h0, w, b)
    saved = [None if a is None else a.copy() for a in first]

    def addresses(outputs):
        return {a.ctypes.data for a in outputs if a is not None and a.size}
    held = addresses(first)
    for seed in range(1, 4):  # other inputs: other values, written into whatever blocks
        later = forward(*lstm_problem(seed))
        assert not held & addresses(later)
        del later
    for a, expected in zip(first, saved):
        assert (a is None and expected is None) or np.array_equal(a, expected)
    # a view alone keeps its array's block too
    view, gates_address = first[3][1:], first[3].ctypes.data
    del first
    for seed in range(1, 4):
        later = forward(*lstm_problem(seed))
        assert gates_address not in addresses(later)
        del later
    np.testing.assert_array_equal(view, saved[3][1:])


_FAULTS = """
import json, resource, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_output_cache import lstm_problem, forward
from fusedrnn import _C
x, h0, w, b = lstm_problem(0, *{shape!r})
dy, dh_n = np.ones(x.shape, np.float32), np.zeros(h0.shape, np.float32)
def step():
    _, _, _, gates, extra, h_prev = forward(x, h0, w, b)
    return _C.recurrent_backward("lstm", "tanh", x, w, w, None, False, gates, extra, h_prev,
                                 dy, dh_n, dh_n)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="under AddressSanitizer, whose allocator is not glibc's")
def test_a_training_loop_stops_faulting_in_its_outputs():
    # glibc told to map every block of 128 KiB and more apart (a fixed threshold: it returns
    # each to the OS when freed) stands for a heap that trims itself after every step, as
    # glibc's own thresholds do for some shapes and heaps (3,600-4,600 faults a step at LSTM
    # B=32 T=100 H=256 in a plain process)
    shape = (100, 32, 256)
    code = _FAULTS.format(tests=os.path.dirname(__file__), shape=shape)

    def faults_per_step(cache_mb):
        env = dict(os.environ, FUSEDRNN_OUTPUT_CACHE_MB=cache_mb, MALLOC_MMAP_THRESHOLD_="131072")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        return json.loads(out)
    pages = shape[0] * shape[1] * 4 * shape[2] * 4 // 4096  # the gates' alone
    without = faults_per_step("0")
    assert without > pages  # (what the kept blocks spare)
    assert faults_per_step("256") < pages / 20, without


def test_a_bad_cache_size_is_reported_and_the_default_serves():
    code = "import json, fusedrnn._C as C; print(json.dumps(C.output_cache()))"
    for value, limit in (("0", 0), ("64", 64 << 20), ("lots", 256 << 20), ("-1", 256 << 20)):
        env = dict(os.environ, FUSEDRNN_OUTPUT_CACHE_MB=value)
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        assert json.loads(run.stdout)["limit_bytes"] == limit, value
        assert ("FUSEDRNN_OUTPUT_CACHE_MB" in run.stderr) == (limit == 256 << 20), value
    # (the report named the entry's value before FUSEDRNN_TUNING, read next, set it)
    env = dict(os.environ, FUSEDRNN_OUTPUT_CACHE_MB="lots", FUSEDRNN_TUNING="output_cache_mb=9")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert json.loads(run.stdout)["limit_bytes"] == 9 << 20
    assert "ignored (the table's output_cache_mb: 256)" in run.stderr
