"""Numerics and validation contract (docs/METHOD.md, "Edge cases and numerics"), every backend:
NaN in → NaN out, masked-out pixels exactly 0, a zero normaliser gives 0 for any eps, non-finite
hyperparameters and bad weights are errors naming the argument — also under torch.compile."""
import math

import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, FUSED_BACKENDS, run_with_grad

INF, NAN = math.inf, math.nan
ROW_OPS = {"soft_label_kl": kdkernels.soft_label_kl, "adl": kdkernels.adaptive_distillation_loss}


def _feats(device, n=2, c=3, h=4, w=5):
    return torch.randn(n, c, h, w, device=device), torch.randn(n, c, h, w, device=device)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nan_confidence_propagates(backend, reduction):
    s, t = _feats(backend.device)
    conf = torch.rand(2, 4, 5, device=backend.device)
    conf[1, 2, 3] = NAN
    loss = kdkernels.confidence_masked_mse(s, t, conf, threshold=0.5, reduction=reduction)
    if reduction == "none":
        assert torch.isnan(loss[1, :, 2, 3]).all() and not torch.isnan(loss[0]).any()
    else:
        assert torch.isnan(loss)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("power", [-1.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_out_pixels_contribute_exactly_zero(backend, power, reduction):
    """conf < threshold: 0 in loss and gradient even with inf/NaN features there, a negative
    power at conf = 0, or a fractional power of a negative confidence."""
    s, t = _feats(backend.device)
    conf = torch.rand(2, 4, 5, device=backend.device) * 0.5 + 0.5
    conf[0, 0, 0], conf[0, 1, 1], conf[1, 0, 2], conf[1, 3, 4] = 0.0, -0.3, 0.1, 0.2  # masked out
    s[0, :, 0, 0], t[1, :, 0, 2], s[1, 1, 3, 4] = INF, NAN, NAN
    loss, grad = run_with_grad(lambda x: kdkernels.confidence_masked_mse(
        x, t, conf, threshold=0.4, power=power, reduction=reduction), s)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    masked = (conf < 0.4).unsqueeze(1).expand_as(s)
    assert torch.all(grad[masked] == 0)
    if reduction == "none":
        assert torch.all(loss[masked] == 0)
    keep = ~masked
    with kdkernels.use_backend("reference"):
        ref = kdkernels.confidence_masked_mse(torch.where(keep, s, 0.0), torch.where(keep, t, 0.0), conf,
                                              threshold=0.4, power=power, reduction=reduction)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(ROW_OPS))
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_nan_and_inf_logits_propagate(backend, op, mode):
    s, t = torch.randn(4, 6, device=backend.device), torch.randn(4, 6, device=backend.device)
    s[1, 2] = NAN
    rows = ROW_OPS[op](s, t, mode=mode, reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2, 3]]).all()
    assert torch.isnan(ROW_OPS[op](s, t, mode=mode))
    s[1, 2], t[3, 0] = 0.0, NAN
    assert torch.isnan(ROW_OPS[op](s, t, mode=mode, reduction="none")[3])


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("eps", [1e-300, 1e-6])
def test_zero_normaliser_gives_zero_for_any_eps(backend, dtype, eps):
    s, t = (x.to(dtype) for x in _feats(backend.device))
    empty = torch.zeros(2, 4, 5, device=backend.device)
    loss, grad = run_with_grad(lambda x: kdkernels.confidence_masked_mse(x, t, empty, threshold=0.5, eps=eps), s)
    assert loss.item() == 0 and torch.all(grad == 0)
    ls, lt = torch.randn(5, 7, device=backend.device, dtype=dtype), torch.randn(5, 7, device=backend.device, dtype=dtype)
    for op in ROW_OPS.values():
        for mode in ("softmax", "sigmoid"):
            loss, grad = run_with_grad(lambda x: op(x, lt, mode=mode, eps=eps,
                                                    weight=torch.zeros(5, device=backend.device)), ls)
            assert loss.item() == 0 and torch.all(grad == 0), (op, mode)


