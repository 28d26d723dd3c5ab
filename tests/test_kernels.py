"""The C++ kernels (fusedrnn.functional) against the NumPy float64 references: forward outputs and
every gradient, on odd sizes (T=1, N=1, I=1, H=97 ...), variable lengths mixing 0, 1 and T, both
directions, with and without bias, float64 and float32. Then determinism (bitwise repeats),
thread-count independence, and NaN containment (one sample's NaN never reaches another's outputs).

A float32 kernel is compared with the float64 reference run on the same float32 inputs cast to
float64, so the tolerance measures the kernel's rounding only."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import (CELLS, DTYPES, TOLERANCES, cell_backward, cell_forward, make_problem,
                      reference, relative_error)

fusedrnn = pytest.importorskip("fusedrnn", reason="the extension fusedrnn._C is not built")
functional = fusedrnn.functional

# name -> (T, N, I, H)
SHAPES = {"T1_N1_I1_H97": (1, 1, 1, 97), "T5_N4_I3_H97": (5, 4, 3, 97),
          "T7_N5_I13_H1": (7, 5, 13, 1), "T6_N1_I5_H17": (6, 1, 5, 17),
          # the step products' paths: packed weights (T >= 4) in tiles of 6, 4, 2 and 1 samples;
          # BLAS per slice (T < 4, N >= 16); row blocks (T < 4, N < 16)
          "T4_N9_I6_H35": (4, 9, 6, 35), "T5_N23_I3_H40": (5, 23, 3, 40),
          "T3_N37_I4_H33": (3, 37, 4, 33), "T2_N7_I5_H21": (2, 7, 5, 21),
          # H > 128: the packed products' blocks of k
          "T4_N11_I3_H131": (4, 11, 3, 131)}


def run(module, cell, nonlinearity, p, reverse, cast=None):
    """Forward (training) then backward through ``module``; returns a dict of every output and
    gradient. ``cast`` converts the inputs first (the float64 reference on float32 inputs)."""
    c = (lambda a: a) if cast is None else (lambda a: None if a is None else a.astype(cast))
    y, h_n, c_n, ctx = cell_forward(module, cell, nonlinearity, c(p["x"]), c(p["h0"]),
                                    c(p["c0"]), c(p["w_ih"]), c(p["w_hh"]), c(p["b_ih"]),
                                    c(p["b_hh"]), lengths=p["lengths"], reverse=reverse)
    grads = cell_backward(module, cell, ctx, c(p["dy"]), c(p["dh_n"]),
                          c(p["dc_n"]) if cell == "lstm" else None)
    return dict(grads, y=y, h_n=h_n, c_n=c_n)


def assert_close_to_reference(p, cell, nonlinearity, reverse, dtype):
    ours = run(functional, cell, nonlinearity, p, reverse)
    oracle = run(reference, cell, nonlinearity, p, reverse, cast=np.float64)
    for name, value in ours.items():
        assert (value is None) == (oracle[name] is None), name
        if value is not None:
            assert value.dtype == dtype, (name, value.dtype)
            assert value.shape == oracle[name].shape, (name, value.shape, oracle[name].shape)
    errors = {name: relative_error(ours[name], oracle[name]) for name in ours}
    assert max(errors.values()) <= TOLERANCES["kernel_vs_reference"][dtype], errors
    return ours


# ---------------------------------------------------------------------------- kernels vs references
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, "mixed"], ids=["full", "lengths"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_kernel_matches_reference(name, shape_name, lengths, reverse, bias, dtype_name, rng):
    cell, nonlinearity = CELLS[name]
    dtype = DTYPES[dtype_name]
    p = make_problem(rng, cell, SHAPES[shape_name], dtype, bias=bias, lengths=lengths)
    ours = assert_close_to_reference(p, cell, nonlinearity, reverse, dtype)
    # inference mode computes the same outputs and keeps no context
    y, h_n, c_n, ctx = cell_forward(functional, cell, nonlinearity, p["x"], p["h0"], p["c0"],
                                    p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                    lengths=p["lengths"], reverse=reverse, training=False)
    assert ctx is None
    tolerance = TOLERANCES["kernel_vs_reference"][dtype]
    assert relative_error(y, ours["y"]) <= tolerance
    assert relative_error(h_n, ours["h_n"]) <= tolerance
    assert relative_error(c_n, ours["c_n"]) <= tolerance


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(CELLS))
def test_kernel_all_lengths_zero(name, reverse, dtype_name, rng):
    """Every sample of length 0: y is zero, the final state is the initial one, and the state
    gradients pass straight through."""
    cell, nonlinearity = CELLS[name]
    dtype = DTYPES[dtype_name]
    p = make_problem(rng, cell, (3, 2, 4, 5), dtype, lengths=np.zeros(2, dtype=np.int64))
    ours = assert_close_to_reference(p, cell, nonlinearity, reverse, dtype)
    assert not np.any(ours["y"]) and np.array_equal(ours["h_n"], p["h0"])
    assert np.array_equal(ours["dh0"], p["dh_n"])
    assert not np.any(ours["dx"]) and not np.any(ours["dw_ih"]) and not np.any(ours["dw_hh"])
    if cell == "lstm":
        assert np.array_equal(ours["c_n"], p["c0"]) and np.array_equal(ours["dc0"], p["dc_n"])


@pytest.mark.parametrize("name", list(CELLS))
def test_training_context_keeps_its_own_lengths(name, rng):
    """The caller's lengths array, reused (changed in place) between the forward and the
    backward, does not change the backward: the context holds a copy."""
    cell, nonlinearity = CELLS[name]
    p = make_problem(rng, cell, (6, 4, 3, 5), np.float64,
                     lengths=np.array([6, 2, 0, 4], dtype=np.int64))
    args = (p["x"], p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    *_, ctx = cell_forward(functional, cell, nonlinearity, *args, lengths=p["lengths"])
    *_, same = cell_forward(functional, cell, nonlinearity, *args, lengths=p["lengths"].copy())
    p["lengths"][:] = [1, 6, 3, 0]  # the caller's next batch
    got = cell_backward(functional, cell, ctx, p["dy"], p["dh_n"], p["dc_n"])
    want = cell_backward(functional, cell, same, p["dy"], p["dh_n"], p["dc_n"])
    for k in got:
        if want[k] is not None:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("name", list(CELLS))
def test_kernel_defaults_none_mean_zeros(name, rng):
    """h0/c0 None and dy/dh_n/dc_n None mean zeros, as in the reference."""
    cell, nonlinearity = CELLS[name]
    p = make_problem(rng, cell, (4, 3, 2, 7), np.float64)
    p["h0"] = p["c0"] = p["dh_n"] = p["dc_n"] = None
    assert_close_to_reference(p, cell, nonlinearity, False, np.float64)
    p["dy"] = None
    ours = assert_close_to_reference(p, cell, nonlinearity, True, np.float64)
    assert not np.any(ours["dx"]) and not np.any(ours["dw_hh"])


# ---------------------------------------------------------------------------- determinism and threads
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_repeated_call_is_bitwise_identical(name, dtype_name, rng):
    cell, nonlinearity = CELLS[name]
    p = make_problem(rng, cell, (5, 6, 9, 97), DTYPES[dtype_name])
    for reverse in (False, True):
        first = run(functional, cell, nonlinearity, p, reverse)
        second = run(functional, cell, nonlinearity, p, reverse)
        for key, value in first.items():
            assert (value is None and second[key] is None) or np.array_equal(value, second[key]), key


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_one_thread_and_two_threads_agree(name, dtype_name, rng, restore_threads):
    cell, nonlinearity = CELLS[name]
    dtype = DTYPES[dtype_name]
    p = make_problem(rng, cell, (5, 8, 13, 97), dtype)
    results = {}
    for threads in (1, 2):
        fusedrnn.set_num_threads(threads)
        assert fusedrnn.get_num_threads() == threads
        results[threads] = run(functional, cell, nonlinearity, p, reverse=True)
    errors = {key: relative_error(results[1][key], results[2][key]) for key in results[1]}
    assert max(errors.values()) <= TOLERANCES["threads"][dtype], errors


# How two threads split a time loop (csrc/cpu/recurrent_impl.inc): by samples when each thread
# gets 4 or more and W_hh fits a core's cache (each thread projects its own inputs, a chunk of
# steps at a time; LSTM and RNN backward take dx into the step's product when W_ih fits too,
# else backward computes dx a chunk of steps at a time);
# else by hidden units (a barrier per step; with AVX-512 kernels, from a batch of 8, LSTM and
# RNN take x W_ih^T into the steps' products: tests/test_plan.py forces it on any CPU), where a
# loop too small to split runs on one thread while the other computes the input projection
# ahead of it.
SPLIT_SHAPES = {"by_samples_T8_N9_I7_H128": (8, 9, 7, 128),
                # several projection chunks, the last one short
                "by_samples_chunks_T300_N9_I7_H128": (300, 9, 7, 128),
                # [W_hh | W_ih] too big for the cache: dx as its own GEMM
                "by_samples_big_input_T8_N8_I2100_H128": (8, 8, 2100, 128),
                "by_units_T5_N5_I7_H208": (5, 5, 7, 208),
                # one thread runs the loop, the other projects the inputs ahead of it
                "pipelined_T64_N1_I128_H128": (64, 1, 128, 128),
                "by_units_big_weights_T4_N10_I3_H520": (4, 10, 3, 520),
                # by units; with AVX-512 kernels, from a batch of 8, LSTM and RNN take
                # x W_ih^T into the steps' products, a chunk of steps at a time (the LSTM
                # here 7, then 2)
                "by_units_step_inputs_T9_N33_I130_H520": (9, 33, 130, 520),
                # by units with a slice that owns no units (LSTM: H=16 is one block of 16)
                "by_units_empty_slice_T5_N100_I40_H16": (5, 100, 40, 16)}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape_name", list(SPLIT_SHAPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_two_threads_match_reference_in_every_split(name, shape_name, reverse, dtype_name, rng,
                                                    restore_threads):
    cell, nonlinearity = CELLS[name]
    fusedrnn.set_num_threads(2)
    p = make_problem(rng, cell, SPLIT_SHAPES[shape_name], DTYPES[dtype_name])
    assert_close_to_reference(p, cell, nonlinearity, reverse, DTYPES[dtype_name])


# The two directions of a bidirectional layer (nn's layers call functional._forward_many and
# _backward_many) run side by side, one thread each, where W_hh fits a core's cache and the
# batch is too small to split by samples; each call then runs exactly as on one thread alone.
# Small enough for the smallest core cache we meet (512 KiB L2, Zen 1: a float64 LSTM stack
# layer streams W_ih + W_hh = 256 KiB).
SIDE_BY_SIDE_SHAPE = (100, 2, 32, 64)  # T, N, I, H


def run_many(cell, nonlinearity, problems, reverses):
    """Forward then backward of independent calls through functional's _forward_many and
    _backward_many; one dict per call, like run()."""
    calls = [dict(x=p["x"], h0=p["h0"], c0=p["c0"] if cell == "lstm" else None, w_ih=p["w_ih"],
                  w_hh=p["w_hh"], b_ih=p["b_ih"], b_hh=p["b_hh"], lengths=p["lengths"],
                  reverse=r, training=True) for p, r in zip(problems, reverses)]
    outs = functional._forward_many(cell, calls, nonlinearity)
    grads = functional._backward_many(cell, [
        (ctx, p["dy"], p["dh_n"], p["dc_n"] if cell == "lstm" else None)
        for (_, _, _, ctx), p in zip(outs, problems)])
    return [dict(zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"), g), y=y, h_n=h_n,
                 c_n=c_n if cell == "lstm" else None)
            for (y, h_n, c_n, _), g in zip(outs, grads)]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_directions_side_by_side_match_one_thread_calls(name, dtype_name, rng, restore_threads):
    cell, nonlinearity = CELLS[name]
    dtype = DTYPES[dtype_name]
    problems = [make_problem(rng, cell, SIDE_BY_SIDE_SHAPE, dtype) for _ in range(2)]
    fusedrnn.set_num_threads(2)
    assert fusedrnn._C.runs_side_by_side(cell, nonlinearity, [SIDE_BY_SIDE_SHAPE] * 2, np.dtype(dtype))
    both = run_many(cell, nonlinearity, problems, (False, True))
    fusedrnn.set_num_threads(1)
    for p, reverse, ours in zip(problems, (False, True), both):
        alone = run(functional, cell, nonlinearity, p, reverse)
        for key, value in alone.items():
            assert (value is None and ours[key] is None) or np.array_equal(value, ours[key]), key
    assert_close_to_reference(problems[1], cell, nonlinearity, True, dtype)


def test_side_by_side_only_where_it_pays(restore_threads):
    T, N, I, H = SIDE_BY_SIDE_SHAPE
    fusedrnn.set_num_threads(2)
    f32 = np.dtype(np.float32)

    def pays(shape, count=2, cell="lstm", stack=False):
        return fusedrnn._C.runs_side_by_side(cell, "tanh", [shape] * count, f32, stack)

    assert pays((T, N, I, H))
    assert not pays((T, 16, I, H))  # split by samples
    assert not pays((T, N, I, 512))  # W_hh over 1 MiB
    assert not pays((2, N, I, H))  # too little work
    assert not pays((T, N, I, H), count=3)  # a call per thread
    # a stack: a layer behind another streams W_ih too; a GRU cannot take x step by step
    assert pays((T, N, H, H), stack=True) and pays((T, N, H, H), cell="rnn", stack=True)
    assert not pays((T, N, 256, 256), stack=True)  # W_ih + W_hh: 2 MiB
    assert not pays((T, N, H, H), cell="gru", stack=True)
    fusedrnn.set_num_threads(1)
    assert not pays((T, N, I, H))


# A unidirectional stack (nn's layers call functional._forward_stack): where it pays, each
# layer runs on a thread of its own a few steps behind the layer below, taking x into its
# steps' products a chunk of steps at a time as the layer below writes them (a wavefront).
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_stack_matches_reference_layer_by_layer(name, dtype_name, rng, restore_threads):
    cell, nonlinearity = CELLS[name]
    dtype = DTYPES[dtype_name]
    T, N, I, H = SIDE_BY_SIDE_SHAPE
    first = make_problem(rng, cell, (T, N, I, H), dtype)
    second = make_problem(rng, cell, (T, N, H, H), dtype)
    fusedrnn.set_num_threads(2)
    assert fusedrnn._C.runs_side_by_side(cell, nonlinearity, [(T, N, I, H), (T, N, H, H)],
                                         np.dtype(dtype), True) == (cell != "gru")
    calls = [dict(x=first["x"] if k == 0 else None, h0=p["h0"],
                  c0=p["c0"] if cell == "lstm" else None, w_ih=p["w_ih"], w_hh=p["w_hh"],
                  b_ih=p["b_ih"], b_hh=p["b_hh"], lengths=first["lengths"], training=True)
             for k, p in enumerate((first, second))]
    stacked = functional._forward_stack(cell, calls, nonlinearity)
    x = first["x"].astype(np.float64)
    for k, (p, (y, h_n, c_n, ctx)) in enumerate(zip((first, second), stacked)):
        f64 = {key: None if v is None or key == "lengths" else v.astype(np.float64)
               for key, v in p.items()}
        y_ref, h_ref, c_ref, _ = cell_forward(reference, cell, nonlinearity, x, f64["h0"],
                                              f64["c0"], f64["w_ih"], f64["w_hh"], f64["b_ih"],
                                              f64["b_hh"], lengths=first["lengths"])
        errors = {"y": relative_error(y, y_ref), "h_n": relative_error(h_n, h_ref),
                  "c_n": relative_error(c_n, c_ref) if cell == "lstm" else 0.0}
        assert max(errors.values()) <= TOLERANCES["kernel_vs_reference"][dtype], (k, errors)
        assert ctx is not None and np.array_equal(ctx.x, first["x"] if k == 0 else stacked[0][0])
        x = y_ref


# ---------------------------------------------------------------------------- NaN containment
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("H", [33, 32], ids=["H33", "H32_simd"])  # H % 16 == 0: the SIMD gate math
def test_nan_in_one_sample_stays_in_that_sample(name, dtype_name, reverse, H, rng):
    cell, nonlinearity = CELLS[name]
    p = make_problem(rng, cell, (4, 3, 5, H), DTYPES[dtype_name], lengths=None)
    p["x"][:, 1, :] = np.nan  # sample 1 only
    others = [0, 2]
    ours = run(functional, cell, nonlinearity, p, reverse)
    assert np.all(np.isfinite(ours["y"][:, others])), "y of clean samples"
    assert np.all(np.isfinite(ours["h_n"][others])), "h_n of clean samples"
    assert np.isnan(ours["y"][:, 1]).any() and np.isnan(ours["h_n"][1]).any(), "NaN must propagate"
    assert np.all(np.isfinite(ours["dx"][:, others])), "dx of clean samples"
    assert np.all(np.isfinite(ours["dh0"][others])), "dh0 of clean samples"
    if cell == "lstm":
        assert np.all(np.isfinite(ours["c_n"][others])) and np.isnan(ours["c_n"][1]).any()
        assert np.all(np.isfinite(ours["dc0"][others]))


# (T, N): the backward step products of every plan: packed W_hh by units (one sample) and by
# samples (a batch, 2 threads), a BLAS GEMM per step (few steps, 16 samples), row kernels (few
# steps, few samples).
NONFINITE_PLANS = {"packed": (6, 1), "by_samples": (6, 12), "blas": (2, 16), "rows": (2, 3)}


@pytest.mark.parametrize("plan", list(NONFINITE_PLANS))
@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("name", list(CELLS))
def test_length_zero_sample_gets_dh_n_despite_nan_or_inf_weights(name, bad, plan, rng):
    """A sample of length 0 never runs a step, so its dh0 (and dc0) is dh_n exactly, whatever
    W_hh holds, as in the reference (0 * inf must not reach it); the other samples' gradients
    follow IEEE arithmetic like the reference's (non-finite where its are)."""
    cell, nonlinearity = CELLS[name]
    T, N = NONFINITE_PLANS[plan]
    p = make_problem(rng, cell, (T, N, 5, 32), np.float64, lengths=np.full(N, T))
    p["lengths"][0] = 0
    p["w_hh"][3, 7] = bad
    ours = run(functional, cell, nonlinearity, p, reverse=False)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the reference: expected
        oracle = run(reference, cell, nonlinearity, p, reverse=False)
    assert np.array_equal(ours["dh0"][0], p["dh_n"][0]), ours["dh0"][0]
    assert np.array_equal(oracle["dh0"][0], p["dh_n"][0])
    if cell == "lstm":
        assert np.array_equal(ours["dc0"][0], p["dc_n"][0])
    np.testing.assert_array_equal(np.isfinite(ours["dh0"]), np.isfinite(oracle["dh0"]))


