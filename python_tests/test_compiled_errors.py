"""Argument errors are the same exception, with the same message, in eager code and under
torch.compile(fullgraph=True), for every public op on every backend (issue 17, defect 5).

Before: Dynamo turned the op's ValueError/TypeError into torch._dynamo.exc.Unsupported
("Observed exception"), so ``except ValueError`` missed it; these tests assert the exact type.
"""
import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS

NAN = float("nan")


def _rows():
    return torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)


def _feats(*shape):
    shape = shape or (2, 3, 4, 5)
    return torch.randn(*shape, requires_grad=True), torch.randn(*shape)


def _labels():
    return torch.randint(0, 5, (6,))


# (id, call: () -> (fn, args), exception type, message pattern). The fn is compiled with its
# tensors as graph inputs; the bad Python arguments are in its closure (constants for Dynamo).
CASES = [
    ("dkd_float_labels", lambda: (lambda s, t, y: kdkernels.decoupled_kd(s, t, y), (*_rows(), _labels().float())),
     TypeError, "labels must be an integer"),
    ("dkd_alpha_nan", lambda: (lambda s, t, y: kdkernels.decoupled_kd(s, t, y, alpha=NAN), (*_rows(), _labels())),
     ValueError, "alpha must be a finite number >= 0"),
    ("kl_temperature_0", lambda: (lambda s, t: kdkernels.soft_label_kl(s, t, temperature=0.0), _rows()),
     ValueError, "temperature must be a finite number > 0"),
    ("kl_shape_mismatch", lambda: (lambda s, t: kdkernels.soft_label_kl(s, t), (_rows()[0], torch.randn(6, 4))),
     ValueError, r"student_logits and teacher_logits must have the same shape, got \(6, 5\) and \(6, 4\)"),
    ("kl_dtype_mismatch", lambda: (lambda s, t: kdkernels.soft_label_kl(s, t), (_rows()[0], torch.randn(6, 5).double())),
     TypeError, "same dtype"),
    ("kl_class_reduction", lambda: (lambda s, t: kdkernels.soft_label_kl(s, t, class_reduction="max"), _rows()),
     ValueError, "class_reduction must be one of"),
    ("kl_weight_rows", lambda: (lambda s, t, w: kdkernels.soft_label_kl(s, t, weight=w), (*_rows(), torch.rand(5))),
     ValueError, r"weight must hold one value per row of the logits \(6\)"),
    ("adl_gamma_inf", lambda: (lambda s, t: kdkernels.adaptive_distillation_loss(s, t, gamma=float("inf")), _rows()),
     ValueError, "gamma"),
    ("cwd_temperature_neg", lambda: (lambda s, t: kdkernels.channel_wise_divergence(s, t, temperature=-1.0), _feats()),
     ValueError, "temperature must be a finite number > 0"),
    ("cwd_reduction", lambda: (lambda s, t: kdkernels.channel_wise_divergence(s, t, reduction="avg"), _feats()),
     ValueError, "reduction must be one of"),
    ("pkd_one_value_per_channel", lambda: (lambda s, t: kdkernels.pearson_feature_loss(s, t), _feats(1, 3, 1, 1)),
     ValueError, "N·H·W >= 2"),
    ("pkd_reduction", lambda: (lambda s, t: kdkernels.pearson_feature_loss(s, t, reduction="batchmean"), _feats()),
     ValueError, "reduction must be one of"),
    ("fgd_attention_t0", lambda: (lambda f: kdkernels.fgd_attention(f, temperature=0.0), (_feats()[0],)),
     ValueError, "temperature"),
    ("ld_temperature_nan", lambda: (lambda s, t: kdkernels.localization_distillation(s, t, temperature=NAN), _rows()),
     ValueError, "temperature"),
    ("masked_mse_threshold_nan",
     lambda: (lambda s, t, c: kdkernels.confidence_masked_mse(s, t, c, threshold=NAN), (*_feats(), torch.rand(2, 4, 5))),
     ValueError, "threshold"),
    ("swmse_channel_weight_shape",
     lambda: (lambda s, t, w, c: kdkernels.separable_weighted_mse(s, t, w, c),
              (*_feats(), torch.rand(2, 4, 5), torch.rand(2, 4))),
     ValueError, r"channel_weight must have shape \(N, C\) = \(2, 3\), got \(2, 4\)"),
    ("confidence_mode", lambda: (lambda x: kdkernels.teacher_confidence(x, mode="relu"), (torch.randn(4, 3),)),
     ValueError, "mode must be one of"),
    ("confidence_map_anchors", lambda: (lambda x: kdkernels.confidence_map(x, 4), (torch.randn(2, 6, 3, 3),)),
     ValueError, "num_anchors must be a positive int dividing the 6 channels"),
]


