"""Python threads calling the layers at once (the kernels release the GIL) get exactly the results
of the same calls made one after another: inference on one shared layer, and training
(forward + backward) on one layer instance per thread."""
import threading

import numpy as np
import pytest

from conftest import TOLERANCES, relative_error
from fusedrnn import nn

T, N, I, H = 9, 3, 5, 8
THREADS, CALLS = 4, 3


def make(cls, dtype, seed=0):
    return cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=seed)


def run_threads(work):
    """Run work(thread_index) in THREADS threads started together; re-raise the first error."""
    barrier = threading.Barrier(THREADS)
    results, errors = [None] * THREADS, []

    def target(k):
        try:
            barrier.wait()
            results[k] = work(k)
        except BaseException as e:  # noqa: BLE001  (handed to the main thread)
            errors.append(e)

    threads = [threading.Thread(target=target, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def inputs(dtype):
    rng = np.random.default_rng(42)
    return [[rng.standard_normal((T, N, I)).astype(dtype) for _ in range(CALLS)]
            for _ in range(THREADS)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU], ids=["rnn", "lstm", "gru"])
def test_concurrent_inference_on_a_shared_layer(cls, dtype):
    m = make(cls, dtype).eval()
    xs = inputs(dtype)
    lengths = np.array([T, 4, 1])
    sequential = [[m(x, lengths=lengths)[0] for x in row] for row in xs]
    concurrent = run_threads(lambda k: [m(x, lengths=lengths)[0] for x in xs[k]])
    for k in range(THREADS):
        for c in range(CALLS):
            np.testing.assert_array_equal(concurrent[k][c], sequential[k][c])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU], ids=["rnn", "lstm", "gru"])
def test_concurrent_training_on_separate_layers(cls, dtype):
    xs = inputs(dtype)
    layers = [make(cls, dtype, seed=k) for k in range(THREADS)]
    rng = np.random.default_rng(7)
    douts = [rng.standard_normal((T, N, 2 * H)).astype(dtype) for _ in range(CALLS)]

    def train(k):
        m = layers[k]
        m.zero_grad()
        results = []
        for x, dout in zip(xs[k], douts):
            out, _ = m(x)
            dx, _ = m.backward(dout)
            results.append((out, dx))
        grads = {name: p.grad.copy() for name, p in m.named_parameters()}
        return results, grads

    sequential = [train(k) for k in range(THREADS)]
    concurrent = run_threads(train)
    for k in range(THREADS):
        for (out_s, dx_s), (out_c, dx_c) in zip(sequential[k][0], concurrent[k][0]):
            np.testing.assert_array_equal(out_c, out_s)
            np.testing.assert_array_equal(dx_c, dx_s)
        for name, grad in sequential[k][1].items():
            np.testing.assert_array_equal(concurrent[k][1][name], grad)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU], ids=["rnn", "lstm", "gru"])
def test_concurrent_calls_while_one_thread_projects_ahead(cls):
    """Batch 1, small steps: one team thread runs the time loop while the other computes the
    input projection ahead of it. A call that finds the team busy runs both roles itself, one
    after the other, and must neither hang nor differ."""
    import fusedrnn
    saved = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(2)
    try:
        m = cls(128, 128, dtype=np.float32, seed=3).eval()
        rng = np.random.default_rng(5)
        xs = [rng.standard_normal((64, 1, 128)).astype(np.float32) for _ in range(THREADS)]
        sequential = [m(x)[0] for x in xs]
        concurrent = run_threads(lambda k: [m(xs[k])[0] for _ in range(CALLS)])
        for k in range(THREADS):
            for out in concurrent[k]:
                np.testing.assert_array_equal(out, sequential[k])
    finally:
        fusedrnn.set_num_threads(saved)


