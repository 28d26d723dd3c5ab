#!/usr/bin/env bash
# The one GPU check: build fusedrnn with its CUDA backend on the GPU machine, a smoke check of the
# persistent kernels' two exchange modes (grid barrier, the default, vs FUSEDRNN_CUDA_EXCHANGE=
# flagged: bitwise equal results, and both within 1e-4 of the stepwise loop), the GPU tests
# (tests/test_cuda.py), then the CUDA kernels against cuDNN (bench/gpu_bench.py, the
# anchors' target rows). Logs and JSON go to $OUT (default /tmp/fusedrnn-gpu-check).
#
# The GPU machine has numpy, pybind11, scikit-build-core, cmake, ninja, cupy and torch but no
# network: carry the scipy-openblas32 wheel in .whl/ (see bench/README or the device notes):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl scipy-openblas32==<the version pip show gives>
# If .gpusnap/ exists (a `git archive` of a known-good commit), the build and tests use it instead
# of the working tree, so that other people's uncommitted edits cannot break the run.
#
#   bash bench/gpu_check.sh   (stage timeouts: build 150 s, smoke 40 s, tests 150 s, bench 100 s,
#                              memcheck 80 s: bench/gpu_memcheck.py under compute-sanitizer)
set -uo pipefail
OUT=${OUT:-/tmp/fusedrnn-gpu-check}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${FUSEDRNN_SRC:-$ROOT}
if [ -z "${FUSEDRNN_SRC:-}" ] && [ -d "$ROOT/.gpusnap" ]; then SRC="$ROOT/.gpusnap"; fi
export PYTHONUNBUFFERED=1
echo "gpu_check: source $SRC, logs in $OUT"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
  nvcc --version | tail -2
  python3 -c "import sys, numpy, torch, cupy; print(sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'cupy', cupy.__version__)"
} 2>&1 | tee "$OUT/env.log"

# ---- the build dependency that is not on the machine: scipy-openblas32 from the carried wheel
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$ROOT"/.whl/*.whl || { echo "gpu_check: wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# ---- build (CUDA forced on; only the machine's architecture, to keep the build short)
cd "$SRC" || exit 1
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
arch=${arch:-90}
echo "gpu_check: building for sm_$arch"
start=$(date +%s)
if ! FUSEDRNN_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout 150 python3 -m pip install -v \
    --no-build-isolation --no-deps --no-cache-dir -Cbuild-dir=/tmp/fusedrnn-build \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${arch}-real" . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "gpu_check: BUILD FAILED"
  exit 1
fi
grep -E "fusedrnn: building|cuBLAS" "$OUT/build.log" | head -3
echo "gpu_check: built in $(( $(date +%s) - start )) s"
cd /tmp && python3 -c "import fusedrnn, fusedrnn.cuda as c; print(fusedrnn.info()); print('cuda available:', c.is_available(), c.device_summary())" 2>&1 | tee -a "$OUT/env.log"
cd "$SRC" || exit 1

# ---- smoke: the persistent kernels, flagged exchange vs grid barrier (must agree bit for bit)
status=0
cat > /tmp/fusedrnn_smoke.py <<'PY'
import os, sys
import cupy as cp, numpy as np
from fusedrnn import cuda as fcuda, functional as F
worst = 0.0
for cell in ("lstm", "gru", "rnn"):
    for (T, N, I, H) in ((40, 8, 64, 512), (60, 16, 32, 128), (9, 3, 5, 97)):
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        rng = np.random.default_rng(T + N + H)
        a = lambda *s: cp.asarray(rng.standard_normal(s).astype(np.float32) / np.sqrt(H))
        x, h0, w_ih, w_hh, b_ih, b_hh = a(T, N, I), a(N, H), a(G * H, I), a(G * H, H), a(G * H), a(G * H)
        dy, dh = a(T, N, H), a(N, H)
        lengths = np.array([T] + [max(0, T - 3 * i) for i in range(1, N)])
        if not fcuda.persistent_forward_fits(cell, T, N, I, H):
            print(f"smoke {cell} T={T} N={N} H={H}: the persistent forward does not fit this GPU")
            continue
        res = {}
        for mode in ("flagged", "barrier", "stepwise"):
            os.environ.pop("FUSEDRNN_CUDA_EXCHANGE", None)
            if mode == "flagged":
                os.environ["FUSEDRNN_CUDA_EXCHANGE"] = "flagged"
            with fcuda.options(algorithm="stepwise" if mode == "stepwise" else "persistent"):
                if cell == "lstm":
                    y, hn, cn, ctx = F.lstm_forward(x, h0, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, training=True)
                    g = F.lstm_backward(ctx, dy, dh, dh) if fcuda.persistent_backward_fits(cell, T, N, I, H) or mode == "stepwise" else ()
                else:
                    fwd, bwd = (F.gru_forward, F.gru_backward) if cell == "gru" else (F.rnn_forward, F.rnn_backward)
                    y, hn, ctx = fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, training=True)
                    g = bwd(ctx, dy, dh) if fcuda.persistent_backward_fits(cell, T, N, I, H) or mode == "stepwise" else ()
            res[mode] = [cp.asnumpy(v) for v in (y, hn, *g) if v is not None]
        os.environ.pop("FUSEDRNN_CUDA_EXCHANGE", None)
        same = all(np.array_equal(p, q) for p, q in zip(res["flagged"], res["barrier"]))
        err = max(float(np.linalg.norm(p - q) / max(np.linalg.norm(q), 1e-30))
                  for p, q in zip(res["flagged"], res["stepwise"][:len(res["flagged"])]))
        worst = max(worst, err)
        print(f"smoke {cell} T={T} N={N} H={H}: flagged == barrier {same}; vs stepwise {err:.1e}")
        if not same or not err < 1e-4:
            sys.exit(1)
print(f"smoke: ok (worst vs stepwise {worst:.1e})")
PY
if ! (cd /tmp && timeout 40 python3 /tmp/fusedrnn_smoke.py) > "$OUT/smoke.log" 2>&1; then
  tail -5 "$OUT/smoke.log"
  echo "gpu_check: SMOKE FAILED (see smoke.log)"
  status=3
else
  tail -1 "$OUT/smoke.log"
fi

# ---- tests
# (the CUDA kernels, and the torch adapter on CUDA tensors: its tests named *cuda*)
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
  tests/test_torch_adapter.py tests/test_distributed.py -k cuda --durations=15 \
  > "$OUT/pytest.log" 2>&1 || status=$?
grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/pytest.log" | head -30
tail -3 "$OUT/pytest.log"
echo "gpu_check: pytest exit $status"

# ---- benchmark (prints its table last)
timeout 100 python3 bench/gpu_bench.py --budget 0.15 --json "$OUT/gpu_bench.json" 2>&1 \
  | tee "$OUT/bench.log" | grep -v "^  " || status=$((status == 0 ? 1 : status))
# ---- every CUDA path on tiny problems under compute-sanitizer's memcheck (last: the most
# informative stages first; where the machine's runtime refuses the tool, the log says so)
if command -v compute-sanitizer >/dev/null 2>&1; then
  (cd /tmp && timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 "$SRC/bench/gpu_memcheck.py") > "$OUT/memcheck.log" 2>&1
  rc=$?
  grep -E "memcheck problems|ERROR SUMMARY|Invalid|failures|relative error" "$OUT/memcheck.log" | head -20
  echo "gpu_check: memcheck exit $rc (9: an error found; 124: cut off at 80 s)"
  if [ $rc -ne 0 ] && [ $status -eq 0 ]; then status=4; fi
fi
echo "gpu_check: done (status $status)"
exit $status
