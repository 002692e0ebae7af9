#!/usr/bin/env bash
# GPU check in ONE time-boxed call (default 510 s, so it ends inside a 9-minute device command) on a
# machine with an NVIDIA GPU and no network (torch, triton, pytest and nvcc there; nothing installed).
#
# Steps, in priority order; each runs under `timeout` with the time left minus a reserve for the
# must-have steps after it, a failing step does not stop the later ones, and the exit status is 1
# when any step failed (FAIL, or TIMEOUT of a must-have step), else 0:
#   1. device    nvidia-smi, torch/CUDA/triton/pytest versions, nvcc, compute-sanitizer  (must)
#   2. build     kdkernels._C from source with the CUDA unit; on failure the log tail is  (must)
#                printed and the steps that need the extension are skipped (fail fast)
#   3. tests     python_tests/test_gpu.py + the op tests (no -x; CPU-only, trainer,       (must)
#                cmake, efficacy, benchmark-smoke and Triton modules left out); tests that
#                would start after the step's deadline are skipped (benchmarks/pytest_budget.py)
#                so the pass/fail counts always come back
#   4. probe     benchmarks/gpu_probe.py: every op × backend vs the float64 reference on    (must)
#                odd K, misaligned, channels_last, strided, empty inputs, fp32/bf16, fwd+grad
#   5. bench     python -m benchmarks.run at the realistic shapes, fp32 and bf16, eager vs   (must)
#                torch.compile vs kdkernels (cuda, triton), --budget so it ends with outputs
#   6. memcheck  compute-sanitizer memcheck on a few CUDA tests (the -k selection is checked (while
#                with --collect-only first: an empty selection is a failure)                  time
#   7. triton    python_tests/test_triton.py on CUDA                                          remains)
#
# Outputs (at most 8 files) in $OUT (default benchmarks/out/gpu): summary.txt (step table, device
# and build info; rewritten after every step), build.log, tests.txt (tests, memcheck, triton),
# probe.txt, bench.txt, RESULTS_gpu.md, RESULTS_gpu.json, RESULTS_gpu.png.
#
# Usage: bash benchmarks/gpu_check.sh
# Environment: PY (python3), OUT, GPU_CHECK_BUDGET_S (510), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (16),
#   GPU_CHECK_XDIST (pytest-xdist workers for the test steps; default 8 when installed, 0 = off),
#   GPU_CHECK_MEMCHECK_K (the -k expression of the memcheck step), GPU_CHECK_TESTS (the test files
#   of step 3, space-separated). For machines without a GPU (python_tests/test_gpu_check.py):
#   GPU_CHECK_NO_GPU=1 skips the build and every GPU step ("no GPU, skipped"; the memcheck
#   selection is still checked); GPU_CHECK_DEVICE=cpu is a dry run of the machinery: no build (the
#   tree's own), steps 3-5 with CPU stand-ins (probe --device cpu --quick, one small benchmark
#   case), memcheck and triton skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PY="${PY:-python3}"
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
BUDGET="${GPU_CHECK_BUDGET_S:-510}"
FILES=(summary.txt build.log tests.txt probe.txt bench.txt RESULTS_gpu.md RESULTS_gpu.json RESULTS_gpu.png)
for f in "${FILES[@]}"; do rm -f "$OUT/$f"; done
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
trap 'record killed FAIL "$SECONDS" "$BUDGET" "gpu_check.sh got a signal (killed from outside?)"; exit 143' TERM INT
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TQDM_MININTERVAL=5
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"

