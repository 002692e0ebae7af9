"""pearson_feature_loss (PKD): every backend × dtype × reduction × shape against the float64
reference, the gradient against the reference's autograd, MMRazor's PKDLoss, compile, autocast,
bad input, determinism and the Triton autotune configs."""
import importlib
import math

import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, DTYPES, FUSED_BACKENDS, assert_close, run_with_grad
from peer_transcriptions import mmrazor_pkd

REDUCTIONS = ["mean", "sum", "none"]
# (id, shape, layout): N·H·W = 2 through H·W and through N; a channel with a large mean against
# its spread (the shifted sums); M = N·H·W over the CPU block (4096) and the interpreter's Triton
# tile, spanning (n, c) planes mid-block: small planes, many images.
SHAPES = [
    pytest.param((2, 3, 4, 5), "plain", id="2x3x4x5"),
    pytest.param((1, 3, 1, 2), "plain", id="M=2-hw"),
    pytest.param((2, 3, 1, 1), "plain", id="M=2-n"),
    pytest.param((2, 4, 9, 11), "large_mean", id="large-mean"),
    pytest.param((3, 5, 40, 37), "plain", id="two-blocks"),
    pytest.param((300, 2, 3, 5), "plain", id="small-planes"),
]


def make(shape, dtype, kind="plain", seed=0):
    """Student and teacher in `dtype` (random, the teacher correlated with the student). kind
    "large_mean": student channel 0 ≈ 1000, teacher channel 1 ≈ −500, with a spread of 0.01
    (float32/64) or 20 (float16/bfloat16, whose step at 1000 is 0.5 and 8)."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = 0.6 * s + torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "large_mean":
        spread = 0.01 if dtype in (torch.float32, torch.float64) else 20.0
        s[:, 0] = 1000 + spread * s[:, 0]
        t[:, 1] = -500 + spread * t[:, 1]
    return s.to(dtype), t.to(dtype)


def check(backend, s, t, reduction, dtype=None, up=None, centred_reference=False):
    """The op on `backend`'s device against the float64 reference: loss and student gradient.

    centred_reference: run the reference on s − K_s and t − K_t, K the channel's first value
    (exact subtractions for a channel ≈ 1000 ± 0.01). The loss and its gradient do not change
    under a per-channel shift, and the float64 reference's own rounding of a mean of 1000 (1e-13)
    would otherwise exceed the float64 tolerance on a spread of 0.01."""
    dtype = dtype or s.dtype
    dev = backend.device
    if up is None and reduction == "none":
        up = torch.randn(s.shape[1], dtype=torch.float64)
    loss, grad = run_with_grad(lambda x: kdkernels.pearson_feature_loss(x, t.to(dev), reduction=reduction),
                               s.to(dev), up)
    s64, t64 = s.double(), t.double()
    if centred_reference:
        s64, t64 = s64 - s64[:1, :, :1, :1], t64 - t64[:1, :, :1, :1]
    ref_loss, ref_grad = run_with_grad(
        lambda x: kdkernels.reference.pearson_feature_loss(x, t64, reduction=reduction), s64, up)
    assert loss.shape == ref_loss.shape
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")
    return loss, grad


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,kind", SHAPES)
def test_matches_reference(backend, dtype, reduction, shape, kind):
    if kind == "large_mean" and backend.name == "reference" and dtype in (torch.float32, torch.float64):
        pytest.skip("the reference backend is plain PyTorch in the input dtype: its mean of a channel "
                    "≈ 1000 rounds at 1000·2^-24 (float32), against a spread of 0.01")
    s, t = make(shape, dtype, kind)
    check(backend, s, t, reduction, centred_reference=kind == "large_mean")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_constant_channels(backend, dtype, reduction):
    """A constant student channel standardises to 0: its loss is the teacher's Σ t̂²/2 and its
    gradient −G·t̂/ε (std's derivative taken as 0 at σ = 0, as torch.std's backward): finite, no
    NaN. A constant teacher channel likewise. (float16 is left out: the gradient 1/ε · t̂ of a
    constant channel exceeds its range with reduction "sum".)"""
    s, t = make((2, 4, 5, 6), dtype)
    s[:, 1] = 0.3
    t[:, 2] = -2.0
    s[:, 3], t[:, 3] = 1.5, 7.0
    loss, grad = check(backend, s, t, reduction)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert torch.all(grad[:, 3] == 0)  # both constant: d = 0 everywhere in the channel


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_non_contiguous_inputs(backend):
    dev = backend.device
    base_s, base_t = make((3, 6, 8, 7), torch.float32)
    cases = [
        (base_s.transpose(2, 3), base_t.transpose(2, 3)),                                # (3, 6, 7, 8)
        (base_s.to(memory_format=torch.channels_last), base_t.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)),
        (base_s[:, 1:4], base_t[:, ::2]),                                                # channel slices
        (torch.cat([torch.zeros(1), base_s.flatten()])[1:].view(base_s.shape), base_t),  # storage offset
        (base_s[:1].expand(4, 6, 8, 7), base_t[:1].expand(4, 6, 8, 7)),                  # stride-0 batch
    ]
    for s, t in cases:
        for reduction in REDUCTIONS:
            up = torch.randn(s.shape[1], dtype=torch.float64) if reduction == "none" else None
            loss, grad = run_with_grad(
                lambda x: kdkernels.pearson_feature_loss(x, t.to(dev), reduction=reduction), s.to(dev), up)
            ref_loss, ref_grad = run_with_grad(
                lambda x: kdkernels.reference.pearson_feature_loss(x, t.double(), reduction=reduction),
                s.double(), up)
            assert_close(loss, ref_loss, torch.float32, "loss")
            assert_close(grad, ref_grad, torch.float32, "grad")


def test_gradient_formula_float64():
    """The kernels' closed-form gradient, written out here, against the reference's autograd."""
    s, t = make((3, 4, 5, 6), torch.float64)
    s[:, 2] = 0.7  # constant channel: the σ_s term is 0
    n, c, h, w = s.shape
    m, eps = n * h * w, 1e-6
    for reduction, scale in (("mean", 1 / s.numel()), ("sum", 1.0), ("none", 1 / m)):
        x = s.clone().requires_grad_(True)
        kdkernels.reference.pearson_feature_loss(x, t, reduction=reduction).sum().backward()
        fs, ft = s.transpose(0, 1).reshape(c, -1), t.transpose(0, 1).reshape(c, -1)
        ds, dt = fs - fs.mean(1, keepdim=True), ft - ft.mean(1, keepdim=True)
        sig_s, sig_t = fs.std(1, keepdim=True), ft.std(1, keepdim=True)
        a, b = 1 / (sig_s + eps), 1 / (sig_t + eps)
        d = a * ds - b * dt
        p = torch.where(sig_s > 0, a * (d * ds).sum(1, keepdim=True) / ((m - 1) * sig_s), 0.0)
        g = scale * a * (d - d.mean(1, keepdim=True) - p * ds)
        torch.testing.assert_close(g.reshape(c, n, h, w).transpose(0, 1), x.grad, rtol=1e-9, atol=1e-9)


def test_gradcheck_fp64():
    s, t = make((2, 3, 4, 5), torch.float64)
    s.requires_grad_(True)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(lambda x: kdkernels.pearson_feature_loss(x, t, reduction=reduction), (s,))


# --------------------------------------------------------------------------------------------------
# MMRazor's PKDLoss (mmrazor/models/losses/pkd_loss.py), transcribed independently in
# peer_transcriptions.mmrazor_pkd: each level's features are standardised per channel over (N, H, W)
# with the unbiased std + 1e-6, then F.mse_loss(ŝ, t̂) / 2, summed over the levels, times loss_weight.

@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_mmrazor_pkd(backend, seed):
    """FPN levels summed, loss weight 2: kdkernels (float32, on the backend) against the
    transcription (float64): loss and student gradient; the transcription's teacher is detached."""
    levels = [make(shape, torch.float32, seed=seed + i) for i, shape in enumerate(((2, 8, 12, 10), (2, 8, 6, 5)))]
    scale = torch.rand((), generator=torch.Generator().manual_seed(seed)).item() * 3 + 0.5
    for s, _ in levels:
        s.mul_(scale).add_(seed)  # any affine change of the student leaves the loss unchanged
    dev = backend.device
    xs = [s.to(dev).clone().requires_grad_(True) for s, _ in levels]
    loss = 2.0 * sum(kdkernels.pearson_feature_loss(x, t.to(dev)) for x, (_, t) in zip(xs, levels))
    loss.backward()
    ref_xs = [s.double().requires_grad_(True) for s, _ in levels]
    ref = mmrazor_pkd(ref_xs, [t.double() for _, t in levels], loss_weight=2.0)
    ref.backward()
    assert_close(loss.detach(), ref.detach(), torch.float32, "loss")
    for x, r in zip(xs, ref_xs):
        assert_close(x.grad, r.grad, torch.float32, "grad")


