"""Side-by-side CPU timing of fusedrnn against the installed peers (PyTorch CPU, ONNX Runtime,
the NumPy reference), in one process, same threads, same weights (outputs checked to agree),
warm-up, alternating repeats, medians. Ratios in one run are the figure; absolute times on a
shared machine are noise. Used by `fusedrnn bench` and `python bench/cpu_bench.py`.

Speedup columns are peer ms / our ms (> 1 means fusedrnn is faster)."""
from __future__ import annotations

import json
import math
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from .cli_commands import (parse_names, path, positive_float, precision, threads,
                           to_json, usable_cores)

CELLS = {"LSTM": ("lstm", 4), "GRU": ("gru", 3), "RNN": ("rnn", 1)}
# (B, T, I, H): the anchors' shape set (../shared/anchors/README.md).
ANCHOR_SHAPES = [(1, 100, 128, 128), (1, 256, 512, 512), (8, 256, 512, 512), (32, 100, 256, 256),
                 (64, 50, 512, 512), (16, 1000, 128, 128)]
QUICK_SHAPES = [(1, 100, 128, 128), (8, 64, 256, 256), (32, 50, 128, 128)]
# The multi-layer bidirectional cases: (cell, B, T, I, H, layers); at batch 1 (a tagger run
# sentence by sentence) the two directions run side by side.
STACKED = [("LSTM", 16, 100, 128, 128, 2), ("LSTM", 1, 100, 128, 128, 2)]
REFERENCE_MAX_FLOPS = 2e8  # the float64 NumPy reference is timed only below this (it is slow)


def add_arguments(p):
    p.add_argument("--cells", default=None,
                   help="comma-separated: LSTM,GRU,RNN (the default); --framework torch also "
                        "LSTMCell,GRUCell,RNNCell (a decoder's loop; in its default)")
    p.add_argument("--shapes", default=None,
                   help="semicolon-separated B,T,I,H tuples, e.g. '1,100,128,128;8,256,512,512'")
    p.add_argument("--modes", default="infer,train", help="infer,train")
    p.add_argument("--quick", action="store_true", help="a ~30-second run on small shapes")
    p.add_argument("--threads", type=threads, default=usable_cores(),
                   help="threads of every contestant (default: the cores this process may use)")
    p.add_argument("--budget", type=positive_float, default=None,
                   help="seconds of timing per peer and row (default 1.5; with --quick 0.3, "
                        "the regimes 0.15, on a GPU 0.25; a given --budget holds for every mode)")
    p.add_argument("--no-stacked", action="store_true", help="skip the multi-layer bidirectional rows")
    p.add_argument("--memory", action="store_true",
                   help="also measure the peak memory of one training step (subprocesses)")
    p.add_argument("--json", default=None, type=path, metavar="PATH", help="write every row as JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the CUDA kernels against cuDNN (fusedrnn.benchmark_gpu)")
    p.add_argument("--precisions", default=None,
                   help="--device cuda: fp32, tf32 and/or bf16 (torch.autocast's on cuDNN; "
                        "default fp32,tf32)")
    p.add_argument("--precision", type=precision("fp32", "bf16"), choices=("fp32", "bf16"),
                   default="fp32",
                   help="bf16: CPU inference (and --modes train) in float32 and under bfloat16 "
                        "autocast, ours and torch's, each in its own process "
                        "(fusedrnn.benchmark_bf16); with --framework "
                        "torch: both models under torch.autocast('cpu', torch.bfloat16)")
    p.add_argument("--framework", choices=("numpy", "torch", "onnx"), default="numpy",
                   help="torch: the fusedrnn.torch adapter inside a small torch model against "
                        "torch.nn (fusedrnn.benchmark_torch); onnx: one ONNX model in ONNX "
                        "Runtime and in fusedrnn.onnx.Backend (fusedrnn.benchmark_onnx)")
    p.add_argument("--deterministic", action="store_true",
                   help="also time fusedrnn with fr.set_deterministic(True), side by side: the "
                        "'det cost' column is its ms over the default's")
    p.add_argument("--explain", action="store_true",
                   help="time nothing: print what each cell and shape's calls would do on "
                        "--threads threads (the CPU drivers' plans) and the CPU table")
    p.add_argument("--variants", default=None, metavar="LIST",
                   help="peephole,reset_before,proj,layernorm: the cell variants against the "
                        "plain cell (ours) and their peer where one has them (ONNX Runtime's "
                        "LSTM with P, its GRU with linear_before_reset=0, PyTorch's LSTM with "
                        "proj_size = H/4; none for the LayerNorm-LSTM), float32 "
                        "(fusedrnn.benchmark_variants)")
    p.add_argument("--attention", default=None, metavar="LIST",
                   help="additive,dot: one fused attention step (forward; train: and its "
                        "gradients) against the same step in PyTorch's eager operators; "
                        "--shapes are then N,S,A,K (fusedrnn.benchmark_attention)")
    p.add_argument("--regimes", default=None, metavar="LIST",
                   help="b2b,sporadic,shared: fp32 inference against the faster of PyTorch and "
                        "ONNX Runtime back to back and sporadically (each contestant in its own "
                        "process) and all in one process, alternating "
                        "(fusedrnn.benchmark_regimes)")
    p.add_argument("--sporadic-ms", type=positive_float, default=None, metavar="MS",
                   help="with --regimes: the idle ms before each sporadic call (default 3; "
                        "our idle threads yield their core for 5 ms, FUSEDRNN_LINGER_US, "
                        "before they sleep: a longer gap times their wake-up too)")


