"""The environment variables the CPU kernels read once per process (FUSEDRNN_TUNING,
FUSEDRNN_LINGER_US, FUSEDRNN_CPU_TABLE, FUSEDRNN_ISA) and the default thread count: a bad value
is named on stderr with what was expected and ignored, the process still computes what it
computes without it, and `fusedrnn info` shows the fallback. Each case runs in a fresh process
(the settings are read at the first call)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

SETTINGS = ("FUSEDRNN_TUNING", "FUSEDRNN_LINGER_US", "FUSEDRNN_CPU_TABLE", "FUSEDRNN_ISA")
SWITCHES = ("FUSEDRNN_NO_BF16_DOT", "FUSEDRNN_NO_AMX")

# A small stacked LSTM's outputs (as a digest: bit for bit), the kernels, the table and the
# thread count, as the child process sees them.
CHILD = """
import hashlib, json, numpy as np, fusedrnn as fr
m = fr.nn.LSTM(8, 16, num_layers=2, seed=0)
x = np.random.default_rng(0).standard_normal((20, 4, 8)).astype(np.float32)
y = m(x)[0]
d = fr.info()
print(json.dumps({"digest": hashlib.sha256(y.tobytes()).hexdigest(), "finite": bool(np.isfinite(y).all()),
                  "kernels": d["kernels"], "table": d["cpu_table"], "threads": d["threads"]}))
"""


def run(env=None, code=CHILD, prefix=()):
    """Runs `code` in a fresh interpreter with only these FUSEDRNN settings; (result, stderr)."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS + SWITCHES}
    clean.update(env or {})
    done = subprocess.run([*prefix, sys.executable, "-c", code], env=clean, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout) if code is CHILD else done.stdout
    return out, done.stderr


def messages(stderr, variable):
    return [line for line in stderr.splitlines() if line.startswith(f"fusedrnn: {variable}")]


@pytest.fixture(scope="module")
def default():
    out, err = run()
    assert not messages(err, "FUSEDRNN_") and out["finite"]
    return out


# ---------------------------------------------------------------------------- FUSEDRNN_TUNING
BAD_TUNING = ["blas_batch=inf", "blas_batch=nan", "blas_batch=-inf", "blas_batch=1e30",
              "blas_batch=9223372036854775808", "blas_batch=-1", "blas_batch=1.5", "blas_batch=",
              "inference_pack_rows=nan", "inference_pack_rows=inf", "inference_pack_rows=-2",
              "linger_us=1e12", "pipelined_rows=0", "wavefront_rows=0", "wavefront_rows=1e9",
              "unit_slices_per_thread=100000"]


def test_tuning_refuses_non_finite_and_out_of_range_values(default):
    out, err = run({"FUSEDRNN_TUNING": ",".join(BAD_TUNING)})
    lines = messages(err, "FUSEDRNN_TUNING")
    assert len(lines) == len(BAD_TUNING), err
    for item, line in zip(BAD_TUNING, lines):
        name, value = item.split("=")
        assert f"ignored '{item}'" in line and f"{name} expects" in line, line
        assert f"got '{value}'" in line and " from " in line, line
    assert out["table"] == default["table"]
    assert out["digest"] == default["digest"]


def test_tuning_sets_what_it_accepts(default):
    # whole numbers in any notation, a real entry's fraction; the ends of an entry's range
    out, err = run({"FUSEDRNN_TUNING": "blas_batch=1e3,inference_pack_rows=2.5,linger_us=0,"
                                       "wavefront_rows=65536,pipelined_rows=1"})
    assert not messages(err, "FUSEDRNN_"), err
    table = out["table"]
    assert table["blas_batch"] == 1000 and isinstance(table["blas_batch"], int)
    assert table["inference_pack_rows"] == 2.5 and table["linger_us"] == 0
    assert table["wavefront_rows"] == 65536 and table["pipelined_rows"] == 1
    assert out["finite"]


def test_tuning_names_the_variable_for_the_row(default):
    out, err = run({"FUSEDRNN_TUNING": "row=intel,bogus=1,blas_batch"})
    row, bogus, no_value = messages(err, "FUSEDRNN_TUNING")
    assert "'row=intel'" in row and "FUSEDRNN_CPU_TABLE=intel|amd|other" in row
    assert "'bogus=1'" in bogus and "got the name 'bogus'" in bogus and "blas_batch" in bogus
    assert "'blas_batch'" in no_value and "name=value" in no_value
    assert out["table"]["row"] == default["table"]["row"]
    assert out["digest"] == default["digest"]


# ---------------------------------------------------------------------------- FUSEDRNN_LINGER_US
@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e30", "2.5", "70000000",
                                   " 5", "5 "])  # (" 5" was taken, "5 " refused)
def test_linger_refuses_a_bad_value(default, value):
    out, err = run({"FUSEDRNN_LINGER_US": value})
    (line,) = messages(err, "FUSEDRNN_LINGER_US")
    assert f"got '{value}'" in line and "expected an integer from 0 to" in line, line
    assert out["table"]["linger_us"] == default["table"]["linger_us"]
    assert out["digest"] == default["digest"]