# feature ops weighted per pixel and per channel: loss(student, teacher, spatial_weight,
# channel_weight, **kwargs), (N, C, H, W) features, (N, H, W) and (N, C) weights
WEIGHTED_FEATURE_OPS = {"separable_weighted_mse": kdkernels.separable_weighted_mse}


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(WEIGHTED_FEATURE_OPS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_features_nan_in_nan_out_and_zero_weights_exact(backend, op, reduction):
    """NaN or inf features at a weighted element propagate; at an element whose weight is 0
    (spatial or channel) they add exactly 0 to the loss and the gradient."""
    s, t = _feats(backend.device)
    ws, wc = torch.rand(2, 4, 5, device=backend.device) + 0.1, torch.rand(2, 3, device=backend.device) + 0.1
    ws[0, 1, 1], wc[1, 2] = 0.0, 0.0
    s[0, :, 1, 1], t[1, 2, 3, 3] = INF, NAN
    loss, grad = run_with_grad(lambda x: WEIGHTED_FEATURE_OPS[op](x, t, ws, wc, reduction=reduction), s)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert torch.all(grad[0, :, 1, 1] == 0) and torch.all(grad[1, 2] == 0)
    t[0, 1, 2, 2] = NAN
    loss, grad = run_with_grad(lambda x: WEIGHTED_FEATURE_OPS[op](x, t, ws, wc, reduction=reduction), s)
    assert torch.isnan(grad[0, 1, 2, 2])
    if reduction == "none":
        assert torch.isnan(loss[0, 1, 2, 2]) and torch.isfinite(loss[1]).all()
    else:
        assert torch.isnan(loss)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(WEIGHTED_FEATURE_OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("eps", [1e-300, 1e-6])
def test_weighted_features_zero_normaliser(backend, op, dtype, eps):
    s, t = (x.to(dtype) for x in _feats(backend.device))
    ws, wc = torch.zeros(2, 4, 5, device=backend.device), torch.rand(2, 3, device=backend.device)
    for channel_weight in (wc, None):
        loss, grad = run_with_grad(lambda x: WEIGHTED_FEATURE_OPS[op](x, t, ws, channel_weight, eps=eps), s)
        assert loss.item() == 0 and torch.all(grad == 0)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(WEIGHTED_FEATURE_OPS))
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("value", [INF, NAN, 0.0, -1.0])
def test_weighted_features_bad_eps(backend, op, compiled, value):
    torch._dynamo.reset()
    s, t = _feats(backend.device)
    ws, wc = torch.rand(2, 4, 5, device=backend.device), torch.rand(2, 3, device=backend.device)
    fn = lambda a, b, c, d: WEIGHTED_FEATURE_OPS[op](a, b, c, d, eps=value)  # noqa: E731
    fn = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    with pytest.raises(ValueError, match="eps") as info:
        fn(s, t, ws, wc)
    assert type(info.value) is ValueError


BAD_HYPER = [
    ("temperature", INF), ("temperature", NAN), ("eps", INF), ("eps", NAN), ("beta", INF),
    ("beta", NAN), ("gamma", INF), ("gamma", NAN),
]


def _row_call(op, name, value, s, t, weight=None):
    kwargs = {name: value} if name else {}
    if op is kdkernels.soft_label_kl and name in ("beta", "gamma"):
        op = kdkernels.adaptive_distillation_loss
    return op(s, t, weight=weight, **kwargs)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name,value", BAD_HYPER)
def test_non_finite_row_hyperparameters(backend, compiled, name, value):
    torch._dynamo.reset()
    s, t = torch.randn(4, 6, device=backend.device), torch.randn(4, 6, device=backend.device)
    fn = lambda a, b: _row_call(kdkernels.soft_label_kl, name, value, a, b)  # noqa: E731
    fn = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    with pytest.raises(ValueError, match=name) as info:
        fn(s, t)
    assert type(info.value) is ValueError


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name,value", [("threshold", INF), ("threshold", NAN), ("power", INF),
                                        ("power", NAN), ("eps", INF), ("eps", 0.0)])