@pytest.mark.parametrize("H", [33, 32], ids=["H33", "H32_simd"])
@pytest.mark.parametrize("name", list(CELLS))
def test_saturated_gates_match_reference(name, H, rng):
    """Pre-activations in the hundreds and beyond: every activation saturates as in the
    reference, with no NaN from the clamps or reciprocals of the fast gate math."""
    cell, nonlinearity = CELLS[name]
    p = make_problem(rng, cell, (4, 3, 5, H), np.float32, lengths=None)
    p["x"] *= 1e4
    y, h_n, c_n, _ = cell_forward(functional, cell, nonlinearity, p["x"], p["h0"], p["c0"],
                                  p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], training=False)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
    y_ref, h_ref, c_ref, _ = cell_forward(reference, cell, nonlinearity,
                                          *(None if p[k] is None else p[k].astype(np.float64)
                                            for k in names))
    for ours, ref in ((y, y_ref), (h_n, h_ref)) + (((c_n, c_ref),) if cell == "lstm" else ()):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
        finite = np.isfinite(ref)
        tolerance = TOLERANCES["kernel_vs_reference"][np.float32]
        assert relative_error(ours[finite], ref[finite]) <= tolerance


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(CELLS))
def test_nan_in_padding_is_never_read(name, reverse, rng):
    """Packed semantics: x past a sample's length is not part of the sequence, so NaN there
    changes nothing in the forward outputs."""
    cell, nonlinearity = CELLS[name]
    p = make_problem(rng, cell, (5, 4, 3, 17), np.float64)
    clean = run(functional, cell, nonlinearity, p, reverse)
    for n, length in enumerate(p["lengths"]):
        p["x"][length:, n] = np.nan
    y, h_n, c_n, _ = cell_forward(functional, cell, nonlinearity, p["x"], p["h0"], p["c0"],
                                  p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                  lengths=p["lengths"], reverse=reverse)
    assert np.array_equal(y, clean["y"]) and np.array_equal(h_n, clean["h_n"])
    if cell == "lstm":
        assert np.array_equal(c_n, clean["c_n"])


