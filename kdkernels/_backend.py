"""Backend choice and the one table of backend → implementation.

A backend is picked per call from the tensors' device:
  - ``set_backend(name)`` (process-wide), ``with use_backend(name):`` (process-wide while the block
    runs; nestable), or the environment variable ``KDKERNELS_BACKEND`` (read once, at import);
  - "auto": CUDA tensors → "cuda" (→ "triton" when the extension was built without CUDA),
    CPU tensors → "cpu", anything else (or no native build) → "reference".

The choice is plain module state (no ContextVar or thread-local), so torch.compile guards on it
and recompiles when it changes, on every supported torch (Dynamo in torch <= 2.11 cannot trace
ContextVar.get). ``use_backend`` is therefore not thread-local: switch backends from one thread.

Every fused backend runs an op with the schema defined once in csrc/kdkernels.cpp; the table
``FUSED_NAMESPACE`` maps a backend to the torch.ops namespace holding its implementation.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import _native

BACKENDS = ("auto", "cpu", "triton", "cuda", "reference")
# backend → torch.ops namespace of its fused implementation ("reference" is plain PyTorch).
FUSED_NAMESPACE = {"cpu": "kdkernels", "cuda": "kdkernels", "triton": "kdkernels_triton"}


def _check(name, what="backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


class _State:
    """Module state read inside compiled regions (Dynamo guards on these attributes). Instance
    attributes from the start, so a switch back to an earlier state reuses its compiled code."""

    def __init__(self):
        self.default = _check(os.environ.get("KDKERNELS_BACKEND", "auto"),
                              "environment variable KDKERNELS_BACKEND")
        self.override = None


_STATE = _State()


def set_backend(name: str) -> None:
    """Select the backend for every following call in this process (overrides KDKERNELS_BACKEND)."""
    _STATE.default = _check(name)


@contextlib.contextmanager
def use_backend(name: str):
    """``with kdkernels.use_backend("reference"): ...`` — process-wide while the block runs."""
    previous = _STATE.override
    _STATE.override = _check(name)
    try:
        yield
    finally:
        _STATE.override = previous


def get_backend() -> str:
    """The requested backend name (may be "auto")."""
    return _STATE.override or _STATE.default


def _triton_runs_on(device_type: str) -> bool:
    if _native.TRITON_VERSION is None or not _native.HAS_NATIVE:  # the schemas live in kdkernels._C
        return False
    return device_type == "cuda" or _native.TRITON_INTERPRET


def available_backends(device) -> list[str]:
    """The concrete backends that can run the ops on tensors of `device` (str or torch.device),
    fastest first; "reference" always runs. Used by the ops, the tests, the benchmarks and the
    trainer's step bench."""
    device_type = torch.device(device).type
    names = []
    if device_type == "cuda" and _native.HAS_NATIVE_CUDA:
        names.append("cuda")
    if device_type == "cpu" and _native.HAS_NATIVE:
        names.append("cpu")
    if _triton_runs_on(device_type):
        names.append("triton")
    return names + ["reference"]


def resolve(device, op: str) -> str:
    """The concrete backend that runs `op` for tensors on `device`; raises if it cannot run there."""
    name = get_backend()
    if name == "auto":
        return available_backends(device)[0]
    if name == "reference" or name in available_backends(device):
        return name
    wrong_device = name in ("cpu", "cuda") and device.type != name
    raise (ValueError if wrong_device else RuntimeError)(_unavailable(name, device, op))


def _unavailable(name: str, device, op: str) -> str:
    if name in ("cpu", "cuda") and device.type != name:
        return f"kdkernels.{op}: backend {name!r} needs {name.upper()} tensors, got tensors on {device}"
    if name in ("cpu", "cuda"):
        return (f"kdkernels.{op}: backend {name!r} needs the compiled extension kdkernels._C with "
                f"{name.upper()} support; this build has {_native.build_info()['compiled_backends']} "
                f"({_native.NATIVE_ERROR or 'reinstall with `pip install .`'})")
    return (f"kdkernels.{op}: backend 'triton' needs triton, the compiled extension and CUDA tensors "
            f"(or TRITON_INTERPRET=1 for CPU tensors); got tensors on {device}, triton "
            f"{_native.TRITON_VERSION or 'not installed'}, native {_native.HAS_NATIVE}")


def fused_op(backend: str, op: str):
    """The torch.ops overload that runs `op` on a fused backend (see FUSED_NAMESPACE)."""
    if backend == "triton":
        from . import triton as _  # noqa: F401  (registers torch.ops.kdkernels_triton.*)
    return getattr(getattr(torch.ops, FUSED_NAMESPACE[backend]), op).default
