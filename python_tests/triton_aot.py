"""Compile Triton kernels through Triton's NVIDIA pipeline (TTIR → PTX → cubin with the ptxas of the
triton wheel) on a machine without a GPU: catches what the interpreter lets through (types, layouts,
register limits). Each test passes the body of a script that calls `build(kernel, signature,
constexprs, num_warps)` for the configurations it wants compiled and prints "ok" at the end."""
import os
import subprocess
import sys

import pytest

import kdkernels

PREAMBLE = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
target = GPUTarget("cuda", 90, 32)

def build(kernel, sig, consts, warps):
    assert not type(kernel.fn).__name__.startswith("Interpreted")
    sig = dict(sig, **{k: "constexpr" for k in consts})
    src = triton.compiler.ASTSource(kernel.fn, sig, consts)
    assert "cubin" in triton.compile(src, target=target, options={"num_warps": warps}).asm
"""


def compile_for_sm90(body: str, timeout: int = 300) -> None:
    """Run PREAMBLE + body in a fresh interpreter without TRITON_INTERPRET; skip without triton's
    NVIDIA backend; fail with the script's stderr unless it ends by printing "ok"."""
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(kdkernels.__file__)))
    proc = subprocess.run([sys.executable, "-c", PREAMBLE + body], env=env, cwd=root,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