# ---------------------------------------------------------------------------- the other builds
@pytest.mark.parametrize("isa,name", [("avx2", "avx2+fma"), ("generic", "generic")])
def test_lower_instruction_sets_pass_the_kernel_tests(isa, name):
    """The AVX2 and plain x86-64 builds of the drivers (chosen on CPUs without AVX-512) run the
    reference and thread-split tests here too, forced by FUSEDRNN_ISA in a subprocess."""
    env = dict(os.environ, FUSEDRNN_ISA=isa)
    if "ASAN_OPTIONS" in env:
        # Under CI's sanitizers: ASan and UBSan check this child, LeakSanitizer does not. The
        # parent's leak check covers the same allocations (they do not depend on the ISA), and
        # LSan's own tracer once crashed at this child's exit ("Tracer caught signal 11").
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    probe = subprocess.run(
        [sys.executable, "-c", "import fusedrnn; print(fusedrnn.info()['kernels'])"],
        env=env, capture_output=True, text=True, check=True)
    if probe.stdout.strip() != name:
        pytest.skip(f"this CPU runs no {name} build (got {probe.stdout.strip()})")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          __file__, "-k", "matches_reference or every_split or nan or saturated or side_by_side"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "peephole"])
def test_float32_bias_gradients_of_many_rows_keep_float32_accuracy(cell):
    """The bias (and peephole) gradients were one running float32 sum over every step and
    sample: 2e-5 to 3e-5 off the float64 sums at T*N = 200K, where torch's are within 1e-6. Now
    blocks of rows are summed, and the blocks' totals in float64."""
    from fusedrnn import functional as F
    T, N, I, H = 400, 512, 8, 16
    peephole = cell == "peephole"
    cell = "lstm" if peephole else cell
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, N, I))
    w = [rng.uniform(-.25, .25, s) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    w_ph = rng.uniform(-.25, .25, 3 * H) if peephole else None
    states = [np.zeros((N, H))] * (2 if cell == "lstm" else 1)
    dy = rng.standard_normal((T, N, H))
    forward, backward = getattr(F, cell + "_forward"), getattr(F, cell + "_backward")

    def bias_grads(dtype):
        more = dict(w_ph=w_ph.astype(dtype)) if peephole else {}
        out = forward(*(a.astype(dtype) for a in (x, *states, *w)), training=True, **more)
        return backward(out[-1], dy.astype(dtype))[-3 if peephole else -2:]

    for ours, exact in zip(bias_grads(np.float32), bias_grads(np.float64)):
        assert np.abs(ours - exact).max() / np.abs(exact).max() < 2e-6


# ---------------------------------------------------------------------------- gradients left out
def backward_wanting(cell, ctx, p, input_grad, weight_grads):
    return functional._backward(cell, ctx, p["dy"], p["dh_n"],
                                p["dc_n"] if cell == "lstm" else None, input_grad, weight_grads)


def assert_partial_backwards_match(cell, ctx, p):
    """A backward without dx, without the parameters' gradients, or without both: None for
    those, every other output bitwise the full backward's (each plan's loop, whatever it
    skips, computes the rest the same way)."""
    full = backward_wanting(cell, ctx, p, True, True)
    for input_grad, weight_grads in ((False, True), (True, False), (False, False)):
        part = backward_wanting(cell, ctx, p, input_grad, weight_grads)
        assert len(part) == len(full)
        for i, (want, got) in enumerate(zip(full, part)):
            left_out = (i == 0 and not input_grad) or (i >= 3 and not weight_grads)
            if left_out or want is None:
                assert got is None, (i, input_grad, weight_grads)
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"output {i}")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(CELLS))
def test_backward_without_dx_or_weight_gradients_computes_the_rest_alike(name, dtype_name, rng,
                                                                       restore_threads):
    cell, nonlinearity = CELLS[name]
    fusedrnn.set_num_threads(2)
    for shape in (*SHAPES.values(), *SPLIT_SHAPES.values()):
        for reverse in (False, True):
            p = make_problem(rng, cell, shape, DTYPES[dtype_name])
            ctx = cell_forward(functional, cell, nonlinearity, p["x"], p["h0"], p["c0"],
                               p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], lengths=p["lengths"],
                               reverse=reverse)[3]
            assert_partial_backwards_match(cell, ctx, p)


