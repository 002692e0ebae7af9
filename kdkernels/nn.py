"""torch.nn.Module wrappers of the ops, with the same keyword arguments."""
from __future__ import annotations

import torch

from . import ops


class ConfidenceMaskedMSE(torch.nn.Module):
    """Module form of :func:`kdkernels.confidence_masked_mse`: forward(student, teacher, confidence)."""

    def __init__(self, *, threshold=0.0, power=1.0, reduction="mean", eps=1e-6):
        super().__init__()
        self.kwargs = dict(threshold=threshold, power=power, reduction=reduction, eps=eps)

    def forward(self, student, teacher, confidence):
        return ops.confidence_masked_mse(student, teacher, confidence, **self.kwargs)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class SoftLabelKL(torch.nn.Module):
    """Module form of :func:`kdkernels.soft_label_kl`: forward(student_logits, teacher_logits, weight=None)."""

    def __init__(self, *, temperature=1.0, mode="softmax", reduction="mean", eps=1e-6):
        super().__init__()
        self.kwargs = dict(temperature=temperature, mode=mode, reduction=reduction, eps=eps)

    def forward(self, student_logits, teacher_logits, weight=None):
        return ops.soft_label_kl(student_logits, teacher_logits, weight=weight, **self.kwargs)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class AdaptiveDistillationLoss(torch.nn.Module):
    """Module form of :func:`kdkernels.adaptive_distillation_loss`: forward(student_logits, teacher_logits, weight=None)."""

    def __init__(self, *, temperature=1.0, beta=1.0, gamma=2.0, mode="sigmoid", reduction="mean",
                 detach_weight=False, eps=1e-6):
        super().__init__()
        self.kwargs = dict(temperature=temperature, beta=beta, gamma=gamma, mode=mode,
                           reduction=reduction, detach_weight=detach_weight, eps=eps)

    def forward(self, student_logits, teacher_logits, weight=None):
        return ops.adaptive_distillation_loss(student_logits, teacher_logits, weight=weight, **self.kwargs)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class TeacherConfidence(torch.nn.Module):
    """Module form of :func:`kdkernels.teacher_confidence`."""

    def __init__(self, *, mode="sigmoid"):
        super().__init__()
        self.mode = mode

    def forward(self, cls_logits):
        return ops.teacher_confidence(cls_logits, mode=self.mode)
