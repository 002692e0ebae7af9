"""The distillation operators (public API); one module per op."""
from .adaptive_distillation_loss import adaptive_distillation_loss
from .channel_wise_divergence import channel_wise_divergence
from .confidence import confidence_map, teacher_confidence
from .confidence_masked_mse import confidence_masked_mse
from .decoupled_kd import decoupled_kd
from .fgd_attention import fgd_attention
from .localization_distillation import localization_distillation
from .pearson_feature_loss import pearson_feature_loss
from .separable_weighted_mse import separable_weighted_mse
from .soft_label_kl import soft_label_kl

__all__ = ["adaptive_distillation_loss", "channel_wise_divergence", "confidence_map",
           "confidence_masked_mse", "decoupled_kd", "fgd_attention", "localization_distillation",
           "pearson_feature_loss", "separable_weighted_mse", "soft_label_kl", "teacher_confidence"]