# --------------------------------------------------------------------------------------------------
# Edge values, no gradient into the teacher, determinism

@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("where", ["student", "teacher"])
def test_nan_in_nan_out(backend, where):
    s, t = (x.to(backend.device) for x in make((2, 3, 4, 5), torch.float32))
    (s if where == "student" else t)[1, 1, 2, 3] = math.nan
    rows = kdkernels.pearson_feature_loss(s, t, reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()
    assert torch.isnan(kdkernels.pearson_feature_loss(s, t))
    assert torch.isnan(kdkernels.pearson_feature_loss(s, t, reduction="sum"))
    _, grad = run_with_grad(lambda x: kdkernels.pearson_feature_loss(x, t), s)
    assert torch.isnan(grad[:, 1]).all() and torch.isfinite(grad[:, [0, 2]]).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_no_gradient_into_teacher(backend):
    s = torch.randn(2, 3, 4, 4, device=backend.device, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, device=backend.device, requires_grad=True)
    kdkernels.pearson_feature_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_no_grad_mode_and_inputs_without_grad(backend):
    s, t = make((2, 4, 6, 6), torch.float32)
    ref = kdkernels.reference.pearson_feature_loss(s.double(), t.double())
    with torch.no_grad():
        a = kdkernels.pearson_feature_loss(s.to(backend.device).clone().requires_grad_(), t.to(backend.device))
    b = kdkernels.pearson_feature_loss(s.to(backend.device), t.to(backend.device))
    for loss in (a, b):
        assert_close(loss, ref, torch.float32, "loss")
        assert not loss.requires_grad


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
def test_raw_op_zero_channels(backend):
    """The public op rejects C = 0 (test_bad_input); the raw fused ops return an empty "none", a
    "sum" of 0 and a "mean" of 0/0 = NaN (torch's mean of an empty tensor) for it."""
    op = kdkernels._backend.fused_op(backend.name, "pearson_feature_loss")
    s, t = torch.randn(2, 0, 3, 3, device=backend.device), torch.randn(2, 0, 3, 3, device=backend.device)
    loss, grad = op(s, t, "none", True)
    assert loss.shape == (1, 0, 1, 1) and grad.shape == s.shape
    assert op(s, t, "sum", False)[0].item() == 0
    assert math.isnan(op(s, t, "mean", False)[0].item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_deterministic_and_thread_count_independent(dtype):
    """Bitwise equal results for 1, 2 and 8 threads. With 16 channels the CPU kernel runs channel
    by channel for 1 and 2 threads (C >= 4 threads) and block by block for 8: the same sums."""
    s, t = make((4, 16, 50, 60), dtype)  # M = 12000: three blocks per channel, mid-plane boundaries

    def results():
        with kdkernels.use_backend("cpu"):
            return [run_with_grad(lambda x: kdkernels.pearson_feature_loss(x, t, reduction=r), s)
                    for r in REDUCTIONS]

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = results()
        for threads in (1, 2, 8):
            torch.set_num_threads(threads)
            for (loss, grad), (loss0, grad0) in zip(results(), first):
                assert torch.equal(loss, loss0) and torch.equal(grad, grad0), threads
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_batched_grad_outputs_none(backend):
    """autograd.grad(is_grads_batched=True) through the per-channel "none" loss (C,)."""
    s0, t = (x.to(backend.device) for x in make((2, 3, 4, 5), torch.float64))

    def batched_grad(x):
        x = x.clone().requires_grad_(True)
        out = kdkernels.pearson_feature_loss(x, t, reduction="none")
        vs = torch.linspace(-1, 2, 4 * out.numel(), device=x.device, dtype=x.dtype).reshape(4, *out.shape)
        return torch.autograd.grad(out, x, vs, is_grads_batched=True)[0]

    got = batched_grad(s0)
    with kdkernels.use_backend("reference"):
        expected = batched_grad(s0)
    torch.testing.assert_close(got, expected)


# --------------------------------------------------------------------------------------------------
# torch.compile, autocast (opcheck of the native op: test_compile.OPCHECK_CASES)

@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_compile_fullgraph(backend, reduction):
    torch._dynamo.reset()
    s, t = (x.to(backend.device) for x in make((2, 5, 6, 4), torch.float32))

    def step(x, y):
        return (kdkernels.pearson_feature_loss(x * 2, y, reduction=reduction) * 3).sum()

    explanation = torch._dynamo.explain(step)(s, t)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for shape in ((2, 5, 6, 4), (3, 5, 6, 4)):  # the second shape recompiles (dynamic shapes)
        s, t = (x.to(backend.device) for x in make(shape, torch.float32))
        xs = s.clone().requires_grad_(True)
        xe = s.clone().requires_grad_(True)
        loss_c, loss_e = compiled(xs, t), step(xe, t)
        (g_c,), (g_e,) = torch.autograd.grad(loss_c, xs), torch.autograd.grad(loss_e, xe)
        torch.testing.assert_close(loss_c, loss_e)
        torch.testing.assert_close(g_c, g_e)


def test_autocast_bf16_cpu():
    """Under CPU autocast a conv's bf16 output (student) and an fp32 teacher are promoted to fp32;
    the gradient reaches the conv."""
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 10, 12)
    t = torch.randn(2, 8, 10, 12)
    for backend in kdkernels.available_backends("cpu"):
        conv.zero_grad()
        with kdkernels.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            s = conv(x)
            assert s.dtype == torch.bfloat16
            loss = kdkernels.pearson_feature_loss(s, t)
            bf16_only = kdkernels.pearson_feature_loss(s, t.to(torch.bfloat16))
        assert loss.dtype == torch.float32 and bf16_only.dtype == torch.bfloat16
        loss.backward()
        assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
        ref = kdkernels.reference.pearson_feature_loss(s.detach().double(), t.double())
        assert_close(loss.detach(), ref, torch.float32, f"autocast loss ({backend})")


# --------------------------------------------------------------------------------------------------
# Bad input: errors name the argument, in eager and compiled code; the raw ops check too

BAD = [
    (lambda s, t: (s[0], t[0]), ValueError, r"student must have shape \(N, C, H, W\)"),
    (lambda s, t: (s, t[:, :2]), ValueError, "student and teacher must have the same shape"),
    (lambda s, t: (s, t.double()), TypeError, "student and teacher must have the same dtype"),
    (lambda s, t: (s.int(), t.int()), TypeError, "student must be float64"),
    (lambda s, t: (s[:1, :, :1, :1], t[:1, :, :1, :1]), ValueError, r"student must hold at least 2 values"),
    (lambda s, t: (s[:, :0], t[:, :0]), ValueError, r"student must have at least one channel"),
    (lambda s, t: (s, t.numpy()), TypeError, "teacher must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("bad,exc,match", BAD)
def test_bad_input(backend, compiled, bad, exc, match):
    torch._dynamo.reset()
    s, t = bad(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5))
    if compiled and not isinstance(t, torch.Tensor):
        pytest.skip("a numpy argument is not traced")
    fn = kdkernels.pearson_feature_loss
    fn = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    with pytest.raises(exc, match=match) as info:
        fn(s, t)
    assert type(info.value) is exc


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bad_reduction(backend, compiled):
    torch._dynamo.reset()
    fn = lambda a, b: kdkernels.pearson_feature_loss(a, b, reduction="batchmean")  # noqa: E731
    fn = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
def test_raw_op_checks(backend):
    """The fused implementations check their inputs themselves (errors prefixed with the op)."""
    op = kdkernels._backend.fused_op(backend.name, "pearson_feature_loss")
    s, t = torch.randn(1, 3, 1, 1), torch.randn(1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"kdkernels\.pearson_feature_loss: student must hold at least 2"):
        op(s, t, "mean", False)
    with pytest.raises(ValueError, match=r"kdkernels\.pearson_feature_loss: reduction must be one of"):
        op(torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1), "avg", False)
    if backend.name == "cpu":  # the Triton op relies on the public op's checks for these
        with pytest.raises(ValueError, match=r"kdkernels\.pearson_feature_loss: student and teacher must"):
            op(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 4), "mean", False)
        with pytest.raises(TypeError, match=r"kdkernels\.pearson_feature_loss: student and teacher must"):
            op(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5).double(), "mean", False)
        with pytest.raises(ValueError, match=r"kdkernels\.pearson_feature_loss: student must have shape"):
            op(torch.randn(2, 3, 4), torch.randn(2, 3, 4), "mean", False)