# Seconds. A step needs at least its MIN to be worth starting and runs at most its CAP; a step
# keeps back the MINs of the must-have steps after it. FINAL covers the summary and timeout's kill
# grace. GPU_CHECK_TIME_SCALE (percent, default 100) scales all of them (the CPU tests use 10).
SCALE="${GPU_CHECK_TIME_SCALE:-100}"
sc() { echo $(( $1 * SCALE / 100 )); }
FINAL=$(sc 20) MARGIN=$(sc 15) PYTEST_MARGIN=$(sc 25) BENCH_MARGIN=$(sc 35)
DEVICE_MIN=$(sc 5) BUILD_MIN=$(sc 30) TESTS_MIN=$(sc 60) PROBE_MIN=$(sc 30) BENCH_MIN=$(sc 90) OPT_MIN=$(sc 30)
DEVICE_CAP=$(sc 60) BUILD_CAP=$(sc 300) TESTS_CAP=$(sc 150) PROBE_CAP=$(sc 75) BENCH_CAP=$(sc 180)
MEMCHECK_CAP=$(sc 100) TRITON_CAP=$(sc 120) AUX_CAP=$(sc 60)
# memcheck: opcheck of the CUDA kernels + the op tests' non-contiguous and empty inputs on the cuda
# backend (ids "...-cuda-cuda]", collected only where CUDA is; on a CPU machine only test_opcheck_cuda)
MEMCHECK_FILES=(python_tests/test_gpu.py python_tests/test_row_losses.py python_tests/test_confidence_masked_mse.py)
MEMCHECK_K="${GPU_CHECK_MEMCHECK_K:-test_opcheck_cuda or ((test_non_contiguous or (test_empty_inputs and mean)) and cuda-cuda)}"

# nvcc / compute-sanitizer: on PATH, else next to nvcc, in $CUDA_HOME or /usr/local/cuda
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if ! command -v nvcc >/dev/null 2>&1 && [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then PATH="$PATH:$d/bin"; fi
done
SANITIZER=$(command -v compute-sanitizer 2>/dev/null || true)
if [ -z "$SANITIZER" ]; then
  NVCC_DIR=$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/nvcc)")
  for c in "$NVCC_DIR/compute-sanitizer" "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -x "$c" ]; then SANITIZER=$c; break; fi
  done
fi

# --- bookkeeping ------------------------------------------------------------------------------
ROWS=()          # "name|status|seconds|limit|note"
FAILED=0
HAVE_GPU=0 BUILD_OK=0 HAVE_PYTEST=0 XDIST=() CPU_DRY=0
[ "${GPU_CHECK_DEVICE:-cuda}" = cpu ] && CPU_DRY=1
left() { echo $(( BUDGET - SECONDS )); }
tleft() {   # tleft CAP: a limit for a helper command: min(CAP, left - FINAL), at least 1
  local t=$(( $(left) - FINAL )); (( t > $1 )) && t=$1; (( t < 1 )) && t=1; echo $t
}
say() { echo "[gpu_check $(printf '%3d' "$SECONDS")s] $*"; }

record() {   # record NAME STATUS SECONDS LIMIT NOTE [must]
  ROWS+=("$1|$2|$3|$4|${5//|//}")
  if [ "$2" = FAIL ] || { [ "$2" = TIMEOUT ] && [ "${6:-}" = must ]; }; then FAILED=1; fi
  say "$1: $2 (${3}s of ${4}s) ${5}"
  write_summary
}

write_summary() {
  {
    echo "kdkernels GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s, elapsed ${SECONDS}s, exit $FAILED so far"
    echo "(status: PASS | FAIL | TIMEOUT = killed at its limit or no time left, a failure for must-have"
    echo " steps | PARTIAL = ran out of its budget with what it did passing | SKIP = not applicable)"
    echo
    printf '%-9s %-8s %7s %6s  %s\n' step status seconds limit note
    for r in "${ROWS[@]}"; do
      IFS='|' read -r n s sec lim note <<<"$r"
      printf '%-9s %-8s %7s %6s  %s\n' "$n" "$s" "$sec" "$lim" "$note"
    done
    echo
    [ -s "$SCRATCH/info.txt" ] && { echo "## device"; cat "$SCRATCH/info.txt"; echo; }
    [ -s "$SCRATCH/build_info.json" ] && { echo "## build_info"; cat "$SCRATCH/build_info.json"; echo; }
  } > "$OUT/summary.txt"
}

# run_timed NAME MIN CAP RESERVE LOG cmd...: runs cmd under timeout min(CAP, left - RESERVE),
# output appended to LOG; sets RC (125 = not started: too little time), SECS and LIMIT.
run_timed() {
  local name=$1 min=$2 cap=$3 reserve=$4 log=$5; shift 5
  LIMIT=$(( $(left) - reserve )); (( LIMIT > cap )) && LIMIT=$cap
  SECS=0
  if (( LIMIT < min )); then RC=125; return; fi
  local t0=$SECONDS
  echo "===== $name (limit ${LIMIT}s, started at ${SECONDS}s): $*" >>"$log"
  timeout -k 5 "$LIMIT" "$@" >>"$log" 2>&1
  RC=$?
  SECS=$(( SECONDS - t0 ))
  echo "===== $name: exit $RC after ${SECS}s" >>"$log"
}

