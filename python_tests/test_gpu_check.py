"""benchmarks/gpu_check.sh and benchmarks/gpu_probe.py without a GPU.

The script runs here with this interpreter as PY and short budgets: with the GPU steps skipped
(GPU_CHECK_NO_GPU=1), as a CPU dry run of the whole machinery (GPU_CHECK_DEVICE=cpu), and with a
fake python whose commands all hang (every step must be cut at its limit and the run must end
inside its budget). The probe's comparison logic runs against the cpu backend.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ("device", "build", "tests", "probe", "bench", "memcheck", "triton")
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")

pytestmark = pytest.mark.skipif(not SCRIPT.is_file() or shutil.which("timeout") is None,
                                reason="needs benchmarks/gpu_check.sh and coreutils timeout")
if str(REPO) not in sys.path:  # plain `pytest` does not put the repo root on sys.path
    sys.path.insert(0, str(REPO))


# --- the script ---------------------------------------------------------------------------------
def run_check(out: Path, budget: int, py: str = sys.executable, **env_extra) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env.update(PY=py, OUT=str(out), GPU_CHECK_BUDGET_S=str(budget), **env_extra)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=budget + 120)
    return proc, time.monotonic() - t0


def steps_table(out: Path) -> dict:
    """{step: (status, seconds, limit, note)} from summary.txt."""
    rows = {}
    for line in (out / "summary.txt").read_text().splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4 and parts[0] in STEPS and parts[2].isdigit():
            rows[parts[0]] = (parts[1], int(parts[2]), int(parts[3]), parts[4] if len(parts) > 4 else "")
    return rows


def check_outputs(out: Path, proc) -> dict:
    files = [p for p in out.rglob("*")]
    assert len(files) <= 8, files
    assert all(p.is_file() and NAME_OK.match(p.name) for p in files), files
    assert all(p.stat().st_size <= 16 << 20 for p in files)
    rows = steps_table(out)
    assert set(rows) == set(STEPS), (rows, proc.stdout[-3000:])
    assert "===== summary" in proc.stdout
    return rows


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_no_gpu_skips_gpu_steps_and_checks_memcheck_selection(tmp_path):
    proc, took = run_check(tmp_path, 150, GPU_CHECK_NO_GPU="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert took < 150
    rows = check_outputs(tmp_path, proc)
    assert rows["device"][0] == "PASS"
    for step in ("build", "tests", "probe", "bench", "triton"):
        assert rows[step][0] == "SKIP", rows[step]
    assert rows["tests"][3] == "no GPU, skipped"
    # the memcheck -k filter is collected even without a GPU and selects at least one test
    n = int(re.search(r"-k selection: (\d+) tests", rows["memcheck"][3]).group(1))
    assert n >= 1
    assert "memcheck selection" in (tmp_path / "tests.txt").read_text()


def test_empty_memcheck_selection_fails(tmp_path):
    proc, _ = run_check(tmp_path, 150, GPU_CHECK_NO_GPU="1", GPU_CHECK_MEMCHECK_K="no_such_test_anywhere")
    assert proc.returncode == 1
    rows = check_outputs(tmp_path, proc)
    assert rows["memcheck"][0] == "FAIL" and "selects nothing" in rows["memcheck"][3]


FAKE_PY = """#!/bin/bash
# fake python: device info says "GPU + pytest", the build and build_info succeed, all else hangs
case "$1" in
  -) cat >/dev/null; echo "torch=fake"; echo "cuda_available=1"; echo "pytest=9.0"; exit 0 ;;
  setup.py) echo "fake build"; exit 0 ;;
  -c) echo "cuda_unit=1"; exit 0 ;;
