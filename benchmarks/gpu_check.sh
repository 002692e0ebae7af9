#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and no network (torch, triton, pytest and nvcc there):
#   1. build kdkernels._C from source with the CUDA unit,  2. run the whole test suite (the gpu-marked
#   tests included), 3. compute-sanitizer memcheck on a short CUDA test, 4. the GPU benchmarks (eager,
#   torch.compile, triton, cuda in one run) → table, JSON and PNG under $OUT (default benchmarks/out/gpu).
# Usage: bash benchmarks/gpu_check.sh            (PY=python3, TORCH_CUDA_ARCH_LIST=9.0 by default)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" KDKERNELS_CUDA=1
status=0
step() { echo; echo "=== $* ==="; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

step "build (CUDA unit on)"
start=$(date +%s)
if ! "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -n 40 "$OUT/build.log"; echo "build failed"; exit 1
fi
echo "build took $(( $(date +%s) - start )) s"
"$PY" -c "import json, kdkernels; print(json.dumps(kdkernels.build_info(), default=str, indent=1))" | tee "$OUT/build_info.json"

step "tests (all, gpu-marked included)"
"$PY" -m pytest python_tests -q -p no:cacheprovider -x --ignore=python_tests/test_cmake_build.py 2>&1 | tee "$OUT/tests.txt" | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer memcheck"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -m pytest python_tests/test_gpu.py -q -p no:cacheprovider \
    -k "(row_losses_gpu and float32 and mean and cuda) or (masked_mse_gpu and float32 and cuda)" 2>&1 \
    | tee "$OUT/memcheck.txt" | tail -n 8
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "compute-sanitizer not found (it ships with the CUDA toolkit: \$CUDA_HOME/bin)"; status=1
fi

step "benchmarks (eager, torch.compile, triton, cuda)"
"$PY" -m benchmarks.run --device cuda --out "$OUT" --markdown "$OUT/RESULTS_gpu.md" 2>&1 | tee "$OUT/bench.txt" | tail -n 40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
