"""The distillation operators (public API); one module per op."""
from .adaptive_distillation_loss import adaptive_distillation_loss
from .confidence import confidence_map, teacher_confidence
from .confidence_masked_mse import confidence_masked_mse
from .soft_label_kl import soft_label_kl

__all__ = ["adaptive_distillation_loss", "confidence_map", "confidence_masked_mse",
           "soft_label_kl", "teacher_confidence"]