esac
exec sleep 1000
"""


def test_hanging_steps_are_cut_and_the_run_ends_inside_its_budget(tmp_path):
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    out = tmp_path / "out"
    budget = 45
    # GPU_CHECK_TIME_SCALE=10: every step's minimum and cap shrink tenfold
    proc, took = run_check(out, budget, py=str(fake), GPU_CHECK_TIME_SCALE="10")
    assert took < budget + 8, (took, proc.stdout[-3000:])
    assert proc.returncode == 1, proc.stdout[-3000:]
    rows = check_outputs(out, proc)
    assert rows["build"][0] == "PASS"
    for step in ("tests", "probe", "bench"):           # must-have steps: cut at their limit
        status, secs, limit, _ = rows[step]
        assert status == "TIMEOUT", rows[step]
        assert secs <= limit + 6, rows[step]
    assert sum(r[1] for r in rows.values()) <= budget
    assert rows["memcheck"][0] in ("TIMEOUT", "SKIP", "FAIL") and rows["triton"][0] in ("TIMEOUT", "SKIP")


def test_cpu_dry_run_of_every_step(tmp_path):
    """GPU_CHECK_DEVICE=cpu: tests, probe and benchmark run with CPU stand-ins, outputs as on a GPU."""
    proc, took = run_check(tmp_path, 400, GPU_CHECK_DEVICE="cpu",
                           GPU_CHECK_TESTS="python_tests/test_confidence.py")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert took < 400
    rows = check_outputs(tmp_path, proc)
    assert rows["tests"][0] == "PASS" and re.search(r"\d+ passed", rows["tests"][3]), rows["tests"]
    assert rows["probe"][0] == "PASS" and " 0 failed" in rows["probe"][3], rows["probe"]
    assert rows["bench"][0] == "PASS", rows["bench"]
    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.txt", "tests.txt", "probe.txt", "bench.txt", "RESULTS_gpu.md", "RESULTS_gpu.json",
            "RESULTS_gpu.png"} <= names
    runs = json.loads((tmp_path / "RESULTS_gpu.json").read_text())["runs"]
    assert [r["dtype"] for r in runs] == ["float32", "bfloat16"] and all(r["results"] for r in runs)
    assert (tmp_path / "RESULTS_gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## float32" in (tmp_path / "RESULTS_gpu.md").read_text()


# --- the probe's comparison logic ------------------------------------------------------------------
def test_compare_accepts_close_and_rejects_wrong_outputs():
    from benchmarks.gpu_probe import TOL, compare

    ref = torch.randn(50, 7, dtype=torch.float64)
    out = ref.float()
    err, problem = compare(out, ref, torch.float32)
    assert problem is None and err < 1e-6
    assert compare(out * (1 + 3 * TOL[torch.float32]), ref, torch.float32)[1]            # too far off
    assert compare(ref.bfloat16(), ref, torch.bfloat16)[1] is None                      # bf16 rounding passes
    assert compare(ref.bfloat16() * 1.05, ref, torch.bfloat16)[1]
    nan = out.clone()
    nan[3, 2] = math.nan
    err, problem = compare(nan, ref, torch.float32)
    assert problem and "non-finite" in problem and math.isnan(err)
    assert "dtype" in compare(ref, ref, torch.float32)[1]                                # float64 ≠ float32
    assert "shape" in compare(out[:49], ref, torch.float32)[1]
    assert compare(None, ref, torch.float32)[1] == "no output"
    # empty outputs, and an all-zero reference (absolute error then)
    assert compare(torch.empty(0, 7), torch.empty(0, 7, dtype=torch.float64), torch.float32)[1] is None
    zero = torch.zeros(4, dtype=torch.float64)
    assert compare(torch.zeros(4), zero, torch.float32)[1] is None
    assert compare(torch.full((4,), 1e-3), zero, torch.float32)[1]


def test_place_makes_the_layouts_with_poisoned_storage():
    from benchmarks.gpu_probe import place

    x = torch.randn(2, 7, 5, 3)
    off = place(x, "offset", "cpu")
    assert off.storage_offset() == 1 and off.is_contiguous() and torch.equal(off, x)
    assert torch.isnan(torch.as_strided(off, (1,), (1,), 0)).all()                       # element 0 = NaN
    strided = place(x, "strided", "cpu")
    assert not strided.is_contiguous() and torch.equal(strided, x) and strided.stride(1) == 2 * 15
    cl = place(x, "channels_last", "cpu")
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous() and torch.equal(cl, x)
    rows = torch.randn(9, 81)
    tr = place(rows, "transposed", "cpu")
    assert tr.stride() == (1, 9) and torch.equal(tr, rows)
    w = place(torch.rand(9), "strided", "cpu")
    assert w.stride() == (2,)


def test_probe_on_the_cpu_backend_passes_and_covers_every_case():
    from benchmarks.gpu_probe import OPS, probe

    res = probe(torch.device("cpu"), quick=True, dtypes=(torch.float32, torch.bfloat16), ks=(7,),
                backends=["cpu"], out=open(os.devnull, "w"))
    assert res["failed"] == 0 and res["not_run"] == 0, [r for r in res["rows"] if r["problem"]]
    seen = {(r["op"], r["layout"], r["dtype"], r["reduction"]) for r in res["rows"]}
    expected = {(op.name, layout, d, red) for op in OPS for layout in op.layouts
                for d in ("float32", "bfloat16") for red in ("mean", "none")}
    assert seen == expected
    assert {"offset", "strided", "channels_last", "empty"} <= {r["layout"] for r in res["rows"]}


def test_probe_catches_a_wrong_kernel(monkeypatch, capsys):
    import kdkernels
    from benchmarks import gpu_probe

    real = kdkernels.soft_label_kl

    def off_by_a_little(*args, **kwargs):   # 0.1 % off in value and gradient: beyond the fp32 tolerance
        return real(*args, **kwargs) * 1.001

    monkeypatch.setattr(kdkernels, "soft_label_kl", off_by_a_little)
    code = gpu_probe.main(["--device", "cpu", "--quick", "--dtypes", "float32", "--backends", "cpu",
                           "--ops", "soft_label_kl[sigmoid],adl[sigmoid]"])
    out = capsys.readouterr().out
    assert code == gpu_probe.EXIT_FAIL
    assert "FAILED: soft_label_kl[sigmoid]" in out and "FAILED: adl" not in out
    assert re.search(r"probe: \d+ cases run, \d+ passed, [1-9]\d* failed", out)

    def nan_out(*args, **kwargs):
        return real(*args, **kwargs) * math.nan

    monkeypatch.setattr(kdkernels, "soft_label_kl", nan_out)
    row = gpu_probe.run_case(gpu_probe.OPS_BY_NAME["soft_label_kl[softmax]"], "cpu", "offset", 7, torch.float32,
                             "none", "cpu", quick=True)
    assert row["problem"] and "non-finite" in row["problem"]


def test_probe_budget_and_exit_codes(capsys):
    from benchmarks import gpu_probe

    assert gpu_probe.main(["--device", "cpu", "--quick", "--dtypes", "float32", "--backends", "cpu",
                           "--ops", "confidence_masked_mse"]) == 0
    assert gpu_probe.main(["--device", "cpu", "--quick", "--budget", "0"]) == gpu_probe.EXIT_INCOMPLETE
    assert "not run (budget" in capsys.readouterr().out
