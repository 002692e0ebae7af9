"""Smoke test of the benchmark harness: `python -m benchmarks.run --device cpu --quick` runs and
writes a JSON with every case and variant (positive times) and a PNG. No timing assertions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (REPO / "benchmarks" / "run.py").is_file(), reason="benchmarks/ not in this tree")
def test_quick_benchmark_run(tmp_path):
    if str(REPO) not in sys.path:  # plain `pytest` does not put the repo root on sys.path
        sys.path.insert(0, str(REPO))
    from benchmarks.cases import CASES, MODES, VARIANTS

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    md = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--quick", "--out", str(tmp_path),
         "--markdown", str(md)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    json_path = tmp_path / "bench_cpu_float32.json"
    png_path = tmp_path / "bench_cpu_float32.png"
    assert json_path.is_file() and png_path.is_file() and png_path.stat().st_size > 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md.is_file() and "| case |" in md.read_text()

    result = json.loads(json_path.read_text())
    assert result["machine"]["torch"] and result["machine"]["kdkernels_build_info"]
    assert result["copy_bandwidth"]["bandwidth_Bps"] > 0
    rows = result["results"]
    assert {r["case"] for r in rows} == {c.name for c in CASES}
    for row in rows:
        for variant in VARIANTS:
            for mode in MODES:
                stats = row["variants"][variant][mode]
                assert stats["median"] > 0 and all(t > 0 for t in stats["samples"]), (row["case"], variant, mode)
            peak = row["memory"][variant]["peak_extra_bytes"]
            assert peak is None or peak >= 0
    assert result["roofline"] and all(rf["fraction_of_copy_bw"]["kdkernels"] > 0 for rf in result["roofline"])


@pytest.mark.skipif(not (REPO / "benchmarks" / "run.py").is_file(), reason="benchmarks/ not in this tree")
def test_several_dtypes_with_a_spent_budget(tmp_path):
    """--dtypes a,b with --budget 0: nothing timed, every size listed as skipped, and still the
    per-dtype JSON/PNG, the combined --json/--png and a --markdown with one section per dtype."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    md, all_json, all_png = tmp_path / "R.md", tmp_path / "all.json", tmp_path / "all.png"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--quick", "--dtypes", "float32,bfloat16",
         "--budget", "0", "--out", str(tmp_path), "--markdown", str(md), "--json", str(all_json),
         "--png", str(all_png)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = json.loads(all_json.read_text())["runs"]
    assert [r["dtype"] for r in runs] == ["float32", "bfloat16"]
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.cases import CASES
    quick_sizes = sum(len(c.sizes_for(quick=True)) for c in CASES)
    for r in runs:
        assert r["results"] == [] and len(r["skipped"]) == quick_sizes and r["budget_s"] == 0
        assert (tmp_path / f"bench_cpu_{r['dtype']}.json").is_file()
    assert all_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert text.count("# kdkernels benchmarks") == 1 and "## float32" in text and "## bfloat16" in text
    assert "Not measured (the time budget of 0 s was spent)" in text


def test_variants_come_from_available_backends(monkeypatch):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import kdkernels
    from benchmarks import cases

    monkeypatch.setattr(kdkernels, "available_backends", lambda device: ["cuda", "triton", "reference"])
    assert cases.variants_for("cuda") == cases.VARIANTS + ("triton",)
    monkeypatch.setattr(kdkernels, "available_backends", lambda device: ["triton", "reference"])
    assert cases.variants_for("cuda") == cases.VARIANTS              # auto = triton = "kdkernels"
    monkeypatch.setattr(kdkernels, "available_backends", lambda device: ["cpu", "triton", "reference"])
    assert cases.variants_for("cpu") == cases.VARIANTS               # the triton interpreter is not timed
    case = cases.CASES_BY_NAME["soft_label_kl[sigmoid]"]
    inp = case.setup(next(iter(case.sizes_for(quick=True))))
    with pytest.raises(ValueError):
        case.fn("no_such_backend")
    loss = case.fn("reference")(inp)                                  # a pinned backend is a variant too
    assert torch.allclose(loss, case.fn("eager")(inp))
