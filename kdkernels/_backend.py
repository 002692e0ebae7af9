"""Backend choice: set_backend(), use_backend(), env KDKERNELS_BACKEND; resolved per call by device.

auto: CUDA tensors → "cuda" kernel (→ "triton" when the extension was built without CUDA),
CPU tensors → "cpu" fused kernel, anything else (or no native build) → "reference".
"""
from __future__ import annotations

import contextlib
import contextvars
import os

from . import _native

BACKENDS = ("auto", "cpu", "triton", "cuda", "reference")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("kdkernels_backend", default=None)
_default: str | None = None


def _check(name, what="backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select the backend for every following call in this process (overrides KDKERNELS_BACKEND)."""
    global _default
    _default = _check(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: ``with kdkernels.use_backend("reference"): ...`` (thread- and task-local)."""
    token = _override.set(_check(name))
    try:
        yield
    finally:
        _override.reset(token)


def get_backend() -> str:
    """The requested backend name (may be "auto")."""
    name = _override.get() or _default
    if name is None:
        name = _check(os.environ.get("KDKERNELS_BACKEND", "auto"), "environment variable KDKERNELS_BACKEND")
    return name


def _triton_ok(device) -> bool:
    if _native.triton_version() is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve(device, op: str) -> str:
    """The concrete backend that runs `op` for tensors on `device`; raises if it cannot run there."""
    name = get_backend()
    if name == "auto":
        if device.type == "cuda":
            if _native.HAS_NATIVE_CUDA:
                return "cuda"
            return "triton" if _triton_ok(device) else "reference"
        if device.type == "cpu" and _native.HAS_NATIVE:
            return "cpu"
        return "reference"
    if name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device} ({op})")
        if not _native.HAS_NATIVE:
            raise RuntimeError(f"backend 'cpu' needs the compiled extension kdkernels._C, which did "
                               f"not load: {_native.NATIVE_ERROR}. Reinstall with `pip install .`")
    elif name == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend 'cuda' needs CUDA tensors, got tensors on {device} ({op})")
        if not _native.HAS_NATIVE_CUDA:
            raise RuntimeError("backend 'cuda' needs kdkernels._C built with CUDA; this build has "
                               f"{_native.build_info()['compiled_backends']}")
    elif name == "triton" and not _triton_ok(device):
        raise RuntimeError(f"backend 'triton' needs triton and CUDA tensors (or TRITON_INTERPRET=1 "
                           f"for CPU tensors); got tensors on {device}, triton "
                           f"{_native.triton_version() or 'not installed'} ({op})")
    return name