# ---------------------------------------------------------------------------- timing
# Seconds to let the previous contestant's spinning threads go idle before the next block
# (NumPy's OpenBLAS threads spin longest; ONNX Runtime's pool burns about 60 ms of CPU after a
# run, torch's OpenMP threads 9 ms, our idle worker 5: measured on a 2-core Xeon, process CPU
# time over idle sleeps after a call).
SETTLE_S = 0.05
SETTLE_AFTER_S = {"numpy_ref": 0.25, "ort": 0.1}
# Seconds each block runs at least: after a pause, this VM's cores need about a millisecond to
# run at full speed again (batch-1 calls of 0.08 ms took 0.17 ms in blocks of 10), which a
# user's loop of back-to-back calls never sees.
MIN_BLOCK_S = 0.025


CALIBRATION_CALLS = 3  # median_ms: single calls of each contestant, after its warm-up
MIN_SETTLED_CALLS = 5  # median_ms: the fewest counted calls of a contestant (slow rows too)


class Timing(float):
    """A median in ms (a float) that says how it was measured: ``samples``, the calls counted,
    and ``spread``, their interquartile range over the median (a row's JSON carries both: a
    ratio near 1 from a handful of calls of wide spread is no win)."""

    def __new__(cls, ms, samples=None, spread=math.nan):
        self = super().__new__(cls, ms)
        self.samples, self.spread = samples, spread
        return self

    def __getnewargs__(self):  # (pickled: from a contestant's process)
        return float(self), self.samples, self.spread

    @classmethod
    def of(cls, seconds):
        """The median of the timed calls ``seconds``."""
        median = statistics.median(seconds)
        q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [median] * 3
        return cls(1000 * median, len(seconds), (q[2] - q[0]) / median if median else 0.0)


def measured(ms: dict) -> dict:
    """A row's record of how its medians were measured: calls counted and spread, per
    contestant."""
    return {"samples": {k: getattr(v, "samples", None) for k, v in ms.items()},
            "spread": {k: round(getattr(v, "spread", math.nan), 3) for k, v in ms.items()}}


def median_ms(fns: dict, budget: float, pause_s: float = 0.0, settle: bool = True,
              settle_as: dict = None) -> dict:
    """Median ms per callable, each timed in steady state, back to back, as a user's loop runs
    it (the anchors' method): rounds of one block per callable, alternating so that drift of
    the machine hits every callable alike. Each block starts after a pause long enough for the
    previous contestant's worker threads to stop spinning (PyTorch's OpenMP threads spin for
    milliseconds after each call, ONNX Runtime's too, NumPy's OpenBLAS threads for about 0.1 s),
    and its first call is not counted; a block of fast calls runs at least MIN_BLOCK_S.

    ``pause_s`` > 0 times a sporadic caller instead (a server answering now and then): every
    counted call follows an idle sleep of ``pause_s`` (not counted), and blocks are not
    stretched to MIN_BLOCK_S (what that minimum hides is what this measures).

    ``settle=False`` times callables sharing one process as a program mixing them calls them:
    blocks of one call each, in alternation, with no settle pause and no uncounted call, so
    each call comes right after the previous contestant's (its threads may still spin). The
    order turns every other round (the first callable, then the others reversed: a b c, a c b,
    a b c, ...), so each callable comes after each of the others equally often: what a call
    costs depends on whose threads spin before it (ONNX Runtime's pool spins 20-50 ms after a
    call, PyTorch's a few), and a fixed cycle would put one callable after the same one always.

    ``settle_as``: {key: contestant} for a callable keyed otherwise ("peer": "ort"), whose
    threads need that contestant's settle pause (SETTLE_AFTER_S)."""
    settle_as = settle_as or {}
    for fn in fns.values():  # warm-up (allocations, thread pools, caches)
        fn()
    one = {}
    for k, fn in fns.items():  # the best of a few: one call slowed by a neighbour would set
        one[k] = math.inf      # the contestant's count (a median of a handful of calls)
        for _ in range(CALIBRATION_CALLS):
            t0 = time.perf_counter()
            fn()
            one[k] = min(one[k], time.perf_counter() - t0)
    total_one = sum(one.values()) + pause_s * len(fns)
    # Unsettled rounds are single calls: allow as many as settled blocks stretched to
    # MIN_BLOCK_S would count.
    reps = max(MIN_SETTLED_CALLS if settle else 3,
               min(50 if settle else 1000, int(budget * len(fns) / max(total_one, 1e-6))))
    rounds = min(reps, 5) if settle else reps
    block = -(-reps // rounds)
    times = {k: [] for k in fns}
    previous = list(fns)[-1]  # (the calibration's last: its threads may spin still)
    # Unsettled calls can run far slower than the single calls above (threads fighting over
    # the cores): those rounds stop once twice the budget is spent (after 3 rounds).
    stop = time.perf_counter() + 2 * budget * len(fns)
    for i in range(rounds):
        if not settle and i >= 3 and time.perf_counter() > stop:
            break
        order = list(fns)
        if not settle and i % 2:
            order = order[:1] + order[:0:-1]
        for k in order:
            fn = fns[k]
            if settle:
                time.sleep(SETTLE_AFTER_S.get(settle_as.get(previous, previous), SETTLE_S))
                previous = k
                fn()  # not counted (see above)
            stretch = settle and not pause_s
            n = max(block, int(MIN_BLOCK_S / max(one[k], 1e-6))) if stretch else block
            for _ in range(n):
                if pause_s:
                    time.sleep(pause_s)
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: Timing.of(v) for k, v in times.items()}


