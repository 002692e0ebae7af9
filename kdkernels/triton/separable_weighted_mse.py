"""separable_weighted_mse on Triton: feature MSE weighted by a spatial map times a channel weight
(FGD's term; confidence_masked_mse runs it with its mask as the spatial weight).

  w[n,c,h,w]  = w_s[n,h,w] · w_c[n,c]                   (w_c = 1 without channel weights)
  l[n,c,h,w]  = w · (s − t)² where w ≠ 0, else 0         (0 whatever s, t where the weight is 0)
  mean: Σ l / (C · max(Σ w_s, eps)), 0 when Σ w_s == 0;  sum: Σ l;  none: l
  ∂loss/∂s    = 2 w (s − t) / norm where w ≠ 0, else 0   (written by the forward kernel)

A NaN weight is kept (NaN ≠ 0) and propagates. The spatial weight (1/C of the features) is made a
contiguous ACC tensor and summed with torch first, so the kernel writes the already-normalised
gradient. Layout: the features are (N·C) planes of H·W pixels, each plane contiguous (any N and C
strides, e.g. a channel slice; other layouts are copied); each program owns a BLOCK_P × BLOCK_HW
tile (BLOCK_P planes, BLOCK_HW pixels of each), reads the spatial-weight row of plane // C and the
channel weight of each plane (with its strides), and writes its partial sums (mean/sum) or the
element losses (none). Loss and gradient are written contiguous (N, C, H, W).
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
def _separable_mse_kernel(
    s_ptr, t_ptr, ws_ptr, wc_ptr, inv_norm_ptr, out_ptr, grad_ptr, partial_ptr,
    NC, C, HW, stride_sn, stride_sc, stride_tn, stride_tc, stride_wn, stride_wc, num_part_p,
    HAS_CW: tl.constexpr, HAS_NORM: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_GRAD: tl.constexpr,
    ACC: tl.constexpr, BLOCK_HW: tl.constexpr, PART: tl.constexpr, TILE: tl.constexpr,
):
    BLOCK_P: tl.constexpr = TILE // BLOCK_HW
    pid_p = tl.program_id(0).to(tl.int64)
    pid_j = tl.program_id(1).to(tl.int64)
    planes = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # int64
    in_planes = planes < NC
    j = (pid_j * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
    m2 = in_planes[:, None] & (j < HW)
    n = planes // C
    c = planes - n * C
    s = tl.load(s_ptr + (n * stride_sn + c * stride_sc)[:, None] + j, mask=m2, other=0.0).to(ACC)
    t = tl.load(t_ptr + (n * stride_tn + c * stride_tc)[:, None] + j, mask=m2, other=0.0).to(ACC)
    w = tl.load(ws_ptr + (n * HW)[:, None] + j, mask=m2, other=0.0).to(ACC)
    if HAS_CW:
        cw = tl.load(wc_ptr + n * stride_wn + c * stride_wc, mask=in_planes, other=0.0).to(ACC)
        w = w * cw[:, None]
    keep = w != 0.0  # true for NaN
    d = tl.where(keep, s - t, 0.0)  # a zero-weight element adds exactly 0, even with s or t inf/NaN
    wd = w * d
    loss = wd * d
    off = planes[:, None] * HW + j
    if WRITE_OUT:
        tl.store(out_ptr + off, loss.to(out_ptr.dtype.element_ty), mask=m2)
    else:
        store_partials(tl.sum(loss, axis=1), pid_p, partial_ptr, num_part_p, tl.num_programs(1), pid_j,
                       BLOCK_P, PART)
    if WRITE_GRAD:
        if HAS_NORM:  # 1 / norm of "mean", 0 for an all-zero spatial weight
            scale = 2.0 * tl.load(inv_norm_ptr).to(ACC)
        else:
            scale = 2.0
        tl.store(grad_ptr + off, (scale * wd).to(grad_ptr.dtype.element_ty), mask=m2)


def _plane_major(x: torch.Tensor) -> torch.Tensor:
    """x itself when each (n, c) plane of H·W pixels is contiguous (any N and C strides: slices,
    storage offsets, an expanded batch), else a contiguous copy (e.g. channels_last)."""
    _, _, H, W = x.shape
    if (W == 1 or x.stride(3) == 1) and (H == 1 or x.stride(2) == W):
        return x
    return x.contiguous()


@define_loss_op("separable_weighted_mse")
def separable_weighted_mse(student, teacher, spatial_weight, channel_weight, reduction, eps, compute_grad):
    """(N, C, H, W) features, N·H·W spatial weights, None or (N, C) channel weights →
    (loss, grad_student); the schema of torch.ops.kdkernels.separable_weighted_mse."""
    N, C, H, W = student.shape
    HW = H * W
    acc, tl_acc = _common.acc_types(student.dtype)
    if student.numel() == 0:  # empty input: loss 0 (or an empty "none"), zero gradient
        grad = student.new_zeros(student.shape) if compute_grad else student.new_empty((0,))
        return (student.new_zeros(student.shape) if reduction == "none" else student.new_zeros(())), grad
    s = _plane_major(student)
    t = _plane_major(teacher)
    grad = _common.empty(s.shape, s.dtype, s.device) if compute_grad else s.new_empty((0,))
    ws = spatial_weight.reshape(N * HW).to(acc).contiguous()  # no copy for the confidence mask
    inv_norm = _common.inverse_normaliser(ws.sum(), eps, C) if reduction == "mean" else None
    wc = channel_weight

    block_hw, part = _common.tiling(_separable_mse_kernel, HW, "HW")
    grid_j = triton.cdiv(HW, block_hw)
    num_part_p = triton.cdiv(N * C, part)
    out, partials = _common.loss_buffers(reduction, num_part_p * grid_j, s.shape, acc, s)

    def grid(meta):
        return (triton.cdiv(N * C, meta["TILE"] // block_hw), grid_j)

    if not _common.skip_launch(s):
        with _common.device_guard(s.device):
            wrap_triton(_separable_mse_kernel)[grid](
                s, t, ws, wc if wc is not None else ws, inv_norm if inv_norm is not None else partials,
                out, grad if compute_grad else partials, partials, N * C, C, HW,
                s.stride(0), s.stride(1), t.stride(0), t.stride(1),
                wc.stride(0) if wc is not None else 0, wc.stride(1) if wc is not None else 0, num_part_p,
                HAS_CW=wc is not None, HAS_NORM=inv_norm is not None, WRITE_OUT=reduction == "none",
                WRITE_GRAD=compute_grad, ACC=tl_acc, BLOCK_HW=block_hw, PART=part,
            )
    return _common.finish_loss(reduction, out, partials, inv_norm, grad, s.dtype)