def test_non_finite_mse_hyperparameters(backend, compiled, name, value):
    torch._dynamo.reset()
    s, t = _feats(backend.device)
    conf = torch.rand(2, 4, 5, device=backend.device)
    fn = lambda a, b, c: kdkernels.confidence_masked_mse(a, b, c, **{name: value})  # noqa: E731
    fn = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    with pytest.raises(ValueError, match=name) as info:
        fn(s, t, conf)
    assert type(info.value) is ValueError


@pytest.mark.parametrize("backend", [p for p in ALL_BACKENDS if p.values[0].device == "cpu"], indirect=True)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("op", list(ROW_OPS))
@pytest.mark.parametrize("bad", [-1.0, INF, NAN])
def test_bad_weight_values_are_errors(backend, compiled, op, bad):
    """Negative or non-finite weights name `weight`, in eager and compiled code (CPU tensors; on
    CUDA with KDKERNELS_CHECK_VALUES=1). Compiled, a negative weight used to give −7e6."""
    torch._dynamo.reset()
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    w = torch.rand(6)
    w[3] = bad
    fn = lambda a, b, c: ROW_OPS[op](a, b, weight=c, mode="sigmoid")  # noqa: E731
    fn = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        fn(s, t, w)


def test_backend_switch_recompiles():
    """use_backend is read inside compiled code on every torch version (Dynamo guards on it)."""
    torch._dynamo.reset()
    calls = []

    def counting_backend(gm, example_inputs):
        calls.append(gm)
        return gm.forward

    s, t = torch.randn(8, 5), torch.randn(8, 5)
    fn = torch.compile(lambda a, b: kdkernels.soft_label_kl(a, b, mode="sigmoid"), fullgraph=True,
                       backend=counting_backend)
    with kdkernels.use_backend("reference"):
        ref = fn(s, t)
    with kdkernels.use_backend("cpu"):
        fused = fn(s, t)
    assert len(calls) == 2
    graph_code = [gm.code for gm in calls]
    assert "kdkernels" not in graph_code[0] and "kdkernels" in graph_code[1]
    torch.testing.assert_close(ref, fused)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_compiled_hyperparameters_may_change_between_calls(backend):
    """A temperature / threshold schedule under torch.compile(fullgraph=True): the checks compare
    the value (a SymFloat from the second call on) instead of calling math.isfinite on it."""
    torch._dynamo.reset()
    s, t = torch.randn(6, 5, device=backend.device), torch.randn(6, 5, device=backend.device)
    fs, ft = _feats(backend.device)
    conf = torch.rand(2, 4, 5, device=backend.device)

    def losses(a, b, f_s, f_t, c, temperature, threshold):
        return (kdkernels.soft_label_kl(a, b, temperature=temperature)
                + kdkernels.adaptive_distillation_loss(a, b, temperature=temperature, beta=threshold)
                + kdkernels.confidence_masked_mse(f_s, f_t, c, threshold=threshold))

    compiled = torch.compile(losses, fullgraph=True, backend="aot_eager")
    for temperature, threshold in ((2.0, 0.1), (3.0, 0.2), (1.5, 0.3)):
        torch.testing.assert_close(compiled(s, t, fs, ft, conf, temperature, threshold),
                                   losses(s, t, fs, ft, conf, temperature, threshold))
    if backend.name != "reference":  # the kernels check their scalars at run time; the reference's
        # Python check sees a symbolic float here, which Dynamo assumes finite
        with pytest.raises(ValueError, match="temperature"):  # the kernel's check (c10::ValueError)
            compiled(s, t, fs, ft, conf, math.inf, 0.1)


