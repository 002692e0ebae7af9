"""Build of kdkernels._C: the fused CPU kernels always, the CUDA unit when a CUDA toolkit is found.

One build, described twice only in syntax: this file (torch.utils.cpp_extension + ninja, what
`pip install .` runs) and CMakeLists.txt (the same sources and flags, for C++ IDEs and CMake users).
Why cpp_extension drives the pip build: README.md, section "Build".

Environment:
  KDKERNELS_CUDA=0|1     force the CUDA unit off / on (default: on when a toolkit is found)
  CUDA_HOME              toolkit folder holding include/cuda.h (default: found from nvcc)
  TORCH_CUDA_ARCH_LIST   default "8.0;9.0+PTX"
  KDKERNELS_MARCH_NATIVE=1  add -march=native (not portable; off by default)
"""
import json
import os
import shutil
import time
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def find_cuda_home():
    """The toolkit folder (with include/cuda.h), or None. nvcc may be a wrapper outside it."""
    if os.environ.get("KDKERNELS_CUDA") == "0":
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        for exe in (Path(nvcc), Path(nvcc).resolve()):
            prefix = exe.parent.parent
            candidates += [prefix, prefix / "cuda", *sorted(prefix.glob("cuda-*"), reverse=True)]
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "include" / "cuda.h").is_file() and (Path(c) / "bin" / "nvcc").exists():
            return str(Path(c))
    return None


CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # read by torch.utils.cpp_extension at import
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

WITH_CUDA = bool(CUDA_HOME) and torch.version.cuda is not None
if os.environ.get("KDKERNELS_CUDA") == "1" and not WITH_CUDA:
    raise RuntimeError("KDKERNELS_CUDA=1 but no CUDA toolkit (include/cuda.h + bin/nvcc) was found "
                       "or torch is a CPU-only build; set CUDA_HOME")


def sources():
    cpp = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc").glob("*.cpp"))]
    cpp += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc/ops/cpu").glob("*.cpp"))]
    cu = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc/ops/cuda").glob("*.cu"))]
    return cpp, cu


def extension():
    cpp, cu = sources()
    # -fopenmp: at::parallel_for is inline and only runs threads when compiled with OpenMP (the
    # library resolves to the libgomp torch already loaded). -fno-trapping-math lets GCC if-convert
    # the branch-free exp/log (without it the sigmoid loops stay scalar).
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
           f'-DKDK_TORCH_VERSION="{torch.__version__}"']
    if os.environ.get("KDKERNELS_MARCH_NATIVE") == "1":
        cxx.append("-march=native")
    if WITH_CUDA:
        nvcc = ["-O3", "--use_fast_math", "-lineinfo", "-DKDK_WITH_CUDA"]
        return CUDAExtension("kdkernels._C", cpp + cu, include_dirs=[str(ROOT / "csrc")],
                             extra_compile_args={"cxx": cxx + ["-DKDK_WITH_CUDA"], "nvcc": nvcc},
                             extra_link_args=["-fopenmp"])
    return CppExtension("kdkernels._C", cpp, include_dirs=[str(ROOT / "csrc")],
                        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


class TimedBuild(BuildExtension):
    """Prints the build time and leaves kdkernels/_build_meta.json beside the library."""

    def build_extensions(self):
        start = time.perf_counter()
        super().build_extensions()
        seconds = time.perf_counter() - start
        print(f"kdkernels: native build took {seconds:.1f} s "
              f"(CUDA unit: {'yes, ' + CUDA_HOME if WITH_CUDA else 'no'})", flush=True)
        for ext in self.extensions:
            meta = Path(self.get_ext_fullpath(ext.name)).parent / "_build_meta.json"
            meta.write_text(json.dumps({
                "build_seconds": round(seconds, 1),
                "cuda_home": CUDA_HOME if WITH_CUDA else None,
                "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
                "cxx_flags": ext.extra_compile_args["cxx"],
            }, indent=1))


setup(
    # KDKERNELS_SKIP_EXT=1: package only (scripts/setup_env.sh then builds the extension in place)
    ext_modules=[] if os.environ.get("KDKERNELS_SKIP_EXT") == "1" else [extension()],
    cmdclass={"build_ext": TimedBuild.with_options(use_ninja=True)},
)