def sgemm_gflops(n=1024) -> float:
    """The machine's measured sgemm rate through fusedrnn's OpenBLAS (the family NumPy ships),
    on fusedrnn's thread count (NumPy's own BLAS would keep its own: --threads 1 would compare
    one thread's rows with two threads' rate)."""
    from .functional import matmul
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ms = median_ms({"g": lambda: matmul(a, a)}, 1.0)["g"]
    time.sleep(SETTLE_AFTER_S["numpy_ref"])  # OpenBLAS's threads (as NumPy's) stop spinning
    return 2 * n ** 3 / ms / 1e6


def flops(cell, B, T, I, H, train, layers=1, directions=1):
    g = CELLS[cell][1]
    fwd = 0
    for layer in range(layers):
        inp = I if layer == 0 else H * directions
        fwd += 2.0 * B * g * H * (inp + H) * T * directions
    return fwd * (3 if train else 1)


# ---------------------------------------------------------------------------- the contestants
def _weights(cell, I, H, seed=0):
    g = CELLS[cell][1]
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return {n: rng.uniform(-k, k, s).astype(np.float32) for n, s in
            (("weight_ih_l0", (g * H, I)), ("weight_hh_l0", (g * H, H)),
             ("bias_ih_l0", (g * H,)), ("bias_hh_l0", (g * H,)))}


def ours(cell, x, w, mode, kernels=None, returns_grads=False):
    """A call of fusedrnn for ``cell`` on x [T, B, I] with weights ``w``: inference
    (``mode="infer"``: the ``fusedrnn.nn`` layer in eval mode, as a user calls it, like torch's
    module and ORT's session) or a training step (the kernels: forward, then BPTT with dy = 1;
    ``returns_grads``: it returns (y, {"x": dx, weight name: its gradient}), for the
    backward's check). ``kernels``:
    ``fusedrnn.functional`` by default; ``fusedrnn.reference`` has the same signatures (then
    inference runs them too)."""
    if kernels is None and mode == "infer":
        import fusedrnn as fr
        layer = getattr(fr.nn, cell)(x.shape[2], w["weight_hh_l0"].shape[1], dtype=x.dtype)
        layer.load_state_dict(w)
        layer.eval()
        return lambda: layer(x)[0]
    if kernels is None:
        from fusedrnn import functional as kernels
    name = CELLS[cell][0]
    fwd, bwd = getattr(kernels, name + "_forward"), getattr(kernels, name + "_backward")
    args = (w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"])
    dy = np.ones((x.shape[0], x.shape[1], w["weight_hh_l0"].shape[1]), x.dtype)

    def run_forward(training):
        if name == "lstm":
            y, _, _, ctx = fwd(x, None, None, *args, training=training)
        else:
            y, _, ctx = fwd(x, None, *args, training=training)
        return y, ctx

    if mode == "infer":
        return lambda: run_forward(False)[0]

    def train_step():
        y, ctx = run_forward(True)
        grads = bwd(ctx, dy)
        if not returns_grads:
            return y
        return y, {"x": grads[0], **dict(zip(WEIGHT_NAMES, grads[-4:]))}
    return train_step


def torch_peer(cell, x, w, mode, threads, proj_size=0, returns_grads=False):
    """torch.nn's ``cell`` layer on the same weights (``proj_size``: an LSTM with projections,
    w then holding weight_hr_l0 too): inference, or a training step (dy = 1;
    ``returns_grads``: it returns (y, {"x": dx, weight name: its gradient}) of that step)."""
    import torch
    torch.set_num_threads(threads)
    I, H = x.shape[2], w["weight_hh_l0"].shape[0] // CELLS[cell][1]
    m = getattr(torch.nn, cell)(I, H, **({"proj_size": proj_size} if proj_size else {}))
    m.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()})
    xt = torch.from_numpy(x)
    if mode == "infer":
        def infer():
            with torch.inference_mode():
                return m(xt)[0].numpy()
        return infer
    xg = xt.clone().requires_grad_(True)
    dy = torch.ones(x.shape[0], x.shape[1], proj_size or H)

    def train_step():
        xg.grad = None  # as a user's loop (optimizer.zero_grad()): no adding into the last
        m.zero_grad(set_to_none=True)  # step's gradients, which ours, from the kernels, skips
        y, _ = m(xg)
        y.backward(dy)
        if not returns_grads:
            return y.detach().numpy()
        return y.detach().numpy(), {"x": xg.grad.numpy(), **{
            k: getattr(m, k).grad.numpy() for k in WEIGHT_NAMES}}
    return train_step


