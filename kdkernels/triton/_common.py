"""Pieces shared by the Triton kernels: accumulation types, tiles and autotune configs, partial
sums, the device guard, the elementwise math of the row losses (mirrors csrc/ops/cpu/vec_math.h)
and the registration of the ops.

Conventions of every kernel in this package (Liger-Kernel style):
- the forward kernel writes the loss and the gradient of the loss w.r.t. the student in one pass
  (in the input dtype); the registered backward (kdkernels.ops._registration, shared with the
  native ops) is one multiply by grad_output;
- loads are widened to ACC (float32, or float64 for float64 inputs) and all sums run in ACC;
- program ids are cast to int64 before any multiply by a stride or a row length;
- scalars (T, β, γ) are kernel float arguments, each split in a float32 pair hi + lo (split_f64):
  Triton passes Python floats as float32, and hi + lo summed in float64 restores them to ~1e-14
  for float64 inputs (for float32 ACC, hi + lo rounds back to hi). No scalar is copied from the
  host to the device, so a call never synchronises. The normaliser of "mean" (a weight or mask
  sum) is a device tensor computed with torch first, passed as its inverse (inverse_normaliser),
  and read by the kernel, which then writes the already-normalised gradient;
- launches run under device_guard(device of the inputs), so tensors on any GPU work;
- reductions are deterministic: partial sums written to a buffer, summed by torch (no atomics).
  A partial covers PART rows (or planes) with PART = smallest TILE of the kernel's configs //
  block along the reduced axis, whatever config runs: a program whose TILE is g times the
  smallest one writes g partials (store_partials). So every config writes every entry of the
  same buffer of cdiv(rows, PART) partials: when the autotuner benchmarks all configs on the
  call's buffers before the winner runs, nothing a config with a smaller tile wrote is left
  behind, and the sum runs over the same groups of rows whichever config won.
"""
from __future__ import annotations

import contextlib
import os
import struct

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

from .. import _native
from ..ops._registration import register_loss_autograd

# TRITON_INTERPRET=1 runs the kernels on the CPU through numpy (tests without a GPU). It is read
# once, when these modules are imported, like triton.jit itself does.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# TILE = elements per program (a BLOCK_R × BLOCK_K tile, BLOCK_R = TILE // BLOCK_K), with its
# num_warps. Chosen from ptxas register counts for sm_90 (no spills; the row kernel's exp/log
# temporaries need <= 8 elements per thread, the weighted MSE <= 16):
#   row kernel (fp32, ADL, grad): 512/4: 64 regs, 1024/8: 76, 2048/8: 108-171; 4096/8 spills.
# Every TILE is a power of two, so each is a multiple of the smallest (see store_partials).
_GPU_TILES = {
    "rows": ((512, 4), (1024, 4), (1024, 8), (2048, 8)),
    "mse": ((1024, 4), (2048, 4), (4096, 8)),
}
_INTERPRET_TILE = 4096  # one config: the interpreter's cost is per op, so few big programs.

# Largest block along the reduced axis (K classes / H·W pixels); longer rows loop over it (online
# softmax for K). Must stay <= the smallest TILE of the kernel. Tests lower it to exercise the loop
# on small shapes.
BLOCK_LIMITS = {"K": 512, "HW": 1024}


def gpu_configs(kind: str) -> list:
    """The autotune configs of the kernels of `kind` ("rows" | "mse") on a GPU."""
    return [triton.Config({"TILE": tile}, num_warps=warps) for tile, warps in _GPU_TILES[kind]]


def tile_configs(kind: str) -> list:
    if INTERPRET:
        return [triton.Config({"TILE": _INTERPRET_TILE}, num_warps=4)]
    return gpu_configs(kind)


def next_pow2(n) -> int:
    """Smallest power of two >= n (plain comparisons, so it also takes a SymInt)."""
    p = 1
    while p < n:
        p *= 2
    return p


def tiling(kernel, n, limit_key: str) -> tuple[int, int]:
    """(block along the reduced axis of length n, rows per partial sum) for an autotuned kernel:
    block = next power of two of n, at most BLOCK_LIMITS[limit_key]; part = the smallest TILE
    among the kernel's configs // block (the programs of that config hold `part` rows)."""
    block = min(next_pow2(n), BLOCK_LIMITS[limit_key])
    smallest = min(config.kwargs["TILE"] for config in kernel.configs)
    if block > smallest:
        raise ValueError(f"kdkernels.triton: BLOCK_LIMITS[{limit_key!r}] = {BLOCK_LIMITS[limit_key]} "
                         f"exceeds the smallest tile {smallest}")
    return block, smallest // block


