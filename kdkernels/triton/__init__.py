"""Triton backend of the loss ops (GPU; CPU through TRITON_INTERPRET=1 for tests).

Each op is a torch.library.triton_op ("kdkernels_triton::<op>") returning (loss, grad_student),
with the gradient written by the forward kernel and an autograd registration whose backward is
grad · grad_output, so it stays visible to torch.compile. The public ops in kdkernels.ops call the
*_triton entry points when the backend resolves to "triton".

Importing this package needs triton; set TRITON_INTERPRET=1 before importing it to run the kernels
on CPU tensors (slow, for tests).
"""
from .adaptive_distillation_loss import adaptive_distillation_loss_op, adaptive_distillation_loss_triton
from .confidence_masked_mse import confidence_masked_mse_op, confidence_masked_mse_triton
from .soft_label_kl import soft_label_kl_op, soft_label_kl_triton

__all__ = [
    "adaptive_distillation_loss_op", "adaptive_distillation_loss_triton",
    "confidence_masked_mse_op", "confidence_masked_mse_triton",
    "soft_label_kl_op", "soft_label_kl_triton",
]
