"""The one autograd of every fused loss op (native cpu/cuda and triton), and the fused call.

Every fused loss op returns ``(loss, grad_student)``: the forward kernel writes ∂loss/∂student
(an empty tensor when ``compute_grad`` is False), so backward is one multiply::

    grad_student_total = grad_student · grad_output   (grad_output broadcast over K for row losses)

Teacher, confidence and weight get no gradient. See docs/METHOD.md, "Autograd".

Aliasing: the returned gradient never aliases a buffer the op keeps. While the graph is kept
(``retain_graph=True``) backward returns a new tensor. When the graph is freed after this backward
(the usual ``loss.backward()``), the saved buffer is released by autograd right after this call, so
it is scaled in place and handed over: no copy, and the op keeps no reference to it.

Double backward (``create_graph=True``) and forward-mode AD are not implemented by the fused
kernels: both raise an error naming the op. The "reference" backend supports them.

The raw ops (``torch.ops.kdkernels.*``) are internal: their second output belongs to autograd,
which may scale it in place during backward. Call the public ops (``kdkernels.<op>``).
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

from .. import _backend, _validate as V

_ONLY_REFERENCE = "use `kdkernels.use_backend(\"reference\")` around this call, which supports it"


def _batched(t: torch.Tensor) -> bool:
    """A vmapped grad_output (autograd.grad(is_grads_batched=True), functorch transforms)."""
    return (torch._C._functorch.is_legacy_batchedtensor(t) or torch._C._functorch.is_batchedtensor(t)
            or torch._C._functorch.peek_interpreter_stack() is not None)


def _backward(ctx, grad_loss, _unused_grad_of_grad):
    rest = (None,) * (ctx.num_inputs - 1)
    if grad_loss is None:  # the loss did not reach the output (materialize_grads is off)
        return (None,) + rest
    eager = V.plain_eager(grad_loss) and not _batched(grad_loss)
    if eager and torch.is_grad_enabled():
        raise RuntimeError(f"{ctx.op_name}: double backward (create_graph=True) is not supported "
                           f"by the fused kdkernels backends{ctx.also_runs}; {_ONLY_REFERENCE}")
    (grad,) = ctx.saved_tensors
    if grad.numel() != ctx.student_numel:
        raise RuntimeError(f"{ctx.op_name} ran with compute_grad=False, so it has no gradient: "
                           "call it with compute_grad=True when the student needs a gradient")
    g = grad_loss if grad_loss.dim() == 0 else grad_loss.reshape(
        grad_loss.shape + (1,) * (grad.dim() - grad_loss.dim()))
    if (eager and ctx.may_hand_over and type(grad) is torch.Tensor
            and not torch._C._autograd._get_current_graph_task_keep_graph()):
        # Autograd releases the saved buffer right after this call: hand it over, scaled in place.
        if g.dim() == 0 and g.device.type == "cpu" and float(g) == 1.0:
            return (grad,) + rest
        return (grad.mul_(g),) + rest
    return (grad * g,) + rest


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1])
    # A saved-tensors hook may keep its own reference to the buffer: then never hand it over.
    ctx.may_hand_over = torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    ctx.num_inputs = len(inputs)
    ctx.student_numel = inputs[0].numel()


# The public ops that run another op's kernel on other inputs: named in that kernel's errors, so that
# a user of e.g. confidence_masked_mse finds their op in the message.
ALSO_RUNS = {
    "separable_weighted_mse": ("confidence_masked_mse",),
    "soft_label_kl": ("channel_wise_divergence", "localization_distillation"),
}


def register_loss_autograd(qualname: str) -> None:
    """Register the shared backward for op `qualname` ("namespace::name") returning (loss, grad)."""
    name = qualname.split("::")[1]
    op_name = "kdkernels." + name
    users = ALSO_RUNS.get(name, ())
    also = " (this kernel also runs " + ", ".join(f"kdkernels.{u}" for u in users) + ")" if users else ""

    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        ctx.op_name = op_name
        ctx.also_runs = also

    torch.library.register_autograd(qualname, _backward, setup_context=setup_context)


def _check_no_forward_ad(op: str, student: torch.Tensor) -> None:
    if torch.compiler.is_compiling():  # dual tensors cannot be inspected while tracing: any dual level
        if forward_ad._current_level >= 0:
            raise RuntimeError(f"kdkernels.{op}: forward-mode AD (torch.autograd.forward_ad) is not "
                               f"supported by the fused kdkernels backends; {_ONLY_REFERENCE}")
        return
    interpreter = torch._C._functorch.peek_interpreter_stack()
    jvp = interpreter is not None and interpreter.key() == torch._C._functorch.TransformType.Jvp
    dual = forward_ad._current_level >= 0 and forward_ad.unpack_dual(student).tangent is not None
    if jvp or dual:
        raise RuntimeError(f"kdkernels.{op}: forward-mode AD (torch.func.jvp, "
                           f"torch.autograd.forward_ad) is not supported by the fused kdkernels "
                           f"backends; {_ONLY_REFERENCE}")


def call_fused(backend: str, op: str, student: torch.Tensor, *args) -> torch.Tensor:
    """Run `op` on a fused backend with the C++ schema's arguments after the student (the trailing
    compute_grad is added here) and return the loss."""
    _check_no_forward_ad(op, student)
    compute_grad = torch.is_grad_enabled() and student.requires_grad
    loss, _ = _backend.fused_op(backend, op)(student, *args, compute_grad)
    return loss