# (name, forward's extra arguments): the variants' loops and the bfloat16 products' (T >= the
# bfloat16 backward's minimum steps, rows enough for its weight gradients)
PARTIAL_VARIANTS = {"bf16_lstm": ("lstm", dict(precision="bfloat16")),
                    "bf16_gru": ("gru", dict(precision="bfloat16")),
                    "bf16_rnn": ("rnn", dict(precision="bfloat16")),
                    "peephole": ("lstm", dict(w_ph=True)), "projection": ("lstm", dict(w_hr=True)),
                    "layernorm": ("layernorm_lstm", {}), "gru_reset_before": ("gru_reset_before", {})}


@pytest.mark.parametrize("variant", list(PARTIAL_VARIANTS))
def test_variants_backward_without_dx_or_weight_gradients(variant, rng, restore_threads):
    cell, extra = PARTIAL_VARIANTS[variant]
    fusedrnn.set_num_threads(2)
    T, N, I, H = 40, 24, 20, 64
    base = "lstm" if "lstm" in cell else "gru" if "gru" in cell else "rnn"
    p = make_problem(rng, base, (T, N, I, H), np.float32)
    kwargs = dict(lengths=p["lengths"], training=True, precision=extra.get("precision"))
    if extra.get("w_ph"):
        kwargs["w_ph"] = rng.standard_normal(3 * H).astype(np.float32) * 0.1
    h0 = p["h0"]
    if extra.get("w_hr"):
        P = 24
        kwargs["w_hr"] = rng.standard_normal((P, H)).astype(np.float32) * 0.1
        p["w_hh"] = p["w_hh"][:, :P].copy()
        h0, p["dy"], p["dh_n"] = p["h0"][:, :P], p["dy"][..., :P], p["dh_n"][:, :P]
    if cell == "layernorm_lstm":
        ctx = functional.layernorm_lstm_forward(p["x"], h0, p["c0"], p["w_ih"], p["w_hh"],
                                                p["b_ih"], p["b_hh"], **kwargs)[3]
    elif base == "lstm":
        ctx = functional.lstm_forward(p["x"], h0, p["c0"], p["w_ih"], p["w_hh"], p["b_ih"],
                                      p["b_hh"], **kwargs)[3]
    elif base == "gru":
        ctx = functional.gru_forward(p["x"], h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                     reset_after=cell == "gru", **kwargs)[2]
    else:
        ctx = functional.rnn_forward(p["x"], h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                     **kwargs)[2]
    assert_partial_backwards_match(ctx.cell, ctx, p)


