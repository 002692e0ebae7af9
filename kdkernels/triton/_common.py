"""Pieces shared by the Triton kernels: accumulation types, tile limits, autotune configs, the
elementwise math of the row losses (mirrors csrc/ops/cpu/vec_math.h) and the autograd registration.

Conventions of every kernel in this package (Liger-Kernel style):
- the forward kernel writes the loss and the gradient of the loss w.r.t. the student in one pass
  (in the input dtype); the registered backward is one multiply by grad_output;
- loads are widened to ACC (float32, or float64 for float64 inputs) and all sums run in ACC;
- program ids are cast to int64 before any multiply by a stride or a row length;
- scalars (T, β, γ) are kernel float arguments, each split in a float32 pair hi + lo (split_f64):
  Triton passes Python floats as float32, and hi + lo summed in float64 restores them to ~1e-14
  for float64 inputs (for float32 ACC, hi + lo rounds back to hi). No scalar is copied from the
  host to the device, so a call never synchronises. The normaliser of "mean" (a weight or mask
  sum) is a device tensor computed with torch first and read by the kernel, which then writes
  the already-normalised gradient;
- reductions are deterministic: one partial sum per program written to a buffer, summed by torch
  (no atomics). The order depends on the tile size the autotuner picked for the shape.
"""
from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

# TRITON_INTERPRET=1 runs the kernels on the CPU through numpy (tests without a GPU). It is read
# once, when these modules are imported, like triton.jit itself does.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# TILE = elements per program (a BLOCK_R × BLOCK_K tile, BLOCK_R = TILE // BLOCK_K), with its
# num_warps. Chosen from ptxas register counts for sm_90 (no spills; the row kernel's exp/log
# temporaries need <= 8 elements per thread, the masked MSE <= 16):
#   row kernel (fp32, ADL, grad): 512/4: 64 regs, 1024/8: 76, 2048/8: 108-171; 4096/8 spills.
_GPU_TILES = {
    "rows": ((512, 4), (1024, 4), (1024, 8), (2048, 8)),
    "mse": ((1024, 4), (2048, 4), (4096, 8)),
}
_INTERPRET_TILE = 4096  # one config: the interpreter's cost is per op, so few big programs.

# Largest block along the reduced axis (K classes / H·W pixels); longer rows loop over it (online
# softmax for K). Must stay <= the smallest TILE of the kind. Tests lower it to exercise the loop
# on small shapes.
BLOCK_LIMITS = {"K": 512, "HW": 1024}
_KIND = {"K": "rows", "HW": "mse"}


def tile_configs(kind: str) -> list:
    if INTERPRET:
        return [triton.Config({"TILE": _INTERPRET_TILE}, num_warps=4)]
    return [triton.Config({"TILE": tile}, num_warps=warps) for tile, warps in _GPU_TILES[kind]]


def min_tile(kind: str) -> int:
    return _INTERPRET_TILE if INTERPRET else min(tile for tile, _ in _GPU_TILES[kind])


def next_pow2(n) -> int:
    """Smallest power of two >= n (plain comparisons, so it also takes a SymInt)."""
    p = 1
    while p < n:
        p *= 2
    return p


def block_along(n, limit_key: str) -> int:
    """Block along the reduced axis: next power of two of n, at most BLOCK_LIMITS[limit_key]."""
    block = min(next_pow2(n), BLOCK_LIMITS[limit_key])
    if block > min_tile(_KIND[limit_key]):
        raise ValueError(f"kdkernels.triton: BLOCK_LIMITS[{limit_key!r}] = {BLOCK_LIMITS[limit_key]} "
                         f"exceeds the smallest tile {min_tile(_KIND[limit_key])}")
    return block


