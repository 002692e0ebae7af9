"""Autograd as an ordinary loss (docs/METHOD.md, "Autograd"), on every backend:
retain_graph, repeated backward, gradient accumulation, in-place ops on .grad, no aliasing of a
buffer the op keeps or reuses; double backward and forward-mode AD correct (reference) or a clear
error naming the op (fused backends)."""
import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, FUSED_BACKENDS


def _row_inputs(device):
    return torch.randn(12, 7, device=device), torch.randn(12, 7, device=device), torch.rand(12, device=device)


# name → (make inputs on device, loss of (student, *rest) with the backend that is selected)
OPS = {
    "masked_mse": (
        lambda d: (torch.randn(2, 3, 5, 4, device=d), torch.randn(2, 3, 5, 4, device=d), torch.rand(2, 5, 4, device=d)),
        lambda s, t, c: kdkernels.confidence_masked_mse(s, t, c, threshold=0.3, power=2.0)),
    "separable_mse": (
        lambda d: (torch.randn(2, 3, 5, 4, device=d), torch.randn(2, 3, 5, 4, device=d),
                   torch.rand(2, 5, 4, device=d), torch.rand(2, 3, device=d)),
        lambda s, t, ws, wc: kdkernels.separable_weighted_mse(s, t, ws, wc)),
    "kl_sigmoid": (_row_inputs, lambda s, t, w: kdkernels.soft_label_kl(s, t, mode="sigmoid", weight=w, temperature=2.0)),
    "kl_softmax": (_row_inputs, lambda s, t, w: kdkernels.soft_label_kl(s, t, mode="softmax", weight=w)),
    "adl_sigmoid": (_row_inputs, lambda s, t, w: kdkernels.adaptive_distillation_loss(s, t, weight=w, mode="sigmoid")),
    "adl_softmax": (_row_inputs, lambda s, t, w: kdkernels.adaptive_distillation_loss(s, t, weight=w, mode="softmax")),
    "pearson": (lambda d: (torch.randn(2, 3, 5, 4, device=d), torch.randn(2, 3, 5, 4, device=d)),
                lambda s, t: kdkernels.pearson_feature_loss(s, t)),
    "cwd": (lambda d: (torch.randn(2, 3, 5, 4, device=d), torch.randn(2, 3, 5, 4, device=d)),
            lambda s, t: kdkernels.channel_wise_divergence(s, t)),
    "ld": (_row_inputs, lambda s, t, w: kdkernels.localization_distillation(s, t, weight=w, temperature=2.0)),
    "dkd": (lambda d: (torch.randn(6, 5, device=d) * 2, torch.randn(6, 5, device=d) * 2,
                       torch.randint(0, 5, (6,), device=d)),
            lambda s, t, y: kdkernels.decoupled_kd(s, t, y, beta=8.0, temperature=2.0)),
}


