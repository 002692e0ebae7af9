"""kdkernels: fused CPU, Triton and CUDA kernels for confidence-based detector distillation.

    import kdkernels
    loss = kdkernels.soft_label_kl(cls_s, cls_t, mode="sigmoid", weight=kdkernels.teacher_confidence(cls_t))

See docs/METHOD.md for the math and the operator contract.
"""
__version__ = "0.1.0"

from . import reference  # noqa: E402
from ._backend import BACKENDS, available_backends, get_backend, set_backend, use_backend  # noqa: E402
from ._native import build_info, cpu_buffer_cache_info, release_cpu_buffers  # noqa: E402
from .ops import (  # noqa: E402
    adaptive_distillation_loss,
    confidence_map,
    confidence_masked_mse,
    soft_label_kl,
    teacher_confidence,
)
from . import nn  # noqa: E402

__all__ = [
    "BACKENDS", "adaptive_distillation_loss", "available_backends", "build_info", "confidence_map", "confidence_masked_mse",
    "cpu_buffer_cache_info", "get_backend", "nn", "reference", "release_cpu_buffers", "set_backend",
    "soft_label_kl", "teacher_confidence", "use_backend",
]
