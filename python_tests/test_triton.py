"""Triton backend (kdkernels.triton) against the float64 reference, forward and backward.

Without a CUDA device the kernels run on CPU tensors through the Triton interpreter
(TRITON_INTERPRET=1). Triton decides at import time whether its own @jit functions (tl.max, tl.sum,
...) are interpreted, so this module imports triton with TRITON_INTERPRET=1 set, then puts the
variable back as it was; the `triton_env` fixture sets it again for the tests of this module only
(kdkernels' backend resolution reads it per call), so other test modules see the environment
they started with. The interpreter is slow: shapes here are small. Tests marked `gpu` use
realistic shapes and need CUDA.
"""
from __future__ import annotations

import importlib
import os
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
    """Tiles of 128 classes / pixels, so that small shapes span several blocks (online softmax)."""
    monkeypatch.setitem(triton_env._common.BLOCK_LIMITS, "K", 128)
    monkeypatch.setitem(triton_env._common.BLOCK_LIMITS, "HW", 128)


def assert_close(actual, expected, dtype, what=""):
    atol, rtol = TOL[dtype]
    assert actual.shape == expected.shape, what
    assert actual.dtype == dtype, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol,
                               msg=lambda m: f"{what} ({dtype}): {m}")


def run(fn, student, *args, grad_out=None, **kwargs):
    """loss, d(loss · grad_out)/d student for fn(student, *args) (grad_out random if None)."""
    s = student.detach().clone().requires_grad_()
    loss = fn(s, *args, **kwargs)
    g = torch.randn(loss.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    g = (g if grad_out is None else torch.full(loss.shape, float(grad_out), dtype=torch.float64))
    g = g.to(device=loss.device, dtype=loss.dtype)
    (grad,) = torch.autograd.grad(loss, s, g)
    return loss.detach(), grad, g.double()  # the reference gets the same (rounded) grad_out


def check_against_reference(fn_name, student, args, kwargs, dtype, grad_out=None):
    fn = getattr(kdkernels, fn_name)
    ref_fn = getattr(reference, fn_name)
    with kdkernels.use_backend("triton"):
        loss, grad, g = run(fn, student, *args, grad_out=grad_out, **kwargs)
    # reference in float64 on the same (rounded) input values
    args64 = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    s64 = student.detach().double().requires_grad_()
    ref = ref_fn(s64, *args64, **kw64)
    (ref_grad,) = torch.autograd.grad(ref, s64, g.to(ref.device))
    assert_close(loss, ref.detach(), dtype, f"{fn_name} loss")
    assert_close(grad, ref_grad, dtype, f"{fn_name} grad")
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


ROW_OPS = {
    "soft_label_kl": dict(temperature=2.0),
    "adaptive_distillation_loss": dict(temperature=2.0, beta=1.5, gamma=1.5),
}


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
def test_row_ops_leading_dims_and_grad_out_two(mode):
    """(N, A, K) logits with (N, A) weights; the loss is not the last op (× 2)."""
    s, t, w = logits(24, 20, torch.float32, seed=2)
    s, t, w = s.reshape(2, 12, 20), t.reshape(2, 12, 20), w.reshape(2, 12)
    for op, kw in ROW_OPS.items():
        check_against_reference(op, s, (t,), dict(kw, mode=mode, weight=w), torch.float32, grad_out=2.0)
        loss, _ = check_against_reference(op, s, (t,), dict(kw, mode=mode, reduction="none", weight=w),
                                          torch.float32)
        assert loss.shape == (2, 12)


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
    with kdkernels.use_backend("triton"):
        kl, gkl, _ = run(kdkernels.soft_label_kl, s, t, mode=mode, weight=w, grad_out=1.0)
        adl, gadl, _ = run(kdkernels.adaptive_distillation_loss, s, t, mode=mode, weight=w, gamma=0.0,
                           grad_out=1.0)
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
            with kdkernels.use_backend("triton"):
                loss, grad, _ = run(kdkernels.adaptive_distillation_loss, t, t, mode=mode,
                                    gamma=gamma, detach_weight=detach_weight, grad_out=1.0)
            assert loss.item() == 0.0
            assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_row_ops_zero_weights(reduction):
    """All-zero weights: mean = 0 / max(0, eps) = 0, zero gradient, no NaN."""
    s, t, _ = logits(6, 10, torch.float32, seed=7)
    w = torch.zeros(6, device=DEVICE)
    for op, kw in ROW_OPS.items():
        for mode in MODES:
            with kdkernels.use_backend("triton"):
                loss, grad, _ = run(getattr(kdkernels, op), s, t, **kw, mode=mode, weight=w,
                                    reduction=reduction)
            assert torch.equal(loss, torch.zeros_like(loss))
            assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_row_ops_empty(reduction):
    s = torch.zeros(0, 7, device=DEVICE, requires_grad=True)
    t = torch.zeros(0, 7, device=DEVICE)
    for op, kw in ROW_OPS.items():
        for mode in MODES:
            with kdkernels.use_backend("triton"):
                loss = getattr(kdkernels, op)(s, t, **kw, mode=mode, reduction=reduction)
            assert loss.shape == ((0,) if reduction == "none" else ())
            assert torch.equal(loss.detach(), torch.zeros_like(loss))
            (grad,) = torch.autograd.grad(loss.sum(), s)
            assert grad.shape == (0, 7)


def test_row_ops_without_grad():
    """no_grad / a student without requires_grad: the kernel skips the gradient, same loss."""
    s, t, w = logits(5, 12, torch.float32, seed=8)
    for op, kw in ROW_OPS.items():
        fn = getattr(kdkernels, op)
        with kdkernels.use_backend("triton"):
            a = fn(s, t, **kw, weight=w)
            with torch.no_grad():
                b = fn(s.clone().requires_grad_(), t, **kw, weight=w)
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
    """H·W = 300 over blocks of 128 pixels; 32 planes per tile, so N·C = 40 planes take two."""
    s, t, conf = features(2, 20, 15, 20, torch.float32, seed=1)
    for reduction in REDUCTIONS:
        check_against_reference("confidence_masked_mse", s, (t, conf),
                                dict(threshold=0.2, reduction=reduction), torch.float32)


def test_masked_mse_non_contiguous_and_n1hw_confidence():
    s, t, conf = features(2, 4, 6, 5, torch.float32, seed=2)
    s_cl = s.to(memory_format=torch.channels_last)
    t_nc = t.transpose(2, 3).contiguous().transpose(2, 3)
    for reduction in REDUCTIONS:
        check_against_reference("confidence_masked_mse", s_cl, (t_nc, conf.unsqueeze(1)),
                                dict(threshold=0.5, power=1.5, reduction=reduction), torch.float32,
                                grad_out=2.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_mse_all_zero_mask(reduction):
    s, t, conf = features(2, 3, 4, 4, torch.float32, seed=3)
    conf = conf * 0.5  # all below the threshold
    with kdkernels.use_backend("triton"):
        loss, grad, _ = run(kdkernels.confidence_masked_mse, s, t, conf, threshold=0.6,
                            reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_mse_empty(shape, reduction):
    s = torch.zeros(shape, device=DEVICE, requires_grad=True)
    t = torch.zeros(shape, device=DEVICE)
    conf = torch.zeros(shape[0], shape[2], shape[3], device=DEVICE)
    with kdkernels.use_backend("triton"):
        loss = kdkernels.confidence_masked_mse(s, t, conf, reduction=reduction)
    assert loss.shape == (shape if reduction == "none" else ())
    assert torch.equal(loss.detach(), torch.zeros_like(loss))
    (grad,) = torch.autograd.grad(loss.sum(), s)
    assert torch.equal(grad, torch.zeros_like(s))


# ------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile

def _op_samples(kt):
    s, t, w = logits(6, 9, torch.float32, seed=9)
    fs, ft, conf = features(2, 3, 4, 5, torch.float32, seed=9)
    s.requires_grad_()
    fs.requires_grad_()
    return [
        (kt.soft_label_kl_op, (s, t, w, 2.0, "softmax", "mean", 1e-6, True)),
        (kt.soft_label_kl_op, (s, t, None, 1.0, "sigmoid", "none", 1e-6, True)),
        (kt.adaptive_distillation_loss_op, (s, t, w, 2.0, 1.0, 2.0, "sigmoid", False, "sum", 1e-6, True)),
        (kt.adaptive_distillation_loss_op, (s, t, None, 1.0, 1.0, 1.0, "softmax", True, "none", 1e-6, True)),
        (kt.confidence_masked_mse_op, (fs, ft, conf, 0.3, 1.0, "mean", 1e-6, True)),
        (kt.confidence_masked_mse_op, (fs, ft, conf, 0.0, 2.0, "none", 1e-6, True)),
    ]


def test_opcheck(triton_env):
    """Schema, fake kernel, autograd registration and AOT dispatch (static and dynamic shapes)."""
    for op, args in _op_samples(triton_env):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    """The public ops with backend "triton" compile without graph breaks and match eager.
    On CPU the ops are opaque custom ops (see kdkernels/triton/_common.py) and the backend is
    aot_eager; on a GPU inductor compiles the triton_op kernels."""
    backend = "inductor" if CUDA else "aot_eager"
    s, t, w = logits(8, 12, torch.float32, seed=10)
    fs, ft, conf = features(2, 3, 4, 5, torch.float32, seed=10)

    def total(s, t, w, fs):
        return (kdkernels.soft_label_kl(s, t, temperature=2.0, weight=w)
                + kdkernels.adaptive_distillation_loss(s, t, mode="sigmoid", weight=w) * 0.5
                + kdkernels.confidence_masked_mse(fs, ft, conf, threshold=0.3)) * 2

    torch._dynamo.reset()
    compiled = torch.compile(total, fullgraph=True, backend=backend)
    with kdkernels.use_backend("triton"):
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
    with kdkernels.use_backend("triton"):
        a = [kdkernels.soft_label_kl(s, t, mode="sigmoid", weight=w) for _ in range(3)]
    assert all(torch.equal(a[0], x) for x in a[1:])


# ------------------------------------------------------------------------------------------------
# Without a GPU: the kernels still compile through Triton's NVIDIA pipeline (TTIR → PTX → cubin
# with the ptxas bundled in the triton wheel), which catches what the interpreter lets through.

_AOT_SCRIPT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from kdkernels.triton import _row_losses as RL, confidence_masked_mse as MM
assert not type(RL._row_loss_kernel.fn).__name__.startswith("Interpreted")
target = GPUTarget("cuda", 90, 32)

def build(kernel, sig, consts, warps):
    src = triton.compiler.ASTSource(kernel.fn, sig, consts)
    assert "cubin" in triton.compile(src, target=target, options={"num_warps": warps}).asm

ROW = ["s_ptr", "t_ptr", "w_ptr", "norm_ptr", "out_ptr", "grad_ptr", "partial_ptr"]
for dt, softmax, adaptive, rows, one in [("fp32", True, True, False, True),
                                         ("fp32", True, False, True, False),
                                         ("fp64", False, True, False, True),
                                         ("bf16", False, False, True, True)]:
    acc = "fp64" if dt == "fp64" else "fp32"
    sig = {n: "*" + (acc if n in ("norm_ptr", "partial_ptr") else dt) for n in ROW}
    sig.update(R="i32", K="i32", stride_s="i32", stride_t="i32", temp_hi="fp32", temp_lo="fp32",
               beta_hi="fp32", beta_lo="fp32", gamma_hi="fp32", gamma_lo="fp32", wgrad="fp32")
    consts = dict(HAS_WEIGHT=True, HAS_NORM=not rows, SOFTMAX=softmax, ADAPTIVE=adaptive,
                  WRITE_ROWS=rows, WRITE_GRAD=True, ACC=getattr(tl, "float64" if acc == "fp64" else "float32"),
                  BLOCK_K=128 if one else 512, ONE_BLOCK=one, TILE=1024)
    sig.update({k: "constexpr" for k in consts})
    build(RL._row_loss_kernel, sig, consts, 4)

for dt, out in [("bf16", True), ("fp32", False)]:
    sig = dict(s_ptr="*" + dt, t_ptr="*" + dt, m_ptr="*fp32", norm_ptr="*fp32", out_ptr="*" + dt,
               grad_ptr="*" + dt, partial_ptr="*fp32", NC="i32", C="i32", HW="i32")
    consts = dict(HAS_NORM=not out, WRITE_OUT=out, WRITE_GRAD=True, ACC=tl.float32, BLOCK_HW=1024,
                  TILE=2048)
    sig.update({k: "constexpr" for k in consts})
    build(MM._masked_mse_kernel, sig, consts, 4)
print("ok")
"""


@pytest.mark.skipif(CUDA, reason="on a GPU the other tests compile and run the kernels")
def test_kernels_compile_for_sm90_without_gpu():
    import subprocess

    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(kdkernels.__file__)))
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
