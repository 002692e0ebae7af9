"""Shared helpers: the backend matrix, the one tolerance table, comparison with float64."""
from typing import NamedTuple

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


class Backend(NamedTuple):
    """A concrete backend and the device whose tensors it runs on."""
    name: str
    device: str


def _all_backends():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [Backend(name, dev) for dev in devices for name in kdkernels.available_backends(dev)]


# Every backend this machine runs (kdkernels.available_backends per device): the op test matrix.
ALL_BACKENDS = [pytest.param(b, id=f"{b.name}-{b.device}") for b in _all_backends()]
FUSED_BACKENDS = [p for p in ALL_BACKENDS if p.values[0].name != "reference"]


def assert_close(actual, expected, dtype, what=""):
    """Compare a kernel result with the float64 reference at the input dtype's tolerance."""
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    rtol, atol = TOL[dtype]
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double().cpu(), expected.cpu(), rtol=rtol, atol=atol * max(scale, 1.0),
                               msg=lambda m: f"{what}: {m}")


def run_with_grad(fn, student, upstream=None):
    """loss = fn(student'); grad of (loss · upstream).sum() with respect to the student."""
    s = student.detach().clone().requires_grad_(True)
    loss = fn(s)
    up = torch.ones_like(loss) * 2.0 if upstream is None else upstream.to(loss.device, loss.dtype)
    (loss * up).sum().backward()
    return loss.detach(), s.grad


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def backend(request):
    """Indirect parameter: a Backend (or a backend name for CPU tensors), selected while the test
    runs; yields the Backend (its .device is where the test must put its tensors)."""
    b = request.param if isinstance(request.param, Backend) else Backend(request.param, "cpu")
    with kdkernels.use_backend(b.name):
        yield b
