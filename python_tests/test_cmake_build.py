"""CMakeLists.txt stays a working build of the same sources (CPU unit), loadable by Python; the
sources compile at -std=c++17 (torch <= 2.11) and -std=c++20."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_builds_and_loads(tmp_path):
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"])
    build = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja", path=env["PATH"]) else []
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *gen, f"-DPython_EXECUTABLE={sys.executable}",
                    "-DKDK_INPLACE=OFF"], check=True, env=env, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, env=env, capture_output=True)
    (lib,) = build.glob("_C*.so")
    pkg = tmp_path / "pkg" / "kdkernels"
    shutil.copytree(ROOT / "kdkernels", pkg, ignore=shutil.ignore_patterns("_C*.so", "_build_meta.json", "__pycache__"))
    shutil.copy(lib, pkg)
    code = ("import torch, kdkernels; s, t = torch.randn(9, 5), torch.randn(9, 5); "
            "assert kdkernels.build_info()['native']; "
            "torch.testing.assert_close(kdkernels.soft_label_kl(s, t), kdkernels.reference.soft_label_kl(s, t))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pkg.parent, env=env)


# --- C++ standards: torch <= 2.11 builds extensions with -std=c++17, torch >= 2.12 with c++20 ---
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler")

VEC_PROBE = r"""
#include "ops/cpu/vec_math.h"
#include <cmath>
#include <cstdio>
using namespace kdkernels::vmath;
void probe_exp(const float* x, float* y, long n) {
#pragma omp simd
  for (long i = 0; i < n; ++i) y[i] = exp_(x[i]);
}
void probe_log(const float* x, float* y, long n) {
#pragma omp simd
  for (long i = 0; i < n; ++i) y[i] = log_(x[i]);
}
void probe_bits(const float* m, const float* x, float* y, long n) {
#pragma omp simd
  for (long i = 0; i < n; ++i) { const float v = m[i] * x[i]; y[i] = not_plus_zero(m[i]) ? v : 0.0f; }
}
void probe_bits_f64(const double* m, const double* x, double* y, long n) {
#pragma omp simd
  for (long i = 0; i < n; ++i) { const double v = m[i] * x[i]; y[i] = not_plus_zero(m[i]) ? v : 0.0; }
}
int main() {
  float x[64], y[64], z[64], m[64];
  for (int i = 0; i < 64; ++i) { x[i] = 0.25f * (i + 1); m[i] = i % 2 ? -0.0f : 0.0f; }
  probe_exp(x, y, 64);
  probe_log(x, z, 64);
  for (int i = 0; i < 64; ++i) {
    if (std::fabs(y[i] - std::exp(x[i])) > 1e-6f * std::exp(x[i])) { std::printf("exp %d\n", i); return 1; }
    if (std::fabs(z[i] - std::log(x[i])) > 1e-6f) { std::printf("log %d\n", i); return 1; }
  }
  for (int i = 0; i < 64; ++i) x[i] = INFINITY;
  probe_bits(m, x, y, 64);  // +0: 0 whatever x is; -0: (-0) * inf = NaN
  double md[64], xd[64], yd[64];
  for (int i = 0; i < 64; ++i) { md[i] = m[i]; xd[i] = INFINITY; }
  md[4] = NAN;
  probe_bits_f64(md, xd, yd, 64);
  for (int i = 0; i < 64; ++i) {
    if (i % 2 ? !std::isnan(y[i]) : y[i] != 0.0f) { std::printf("bits %d\n", i); return 1; }
    if (i % 2 || i == 4 ? !std::isnan(yd[i]) : yd[i] != 0.0) { std::printf("bits f64 %d\n", i); return 1; }
  }
  if (bits_of(1.0f) != 0x3f800000 || bits_of(-0.0) != INT64_MIN || bits_to_float(0x40000000) != 2.0f) return 1;
  return 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("std", ["c++17", "c++20"])
@pytest.mark.parametrize("bit_cast", ["builtin", "memcpy"])
def test_vec_math_compiles_vectorises_and_runs(tmp_path, std, bit_cast):
    """csrc/ops/cpu/vec_math.h (torch-free) at -std=c++17 and c++20, with __builtin_bit_cast and
    with the memcpy fallback: it compiles (std::bit_cast did not exist in C++17), its loops are
    vectorised inside `omp simd` (GCC's report), and the results are right."""
    src = tmp_path / "probe.cpp"
    src.write_text(VEC_PROBE)
    exe = tmp_path / "probe"
    cmd = [CXX, f"-std={std}", "-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
           "-I", str(ROOT / "csrc"), str(src), "-o", str(exe), "-fopt-info-vec-optimized"]
    if bit_cast == "memcpy":
        cmd.append("-DKDK_NO_BUILTIN_BIT_CAST")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    subprocess.run([str(exe)], check=True, timeout=30)
    version = subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout
    if "clang" not in version.lower():  # -fopt-info is GCC's
        lines = VEC_PROBE.splitlines()
        loops = [i + 1 for i, line in enumerate(lines) if line.strip().startswith("for (long i")
                 and lines[i - 1].strip() == "#pragma omp simd"]
        assert len(loops) == 4
        for line in loops:
            assert re.search(rf"probe\.cpp:{line}:\d+: optimized: loop vectorized", r.stderr), \
                f"loop at line {line} not vectorised ({std}, {bit_cast}):\n{r.stderr}"


TORCH_PROBE = ("import json, pathlib, sysconfig, torch, torch.utils.cpp_extension as c; "
               "inc = c.include_paths(); "
               "aten = pathlib.Path(inc[0], 'ATen', 'ATen.h').read_text(); "
               "print(json.dumps({'version': torch.__version__, 'abi': int(torch._C._GLIBCXX_USE_CXX11_ABI), "
               "'include': inc + [sysconfig.get_paths()['include']], "
               "'cxx20_only': 'C++20 or later' in aten}))")


def _torch_installs():
    """This interpreter's torch, plus the interpreters listed in KDKERNELS_TEST_TORCH_PYTHONS
    (os.pathsep-separated, e.g. a venv with torch 2.11 to check the C++17 build)."""
    pythons = [sys.executable] + [p for p in os.environ.get("KDKERNELS_TEST_TORCH_PYTHONS", "").split(os.pathsep) if p]
    found = []
    for py in pythons:
        r = subprocess.run([py, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            found.append((py, json.loads(r.stdout.strip().splitlines()[-1])))
    return found


@needs_cxx
@pytest.mark.parametrize("std", ["c++17", "c++20"])
def test_sources_compile_with_cxx_standard(tmp_path, std):
    """Syntax-only compile of every C++ source (csrc/kdkernels.cpp, csrc/ops/cpu/*.cpp, as one
    unity file so torch's headers are parsed once) with torch's include flags, at -std=c++17
    (torch <= 2.11's cpp_extension flag) and -std=c++20. torch >= 2.12 headers need C++20, so the
    C++17 case runs against a torch <= 2.11 named in KDKERNELS_TEST_TORCH_PYTHONS, or skips."""
    installs = [(py, info) for py, info in _torch_installs() if std != "c++17" or not info["cxx20_only"]]
    if not installs:
        pytest.skip(f"no torch here accepts -std={std} (torch >= 2.12 needs C++20); set "
                    "KDKERNELS_TEST_TORCH_PYTHONS to the python of a torch <= 2.11 install")
    py, info = installs[0]
    sources = [ROOT / "csrc/kdkernels.cpp", *sorted((ROOT / "csrc/ops/cpu").glob("*.cpp"))]
    unity = tmp_path / "unity.cpp"
    unity.write_text("".join(f'#include "{p}"\n' for p in sources))
    cmd = [CXX, "-fsyntax-only", f"-std={std}", "-fopenmp", "-I", str(ROOT / "csrc"),
           *[f"-isystem{d}" for d in info["include"]],
           "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
           f"-D_GLIBCXX_USE_CXX11_ABI={info['abi']}", f'-DKDK_TORCH_VERSION="{info["version"]}"',
           "-Wall", "-Werror=return-type", str(unity)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{std} with torch {info['version']} ({py}):\n{r.stderr[-6000:]}"
