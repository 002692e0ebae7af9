"""decoupled_kd on Triton: DKD row = T² (α TCKD + β NCKD), with the student gradient, in one launch.

Same math as csrc/ops/decoupled_kd.h. On tempered logits a = t/T, b = s/T of a row with target g:
  L_a = log Σ_{k≠g} exp(a_k) (L_b likewise),  NCKD = Σ_{k≠g} p̂_k (a_k − b_k) + L_b − L_a,
  TCKD = Bernoulli KL(σ(u_t) ‖ σ(u_s)) with u_t = a_g − L_a, u_s = b_g − L_b,
  ∂/∂b_k = (β − α δ) q̂_k − β p̂_k (k ≠ g),  ∂/∂b_g = α δ,  δ = σ(u_s) − σ(u_t).
The target never enters a sum, so a dominant target logit neither overflows nor cancels.

Layout: each program owns BLOCK_R rows and walks K in BLOCK_K columns twice: pass 1 keeps the
non-target running max and rescaled sums (online softmax), pass 2 writes the gradient. A label
outside [0, K) gives that row a NaN loss and gradient (the public op asserts the range first).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _common
from ._common import define_loss_op, softplus_sigmoid, store_partials
from ._row_losses import _load_tempered, _store_grad


@triton.jit
def _dkd_sums(t_row, s_row, g, rmask, K, inv_t, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """Pass 1: non-target max and rescaled Σexp(a), Σexp(b), Σexp(a)·(a − b) per row."""
    ma = tl.full([BLOCK_R], float("-inf"), ACC)
    mb = tl.full([BLOCK_R], float("-inf"), ACC)
    za = tl.zeros([BLOCK_R], ACC)
    zb = tl.zeros([BLOCK_R], ACC)
    d = tl.zeros([BLOCK_R], ACC)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        a, b = _load_tempered(t_row, s_row, cols, rmask[:, None] & cmask[None, :], inv_t, ACC)
        other = cmask[None, :] & (cols[None, :] != g[:, None])
        am = tl.where(other, a, float("-inf"))
        bm = tl.where(other, b, float("-inf"))
        ma_new = tl.maximum(ma, tl.max(am, axis=1))
        mb_new = tl.maximum(mb, tl.max(bm, axis=1))
        x = tl.exp(am - ma_new[:, None])
        ca = tl.exp(ma - ma_new)  # 0 on the first block (ma = -inf)
        za = za * ca + tl.sum(x, axis=1)
        d = d * ca + tl.sum(tl.where(other, x * (a - b), 0.0), axis=1)
        zb = zb * tl.exp(mb - mb_new) + tl.sum(tl.exp(bm - mb_new[:, None]), axis=1)
        ma = ma_new
        mb = mb_new
    return ma, mb, za, zb, d


@triton.jit
def _dkd_grad_pass(t_row, s_row, g_row, g, rmask, K, inv_t, ma, mb, gq, gp, g_target,
                   ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pass 2: gq·exp(b − m_b) − gp·exp(a − m_a) off the target, α G δ on it."""
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        m2 = rmask[:, None] & (cols < K)[None, :]
        a, b = _load_tempered(t_row, s_row, cols, m2, inv_t, ACC)
        gr = gq[:, None] * tl.exp(b - mb[:, None]) - gp[:, None] * tl.exp(a - ma[:, None])
        _store_grad(g_row, cols, m2, tl.where(cols[None, :] == g[:, None], g_target[:, None], gr))