def onnx_node_model(cell, x, w, w_ph=None, reset_after=True):
    """An ONNX model of one LSTM/GRU/RNN node (``cell`` "LSTM", "GRU" or "RNN") with our layer
    0's weights ``w`` as initializers in ONNX's gate order (``fusedrnn.onnx._layout``): input X
    [T, B, I] (x's shape), output Y [T, 1, B, H]. ``w_ph``: an LSTM's peepholes [3H] (i, f, o);
    ``reset_after=False``: a GRU with linear_before_reset=0."""
    from onnx import TensorProto, helper, numpy_helper

    from .onnx._layout import to_onnx
    T, B, I = x.shape
    H = w["weight_hh_l0"].shape[1]
    W, R, Bb, P = to_onnx(cell.lower(), *(w[f"{n}_l0"] for n in ("weight_ih", "weight_hh",
                                                                 "bias_ih", "bias_hh")), w_ph)
    named = [("W", W), ("R", R), ("B", Bb)] + ([("P", P)] if P is not None else [])
    inits = [numpy_helper.from_array(a.astype(np.float32)[None], n) for n, a in named]
    attrs = {"hidden_size": H}
    if cell == "GRU":
        attrs["linear_before_reset"] = 1 if reset_after else 0  # 1: PyTorch's GRU
    inputs = ["X", "W", "R", "B"] + (["", "", "", "P"] if w_ph is not None else [])
    node = helper.make_node(cell, inputs, ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def ort_peer(cell, x, w, threads, w_ph=None, reset_after=True):
    """ONNX Runtime running :func:`onnx_node_model` (the same weights): a callable -> y."""
    import onnxruntime as ort
    model = onnx_node_model(cell, x, w, w_ph, reset_after)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"X": x})[0][:, 0]


def reference_peer(cell, x, w, mode="infer", returns_grads=False):
    """The NumPy float64 reference (``fusedrnn.reference``) on the same data and weights."""
    from fusedrnn import reference
    return ours(cell, x.astype(np.float64), {k: v.astype(np.float64) for k, v in w.items()},
                mode, kernels=reference, returns_grads=returns_grads)


def _available(module):
    try:
        __import__(module)
        return True
    except Exception:
        return False


def installed_peers() -> dict:
    """Which peers can be timed here: {"torch": bool, "ort": bool} (ORT also needs onnx to
    build its model)."""
    return {"torch": _available("torch"), "ort": _available("onnxruntime") and _available("onnx")}


# ---------------------------------------------------------------------------- memory
_MEMORY_SNIPPET = r"""
import resource, sys, json, numpy as np
sys.path[:0] = json.loads(sys.argv[2])
from fusedrnn.benchmark import ours, torch_peer, _weights
who, cell, B, T, I, H, threads = sys.argv[1], sys.argv[3], *map(int, sys.argv[4:9])
if who == "ours":
    import fusedrnn
    fusedrnn.set_num_threads(threads)
def step(B, T, I, H):
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    w = _weights(cell, I, H)
    return ours(cell, x, w, "train") if who == "ours" else torch_peer(cell, x, w, "train", threads)
# the library's one-time set-up (thread pools, oneDNN's first primitives) on a tiny step of
# another shape first: what one step of this shape adds is measured, not what the first call
# of a process costs once
step(1, 2, 2, 2)()
fn = step(B, T, I, H)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
def high_water():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
try:  # the peak so far (the imports', the set-up's) reset to what is resident now
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = rss()
fn()
print(json.dumps({"peak_mb": max(0, high_water() - before) / 2**20}))
"""