# --------------------------------------------------------------------------------------------------
# Triton: each GPU autotune config forced (interpreter, or on a GPU), outputs poisoned with NaN so
# an element a config leaves unwritten shows up; then all configs benchmarked on one set of buffers
# before each winner runs (the partial sums must not depend on which config ran last).

TRITON = [p for p in FUSED_BACKENDS if p.values[0].name == "triton"]


@pytest.fixture
def pkd_triton(monkeypatch):
    if not TRITON:
        pytest.skip("no triton backend here (CUDA, or TRITON_INTERPRET=1 for CPU tensors)")
    module = importlib.import_module("kdkernels.triton.pearson_feature_loss")
    common = importlib.import_module("kdkernels.triton._common")

    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(common, "empty", nan_empty)

    def force(configs, winner=0):
        runs = []
        for kernel in (module._moments_kernel, module._pass2_kernel):
            def bench(kernel_call, *args, _runs=runs, **kwargs):
                i = len(_runs) % len(configs)
                _runs.append(i)
                kernel_call()
                return [0.0 if i == winner else 1.0 + i] * 3

            monkeypatch.setattr(kernel, "configs", list(configs))
            monkeypatch.setattr(kernel, "cache", {})
            monkeypatch.setitem(kernel.__dict__, "do_bench", bench)  # overrides the cached property
        return runs

    return module, force


