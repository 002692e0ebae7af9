#!/usr/bin/env bash
# Creates the project-local virtual environment .venv (once), installs the pinned requirements and
# builds kdkernels in place (incremental: ninja recompiles only changed sources).
# Usage: source scripts/setup_env.sh   (sets $PY to the venv's python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KDKERNELS_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.requirements.sha"
want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements (torch is ~5 GB; first time only)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r "$ROOT/requirements.txt"
  echo "$want" > "$stamp"
fi
if ! "$PY" -c "import importlib.metadata as m; m.version('kdkernels')" >/dev/null 2>&1; then
  echo "[setup] registering kdkernels in the venv (editable)"
  (cd "$ROOT" && KDKERNELS_SKIP_EXT=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e .)
fi
echo "[setup] building the native extension in place (incremental)"
log="$VENV/kdkernels-build.log"
if ! (cd "$ROOT" && "$PY" setup.py build_ext --inplace > "$log" 2>&1); then
  tail -n 60 "$log"; echo "[setup] build failed (full log: $log)"; exit 1
fi
grep "kdkernels: native build" "$log" || true
"$PY" -c "import kdkernels, sys; sys.exit(0 if kdkernels.build_info()['native'] else 1)" \
  || { echo "[setup] the native extension did not build or load"; exit 1; }
export PY
