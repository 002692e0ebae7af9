"""Shared helpers: per-dtype tolerances and comparison against the float64 reference."""
import pytest
import torch

import kdkernels

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# (rtol, atol relative to the reference's largest magnitude)
TOL = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-4, 2e-6),
    torch.bfloat16: (3e-2, 1e-2),
    torch.float16: (5e-3, 2e-3),
}
CPU_BACKENDS = ["cpu", "reference"]


def assert_close(actual, expected, dtype, what=""):
    """Compare a kernel result with the float64 reference at the input dtype's tolerance."""
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    rtol, atol = TOL[dtype]
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol * max(scale, 1.0),
                               msg=lambda m: f"{what}: {m}")


def run_with_grad(fn, student, upstream=None):
    """loss = fn(student'); grad of (loss · upstream).sum() with respect to the student."""
    s = student.detach().clone().requires_grad_(True)
    loss = fn(s)
    up = torch.ones_like(loss) * 2.0 if upstream is None else upstream.to(loss.dtype)
    (loss * up).sum().backward()
    return loss.detach(), s.grad


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def backend(request):
    with kdkernels.use_backend(request.param):
        yield request.param