def _triton_cases(device):
    for shape, kind in (((2, 3, 40, 30), "plain"), ((2, 3, 9, 11), "large_mean"), ((700, 2, 1, 3), "plain")):
        s, t = make(shape, torch.float32, kind)
        for reduction in REDUCTIONS:
            yield s, t, reduction


@pytest.mark.parametrize("backend", TRITON, indirect=True)
def test_triton_each_autotune_config(backend, pkd_triton):
    module, force = pkd_triton
    for config in module.gpu_configs():
        force([config])
        for s, t, reduction in _triton_cases(backend.device):
            check(backend, s, t, reduction, centred_reference=True)
        for kernel in (module._moments_kernel, module._pass2_kernel):
            assert kernel.best_config == config


@pytest.mark.parametrize("backend", TRITON, indirect=True)
def test_triton_autotune_benchmark_then_winner(backend, pkd_triton):
    module, force = pkd_triton
    configs = module.gpu_configs()
    for winner in range(len(configs)):
        runs = force(configs, winner)
        s, t = make((2, 3, 40, 30), torch.float32)
        check(backend, s, t, "mean")
        for kernel in (module._moments_kernel, module._pass2_kernel):
            assert kernel.best_config == configs[winner]
        assert runs[:2 * len(configs)] == list(range(len(configs))) * 2


