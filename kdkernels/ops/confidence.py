"""teacher_confidence and confidence_map: the teacher's max class probability, detached.

Both are a single reduction PyTorch already runs at memory speed (σ is monotonic, so
max_k σ(t_k) = σ(max_k t_k)); no custom kernel is needed.
"""
from __future__ import annotations

import torch

from .. import _validate as V


@V.argument_errors()
def teacher_confidence(cls_logits: torch.Tensor, *, mode: str = "sigmoid") -> torch.Tensor:
    """Teacher confidence per anchor.

    Args:
        cls_logits: (..., K) class logits, any float dtype.
        mode: "sigmoid" → max_k σ(t_k); "softmax" → max_k softmax(t)_k = exp(max t − logsumexp t).
    Returns:
        (...) confidences in [0, 1], dtype of cls_logits, detached (no gradient).
    """
    V.tensor(cls_logits, "cls_logits")
    V.choice(mode, "mode", V.MODES)
    if cls_logits.dim() < 1 or cls_logits.shape[-1] < 1:
        raise ValueError(f"cls_logits must have shape (..., K) with K >= 1, got {V.dims(cls_logits.shape)}")
    with torch.no_grad():
        t = cls_logits if cls_logits.dtype in (torch.float32, torch.float64) else cls_logits.float()
        top = t.amax(dim=-1)
        conf = torch.sigmoid(top) if mode == "sigmoid" else torch.exp(top - torch.logsumexp(t, dim=-1))
        return conf.to(cls_logits.dtype)


@V.argument_errors()
def confidence_map(cls_logits: torch.Tensor, num_anchors: int, *, mode: str = "sigmoid") -> torch.Tensor:
    """Per-pixel teacher confidence of one FPN level.

    Args:
        cls_logits: (N, A·K, H, W) classification head output (anchor-major channels, as in
            torchvision RetinaNet), any float dtype.
        num_anchors: A, the anchors per location.
    Returns:
        (N, H, W) = max over anchors and classes of the class probability, detached.
    """
    V.tensor(cls_logits, "cls_logits")
    if cls_logits.dim() != 4:
        raise ValueError(f"cls_logits must have shape (N, A*K, H, W), got {V.dims(cls_logits.shape)}")
    if not isinstance(num_anchors, int) or num_anchors < 1 or cls_logits.shape[1] % num_anchors:
        raise ValueError(f"num_anchors must be a positive int dividing the {int(cls_logits.shape[1])} "
                         f"channels of cls_logits, got {num_anchors!r}")
    V.choice(mode, "mode", V.MODES)
    n, ak, h, w = cls_logits.shape
    if mode == "sigmoid":  # σ monotonic: reduce the logits, one sigmoid per pixel
        with torch.no_grad():
            return torch.sigmoid(cls_logits.amax(dim=1).float()).to(cls_logits.dtype)
    per_anchor = cls_logits.reshape(n, num_anchors, ak // num_anchors, h, w).movedim(2, -1)
    return teacher_confidence(per_anchor, mode=mode).amax(dim=1)
