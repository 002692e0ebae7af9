"""Triton backend: the ops torch.ops.kdkernels_triton.* (kdkernels/triton/) against the float64
reference, forward and backward, called with the native schema's arguments as the public ops do.

Without a CUDA device the kernels run on CPU tensors through the Triton interpreter
(TRITON_INTERPRET=1). Triton decides at import time whether its own @jit functions (tl.max, tl.sum,
...) are interpreted, so this module imports triton with TRITON_INTERPRET=1 set, then puts the
variable back as it was; the `triton_env` fixture sets it again for the tests of this module only,
so other test modules see the environment they started with. The interpreter is slow: shapes here
are small. It runs one autotune config per kernel; the `autotune` fixture makes the kernels tune
over the GPU config list instead (each config forced in turn, or all benchmarked on one set of
buffers before the winner runs, as on a GPU). Tests marked `gpu` use realistic shapes and need CUDA.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()


def _import_triton():
    if CUDA or "triton" in sys.modules:
        return pytest.importorskip("triton")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        return pytest.importorskip("triton")
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


triton = _import_triton()
# without CUDA, triton must have been imported in interpreter mode (see above)
INTERPRETED = type(triton.language.max).__name__ == "InterpretedFunction"

import kdkernels  # noqa: E402
from kdkernels import reference  # noqa: E402

if os.environ.get("KDKERNELS_REQUIRE_TRITON_TESTS") == "1" and not CUDA and not INTERPRETED:
    # scripts/test.sh (CI) sets this: the interpreter tests must run, not be skipped
    raise RuntimeError("Triton tests would be skipped: triton was imported before TRITON_INTERPRET=1 was set "
                       "(run pytest with TRITON_INTERPRET=1 in the environment)")

DEVICE = "cuda" if CUDA else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
pytestmark = pytest.mark.skipif(
    not CUDA and not INTERPRETED,
    reason="no CUDA, and triton was imported before TRITON_INTERPRET=1 could be set; "
           "run this module alone or with TRITON_INTERPRET=1 in the environment")

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# (atol, rtol) of the loss and of the gradient; atol is relative to the largest reference value.
TOL = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-6, 2e-5),
    torch.bfloat16: (1e-2, 2e-2),
    torch.float16: (2e-3, 4e-3),
}
MODES = ["softmax", "sigmoid"]
REDUCTIONS = ["mean", "sum", "none"]
OPS = ["soft_label_kl", "adaptive_distillation_loss", "separable_weighted_mse"]
ROW_OPS = {
    "soft_label_kl": dict(temperature=2.0),
    "adaptive_distillation_loss": dict(temperature=2.0, beta=1.5, gamma=1.5),
}
# autotuned kernel of each kind: (module of kdkernels.triton, attribute)
KERNELS = {"rows": ("_row_losses", "_row_loss_kernel"),
           "mse": ("separable_weighted_mse", "_separable_mse_kernel")}


@pytest.fixture(scope="module", autouse=True)
def triton_env():
    """TRITON_INTERPRET=1 on a machine without CUDA, for this module only; yields kdkernels.triton."""
    old = os.environ.get("TRITON_INTERPRET")
    if not CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        kt = importlib.import_module("kdkernels.triton")
        if not CUDA and not kt._common.INTERPRET:
            pytest.skip("kdkernels.triton was imported before TRITON_INTERPRET=1 was set; "
                        "run this module alone or with TRITON_INTERPRET=1 in the environment")
        yield kt
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


@pytest.fixture
def small_blocks(triton_env, monkeypatch):
    """Blocks of 128 classes / pixels, so that small shapes span several blocks (online softmax)."""
    monkeypatch.setitem(triton_env._common.BLOCK_LIMITS, "K", 128)
    monkeypatch.setitem(triton_env._common.BLOCK_LIMITS, "HW", 128)


@pytest.fixture
def poisoned_outputs(triton_env, monkeypatch):
    """Every buffer a kernel writes (loss, gradient, partial sums) starts as NaN instead of
    uninitialised memory, so an element that a launch does not write shows up as NaN."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(triton_env._common, "empty", nan_empty)


def gpu_configs(kt, kind):
    """The autotune configs a GPU runs for kernels of `kind` ("rows" | "mse")."""
    return [triton.Config({"TILE": tile}, num_warps=warps) for tile, warps in kt._common._GPU_TILES[kind]]


@pytest.fixture
def autotune(triton_env, monkeypatch):
    """autotune(kind, configs, winner) makes the kernel of `kind` tune over `configs` from an empty
    cache, as triton.autotune does on a GPU: on the first call of each key, every config runs once,
    in order, on the call's own buffers, then `winner` (an index) runs on the same buffers.
    Returns the kernel (its best_config is the config that ran last) and the list of benchmarked
    config indices."""
    def setup(kind, configs, winner=0):
        module, attr = KERNELS[kind]
        kernel = getattr(importlib.import_module(f"kdkernels.triton.{module}"), attr)
        runs = []

        def bench(kernel_call, *args, **kwargs):
            i = len(runs) % len(configs)
            runs.append(i)
            kernel_call()
            return [0.0 if i == winner else 1.0 + i] * 3

        monkeypatch.setattr(kernel, "configs", list(configs))
        monkeypatch.setattr(kernel, "cache", {})
        monkeypatch.setitem(kernel.__dict__, "do_bench", bench)  # overrides the cached property
        return kernel, runs

    return setup


