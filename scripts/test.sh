#!/usr/bin/env bash
# Runs the whole test suite in the project venv (creates it and builds first). Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# Without a CUDA device the Triton kernels are tested through the interpreter. Triton reads
# TRITON_INTERPRET when it is first imported, so it is set for the whole run (it affects Triton
# kernels only), and the Triton tests fail instead of skipping if it did not take.
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
export KDKERNELS_REQUIRE_TRITON_TESTS=1
set +e
"$PY" -m pytest python_tests -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "[test] pytest collected no tests: failing"; exit 1; fi
exit "$rc"