status_of() {   # RC → PASS / TIMEOUT / FAIL
  case "$1" in 0) echo PASS ;; 124|137|143) echo TIMEOUT ;; *) echo FAIL ;; esac
}

no_time() { echo "no time left (${LIMIT}s < ${1}s needed)"; }

section() {   # section LOG NAME: the lines of LOG from step NAME's last "=====" header on
  awk -v h="===== $2 (limit" 'index($0, h) == 1 { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$1"
}

pytest_counts() {   # pytest_counts LOG NAME: the step's pytest summary line (+ the budget plugin's line)
  local part line budget
  part=$(section "$1" "$2")
  line=$(grep -aE '^(=+ )?[0-9]+ (passed|failed|skipped|error|errors|deselected|xfailed|xpassed|warnings?)\b.* in [0-9.]+s' <<<"$part" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
  budget=$(grep -aE '^gpu_check budget: [1-9][0-9]* tests not run' <<<"$part" | tail -n 1 | sed 's/^gpu_check budget: //')
  grep -aE '^(FAILED|ERROR) ' <<<"$part" | head -n 30 >&2
  echo "${line:-no pytest summary line}${budget:+; $budget}"
}

# --- 1. device --------------------------------------------------------------------------------
device_info() {
  echo "host=$(hostname) cpus=$(nproc 2>/dev/null)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi=$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | head -n 4 | tr '\n' ';')"
  else
    echo "nvidia-smi=not found"
  fi
  echo "nvcc=$(command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2 | tr '\n' ' ' || echo 'not found')"
  echo "compute-sanitizer=${SANITIZER:-not found}"
  "$PY" - <<'EOF'
import os, sys
print(f"python={sys.version.split()[0]} ({sys.executable})")
try:
    import torch
    print(f"torch={torch.__version__} (CUDA {torch.version.cuda})")
    ok = torch.cuda.is_available()
    if ok:
        p = torch.cuda.get_device_properties(0)
        print(f"gpu={p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
    print(f"cuda_available={int(ok)}")
except Exception as exc:  # noqa: BLE001
    print(f"torch_error={exc!r}")
    print("cuda_available=0")
for mod in ("triton", "pytest", "xdist"):
    try:
        print(f"{mod}={getattr(__import__(mod), '__version__', 'present')}")
    except Exception:  # noqa: BLE001
        print(f"{mod}=missing")
EOF
}
export -f device_info
export SANITIZER
say "budget ${BUDGET}s, output in $OUT"
run_timed device "$DEVICE_MIN" "$DEVICE_CAP" "$FINAL" "$SCRATCH/info.txt" bash -c device_info
if (( RC == 125 )); then
  record device TIMEOUT 0 "$LIMIT" "$(no_time "$DEVICE_MIN")" must
elif (( RC != 0 )); then
  record device "$(status_of $RC)" "$SECS" "$LIMIT" "device info failed (exit $RC): no GPU assumed" must
else
  grep -q '^cuda_available=1' "$SCRATCH/info.txt" && HAVE_GPU=1
  grep -q '^pytest=[0-9]' "$SCRATCH/info.txt" && HAVE_PYTEST=1
  note="$(grep -E '^(gpu|torch)=' "$SCRATCH/info.txt" | tr '\n' ' ')"
  if (( CPU_DRY )); then HAVE_GPU=0; note="GPU_CHECK_DEVICE=cpu: dry run with CPU stand-ins; $note"
  elif [ "${GPU_CHECK_NO_GPU:-0}" = 1 ]; then HAVE_GPU=0; note="GPU_CHECK_NO_GPU=1: GPU steps skipped; $note"
  elif (( ! HAVE_GPU )); then note="no GPU (torch.cuda.is_available() is False): GPU steps skipped; $note"
  fi
  record device "$(status_of $RC)" "$SECS" "$LIMIT" "$note" must
fi
cat "$SCRATCH/info.txt"

# pytest: there, or installed now if a package index can be reached (usually not: no network)
if (( HAVE_GPU && ! HAVE_PYTEST )); then
  say "pytest missing: trying pip install pytest (no network: expected to fail fast)"
  timeout -k 2 "$(tleft 30)" "$PY" -m pip install -q --retries 0 --timeout 5 pytest >>"$SCRATCH/info.txt" 2>&1 \
    && timeout -k 2 "$(tleft 30)" "$PY" -m pytest --version >/dev/null 2>&1 && HAVE_PYTEST=1
  (( HAVE_PYTEST )) || echo "pytest: missing and could not be installed: test steps skipped" | tee -a "$SCRATCH/info.txt"
fi
if (( HAVE_PYTEST )) && [ "${GPU_CHECK_XDIST:-8}" != 0 ] && grep -q '^xdist=[0-9]' "$SCRATCH/info.txt"; then
  XDIST=(-n "${GPU_CHECK_XDIST:-8}")
fi

# --- 2. build ---------------------------------------------------------------------------------
if (( CPU_DRY )); then
  BUILD_OK=1
  record build SKIP 0 0 "CPU dry run: not built (the tree's own build is used)"
elif (( ! HAVE_GPU )); then
  record build SKIP 0 0 "no GPU: the CUDA build is not attempted"
else
  run_timed build "$BUILD_MIN" "$BUILD_CAP" $(( TESTS_MIN + PROBE_MIN + BENCH_MIN + FINAL )) "$OUT/build.log" \
    env KDKERNELS_CUDA=1 "$PY" setup.py build_ext --inplace
  if (( RC == 125 )); then
    record build TIMEOUT 0 "$LIMIT" "$(no_time "$BUILD_MIN")" must
  elif (( RC != 0 )); then
    echo "----- build failed (exit $RC); last 40 lines of build.log:"; tail -n 40 "$OUT/build.log"
    record build "$(status_of $RC)" "$SECS" "$LIMIT" "exit $RC: $(grep -aE 'error' "$OUT/build.log" | head -n 1 | cut -c1-200)" must
  else
    timeout -k 2 "$(tleft "$AUX_CAP")" "$PY" -c "import json, kdkernels; i = kdkernels.build_info(); print(json.dumps(i, default=str, indent=1)); print('cuda_unit=%d' % ('cuda' in i['compiled_backends']))" \
      > "$SCRATCH/build_info.json" 2>&1
    if grep -q '^cuda_unit=1' "$SCRATCH/build_info.json"; then
      BUILD_OK=1
      record build PASS "$SECS" "$LIMIT" "kdkernels._C built with the CUDA unit ($(grep -c warning "$OUT/build.log") warning lines)" must
    else
      record build FAIL "$SECS" "$LIMIT" "built, but kdkernels does not load it with CUDA: $(tr '\n' ' ' <"$SCRATCH/build_info.json" | cut -c1-300)" must
    fi
  fi
fi

dry_note() { if (( CPU_DRY )); then echo "CPU dry run: not run"; fi; }

why_not() {   # why a GPU step cannot run, or nothing
  if (( CPU_DRY )); then return
  elif (( ! HAVE_GPU )); then echo "no GPU, skipped"
  elif (( ! BUILD_OK )); then echo "skipped: the build failed"
  fi
}

# --- 3. CUDA tests ----------------------------------------------------------------------------
TEST_FILES=(python_tests/test_gpu.py)
for f in python_tests/test_*.py; do
  case "$(basename "$f")" in
    test_gpu.py|test_triton.py|test_cmake_build.py|test_efficacy.py|test_train_*|test_benchmarks_smoke.py|\
    test_gpu_check.py|test_buffer_cache.py) ;;   # CPU-only, trainer (pycocotools), cmake, efficacy, own step
    *) TEST_FILES+=("$f") ;;
  esac