# ------------------------------------------------------------------------------------------------
# Calling the ops

def fused(name):
    return getattr(torch.ops.kdkernels_triton, name).default


def schema_args(name, student, *inputs, compute_grad, **kwargs):
    """The native schema's arguments for the reference-style call name(student, *inputs, **kwargs):
    the remaining arguments by name from kwargs, else the reference's default."""
    defaults = inspect.signature(getattr(reference, name)).parameters
    args = [student, *inputs]
    for arg in getattr(torch.ops.kdkernels, name).default._schema.arguments[len(args):-1]:
        args.append(kwargs.pop(arg.name) if arg.name in kwargs else defaults[arg.name].default)
    assert not kwargs, f"not in the schema of {name}: {sorted(kwargs)}"
    return args + [compute_grad]


def masked_as_separable(student, teacher, confidence, threshold=0.0, power=1.0, **kwargs):
    """confidence_masked_mse's arguments → separable_weighted_mse's, as the public op converts
    them: the mask in the accumulation dtype becomes the spatial weight."""
    n, _, h, w = student.shape
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    mask = reference._confidence_mask(confidence.reshape(n, h, w), threshold, power, acc)
    return (teacher, mask), kwargs


def call(name, student, *inputs, compute_grad=None, **kwargs):
    """The loss of torch.ops.kdkernels_triton.<name>, as the public op computes it
    ("confidence_masked_mse": its mask, then the separable_weighted_mse kernel)."""
    if compute_grad is None:
        compute_grad = torch.is_grad_enabled() and student.requires_grad
    if name == "confidence_masked_mse":
        name, (inputs, kwargs) = "separable_weighted_mse", masked_as_separable(student, *inputs, **kwargs)
    loss, _ = fused(name)(*schema_args(name, student, *inputs, compute_grad=compute_grad, **kwargs))
    return loss


def run(name, student, *inputs, grad_out=None, **kwargs):
    """loss, d(loss · grad_out)/d student through the op's autograd (grad_out random if None)."""
    s = student.detach().clone().requires_grad_()
    loss = call(name, s, *inputs, **kwargs)
    g = torch.randn(loss.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    g = (g if grad_out is None else torch.full(loss.shape, float(grad_out), dtype=torch.float64))
    g = g.to(device=loss.device, dtype=loss.dtype)
    (grad,) = torch.autograd.grad(loss, s, g)
    return loss.detach(), grad, g.double()  # the reference gets the same (rounded) grad_out


def assert_close(actual, expected, dtype, what=""):
    atol, rtol = TOL[dtype]
    assert actual.shape == expected.shape, what
    assert actual.dtype == dtype, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol,
                               msg=lambda m: f"{what} ({dtype}): {m}")


def check_against_reference(name, student, inputs, kwargs, dtype, grad_out=None):
    loss, grad, g = run(name, student, *inputs, grad_out=grad_out, **kwargs)
    # reference in float64 on the same (rounded) input values
    inputs64 = [a.double() if isinstance(a, torch.Tensor) else a for a in inputs]
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    s64 = student.detach().double().requires_grad_()
    ref = getattr(reference, name)(s64, *inputs64, **kw64)
    (ref_grad,) = torch.autograd.grad(ref, s64, g.to(ref.device))
    assert_close(loss, ref.detach(), dtype, f"{name} loss")
    assert_close(grad, ref_grad, dtype, f"{name} grad")
    return loss, grad