@pytest.mark.parametrize("value,want", [("1e3", 1000), ("0", 0), ("250", 250), ("", None)])
def test_linger_takes_a_good_value(default, value, want):
    out, err = run({"FUSEDRNN_LINGER_US": value})
    assert not messages(err, "FUSEDRNN_"), err
    assert out["table"]["linger_us"] == (default["table"]["linger_us"] if want is None else want)
    # FUSEDRNN_TUNING's linger_us wins over it
    if want is not None:
        out, _ = run({"FUSEDRNN_LINGER_US": value, "FUSEDRNN_TUNING": "linger_us=7"})
        assert out["table"]["linger_us"] == 7


# ---------------------------------------------------------------------------- FUSEDRNN_CPU_TABLE
def test_cpu_table_takes_any_case(default):
    lower, err = run({"FUSEDRNN_CPU_TABLE": "intel"})
    upper, err_upper = run({"FUSEDRNN_CPU_TABLE": "INTEL"})
    assert not messages(err + err_upper, "FUSEDRNN_")
    assert upper["table"] == lower["table"] and upper["table"]["row"] == "intel"
    assert upper["digest"] == lower["digest"]


def test_cpu_table_names_an_unknown_row(default):
    out, err = run({"FUSEDRNN_CPU_TABLE": "xyz"})
    (line,) = messages(err, "FUSEDRNN_CPU_TABLE")
    assert "intel, amd or other" in line and "got 'xyz'" in line and "row other" in line
    other, _ = run({"FUSEDRNN_CPU_TABLE": "other"})
    assert out["table"] == other["table"] and out["digest"] == other["digest"]


# ---------------------------------------------------------------------------- FUSEDRNN_ISA
def test_isa_takes_any_case(default):
    if default["kernels"] == "generic":
        pytest.skip("this CPU runs only the generic kernels")
    lower, err = run({"FUSEDRNN_ISA": "avx2"})
    upper, err_upper = run({"FUSEDRNN_ISA": "AVX2"})
    generic, err_generic = run({"FUSEDRNN_ISA": "Generic"})
    assert not messages(err + err_upper + err_generic, "FUSEDRNN_")
    assert upper["kernels"] == lower["kernels"] == "avx2+fma"
    assert upper["digest"] == lower["digest"]
    assert generic["kernels"] == "generic" and generic["finite"]


@pytest.mark.parametrize("value", ["sse", "avx-512", "native"])
def test_isa_names_an_unknown_value(default, value):
    out, err = run({"FUSEDRNN_ISA": value})
    (line,) = messages(err, "FUSEDRNN_ISA")
    assert "generic, avx2 or avx512" in line and f"got '{value}'" in line
    assert default["kernels"] in line
    assert out["kernels"] == default["kernels"] and out["digest"] == default["digest"]


def test_isa_says_when_the_cpu_lacks_the_one_named(default):
    out, err = run({"FUSEDRNN_ISA": "AVX512"})
    assert out["kernels"] == default["kernels"] and out["digest"] == default["digest"]
    lines = messages(err, "FUSEDRNN_ISA")
    if default["kernels"] == "avx512":
        assert not lines
    else:  # the best this CPU runs, said so
        (line,) = lines
        assert "lacks AVX-512" in line and default["kernels"] in line


def test_info_shows_the_fallbacks(default):
    env = {"FUSEDRNN_ISA": "sse", "FUSEDRNN_CPU_TABLE": "xyz", "FUSEDRNN_LINGER_US": "abc",
           "FUSEDRNN_TUNING": "blas_batch=nan"}
    out, err = run(env, code="import sys; from fusedrnn import cli; sys.exit(cli.main(['info']))")
    for variable in SETTINGS:
        assert len(messages(err, variable)) == 1, err
    assert f"kernels: {default['kernels']}" in out
    assert "row = other" in out
    assert f"linger_us = {default['table']['linger_us']}" in out
    assert f"blas_batch = {default['table']['blas_batch']}" in out


# ---------------------------------------------------------------------------- FUSEDRNN_NO_BF16_DOT, FUSEDRNN_NO_AMX
@pytest.mark.parametrize("variable", SWITCHES)
def test_switches_are_off_when_empty_or_zero(variable):
    """A switch variable is on when set to anything but "" or "0" (any value switched it on,
    an empty or zero one too): the bfloat16 path fr.info() names follows."""
    code = "import fusedrnn as fr; print(fr.info()['bf16_products'])"
    unset = run(code=code)[0]
    if ("vdpbf16ps" if variable == "FUSEDRNN_NO_BF16_DOT" else "AMX") not in unset:
        pytest.skip(f"this CPU has no path {variable} turns off")
    assert run({variable: ""}, code=code)[0] == run({variable: "0"}, code=code)[0] == unset
    assert run({variable: "1"}, code=code)[0] != unset


# ---------------------------------------------------------------------------- default threads
affinity = pytest.mark.skipif(shutil.which("taskset") is None or
                              not hasattr(os, "sched_getaffinity"),
                              reason="needs taskset and os.sched_getaffinity")
THREADS = "import fusedrnn as fr; print(fr.get_num_threads(), fr.info()['threads'])"


@affinity
def test_default_threads_follow_the_affinity_mask():
    cpu = min(os.sched_getaffinity(0))
    out, _ = run(code=THREADS, prefix=("taskset", "-c", str(cpu)))
    assert out.split() == ["1", "1"]


@affinity
def test_default_threads_are_the_cpus_this_process_may_use():
    out, _ = run(code=THREADS)
    n = len(os.sched_getaffinity(0))
    assert out.split() == [str(n), str(n)]