def test_public_backwards_leave_out_what_is_not_wanted(rng):
    p = make_problem(rng, "gru", (3, 2, 4, 5), np.float64)
    _, _, ctx = functional.gru_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"],
                                       p["b_hh"], training=True)
    dx, dh0, *dw = functional.gru_backward(ctx, p["dy"], weight_grads=False)
    assert dx.shape == p["x"].shape and dh0.shape == p["h0"].shape and dw == [None] * 4
    assert functional.gru_backward(ctx, p["dy"], input_grad=False)[0] is None
    with pytest.raises(TypeError, match="input_grad: expected a bool .*got str"):
        functional.gru_backward(ctx, p["dy"], input_grad="no")
    call = (ctx.x, ctx.w_ih, ctx.w_hh, ctx.lengths, ctx.reverse, ctx.gates, ctx.extra,
            ctx.h_prev, p["dy"], p["dh_n"], None, None, None, None, None, True, "no")
    with pytest.raises(TypeError, match="weight_grads: expected a bool, got str"):
        fusedrnn._C.recurrent_backward_many("gru", "tanh", [call])


@pytest.mark.parametrize("module", ["functional", "reference"])
@pytest.mark.parametrize("name", list(CELLS) + ["layernorm_lstm"])
def test_nan_or_inf_left_in_the_padding_reaches_nothing(name, module, rng):
    """Padding is never read, as torch's packed sequences never read it: NaN and inf left at
    padded steps (np.empty's garbage) made every weight gradient NaN through the steps' zero
    gradients (0 * NaN), in the kernels and the reference alike (a LayerNorm-LSTM's dx too).
    Every output and gradient is the one of zero padding, bit for bit."""
    mod = functional if module == "functional" else reference
    dtype = np.float32 if module == "functional" else np.float64
    cell, nonlinearity = CELLS.get(name, ("lstm", "tanh"))
    p = make_problem(rng, cell, (6, 4, 5, 8), dtype, lengths=np.array([6, 2, 0, 4]))
    runs = []
    for garbage in (False, True):
        x = p["x"].copy()
        for n, length in enumerate(p["lengths"]):
            x[length:, n] = 0.0
            if garbage:
                x[length:, n, ::2], x[length:, n, 1::2] = np.nan, -np.inf
        if name == "layernorm_lstm":
            y, h_n, c_n, ctx = mod.layernorm_lstm_forward(
                x, p["h0"], p["c0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                lengths=p["lengths"], training=True)
            grads = mod.layernorm_lstm_backward(ctx, p["dy"], p["dh_n"], p["dc_n"])
        else:
            y, h_n, c_n, ctx = cell_forward(mod, cell, nonlinearity, x, p["h0"], p["c0"],
                                            p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                            lengths=p["lengths"])
            grads = cell_backward(mod, cell, ctx, p["dy"], p["dh_n"], p["dc_n"]).values()
        runs.append([a for a in (y, h_n, c_n, *grads) if a is not None])
        assert all(np.isfinite(a).all() for a in runs[-1])
    for clean, dirty in zip(*runs):
        np.testing.assert_array_equal(clean, dirty)


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_a_stacked_bidirectional_layer_reads_no_padding(cls, rng):
    """The same through fr.nn's layers (2 layers, both directions, batch_first), and the
    caller's array is left as it was."""
    layer = getattr(fusedrnn.nn, cls)(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                      seed=0)
    lengths = np.array([5, 1, 0, 3])
    clean = rng.standard_normal((4, 5, 3)).astype(np.float32)
    clean[np.arange(5)[None, :] >= lengths[:, None]] = 0.0
    dirty = clean.copy()
    dirty[np.arange(5)[None, :] >= lengths[:, None]] = np.nan
    given = dirty.copy()
    runs = []
    for x in (clean, dirty):
        layer.zero_grad()
        out, _ = layer(x, lengths=lengths)
        dx, _ = layer.backward(np.ones_like(out))
        runs.append([out, dx] + [p.grad.copy() for p in layer.parameters()])
    np.testing.assert_array_equal(dirty, given)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