@pytest.mark.parametrize("backend", TRITON, indirect=True)
def test_triton_int64_value_index(backend, monkeypatch):
    """The plane index of channels of 2³¹ values or more, in int64 (forced on a small shape)."""
    module = importlib.import_module("kdkernels.triton.pearson_feature_loss")
    monkeypatch.setattr(module, "INDEX32_LIMIT", 0)
    for reduction in REDUCTIONS:
        check(backend, *make((300, 2, 3, 5), torch.float32), reduction)


@pytest.mark.parametrize("backend", TRITON, indirect=True)
def test_triton_schema_and_opcheck(backend):
    importlib.import_module("kdkernels.triton")
    op = torch.ops.kdkernels_triton.pearson_feature_loss.default
    native = str(torch.ops.kdkernels.pearson_feature_loss.default._schema)
    assert str(op._schema) == native.replace("kdkernels::", "kdkernels_triton::", 1)
    s, t = (x.to(backend.device) for x in make((2, 3, 4, 5), torch.float32))
    for reduction in REDUCTIONS:
        torch.library.opcheck(op, (s.clone().requires_grad_(True), t, reduction, True))



# --------------------------------------------------------------------------------------------------
# GPU only: a realistic FPN level, no host synchronisation, CUDA-graph capture, opcheck

