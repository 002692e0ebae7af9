"""kdkernels: fused CPU, Triton and CUDA kernels for confidence-based detector distillation.

    import kdkernels
    loss = kdkernels.soft_label_kl(cls_s, cls_t, mode="sigmoid", weight=kdkernels.teacher_confidence(cls_t))

See docs/METHOD.md for the math and the operator contract.
"""
__version__ = "0.1.0"

from . import reference  # noqa: E402
from ._backend import BACKENDS, available_backends, get_backend, set_backend, use_backend  # noqa: E402
from ._native import build_info, cpu_buffer_cache_info, release_cpu_buffers  # noqa: E402
from . import ops  # noqa: E402
from .ops import *  # noqa: E402,F401,F403  (every public op; the list is ops.__all__)
from . import nn  # noqa: E402

__all__ = [
    "BACKENDS", "available_backends", "build_info", "cpu_buffer_cache_info", "get_backend", "nn",
    "reference", "release_cpu_buffers", "set_backend", "use_backend", *ops.__all__,
]
