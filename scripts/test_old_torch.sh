#!/usr/bin/env bash
# The op, autograd and torch.compile tests against the lowest supported torch (pyproject.toml's
# floor, the version on the lent GPU machines), on CPU, in a second venv. The sources are copied
# to build/oldtorch-src so this build does not replace the main venv's in-place extension.
# Usage: bash scripts/test_old_torch.sh [pytest args]     (env OLD_TORCH, default 2.11.0)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OLD_TORCH="${OLD_TORCH:-2.11.0}"
VENV="${KDKERNELS_OLD_VENV:-$ROOT/.venv-torch-$OLD_TORCH}"
SRC="$ROOT/build/oldtorch-src"
PY="$VENV/bin/python"
if [ ! -x "$PY" ] || ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$OLD_TORCH')" 2>/dev/null; then
  echo "[old-torch] creating $VENV with torch==$OLD_TORCH (~3 GB download, first time only)"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch==$OLD_TORCH" numpy pytest setuptools wheel ninja pybind11 tqdm pyyaml
fi
echo "[old-torch] copying the sources to $SRC"
rm -rf "$SRC" && mkdir -p "$SRC"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
  | grep -zv '^benchmarks/\|^python_tests/test_train\|\.png$\|\.json$' \
  | xargs -0 cp --parents -t "$SRC")
echo "[old-torch] building kdkernels._C (CPU only) against torch $OLD_TORCH"
if ! (cd "$SRC" && KDKERNELS_CUDA=0 "$PY" setup.py build_ext --inplace > build.log 2>&1); then
  tail -n 60 "$SRC/build.log"; echo "[old-torch] build failed"; exit 1
fi
grep "kdkernels: native build" "$SRC/build.log" || true
cd "$SRC"
"$PY" -m pytest -q -p no:cacheprovider python_tests/test_api.py python_tests/test_compile.py \
  python_tests/test_autograd_contract.py python_tests/test_numerics_contract.py \
  python_tests/test_row_losses.py python_tests/test_confidence_masked_mse.py \
  python_tests/test_native_kernels.py python_tests/test_decoupled_kd.py python_tests/test_peer_row_losses.py \
  python_tests/test_compiled_errors.py "$@"
