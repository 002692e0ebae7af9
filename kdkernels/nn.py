"""torch.nn.Module wrappers of the ops: the constructor takes the op's keyword arguments, forward
its tensor arguments (e.g. ``SoftLabelKL(temperature=2.0)(cls_s, cls_t, weight=conf)``)."""
from __future__ import annotations

import inspect

import torch

from . import ops


class _OpModule(torch.nn.Module):
    """forward(*tensors, **tensor_kwargs) = op(*tensors, **tensor_kwargs, **self.kwargs)."""
    op = None  # set by subclasses (a staticmethod of the public op)

    def __init__(self, **kwargs):
        super().__init__()
        params = inspect.signature(type(self).op).parameters
        unknown = [k for k in kwargs if k not in params or params[k].kind != inspect.Parameter.KEYWORD_ONLY]
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown keyword argument(s) {unknown}; the op "
                            f"takes {[k for k, p in params.items() if p.kind == p.KEYWORD_ONLY]}")
        self.kwargs = kwargs

    def forward(self, *args, **tensor_kwargs):
        return type(self).op(*args, **tensor_kwargs, **self.kwargs)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


def _module(name: str, op, call: str):
    doc = f"Module form of :func:`kdkernels.{op.__name__}`: {call}."
    return type(name, (_OpModule,), {"op": staticmethod(op), "__doc__": doc, "__module__": __name__})


ConfidenceMaskedMSE = _module("ConfidenceMaskedMSE", ops.confidence_masked_mse,
                              "forward(student, teacher, confidence)")
SoftLabelKL = _module("SoftLabelKL", ops.soft_label_kl, "forward(student_logits, teacher_logits, weight=None)")
AdaptiveDistillationLoss = _module("AdaptiveDistillationLoss", ops.adaptive_distillation_loss,
                                   "forward(student_logits, teacher_logits, weight=None)")
ChannelWiseDivergence = _module("ChannelWiseDivergence", ops.channel_wise_divergence, "forward(student, teacher)")
PearsonFeatureLoss = _module("PearsonFeatureLoss", ops.pearson_feature_loss, "forward(student, teacher)")
SeparableWeightedMSE = _module("SeparableWeightedMSE", ops.separable_weighted_mse,
                               "forward(student, teacher, spatial_weight, channel_weight=None)")
LocalizationDistillation = _module("LocalizationDistillation", ops.localization_distillation,
                                   "forward(student_bins, teacher_bins, weight=None)")
DecoupledKD = _module("DecoupledKD", ops.decoupled_kd, "forward(student_logits, teacher_logits, labels)")
TeacherConfidence = _module("TeacherConfidence", ops.teacher_confidence, "forward(cls_logits)")
