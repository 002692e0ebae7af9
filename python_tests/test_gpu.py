"""GPU-only checks (skipped without CUDA). The op × backend × dtype matrices run on CUDA through
conftest.ALL_BACKENDS (test_row_losses.py, test_confidence_masked_mse.py,
test_separable_weighted_mse.py, the contract tests); this file adds what only a GPU shows:
realistic shapes, compile with Inductor, CUDA-graph capture, no host synchronisation, a second
device, opcheck of the CUDA kernels."""
import pytest
import torch

import kdkernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPU_BACKENDS = [b for b in kdkernels.available_backends("cuda") if b != "reference"] \
    if torch.cuda.is_available() else ["cuda", "triton"]


def _all_losses(s4, t4, conf, s2, t2, w):
    return (kdkernels.confidence_masked_mse(s4, t4, conf, threshold=0.5)
            + kdkernels.separable_weighted_mse(s4, t4, conf, conf.new_ones(s4.shape[:2]) * 0.5)
            + kdkernels.soft_label_kl(s2, t2, mode="sigmoid", weight=w)
            + kdkernels.soft_label_kl(s2, t2, mode="softmax", weight=w)
            + kdkernels.adaptive_distillation_loss(s2, t2, weight=w)
            + kdkernels.adaptive_distillation_loss(s2, t2, weight=w, mode="softmax")
            + kdkernels.decoupled_kd(s2, t2, t2.argmax(1), beta=8.0, temperature=4.0))


def _inputs(n_rows=4096, k=80, shape4=(2, 64, 25, 42), device="cuda"):
    s4 = torch.randn(shape4, device=device, requires_grad=True)
    t4 = torch.randn(shape4, device=device)
    conf = torch.rand(shape4[0], *shape4[2:], device=device)
    s2 = torch.randn(n_rows, k, device=device, requires_grad=True)
    t2 = torch.randn(n_rows, k, device=device)
    w = torch.rand(n_rows, device=device)
    return s4, t4, conf, s2, t2, w


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_realistic_shapes_gpu(backend):
    """FPN P3 features and RetinaNet class logits: finite, matching the reference in fp32."""
    s4 = torch.randn(2, 256, 100, 168, device="cuda", requires_grad=True)
    t4 = torch.randn(2, 256, 100, 168, device="cuda")
    conf = torch.rand(2, 100, 168, device="cuda")
    wc = torch.rand(2, 256, device="cuda") * 2
    s2 = torch.randn(400_000, 80, device="cuda", requires_grad=True)
    t2 = torch.randn(400_000, 80, device="cuda")
    w = torch.rand(400_000, device="cuda")
    labels = torch.randint(0, 80, (400_000,), device="cuda")
    with kdkernels.use_backend(backend):
        a = kdkernels.confidence_masked_mse(s4, t4, conf, threshold=0.5)
        b = kdkernels.soft_label_kl(s2, t2, mode="sigmoid", weight=w)
        c = kdkernels.adaptive_distillation_loss(s2, t2, weight=w)
        d = kdkernels.separable_weighted_mse(s4, t4, conf, wc)
        e = kdkernels.decoupled_kd(s2, t2, labels, beta=8.0, temperature=4.0)
    ra = kdkernels.reference.confidence_masked_mse(s4.double(), t4.double(), conf.double(), threshold=0.5)
    rb = kdkernels.reference.soft_label_kl(s2.double(), t2.double(), mode="sigmoid", weight=w.double())
    rc = kdkernels.reference.adaptive_distillation_loss(s2.double(), t2.double(), weight=w.double())
    rd = kdkernels.reference.separable_weighted_mse(s4.double(), t4.double(), conf.double(), wc.double())
    re_ = kdkernels.reference.decoupled_kd(s2.double(), t2.double(), labels, beta=8.0, temperature=4.0)
    for x, r in ((a, ra), (b, rb), (c, rc), (d, rd), (e, re_)):
        torch.testing.assert_close(x.double(), r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compile_fullgraph_gpu(backend):
    torch._dynamo.reset()
    args = _inputs()
    with kdkernels.use_backend(backend):
        loss = torch.compile(_all_losses, fullgraph=True)(*args)
        grads = torch.autograd.grad(loss, (args[0], args[3]))
        loss_e = _all_losses(*args)
        grads_e = torch.autograd.grad(loss_e, (args[0], args[3]))
    torch.testing.assert_close(loss, loss_e)
    for g, g_e in zip(grads, grads_e):
        torch.testing.assert_close(g, g_e)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_no_host_sync(backend):
    """The default CUDA path (forward and backward) never synchronises with the host."""
    args = _inputs()
    with kdkernels.use_backend(backend):
        _all_losses(*args).backward()  # warm-up: autotuning and lazy init may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _all_losses(*args).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture(backend):
    """Forward and backward captured in a CUDA graph and replayed on new data give the eager result."""
    s4, t4, conf, s2, t2, w = _inputs()
    with kdkernels.use_backend(backend):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the capture (autotune, allocator)
            for _ in range(2):
                s4.grad = s2.grad = None
                _all_losses(s4, t4, conf, s2, t2, w).backward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        s4.grad = s2.grad = None
        with torch.cuda.graph(graph):
            loss = _all_losses(s4, t4, conf, s2, t2, w)
            loss.backward()
        new = _inputs()
        with torch.no_grad():
            for static, fresh in zip((s4, t4, conf, s2, t2, w), new):
                static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        expected_loss = _all_losses(*new)
        expected_grads = torch.autograd.grad(expected_loss, (new[0], new[3]))
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(s4.grad, expected_grads[0])
    torch.testing.assert_close(s2.grad, expected_grads[1])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_second_device(backend):
    """Tensors on cuda:1 run there (device guard), matching the same call on cuda:0."""
    args0 = _inputs(device="cuda:0")
    args1 = [a.detach().to("cuda:1").requires_grad_(a.requires_grad) for a in args0]
    with kdkernels.use_backend(backend):
        l0 = _all_losses(*args0)
        l1 = _all_losses(*args1)
        l1.backward()
    assert l1.device == torch.device("cuda:1") and args1[0].grad.device == torch.device("cuda:1")
    torch.testing.assert_close(l1.cpu(), l0.detach().cpu())


def test_opcheck_cuda():
    if "cuda" not in kdkernels.available_backends("cuda"):
        pytest.skip("extension built without CUDA")
    args = (torch.randn(6, 7, device="cuda", requires_grad=True), torch.randn(6, 7, device="cuda"),
            torch.rand(6, device="cuda"), 2.0, "sigmoid", "mean", 1e-6, True)
    torch.library.opcheck(torch.ops.kdkernels.soft_label_kl, args)
    for channel_weight in (torch.rand(2, 3, device="cuda"), None):
        args = (torch.randn(2, 3, 4, 8, device="cuda", requires_grad=True), torch.randn(2, 3, 4, 8, device="cuda"),
                torch.rand(2, 4, 8, device="cuda"), channel_weight, "mean", 1e-6, True)
        torch.library.opcheck(torch.ops.kdkernels.separable_weighted_mse, args)
    args = (torch.randn(6, 7, device="cuda", requires_grad=True), torch.randn(6, 7, device="cuda"),
            torch.randint(0, 7, (6,), device="cuda"), 2.0, 1.0, 8.0, "mean", True)
    torch.library.opcheck(torch.ops.kdkernels.decoupled_kd, args)