def logits(r, k, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(r, k, generator=gen, dtype=torch.float64) * scale
    t = torch.randn(r, k, generator=gen, dtype=torch.float64) * scale
    w = torch.rand(r, generator=gen, dtype=torch.float64)
    return (s.to(DEVICE, dtype), t.to(DEVICE, dtype), w.to(DEVICE, dtype))


def features(n, c, h, w, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    t = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    conf = torch.rand(n, h, w, generator=gen, dtype=torch.float64)
    return s.to(DEVICE, dtype), t.to(DEVICE, dtype), conf.to(DEVICE, dtype)


# ------------------------------------------------------------------------------------------------
# soft_label_kl and adaptive_distillation_loss

@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "w"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", list(ROW_OPS))
def test_row_ops_match_reference(op, mode, reduction, dtype, weighted):
    s, t, w = logits(37, 100, dtype)  # 37 rows: the last row tile is partial
    kwargs = dict(ROW_OPS[op], mode=mode, reduction=reduction, weight=w if weighted else None)
    check_against_reference(op, s, (t,), kwargs, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", list(ROW_OPS))
def test_row_ops_several_k_blocks(op, mode, small_blocks):
    """K = 300 over blocks of 128: online softmax (running max / rescaled sums) and the second pass."""
    s, t, w = logits(9, 300, torch.float32, seed=1, scale=6.0)
    for reduction in REDUCTIONS:
        kwargs = dict(ROW_OPS[op], mode=mode, reduction=reduction, weight=w)
        check_against_reference(op, s, (t,), kwargs, torch.float32)
    s64, t64, w64 = (x.double() for x in (s, t, w))
    check_against_reference(op, s64, (t64,), dict(ROW_OPS[op], mode=mode, weight=w64), torch.float64)


@pytest.mark.parametrize("mode", MODES)
def test_row_ops_grad_out_two(mode):
    """The loss is not the last op (× 2): the backward scales the forward's gradient."""
    s, t, w = logits(24, 20, torch.float32, seed=2)
    for op, kw in ROW_OPS.items():
        for reduction in REDUCTIONS:
            check_against_reference(op, s, (t,), dict(kw, mode=mode, weight=w, reduction=reduction),
                                    torch.float32, grad_out=2.0)


@pytest.mark.parametrize("mode", MODES)
def test_row_ops_non_contiguous(mode):
    base_s, base_t, w = logits(32, 64, torch.float32, seed=3)
    views = {
        "row stride": (base_s[:, 8:40], base_t[:, 8:40], w),  # stride(1) == 1, stride(0) = 64
        "transposed": (base_s.t()[:, :16], base_t.t()[:, :16], None),  # stride(1) != 1
    }
    for s, t, weight in views.values():
        assert not s.is_contiguous()
        for op, kw in ROW_OPS.items():
            check_against_reference(op, s, (t,), dict(kw, mode=mode, weight=weight), torch.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_row_ops_strided_weight(reduction):
    """A weight view with stride 2 (every other value of a buffer) and a storage offset."""
    s, t, _ = logits(20, 12, torch.float32, seed=15)
    base = torch.rand(41, generator=torch.Generator().manual_seed(15)).to(DEVICE)
    w = base[1::2]
    assert w.stride(0) == 2 and w.storage_offset() == 1
    for op, kw in ROW_OPS.items():
        for mode in MODES:
            check_against_reference(op, s, (t,), dict(kw, mode=mode, weight=w, reduction=reduction),
                                    torch.float32)


@pytest.mark.parametrize("detach_weight", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_adl_variants(mode, detach_weight):
    s, t, w = logits(12, 30, torch.float64, seed=4)
    # T, β, γ not representable in float32: they reach the kernel as float32 pairs (split_f64)
    for beta, gamma in [(0.0, 2.0), (0.1, 0.3), (1.5, 1.0), (1.0, 0.0)]:
        kwargs = dict(temperature=0.7, beta=beta, gamma=gamma, mode=mode, weight=w,
                      detach_weight=detach_weight)
        check_against_reference("adaptive_distillation_loss", s, (t,), kwargs, torch.float64)


@pytest.mark.parametrize("mode", MODES)
def test_soft_label_kl_float64_non_dyadic_temperature(mode):
    s, t, w = logits(12, 30, torch.float64, seed=4)
    for reduction in REDUCTIONS:
        check_against_reference("soft_label_kl", s, (t,),
                                dict(temperature=3.0, mode=mode, weight=w, reduction=reduction),
                                torch.float64)


@pytest.mark.parametrize("mode", MODES)
def test_adl_gamma_zero_is_soft_label_kl(mode):
    s, t, w = logits(10, 40, torch.float64, seed=5)
    kl, gkl, _ = run("soft_label_kl", s, t, mode=mode, weight=w, grad_out=1.0)
    adl, gadl, _ = run("adaptive_distillation_loss", s, t, mode=mode, weight=w, gamma=0.0, grad_out=1.0)
    torch.testing.assert_close(adl, kl)
    torch.testing.assert_close(gadl, gkl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_row_ops_saturated_teacher_and_zero_kl(mode, dtype):
    """p = 0 or 1 (teacher logits ±60) and s == t (KL = 0, D may be 0): finite, match reference."""
    s, t, w = logits(8, 16, dtype, seed=6)
    t[:4] = 60.0 * torch.sign(t[:4])
    s[4:] = t[4:]
    for op, kw in ROW_OPS.items():
        for gamma in (0.5, 2.0):
            kwargs = dict(kw, mode=mode, weight=w)
            if op == "adaptive_distillation_loss":
                kwargs["gamma"] = gamma
            check_against_reference(op, s, (t,), kwargs, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_adl_zero_divergence_no_nan(mode):
    """Saturated teacher and s == t: KL = H = D = 0, e = 0. The float64 reference's autograd gives
    NaN there (0 · ∞ through e^γ, γ < 1); the kernel gives loss 0 and a zero gradient."""
    t = torch.full((4, 6), -60.0, device=DEVICE)
    t[:, 0] = 60.0
    for gamma in (0.5, 2.0):
        for detach_weight in (False, True):
            loss, grad, _ = run("adaptive_distillation_loss", t, t, mode=mode, gamma=gamma,
                                detach_weight=detach_weight, grad_out=1.0)
            assert loss.item() == 0.0
            assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("eps", [1e-6, 1e-300], ids=["eps=1e-6", "eps=1e-300"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_row_ops_zero_weights(reduction, dtype, eps):
    """All-zero weights: the normaliser Σ w is exactly 0, so "mean" is 0 with a zero gradient for
    every eps, also one that underflows to 0 in float32 (1e-300: max(0, eps) = 0, no 0/0)."""
    s, t, _ = logits(6, 10, dtype, seed=7)
    w = torch.zeros(6, device=DEVICE, dtype=dtype)
    for op, kw in ROW_OPS.items():
        for mode in MODES:
            loss, grad, _ = run(op, s, t, **kw, mode=mode, weight=w, reduction=reduction, eps=eps)
            assert torch.equal(loss, torch.zeros_like(loss)), (op, mode)
            assert torch.equal(grad, torch.zeros_like(grad)), (op, mode)


def test_row_ops_tiny_eps_with_weights():
    """eps = 1e-300 (0 in float32) with a non-zero weight sum: norm = Σ w, as with any eps."""
    s, t, w = logits(6, 10, torch.float32, seed=7)
    for op, kw in ROW_OPS.items():
        check_against_reference(op, s, (t,), dict(kw, weight=w, eps=1e-300), torch.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_row_ops_empty(reduction):
    s = torch.zeros(0, 7, device=DEVICE, requires_grad=True)
    t = torch.zeros(0, 7, device=DEVICE)
    for op, kw in ROW_OPS.items():
        for mode in MODES:
            loss = call(op, s, t, **kw, mode=mode, reduction=reduction)
            assert loss.shape == ((0,) if reduction == "none" else ())
            assert torch.equal(loss.detach(), torch.zeros_like(loss))
            (grad,) = torch.autograd.grad(loss.sum(), s)
            assert grad.shape == (0, 7)


def test_row_ops_without_grad():
    """compute_grad=False: the kernel skips the gradient, same loss; backward then says why it fails."""
    s, t, w = logits(5, 12, torch.float32, seed=8)
    for op, kw in ROW_OPS.items():
        a = call(op, s, t, **kw, weight=w, compute_grad=True)
        b = call(op, s, t, **kw, weight=w, compute_grad=False)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# confidence_masked_mse

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("threshold,power", [(0.0, 1.0), (0.4, 2.0), (0.3, 0.0)])
def test_masked_mse_matches_reference(threshold, power, reduction, dtype):
    s, t, conf = features(2, 3, 5, 7, dtype)
    kwargs = dict(threshold=threshold, power=power, reduction=reduction)
    check_against_reference("confidence_masked_mse", s, (t, conf), kwargs, dtype)


def test_masked_mse_several_pixel_blocks(small_blocks):
    """H·W = 300 over blocks of 128 pixels; N·C = 40 planes over several plane tiles."""
    s, t, conf = features(2, 20, 15, 20, torch.float32, seed=1)
    for reduction in REDUCTIONS:
        check_against_reference("confidence_masked_mse", s, (t, conf),
                                dict(threshold=0.2, reduction=reduction), torch.float32)


def test_masked_mse_layouts():
    """Strided inputs: channels_last, a channel slice and a batch slice of larger tensors (storage
    offsets, plane strides), an expanded teacher (stride 0 over N), and (N, 1, H, W) or transposed
    confidence; float32 and float16 confidence with a float32 student."""
    s, t, conf = features(2, 4, 6, 5, torch.float32, seed=2)
    big_s, big_t, big_conf = features(3, 9, 6, 5, torch.float32, seed=3)
    cases = {
        "channels_last": (s.to(memory_format=torch.channels_last),
                          t.to(memory_format=torch.channels_last), conf.unsqueeze(1)),
        "transposed HW": (s.transpose(2, 3).contiguous().transpose(2, 3), t, conf),
        "channel slice": (big_s[1:, 2:6], big_t[:2, 5:9], big_conf[1:]),
        "expanded teacher": (big_s[1:, :4], t[:1].expand(2, 4, 6, 5), conf.half()),
        "transposed conf": (s, t, conf.transpose(1, 2).contiguous().transpose(1, 2)),
    }
    for what, (fs, ft, fc) in cases.items():
        assert not (fs.is_contiguous() and ft.is_contiguous() and fc.is_contiguous()), what
        for reduction in REDUCTIONS:
            check_against_reference("confidence_masked_mse", fs, (ft, fc),
                                    dict(threshold=0.5, power=1.5, reduction=reduction), torch.float32,
                                    grad_out=2.0)


def masked_mse_contract(s, t, conf, *, threshold=0.0, power=1.0, reduction="mean", eps=1e-6):
    """docs/METHOD.md section 4 in float64, on (N, C, H, W) s, t and (N, H, W) conf: (loss, ∂loss/∂s).
    A pixel is masked out iff conf < threshold (exact: conf converts to float64 exactly); it adds
    exactly 0 to the loss, to Σ m and to the gradient, as does a selected pixel whose m is 0;
    "mean" with Σ m = 0 is 0."""
    s, t, c = s.double(), t.double(), conf.double().unsqueeze(1)
    m = torch.where(c < threshold, 0.0, c.pow(power))
    keep = m != 0  # a zero weight (masked out, or conf = 0) adds exactly 0; NaN is kept
    d = s - t
    loss = torch.where(keep, m * d * d, 0.0)
    grad = torch.where(keep, 2 * m * d, 0.0)
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return loss.sum(), grad
    z = m.sum()
    if z == 0:
        return torch.zeros((), dtype=torch.float64), torch.zeros_like(grad)
    norm = s.shape[1] * max(float(z), eps)
    return loss.sum() / norm, grad / norm


def check_contract(s, t, conf, **kwargs):
    loss, grad, _ = run("confidence_masked_mse", s, t, conf, grad_out=1.0, **kwargs)
    ref_loss, ref_grad = masked_mse_contract(s, t, conf, **kwargs)
    atol, rtol = TOL[s.dtype]
    torch.testing.assert_close(loss.double(), ref_loss, atol=atol, rtol=rtol, equal_nan=True)
    torch.testing.assert_close(grad.double(), ref_grad, atol=atol, rtol=rtol, equal_nan=True)
    return loss, grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("power", [1.0, 0.0, 2.0])
def test_masked_mse_nan_confidence_is_selected(power, reduction):
    """NaN < τ is false: a NaN confidence is selected with weight NaN^power (NaN, or 1 for power 0)."""
    s, t, conf = features(2, 3, 4, 5, torch.float32, seed=4)
    conf[1, 2, 3] = float("nan")
    loss, grad = check_contract(s, t, conf, threshold=0.5, power=power, reduction=reduction)
    if power == 0.0:
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    else:
        assert torch.isnan(loss).any() and torch.isnan(grad[1, :, 2, 3]).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_mse_masked_out_pixels_add_exactly_zero(reduction):
    """Masked-out pixels (conf < τ) with student/teacher ±inf or NaN, with conf = 0 and power < 0
    (0^-1 = inf) or a negative conf and a fractional power (NaN): loss and gradient stay finite
    and equal the selected pixels' contribution alone."""
    s, t, conf = features(2, 3, 4, 5, torch.float32, seed=5)
    conf = conf * 0.8 + 0.2  # selected pixels: conf in [0.2, 1)
    conf[0, 0, :] = 0.0
    conf[1, 1, :2] = -0.5
    s[0, :, 0, 0] = float("inf")
    t[0, :, 0, 1] = float("nan")
    s[1, :, 1, 0] = float("-inf")
    for power in (-1.0, 0.5, 1.0):
        loss, grad = check_contract(s, t, conf, threshold=0.1, power=power, reduction=reduction)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), power


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("eps", [1e-6, 1e-300], ids=["eps=1e-6", "eps=1e-300"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_mse_all_zero_mask(reduction, eps, dtype):
    """Empty mask (all conf < τ), or a mask of weights 0 (conf = 0 selected by τ = 0): Σ m = 0, so
    the loss is 0 and the gradient 0 for every eps, also one that is 0 in float32."""
    s, t, conf = features(2, 3, 4, 4, dtype, seed=3)
    for c, threshold in ((conf * 0.5, 0.6), (conf * 0.0, 0.0)):
        loss, grad, _ = run("confidence_masked_mse", s, t, c, threshold=threshold,
                            reduction=reduction, eps=eps)
        assert torch.equal(loss, torch.zeros_like(loss))
        assert torch.equal(grad, torch.zeros_like(grad))


def test_masked_mse_tiny_eps_with_mask():
    """eps = 1e-300 (0 in float32) with a non-empty mask: Z = Σ m, as with any eps."""
    s, t, conf = features(2, 3, 4, 4, torch.float32, seed=3)
    check_against_reference("confidence_masked_mse", s, (t, conf), dict(threshold=0.3, eps=1e-300),
                            torch.float32)


@pytest.mark.parametrize("conf_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_masked_mse_threshold_in_the_accumulation_dtype(conf_dtype):
    """conf < threshold is evaluated in the accumulation dtype, as in the reference and the native
    kernels when they run on the same dtype: with threshold = c + 1e-12 (c = 0.69921875, a value of
    every float dtype), a confidence of c is selected for a float32 student (the threshold rounds
    to c) and masked out for a float64 one. Thresholds beyond the float32 range mask out, or
    select, every finite confidence."""
    conf = torch.full((1, 2, 2), 0.9, dtype=conf_dtype, device=DEVICE)
    conf[0, 0, 0] = 0.69921875
    conf[0, 1, 1] = 0.5
    for dtype in (torch.float32, torch.float64):
        s, t, _ = features(1, 2, 2, 2, dtype, seed=6)
        _, grad, _ = run("confidence_masked_mse", s, t, conf, threshold=0.69921875 + 1e-12,
                         reduction="sum", grad_out=1.0)
        assert bool((grad[0, :, 0, 0] != 0).all()) == (dtype == torch.float32)
        assert (grad[0, :, 1, 1] == 0).all() and (grad[0, :, 0, 1] != 0).all()
        for threshold in (1e39, -1e39):
            for reduction in REDUCTIONS:
                check_contract(s, t, conf, threshold=threshold, reduction=reduction)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_mse_empty(shape, reduction):
    s = torch.zeros(shape, device=DEVICE, requires_grad=True)
    t = torch.zeros(shape, device=DEVICE)
    conf = torch.zeros(shape[0], shape[2], shape[3], device=DEVICE)
    loss = call("confidence_masked_mse", s, t, conf, reduction=reduction)
    assert loss.shape == (shape if reduction == "none" else ())
    assert torch.equal(loss.detach(), torch.zeros_like(loss))
    (grad,) = torch.autograd.grad(loss.sum(), s)
    assert torch.equal(grad, torch.zeros_like(s))


# ------------------------------------------------------------------------------------------------
# separable_weighted_mse (the kernel above, with a channel weight)

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_separable_mse_matches_reference(reduction, dtype):
    s, t, ws = features(2, 3, 5, 7, dtype, seed=20)
    wc = torch.rand(2, 3, generator=torch.Generator().manual_seed(20), dtype=torch.float64) * 2
    for channel_weight in (None, wc.to(DEVICE, dtype)):
        check_against_reference("separable_weighted_mse", s, (t, ws),
                                dict(channel_weight=channel_weight, reduction=reduction), dtype)


def test_separable_mse_strided_weights_and_blocks(small_blocks):
    """H·W = 300 over blocks of 128 pixels; a transposed float16 channel weight, a float64 spatial
    weight expanded over N (stride 0), channel-sliced features."""
    big_s, big_t, _ = features(2, 9, 15, 20, torch.float32, seed=21)
    gen = torch.Generator().manual_seed(21)
    ws = torch.rand(1, 15, 20, generator=gen, dtype=torch.float64).to(DEVICE).expand(2, 15, 20)
    wc = torch.rand(5, 2, generator=gen).to(DEVICE).half().t()
    for reduction in REDUCTIONS:
        check_against_reference("separable_weighted_mse", big_s[:, 2:7], (big_t[:, 4:9], ws),
                                dict(channel_weight=wc, reduction=reduction), torch.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_separable_mse_zero_weights_are_exact(reduction):
    """Zero spatial or channel weights with ±inf/NaN features there: loss and gradient equal those
    of the clean features (exactly 0 there)."""
    s, t, ws = features(2, 3, 4, 5, torch.float32, seed=22)
    wc = torch.rand(2, 3, generator=torch.Generator().manual_seed(22)).to(DEVICE)
    ws[0, 1, :], wc[1, 2] = 0.0, 0.0
    zero = (ws.unsqueeze(1) * wc[:, :, None, None] == 0).expand_as(s)
    bad_s, bad_t = s.clone(), t.clone()
    bad_s[0, :, 1, 0], bad_t[0, 2, 1, 3], bad_s[1, 2] = float("inf"), float("nan"), float("-inf")
    kwargs = dict(channel_weight=wc, reduction=reduction)
    loss, grad, _ = run("separable_weighted_mse", bad_s, bad_t, ws, grad_out=1.0, **kwargs)
    clean_loss, clean_grad, _ = run("separable_weighted_mse", s, t, ws, grad_out=1.0, **kwargs)
    assert torch.isfinite(loss).all() and torch.equal(grad[zero], torch.zeros_like(grad[zero]))
    torch.testing.assert_close(loss, clean_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, clean_grad, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Autotuning: every config on its own, and every config benchmarked on one set of buffers before
# the winner runs (the partial sums of a config with a larger tile must not mix with those a
# config with a smaller tile left behind).

def _row_cases():
    s, t, w = logits(37, 100, torch.float32, seed=16)  # 37 rows: 3 to 10 row tiles
    for op, mode in (("soft_label_kl", "softmax"), ("adaptive_distillation_loss", "sigmoid")):
        for reduction in REDUCTIONS:
            yield op, s, (t,), dict(ROW_OPS[op], mode=mode, reduction=reduction, weight=w)


def _mse_cases():
    s, t, conf = features(2, 40, 5, 7, torch.float32, seed=16)  # 80 planes: 2 to 5 plane tiles
    cw = torch.rand(40, 2, generator=torch.Generator().manual_seed(16)).to(DEVICE).t()  # strided
    for reduction in REDUCTIONS:
        yield "confidence_masked_mse", s, (t, conf), dict(threshold=0.3, reduction=reduction)
        yield "separable_weighted_mse", s, (t, conf), dict(channel_weight=cw, reduction=reduction)


CASES = {"rows": _row_cases, "mse": _mse_cases}


@pytest.mark.parametrize("kind", list(KERNELS))
def test_each_autotune_config(kind, autotune, poisoned_outputs, triton_env):
    """Each GPU config alone (the one a GPU may pick): every partial sum, loss and gradient element
    written (outputs start as NaN), results match the reference."""
    for config in gpu_configs(triton_env, kind):
        kernel, _ = autotune(kind, [config])
        for name, s, inputs, kwargs in CASES[kind]():
            check_against_reference(name, s, inputs, kwargs, torch.float32)
        assert kernel.best_config == config


@pytest.mark.parametrize("kind", list(KERNELS))
def test_autotune_benchmark_then_winner(kind, autotune, poisoned_outputs, triton_env):
    """All GPU configs run in turn on the same buffers (smallest tile first), then the winner runs
    again on them; for each winner, the result is the reference's (no stale partial sums)."""
    configs = gpu_configs(triton_env, kind)
    for winner in range(len(configs)):
        kernel, runs = autotune(kind, configs, winner)
        for name, s, inputs, kwargs in CASES[kind]():
            check_against_reference(name, s, inputs, kwargs, torch.float32)
        assert kernel.best_config == configs[winner]
        assert runs[:len(configs)] == list(range(len(configs)))


def test_configs_back_to_back_on_one_shape(autotune, triton_env):
    """The smallest then the largest tile on the same shape, for each kind: same results."""
    for kind, cases in CASES.items():
        configs = gpu_configs(triton_env, kind)
        results = []
        for config in (configs[0], configs[-1], configs[0]):
            autotune(kind, [config])
            results.append([run(name, s, *inputs, grad_out=1.0, **kwargs)[:2]
                            for name, s, inputs, kwargs in cases()])
        for other in results[1:]:
            for (loss, grad), (loss0, grad0) in zip(other, results[0]):
                torch.testing.assert_close(loss, loss0)
                torch.testing.assert_close(grad, grad0)


# ------------------------------------------------------------------------------------------------
# Devices

def test_launches_run_under_the_inputs_device(triton_env, monkeypatch):
    """Every kernel launch happens inside _common.device_guard(device of the inputs)."""
    from kdkernels.triton import _row_losses, separable_weighted_mse

    entered = []

    @contextlib.contextmanager
    def guard(device):
        entered.append(device)
        try:
            yield
        finally:
            entered.pop()

    launches = []

    def checked_wrap_triton(kernel):
        wrapped = real_wrap_triton(kernel)

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append(list(entered))
                    return wrapped[grid](*args, **kwargs)
                return launch
        return Launcher()

    real_wrap_triton = _row_losses.wrap_triton
    monkeypatch.setattr(triton_env._common, "device_guard", guard)
    for module in (_row_losses, separable_weighted_mse):
        monkeypatch.setattr(module, "wrap_triton", checked_wrap_triton)
    s, t, w = logits(5, 6, torch.float32)
    fs, ft, conf = features(1, 2, 3, 3, torch.float32)
    call("soft_label_kl", s, t, weight=w)
    call("adaptive_distillation_loss", s, t, reduction="none")
    call("confidence_masked_mse", fs, ft, conf, compute_grad=True)
    call("separable_weighted_mse", fs, ft, conf, channel_weight=torch.rand(1, 2, device=fs.device))
    assert launches == [[s.device]] * 4


def test_device_guard_selects_the_device(triton_env):
    guard = triton_env._common.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(triton_env._common.device_guard(torch.device("cpu")), contextlib.nullcontext)


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_inputs_on_a_second_device():
    assert torch.cuda.current_device() == 0
    s, t, w = (x.to("cuda:1") for x in logits(300, 80, torch.float32, seed=17))
    fs, ft, conf = (x.to("cuda:1") for x in features(2, 16, 20, 24, torch.float32, seed=17))
    for reduction in REDUCTIONS:
        for op, kw in ROW_OPS.items():
            check_against_reference(op, s, (t,), dict(kw, weight=w, reduction=reduction), torch.float32)
        check_against_reference("confidence_masked_mse", fs, (ft, conf),
                                dict(threshold=0.5, reduction=reduction), torch.float32)


# ------------------------------------------------------------------------------------------------
# Registration: schemas, the shared autograd, opcheck and torch.compile

def test_schemas_are_the_native_ones():
    for name in OPS:
        native = str(getattr(torch.ops.kdkernels, name).default._schema)
        assert str(fused(name)._schema) == native.replace("kdkernels::", "kdkernels_triton::", 1)


def test_no_python_entry_points(triton_env):
    """The public ops call torch.ops.kdkernels_triton.<name> with the native schema's arguments;
    the autograd is the one of kdkernels.ops._registration."""
    for name in OPS:
        assert not hasattr(triton_env, f"{name}_triton")
    assert not hasattr(triton_env._common, "register_grad_autograd")


def test_shared_backward():
    """The backward registered by kdkernels.ops._registration.register_loss_autograd: it names the
    public op, and refuses double backward and compute_grad=False."""
    s, t, w = logits(4, 5, torch.float32)
    s.requires_grad_()
    loss = call("soft_label_kl", s, t, weight=w, compute_grad=False)
    with pytest.raises(RuntimeError, match=r"kdkernels\.soft_label_kl ran with compute_grad=False"):
        loss.backward()
    loss = call("soft_label_kl", s, t, weight=w)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, s, create_graph=True)


def _op_samples():
    s, t, w = logits(6, 9, torch.float32, seed=9)
    fs, ft, conf = features(2, 3, 4, 5, torch.float32, seed=9)
    cw = torch.rand(2, 3, device=DEVICE)
    s.requires_grad_()
    fs.requires_grad_()
    return [
        ("soft_label_kl", (s, t, w, 2.0, "softmax", "mean", 1e-6, True)),
        ("soft_label_kl", (s, t, None, 1.0, "sigmoid", "none", 1e-6, True)),
        ("adaptive_distillation_loss", (s, t, w, 2.0, 1.0, 2.0, "sigmoid", False, "sum", 1e-6, True)),
        ("adaptive_distillation_loss", (s, t, None, 1.0, 1.0, 1.0, "softmax", True, "none", 1e-6, True)),
        ("separable_weighted_mse", (fs, ft, conf, None, "mean", 1e-6, True)),
        ("separable_weighted_mse", (fs, ft, conf, cw, "none", 1e-6, True)),
        ("separable_weighted_mse", (fs.detach(), ft, conf, cw, "sum", 1e-6, False)),
        ("decoupled_kd", (s, t, torch.randint(0, s.shape[1], (s.shape[0],), device=s.device), 2.0, 1.0, 8.0,
                          "mean", True)),
        ("decoupled_kd", (s.detach(), t, torch.zeros(s.shape[0], dtype=torch.long, device=s.device), 1.0, 0.5,
                          1.0, "none", False)),
    ]


def test_opcheck():
    """Schema, fake kernel, autograd registration and AOT dispatch (static and dynamic shapes)."""
    for name, args in _op_samples():
        torch.library.opcheck(fused(name), args)


def test_torch_compile_fullgraph():
    """The ops compile without graph breaks and match eager. On CPU they are opaque custom ops (see
    kdkernels/triton/_common.py) and the backend is aot_eager; on a GPU inductor compiles the
    triton_op kernels."""
    backend = "inductor" if CUDA else "aot_eager"
    s, t, w = logits(8, 12, torch.float32, seed=10)
    fs, ft, conf = features(2, 3, 4, 5, torch.float32, seed=10)
    cw = torch.rand(2, 3, device=DEVICE)

    def total(s, t, w, fs):  # the native schema's arguments, as the public ops pass them
        kl, _ = fused("soft_label_kl")(s, t, w, 2.0, "softmax", "mean", 1e-6, True)
        adl, _ = fused("adaptive_distillation_loss")(s, t, w, 1.0, 1.0, 2.0, "sigmoid", False, "mean", 1e-6, True)
        mse, _ = fused("separable_weighted_mse")(fs, ft, conf, cw, "mean", 1e-6, True)
        return (kl + adl * 0.5 + mse) * 2

    torch._dynamo.reset()
    compiled = torch.compile(total, fullgraph=True, backend=backend)
    for rows in (8, 5):  # the second shape recompiles with dynamic shapes
        args = [s[:rows].detach().requires_grad_(), fs.detach().requires_grad_()]
        eager_args = [a.detach().clone().requires_grad_() for a in args]
        out = compiled(args[0], t[:rows], w[:rows], args[1])
        ref = total(eager_args[0], t[:rows], w[:rows], eager_args[1])
        grads = torch.autograd.grad(out, args)
        ref_grads = torch.autograd.grad(ref, eager_args)
        torch.testing.assert_close(out, ref)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)


def test_kdkernels_imports_without_triton():
    """triton is optional: kdkernels imports and runs its other backends without it."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, kdkernels\n"
            "x = torch.randn(3, 4)\n"
            "kdkernels.soft_label_kl(x, x.flip(0))\n"
            "try:\n    import kdkernels.triton\nexcept ImportError:\n    print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]


# ------------------------------------------------------------------------------------------------
# GPU: realistic shapes

@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_masked_mse_fpn_level(dtype):
    s, t, conf = features(2, 256, 100, 168, dtype, seed=11)
    for reduction in REDUCTIONS:
        check_against_reference("confidence_masked_mse", s, (t, conf),
                                dict(threshold=0.5, power=1.0, reduction=reduction), dtype)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", list(ROW_OPS))
def test_gpu_row_ops_anchors(op, mode, dtype):
    s, t, w = logits(400_000, 80, dtype, seed=12)
    for reduction in REDUCTIONS:
        check_against_reference(op, s, (t,), dict(ROW_OPS[op], mode=mode, reduction=reduction,
                                                  weight=w), dtype)


@gpu
@needs_cuda
@pytest.mark.parametrize("op", list(ROW_OPS))
def test_gpu_row_ops_long_rows(op):
    """Channel-wise distillation shape: softmax over H·W = 16800 per channel (online softmax)."""
    s, t, w = logits(512, 16_800, torch.float32, seed=13)
    check_against_reference(op, s, (t,), dict(ROW_OPS[op], mode="softmax", weight=w), torch.float32)


@gpu
@needs_cuda
def test_gpu_deterministic():
    s, t, w = logits(400_000, 80, torch.float32, seed=14)
    a = [call("soft_label_kl", s, t, mode="sigmoid", weight=w) for _ in range(3)]
    assert all(torch.equal(a[0], x) for x in a[1:])


# ------------------------------------------------------------------------------------------------
# Without a GPU: the kernels still compile through Triton's NVIDIA pipeline (TTIR → PTX → cubin
# with the ptxas bundled in the triton wheel), which catches what the interpreter lets through.

_AOT_BODY = r"""
from kdkernels.triton import _common, _row_losses as RL, separable_weighted_mse as MM

ROW = ["s_ptr", "t_ptr", "w_ptr", "inv_norm_ptr", "out_ptr", "grad_ptr", "partial_ptr"]
for dt, softmax, adaptive, rows, one in [("fp32", True, True, False, True),
                                         ("fp32", True, False, True, False),
                                         ("fp64", False, True, False, True),
                                         ("bf16", False, False, True, True)]:
    acc = "fp64" if dt == "fp64" else "fp32"
    block_k = 128 if one else 512
    for tile, warps in _common._GPU_TILES["rows"]:
        sig = {n: "*" + (acc if n in ("inv_norm_ptr", "partial_ptr") else dt) for n in ROW}
        sig.update(R="i32", K="i32", stride_s="i32", stride_t="i32", stride_w="i32",
                   num_partials="i32", temp_hi="fp32", temp_lo="fp32", beta_hi="fp32",
                   beta_lo="fp32", gamma_hi="fp32", gamma_lo="fp32", wgrad="fp32")
        consts = dict(HAS_WEIGHT=True, HAS_NORM=not rows, SOFTMAX=softmax, ADAPTIVE=adaptive,
                      WRITE_ROWS=rows, WRITE_GRAD=True,
                      ACC=getattr(tl, "float64" if acc == "fp64" else "float32"),
                      BLOCK_K=block_k, ONE_BLOCK=one, PART=512 // block_k, TILE=tile)
        build(RL._row_loss_kernel, sig, consts, warps)

for dt, out, cw in [("bf16", True, True), ("fp32", False, False), ("fp32", False, True)]:
    for tile, warps in _common._GPU_TILES["mse"]:
        sig = dict(s_ptr="*" + dt, t_ptr="*" + dt, ws_ptr="*fp32", wc_ptr="*fp16", inv_norm_ptr="*fp32",
                   out_ptr="*" + dt, grad_ptr="*" + dt, partial_ptr="*fp32", NC="i32", C="i32",
                   HW="i32", stride_sn="i32", stride_sc="i32", stride_tn="i32", stride_tc="i32",
                   stride_wn="i32", stride_wc="i32", num_part_p="i32")
        consts = dict(HAS_CW=cw, HAS_NORM=not out, WRITE_OUT=out, WRITE_GRAD=True, ACC=tl.float32,
                      BLOCK_HW=256, PART=4, TILE=tile)
        build(MM._separable_mse_kernel, sig, consts, warps)
print("ok")
"""


@pytest.mark.skipif(CUDA, reason="on a GPU the other tests compile and run the kernels")
def test_kernels_compile_for_sm90_without_gpu():
    from triton_aot import compile_for_sm90
    compile_for_sm90(_AOT_BODY)
