"""Fake (meta) and autograd registrations of the native loss ops, shared by all three.

Every native loss op returns (loss, grad_student) where grad_student is the gradient of the loss
written by the forward kernel (empty when compute_grad=False). Backward is then one multiply:
    grad_student_total = grad_student · grad_output   (broadcast over K for per-row losses)
Teacher, confidence and weight get no gradient.
"""
from __future__ import annotations

import torch

from .. import _native


def _plain_eager(*tensors) -> bool:
    """True outside any tracing (compile, make_fx, fake or functional tensors): the value check on
    grad_output is only taken then."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and all(type(t) is torch.Tensor for t in tensors))


def _backward(ctx, grad_loss, _unused_grad_of_grad):
    n_rest = (None,) * (ctx.num_inputs - 1)
    if grad_loss is None:  # the loss did not reach the output (materialize_grads is off)
        return (None,) + n_rest
    (grad,) = ctx.saved_tensors
    if grad.numel() != ctx.student_numel:
        raise RuntimeError(f"{ctx.qualname} was called with compute_grad=False; "
                           "pass compute_grad=True when the student needs a gradient")
    eager = _plain_eager(grad, grad_loss)
    if eager and grad_loss.dim() == 0 and grad_loss.device.type == "cpu" and float(grad_loss) == 1.0:
        return (grad,) + n_rest  # loss.backward() on the loss itself: the forward's gradient as is
    g = grad_loss if grad_loss.dim() == 0 else grad_loss.reshape(grad_loss.shape + (1,) * (grad.dim() - grad_loss.dim()))
    return (grad * g,) + n_rest


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
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1])
        ctx.num_inputs = len(inputs)
        ctx.student_numel = inputs[0].numel()
        ctx.qualname = qualname

    torch.library.register_autograd(qualname, _backward, setup_context=_setup_context)
