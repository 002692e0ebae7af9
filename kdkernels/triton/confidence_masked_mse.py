"""confidence_masked_mse on Triton: feature imitation inside the teacher-confident region.

  m[n,h,w]   = conf^power · [conf ≥ threshold]         (torch, N·H·W values, in ACC dtype)
  l[n,c,h,w] = m · (s − t)²
  mean: Σ l / (C · max(Σ m, eps)),  sum: Σ l,  none: l
  ∂loss/∂s   = 2 m (s − t) / norm                       (written by the forward kernel)

The mask and its sum are small (1/C of the features) and computed with torch first, so the kernel
writes the already-normalised gradient. Layout: the features are (N·C) planes of H·W pixels; each
program owns a BLOCK_P × BLOCK_HW tile (BLOCK_P planes, BLOCK_HW pixels of each), reads the mask
row of plane // C, and writes its partial sum (mean/sum) or the element losses (none).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _common
from ._common import define_loss_op, needs_grad

QUALNAME = "kdkernels_triton::confidence_masked_mse"


@triton.autotune(configs=_common.tile_configs("mse"),
                 key=["HW", "BLOCK_HW", "WRITE_OUT", "WRITE_GRAD"])
@triton.jit
def _masked_mse_kernel(
    s_ptr, t_ptr, m_ptr, norm_ptr, out_ptr, grad_ptr, partial_ptr,
    NC, C, HW,
    HAS_NORM: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_HW: tl.constexpr, TILE: tl.constexpr,
):
    BLOCK_P: tl.constexpr = TILE // BLOCK_HW
    pid_p = tl.program_id(0).to(tl.int64)
    pid_j = tl.program_id(1).to(tl.int64)
    planes = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # int64
    j = pid_j * BLOCK_HW + tl.arange(0, BLOCK_HW)
    m2 = (planes < NC)[:, None] & (j < HW)[None, :]
    off = planes[:, None] * HW + j[None, :]
    moff = (planes // C)[:, None] * HW + j[None, :]
    s = tl.load(s_ptr + off, mask=m2, other=0.0).to(ACC)
    t = tl.load(t_ptr + off, mask=m2, other=0.0).to(ACC)
    m = tl.load(m_ptr + moff, mask=m2, other=0.0).to(ACC)
    d = s - t
    md = m * d
    loss = md * d  # 0 on masked lanes
    if WRITE_OUT:
        tl.store(out_ptr + off, loss.to(out_ptr.dtype.element_ty), mask=m2)
    else:
        tl.store(partial_ptr + pid_p * tl.num_programs(1) + pid_j, tl.sum(tl.sum(loss, axis=1), axis=0))
    if WRITE_GRAD:
        if HAS_NORM:
            scale = 2.0 / tl.load(norm_ptr).to(ACC)
        else:
            scale = 2.0
        tl.store(grad_ptr + off, (scale * md).to(grad_ptr.dtype.element_ty), mask=m2)


@define_loss_op(QUALNAME)
def confidence_masked_mse_op(student: torch.Tensor, teacher: torch.Tensor, confidence: torch.Tensor,
                             threshold: float, power: float, reduction: str, eps: float,
                             compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) features, (N, H, W) confidence → (loss, grad_student); same schema as
    torch.ops.kdkernels.confidence_masked_mse."""
    N, C, H, W = student.shape
    HW = H * W
    acc, tl_acc = _common.acc_types(student.dtype)
    s = student.contiguous()
    t = teacher.contiguous()
    grad = torch.empty_like(s) if compute_grad else s.new_empty((0,))
    if s.numel() == 0:  # empty input: loss 0 (or an empty "none"), zero gradient
        if compute_grad:
            grad = torch.zeros_like(s)
        return (s.new_zeros(s.shape) if reduction == "none" else s.new_zeros(())), grad

    conf = confidence.reshape(N, HW).to(acc)
    mask = conf if power == 1.0 else conf.pow(power)
    mask = (mask * (conf >= threshold)).contiguous()
    # a device tensor, read by the kernel: nothing waits for the GPU
    norm = mask.sum().clamp_min(eps) * C if reduction == "mean" else None

    block_hw = _common.block_along(HW, "HW")
    grid_j = triton.cdiv(HW, block_hw)
    num_partials = triton.cdiv(N * C, _common.min_tile("mse") // block_hw) * grid_j
    partials = torch.zeros((num_partials,), dtype=acc, device=s.device)
    out = torch.empty_like(s) if reduction == "none" else partials

    def grid(meta):
        return (triton.cdiv(N * C, meta["TILE"] // block_hw), grid_j)

    if not _common.skip_launch(s):
        wrap_triton(_masked_mse_kernel)[grid](
            s, t, mask, norm if norm is not None else partials, out,
            grad if compute_grad else partials, partials, N * C, C, HW,
            HAS_NORM=norm is not None, WRITE_OUT=reduction == "none", WRITE_GRAD=compute_grad,
            ACC=tl_acc, BLOCK_HW=block_hw,
        )
    if reduction == "none":
        return out, grad
    total = partials.sum()
    if norm is not None:
        total = total / norm
    return total.to(s.dtype), grad


def confidence_masked_mse_triton(student: torch.Tensor, teacher: torch.Tensor, conf: torch.Tensor,
                                 threshold: float, power: float, reduction: str,
                                 eps: float) -> torch.Tensor:
    """Entry point of kdkernels.confidence_masked_mse for backend "triton" (inputs already
    validated): student/teacher (N, C, H, W), conf (N, H, W). Returns the loss in the input dtype."""
    loss, _ = confidence_masked_mse_op(student, teacher.detach(), conf.detach(), float(threshold),
                                       float(power), reduction, float(eps), needs_grad(student))
    return loss
