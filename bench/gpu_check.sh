#!/usr/bin/env bash
# The GPU check, in one command, for a session that is lent a GPU machine (the `device` tool).
#
#     bash bench/gpu_check.sh            # report in $OUT (the device tool's folder) or ./gpu_check_out
#
# The device machine reaches no package registry, so nothing is downloaded here:
#   1. the `gpu` extra: its modules (cupy, any CUDA major; cuda.bindings' NVRTC) are taken from the
#      machine's image; wheels placed in ./wheelhouse (carried with the working tree) are installed
#      offline first, for a missing or different version;
#   2. sdederive itself from this checkout (`pip install --no-deps -e .`, else PYTHONPATH;
#      GPU_CHECK_NO_INSTALL=1 skips the install);
#   3. the `gpu`-marked tests (GPU kernels against numba, same seed; the scalar and the vector kernels);
#   4. bench/bench_gpu.py: fp32 and fp64 at 2^20 paths, numba in the same process as the baseline;
#   5. the sizing target of the kernels issue: 1e6 paths x d = 100 x 1e4 steps, fp32, <= 10 s;
#   6. vector kernels (USAM's and LAMB's SDEs) on a dense d = 100 quadratic, fp32 and fp64.
# Each step has its own time limit, so the whole check ends within 5 minutes on a working machine and
# a hang in one step still leaves the others' figures.  The report is $OUT/gpu_report.md; the full log
# is $OUT/gpu_check.log.  Exit status: 0 when every step ran and passed, else the first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log="$OUT/gpu_check.log"
report="$OUT/gpu_report.md"
: >"$log"
status=0

step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log it, keep the first failure
    local name=$1 limit=$2
    shift 2
    echo "## $name" | tee -a "$log"
    local t0=$SECONDS rc
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    echo "-- $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$log"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
    return 0
}

{
    echo "# sdederive GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null \
        || echo "nvidia-smi: not found"
    echo "python: $($PY --version 2>&1); CPUs: $(nproc)"
} | tee -a "$log"

if [ -d wheelhouse ]; then
    step "offline wheels (./wheelhouse)" 120 "$PY" -m pip install --no-index --find-links wheelhouse wheelhouse/*.whl
fi
if [ -n "${GPU_CHECK_NO_INSTALL:-}" ]; then
    echo "GPU_CHECK_NO_INSTALL set: sdederive from PYTHONPATH=$PWD" | tee -a "$log"
elif ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$log" 2>&1; then
    echo "pip install -e . failed (see the log); using PYTHONPATH=$PWD" | tee -a "$log"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step "gpu extra and device" 45 "$PY" - <<'EOF'
import sys
import cupy as cp
from cuda.bindings import nvrtc
import sdederive as sd
print("cupy", cp.__version__, "| CUDA runtime", cp.cuda.runtime.runtimeGetVersion(),
      "| NVRTC (cuda.bindings)", nvrtc.nvrtcVersion()[1:], "| sdederive", sd.__file__)
if not cp.cuda.is_available():
    sys.exit("cupy sees no CUDA device")
props = cp.cuda.runtime.getDeviceProperties(0)
print("device:", props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
      "| compute capability", f"{props['major']}.{props['minor']}", "| SMs", props["multiProcessorCount"])
EOF

step "gpu-marked tests" 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rs tests/test_cuda_codegen.py \
    tests/test_cuda_vector.py
step "bench_gpu (fp32, fp64, 2^20 paths; numba baseline)" 90 \
    "$PY" bench/bench_gpu.py --paths 1048576 --d 100 --steps 1000 --save-every 100 --cpu-paths 2000
step "sizing target: 1e6 paths x d=100 x 1e4 steps, fp32" 45 \
    "$PY" bench/bench_gpu.py --paths 1000000 --d 100 --steps 10000 --save-every 10000 --only float32
step "vector kernels: d=100 dense, 2^16 paths x 200 steps, fp32 and fp64; numba baseline" 50 \
    "$PY" bench/bench_gpu.py --vector s:usam,s:lamb --paths 65536 --d 100 --steps 200 --save-every 200 \
    --cpu-paths 4096

{
    echo "# sdederive GPU check report"
    echo
    sed -n '1,3p' "$log"
    echo
    grep -E '^(## |-- |\| |# GPU|# no CuPy|float32 GPU|[0-9]+ (passed|failed|skipped|deselected|errors?)|FAILED|ERROR)' "$log"
    echo
    echo "overall exit status: $status (full log: gpu_check.log)"
} >"$report"
cat "$report"
exit "$status"
