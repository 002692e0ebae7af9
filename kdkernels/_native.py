"""Loads the compiled extension kdkernels._C (which registers torch.ops.kdkernels.*) if present."""
from __future__ import annotations

import json
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
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001 - any import failure means "no triton"
        return None


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
