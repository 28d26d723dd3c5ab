#!/usr/bin/env bash
# The one GPU check: build fusedrnn with its CUDA backend on the GPU machine, run the GPU tests
# (tests/test_cuda.py) and the kernel tests (tests/test_kernels.py), then time the CUDA kernels
# against cuDNN (bench/gpu_bench.py). Logs and JSON go to $OUT (default /tmp/fusedrnn-gpu-check).
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
#   bash bench/gpu_check.sh            (stage timeouts: build 170 s, tests 110 s, bench 130 s)
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
if ! FUSEDRNN_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout 170 python3 -m pip install -v \
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

# ---- tests
status=0
timeout 110 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_kernels.py \
  > "$OUT/pytest.log" 2>&1 || status=$?
grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/pytest.log" | head -30
tail -3 "$OUT/pytest.log"
echo "gpu_check: pytest exit $status"

# ---- benchmark (prints its table last)
timeout 130 python3 bench/gpu_bench.py --budget 0.2 --json "$OUT/gpu_bench.json" 2>&1 \
  | tee "$OUT/bench.log" | grep -v "^  " || status=$((status == 0 ? 1 : status))
echo "gpu_check: done (status $status)"
exit $status
