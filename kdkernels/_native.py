"""Loads the compiled extension kdkernels._C (which registers torch.ops.kdkernels.*) if present."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path

import torch

try:
    from . import _C  # noqa: F401  (registers the operators)
    NATIVE_ERROR = None
except ImportError as exc:  # source tree without a build, or an ABI mismatch
    _C = None
    NATIVE_ERROR = f"{type(exc).__name__}: {exc}"

HAS_NATIVE = _C is not None
HAS_NATIVE_CUDA = HAS_NATIVE and "cuda" in _C.build_info()["compiled_backends"]


def triton_version():
    """The installed triton's version (without importing it), or None."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


TRITON_VERSION = triton_version()
# TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (tests); triton reads it once at import too.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def build_info() -> dict:
    """What this installation contains: compiled backends, compiler, CPU vector ISA, versions."""
    from . import __version__
    info = {
        "kdkernels": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version(),
        "python": platform.python_version(),
        "native": HAS_NATIVE,
        "native_error": NATIVE_ERROR,
        "compiled_backends": [],
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if HAS_NATIVE:
        info.update(_C.build_info())
        meta = Path(_C.__file__).parent / "_build_meta.json"
        if meta.is_file():
            info.update(json.loads(meta.read_text()))
    return info


def cpu_buffer_cache_info() -> dict:
    """The cache of large CPU output buffers (the student gradients the CPU kernels write, and
    ``reduction="none"`` outputs, from 1 MiB up): ``limit_bytes`` (env ``KDKERNELS_CPU_CACHE_MB``,
    default 512 MiB), ``cached_bytes``/``cached_blocks`` (freed buffers kept, resident), ``hits``
    and ``misses`` (allocations served from it / newly mapped). Zeros without the native build.

    A freed gradient buffer is kept and handed to the next call of the same size, so a training
    loop does not page-fault a fresh multi-MB gradient every step; new buffers are 2 MiB aligned
    and advised for transparent huge pages.
    """
    if not HAS_NATIVE:
        return {"limit_bytes": 0, "cached_bytes": 0, "cached_blocks": 0, "hits": 0, "misses": 0}
    return dict(_C.cpu_buffer_cache_info())


def release_cpu_buffers() -> None:
    """Give every freed CPU output buffer kept by kdkernels back to the OS (see
    ``cpu_buffer_cache_info``); buffers still in use are returned to the OS when freed."""
    if HAS_NATIVE:
        _C.release_cpu_buffers()