def row_launch(kernel, R, K):
    """(block_k, part, num_partials, grid) of a row kernel over (R, K): BLOCK_K columns per step,
    TILE // BLOCK_K rows per program, one partial sum per `part` rows (see tiling)."""
    block_k, part = tiling(kernel, K, "K")

    def grid(meta):
        return (triton.cdiv(R, meta["TILE"] // block_k),)

    return block_k, part, triton.cdiv(R, part), grid


@triton.jit
def store_partials(values, pid, partial_ptr, num_partials, stride, offset,
                   N: tl.constexpr, PART: tl.constexpr):
    """Sums of `values` (N per-row values of program `pid`, 0 on rows past the end) over groups of
    PART consecutive rows: partial i of the tensor is at partial_ptr + i * stride + offset, and this
    program writes partials pid · N/PART ... (pid + 1) · N/PART − 1 (those < num_partials)."""
    G: tl.constexpr = N // PART
    sums = tl.sum(tl.reshape(values, [G, PART]), axis=1)
    index = pid * G + tl.arange(0, G)
    tl.store(partial_ptr + index * stride + offset, sums, mask=index < num_partials)


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A buffer that a launch writes completely: loss, gradient, partial sums (the tests fill it
    with NaN instead, to catch an element left unwritten by some config)."""
    return torch.empty(shape, dtype=dtype, device=device)


def loss_buffers(reduction: str, num_partials: int, out_shape, acc: torch.dtype, like: torch.Tensor):
    """(out, partials) of a loss launch: "none" writes its per-row (or per-element) losses to `out`
    (dtype of `like`) and gets a 1-element stand-in for partials; otherwise the kernel writes
    num_partials partial sums in `acc` and `out` is that same buffer (never read)."""
    partials = empty((num_partials if reduction != "none" else 1,), acc, like.device)
    out = empty(out_shape, like.dtype, like.device) if reduction == "none" else partials
    return out, partials


def finish_loss(reduction: str, out: torch.Tensor, partials: torch.Tensor, scale, grad: torch.Tensor,
                dtype: torch.dtype):
    """(loss, grad) after a launch: `out` for "none", else Σ partials × scale in `dtype`. scale:
    the mean's 1 / normaliser (a device tensor, so nothing waits for the GPU, or a number), or
    None for 1."""
    if reduction == "none":
        return out, grad
    total = partials.sum()
    if scale is not None:
        total = total * scale
    return total.to(dtype), grad


def device_guard(device: torch.device):
    """Context of a launch: the inputs' CUDA device is the current one while the kernel starts."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def inverse_normaliser(total: torch.Tensor, eps: float, scale=1) -> torch.Tensor:
    """1 / (scale · max(total, eps)) of "mean", or 0 where total == 0 exactly (an empty mask, all-zero
    weights): then the loss is 0 and the gradient 0 for every eps, also one such as 1e-300 that is
    0 in float32 (no 0/0). A device tensor: nothing waits for the GPU."""
    return torch.where(total == 0, 0.0, (total.clamp_min(eps) * scale).reciprocal())


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
# Registration. Each op is "kdkernels_triton::<name>" with the schema of the native op
# "kdkernels::<name>" (csrc/kdkernels.cpp, the one definition) and the autograd of
# kdkernels.ops._registration (the one backward of every fused backend). On a GPU the op is a
# torch.library.triton_op: torch.compile sees the kernel launches (through wrap_triton) and the fake
# kernel is the op body itself, where the launch is a no-op. Under TRITON_INTERPRET=1, wrap_triton
# hands back the raw interpreted kernel (it cannot be traced), so the op is an opaque
# torch.library.custom_op instead, with the op body as its fake kernel and the launch skipped on
# fake tensors (skip_launch): torch.compile(fullgraph=True) then keeps the op as one node and runs
# the interpreted kernels eagerly.

def native_schema(name: str) -> str:
    """"(...) -> (...)" of the native op kdkernels::<name>."""
    if not _native.HAS_NATIVE:
        raise ImportError("kdkernels.triton defines its ops with the schemas of the native ops, and the "
                          f"extension kdkernels._C did not load: {_native.NATIVE_ERROR}")
    schema = str(getattr(torch.ops.kdkernels, name).default._schema)
    prefix = f"kdkernels::{name}"
    if not schema.startswith(prefix + "("):
        raise RuntimeError(f"unexpected schema of {prefix}: {schema}")
    return schema[len(prefix):]


# True once define_loss_op fell back to opaque custom ops (torch <= 2.11 without a GPU trace).
OPAQUE_OPS = False


def define_loss_op(name: str):
    """Decorator: register fn (taking the native schema's arguments, returning (loss, grad_student))
    as op kdkernels_triton::<name>, with the shared autograd."""
    qualname = f"kdkernels_triton::{name}"

    def opaque(fn, schema):
        op = torch.library.custom_op(qualname, fn, mutates_args=(), schema=schema)
        op.register_fake(fn)
        return op

    def dec(fn):
        schema = native_schema(name)
        if INTERPRET:
            op = opaque(fn, schema)
        else:
            try:
                op = triton_op(qualname, fn, mutates_args=(), schema=schema)
            except ValueError:
                # torch <= 2.11's triton_op ignores `schema` and infers one from annotations, which
                # the ops do not have (it fails before registering anything): fall back to the
                # opaque custom op, so the kernels run there but Inductor does not trace into them.
                global OPAQUE_OPS
                OPAQUE_OPS = True
                op = opaque(fn, schema)
        register_loss_autograd(qualname)
        return op

    return dec


def skip_launch(t: torch.Tensor) -> bool:
    """True when a kernel must not run: an opaque op (interpreted kernels, or the torch <= 2.11
    fallback of define_loss_op) traced with fake tensors."""
    return (INTERPRET or OPAQUE_OPS) and is_fake(t)