def _call(make, compiled, dynamic=False):
    fn, args = make()
    if compiled:
        fn = torch.compile(fn, fullgraph=True, backend=compiled, dynamic=dynamic)
    return fn(*args)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("compiled", [None, "aot_eager"], ids=["eager", "compiled"])
@pytest.mark.parametrize("name,make,exc,match", CASES, ids=[c[0] for c in CASES])
def test_argument_errors_are_the_same_compiled(backend, compiled, name, make, exc, match):
    torch._dynamo.reset()
    with pytest.raises(exc, match=match) as info:
        _call(make, compiled)
    assert type(info.value) is exc, type(info.value)  # not Unsupported (a RuntimeError)


@pytest.mark.parametrize("name,make,exc,match", [c for c in CASES if c[0] in (
    "kl_shape_mismatch", "dkd_float_labels", "pkd_one_value_per_channel", "fgd_attention_t0")], ids=lambda c: str(c)[:24])
def test_argument_errors_under_inductor_and_dynamic_shapes(name, make, exc, match):
    """Default Inductor, and dynamic=True, where a shape in the message is symbolic while tracing."""
    for dynamic in (False, True):
        torch._dynamo.reset()
        with pytest.raises(exc, match=match) as info:
            _call(make, "inductor", dynamic)
        assert type(info.value) is exc, (dynamic, type(info.value))


def test_a_valid_call_after_an_error_compiles_and_runs():
    """The error graph is guarded on the bad value: a good value compiles its own graph."""
    torch._dynamo.reset()
    s, t = _rows()
    fn = torch.compile(lambda a, b, T: kdkernels.soft_label_kl(a, b, temperature=T), fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match="temperature"):
        fn(s, t, -1.0)
    torch.testing.assert_close(fn(s, t, 2.0), kdkernels.soft_label_kl(s, t, temperature=2.0))


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_an_error_of_the_inner_op_is_raised_by_the_outer_one(backend):
    """localization_distillation runs soft_label_kl, which checks the weight: the inner op's error
    reaches the caller as itself (only the outermost op defers), and the nesting count unwinds."""
    torch._dynamo.reset()
    s, t = torch.randn(3, 4, 17, requires_grad=True), torch.randn(3, 4, 17)
    fn = torch.compile(lambda a, b, w: kdkernels.localization_distillation(a, b, weight=w, reduction="none"),
                       fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match=r"weight must hold one value per row of the logits \(12\)"):
        fn(s, t, torch.rand(5))
    assert kdkernels._validate._NESTING.depth == 0
    assert fn(s, t, torch.rand(3, 4)).shape == (3, 4)


def test_module_forms_raise_the_same_errors_compiled():
    torch._dynamo.reset()
    mod = kdkernels.nn.ChannelWiseDivergence(temperature=-2.0)
    with pytest.raises(ValueError, match="temperature"):
        torch.compile(mod, fullgraph=True, backend="aot_eager")(*_feats())


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("compiled", ["aot_eager", "inductor"])
@pytest.mark.parametrize("label", [7, -1])
def test_dkd_labels_out_of_range_compiled(backend, compiled, label):
    """Defect 6: on the reference backend under default Inductor, a label out of [0, K) gave the
    generated kernel's "index out of bounds: 0 <= tmp178 < 5L" (aot_eager gave the intended
    message). Now the gather reads in bounds and the in-graph label check raises the eager
    ValueError, on CPU tensors (on CUDA it is torch._assert_async's RuntimeError, no host sync)."""
    if compiled == "inductor" and backend.name != "reference":
        pytest.skip("Inductor compiles C++ per case: the reference backend is the one that failed")
    torch._dynamo.reset()
    s, t = _rows()
    y = torch.tensor([0, 1, 2, label, 4, 1])
    fn = torch.compile(lambda a, b, c: kdkernels.decoupled_kd(a, b, c), fullgraph=True, backend=compiled)
    torch.testing.assert_close(fn(s, t, y.clamp(0, 4)), kdkernels.decoupled_kd(s, t, y.clamp(0, 4)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)") as info:
        fn(s, t, y)
    assert type(info.value) is ValueError