def training_peak_mb(who, cell, B, T, I, H, threads):
    """Peak resident memory added by one training step, measured in a fresh process after a
    tiny step has set the library up; None (said on stderr) where the measurement failed."""
    try:
        out = subprocess.run([sys.executable, "-c", _MEMORY_SNIPPET, who, json.dumps(sys.path), cell,
                              str(B), str(T), str(I), str(H), str(threads)],
                             capture_output=True, text=True, timeout=300, check=True)
        return round(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"], 1)
    except Exception as e:  # noqa: BLE001 (the row keeps its timings; the gap is named)
        detail = getattr(e, "stderr", None) or str(e)
        if isinstance(detail, bytes):  # (a timeout's output)
            detail = detail.decode(errors="replace")
        last = (detail.strip().splitlines() or [""])[-1]
        print(f"fusedrnn: {who} {cell} B={B} T={T} I={I} H={H}: peak memory not measured "
              f"({type(e).__name__}: {last})", file=sys.stderr)
        return None


# ---------------------------------------------------------------------------- the run
def deterministic_call(fn):
    """fn run with ``fr.set_deterministic(True)`` (a flag the kernels read per call)."""
    import fusedrnn as fr

    def call():
        fr.set_deterministic(True)
        try:
            return fn()
        finally:
            fr.set_deterministic(False)
    return call


# Outputs must agree with ours to this (absolute, float32) for a row to count, as in the
# regimes' and the torch program's benches.
TOLERANCE = 1e-3


# A training row's gradients (the input's and every weight's) must agree with ours to this,
# relative to each one's largest value (BPTT sums over every step: an absolute bound would
# depend on T).
GRADIENT_TOLERANCE = 1e-3
WEIGHT_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _agrees(diffs):
    """Every peer's max |difference| within TOLERANCE (a NaN is not)."""
    return all(d is not None and d <= TOLERANCE for d in diffs.values())


def step_gradients(who, cell, x, w, threads):
    """{"x": dL/dx, weight name: dL/dW} of the training step (dy = 1) that ``who`` ("ours",
    "torch" or "numpy_ref") times: the training rows' check of the backward (their outputs
    alone are the forward's)."""
    step = {"ours": lambda: ours(cell, x, w, "train", returns_grads=True),
            "torch": lambda: torch_peer(cell, x, w, "train", threads, returns_grads=True),
            "numpy_ref": lambda: reference_peer(cell, x, w, "train", returns_grads=True)}[who]()
    return step()[1]


def input_gradient(who, cell, x, w, threads):
    """dL/dx of :func:`step_gradients`."""
    return step_gradients(who, cell, x, w, threads)["x"]


def gradient_diffs(cell, x, w, threads, peers):
    """{peer: the largest, over dx and every weight's gradient, of max |g_peer - g_ours| /
    max |g_ours|} of a training step (see step_gradients)."""
    mine = step_gradients("ours", cell, x, w, threads)
    out = {}
    for k in peers:
        theirs = step_gradients(k, cell, x, w, threads)
        out[k] = float(np.max([np.max(np.abs(theirs[n] - g)) / max(np.max(np.abs(g)), 1e-30)
                               for n, g in mine.items()]))  # (a NaN stays: no agreement)
    return out


def report_disagreement(rows, describe):
    """Each row whose outputs disagree with a peer's (``row["agree"]`` False) on one line of
    stderr, ``describe(row)`` naming it: such a row does not compare the same result. Returns
    the command's exit status (1 if any)."""
    wrong = [r for r in rows if not r.get("agree", True)]
    for r in wrong:
        diffs = {k: v for k, v in r.items() if "diff" in k or k.startswith("relerr")}
        print(f"fusedrnn: {describe(r)}: outputs differ from a peer's beyond the tolerance "
              f"({diffs}): not a comparison of the same result", file=sys.stderr)
    return 1 if wrong else 0


def bench_row(cell, mode, B, T, I, H, threads, budget, have, reference=None,
              deterministic=False):
    """One row: ours and each installed peer (``have``) on one shape and mode, outputs checked
    to agree, then timed side by side. ``reference``: time the NumPy float64 reference too
    (None: for inference rows below REFERENCE_MAX_FLOPS). ``deterministic``: time ours with
    ``fr.set_deterministic(True)`` too (``ours_det_ms``, ``det_cost`` = its ms / ours)."""
    if reference is None:
        reference = mode == "infer" and flops(cell, B, T, I, H, False) <= REFERENCE_MAX_FLOPS
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w = _weights(cell, I, H)
    fns = {"ours": ours(cell, x, w, mode)}
    if deterministic:
        fns["ours_det"] = deterministic_call(ours(cell, x, w, mode))
    if have["torch"]:
        fns["torch"] = torch_peer(cell, x, w, mode, threads)
    if have["ort"] and mode == "infer":
        fns["ort"] = ort_peer(cell, x, w, threads)
    if reference:
        fns["numpy_ref"] = reference_peer(cell, x, w, mode)
    # Same weights, same outputs: check every peer against ours before timing.
    y_ours = np.asarray(fns["ours"]())
    agree = {}
    for k, fn in fns.items():
        if k != "ours":
            agree[k] = float(np.max(np.abs(np.asarray(fn()) - y_ours)))
    grad_diffs = gradient_diffs(cell, x, w, threads, [k for k in ("torch", "numpy_ref")
                                                      if k in fns]) if mode == "train" else {}
    ms = median_ms(fns, budget)
    row = {"cell": cell, "mode": mode, "B": B, "T": T, "I": I, "H": H, "threads": threads,
           "ours_ms": figures(ms["ours"])}
    for k in ("torch", "ort", "numpy_ref"):
        row[f"{k}_ms"] = figures(ms[k]) if k in ms else None
        row[f"x_{k}"] = round(ms[k] / ms["ours"], 2) if k in ms else None
        row[f"maxdiff_{k}"] = agree.get(k)
    row["ours_gflops"] = round(flops(cell, B, T, I, H, mode == "train") / ms["ours"] / 1e6, 2)
    row["agree"] = _agrees(agree) and all(d <= GRADIENT_TOLERANCE for d in grad_diffs.values())
    if grad_diffs:  # (a NaN fails the comparison above)
        row["graddiff"] = float(np.max(list(grad_diffs.values())))  # (a NaN stays)
    if deterministic:
        row["ours_det_ms"] = figures(ms["ours_det"])
        row["det_cost"] = round(ms["ours_det"] / ms["ours"], 2)
        row["maxdiff_ours_det"] = agree["ours_det"]
    row.update(measured(ms))
    return row


def bench_stacked(cell, B, T, I, H, layers, mode, threads, budget, have):
    import fusedrnn as fr
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    ours_layer = getattr(fr.nn, cell)(I, H, num_layers=layers, bidirectional=True)
    ours_layer.train(mode == "train")
    fns = {}
    if mode == "infer":
        fns["ours"] = lambda: ours_layer(x)[0]
    else:
        def ours_step():
            ours_layer.zero_grad()  # (a user's loop: each step's gradients alone)
            out, _ = ours_layer(x)
            ours_layer.backward(np.ones_like(out))
            return out
        fns["ours"] = ours_step
    if have["torch"]:
        import torch
        torch.set_num_threads(threads)
        tl = getattr(torch.nn, cell)(I, H, num_layers=layers, bidirectional=True)
        tl.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                            for k, v in ours_layer.state_dict().items()})
        xt = torch.from_numpy(x)
        if mode == "infer":
            def torch_infer():
                with torch.inference_mode():
                    return tl(xt)[0].numpy()
            fns["torch"] = torch_infer
        else:
            xg = xt.clone().requires_grad_(True)

            def torch_step():
                xg.grad = None
                tl.zero_grad(set_to_none=True)
                out, _ = tl(xg)
                out.backward(torch.ones_like(out))
                return out.detach().numpy()
            fns["torch"] = torch_step
    y0 = np.asarray(fns["ours"]())
    agree = {k: float(np.max(np.abs(np.asarray(f()) - y0))) for k, f in fns.items() if k != "ours"}
    graddiff = None
    if mode == "train" and "torch" in fns:  # (both steps ran above: every weight's gradient)
        graddiff = float(np.max([
            np.max(np.abs(getattr(tl, n).grad.numpy() - p.grad)) / max(np.max(np.abs(p.grad)),
                                                                       1e-30)
            for n, p in ours_layer.named_parameters()]))
    ms = median_ms(fns, budget)
    row = {"cell": f"{cell}x{layers} bidir", "mode": mode, "B": B, "T": T, "I": I, "H": H,
           "threads": threads, "ours_ms": figures(ms["ours"]),
           "torch_ms": figures(ms["torch"]) if "torch" in ms else None,
           "x_torch": round(ms["torch"] / ms["ours"], 2) if "torch" in ms else None,
           "ort_ms": None, "x_ort": None, "numpy_ref_ms": None, "x_numpy_ref": None,
           "maxdiff_torch": agree.get("torch"),
           "ours_gflops": round(flops(cell, B, T, I, H, mode == "train", layers, 2)
                                / ms["ours"] / 1e6, 2),
           "agree": _agrees(agree) and (graddiff is None or graddiff <= GRADIENT_TOLERANCE),
           **measured(ms)}
    if graddiff is not None:
        row["graddiff"] = graddiff
    return row