GPU_BACKENDS = [p for p in FUSED_BACKENDS if p.values[0].device == "cuda"]  # empty: skipped


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_fpn_level(backend, dtype):
    s, t = make((16, 256, 80, 80), dtype)
    check(backend, s, t, "mean")
    check(backend, s[:4], t[:4], "none")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS, indirect=True)
def test_gpu_no_host_sync_and_graph_capture(backend):
    s, t = (x.cuda() for x in make((4, 64, 40, 40), torch.float32))
    s.requires_grad_(True)

    def step():
        s.grad = None
        loss = kdkernels.pearson_feature_loss(s, t)
        loss.backward()
        return loss

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up: autotuning and lazy init may synchronise
        step()
        step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = step().detach().clone()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    s.grad = None
    with torch.cuda.graph(graph):
        loss = kdkernels.pearson_feature_loss(s, t)
        loss.backward()
    new_s, new_t = (x.cuda() for x in make((4, 64, 40, 40), torch.float32, seed=5))
    with torch.no_grad():
        s.copy_(new_s)
        t.copy_(new_t)
    graph.replay()
    torch.cuda.synchronize()
    x = new_s.clone().requires_grad_(True)
    expected = kdkernels.pearson_feature_loss(x, new_t)
    expected.backward()
    assert torch.isfinite(eager)
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(s.grad, x.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS, indirect=True)
def test_gpu_opcheck(backend):
    op = kdkernels._backend.fused_op(backend.name, "pearson_feature_loss")
    s, t = (x.cuda() for x in make((2, 3, 4, 8), torch.float32))
    for reduction in REDUCTIONS:
        torch.library.opcheck(op, (s.clone().requires_grad_(True), t, reduction, True))


# Without a GPU: the Triton kernels still compile through Triton's NVIDIA pipeline (TTIR → PTX →
# cubin with the ptxas of the triton wheel), which catches what the interpreter lets through.
_AOT_BODY = r"""
from kdkernels.triton import pearson_feature_loss as PK

part = min(tile for tile, _ in PK.GPU_TILES)
for dt, tiles in (("fp32", PK.GPU_TILES), ("bf16", PK.GPU_TILES[:1]), ("fp64", PK.GPU_TILES[-1:])):
    acc = "fp64" if dt == "fp64" else "fp32"
    ACC = tl.float64 if dt == "fp64" else tl.float32
    ints = dict(HW="i32", M="i64", stride_sn="i64", stride_sc="i32", stride_tn="i64", stride_tc="i32",
                num_parts="i32")
    for (tile, warps), index32 in zip(tiles, (True, False, True)):
        build(PK._moments_kernel, dict(s_ptr="*" + dt, t_ptr="*" + dt, partial_ptr="*" + acc, **ints),
              dict(ACC=ACC, INDEX32=index32, PART=part, TILE=tile), warps)
        for grad in (True, False):
            build(PK._pass2_kernel, dict(s_ptr="*" + dt, t_ptr="*" + dt, stats_ptr="*" + acc,
                                         grad_ptr="*" + (dt if grad else acc), partial_ptr="*" + acc,
                                         C="i32", **ints),
                  dict(WRITE_GRAD=grad, ACC=ACC, INDEX32=index32 or not grad, PART=part, TILE=tile), warps)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the other tests compile and run the kernels")
def test_triton_kernels_compile_for_sm90_without_gpu():
    from triton_aot import compile_for_sm90
    compile_for_sm90(_AOT_BODY, timeout=600)