def _reference_grad(op, s, rest, scale=1.0):
    with kdkernels.use_backend("reference"):
        x = s.detach().clone().requires_grad_(True)
        (OPS[op][1](x, *rest) * scale).backward()
    return x.grad


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_retain_graph_and_repeated_backward(backend, op):
    make, fn = OPS[op]
    s0, *rest = make(backend.device)
    g1 = _reference_grad(op, s0, rest)
    s = s0.clone().requires_grad_(True)
    loss = fn(s, *rest)
    loss.backward(retain_graph=True)
    first = s.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()  # the third call frees the graph
    torch.testing.assert_close(first, g1)
    torch.testing.assert_close(s.grad, 3 * g1)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_inplace_grad_op_between_retained_backwards(backend, op):
    """clip_grad_norm_ / zero_grad(set_to_none=False) on .grad between two backward calls of a
    retained graph: no "modified by an inplace operation" error and the exact accumulated value."""
    make, fn = OPS[op]
    s0, *rest = make(backend.device)
    g1 = _reference_grad(op, s0, rest)
    s = s0.clone().requires_grad_(True)
    loss = fn(s, *rest)
    loss.backward(retain_graph=True)
    s.grad.mul_(0.25)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(s.grad, 1.25 * g1)
    s.grad.zero_()
    loss.backward()
    torch.testing.assert_close(s.grad, g1)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_accumulation_over_micro_batches_and_inplace_grad_ops(backend, op):
    """Two micro-batches accumulate; clip_grad_norm_ and zero_grad(set_to_none=False) modify .grad
    in place; a third step then still gives exactly the reference gradient."""
    make, fn = OPS[op]
    batches = [make(backend.device) for _ in range(3)]
    s = torch.zeros_like(batches[0][0]).requires_grad_(True)
    for b in batches[:2]:
        fn(s + b[0], *b[1:]).backward()
    expected = _reference_grad(op, batches[0][0], batches[0][1:]) + _reference_grad(op, batches[1][0], batches[1][1:])
    torch.testing.assert_close(s.grad, expected)
    torch.nn.utils.clip_grad_norm_([s], max_norm=1e-3)
    opt = torch.optim.SGD([s], lr=0.1)
    opt.zero_grad(set_to_none=False)
    assert torch.all(s.grad == 0)
    fn(s.detach() * 0 + batches[2][0], *batches[2][1:])  # a forward that reuses freed buffers
    fn(s + batches[2][0], *batches[2][1:]).backward()
    torch.testing.assert_close(s.grad, _reference_grad(op, batches[2][0], batches[2][1:]))


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_returned_gradient_is_not_reused(backend, op):
    """A leaf's .grad from one step is not overwritten by later forward/backward calls of the op
    (the op hands its buffer over, it does not keep or recycle it while it is in use)."""
    make, fn = OPS[op]
    s1, *rest = make(backend.device)
    s1.requires_grad_(True)
    fn(s1, *rest).backward()
    kept = s1.grad.clone()
    for _ in range(3):
        s2 = torch.randn_like(s1).requires_grad_(True)
        fn(s2, *rest).backward()
        assert s2.grad.data_ptr() != s1.grad.data_ptr()
    torch.testing.assert_close(s1.grad, kept, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_scaled_and_shared_graph(backend, op):
    """The loss used twice in one graph, scaled by a non-unit factor, and its retained graph
    differentiated with torch.autograd.grad."""
    make, fn = OPS[op]
    s0, *rest = make(backend.device)
    g1 = _reference_grad(op, s0, rest)
    s = s0.clone().requires_grad_(True)
    loss = fn(s, *rest)
    (g_a,) = torch.autograd.grad(loss * 0.5 + loss, s, retain_graph=True)
    (g_b,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(g_a, 1.5 * g1)
    torch.testing.assert_close(g_b, g1)


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_double_backward_is_a_clear_error(backend, op):
    make, fn = OPS[op]
    s, *rest = make(backend.device)
    s.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"kdkernels\.\w+: double backward .*reference"):
        torch.autograd.grad(fn(s, *rest), s, create_graph=True)


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_forward_ad_is_a_clear_error(backend, op):
    import torch.autograd.forward_ad as fwAD
    make, fn = OPS[op]
    s, *rest = make(backend.device)
    with pytest.raises(RuntimeError, match=r"kdkernels\.\w+: forward-mode AD"):
        torch.func.jvp(lambda x: fn(x, *rest), (s,), (torch.ones_like(s),))
    with fwAD.dual_level(), pytest.raises(RuntimeError, match=r"kdkernels\.\w+: forward-mode AD"):
        fn(fwAD.make_dual(s, torch.ones_like(s)), *rest)


@pytest.mark.parametrize("op", list(OPS))
def test_reference_backend_double_backward_and_jvp(op):
    """What the error messages point to works: Hessian-vector products and jvp on "reference"."""
    make, fn = OPS[op]
    s, *rest = make("cpu")
    s = s.double().requires_grad_(True)
    rest = [r.double() if r.is_floating_point() else r for r in rest]
    with kdkernels.use_backend("reference"):
        assert torch.autograd.gradgradcheck(lambda x: fn(x, *rest), (s,))
        v = torch.randn_like(s)
        _, tangent = torch.func.jvp(lambda x: fn(x, *rest), (s.detach(),), (v,))
        (g,) = torch.autograd.grad(fn(s, *rest), s)
    torch.testing.assert_close(tangent, (g * v).sum())


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_batched_grad_outputs(backend, reduction):
    """autograd.grad(is_grads_batched=True) (what functional.jacobian(vectorize=True) uses)."""
    s0, t, w = _row_inputs(backend.device)

    def rows(x):
        return kdkernels.soft_label_kl(x, t, mode="sigmoid", weight=w, reduction=reduction)

    def batched_grad(x):
        x = x.clone().requires_grad_(True)
        out = rows(x)
        vs = torch.linspace(-1, 2, 3 * out.numel(), device=x.device).reshape(3, *out.shape)
        return torch.autograd.grad(out, x, vs, is_grads_batched=True)[0]

    got = batched_grad(s0)
    with kdkernels.use_backend("reference"):
        expected = batched_grad(s0)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
def test_saved_tensor_hooks_keep_their_reference(backend):
    """A saved_tensors_hooks pack that keeps the saved gradient: backward must not scale it in place."""
    s, t, w = _row_inputs(backend.device)
    s.requires_grad_(True)
    kept = []

    def pack(x):
        kept.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = OPS["kl_sigmoid"][1](s, t, w)
    snapshot = [k.clone() for k in kept]
    (loss * 3).backward()
    for k, before in zip(kept, snapshot):
        torch.testing.assert_close(k, before, rtol=0, atol=0)
    torch.testing.assert_close(s.grad, 3 * _reference_grad("kl_sigmoid", s, (t, w)))


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
def test_compiled_forward_ad_is_a_clear_error(backend):
    import torch.autograd.forward_ad as fwAD
    torch._dynamo.reset()
    s, t, _ = _row_inputs(backend.device)
    fn = torch.compile(lambda x: kdkernels.soft_label_kl(x, t), backend="aot_eager")
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        fn(fwAD.make_dual(s, torch.ones_like(s)))


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
@pytest.mark.parametrize("name,make", [
    ("confidence_masked_mse", lambda d: (torch.randn(2, 3, 4, 5, device=d), torch.randn(2, 3, 4, 5, device=d),
                                         torch.rand(2, 4, 5, device=d))),
    ("channel_wise_divergence", lambda d: (torch.randn(2, 3, 4, 5, device=d), torch.randn(2, 3, 4, 5, device=d))),
    ("localization_distillation", lambda d: (torch.randn(8, 17, device=d), torch.randn(8, 17, device=d))),
])
def test_ops_on_another_ops_kernel_are_named_in_its_errors(backend, name, make):
    """An op that runs another op's fused kernel (confidence_masked_mse on separable_weighted_mse's,
    CWD and LD on soft_label_kl's) is named in that kernel's double-backward error."""
    s, *rest = make(backend.device)
    s.requires_grad_(True)
    with pytest.raises(RuntimeError, match=rf"double backward .*kdkernels\.{name}.*reference"):
        torch.autograd.grad(getattr(kdkernels, name)(s, *rest), s, create_graph=True)