def split_f64(value: float) -> tuple[float, float]:
    """value = hi + lo with hi, lo float32 values (Triton's type for Python float arguments)."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, value - hi


def acc_types(dtype: torch.dtype):
    """(torch accumulation dtype, triton accumulation dtype) for an input dtype."""
    if dtype == torch.float64:
        return torch.float64, tl.float64
    return torch.float32, tl.float32


# ----------------------------------------------------------------------------------------------
# Elementwise math (same formulas as csrc/ops/cpu/vec_math.h, without libdevice so that the
# interpreter and every GPU vendor run the same code).

@triton.jit
def softplus_sigmoid(x):
    """(softplus(x), sigmoid(x)) from the one exp(-|x|); log1p(e) as log(u)·e/(u − 1), u = 1 + e."""
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    du = u - 1.0
    log1p_e = tl.where(du == 0.0, e, tl.log(u) * (e / tl.where(du == 0.0, 1.0, du)))
    inv = 1.0 / u
    return tl.maximum(x, 0.0) + log1p_e, tl.where(x >= 0.0, inv, e * inv)


@triton.jit
def one_minus_exp_neg(d):
    """1 − exp(−d) for d >= 0; a 4-term series below 1e-3 (relative error < 1e-14 there)."""
    series = d * (1.0 - d * (0.5 - d * (1.0 / 6.0 - d * (1.0 / 24.0))))
    return tl.where(d < 1e-3, series, 1.0 - tl.exp(-d))


@triton.jit
def adaptive_weight(e, gamma):
    """ADL weight w = e^γ (γ = 0 → 1; e <= 1e-30 → 0 as on the CPU) and dw/de (0 where e == 0)."""
    pos = e > 1e-30
    w = tl.where(pos, tl.exp(gamma * tl.log(tl.where(pos, e, 1.0))), 0.0)
    w = tl.where(gamma == 0.0, 1.0, w)
    dw_de = tl.where(e > 0.0, gamma * w / tl.where(e > 0.0, e, 1.0), 0.0)
    return w, dw_de


# ----------------------------------------------------------------------------------------------
# Registration. On a GPU every op is a torch.library.triton_op: torch.compile sees the kernel
# launches (through wrap_triton) and the fake kernel is the op body itself, where the launch is a
# no-op. Under TRITON_INTERPRET=1, wrap_triton hands back the raw interpreted kernel (it cannot be
# traced), so the op is an opaque torch.library.custom_op instead, with the op body as its fake
# kernel and the launch skipped on fake tensors (skip_launch): torch.compile(fullgraph=True) then
# keeps the op as one node and runs the interpreted kernels eagerly.

def define_loss_op(qualname: str):
    """Decorator: register fn (returning (loss, grad_student)) as op `qualname` with its autograd."""

    def dec(fn):
        if INTERPRET:
            op = torch.library.custom_op(qualname, fn, mutates_args=())
            op.register_fake(fn)
        else:
            op = triton_op(qualname, fn, mutates_args=())
        register_grad_autograd(op, qualname)
        return op

    return dec


def skip_launch(t: torch.Tensor) -> bool:
    """True when a kernel must not run: interpreted kernels traced with fake tensors."""
    return INTERPRET and is_fake(t)


# ----------------------------------------------------------------------------------------------
# Autograd: every op returns (loss, grad_student) with grad_student = d loss / d student written by
# the forward kernel (an empty tensor when compute_grad=False).

def register_grad_autograd(op, qualname: str) -> None:
    """Backward of an op returning (loss, grad): grad · grad_output, per-row grad_output broadcast
    over the trailing dims; no gradient for any other input."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.num_inputs = len(inputs)
        ctx.student_numel = inputs[0].numel()

    def backward(ctx, grad_loss, _grad_of_grad):
        (grad,) = ctx.saved_tensors
        if grad.numel() != ctx.student_numel:
            raise RuntimeError(f"{qualname} was called with compute_grad=False; pass "
                               "compute_grad=True when the student needs a gradient")
        if grad_loss.dim() != 0:
            grad_loss = grad_loss.reshape(grad_loss.shape + (1,) * (grad.dim() - grad_loss.dim()))
        return (grad * grad_loss,) + (None,) * (ctx.num_inputs - 1)

    op.register_autograd(backward, setup_context=setup_context)


def needs_grad(student: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and student.requires_grad
