#!/usr/bin/env bash
# The main job: benchmark every kernel against eager PyTorch and torch.compile at the default sizes
# (detection-realistic shapes included) and print the table. Extra args go to benchmarks.run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
"$PY" -m benchmarks.run --device cpu "$@"