def concurrent_training_matches(make_layer, out_features, stack):
    """Layers side by side on two threads (the two directions of a bidirectional layer, or the
    layers of a stack as a wavefront): a call that finds the team busy runs them one after the
    other, each as on one thread, with the same results, bit for bit; one thread (no side by
    side at all) agrees within the threads tolerance."""
    import fusedrnn
    saved = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(2)
    try:
        layers = [make_layer(k) for k in range(THREADS)]
        rng = np.random.default_rng(11)
        xs = [rng.standard_normal((24, 2, 64)).astype(np.float32) for _ in range(THREADS)]
        dout = rng.standard_normal((24, 2, out_features)).astype(np.float32)
        shapes = [(24, 2, 64, 128), (24, 2, 128, 128)] if stack else [(24, 2, 64, 128)] * 2
        assert fusedrnn._C.runs_side_by_side(layers[0]._cell, "tanh", shapes,
                                             np.dtype(np.float32), stack)

        def train(k):
            m = layers[k]
            m.zero_grad()
            out, _ = m(xs[k])
            dx, _ = m.backward(dout)
            return out, dx, {name: p.grad.copy() for name, p in m.named_parameters()}

        sequential = [train(k) for k in range(THREADS)]
        concurrent = run_threads(train)
        for k in range(THREADS):
            np.testing.assert_array_equal(concurrent[k][0], sequential[k][0])
            np.testing.assert_array_equal(concurrent[k][1], sequential[k][1])
            for name, grad in sequential[k][2].items():
                np.testing.assert_array_equal(concurrent[k][2][name], grad)
        fusedrnn.set_num_threads(1)
        out, dx, grads = train(0)
        tolerance = TOLERANCES["threads"][np.float32]
        assert relative_error(out, sequential[0][0]) <= tolerance
        assert relative_error(dx, sequential[0][1]) <= tolerance
        for name, grad in grads.items():
            assert relative_error(grad, sequential[0][2][name]) <= tolerance, name
    finally:
        fusedrnn.set_num_threads(saved)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU], ids=["rnn", "lstm", "gru"])
def test_concurrent_training_where_directions_run_side_by_side(cls):
    concurrent_training_matches(
        lambda k: cls(64, 128, bidirectional=True, dtype=np.float32, seed=k), 256, stack=False)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM], ids=["rnn", "lstm"])
def test_concurrent_training_where_a_stack_runs_as_a_wavefront(cls):
    concurrent_training_matches(
        lambda k: cls(64, 128, num_layers=2, dtype=np.float32, seed=k), 128, stack=True)


_ONE_CORE_SNIPPET = r"""
import os, subprocess, sys, numpy as np
if sys.argv[1] == "one-slice":  # a by-units loop in one slice a thread, not two
    os.environ["FUSEDRNN_TUNING"] = "unit_slices_per_thread=1"
if sys.argv[1] == "openmp-stalled":  # any late OpenMP thread counts as held elsewhere: the
    os.environ["FUSEDRNN_TUNING"] = "openmp_stall_us=0"  # phases then run on the caller alone
import fusedrnn as fr
from fusedrnn import functional as F
if sys.argv[1] == "one-core":
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
if sys.argv[1].startswith("openmp"):  # the phases on PyTorch's OpenMP threads
    import torch, fusedrnn.torch
    torch.set_num_threads(2)
    assert fr.info()["thread_pool"].startswith("OpenMP"), fr.info()
spinners = []
if sys.argv[1] in ("spinners", "openmp-stalled"):  # busy processes on our cores: workers stall
    # (each ends itself within two minutes should this process die before it kills them)
    spin = "import time; end = time.time() + 120\nwhile time.time() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
fr.set_num_threads(2)
rng = np.random.default_rng(0)
out = []
try:
    # (T, N, H): pipelined (batch 1), by samples (batch 32), by units (batch 8, H 512)
    for T, N, H in ((30, 1, 128), (12, 32, 64), (6, 8, 512)):
        x = rng.standard_normal((T, N, H)).astype(np.float32)
        w = [rng.uniform(-0.1, 0.1, s).astype(np.float32) for s in ((4 * H, H), (4 * H, H), (4 * H,), (4 * H,))]
        y, h, c, ctx = F.lstm_forward(x, None, None, *w, training=True)
        grads = F.lstm_backward(ctx, np.ones_like(y))
        out += [y, h, c, *grads]
finally:
    for p in spinners:
        p.kill()
np.savez(sys.argv[2], *out)
"""


