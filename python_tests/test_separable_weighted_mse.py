"""separable_weighted_mse: every backend × dtype × reduction × shape, with and without a channel
weight, against the float64 reference; weights of any layout; zero weights (exact 0 whatever the
features); NaN weights on the internal path; FGD's feature loss; compile, autocast, bad inputs;
each Triton config forced."""
import math

import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, DTYPES, assert_close, run_with_grad
from peer_transcriptions import fgd_fea_loss, fgd_get_attention
from kdkernels import reference
from kdkernels.ops.separable_weighted_mse import fused_separable_mse

INF, NAN = math.inf, math.nan
SHAPES = [(1, 1, 1, 1), (3, 7, 13, 5), (2, 16, 9, 11), (1, 3, 40, 33)]
REDUCTIONS = ["mean", "sum", "none"]
CPU_BACKENDS = [p for p in ALL_BACKENDS if p.values[0].device == "cpu"]


def make(shape, dtype, channel=True, ws_4d=False, seed=0):
    """Features in `dtype`; float32 weights: a spatial weight with exact zeros, a channel weight in
    [0, 2) (or None)."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    s = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    ws = torch.rand(n, h, w, generator=gen)
    ws = torch.where(ws < 0.25, 0.0, ws)
    if ws_4d:
        ws = ws.unsqueeze(1)
    wc = torch.rand(n, c, generator=gen) * 2 if channel else None
    return s, t, ws, wc


def on(device, *tensors):
    return [x.to(device) if x is not None else None for x in tensors]


def dbl(x):
    return x.double() if x is not None else None


def loss_and_grad(device, s, t, ws, wc, upstream=None, **kwargs):
    """(loss, grad) of the selected backend on `device`, and of the float64 reference."""
    s_d, t_d, ws_d, wc_d = on(device, s, t, ws, wc)
    got = run_with_grad(lambda x: kdkernels.separable_weighted_mse(x, t_d, ws_d, wc_d, **kwargs), s_d, upstream)
    ref = run_with_grad(lambda x: reference.separable_weighted_mse(x, dbl(t).cpu(), dbl(ws).cpu(),
                                                                   dbl(wc).cpu() if wc is not None else None,
                                                                   **kwargs),
                        s.double().cpu(), upstream)
    return got, ref


# ------------------------------------------------------------------ the matrix
@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channel", [True, False], ids=["w_c", "w_c=None"])
def test_matches_reference(backend, dtype, reduction, shape, channel):
    s, t, ws, wc = make(shape, dtype, channel, ws_4d=shape[0] == 3)
    up = torch.randn(shape, dtype=torch.float64) if reduction == "none" else None
    (loss, grad), (ref_loss, ref_grad) = loss_and_grad(backend.device, s, t, ws, wc, up, reduction=reduction)
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_contiguous_inputs_and_weights(backend, reduction):
    """Transposed, permuted, channels_last and offset features; an expanded (stride 0), a permuted
    (N, 1, H, W) and a float16 spatial weight; a transposed, a strided and a float64 channel weight."""
    dev = backend.device
    s = torch.randn(2, 5, 8, 6, device=dev).transpose(2, 3)           # (2, 5, 6, 8)
    t = torch.randn(2, 6, 8, 5, device=dev).permute(0, 3, 1, 2)       # (2, 5, 6, 8)
    s_cl = torch.randn(2, 5, 6, 8, device=dev).to(memory_format=torch.channels_last)
    t_off = torch.randn(2 * 5 * 6 * 8 + 1, device=dev)[1:].view(2, 5, 6, 8)
    ws_exp = torch.rand(1, 6, 8, device=dev).expand(2, 6, 8)
    ws_perm = torch.rand(2, 8, 1, 6, device=dev).permute(0, 2, 3, 1)  # (2, 1, 6, 8)
    ws_half = torch.rand(2, 6, 8, device=dev).half()
    wc_t = torch.rand(5, 2, device=dev).t()
    wc_strided = torch.rand(2, 11, device=dev)[:, 1::2]                # (2, 5), stride 2, offset 1
    wc_f64 = torch.rand(2, 5, device=dev, dtype=torch.float64)
    cases = [(s, t, ws_exp, wc_t), (s, t, ws_perm, wc_strided), (s_cl, t_off, ws_half, wc_f64),
             (s_cl, t, ws_exp, None)]
    for fs, ft, w_s, w_c in cases:
        (loss, grad), (ref_loss, ref_grad) = loss_and_grad(dev, fs, ft, w_s, w_c, reduction=reduction)
        assert_close(loss, ref_loss, torch.float32, "loss")
        assert_close(grad, ref_grad, torch.float32, "grad")


# ------------------------------------------------------------------ zero and NaN weights
@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_weights_with_inf_features_give_exact_zero(backend, dtype, reduction):
    """±inf and NaN features where w_s = 0 (also -0.0) or w_c = 0: exactly 0 in the loss and the
    gradient, and everything else as if those features were finite."""
    s, t, ws, wc = (x.to(backend.device) for x in make((2, 3, 4, 5), dtype, seed=1))
    ws[0, 1, :], ws[1, 2, 3], wc[1, 2] = 0.0, -0.0, 0.0
    zero = (ws.unsqueeze(1) * wc[:, :, None, None] == 0).expand_as(s)
    bad_s, bad_t = s.clone(), t.clone()
    bad_s[0, :, 1, 0], bad_t[0, 2, 1, 4], bad_s[1, :, 2, 3] = INF, NAN, -INF
    bad_s[1, 2], bad_t[1, 2, 0, 0] = INF, NAN
    loss, grad = run_with_grad(
        lambda x: kdkernels.separable_weighted_mse(x, bad_t, ws, wc, reduction=reduction), bad_s)
    clean_loss, clean_grad = run_with_grad(
        lambda x: kdkernels.separable_weighted_mse(x, torch.where(zero, 0, bad_t), ws, wc, reduction=reduction),
        torch.where(zero, 0, bad_s))
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert torch.all(grad[zero] == 0)
    if reduction == "none":
        assert torch.all(loss[zero] == 0)
    assert torch.equal(loss, clean_loss) and torch.equal(grad, clean_grad)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [1e-300, 1e-6, 1.0])
@pytest.mark.parametrize("channel", [True, False], ids=["w_c", "w_c=None"])
def test_all_zero_spatial_weight(backend, reduction, eps, channel):
    """Σ w_s == 0: loss 0 ("none": zeros) and a zero gradient for every eps (1e-300 underflows in
    float32), even with inf features."""
    s, t, _, wc = (x.to(backend.device) if x is not None else None
                   for x in make((2, 3, 4, 5), torch.float32, channel, seed=2))
    s[0, 0, 0, 0] = INF
    ws = torch.zeros(2, 4, 5, device=backend.device)
    loss, grad = run_with_grad(
        lambda x: kdkernels.separable_weighted_mse(x, t, ws, wc, reduction=reduction, eps=eps), s)
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nan_weight_on_the_internal_path_propagates(backend, reduction):
    """The public op rejects NaN weights; confidence_masked_mse runs the kernel without that check,
    and its NaN confidence (NaN mask) propagates: NaN in → NaN out. A NaN channel weight on the
    internal call propagates the same way, plane by plane."""
    dev = backend.device
    s, t, ws, wc = (x.to(dev) for x in make((2, 3, 4, 5), torch.float32, seed=3))
    conf = torch.rand(2, 4, 5, device=dev)
    conf[1, 2, 3] = NAN
    loss, grad = run_with_grad(
        lambda x: kdkernels.confidence_masked_mse(x, t, conf, threshold=0.5, reduction=reduction), s)
    assert torch.isnan(grad[1, :, 2, 3]).all()
    if reduction == "none":
        assert torch.isnan(loss[1, :, 2, 3]).all() and not torch.isnan(loss[0]).any()
    else:
        assert torch.isnan(loss)
    wc[0, 1] = NAN
    loss, grad = run_with_grad(
        lambda x: fused_separable_mse("separable_weighted_mse", x, t, ws, wc, reduction, 1e-6), s)
    # w = w_s · w_c is NaN on the whole plane (0 · NaN = NaN too): kept, NaN out
    assert torch.isnan(grad[0, 1]).all() and not torch.isnan(grad[1]).any()
    if reduction == "none":
        assert torch.isnan(loss[0, 1]).all() and not torch.isnan(loss[1]).any()
    else:
        assert torch.isnan(loss)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_confidence_masked_mse_is_the_separable_op_on_its_mask(backend):
    s, t, _, _ = (x.to(backend.device) for x in make((2, 4, 6, 5), torch.float32, seed=4))
    conf = torch.rand(2, 6, 5, device=backend.device)
    for threshold, power in ((0.0, 1.0), (0.4, 2.0), (0.3, 0.0)):
        mask = torch.where(conf < threshold, 0.0, conf.pow(power))
        for reduction in REDUCTIONS:
            a = kdkernels.confidence_masked_mse(s, t, conf, threshold=threshold, power=power, reduction=reduction)
            b = kdkernels.separable_weighted_mse(s, t, mask, reduction=reduction)
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------ FGD


def fgd_masks(n, h, w, boxes):
    """FGD's masks from boxes on the feature grid: the foreground mask holds the largest
    1 / box area over the boxes covering a location, the background mask 1 / (number of
    background locations) elsewhere."""
    fg = torch.zeros(n, h, w, dtype=torch.float64)
    for i, image_boxes in enumerate(boxes):
        for y0, y1, x0, x1 in image_boxes:
            area = 1.0 / ((y1 + 1 - y0) * (x1 + 1 - x0))
            fg[i, y0:y1 + 1, x0:x1 + 1] = fg[i, y0:y1 + 1, x0:x1 + 1].clamp_min(area)
    bg = (fg == 0).double()
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp_min(1)
    return fg, bg


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fgd_feature_loss(backend, dtype):
    """FGD's focal feature loss = separable_weighted_mse(s, t, M·S_t, C_t, reduction="sum") / N for
    the foreground and the background mask, loss and gradient."""
    gen = torch.Generator().manual_seed(5)
    n, c, h, w = 2, 6, 7, 9
    s = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    t = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    fg, bg = fgd_masks(n, h, w, [[(1, 3, 2, 5), (2, 6, 4, 8)], [(0, 2, 0, 2)]])
    s_t, c_t = fgd_get_attention(t, 0.5)
    dev = backend.device
    for index, mask in enumerate((fg, bg)):
        x = s.clone().requires_grad_()
        want = fgd_fea_loss(x, t, fg, bg, c_t, s_t)[index]
        (want_grad,) = torch.autograd.grad(want, x)
        sd = s.to(dev, dtype).requires_grad_()
        got = kdkernels.separable_weighted_mse(sd, t.to(dev, dtype), (mask * s_t).to(dev, dtype),
                                               c_t.to(dev, dtype), reduction="sum") / n
        (got_grad,) = torch.autograd.grad(got, sd)
        assert_close(got.detach(), want.detach(), dtype, "FGD loss")
        assert_close(got_grad, want_grad, dtype, "FGD grad")
    # the attention of kdkernels.fgd_attention is FGD's
    spatial, channel = kdkernels.fgd_attention(t, 0.5)
    torch.testing.assert_close(spatial, s_t)
    torch.testing.assert_close(channel, c_t)


# ------------------------------------------------------------------ compile, autocast
def _losses(s, t, ws, wc, conf):
    return (kdkernels.separable_weighted_mse(s, t, ws, wc)
            + kdkernels.separable_weighted_mse(s, t, ws, reduction="sum") * 0.1
            + kdkernels.separable_weighted_mse(s * 2, t, ws, wc, reduction="none").mean()
            + kdkernels.confidence_masked_mse(s, t, conf, threshold=0.3, power=2.0))


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_compile_fullgraph_no_graph_break(backend):
    torch._dynamo.reset()
    s, t, ws, wc = (x.to(backend.device) for x in make((2, 8, 6, 5), torch.float32, seed=6))
    conf = torch.rand(2, 6, 5, device=backend.device)
    explanation = torch._dynamo.explain(_losses)(s, t, ws, wc, conf)
    assert explanation.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(_losses, fullgraph=True, backend="aot_eager")
    sc, se = s.clone().requires_grad_(), s.clone().requires_grad_()
    loss_c = compiled(sc, t, ws, wc, conf)
    loss_e = _losses(se, t, ws, wc, conf)
    (g_c,), (g_e,) = torch.autograd.grad(loss_c, sc), torch.autograd.grad(loss_e, se)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(g_c, g_e)


@pytest.mark.parametrize("backend", CPU_BACKENDS, indirect=True)
def test_autocast_bf16_mixed_pair(backend):
    """Under CPU autocast a bf16 student and an fp32 teacher are promoted to fp32."""
    lin = torch.nn.Linear(16, 12)
    x, t = torch.randn(2 * 3 * 5, 16), torch.randn(2, 3, 5, 12)
    ws, wc = torch.rand(2, 5, 12), torch.rand(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = lin(x).view(2, 3, 5, 12)
        assert s.dtype == torch.bfloat16
        loss = kdkernels.separable_weighted_mse(s, t, ws, wc)
    assert loss.dtype == torch.float32
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    ref = reference.separable_weighted_mse(s.detach().double(), t.double(), ws.double(), wc.double())
    assert_close(loss.detach(), ref, torch.float32, "autocast loss")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("backend", CPU_BACKENDS, indirect=True)
def test_bad_shapes_dtypes_devices_name_the_weight(backend):
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    ws, wc = torch.rand(2, 4, 5), torch.rand(2, 3)
    cases = [
        ("spatial_weight", torch.rand(2, 5, 4), wc, ValueError),
        ("spatial_weight", torch.rand(2, 2, 4, 5), wc, ValueError),
        ("spatial_weight", torch.rand(2, 4, 5, device="meta"), wc, ValueError),
        ("spatial_weight", torch.ones(2, 4, 5, dtype=torch.int64), wc, TypeError),
        ("spatial_weight", [[0.5]], wc, TypeError),
        ("channel_weight", ws, torch.rand(2, 4), ValueError),
        ("channel_weight", ws, torch.rand(6), ValueError),
        ("channel_weight", ws, torch.rand(2, 3, 1), ValueError),
        ("channel_weight", ws, torch.rand(2, 3, device="meta"), ValueError),
        ("channel_weight", ws, torch.ones(2, 3, dtype=torch.int32), TypeError),
    ]
    for name, w_s, w_c, error in cases:
        with pytest.raises(error, match=name):
            kdkernels.separable_weighted_mse(s, t, w_s, w_c)
    with pytest.raises(ValueError, match="reduction"):
        kdkernels.separable_weighted_mse(s, t, ws, wc, reduction="avg")
    for eps in (0.0, -1.0, INF, NAN):
        with pytest.raises(ValueError, match="eps"):
            kdkernels.separable_weighted_mse(s, t, ws, wc, eps=eps)


@pytest.mark.parametrize("backend", CPU_BACKENDS, indirect=True)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", ["spatial_weight", "channel_weight"])
@pytest.mark.parametrize("bad", [-1.0, INF, NAN])
def test_bad_weight_values_are_errors(backend, compiled, name, bad):
    """Negative or non-finite weights name the weight, in eager and compiled code (CPU tensors; on
    CUDA with KDKERNELS_CHECK_VALUES=1)."""
    torch._dynamo.reset()
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    w = {"spatial_weight": torch.rand(2, 4, 5), "channel_weight": torch.rand(2, 3)}
    w[name].view(-1)[3] = bad
    fn = lambda a, b, ws, wc: kdkernels.separable_weighted_mse(a, b, ws, wc)  # noqa: E731
    fn = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    with pytest.raises(ValueError, match=f"{name} must be finite and >= 0") as info:
        fn(s, t, w["spatial_weight"], w["channel_weight"])
    assert type(info.value) is ValueError


# ------------------------------------------------------------------ Triton configs
@pytest.fixture
def triton_kernel(monkeypatch):
    if "triton" not in kdkernels.available_backends("cpu") and not torch.cuda.is_available():
        pytest.skip("triton runs on CPU only with TRITON_INTERPRET=1 (and a CUDA device otherwise)")
    from kdkernels.triton import _common, separable_weighted_mse as module

    def nan_empty(shape, dtype, device):  # an element a config leaves unwritten shows up as NaN
        return torch.full(shape, NAN, dtype=dtype, device=device)

    monkeypatch.setattr(_common, "empty", nan_empty)
    monkeypatch.setitem(_common.BLOCK_LIMITS, "HW", 128)
    return _common, module._separable_mse_kernel


@pytest.mark.parametrize("config", range(3))
def test_each_triton_config_forced(triton_kernel, monkeypatch, config):
    """Each GPU autotune config alone (the one a GPU may pick), on several plane tiles and pixel
    blocks: every output written, results equal to the reference."""
    common, kernel = triton_kernel
    configs = common.gpu_configs("mse")
    monkeypatch.setattr(kernel, "configs", [configs[config]])
    monkeypatch.setattr(kernel, "cache", {})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    s, t, ws, wc = make((2, 40, 10, 15), torch.float32, seed=7)  # 80 planes, H·W = 150
    with kdkernels.use_backend("triton"):
        for w_c in (wc, None):
            for reduction in REDUCTIONS:
                (loss, grad), (ref_loss, ref_grad) = loss_and_grad(device, s, t, ws, w_c, reduction=reduction)
                assert_close(loss, ref_loss, torch.float32, "loss")
                assert_close(grad, ref_grad, torch.float32, "grad")
    assert kernel.best_config == configs[config]