def budget_of(args, quick=0.3, default=1.5):
    """Seconds of timing per contestant and row: --budget where given (--quick does not override
    it), else ``quick`` with --quick, else ``default``."""
    budget = getattr(args, "budget", None)
    if budget is not None:
        return budget
    return quick if getattr(args, "quick", False) else default


def describe_row(r):
    """How a disagreement names a row: its cell, mode and shape."""
    return " ".join(str(r[k]) for k in ("cell", "variant", "score", "mode", "precision")
                    if k in r) + " " + \
        " ".join(f"{k}={r[k]}" for k in ("B", "T", "N", "S", "A", "K", "I", "H") if k in r)


def figures(ms):
    """A time for the JSON rows: 4 significant figures, so that the ratios recomputed from the
    JSON hold for calls of 0.01 ms too (3 decimals would not)."""
    return float(f"{ms:.4g}")


def _fmt(v, w=8, p=2):
    return f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"


def print_table(rows, peak):
    det = any("det_cost" in r for r in rows)
    print(f"\n{'cell':<14}{'mode':<6}{'B':>4}{'T':>6}{'I':>5}{'H':>5} |{'ours':>8}{'torch':>8}"
          f"{'ORT':>8}{'NumPy':>8} | {'GF/s':>6}{'%sgemm':>7} | {'x torch':>8}{'x ORT':>7}{'x NumPy':>8}"
          + (f" | {'det cost':>8}" if det else ""))
    for r in rows:
        pct = 100 * r["ours_gflops"] / peak if peak else None
        print(f"{r['cell']:<14}{r['mode']:<6}{r['B']:>4}{r['T']:>6}{r['I']:>5}{r['H']:>5} |"
              f"{_fmt(r['ours_ms'])}{_fmt(r['torch_ms'])}{_fmt(r['ort_ms'])}{_fmt(r['numpy_ref_ms'])} |"
              f" {_fmt(r['ours_gflops'], 6, 1)}{_fmt(pct, 7, 0)} |"
              f"{_fmt(r['x_torch'])}{_fmt(r['x_ort'], 7)}{_fmt(r['x_numpy_ref'])}"
              + (f" | {_fmt(r.get('det_cost'))}" if det else ""))