def test_same_bits_on_one_core_and_on_pytorchs_openmp_threads(tmp_path):
    """With both threads of the team on one core (as when another library's spinning threads
    hold the other), phases do not wait for a worker that is not running: the caller claims its
    slices. With busy processes on the cores the workers stall inside slices, and the caller
    pulls them onto its own core. On PyTorch's OpenMP threads (fusedrnn.torch imported) the
    threads of the region claim them, and where they come late (busy processes on the cores)
    the phases run on the calling thread for a while. A by-units loop cut in one slice a thread
    instead of two (the CPU table's unit_slices_per_thread) computes every unit the same way.
    The results are the same bit for bit as with two free cores of our own."""
    import os
    import subprocess
    import sys
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity")
    modes = ["free", "one-core", "spinners", "one-slice"]
    try:
        import torch  # noqa: F401
        modes += ["openmp", "openmp-stalled"]
    except ImportError:
        pass
    results = []
    for mode in modes:
        path = tmp_path / f"{mode}.npz"
        subprocess.run([sys.executable, "-c", _ONE_CORE_SNIPPET, mode, str(path)], check=True,
                       timeout=300)
        with np.load(path) as f:
            results.append([f[k] for k in f.files])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


_FORK_SNIPPET = r"""
import os, signal, sys, time, numpy as np
if sys.argv[1] == "torch":  # the phases on PyTorch's OpenMP threads, which no child has either
    import torch, fusedrnn.torch
import fusedrnn as fr
fr.set_num_threads(2)
lstm = fr.nn.LSTM(64, 256, seed=0).eval()
x = np.random.default_rng(0).standard_normal((20, 8, 64)).astype(np.float32)
expected = {}
for threads in (1, 2):  # same bits for a given thread count
    fr.set_num_threads(threads)
    expected[threads] = lstm(x)[0]
# The parent's team is up now (2 threads): children fork while its workers spin and once
# they sleep on their condition variable; set_num_threads(1) is what a DataLoader worker does.
pids = []
for threads, pause in ((1, 0.0), (2, 0.0), (1, 0.5)):
    time.sleep(pause)
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # a hung child ends itself
        fr.set_num_threads(threads)
        os._exit(0 if np.array_equal(lstm(x)[0], expected[threads]) else 3)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
sys.exit(max(codes) or (0 if np.array_equal(lstm(x)[0], expected[2]) else 4))
"""


@pytest.mark.parametrize("pool", ["own", "torch"])
def test_forked_children_run_the_layers(pool):
    """A child forked after the parent used the kernels (DataLoader workers, multiprocessing)
    has none of the team's threads, nor of PyTorch's OpenMP pool where the phases ran there:
    it must neither wait for them nor lose its results."""
    import subprocess
    import sys
    if pool == "torch":
        pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", _FORK_SNIPPET, pool], timeout=90)
    assert done.returncode == 0


