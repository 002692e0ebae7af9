#!/usr/bin/env bash
# The main job, end to end on the embedded synthetic data (no download): generate the data set, train
# the teacher, the baseline student (ground truth only) and the distilled student (confidence-based KD
# + ADL on unlabeled images), then print the COCO AP table. About 10 minutes on a 2-core CPU.
# Extra args go to `kdkernels-train demo` (e.g. --fresh, --config paper, --set train.iterations=100).
# Outputs: runs/demo/ (eval.md, eval.json, ap_bars.png, demo.json, per-stage metrics and loss curves).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
"$PY" -m kdkernels.train demo "$@"