done
[ -n "${GPU_CHECK_TESTS:-}" ] && read -ra TEST_FILES <<<"$GPU_CHECK_TESTS"
if (( CPU_DRY )); then
  PROBE_ARGS=(--device cpu --quick)
  BENCH_ARGS=(--device cpu --quick --cases confidence_masked_mse --no-memory --reps 2 --target 0.002)
else
  PROBE_ARGS=(--device cuda)
  BENCH_ARGS=(--device cuda --realistic --reps 7 --target 0.02)
fi
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -p benchmarks.pytest_budget -rfE --tb=short)
run_pytest_step() {   # run_pytest_step NAME MIN CAP RESERVE LOG files/args...
  local name=$1 min=$2 cap=$3 reserve=$4 log=$5; shift 5
  LIMIT=$(( $(left) - reserve )); (( LIMIT > cap )) && LIMIT=$cap
  run_timed "$name" "$min" "$cap" "$reserve" "$log" "${PYTEST[@]}" "${XDIST[@]}" \
    --gpu-check-deadline $(( $(date +%s) + LIMIT - PYTEST_MARGIN )) "$@"
}
if [ -n "$(why_not)" ]; then
  record tests SKIP 0 0 "$(why_not)"
elif (( ! HAVE_PYTEST )); then
  record tests SKIP 0 0 "pytest missing (and pip could not install it): tests not run"
