"""CMakeLists.txt stays a working build of the same sources (CPU unit), loadable by Python."""
import os
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
