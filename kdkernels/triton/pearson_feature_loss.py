"""pearson_feature_loss on Triton: PKD (Cao et al. 2022; MMRazor PKDLoss), two passes.

Per channel c over its M = N·H·W values (math and gradient derivation: csrc/ops/pearson_feature_loss.h):
  pass 1 (_moments_kernel): the shifted sums Σu, Σv, Σu², Σv², Σuv, u = s − K_s, v = t − K_t with
          K the channel's first value (stable for channels whose mean is large against their std);
  stats (torch, C values): μ, a = 1/(σ_s + ε), b = 1/(σ_t + ε) (σ unbiased, ε = 1e-6), and the
          gradient coefficient p = a (a C_ss − b C_st) / ((M − 1) σ_s) (0 when σ_s = 0);
  pass 2 (_pass2_kernel): d = ŝ − t̂ = a·ds − b·dt elementwise, the partial sums of d² (the loss,
          exact even when ŝ ≈ t̂) and ∂loss/∂s = scale · a · (d − p · ds).
  mean: Σ d² / (2·N·C·H·W);  sum: Σ d² / 2;  none: per channel Σ d² / (2M), as (1, C, 1, 1).

Layout: each program owns TILE consecutive values of one channel (value m at plane n = m // HW,
pixel m % HW), so a program spans planes when H·W is small. The (n, c) planes must be contiguous
(any N and C strides; other layouts are copied). Grid (cdiv(M, TILE), C): C ≤ 65535. The partial
sums cover PART = the smallest TILE of the configs (see _common.store_partials), so every config
writes the same buffer and torch sums it in the same order: deterministic. Sums in ACC (float32,
float64 for float64 inputs); 64-bit offsets.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _common
from ._common import define_loss_op, store_partials

OP = "kdkernels.pearson_feature_loss"
EPS = 1e-6  # MMRazor's PKDLoss: (x − mean) / (std + 1e-6)
# (TILE, num_warps) on a GPU: TILE values of one channel per program (5 running sums in pass 1).
GPU_TILES = ((1024, 4), (2048, 4), (4096, 8))
# Channels with fewer values index them in int32 (tests lower it to run the int64 path).
INDEX32_LIMIT = 2**31


def gpu_configs() -> list:
    return [triton.Config({"TILE": tile}, num_warps=warps) for tile, warps in GPU_TILES]


def _configs() -> list:
    if _common.INTERPRET:
        return [triton.Config({"TILE": _common._INTERPRET_TILE}, num_warps=4)]
    return gpu_configs()


@triton.jit
def _channel_values(s_ptr, t_ptr, c, pid, HW, M, stride_sn, stride_sc, stride_tn, stride_tc,
                    ACC: tl.constexpr, INDEX32: tl.constexpr, TILE: tl.constexpr):
    """Values pid·TILE … of channel c (0 past M): (in_range, n, j, s, t), s and t in ACC.
    INDEX32 (M < 2³¹): the plane index n = m // HW in int32 division (int64 division is several
    times slower on GPUs); the offsets are int64 either way."""
    m = pid * TILE + tl.arange(0, TILE)  # int64 (pid is)
    valid = m < M
    if INDEX32:
        m32 = tl.where(valid, m, 0).to(tl.int32)
        n32 = m32 // HW
        n = n32.to(tl.int64)
        j = (m32 - n32 * HW).to(tl.int64)
    else:
        n = m // HW
        j = m - n * HW
    s = tl.load(s_ptr + n * stride_sn + c * stride_sc + j, mask=valid, other=0.0).to(ACC)
    t = tl.load(t_ptr + n * stride_tn + c * stride_tc + j, mask=valid, other=0.0).to(ACC)
    return valid, n, j, s, t


@triton.autotune(configs=_configs(), key=["M", "HW"])
@triton.jit
def _moments_kernel(
    s_ptr, t_ptr, partial_ptr, HW, M, stride_sn, stride_sc, stride_tn, stride_tc, num_parts,
    ACC: tl.constexpr, INDEX32: tl.constexpr, PART: tl.constexpr, TILE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    valid, n, j, s, t = _channel_values(s_ptr, t_ptr, c, pid, HW, M, stride_sn, stride_sc,
                                        stride_tn, stride_tc, ACC, INDEX32, TILE)
    ks = tl.load(s_ptr + c * stride_sc).to(ACC)  # the shifts: value 0 of the channel
    kt = tl.load(t_ptr + c * stride_tc).to(ACC)
    u = tl.where(valid, s - ks, 0.0)
    v = tl.where(valid, t - kt, 0.0)
    base = partial_ptr + c * 5 * num_parts  # partials (C, 5, num_parts)
    store_partials(u, pid, base, num_parts, 1, 0, TILE, PART)
    store_partials(v, pid, base, num_parts, 1, num_parts, TILE, PART)
    store_partials(u * u, pid, base, num_parts, 1, 2 * num_parts, TILE, PART)
    store_partials(v * v, pid, base, num_parts, 1, 3 * num_parts, TILE, PART)
    store_partials(u * v, pid, base, num_parts, 1, 4 * num_parts, TILE, PART)


@triton.autotune(configs=_configs(), key=["M", "HW", "WRITE_GRAD"])
@triton.jit
def _pass2_kernel(
    s_ptr, t_ptr, stats_ptr, grad_ptr, partial_ptr, C, HW, M, stride_sn, stride_sc, stride_tn,
    stride_tc, num_parts,
    WRITE_GRAD: tl.constexpr, ACC: tl.constexpr, INDEX32: tl.constexpr, PART: tl.constexpr,
    TILE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    valid, n, j, s, t = _channel_values(s_ptr, t_ptr, c, pid, HW, M, stride_sn, stride_sc,
                                        stride_tn, stride_tc, ACC, INDEX32, TILE)
    st = stats_ptr + c * 8  # (K_s, K_t, ū, v̄, a, b, p, scale·a) of channel c
    ds = (s - tl.load(st).to(ACC)) - tl.load(st + 2).to(ACC)
    dt = (t - tl.load(st + 1).to(ACC)) - tl.load(st + 3).to(ACC)
    d = tl.load(st + 4).to(ACC) * ds - tl.load(st + 5).to(ACC) * dt
    store_partials(tl.where(valid, d * d, 0.0), pid, partial_ptr + c * num_parts, num_parts, 1, 0,
                   TILE, PART)
    if WRITE_GRAD:
        g = tl.load(st + 7).to(ACC) * (d - tl.load(st + 6).to(ACC) * ds)
        tl.store(grad_ptr + (n * C + c) * HW + j, g.to(grad_ptr.dtype.element_ty), mask=valid)


def _plane_major(x: torch.Tensor) -> torch.Tensor:
    """x itself when each (n, c) plane of H·W pixels is contiguous, else a contiguous copy."""
    _, _, H, W = x.shape
    if (W == 1 or x.stride(3) == 1) and (H == 1 or x.stride(2) == W):
        return x
    return x.contiguous()


def channel_stats(sums: torch.Tensor, ks: torch.Tensor, kt: torch.Tensor, m: int, scale: float):
    """(C, 5) shifted sums → (C, 8): K_s, K_t, ū, v̄, a, b, p, scale·a (pearson_stats of
    csrc/ops/pearson_feature_loss.h, in the sums' dtype)."""
    su, sv, suu, svv, suv = sums.unbind(1)
    mean_u, mean_v = su / m, sv / m
    css = (suu - su * mean_u).clamp_min(0.0)  # rounding; NaN stays NaN
    ctt = (svv - sv * mean_v).clamp_min(0.0)
    cst = suv - su * mean_v
    dof = m - 1
    sigma_s, sigma_t = (css / dof).sqrt(), (ctt / dof).sqrt()
    a, b = (sigma_s + EPS).reciprocal(), (sigma_t + EPS).reciprocal()
    p = torch.where(sigma_s > 0, a * (a * css - b * cst) / (dof * sigma_s), 0.0)
    return torch.stack([ks, kt, mean_u, mean_v, a, b, p, a * scale], dim=1).contiguous()


def _part(kernel) -> int:
    """Values per partial sum: the smallest TILE among the kernel's configs."""
    return min(config.kwargs["TILE"] for config in kernel.configs)


@define_loss_op("pearson_feature_loss")
def pearson_feature_loss(student, teacher, reduction, compute_grad):
    """(N, C, H, W) features → (loss: () or (1, C, 1, 1) for "none", grad_student); the schema of
    torch.ops.kdkernels.pearson_feature_loss."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{OP}: reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    N, C, H, W = student.shape
    HW, M = H * W, N * H * W
    if M < 2:
        raise ValueError(f"{OP}: student must hold at least 2 values per channel (N·H·W >= 2) for "
                         f"the unbiased standard deviation, got shape {tuple(student.shape)}")
    acc, tl_acc = _common.acc_types(student.dtype)
    numel = N * C * HW
    scale = 1.0 / numel if reduction == "mean" and numel else (1.0 / M if reduction == "none" else 1.0)
    s = _plane_major(student)
    t = _plane_major(teacher)
    grad = _common.empty(s.shape, s.dtype, s.device) if compute_grad else s.new_empty((0,))
    part = _part(_moments_kernel)
    assert part == _part(_pass2_kernel), "the two kernels must share their smallest TILE"
    num_parts = triton.cdiv(M, part)
    moments = _common.empty((C, 5, num_parts), acc, s.device)
    sq = _common.empty((C, num_parts), acc, s.device)
    launch = C > 0 and not _common.skip_launch(s)
    index32 = M < INDEX32_LIMIT  # the channel's value index m (< M where loaded) fits in int32

    def grid(meta):
        return (triton.cdiv(M, meta["TILE"]), C)

    if launch:
        with _common.device_guard(s.device):
            wrap_triton(_moments_kernel)[grid](
                s, t, moments, HW, M, s.stride(0), s.stride(1), t.stride(0), t.stride(1),
                num_parts, ACC=tl_acc, INDEX32=index32, PART=part)
    stats = channel_stats(moments.sum(-1), s[0, :, 0, 0].to(acc), t[0, :, 0, 0].to(acc), M, scale)
    if launch:
        with _common.device_guard(s.device):
            wrap_triton(_pass2_kernel)[grid](
                s, t, stats, grad if compute_grad else sq, sq, C, HW, M, s.stride(0), s.stride(1),
                t.stride(0), t.stride(1), num_parts, WRITE_GRAD=compute_grad, ACC=tl_acc,
                INDEX32=index32, PART=part)
    losses = sq.sum(-1)  # (C,): Σ d² per channel
    if reduction == "none":
        return (losses / (2 * M)).to(s.dtype).reshape(1, C, 1, 1), grad
    total = losses.sum() / 2
    if reduction == "mean":  # no channels: 0 / 0 = NaN, as torch's mean of an empty tensor
        total = total / numel if numel else total * float("nan")
    return total.to(s.dtype), grad