# ----------------------------------------------------------------------------- issue 17: numerics
def _kl64(s, t, temperature):
    """The softmax KL row formula in float64: T² Σ p (log p − log q)."""
    a, b = t.double() / temperature, s.double() / temperature
    lp, lq = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    return temperature ** 2 * (lp.exp() * (lp - lq)).sum(-1)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("k", [8, 16, 80, 300], ids=lambda k: f"K{k}")  # scalar path, vector path, > one Triton block
@pytest.mark.parametrize("temperature", [1e-9, 1e-10])
@pytest.mark.parametrize("op", ["soft_label_kl", "adl", "cwd"])
def test_extreme_temperatures_match_float64(backend, k, temperature, op):
    """A tiny T: the CPU kernel gave NaN/inf for 27/256 rows at 1e-9 and 231/256 at 1e-10 (K >= 16,
    the vectorised path: t/T − max contracted into an fma whose rounding differs from the max's, so
    exp(±ulp(t/T)) overflowed at the max), and CWD NaN against 2.43e-10. Now finite and equal to the
    float64 formula, in loss and gradient, at the loss's own scale T·max|t − s|."""
    torch.manual_seed(0)
    s, t = torch.randn(256, k, device=backend.device), torch.randn(256, k, device=backend.device)
    call = {"soft_label_kl": lambda x: kdkernels.soft_label_kl(x, t, temperature=temperature, reduction="none"),
            "adl": lambda x: kdkernels.adaptive_distillation_loss(x, t, temperature=temperature, mode="softmax",
                                                                  gamma=0.0, reduction="none"),
            "cwd": lambda x: kdkernels.channel_wise_divergence(x.reshape(16, 16, 1, k), t.reshape(16, 16, 1, k),
                                                               temperature=temperature, reduction="none")}[op]
    loss, grad = run_with_grad(call, s)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    expected = _kl64(s, t, temperature).reshape(loss.shape)
    scale = temperature * (t - s).abs().max().item()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-5 * scale)
    s64 = s.double().requires_grad_()
    (2 * _kl64(s64, t, temperature)).sum().backward()  # run_with_grad's upstream is 2
    torch.testing.assert_close(grad.double(), s64.grad, rtol=1e-4, atol=1e-6 * temperature)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 4, 0), (0, 3, 0, 0)])
def test_cwd_without_pixels_is_zero(backend, reduction, shape):
    """H·W = 0 gave "student_logits must have shape (..., K) with K >= 1", an argument CWD does not
    have; an empty input is 0 (zeros (N, C) for "none"), as N = 0 is, with a graph to the student."""
    s = torch.randn(shape, device=backend.device, requires_grad=True)
    loss = kdkernels.channel_wise_divergence(s, torch.randn(shape, device=backend.device), reduction=reduction)
    assert loss.shape == (shape[:2] if reduction == "none" else ())
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert s.grad.shape == s.shape


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
@pytest.mark.parametrize("bad", [INF, -INF, NAN])
@pytest.mark.parametrize("where", ["target", "teacher_target", "other"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dkd_non_finite_logits_give_a_nan_gradient(backend, bad, where, reduction):
    """±inf at the target logit: the row's loss was NaN but its gradient finite on cpu and triton,
    so AMP's GradScaler did not skip the step. Now a non-finite row loss makes that row's whole
    gradient NaN (the fused kernels; the reference is PyTorch's autograd of the formula, which
    leaves e.g. a −inf student logit's row finite), and the other rows are untouched."""
    s, t = torch.randn(4, 6, device=backend.device), torch.randn(4, 6, device=backend.device)
    y = torch.tensor([1, 2, 3, 4], device=backend.device)
    target = {"target": (s, 1, 2), "teacher_target": (t, 1, 2), "other": (s, 1, 0)}[where]
    target[0][target[1], target[2]] = bad
    loss, grad = run_with_grad(lambda x: kdkernels.decoupled_kd(x, t, y, reduction=reduction), s)
    row_loss = loss[1] if reduction == "none" else loss
    assert not torch.isfinite(row_loss)
    assert torch.isnan(grad[1]).all()
    assert torch.isfinite(grad[[0, 2, 3]]).all()
