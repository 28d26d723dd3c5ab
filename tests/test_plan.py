"""The CPU drivers' plans and the CPU table (csrc/cpu/plan.h): what `fusedrnn info` and
`fusedrnn bench --explain` print, the table's rows, and the results of every row's strategies
held to the reference (a row chosen for one vendor runs its strategies on any machine)."""
import json
import os
import subprocess
import sys

import fusedrnn as fr
import numpy as np
import pytest
from fusedrnn import _C, cli
from fusedrnn import functional as F
from fusedrnn import reference as R

F32 = np.dtype(np.float32)


def test_cpu_info_and_table_in_info():
    d = fr.info()
    c = _C.cpu_info()
    assert c["vendor"] in ("intel", "amd", "other") and c["model"]
    assert c["model"] in d["cpu"] and c["vendor"] in d["cpu"]
    table = d["cpu_table"]
    assert table["row"] in ("intel", "amd", "other")
    assert table["core_cache_bytes"] >= 256 << 10
    assert table["projection_chunk_bytes"] * 2 == table["core_cache_bytes"]
    assert table["spin_before_sleep_us"] > 0


def _table_in_subprocess(row):
    env = dict(os.environ, FUSEDRNN_CPU_TABLE=row)
    code = "import json, fusedrnn._C as C; print(json.dumps([C.tuning(), C.cpu_info()]))"
    out = subprocess.run([sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_table_rows_scale_with_the_l2():
    intel, info = _table_in_subprocess("intel")
    amd, _ = _table_in_subprocess("amd")
    assert intel["row"] == "intel" and amd["row"] == "amd"
    l2 = info["l2_bytes"] or (2 << 20)

    def clamp(n):
        return min(max(n, 256 << 10), 4 << 20)
    # The Xeon measured best with W_hh in half its L2, the EPYC with all of it.
    assert intel["core_cache_bytes"] == clamp(l2 // 2)
    assert amd["core_cache_bytes"] == clamp(l2)


@pytest.mark.parametrize("threads", [1, 2])
def test_plans_follow_the_shape(threads):
    def plan(cell, T, N, I, H, training=False):
        return _C.plan(cell, "tanh", T, N, I, H, F32, training, threads)

    decoder = plan("lstm", 1, 1, 256, 256, training=True)  # one step of one sample
    assert decoder["forward"]["step_product"] == "row kernels"
    assert decoder["backward"]["step_product"] == "row kernels"
    blas_batch = _C.tuning()["blas_batch"]  # (128 with AVX-512 row kernels, else 16)
    assert plan("lstm", 2, blas_batch, 64, 64)["forward"]["step_product"] == "BLAS GEMM per step"
    assert plan("lstm", 2, blas_batch - 1, 64, 64)["forward"]["step_product"] == "row kernels"
    batch1 = plan("lstm", 100, 1, 128, 128)["forward"]
    assert batch1["loop_threads"] == 1 and batch1["step_product"] == "packed W_hh"
    assert batch1["loop"] == ("pipelined" if threads > 1 else "by units")
    batch = plan("lstm", 100, 32, 64, 64, training=True)
    if threads > 1:  # W_hh (64 KiB) fits any core: each thread runs its samples alone
        assert batch["forward"]["loop"] == batch["backward"]["loop"] == "by samples"
        assert batch["backward"]["dx"] == "in the loop's products"
        # A GRU's n gate keeps W_in x apart: dx cannot join the loop's products
        gru = plan("gru", 100, 32, 64, 64, training=True)["backward"]
        assert gru["loop"] == "by samples" and gru["dx"] == "per slice, chunks of steps"
    else:
        assert batch["forward"]["loop"] == "by units" and batch["forward"]["loop_threads"] == 1
    assert "backward" not in plan("gru", 10, 4, 8, 8)
    # A by-units loop of big steps gives each thread two slices of the units (a worker whose
    # core is taken holds back half its share); small steps one. (A 16 MiB W_hh: by units on
    # every row.)
    big = plan("lstm", 256, 8, 1024, 1024, training=True)
    small = plan("gru", 256, 1, 512, 512, training=True)
    for way in ("forward", "backward"):
        assert big[way]["loop"] == small[way]["loop"] == "by units"
        assert big[way]["loop_threads"] == small[way]["loop_threads"] == threads
        assert big[way]["loop_slices"] == (2 * threads if threads > 1 else 1)
        assert small[way]["loop_slices"] == threads
    # A short inference call multiplies unpacked rows, unless its weights serve more calls (a
    # WeightCache passed: a layer in eval mode); below packed_min_steps never. (Fewer rows
    # than blas_batch, 16 with AVX2 kernels: from there the products are BLAS GEMMs.)
    for cell, T, N in [("lstm", 10, 1), ("gru", 6, 2), ("lstm", 4, 3)]:
        assert plan(cell, T, N, 40, 256)["forward"]["step_product"] == "row kernels"
        kept = _C.plan(cell, "tanh", T, N, 40, 256, F32, False, threads, cache=True)
        assert kept["forward"]["step_product"] == "packed W_hh"
    kept = _C.plan("lstm", "tanh", 3, 1, 40, 256, F32, False, threads, cache=True)
    assert kept["forward"]["step_product"] == "row kernels"
    # A decoder's step split by units: each slice projects its own units' inputs in the step
    # too (on one thread the inputs are projected up front). (Fewer samples than blas_batch.)
    for cell, N, H in [("rnn", 8, 256), ("gru", 8, 128), ("lstm", 4, 128)]:
        step = plan(cell, 1, N, 128, H)["forward"]
        assert step["loop_threads"] == threads and step["step_product"] == "row kernels"
        assert step["projection"] == ("per slice, chunks of steps" if threads > 1
                                      else "up front")
    # ... where its step has short_call_min_gate_rows gate rows (G*H): an RNN's H=128 step
    # runs on one thread, forward and backward, in a short call only
    rows = _C.tuning()["short_call_min_gate_rows"]
    assert 128 < rows <= 256
    rnn = plan("rnn", 1, 16, 128, 128, training=True)
    assert rnn["forward"]["loop_threads"] == rnn["backward"]["loop_threads"] == 1
    assert rnn["forward"]["projection"] == "up front"
    sequence = plan("rnn", 100, 16, 128, 128, training=True)
    assert sequence["forward"]["loop_threads"] == sequence["backward"]["loop_threads"] == threads


def test_bench_explain_prints_and_writes_plans(tmp_path, capsys):
    path = tmp_path / "plans.json"
    code = cli.main(["bench", "--explain", "--cells", "LSTM,GRU", "--shapes", "1,100,128,128;32,50,64,64",
                     "--threads", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("CPU ") and "CPU table: row=" in out
    assert out.count("forward:") == 8 and out.count("backward:") == 4
    rows = json.loads(path.read_text())["plans"]
    assert len(rows) == 8
    first = rows[0]
    assert (first["cell"], first["mode"], first["B"], first["T"]) == ("LSTM", "infer", 1, 100)
    assert first["forward"] == _C.plan("lstm", "tanh", 100, 1, 128, 128, F32, False, 2)["forward"]


def test_info_cli_prints_the_cpu_table(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpu:" in out and "core_cache_bytes =" in out


# Shapes whose strategy depends on the row (an LSTM W_hh of 1 MiB is "in cache" for the EPYC's
# row, not for the Xeon's) and on the thread count: every row's result matches the reference.
CHECK = r"""
import json, numpy as np, fusedrnn as fr, fusedrnn._C as C
from fusedrnn import functional as F, reference as R
fr.set_num_threads(2)
worst, plans = 0.0, {}
for cell, T, N, I, H in [("lstm", 6, 8, 32, 256), ("lstm", 6, 8, 32, 176), ("gru", 6, 8, 32, 176),
                         ("gru", 6, 16, 32, 128), ("rnn", 6, 8, 32, 256), ("lstm", 9, 1, 16, 64)]:
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, I))
    h0 = rng.standard_normal((N, H)) * .1
    c0 = rng.standard_normal((N, H)) * .1
    w = [rng.standard_normal(s) * .1 for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    lengths = np.arange(N) % (T + 1)
    states = (h0, c0) if cell == "lstm" else (h0,)
    y, h, *_, ctx = getattr(F, cell + "_forward")(x, *states, *w, lengths=lengths, training=True)
    ry, rh, *_, rctx = getattr(R, cell + "_forward")(x, *states, *w, lengths=lengths,
                                                      training=True)
    dy = rng.standard_normal(y.shape)
    got = getattr(F, cell + "_backward")(ctx, dy)
    want = getattr(R, cell + "_backward")(rctx, dy)
    for a, b in zip((y, h, *got), (ry, rh, *want)):
        if a is not None and b is not None:
            worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
    plan = C.plan(cell, "tanh", T, N, I, H, np.dtype(np.float64), True, 2)["forward"]
    plans[f"{cell} N={N} H={H}"] = [plan["loop"], plan["projection"], plan["loop_slices"]]
print(json.dumps({"worst": worst, "plans": plans}))
"""


@pytest.mark.parametrize("cell, H, N", [("rnn", 4, 64), ("gru", 4, 32), ("lstm", 1, 64),
                                         ("lstm", 8, 256)])
def test_narrow_layers_of_wide_inputs_project_up_front_and_match_the_reference(cell, H, N):
    """With AVX-512's 64-row tiles an RNN of H=4 padded its 4 gate rows to 64 in the loop's own
    projection of x's 513 columns: 3.0 ms where torch.nn takes 0.6. Such calls now project up
    front (one BLAS product of G*H columns), by units or by samples (the LSTM of H=8)."""
    G, T, I = {"lstm": 4, "gru": 3, "rnn": 1}[cell], 20, 513
    if fr.info()["kernels"].startswith("avx512"):
        for training in (False, True):
            plan = _C.plan(cell, "tanh", T, N, I, H, F32, training, 2)["forward"]
            assert plan["projection"] == "up front", plan
    rng = np.random.default_rng(0)
    x, h0, c0 = (rng.standard_normal(s) for s in ((T, N, I), (N, H), (N, H)))
    w = [rng.standard_normal(s) * .1 for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    lengths = rng.integers(0, T + 1, N)
    states = (h0, c0) if cell == "lstm" else (h0,)
    forward, backward = getattr(F, cell + "_forward"), getattr(F, cell + "_backward")
    want = getattr(R, cell + "_forward")(x, *states, *w, lengths=lengths, training=True)
    got = forward(*(a.astype(np.float32) for a in (x, *states, *w)), lengths=lengths,
                  training=True)
    dy = rng.standard_normal(want[0].shape)
    grads = backward(got[-1], dy.astype(np.float32))
    expected = getattr(R, cell + "_backward")(want[-1], dy)
    for a, b in zip((*got[:-1], *grads), (*want[:-1], *expected)):
        if a is not None and b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(b).max()))


def _plan_with_tuning(tuning, cell, T, N, I, H, training, threads=2, precision="float32"):
    # A float32 call's plans on 2 threads in a process whose table has FUSEDRNN_TUNING set
    # (the table is read once per process).
    env = dict(os.environ, FUSEDRNN_TUNING=tuning)
    code = ("import json, numpy as np, fusedrnn._C as C; print(json.dumps(C.plan("
            f"'{cell}', 'tanh', {T}, {N}, {I}, {H}, np.dtype(np.float32), {training}, "
            f"{threads}, '{precision}')))")
    return json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                     text=True, check=True).stdout)


def test_inputs_join_the_steps_products_by_the_table():
    # AVX-512 tiles outrun OpenBLAS's GEMM up front inside the steps' products for every cell;
    # AVX2 tiles only for an LSTM whose W_ih is at most 6 cores' caches (csrc/cpu/plan.cpp,
    # tuning_for). Loops by units (stream_min_samples=0: W_hh past any row's cache is not
    # streamed by samples).
    def plan(cell, tuning="", I=512, H=512):
        tuning = ",".join(filter(None, ("stream_min_samples=0", tuning)))
        return _plan_with_tuning(tuning, cell, 256, 8, I, H, training=False)["forward"]
    avx512 = fr.info()["kernels"].startswith("avx512")
    table = _C.tuning()
    assert table["step_inputs_min_batch"] == 8
    assert table["step_inputs_min_gates"] == (1 if avx512 else 4)
    assert table["step_inputs_max_weight_bytes"] == (0 if avx512 else 6 * table["core_cache_bytes"])
    in_steps, per_slice, up_front = ("in the steps' products", "per slice, chunks of steps",
                                     "up front")
    for cell, I, H in (("lstm", 128, 384), ("lstm", 512, 512), ("gru", 256, 512),
                       ("rnn", 1024, 1024)):
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        most = table["step_inputs_max_weight_bytes"]
        joins = G >= table["step_inputs_min_gates"] and (most == 0 or G * H * I * 4 <= most)
        forward = plan(cell, I=I, H=H)
        assert forward["loop"] == "by units", (cell, I, H)
        assert forward["projection"] == (up_front if not joins else per_slice if cell == "gru"
                                         else in_steps), (cell, I, H)
    # with AVX2 kernels: the LSTM's small W_ih joins, its 4 MiB one does not
    assert avx512 or plan("lstm", I=128, H=384)["projection"] == in_steps
    assert plan("lstm", "step_inputs_max_weight_bytes=0")["projection"] == in_steps
    assert plan("lstm", "step_inputs_min_batch=0")["projection"] == up_front
    assert plan("lstm", "step_inputs_min_batch=16")["projection"] == up_front  # B=8
    assert plan("gru", "step_inputs_min_gates=1,step_inputs_max_weight_bytes=0",
                I=256)["projection"] == per_slice
    assert plan("lstm", "step_inputs_min_gates=5", I=128, H=384)["projection"] == up_front


def test_slices_stream_w_hh_by_the_table():
    # By samples where W_hh fits a core's cache, or (AVX2 tiles; AVX-512 tiles on AMD) where
    # every slice gets stream_min_samples and W_hh has at most stream_max_weight_bytes
    # (csrc/cpu/plan.cpp).
    def plan(cell, N, H, tuning=""):
        return _plan_with_tuning(tuning, cell, 100, N, H, H, training=True)
    avx512 = fr.info()["kernels"].startswith("avx512")
    table = _C.tuning()
    streaming = not avx512 or table["row"] == "amd"
    assert table["stream_min_samples"] == (0 if not streaming else 4 if avx512 else 12)
    assert table["stream_max_weight_bytes"] == (4 * table["core_cache_bytes"] if streaming else 0)
    for cell, N, H in (("lstm", 32, 256), ("lstm", 16, 256), ("lstm", 64, 512), ("gru", 64, 512),
                       ("rnn", 24, 512), ("lstm", 8, 128)):
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        weight, each = G * H * H * 4, N // 2
        streams = (table["stream_min_samples"] > 0 and each >= table["stream_min_samples"] and
                   weight <= table["stream_max_weight_bytes"])
        want = ("by samples" if each >= table["min_samples_per_slice"] and
                (weight <= table["core_cache_bytes"] or streams) else "by units")
        got = _C.plan(cell, "tanh", 100, N, H, H, F32, True, 2)
        assert got["forward"]["loop"] == got["backward"]["loop"] == want, (cell, N, H)
    # forced either way: a 4 MiB W_hh streamed; none streamed (where it is past the cache)
    forced = plan("lstm", 64, 512, "stream_min_samples=12,stream_max_weight_bytes=8388608")
    assert forced["forward"]["loop"] == forced["backward"]["loop"] == "by samples"
    if 4 * 256 * 256 * 4 > table["core_cache_bytes"]:
        assert plan("lstm", 32, 256, "stream_min_samples=0")["forward"]["loop"] == "by units"


def test_by_samples_loops_take_slices_a_thread_by_the_table():
    # up to sample_slices_per_thread a thread (AMD's row 4, 2 for bfloat16 products: a worker
    # whose core another library's pool takes holds back one slice, not half the batch), as
    # many as keep min_samples_per_slice (4) each
    avx512 = fr.info()["kernels"].startswith("avx512")
    amd = _C.tuning()["row"] == "amd"
    assert _C.tuning()["sample_slices_per_thread"] == (4 if amd and avx512 else 1)
    assert _C.tuning()["bf16_sample_slices_per_thread"] == (2 if amd and avx512 else 1)
    for tuning, N, slices in (("sample_slices_per_thread=2", 32, 4),
                              ("sample_slices_per_thread=2", 8, 2),
                              ("sample_slices_per_thread=1", 32, 2),
                              ("sample_slices_per_thread=4", 32, 8),
                              ("sample_slices_per_thread=4", 24, 6),  # (fewer: 4 samples each)
                              ("sample_slices_per_thread=4", 16, 4),
                              ("sample_slices_per_thread=4", 12, 2)):
        for cell in ("lstm", "gru"):
            plan = _plan_with_tuning(tuning, cell, 100, N, 64, 64, training=True)
            for way in ("forward", "backward"):
                assert plan[way]["loop"] == "by samples", (tuning, N, way)
                assert plan[way]["loop_slices"] == slices, (tuning, N, way)
    plan = _plan_with_tuning("sample_slices_per_thread=4,bf16_sample_slices_per_thread=2",
                             "lstm", 100, 64, 64, 64, training=True, precision="bfloat16")
    for way in ("forward", "backward"):
        assert (plan[way]["loop"], plan[way]["loop_slices"]) == ("by samples", 4), way


def test_a_phase_takes_fewer_than_65536_slices_whatever_the_table_asks():
    # (ThreadTeam packs a thread's range in 16 bits): 2048 threads of 64 sample slices each
    # would be 131072 slices, so each takes 65535 // 2048 = 31 (by units: the same cap)
    plan = _plan_with_tuning("sample_slices_per_thread=64", "gru", 4, 2 ** 22, 8, 8, False,
                             threads=2048)["forward"]
    assert plan["loop"] == "by samples" and plan["loop_slices"] == 2048 * 31, plan


# Each CPU table row and forced entry, float64 training on 2 threads (W_hh of the LSTM at H=176
# 1 MiB, in a core's cache on AMD's row, not on Intel's), held to the reference, with the plan
# it exists for (on either ISA; CI runs the suite with AVX2 kernels too): AMD's row streams
# the LSTM by samples where Intel's runs it by units with the inputs in the steps' products;
# the inputs forced into the steps for every cell (AVX2's default: the LSTM's alone) give the
# GRU its own inputs per slice; every slice streaming W_hh; two sample slices a thread.
@pytest.mark.parametrize("row, tuning, shape, loop, projection, slices", [
    ("intel", "", "lstm N=8 H=176", "by units", "in the steps' products", 2),
    ("amd", "", "lstm N=8 H=176", "by samples", "per slice", 2),
    ("intel", "step_inputs_min_gates=1,step_inputs_max_weight_bytes=0", "gru N=8 H=176",
     "by units", "per slice", 2),
    ("intel", "stream_min_samples=4,stream_max_weight_bytes=100000000", "lstm N=8 H=256",
     "by samples", "per slice", 2),
    ("intel", "sample_slices_per_thread=2", "gru N=16 H=128", "by samples", "per slice", 4)])
def test_every_table_row_matches_the_reference(row, tuning, shape, loop, projection, slices):
    env = dict(os.environ, FUSEDRNN_CPU_TABLE=row, FUSEDRNN_TUNING=tuning)
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["worst"] < 1e-10
    got_loop, got_projection, got_slices = result["plans"][shape]
    assert (got_loop, got_slices) == (loop, slices) and got_projection.startswith(projection), \
        (row, tuning, result["plans"])



def test_bench_deterministic_times_both_modes(tmp_path, capsys):
    path = tmp_path / "det.json"
    code = cli.main(["bench", "--deterministic", "--cells", "GRU", "--shapes", "8,12,16,32",
                     "--budget", "0.02", "--no-stacked", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "det cost" in out
    for row in json.loads(path.read_text())["rows"]:
        assert row["ours_det_ms"] > 0 and row["det_cost"] > 0
        assert row["maxdiff_ours_det"] < 1e-5  # the same math, another order
    assert fr.get_deterministic() is False  # the bench leaves the flag as it found it


def test_tuning_overrides_set_entries_and_name_what_they_ignore():
    env = dict(os.environ, FUSEDRNN_TUNING="step_inputs_min_batch=3,inference_pack_rows=2.5,"
               "bogus=1,blas_batch=x,linger_us=-4")
    code = "import json, fusedrnn._C as C; print(json.dumps(C.tuning()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    table = json.loads(done.stdout)
    default, _ = _table_in_subprocess(table["row"])
    assert table["step_inputs_min_batch"] == 3 and table["inference_pack_rows"] == 2.5
    assert table["blas_batch"] == default["blas_batch"]
    assert table["linger_us"] == default["linger_us"]
    for item in ("'bogus=1'", "'blas_batch=x'", "'linger_us=-4'"):
        assert item in done.stderr