def parse_shapes(text, names="B,T,I,H"):
    """--shapes "B,T,I,H;B,T,I,H" (or the names given): ValueError naming the option."""
    shapes = []
    for part in text.split(";"):
        try:
            vals = [int(v) for v in part.split(",")]
        except ValueError:
            vals = []
        if len(vals) != 4 or min(vals) < 1 or max(vals) >= 2 ** 31:
            raise ValueError(f"--shapes: expected {names} with positive integers below 2**31 "
                             f"(shapes separated by ';'), got {part!r}")
        shapes.append(tuple(vals))
    return list(dict.fromkeys(shapes))  # each once, in order (as --cells)


def versions():
    """The versions a run's figures depend on: Python, NumPy and the peers (None where not
    installed), read from the installed packages' metadata (nothing imported)."""
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(path, **content):
    """The run's JSON (atomically), fr.info() and the versions first; says where it went.
    Nothing without a path."""
    if not path:
        return
    import fusedrnn as fr
    from fusedrnn._atomic import write_text
    write_text(path, to_json({"info": fr.info(), "versions": versions(), **content}, indent=1))
    print(f"wrote {path}")


def selection(args, more_cells=()):
    """The CPU benches' (cells, modes, shapes) from --cells (default LSTM,GRU,RNN), --modes,
    --shapes and --quick, checked (ValueError naming the option). ``more_cells``: names a bench
    also takes (in their spelling), in its default too."""
    spelling = {c.lower(): c for c in (*CELLS, *more_cells)}
    default = ",".join(spelling.values())
    text = default if args.cells is None else args.cells
    try:
        cells = [spelling[c] for c in parse_names("--cells", text, list(spelling))]
    except ValueError as error:
        if more_cells or "cell" not in text.lower():
            raise
        raise ValueError(f"{error} (LSTMCell, GRUCell, RNNCell: with --framework torch)") \
            from None
    modes = parse_names("--modes", args.modes, ["infer", "train"])
    if args.shapes is not None:
        shapes = parse_shapes(args.shapes)
    else:
        shapes = QUICK_SHAPES if args.quick else ANCHOR_SHAPES
    return cells, modes, shapes


def cpu_header(threads) -> str:
    """The lines every CPU bench prints first: the CPU, the CPU table row in use, threads."""
    from ._runtime import cpu_summary, cpu_table_summary
    return f"CPU {cpu_summary()}; threads {threads}\nCPU table: {cpu_table_summary()}"


def explain(cells, shapes, modes, threads, precision="fp32") -> list:
    """The plans of the CPU drivers (``fusedrnn._C.plan``) for every cell, shape (B, T, I, H)
    and mode, on ``threads`` threads, float32 (``precision`` "bf16": under bfloat16 autocast),
    inference as a layer in eval mode calls (with a WeightCache): printed by ``fusedrnn bench
    --explain``."""
    from ._loader import _C
    rows = []
    for cell in cells:
        for (B, T, I, H) in shapes:
            for mode in modes:
                plan = _C.plan(CELLS[cell][0], "tanh", T, B, I, H, np.dtype(np.float32),
                               mode == "train", threads,
                               precision="bfloat16" if precision == "bf16" else None,
                               cache=mode == "infer")  # a layer in eval mode passes one
                rows.append({"cell": cell, "mode": mode, "B": B, "T": T, "I": I, "H": H, **plan})
    return rows


def _print_plans(rows):
    def line(plan):
        return "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in plan.items())
    for r in rows:
        print(f"{r['cell']} {r['mode']} B={r['B']} T={r['T']} I={r['I']} H={r['H']}")
        print(f"    forward:  {line(r['forward'])}")
        if "backward" in r:
            print(f"    backward: {line(r['backward'])}")


def _regimes_of(args):
    from .benchmark_regimes import parse_regimes
    return parse_regimes(args.regimes)


def _check_one_benchmark(args):
    """ValueError naming the options when they select two benchmarks, or give one an option
    only another reads (each bench ran the first it was dispatched to and ignored the rest)."""
    selected = [name for name, on in (
        ("--explain", getattr(args, "explain", False)),
        ("--regimes", getattr(args, "regimes", None) is not None),
        ("--variants", getattr(args, "variants", None) is not None),
        ("--attention", getattr(args, "attention", None) is not None),
        (f"--framework {getattr(args, 'framework', 'numpy')}",
         getattr(args, "framework", "numpy") != "numpy"),
        ("--precision bf16", getattr(args, "precision", "fp32") == "bf16"),
        ("--device cuda", getattr(args, "device", "cpu") == "cuda")) if on]
    if selected in (["--framework torch", "--precision bf16"],  # (the torch program under
                    ["--explain", "--precision bf16"]):         # autocast; bf16 calls' plans)
        selected = selected[:1]
    if len(selected) > 1:
        raise ValueError(f"{' and '.join(selected)}: each selects its own benchmark; run them "
                         f"one at a time")
    device = getattr(args, "device", "cpu")
    if getattr(args, "precisions", None) is not None and device != "cuda":
        raise ValueError(f"--precisions {args.precisions}: read by --device cuda only (on the "
                         f"CPU: --precision bf16)")
    given_cells = getattr(args, "cells", None) is not None
    for option, why in (("attention", "it times attention steps, of no cell"),
                        ("variants", "each variant has its own cell")):
        if given_cells and getattr(args, option, None) is not None:
            raise ValueError(f"--cells {args.cells}: not read by --{option} ({why})")
    if getattr(args, "sporadic_ms", None) is not None and (
            getattr(args, "regimes", None) is None or "sporadic" not in _regimes_of(args)):
        raise ValueError(f"--sporadic-ms {args.sporadic_ms:g}: read by --regimes with sporadic "
                         f"only")
    main_only = [name for name, on in (("--memory", getattr(args, "memory", False)),
                                       ("--deterministic", getattr(args, "deterministic", False)),
                                       ("--no-stacked", getattr(args, "no_stacked", False)))
                 if on]
    if selected and main_only:
        raise ValueError(f"{', '.join(main_only)}: measured by the main CPU table only, not with "
                         f"{selected[0]}")
    if getattr(args, "memory", False) and "train" not in args.modes.split(","):
        raise ValueError(f"--memory: measures a training step's peak, and --modes {args.modes} "
                         f"has no train")


