"""confidence_masked_mse on Triton: feature imitation inside the teacher-confident region.

  keep[n,h,w] = not (conf < threshold)                  (NaN confidence: kept, see docs/METHOD.md §4)
  m[n,h,w]    = conf^power where kept, else 0           (torch, N·H·W values, in ACC dtype)
  (conf, threshold and conf^power in ACC, as in the reference and the native kernels)
  l[n,c,h,w]  = m · (s − t)² where kept, else 0         (0 whatever s, t at a masked-out pixel)
  mean: Σ l / (C · max(Σ m, eps)), 0 when Σ m == 0;  sum: Σ l;  none: l
  ∂loss/∂s    = 2 m (s − t) / norm where kept, else 0   (written by the forward kernel)

The mask and its sum are small (1/C of the features) and computed with torch first, so the kernel
writes the already-normalised gradient. Layout: the features are (N·C) planes of H·W pixels, each
plane contiguous (any N and C strides, e.g. a channel slice; other layouts are copied); each
program owns a BLOCK_P × BLOCK_HW tile (BLOCK_P planes, BLOCK_HW pixels of each), reads the mask
row of plane // C, and writes its partial sums (mean/sum) or the element losses (none). Loss and
gradient are written contiguous (N, C, H, W).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _common
from ._common import define_loss_op, store_partials


@triton.autotune(configs=_common.tile_configs("mse"),
                 key=["HW", "BLOCK_HW", "WRITE_OUT", "WRITE_GRAD"])
@triton.jit
def _masked_mse_kernel(
    s_ptr, t_ptr, m_ptr, keep_ptr, inv_norm_ptr, out_ptr, grad_ptr, partial_ptr,
    NC, C, HW, stride_sn, stride_sc, stride_tn, stride_tc, num_part_p,
    HAS_NORM: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_HW: tl.constexpr, PART: tl.constexpr, TILE: tl.constexpr,
):
    BLOCK_P: tl.constexpr = TILE // BLOCK_HW
    pid_p = tl.program_id(0).to(tl.int64)
    pid_j = tl.program_id(1).to(tl.int64)
    planes = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # int64
    j = (pid_j * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
    m2 = (planes < NC)[:, None] & (j < HW)
    n = planes // C
    c = planes - n * C
    s = tl.load(s_ptr + (n * stride_sn + c * stride_sc)[:, None] + j, mask=m2, other=0.0).to(ACC)
    t = tl.load(t_ptr + (n * stride_tn + c * stride_tc)[:, None] + j, mask=m2, other=0.0).to(ACC)
    moff = (n * HW)[:, None] + j
    m = tl.load(m_ptr + moff, mask=m2, other=0.0).to(ACC)  # 0 where masked out
    keep = tl.load(keep_ptr + moff, mask=m2, other=0) != 0
    d = tl.where(keep, s - t, 0.0)  # a masked-out pixel adds exactly 0, even with s or t inf/NaN
    md = m * d
    loss = md * d
    off = planes[:, None] * HW + j
    if WRITE_OUT:
        tl.store(out_ptr + off, loss.to(out_ptr.dtype.element_ty), mask=m2)
    else:
        store_partials(tl.sum(loss, axis=1), pid_p, partial_ptr, num_part_p, tl.num_programs(1), pid_j,
                       BLOCK_P, PART)
    if WRITE_GRAD:
        if HAS_NORM:  # 1 / norm of "mean", 0 for an empty mask
            scale = 2.0 * tl.load(inv_norm_ptr).to(ACC)
        else:
            scale = 2.0
        tl.store(grad_ptr + off, (scale * md).to(grad_ptr.dtype.element_ty), mask=m2)


def _mask(conf: torch.Tensor, threshold: float, power: float, acc: torch.dtype):
    """(keep, m) for a confidence of any float dtype, in ACC as the reference and the native
    kernels compute it: c = conf in ACC, keep = not (c < threshold) (threshold rounded to ACC),
    m = c^power where kept, else exactly 0 (also where c^power is inf or NaN)."""
    c = conf.to(acc)
    keep = (c < threshold).logical_not_()
    m = torch.where(keep, c if power == 1.0 else c.pow(power), 0.0)
    return keep.contiguous(), m.contiguous()


def _plane_major(x: torch.Tensor) -> torch.Tensor:
    """x itself when each (n, c) plane of H·W pixels is contiguous (any N and C strides: slices,
    storage offsets, an expanded batch), else a contiguous copy (e.g. channels_last)."""
    _, _, H, W = x.shape
    if (W == 1 or x.stride(3) == 1) and (H == 1 or x.stride(2) == W):
        return x
    return x.contiguous()


@define_loss_op("confidence_masked_mse")
def confidence_masked_mse(student, teacher, confidence, threshold, power, reduction, eps, compute_grad):
    """(N, C, H, W) features, N·H·W confidences → (loss, grad_student); the schema of
    torch.ops.kdkernels.confidence_masked_mse."""
    N, C, H, W = student.shape
    HW = H * W
    acc, tl_acc = _common.acc_types(student.dtype)
    if student.numel() == 0:  # empty input: loss 0 (or an empty "none"), zero gradient
        grad = student.new_zeros(student.shape) if compute_grad else student.new_empty((0,))
        return (student.new_zeros(student.shape) if reduction == "none" else student.new_zeros(())), grad
    s = _plane_major(student)
    t = _plane_major(teacher)
    grad = _common.empty(s.shape, s.dtype, s.device) if compute_grad else s.new_empty((0,))
    keep, mask = _mask(confidence.reshape(N, HW), threshold, power, acc)
    inv_norm = _common.inverse_normaliser(mask.sum(), eps, C) if reduction == "mean" else None

    block_hw, part = _common.tiling(_masked_mse_kernel, HW, "HW")
    grid_j = triton.cdiv(HW, block_hw)
    num_part_p = triton.cdiv(N * C, part)
    partials = _common.empty((num_part_p * grid_j if reduction != "none" else 1,), acc, s.device)
    out = _common.empty(s.shape, s.dtype, s.device) if reduction == "none" else partials

    def grid(meta):
        return (triton.cdiv(N * C, meta["TILE"] // block_hw), grid_j)

    if not _common.skip_launch(s):
        with _common.device_guard(s.device):
            wrap_triton(_masked_mse_kernel)[grid](
                s, t, mask, keep, inv_norm if inv_norm is not None else partials, out,
                grad if compute_grad else partials, partials, N * C, C, HW,
                s.stride(0), s.stride(1), t.stride(0), t.stride(1), num_part_p,
                HAS_NORM=inv_norm is not None, WRITE_OUT=reduction == "none", WRITE_GRAD=compute_grad,
                ACC=tl_acc, BLOCK_HW=block_hw, PART=part,
            )
    if reduction == "none":
        return out, grad
    total = partials.sum()
    if inv_norm is not None:
        total = total * inv_norm
    return total.to(s.dtype), grad