else
  run_pytest_step tests "$TESTS_MIN" "$TESTS_CAP" $(( PROBE_MIN + BENCH_MIN + FINAL )) "$OUT/tests.txt" "${TEST_FILES[@]}"
  if (( RC == 125 )); then record tests TIMEOUT 0 "$LIMIT" "$(no_time "$TESTS_MIN")" must
  else record tests "$(status_of $RC)" "$SECS" "$LIMIT" "$(pytest_counts "$OUT/tests.txt" tests) [${TEST_FILES[*]##*/}]" must
  fi
fi

# --- 4. probe ---------------------------------------------------------------------------------
if [ -n "$(why_not)" ]; then
  record probe SKIP 0 0 "$(why_not)"
else
  LIMIT=$(( $(left) - BENCH_MIN - FINAL )); (( LIMIT > PROBE_CAP )) && LIMIT=$PROBE_CAP
  run_timed probe "$PROBE_MIN" "$PROBE_CAP" $(( BENCH_MIN + FINAL )) "$OUT/probe.txt" \
    "$PY" -m benchmarks.gpu_probe "${PROBE_ARGS[@]}" --budget $(( LIMIT - MARGIN ))
  last=$(grep -a '^probe:' "$OUT/probe.txt" | tail -n 1)
  if (( RC == 125 )); then record probe TIMEOUT 0 "$LIMIT" "$(no_time "$PROBE_MIN")" must
  elif (( RC == 3 )); then record probe PARTIAL "$SECS" "$LIMIT" "$last" must
  else record probe "$(status_of $RC)" "$SECS" "$LIMIT" "${last:-no probe summary line}" must
  fi
  grep -a '^FAILED' "$OUT/probe.txt" | head -n 20
fi

# --- 5. benchmarks ----------------------------------------------------------------------------
if [ -n "$(why_not)" ]; then
  record bench SKIP 0 0 "$(why_not)"
else
  LIMIT=$(( $(left) - FINAL )); (( LIMIT > BENCH_CAP )) && LIMIT=$BENCH_CAP
  run_timed bench "$BENCH_MIN" "$BENCH_CAP" "$FINAL" "$OUT/bench.txt" \
    "$PY" -m benchmarks.run "${BENCH_ARGS[@]}" --dtypes float32,bfloat16 \
      --wait-quiet 0 --retries 0 --budget $(( LIMIT - BENCH_MARGIN )) --out "$SCRATCH/bench" \
      --markdown "$OUT/RESULTS_gpu.md" --json "$OUT/RESULTS_gpu.json" --png "$OUT/RESULTS_gpu.png"
  if (( RC == 125 )); then
    record bench TIMEOUT 0 "$LIMIT" "$(no_time "$BENCH_MIN")" must
  else
    counts=$(timeout -k 2 "$(tleft 30)" "$PY" -c "import json, sys; r = json.load(open(sys.argv[1]))['runs']; print(', '.join(f\"{x['dtype']}: {len(x['results'])} sizes{' + %d skipped (budget)' % len(x['skipped']) if x.get('skipped') else ''}\" for x in r))" "$OUT/RESULTS_gpu.json" 2>/dev/null)
    warn=$(grep -ac '^WARNING' "$OUT/bench.txt")
    status=$(status_of $RC)
    [ "$status" = PASS ] && [[ "$counts" == *skipped* ]] && status=PARTIAL
    record bench "$status" "$SECS" "$LIMIT" "${counts:-no RESULTS_gpu.json}; $warn accuracy warnings vs eager" must
  fi
