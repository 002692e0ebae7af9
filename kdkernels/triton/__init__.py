"""Triton backend of the loss ops (GPU; CPU through TRITON_INTERPRET=1 for tests).

Importing this package registers torch.ops.kdkernels_triton.<name> for each loss op, with the
schema of the native op torch.ops.kdkernels.<name> (defined once, in csrc/kdkernels.cpp) and the
autograd shared by every fused backend (kdkernels.ops._registration.register_loss_autograd). Each
op returns (loss, grad_student): the forward kernel writes the gradient, and the backward is
grad · grad_output. The public ops in kdkernels.ops call these ops with the native schema's
arguments when the backend resolves to "triton". On a GPU the ops are torch.library.triton_op,
so torch.compile sees (and inductor compiles) the kernels; under TRITON_INTERPRET=1 they are
opaque custom ops (see _common.define_loss_op).

Importing this package needs triton and the native extension kdkernels._C (whose schemas the ops
take); kdkernels imports it only when the triton backend runs. To run the kernels on CPU tensors
(slow, for tests), set TRITON_INTERPRET=1 before triton itself is first imported.

Files: separable_weighted_mse.py, soft_label_kl.py, adaptive_distillation_loss.py,
pearson_feature_loss.py, decoupled_kd.py (one op each);
_row_losses.py (the row kernel shared by soft_label_kl and ADL, as csrc/ops/cpu/row_losses.h);
_common.py (math helpers, tiles and autotune configs, partial sums, device guard, registration).
"""
from . import adaptive_distillation_loss, separable_weighted_mse, soft_label_kl  # noqa: F401 (registration)
from . import decoupled_kd, pearson_feature_loss  # noqa: F401 (registration)

OPS = ("separable_weighted_mse", "soft_label_kl", "adaptive_distillation_loss", "pearson_feature_loss",
       "decoupled_kd")

__all__ = ["OPS"]
