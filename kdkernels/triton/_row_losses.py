"""The row-wise kernel shared by soft_label_kl and adaptive_distillation_loss (Triton).

Same math as csrc/ops/cpu/row_losses.h. On tempered logits a = t/T, b = s/T of one row of K classes:
  sigmoid, per class: p = σ(a), q = σ(b)
      KL = p (a − b) + softplus(b) − softplus(a),   H = softplus(a) − p a,   ∂KL/∂b = q − p
  softmax, per row: p = softmax(a), q = softmax(b)
      KL = Σ p (a − b) + lse(b) − lse(a),            H = lse(a) − Σ p a,      ∂KL/∂b = q − p
  adaptive (ADL): D = max(KL + β H, 0), e = 1 − exp(−D), w = e^γ, loss = w · KL
      ∂loss/∂b = (q − p) · (w + γ KL e^(γ−1) exp(−D))   (second term dropped with detach_weight)
Row loss = T² · (Σ over classes for sigmoid) · w_r;  ∂/∂s = (1/T) ∂/∂b · T² · w_r / norm
         = T · (q − p) · factor · w_r / norm  (norm = 1 unless "mean").

Derivation of the softmax gradient: ∂lse(b)/∂b_k = q_k and ∂Σ_j p_j (a_j − b_j)/∂b_k = −p_k, so
∂KL/∂b_k = q_k − p_k; H does not depend on b, so ∂D/∂b = ∂KL/∂b and
∂(e^γ KL)/∂b = (e^γ + KL · γ e^(γ−1) · ∂e/∂D) ∂KL/∂b with ∂e/∂D = exp(−D) (0 where D is clamped).

Layout: each program owns BLOCK_R rows and walks K in BLOCK_K columns. Sigmoid is elementwise,
so one pass writes loss terms and gradient (_sigmoid_rows). Softmax keeps a running max and
rescaled sums per row (online softmax): pass 1 gives max, Σexp, Σ exp·(a − b) and Σ exp·a for
both logits (_softmax_online_sums); pass 2 writes the gradient (_softmax_grad_pass). A row that
fits one block (ONE_BLOCK) takes both from one load (_softmax_one_block). "mean" reads 1 / norm,
0 when Σ w_r is exactly 0 (loss and gradient 0, see _common.inverse_normaliser).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _common
from ._common import adaptive_weight, one_minus_exp_neg, softplus_sigmoid, store_partials


@triton.jit
def _load_tempered(t_row, s_row, cols, m2, inv_t, ACC: tl.constexpr):
    """a = t/T, b = s/T on a BLOCK_R × BLOCK_K tile, in ACC; 0 on masked lanes."""
    a = tl.load(t_row[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC) * inv_t
    b = tl.load(s_row[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC) * inv_t
    return a, b


@triton.jit
def _store_grad(g_row, cols, m2, gr):
    tl.store(g_row[:, None] + cols[None, :], gr.to(g_row.dtype.element_ty), mask=m2)


@triton.jit
def _softmax_row_factor(kl, h, beta, gamma, wgrad, ADAPTIVE: tl.constexpr):
    """(per-row loss before T², per-row gradient factor)."""
    if ADAPTIVE:
        d = tl.maximum(kl + beta * h, 0.0)
        e = one_minus_exp_neg(d)
        w, dw_de = adaptive_weight(e, gamma)
        row = w * kl
        factor = w + wgrad * kl * dw_de * tl.exp(-d)
    else:
        row = kl
        factor = tl.full(kl.shape, 1.0, kl.dtype)
    return row, factor


@triton.jit
def _load_raw(t_row, s_row, cols, rmask, cmask, ACC: tl.constexpr):
    """t, s on a BLOCK_R × BLOCK_K tile, in ACC, untempered; -inf past column K (no part in the max
    or the sums), 0 on rows past R (finite, dropped later)."""
    m2 = rmask[:, None] & cmask[None, :]
    t = tl.load(t_row[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC)
    s = tl.load(s_row[:, None] + cols[None, :], mask=m2, other=0.0).to(ACC)
    return tl.where(cmask[None, :], t, float("-inf")), tl.where(cmask[None, :], s, float("-inf"))


@triton.jit
def _softmax_one_block(t_row, s_row, g_row, rmask, K, inv_t, g, beta, gamma, wgrad,
                       ADAPTIVE: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """Softmax rows of K <= BLOCK_K: loss before T² from one load, and the gradient g · factor ·
    (q − p) from the same exponentials. As csrc/ops/cpu/row_losses.h: the logits are shifted by
    their row max before scaling, da = (t − max t)/T <= 0 (exactly 0 at the max for any T, which a
    contracted t/T − max need not be), and KL = Σ x (da − db) / za + log zb − log za."""
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    m2 = rmask[:, None] & cmask[None, :]
    t, s = _load_raw(t_row, s_row, cols, rmask, cmask, ACC)
    mt = tl.max(t, axis=1)
    ms = tl.max(s, axis=1)
    da = (t - mt[:, None]) * inv_t
    db = (s - ms[:, None]) * inv_t
    x = tl.exp(da)
    y = tl.exp(db)
    za = tl.sum(x, axis=1)
    zb = tl.sum(y, axis=1)
    sd = tl.sum(tl.where(cmask[None, :], x * (da - db), 0.0), axis=1)
    sa = tl.sum(tl.where(cmask[None, :], x * da, 0.0), axis=1)
    log_za = tl.log(za)
    kl = sd / za + tl.log(zb) - log_za
    row, factor = _softmax_row_factor(kl, log_za - sa / za, beta, gamma, wgrad, ADAPTIVE)
    if WRITE_GRAD:
        gf = g * factor
        _store_grad(g_row, cols, m2, (gf / zb)[:, None] * y - (gf / za)[:, None] * x)
    return row


@triton.jit
def _softmax_online_sums(t_row, s_row, rmask, K, inv_t, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """Pass 1 over rows longer than one block: running (untempered) maxima and rescaled sums of
    both softmaxes, every exponent (t − max)/T shifted before scaling (see _softmax_one_block).
    Returns (max t, max s, log za, log zb, KL, H) per row; sd = Σ x (t − s)/T, sa = Σ x (t − max t)/T."""
    mt = tl.full([BLOCK_R], float("-inf"), ACC)
    ms = tl.full([BLOCK_R], float("-inf"), ACC)
    za = tl.zeros([BLOCK_R], ACC)
    zb = tl.zeros([BLOCK_R], ACC)
    sd = tl.zeros([BLOCK_R], ACC)
    sa = tl.zeros([BLOCK_R], ACC)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        t, s = _load_raw(t_row, s_row, cols, rmask, cmask, ACC)
        mt_new = tl.maximum(mt, tl.max(t, axis=1))
        ms_new = tl.maximum(ms, tl.max(s, axis=1))
        da = (t - mt_new[:, None]) * inv_t
        x = tl.exp(da)
        ca = tl.exp((mt - mt_new) * inv_t)  # 0 on the first block (mt = -inf)
        shift = tl.where(mt == float("-inf"), 0.0, (mt - mt_new) * inv_t)
        sa = ca * (sa + za * shift) + tl.sum(tl.where(cmask[None, :], x * da, 0.0), axis=1)
        za = za * ca + tl.sum(x, axis=1)
        zb = zb * tl.exp((ms - ms_new) * inv_t) + tl.sum(tl.exp((s - ms_new[:, None]) * inv_t), axis=1)
        sd = sd * ca + tl.sum(tl.where(cmask[None, :], x * ((t - s) * inv_t), 0.0), axis=1)
        mt = mt_new
        ms = ms_new
    log_za = tl.log(za)
    log_zb = tl.log(zb)
    kl = sd / za + (ms - mt) * inv_t + log_zb - log_za
    return mt, ms, log_za, log_zb, kl, log_za - sa / za


@triton.jit
def _softmax_grad_pass(t_row, s_row, g_row, rmask, K, inv_t, mt, ms, log_za, log_zb, gf,
                       ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pass 2 over rows longer than one block: gradient gf · (q − p), q = exp((s − max s)/T − log zb)."""
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        m2 = rmask[:, None] & cmask[None, :]
        t, s = _load_raw(t_row, s_row, cols, rmask, cmask, ACC)
        q = tl.exp((s - ms[:, None]) * inv_t - log_zb[:, None])
        p = tl.exp((t - mt[:, None]) * inv_t - log_za[:, None])
        _store_grad(g_row, cols, m2, gf[:, None] * (q - p))


