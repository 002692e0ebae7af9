"""Independent float64 transcriptions of the peers' published loss code (MMRazor, MMDetection,
yzd-v/FGD), the ground truth the peer ops and the trainer's peer presets are checked against.
Written from the peers' code, not from kdkernels: each keeps the peer's own order of operations."""
import torch
import torch.nn.functional as F


def mmrazor_cwd(preds_s, preds_t, tau, loss_weight=1.0):
    """MMRazor ChannelWiseDivergence.forward."""
    n, c, h, w = preds_s.shape
    softmax_pred_t = F.softmax(preds_t.reshape(-1, w * h) / tau, dim=1)
    logsoftmax = torch.nn.LogSoftmax(dim=1)
    loss = torch.sum(softmax_pred_t * logsoftmax(preds_t.reshape(-1, w * h) / tau)
                     - softmax_pred_t * logsoftmax(preds_s.reshape(-1, w * h) / tau)) * tau ** 2
    return loss_weight * loss / (c * n)


def _mmrazor_pkd_norm(feat):
    n, c, h, w = feat.shape
    rows = feat.permute(1, 0, 2, 3).reshape(c, n * h * w)
    rows = (rows - rows.mean(-1, keepdim=True)) / (rows.std(-1, keepdim=True) + 1e-6)
    return rows.reshape(c, n, h, w).permute(1, 0, 2, 3)


def mmrazor_pkd(preds_s, preds_t, loss_weight=1.0):
    """MMRazor PKDLoss.forward: one level or a sequence of levels of the same spatial sizes."""
    if isinstance(preds_s, torch.Tensor):
        preds_s, preds_t = (preds_s,), (preds_t,)
    loss = 0.0
    for ps, pt in zip(preds_s, preds_t):
        assert ps.shape == pt.shape
        loss = loss + F.mse_loss(_mmrazor_pkd_norm(ps), _mmrazor_pkd_norm(pt)) / 2
    return loss * loss_weight


def mmdet_kd(pred, soft_label, t, class_reduction):
    """MMDetection knowledge_distillation_kl_div_loss (per sample)."""
    target = F.softmax(soft_label / t, dim=1).detach()
    kd = F.kl_div(F.log_softmax(pred / t, dim=1), target, reduction="none")
    kd = kd.mean(1) if class_reduction == "mean" else kd.sum(1)
    return kd * (t * t)


def mmrazor_dkd(preds_s, preds_t, gt_labels, alpha, beta, tau):
    """MMRazor DKDLoss.forward (reduction 'batchmean', loss_weight 1)."""
    gt_mask = torch.zeros_like(preds_s).scatter_(1, gt_labels.unsqueeze(1), 1).bool()
    non_gt_mask = torch.ones_like(preds_s).scatter_(1, gt_labels.unsqueeze(1), 0).bool()

    def cat_mask(tckd):
        return torch.cat([(tckd * gt_mask).sum(1, keepdims=True), (tckd * non_gt_mask).sum(1, keepdims=True)], 1)

    def kl(s, t):
        return F.kl_div(s, t, reduction="batchmean") * tau ** 2

    s_tckd, t_tckd = F.softmax(preds_s / tau, dim=1), F.softmax(preds_t / tau, dim=1)
    tckd = kl(torch.log(cat_mask(s_tckd)), cat_mask(t_tckd))
    s_nckd = F.log_softmax(preds_s / tau - 1000.0 * gt_mask, dim=1)
    t_nckd = F.softmax(preds_t / tau - 1000.0 * gt_mask, dim=1)
    return alpha * tckd + beta * kl(s_nckd, t_nckd)


def fgd_get_attention(preds, temp):
    """yzd-v/FGD FeatureLoss.get_attention: (spatial (N, H, W), channel (N, C))."""
    n, c, h, w = preds.shape
    value = torch.abs(preds)
    fea_map = value.mean(axis=1, keepdim=True)
    s_attention = (h * w * F.softmax((fea_map / temp).view(n, -1), dim=1)).view(n, h, w)
    channel_map = value.mean(axis=2, keepdim=False).mean(axis=2, keepdim=False)
    c_attention = c * F.softmax(channel_map / temp, dim=1)
    return s_attention, c_attention


def fgd_fea_loss(preds_s, preds_t, mask_fg, mask_bg, c_t, s_t):
    """yzd-v/FGD FeatureLoss.get_fea_loss without its α/β: (fg_loss, bg_loss), each
    MSELoss(reduction="sum") of the maps scaled by √S_t · √C_t · √mask, divided by the batch size."""
    mask_fg, mask_bg = mask_fg.unsqueeze(1), mask_bg.unsqueeze(1)
    c_t, s_t = c_t.unsqueeze(-1).unsqueeze(-1), s_t.unsqueeze(1)
    fea_t = preds_t * torch.sqrt(s_t) * torch.sqrt(c_t)
    fea_s = preds_s * torch.sqrt(s_t) * torch.sqrt(c_t)
    fg_loss = F.mse_loss(fea_s * torch.sqrt(mask_fg), fea_t * torch.sqrt(mask_fg), reduction="sum") / len(mask_fg)
    bg_loss = F.mse_loss(fea_s * torch.sqrt(mask_bg), fea_t * torch.sqrt(mask_bg), reduction="sum") / len(mask_bg)
    return fg_loss, bg_loss