def run(args) -> int:
    from .cli_commands import check_output_path
    check_output_path("json", getattr(args, "json", None))  # before the timing, not after it
    _check_one_benchmark(args)
    cores = usable_cores()
    if getattr(args, "threads", 1) > cores:
        print(f"fusedrnn: warning: --threads {args.threads} is more than the {cores} cores this "
              f"process may run on: the threads take turns on them, and the timings say little",
              file=sys.stderr)
    if getattr(args, "explain", False):  # (the CPU's plans: --device cuda refused above)
        cells, modes, shapes = selection(args)
        print(cpu_header(args.threads))
        rows = explain(cells, shapes, modes, args.threads, getattr(args, "precision", "fp32"))
        _print_plans(rows)
        write_json(args.json, threads=args.threads, plans=rows)
        return 0
    if getattr(args, "regimes", None) is not None:  # ('' too: refused by name there)
        from .benchmark_regimes import run as run_regimes
        return run_regimes(args)
    if getattr(args, "variants", None) is not None:
        from .benchmark_variants import run as run_variants
        return run_variants(args)
    if getattr(args, "attention", None) is not None:
        from .benchmark_attention import run as run_attention
        return run_attention(args)
    if getattr(args, "framework", "numpy") == "torch":  # (its --precision bf16: autocast)
        from .benchmark_torch import run as run_torch
        return run_torch(args)
    if getattr(args, "precision", "fp32") == "bf16":
        from .benchmark_bf16 import run as run_bf16
        return run_bf16(args)
    if getattr(args, "framework", "numpy") == "onnx":
        from .benchmark_onnx import run as run_onnx
        return run_onnx(args)
    if getattr(args, "device", "cpu") == "cuda":
        from .benchmark_gpu import run as run_gpu
        return run_gpu(args)
    import fusedrnn as fr
    fr.set_num_threads(args.threads)
    cells, modes, shapes = selection(args)
    budget = budget_of(args)
    have = installed_peers()
    peak = sgemm_gflops()
    print(cpu_header(args.threads))
    print(f"fusedrnn {fr.__version__}; threads {args.threads}; peers: "
          f"{', '.join(k for k, v in have.items() if v) or 'none'} + NumPy reference; "
          f"measured sgemm {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for cell in cells:
        for (B, T, I, H) in shapes:
            for mode in modes:
                r = bench_row(cell, mode, B, T, I, H, args.threads, budget, have,
                              deterministic=getattr(args, "deterministic", False))
                rows.append(r)
                print(f"  {cell} {mode} B={B} T={T} I={I} H={H}: ours {r['ours_ms']} ms, "
                      f"torch {r['torch_ms']}, ort {r['ort_ms']}", flush=True)
    # the stacked rows belong to the default run (--cells or --shapes narrow it to theirs)
    default_run = len(cells) == len(CELLS) and args.shapes is None
    if not args.no_stacked and not args.quick and default_run:
        for (cell, B, T, I, H, layers) in STACKED:
            for mode in modes:
                rows.append(bench_stacked(cell, B, T, I, H, layers, mode, args.threads, budget, have))
    # Memory last: right after a measuring subprocess, this VM ran batch-1 rows (two threads
    # that meet every step) up to 40x slower for seconds (RNN B=1: 0.1 ms -> 3.6 ms).
    for r in rows if args.memory else []:
        if r["mode"] == "train" and r["cell"] in CELLS:  # the single-layer rows
            cell, B, T, I, H = r["cell"], r["B"], r["T"], r["I"], r["H"]
            r["ours_peak_mb"] = training_peak_mb("ours", cell, B, T, I, H, args.threads)
            r["torch_peak_mb"] = (training_peak_mb("torch", cell, B, T, I, H, args.threads)
                                  if have["torch"] else None)
    print_table(rows, peak)
    if args.memory:
        print("\npeak memory of one training step (MB): " + "; ".join(
            f"{r['cell']} B={r['B']} T={r['T']} H={r['H']}: ours {r.get('ours_peak_mb')} "
            f"torch {r.get('torch_peak_mb')}" for r in rows if "ours_peak_mb" in r))
    write_json(args.json, sgemm_gflops=peak, rows=rows)
    return report_disagreement(rows, describe_row)