def test_set_num_threads_waits_for_a_running_call_without_the_gil(restore_threads):
    """Changing the thread count waits for a call that holds the team; the other Python
    threads keep running meanwhile (it waited holding the GIL: the interpreter stalled)."""
    import time
    import fusedrnn as fr
    fr.set_num_threads(2)
    m = nn.LSTM(16, 512, seed=0).eval()
    probe = np.random.default_rng(0).standard_normal((500, 1, 16)).astype(np.float32)
    m(probe[:10])
    t0 = time.perf_counter()
    m(probe)
    steps = int(500 * 0.6 / max(time.perf_counter() - t0, 1e-4))  # a call of about 0.6 s
    x = np.resize(probe, (max(steps, 500), 1, 16))
    beats, stop = [], threading.Event()

    def heart():
        while not stop.is_set():
            beats.append(time.perf_counter())
            time.sleep(0.005)

    h = threading.Thread(target=heart)
    call = threading.Thread(target=m, args=(x,))
    h.start()
    call.start()
    time.sleep(0.05)
    t1 = time.perf_counter()
    fr.set_num_threads(1)
    blocked = time.perf_counter() - t1
    call.join()
    stop.set()
    h.join()
    gaps = np.diff([b for b in beats if t1 - 0.01 <= b <= t1 + blocked])
    assert blocked > 0.1, "the call ended before set_num_threads: make it longer"
    assert gaps.size and gaps.max() < 0.5 * blocked, (blocked, gaps.max(initial=0))


_EXIT_SNIPPET = r"""
import threading, time, numpy as np
import fusedrnn as fr
fr.set_num_threads(2)
m = fr.nn.LSTM(32, 128, seed=0).eval()
x = np.ones((400, 16, 32), np.float32)
def loop():
    while True:
        m(x)
def refused():  # calls that raise (their exception must not pass through the GIL guard)
    while True:
        try:
            m(x[:, :, :3])
        except ValueError:
            pass
for target in (loop, loop, refused):
    threading.Thread(target=target, daemon=True).start()
time.sleep(0.3)  # the main thread ends with the daemon threads inside calls
"""


def _exit_without_leak_check():
    """The environment for a child that exits with Python objects alive (daemon threads', a
    suspended generator's): in the sanitizers' CI step LeakSanitizer would report them at exit,
    and they are never freed by CPython, nor ours."""
    import os
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    return env


_FINALIZER_SNIPPET = r"""
import sys, _thread, time
if sys.argv[1] == "worker":  # threading imported first there: its "main thread" is the worker
    done = []
    _thread.start_new_thread(lambda: (__import__("fusedrnn._C"), done.append(1)), ())
    while not done:
        time.sleep(0.01)
import numpy as np
from fusedrnn import _C
a = np.ones((4, 4), np.float32)  # (the first kernel call is at exit: pybind11's NumPy
def batches():                   # import, made at the first array, failed there)
    try:
        while True:
            yield 0
    finally:  # run while the interpreter finalizes, on its main thread
        sys.stdout.write("cleanup ran %d\n" % int(_C.matmul(a, a, False, False)[0, 0]))
g = batches()
next(g)
"""


@pytest.mark.parametrize("imported_in", ["main", "worker"])
def test_a_kernel_call_while_the_main_thread_finalizes_returns(imported_in):
    """The thread finalizing the interpreter takes the GIL back after a call (a generator's
    cleanup, a __del__ at exit): only other threads stay out (it waited forever, and so it did
    where fusedrnn was first imported on another thread), and a first call there finds NumPy's
    C API imported (ImportError: sys.meta_path is None)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _FINALIZER_SNIPPET, imported_in],
                          capture_output=True, text=True, timeout=60,
                          env=_exit_without_leak_check())
    assert done.returncode == 0 and "cleanup ran 4" in done.stdout, done.stderr


def test_the_interpreter_exits_while_daemon_threads_are_inside_calls():
    """At exit the team is left standing (joining its workers waited for the daemon thread's
    call, then freed the team under it: SIGSEGV), and a call that ends while the interpreter
    finalizes does not take the GIL back (Python ends such a thread by pthread_exit, whose
    unwinding through the GIL guard's noexcept destructor aborted the process)."""
    import subprocess
    import sys
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", _EXIT_SNIPPET], capture_output=True,
                              text=True, timeout=120, env=_exit_without_leak_check())
        assert done.returncode == 0, done.stderr
        assert "terminate" not in done.stderr