@triton.autotune(configs=_common.tile_configs("rows"), key=["K", "BLOCK_K", "MEAN", "WRITE_GRAD", "WRITE_ROWS"])
@triton.jit
def _dkd_kernel(
    s_ptr, t_ptr, y_ptr, out_ptr, grad_ptr, partial_ptr,
    R, K, stride_s, stride_t, num_partials,
    temp_hi, temp_lo, alpha_hi, alpha_lo, beta_hi, beta_lo,
    MEAN: tl.constexpr, WRITE_ROWS: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_K: tl.constexpr, PART: tl.constexpr, TILE: tl.constexpr,
):
    BLOCK_R: tl.constexpr = TILE // BLOCK_K
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # int64
    rmask = rows < R
    s_row = s_ptr + rows * stride_s
    t_row = t_ptr + rows * stride_t
    temp = tl.cast(temp_hi, ACC) + tl.cast(temp_lo, ACC)  # see _common.split_f64
    alpha = tl.cast(alpha_hi, ACC) + tl.cast(alpha_lo, ACC)
    beta = tl.cast(beta_hi, ACC) + tl.cast(beta_lo, ACC)
    if MEAN:  # gradient scale: T / B ("mean") or T
        G = temp / tl.cast(R, ACC)
    else:
        G = temp
    inv_t = 1.0 / temp
    g = tl.load(y_ptr + rows, mask=rmask, other=0)
    valid = (g >= 0) & (g < K)
    gc = tl.where(valid, g, 0)

    ma, mb, za, zb, d = _dkd_sums(t_row, s_row, g, rmask, K, inv_t, ACC, BLOCK_R, BLOCK_K)
    ag = tl.load(t_row + gc, mask=rmask, other=0.0).to(ACC) * inv_t
    bg = tl.load(s_row + gc, mask=rmask, other=0.0).to(ACC) * inv_t
    ag = tl.where(valid, ag, float("nan"))
    la = ma + tl.log(za)
    lb = mb + tl.log(zb)
    ut = ag - la
    us = bg - lb
    sp_t, p_t = softplus_sigmoid(ut)
    sp_s, q_s = softplus_sigmoid(us)
    tckd = p_t * (ut - us) + sp_s - sp_t
    nckd = d / za + lb - la
    v = (temp * temp) * (alpha * tckd + beta * nckd)
    if WRITE_GRAD:
        poison = v * 0.0  # a NaN/±inf row loss makes the row's gradient NaN (decoupled_kd.h)
        delta = q_s - p_t + poison
        _dkd_grad_pass(t_row, s_row, grad_ptr + rows * K, g, rmask, K, inv_t, ma, mb,
                       G * (beta - alpha * delta) / zb + poison, G * beta / za + poison,
                       G * alpha * delta, ACC, BLOCK_K)
    if WRITE_ROWS:
        tl.store(out_ptr + rows, v.to(out_ptr.dtype.element_ty), mask=rmask)
    else:
        store_partials(tl.where(rmask, v, 0.0), pid, partial_ptr, num_partials, 1, 0, BLOCK_R, PART)


@define_loss_op("decoupled_kd")
def decoupled_kd(student_logits, teacher_logits, labels, temperature, alpha, beta, reduction, compute_grad):
    """(B, K) logits, (B,) int64 labels → (loss, grad_student); the schema of
    torch.ops.kdkernels.decoupled_kd. loss: () for mean/sum, (B,) for none, input dtype."""
    s, t = student_logits, teacher_logits
    R, K = s.shape
    acc, tl_acc = _common.acc_types(s.dtype)
    if s.stride(1) != 1:
        s = s.contiguous()
    if t.stride(1) != 1:
        t = t.contiguous()
    labels = labels.contiguous()
    grad = _common.empty((R, K), s.dtype, s.device) if compute_grad else s.new_empty((0,))
    if R == 0:  # "mean" of no rows is 0, like the other row losses
        return s.new_zeros((0,) if reduction == "none" else ()), grad
    block_k, part, num_partials, grid = _common.row_launch(_dkd_kernel, R, K)
    out, partials = _common.loss_buffers(reduction, num_partials, (R,), acc, s)

    if not _common.skip_launch(s):
        with _common.device_guard(s.device):
            wrap_triton(_dkd_kernel)[grid](
                s, t, labels, out, grad if compute_grad else partials, partials,
                R, K, s.stride(0), t.stride(0), num_partials,
                *_common.split_f64(float(temperature)), *_common.split_f64(float(alpha)),
                *_common.split_f64(float(beta)),
                MEAN=reduction == "mean", WRITE_ROWS=reduction == "none", WRITE_GRAD=compute_grad, ACC=tl_acc,
                BLOCK_K=block_k, PART=part,
            )
    return _common.finish_loss(reduction, out, partials, 1.0 / R if reduction == "mean" else None, grad, s.dtype)
