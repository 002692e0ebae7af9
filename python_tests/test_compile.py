"""torch.library contract: opcheck, torch.compile(fullgraph=True) with no graph break, autocast."""
import pytest
import torch

import kdkernels
from conftest import assert_close

OPCHECK_CASES = {
    "separable_weighted_mse": lambda red, cg: (
        torch.randn(2, 3, 4, 5, requires_grad=cg), torch.randn(2, 3, 4, 5), torch.rand(2, 4, 5),
        torch.rand(2, 3), red, 1e-6, cg),
    "soft_label_kl": lambda red, cg: (
        torch.randn(6, 7, requires_grad=cg), torch.randn(6, 7), torch.rand(6), 2.0, "softmax", red, 1e-6, cg),
    "adaptive_distillation_loss": lambda red, cg: (
        torch.randn(6, 7, requires_grad=cg), torch.randn(6, 7), None, 1.0, 1.0, 2.0, "sigmoid", False,
        red, 1e-6, cg),
    "pearson_feature_loss": lambda red, cg: (
        torch.randn(2, 3, 4, 5, requires_grad=cg), torch.randn(2, 3, 4, 5), red, cg),
    "decoupled_kd": lambda red, cg: (
        torch.randn(6, 7, requires_grad=cg), torch.randn(6, 7), torch.randint(0, 7, (6,)), 2.0, 1.0, 8.0, red, cg),
}


@pytest.mark.parametrize("name", list(OPCHECK_CASES))
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck(name, reduction, compute_grad):
    args = OPCHECK_CASES[name](reduction, compute_grad)
    torch.library.opcheck(getattr(torch.ops.kdkernels, name), args)


def _losses(s4, t4, conf, s2, t2, w):
    return (kdkernels.confidence_masked_mse(s4, t4, conf, threshold=0.2)
            + kdkernels.soft_label_kl(s2, t2, mode="sigmoid", weight=w, temperature=2.0)
            + kdkernels.soft_label_kl(s2, t2, mode="softmax")
            + kdkernels.adaptive_distillation_loss(s2, t2, weight=w).mul(0.5))


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    s4, t4, conf = torch.randn(2, 8, 6, 5, requires_grad=True), torch.randn(2, 8, 6, 5), torch.rand(2, 6, 5)
    s2, t2, w = torch.randn(30, 11, requires_grad=True), torch.randn(30, 11), torch.rand(30)
    compiled = torch.compile(_losses, fullgraph=True, backend="aot_eager")
    loss_c = compiled(s4, t4, conf, s2, t2, w)
    grads_c = torch.autograd.grad(loss_c, (s4, s2))
    loss_e = _losses(s4, t4, conf, s2, t2, w)
    grads_e = torch.autograd.grad(loss_e, (s4, s2))
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


def test_compile_inductor_no_graph_break():
    torch._dynamo.reset()
    s2, t2, w = torch.randn(30, 11, requires_grad=True), torch.randn(30, 11), torch.rand(30)

    def step(s, t, w):
        return kdkernels.soft_label_kl(s * 2, t, mode="sigmoid", weight=w) * 3

    explanation = torch._dynamo.explain(step)(s2, t2, w)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(s2, t2, w)
    (g,) = torch.autograd.grad(loss, s2)
    loss_e = step(s2, t2, w)
    (g_e,) = torch.autograd.grad(loss_e, s2)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(g, g_e)


def test_autocast_bf16_mixed_pair():
    """Under CPU autocast, a bf16 student and an fp32 teacher are promoted, not rejected."""
    lin = torch.nn.Linear(16, 10)
    x, t = torch.randn(12, 16), torch.randn(12, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = lin(x)
        assert s.dtype == torch.bfloat16
        loss = kdkernels.soft_label_kl(s, t, mode="sigmoid")
        conf_loss = kdkernels.confidence_masked_mse(s.view(12, 10, 1, 1), t.view(12, 10, 1, 1), torch.rand(12, 1, 1))
    assert loss.dtype == torch.float32 and conf_loss.dtype == torch.float32
    (loss + conf_loss).backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    ref = kdkernels.reference.soft_label_kl(s.detach().double(), t.double(), mode="sigmoid")
    assert_close(loss.detach(), ref, torch.float32, "autocast loss")


def test_training_loop_decreases_loss():
    """Drop-in use: a student trained only by the KD losses moves towards the teacher."""
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    x = torch.randn(64, 8)
    first = None
    for _ in range(30):
        with torch.no_grad():
            t = teacher(x)
        loss = kdkernels.soft_label_kl(student(x), t, mode="sigmoid", weight=kdkernels.teacher_confidence(t))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
