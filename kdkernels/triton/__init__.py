"""Triton backend of the loss ops (GPU; CPU through TRITON_INTERPRET=1 for tests).

Each op ("kdkernels_triton::<op>", same schema as the native "kdkernels::<op>") returns
(loss, grad_student): the forward kernel writes the gradient, and the autograd registration's
backward is grad · grad_output. On a GPU the ops are torch.library.triton_op, so torch.compile
sees (and inductor compiles) the kernels; under TRITON_INTERPRET=1 they are opaque custom ops
(see _common.define_loss_op). The public ops in kdkernels.ops call the *_triton entry points when
the backend resolves to "triton".

Importing this package needs triton; to run the kernels on CPU tensors (slow, for tests), set
TRITON_INTERPRET=1 before triton itself is first imported.

Files: confidence_masked_mse.py, soft_label_kl.py, adaptive_distillation_loss.py (one op each);
_row_losses.py (the row kernel shared by soft_label_kl and ADL, as csrc/ops/cpu/row_losses.h);
_common.py (math helpers, tiles and autotune configs, registration).
"""
from .adaptive_distillation_loss import adaptive_distillation_loss_op, adaptive_distillation_loss_triton
from .confidence_masked_mse import confidence_masked_mse_op, confidence_masked_mse_triton
from .soft_label_kl import soft_label_kl_op, soft_label_kl_triton

__all__ = [
    "adaptive_distillation_loss_op", "adaptive_distillation_loss_triton",
    "confidence_masked_mse_op", "confidence_masked_mse_triton",
    "soft_label_kl_op", "soft_label_kl_triton",
]