@triton.jit
def _sigmoid_rows(t_row, s_row, g_row, rmask, K, inv_t, g, beta, gamma, wgrad,
                  ADAPTIVE: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Sigmoid rows, one pass: Σ_k of the per-class loss before T², and the gradient
    g · factor · (q − p) per class."""
    acc = tl.zeros([BLOCK_R], ACC)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        m2 = rmask[:, None] & (cols < K)[None, :]
        # masked lanes load a = b = 0, whose terms are finite; they are zeroed below
        a, b = _load_tempered(t_row, s_row, cols, m2, inv_t, ACC)
        sp_a, p = softplus_sigmoid(a)
        sp_b, q = softplus_sigmoid(b)
        kl = p * (a - b) + sp_b - sp_a
        if ADAPTIVE:
            d = tl.maximum(kl + beta * (sp_a - p * a), 0.0)
            e = one_minus_exp_neg(d)
            w, dw_de = adaptive_weight(e, gamma)
            val = w * kl
            factor = w + wgrad * kl * dw_de * (1.0 - e)
        else:
            val = kl
            factor = 1.0
        acc += tl.sum(tl.where(m2, val, 0.0), axis=1)
        if WRITE_GRAD:
            _store_grad(g_row, cols, m2, g[:, None] * (q - p) * factor)
    return acc


@triton.autotune(configs=_common.tile_configs("rows"),
                 key=["K", "BLOCK_K", "SOFTMAX", "ADAPTIVE", "WRITE_GRAD", "WRITE_ROWS"])
@triton.jit
def _row_loss_kernel(
    s_ptr, t_ptr, w_ptr, inv_norm_ptr, out_ptr, grad_ptr, partial_ptr,
    R, K, stride_s, stride_t, stride_w, num_partials,
    temp_hi, temp_lo, beta_hi, beta_lo, gamma_hi, gamma_lo, wgrad,
    HAS_WEIGHT: tl.constexpr, HAS_NORM: tl.constexpr, SOFTMAX: tl.constexpr, ADAPTIVE: tl.constexpr,
    WRITE_ROWS: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_K: tl.constexpr, ONE_BLOCK: tl.constexpr, PART: tl.constexpr, TILE: tl.constexpr,
):
    BLOCK_R: tl.constexpr = TILE // BLOCK_K
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # int64
    rmask = rows < R
    s_row = s_ptr + rows * stride_s
    t_row = t_ptr + rows * stride_t
    g_row = grad_ptr + rows * K  # the gradient is written contiguous (R, K)

    temp = tl.cast(temp_hi, ACC) + tl.cast(temp_lo, ACC)  # see _common.split_f64
    beta = tl.cast(beta_hi, ACC) + tl.cast(beta_lo, ACC)
    gamma = tl.cast(gamma_hi, ACC) + tl.cast(gamma_lo, ACC)
    wgrad = tl.cast(wgrad, ACC)
    inv_t = 1.0 / temp
    if HAS_NORM:  # 1 / norm of "mean", 0 for an empty normaliser
        scale = temp * tl.load(inv_norm_ptr).to(ACC)
    else:
        scale = temp
    if HAS_WEIGHT:
        wr = tl.load(w_ptr + rows * stride_w, mask=rmask, other=0.0).to(ACC)
    else:
        wr = tl.full([BLOCK_R], 1.0, ACC)
    g = scale * wr  # per-row gradient scale

    if SOFTMAX:
        if ONE_BLOCK:
            row = _softmax_one_block(t_row, s_row, g_row, rmask, K, inv_t, g, beta, gamma, wgrad,
                                     ADAPTIVE, WRITE_GRAD, ACC, BLOCK_K)
        else:
            mt, ms, log_za, log_zb, kl, h = _softmax_online_sums(t_row, s_row, rmask, K, inv_t, ACC,
                                                                  BLOCK_R, BLOCK_K)
            row, factor = _softmax_row_factor(kl, h, beta, gamma, wgrad, ADAPTIVE)
            if WRITE_GRAD:
                _softmax_grad_pass(t_row, s_row, g_row, rmask, K, inv_t, mt, ms, log_za, log_zb,
                                   g * factor, ACC, BLOCK_K)
    else:
        row = _sigmoid_rows(t_row, s_row, g_row, rmask, K, inv_t, g, beta, gamma, wgrad,
                            ADAPTIVE, WRITE_GRAD, ACC, BLOCK_R, BLOCK_K)

    v = row * (temp * temp) * wr
    if WRITE_ROWS:
        tl.store(out_ptr + rows, v.to(out_ptr.dtype.element_ty), mask=rmask)
    else:
        store_partials(tl.where(rmask, v, 0.0), pid, partial_ptr, num_partials, 1, 0, BLOCK_R, PART)


def row_loss_forward(s: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None, temperature: float,
                     beta: float, gamma: float, softmax: bool, adaptive: bool, detach_weight: bool,
                     reduction: str, eps: float, compute_grad: bool):
    """(R, K) logits, (R,) weight or None → (loss, grad_student). loss: () for mean/sum, (R,) for
    none, input dtype; grad: (R, K) contiguous in the input dtype, or an empty tensor when
    compute_grad is False. Any strides (a copy only when the classes are not contiguous)."""
    R, K = s.shape
    acc, tl_acc = _common.acc_types(s.dtype)
    if s.stride(1) != 1:
        s = s.contiguous()
    if t.stride(1) != 1:
        t = t.contiguous()
    grad = _common.empty((R, K), s.dtype, s.device) if compute_grad else s.new_empty((0,))
    if R == 0:
        loss = s.new_zeros((0,) if reduction == "none" else ())
        return loss, grad

    inv_norm = None
    if reduction == "mean":
        total_weight = (w.to(acc).sum() if w is not None
                        else torch.full((), R, dtype=acc, device=s.device))
        inv_norm = _common.inverse_normaliser(total_weight, eps)

    block_k, part, num_partials, grid = _common.row_launch(_row_loss_kernel, R, K)
    out, partials = _common.loss_buffers(reduction, num_partials, (R,), acc, s)

    if not _common.skip_launch(s):
        with _common.device_guard(s.device):
            wrap_triton(_row_loss_kernel)[grid](
                s, t, w if w is not None else partials, inv_norm if inv_norm is not None else partials,
                out, grad if compute_grad else partials, partials,
                R, K, s.stride(0), t.stride(0), w.stride(0) if w is not None else 0, num_partials,
                *_common.split_f64(float(temperature)), *_common.split_f64(float(beta)),
                *_common.split_f64(float(gamma)), 0.0 if detach_weight else 1.0,
                HAS_WEIGHT=w is not None, HAS_NORM=inv_norm is not None, SOFTMAX=softmax,
                ADAPTIVE=adaptive, WRITE_ROWS=reduction == "none", WRITE_GRAD=compute_grad, ACC=tl_acc,
                BLOCK_K=block_k, ONE_BLOCK=block_k >= K, PART=part,
            )
    return _common.finish_loss(reduction, out, partials, inv_norm, grad, s.dtype)
