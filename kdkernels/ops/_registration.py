"""Fake (meta) and autograd registrations of the native loss ops, shared by all three.

Every native loss op returns (loss, grad_student) where grad_student is the gradient of the loss
written by the forward kernel (empty when compute_grad=False). Backward is then one multiply:
    grad_student_total = grad_student · grad_output   (broadcast over K for per-row losses)
Teacher, confidence and weight get no gradient.
"""
from __future__ import annotations

import torch

from .. import _native


def _backward(ctx, grad_loss, _unused_grad_of_grad):
    (grad,) = ctx.saved_tensors
    if grad.numel() != ctx.student_numel:
        raise RuntimeError(f"{ctx.qualname} was called with compute_grad=False; "
                           "pass compute_grad=True when the student needs a gradient")
    g = grad_loss if grad_loss.dim() == 0 else grad_loss.reshape(grad_loss.shape + (1,) * (grad.dim() - grad_loss.dim()))
    return (grad * g,) + (None,) * (ctx.num_inputs - 1)


def register_loss_op(name: str, fake_loss_shape) -> None:
    """fake_loss_shape(student, reduction) → the loss shape of reduction 'none'."""
    if not _native.HAS_NATIVE:
        return
    qualname = f"kdkernels::{name}"
    reduction_index = {"confidence_masked_mse": 5, "soft_label_kl": 5, "adaptive_distillation_loss": 8}[name]

    @torch.library.register_fake(qualname)
    def _fake(*args):
        student, reduction, compute_grad = args[0], args[reduction_index], args[-1]
        torch._check(student.shape == args[1].shape, lambda: f"{name}: student/teacher shapes differ")
        shape = fake_loss_shape(student) if reduction == "none" else ()
        loss = student.new_empty(shape)
        grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
        return loss, grad

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.num_inputs = len(inputs)
        ctx.student_numel = inputs[0].numel()
        ctx.qualname = qualname

    torch.library.register_autograd(qualname, _backward, setup_context=_setup_context)