fi

# --- 6. compute-sanitizer memcheck ------------------------------------------------------------
if (( ! HAVE_PYTEST )); then
  record memcheck SKIP 0 0 "pytest missing: selection not checked, memcheck not run"
else
  # the -k selection must pick at least one test: checked first (needs no GPU)
  timeout -k 2 "$(tleft "$AUX_CAP")" "$PY" -m pytest "${MEMCHECK_FILES[@]}" --collect-only -q -p no:cacheprovider \
    -k "$MEMCHECK_K" > "$SCRATCH/memcheck_collect.txt" 2>&1
  CRC=$?
  NSEL=$(grep -c '::' "$SCRATCH/memcheck_collect.txt")
  { echo "===== memcheck selection (-k \"$MEMCHECK_K\"): $NSEL tests (collect exit $CRC)"
    grep '::' "$SCRATCH/memcheck_collect.txt"; } >>"$OUT/tests.txt"
  sel="-k selection: $NSEL tests"
  if [ "$(status_of $CRC)" = TIMEOUT ]; then
    record memcheck TIMEOUT 0 0 "the --collect-only check of the -k selection timed out (no time left?)"
  elif (( NSEL == 0 )); then
    tail -n 5 "$SCRATCH/memcheck_collect.txt"
    record memcheck FAIL 0 0 "$sel: the -k filter selects nothing (set GPU_CHECK_MEMCHECK_K)"
  elif [ -n "$(why_not)" ] || (( CPU_DRY )); then
    record memcheck SKIP 0 0 "$sel; $(why_not)$(dry_note)"
  elif [ -z "$SANITIZER" ]; then
    record memcheck FAIL 0 0 "$sel; compute-sanitizer not found (PATH, next to nvcc, \$CUDA_HOME/bin, /usr/local/cuda/bin)"
  else
    # no caching allocator: every tensor is its own cudaMalloc, so an overrun is caught at its edge
    run_timed memcheck "$OPT_MIN" "$MEMCHECK_CAP" "$FINAL" "$OUT/tests.txt" \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 3 --print-limit 20 \
      "$PY" -m pytest "${MEMCHECK_FILES[@]}" -q -p no:cacheprovider -rfE -k "$MEMCHECK_K"
    if (( RC == 125 )); then record memcheck SKIP 0 "$LIMIT" "$sel; $(no_time "$OPT_MIN")"
    else
      errs=$(section "$OUT/tests.txt" memcheck | grep -aE 'ERROR SUMMARY: [0-9]+' | tail -n 1 | sed 's/^========= //')
      record memcheck "$(status_of $RC)" "$SECS" "$LIMIT" "$sel; ${errs:-no ERROR SUMMARY line}; $(pytest_counts "$OUT/tests.txt" memcheck)"
    fi
  fi
fi

# --- 7. Triton tests on CUDA ------------------------------------------------------------------
if [ -n "$(why_not)" ] || (( CPU_DRY )); then
  record triton SKIP 0 0 "$(why_not)$(dry_note)"
elif (( ! HAVE_PYTEST )); then
  record triton SKIP 0 0 "pytest missing: not run"
else
  run_pytest_step triton "$OPT_MIN" "$TRITON_CAP" "$FINAL" "$OUT/tests.txt" python_tests/test_triton.py
  if (( RC == 125 )); then record triton SKIP 0 "$LIMIT" "$(no_time "$OPT_MIN")"
  else record triton "$(status_of $RC)" "$SECS" "$LIMIT" "$(pytest_counts "$OUT/tests.txt" triton)"
  fi
fi

# --- the end: at most 8 files of at most 15 MiB each in $OUT ---------------------------------
for f in "${FILES[@]}"; do
  if [ -f "$OUT/$f" ] && [ "$(stat -c %s "$OUT/$f")" -gt $(( 15 << 20 )) ]; then
    tail -c $(( 15 << 20 )) "$OUT/$f" > "$SCRATCH/trunc" && mv "$SCRATCH/trunc" "$OUT/$f"
  fi
done
write_summary
echo
echo "===== summary ($OUT/summary.txt)"
sed '/^## device/,$d' "$OUT/summary.txt"
echo "files: $(cd "$OUT" && ls "${FILES[@]}" 2>/dev/null | tr '\n' ' ')"
exit $FAILED
