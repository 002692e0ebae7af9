"""The native kernels (csrc/, torch.ops.kdkernels.*) called directly, on every device this machine
has: the numerics contract (NaN in → NaN out, masked-out pixels exactly 0, a zero normaliser gives
0 for any eps), the value checks done inside the kernels (they also fire under torch.compile, where
the Python checks are skipped), weights of any stride, and on CUDA: no host synchronisation
(CUDA-graph capture), a second device, 64-bit offsets. Issue 10."""
import math
import os
import re
from pathlib import Path

import pytest
import torch

import kdkernels
from kdkernels import _native, reference

pytestmark = pytest.mark.skipif(not _native.HAS_NATIVE, reason="needs the compiled extension")

ROOT = Path(__file__).resolve().parents[1]
OPS = torch.ops.kdkernels
INF, NAN = math.inf, math.nan
HAS_CUDA = torch.cuda.is_available() and _native.HAS_NATIVE_CUDA
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and the CUDA build")
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=1e-5),
       torch.bfloat16: dict(rtol=3e-2, atol=1e-2), torch.float16: dict(rtol=5e-3, atol=2e-3)}


# ------------------------------------------------------------------ direct calls of the native ops
def mse(s, t, c, threshold=0.0, power=1.0, reduction="mean", eps=1e-6, grad=True):
    """confidence_masked_mse as the public op runs it: its mask (in the accumulation dtype), then
    the native separable_weighted_mse kernel with the mask as the spatial weight."""
    mask = reference._confidence_mask(c, threshold, power,
                                      torch.float64 if s.dtype == torch.float64 else torch.float32)
    return OPS.separable_weighted_mse(s, t, mask, None, reduction, eps, grad)


def swmse(s, t, ws, wc=None, reduction="mean", eps=1e-6, grad=True):
    return OPS.separable_weighted_mse(s, t, ws, wc, reduction, eps, grad)


def kl(s, t, w=None, temperature=1.0, mode="softmax", reduction="mean", eps=1e-6, grad=True):
    return OPS.soft_label_kl(s, t, w, temperature, mode, reduction, eps, grad)


def adl(s, t, w=None, temperature=1.0, beta=1.0, gamma=2.0, mode="sigmoid", detach_weight=False,
        reduction="mean", eps=1e-6, grad=True):
    return OPS.adaptive_distillation_loss(s, t, w, temperature, beta, gamma, mode, detach_weight,
                                          reduction, eps, grad)


ROW_OPS = {"soft_label_kl": (kl, reference.soft_label_kl),
           "adaptive_distillation_loss": (adl, reference.adaptive_distillation_loss)}


def reference_with_grad(fn, student, *args, **kwargs):
    """float64 reference loss and d(loss.sum())/d(student), the gradient the native op returns."""
    s = student.detach().double().requires_grad_(True)
    loss = fn(s, *args, **kwargs)
    loss.sum().backward()
    return loss.detach(), s.grad


def assert_matches(actual, expected, dtype):
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), equal_nan=True,
                               **TOL[dtype])


# ------------------------------------------------------------------ 3. NaN is not hidden; masked-out pixels are exactly 0
def special_features(device, dtype):
    """(2, 3, 2, 4) features, confidence with NaN, negative, ±0, the threshold values; inf/NaN
    features at some pixels (kept and masked out, depending on threshold)."""
    s = torch.randn(2, 3, 2, 4, dtype=torch.float64)
    t = torch.randn(2, 3, 2, 4, dtype=torch.float64)
    conf = torch.tensor([[[NAN, -0.3, 0.0, -0.0], [0.2, 0.4, 1.0, 0.7]],
                         [[0.9, 0.0, -0.3, 0.4], [NAN, 0.1, 0.5, 0.3]]], dtype=torch.float64)
    s[0, :, 0, 1] = INF      # conf -0.3
    t[0, 1, 0, 2] = NAN      # conf 0
    s[1, 2, 0, 1] = -INF     # conf 0
    s[1, 0, 1, 1] = NAN      # conf 0.1
    return s.to(device, dtype), t.to(device, dtype), conf.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("power", [-1.0, 0.0, 0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.4])
def test_masked_mse_special_values_follow_the_float64_formula(device, dtype, reduction, power, threshold):
    """masked out iff conf < threshold; kept pixels follow m = conf^power, l = m (s − t)² (NaN and
    inf included); masked-out pixels give exactly 0. Before issue 10 the CPU kernel masked a NaN
    confidence out and gave NaN for inf features at masked-out pixels."""
    s, t, conf = special_features(device, dtype)
    loss, grad = mse(s, t, conf, threshold, power, reduction)
    ref_loss, ref_grad = reference_with_grad(reference.confidence_masked_mse, s, t.double(),
                                             conf.double(), threshold=threshold, power=power,
                                             reduction=reduction)
    assert_matches(loss, ref_loss, dtype)
    assert_matches(grad, ref_grad, dtype)
    masked = (conf < threshold).unsqueeze(1).expand_as(s)
    assert torch.all(grad[masked] == 0)
    if reduction == "none":
        assert torch.all(loss[masked] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nan_confidence_gives_nan(device, reduction):
    s, t = torch.randn(2, 3, 4, 5, device=device), torch.randn(2, 3, 4, 5, device=device)
    conf = torch.rand(2, 4, 5, device=device)
    conf[1, 2, 3] = NAN
    loss, grad = mse(s, t, conf, 0.5, 1.0, reduction)
    if reduction == "none":
        assert torch.isnan(loss[1, :, 2, 3]).all() and not torch.isnan(loss[0]).any()
    else:
        assert torch.isnan(loss)
    assert torch.isnan(grad[1, :, 2, 3]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("power", [-1.0, 0.5, 2.0])
def test_masked_out_pixels_are_exactly_zero(device, dtype, power):
    """inf/NaN features, 0^negative and (negative)^fractional at masked-out pixels: loss, gradient
    and normaliser are as if those pixels were not there."""
    s, t = torch.randn(2, 3, 4, 5, dtype=dtype), torch.randn(2, 3, 4, 5, dtype=dtype)
    conf = torch.rand(2, 4, 5) * 0.5 + 0.5
    conf[0, 0, 0], conf[0, 1, 1], conf[1, 0, 2] = 0.0, -0.3, 0.1
    s[0, :, 0, 0], t[0, :, 1, 1], s[1, 1, 0, 2] = INF, NAN, NAN
    keep = ~(conf < 0.4).unsqueeze(1).expand_as(s)
    s, t, conf, keep = s.to(device), t.to(device), conf.to(device), keep.to(device)
    for reduction in ("mean", "sum", "none"):
        loss, grad = mse(s, t, conf, 0.4, power, reduction)
        clean_loss, clean_grad = mse(torch.where(keep, s, 0), torch.where(keep, t, 0), conf, 0.4,
                                     power, reduction)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert torch.equal(grad, clean_grad) and torch.all(grad[~keep] == 0)
        assert torch.equal(loss, clean_loss)


# ------------------------------------------------------------------ 4. zero normaliser → 0, any eps
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("eps", [1e-300, 1e-6, 1.0])
def test_zero_normaliser_gives_zero_loss_and_gradient(device, dtype, eps):
    """Before issue 10, eps=1e-300 with all-zero weights gave NaN gradients (eps underflowed to 0
    in float32: 0/0)."""
    s = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
    t = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
    empty = torch.zeros(2, 4, 5, device=device)
    loss, grad = mse(s, t, empty, 0.5, 1.0, "mean", eps)
    assert loss.item() == 0 and torch.all(grad == 0)
    # kept pixels whose m are all 0 (conf = 0, threshold 0): Σ m == 0 too, even with inf features
    s_inf = s.clone()
    s_inf[0, 0, 0, 0] = INF
    loss, grad = mse(s_inf, t, empty, 0.0, 1.0, "mean", eps)
    assert loss.item() == 0 and torch.all(grad == 0)
    ls = torch.randn(5, 7, device=device, dtype=dtype)
    lt = torch.randn(5, 7, device=device, dtype=dtype)
    for name, (op, _) in ROW_OPS.items():
        for mode in ("softmax", "sigmoid"):
            for w in (torch.zeros(5, device=device), torch.zeros(5, device=device, dtype=torch.float64)):
                loss, grad = op(ls, lt, w, mode=mode, eps=eps)
                assert loss.item() == 0 and torch.all(grad == 0), (name, mode, w.dtype)
            loss, grad = op(ls[:0], lt[:0], None, mode=mode, eps=eps)
            assert loss.item() == 0 and grad.shape == (0, 7), (name, mode)


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_normaliser_is_not_flushed(device):
    """A positive normaliser below eps uses eps (not 0), and a tiny eps is clamped so that it does
    not underflow: finite, and equal to the float64 formula."""
    s, t = torch.randn(6, 4, device=device), torch.randn(6, 4, device=device)
    w = torch.zeros(6, device=device)
    w[2] = 1e-30
    for op_name, (op, ref) in ROW_OPS.items():
        for eps in (1e-300, 1e-6):
            loss, grad = op(s, t, w, eps=eps)
            ref_loss, ref_grad = reference_with_grad(ref, s, t.double(), weight=w.double(), eps=eps)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (op_name, eps)
            assert_matches(loss, ref_loss, torch.float32)
            assert_matches(grad, ref_grad, torch.float32)


# ------------------------------------------------------------------ 5. value checks inside the kernels
BAD_ROW_ARGS = [("temperature", 0.0), ("temperature", -1.0), ("temperature", INF), ("temperature", NAN),
                ("eps", 0.0), ("eps", -1.0), ("eps", INF), ("eps", NAN)]
BAD_ADL_ARGS = [("beta", -1.0), ("beta", INF), ("beta", NAN), ("gamma", -0.5), ("gamma", INF),
                ("gamma", NAN)]
BAD_MSE_ARGS = [("eps", 0.0), ("eps", -1.0), ("eps", INF), ("eps", NAN)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_name", list(ROW_OPS))
@pytest.mark.parametrize("name,value", BAD_ROW_ARGS + BAD_ADL_ARGS + [("mode", "relu"), ("reduction", "avg")])
def test_row_hyperparameters_checked_by_the_kernel(device, op_name, name, value):
    if op_name == "soft_label_kl" and name in ("beta", "gamma"):
        pytest.skip("soft_label_kl has no beta/gamma")
    s, t = torch.randn(4, 6, device=device), torch.randn(4, 6, device=device)
    with pytest.raises(ValueError, match=rf"^kdkernels\.{op_name}: {name} must be"):
        ROW_OPS[op_name][0](s, t, **{name: value})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,value", BAD_MSE_ARGS + [("reduction", "avg")])
def test_mse_hyperparameters_checked_by_the_kernel(device, name, value):
    """separable_weighted_mse's scalars (confidence_masked_mse's threshold and power never reach a
    kernel: the public op builds the mask from them, after its own checks)."""
    s, t = torch.randn(2, 3, 4, 5, device=device), torch.randn(2, 3, 4, 5, device=device)
    ws, wc = torch.rand(2, 4, 5, device=device), torch.rand(2, 3, device=device)
    with pytest.raises(ValueError, match=rf"^kdkernels\.separable_weighted_mse: {name} must be"):
        swmse(s, t, ws, wc, **{name: value})


@pytest.mark.parametrize("device", DEVICES)
def test_separable_weight_metadata_checked_by_the_kernel(device):
    """Shapes, dtypes and devices (CUDA features, CPU weights) of the weights, named in the error;
    no data is read."""
    s, t = torch.randn(2, 3, 4, 5, device=device), torch.randn(2, 3, 4, 5, device=device)
    ws, wc = torch.rand(2, 4, 5, device=device), torch.rand(2, 3, device=device)
    bad = {"spatial_weight": [(torch.rand(2, 4, 4, device=device), wc, ValueError),
                              (torch.ones(2, 4, 5, dtype=torch.int64, device=device), wc, TypeError)],
           "channel_weight": [(ws, torch.rand(2, 4, device=device), ValueError),
                              (ws, torch.rand(6, device=device), ValueError),
                              (ws, torch.ones(2, 3, dtype=torch.int32, device=device), TypeError)]}
    if device == "cuda":
        bad["spatial_weight"].append((ws.cpu(), wc, ValueError))
        bad["channel_weight"].append((ws, wc.cpu(), ValueError))
    for name, cases in bad.items():
        for w_s, w_c, error in cases:
            with pytest.raises(error, match=rf"^kdkernels\.separable_weighted_mse: .*{name}"):
                swmse(s, t, w_s, w_c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_separable_special_weights_follow_the_float64_formula(device, dtype, reduction):
    """Zero spatial or channel weights (exact 0 whatever the features), NaN, inf and negative
    weights (the kernel does not check values: the public op does), weights of other dtypes and
    strides (a transposed channel weight, an expanded spatial one)."""
    s, t = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    ws = torch.rand(2, 4, 5, dtype=torch.float64)
    wc = torch.rand(3, 2, dtype=torch.float64).t()  # (2, 3), strides (1, 2)
    ws[0, 1, 2], ws[1, 0, :] = 0.0, -0.0
    wc[1, 2] = 0.0
    s[0, :, 1, 2], t[1, 1, 0, 3], s[1, 2, 3, 3] = INF, NAN, -INF  # at zero weights only
    loss, grad = swmse(s.to(device, dtype), t.to(device, dtype), ws.to(device, torch.float16),
                       wc.to(device), reduction)
    ref_loss, ref_grad = reference_with_grad(reference.separable_weighted_mse, s.to(dtype), t.to(dtype).double(),
                                             ws.half().double(), wc, reduction=reduction)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert_matches(loss, ref_loss, dtype)
    assert_matches(grad, ref_grad, dtype)
    zero = (ws.unsqueeze(1) * wc[:, :, None, None] == 0).expand_as(s).to(device)
    assert torch.all(grad[zero] == 0)
    for w_s, w_c in ((ws.clone().index_put_((torch.tensor([1]), torch.tensor([2]), torch.tensor([1])),
                                            torch.tensor(NAN, dtype=torch.float64)), wc),
                     (ws, wc.clone().index_put_((torch.tensor([0]), torch.tensor([1])),
                                                torch.tensor(NAN, dtype=torch.float64))),
                     (ws * -1.0 + 0.5, wc * INF)):
        loss, grad = swmse(s.to(device, dtype), t.to(device, dtype), w_s.to(device), w_c.to(device),
                           reduction)
        ref_loss, ref_grad = reference_with_grad(reference.separable_weighted_mse, s.to(dtype),
                                                 t.to(dtype).double(), w_s, w_c, reduction=reduction)
        assert_matches(loss, ref_loss, dtype)
        assert_matches(grad, ref_grad, dtype)


@pytest.mark.parametrize("op_name", list(ROW_OPS))
@pytest.mark.parametrize("bad", [-1.0, -1e-4, INF, -INF, NAN])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.float64, torch.float16])
def test_bad_weight_is_an_error_naming_the_row(op_name, bad, wdtype):
    """CPU: the kernel checks the weights while it reads them. Before issue 10 a negative weight
    passed straight to the kernel (as under torch.compile) gave a meaningless loss."""
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    w = torch.rand(6, dtype=wdtype)
    w[3] = bad
    expected = re.escape(f"kdkernels.{op_name}: weight must be finite and >= 0, got ")
    with pytest.raises(ValueError, match=expected + r".* at row 3\b"):
        ROW_OPS[op_name][0](s, t, w)
    strided = torch.rand(2 * 6 + 1, dtype=wdtype)[1::2]  # stride 2, storage offset 1
    strided[3] = bad
    with pytest.raises(ValueError, match=expected + r".* at row 3\b"):
        ROW_OPS[op_name][0](s, t, strided, mode="sigmoid", reduction="none")
    many = torch.rand(10_000, dtype=wdtype)
    many[5000], many[9000] = bad, bad  # several blocks of rows: the first bad row is named
    with pytest.raises(ValueError, match=expected + r".* at row 5000\b"):
        ROW_OPS[op_name][0](torch.randn(10_000, 3), torch.randn(10_000, 3), many, reduction="sum")


def test_negative_zero_weight_is_allowed():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    w = torch.rand(6)
    w[2] = -0.0
    loss, _ = kl(s, t, w)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("op_name", list(ROW_OPS))
def test_bad_weight_is_an_error_under_compile(op_name):
    """torch.compile skips the Python-side value check; the kernel's check still fires."""
    torch._dynamo.reset()
    public = getattr(kdkernels, op_name)
    fn = torch.compile(lambda a, b, c: public(a, b, weight=c, mode="sigmoid"), fullgraph=True,
                       backend="aot_eager")
    s, t, w = torch.randn(6, 5), torch.randn(6, 5), torch.rand(6)
    torch.testing.assert_close(fn(s, t, w), public(s, t, weight=w, mode="sigmoid"))
    w[3] = -1.0
    with pytest.raises(ValueError, match=rf"kdkernels\.{op_name}: weight must be finite and >= 0, got -1 at row 3"):
        fn(s, t, w)


# ------------------------------------------------------------------ 6. strides, offsets, devices
def weight_layouts(device):
    base = torch.rand(40, device=device)
    return {"contiguous": base[:8].clone(), "stride3_offset1": base[1:25:3],
            "expanded": base[:1].expand(8), "float64": base[:8].double(),
            "float16_strided": base.half()[2:18:2]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_name", list(ROW_OPS))
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weight_of_any_stride_and_offset(device, op_name, mode, reduction):
    op, ref = ROW_OPS[op_name]
    big_s, big_t = torch.randn(3, 8, 12, device=device), torch.randn(3, 8, 12, device=device)
    s, t = big_s[1, :, 2:9], big_t[2, :, 1:8]  # (8, 7), non-contiguous, storage offsets
    for layout, w in weight_layouts(device).items():
        loss, grad = op(s, t, w, mode=mode, reduction=reduction)
        ref_loss, ref_grad = reference_with_grad(ref, s, t.double(), mode=mode, weight=w.double(),
                                                 reduction=reduction)
        assert_matches(loss, ref_loss, torch.float32)
        assert_matches(grad, ref_grad, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_mse_non_contiguous_with_offsets(device, reduction):
    big = torch.randn(3, 2, 6, 5, 9, device=device)
    s = big[1].transpose(2, 3)[:, :, 1:8]      # (2, 6, 7, 5)
    t = big[2, :, :, :, 1:8].transpose(2, 3)   # (2, 6, 7, 5)
    conf = torch.rand(2, 5, 8, device=device).transpose(1, 2)[:, 1:, :]  # (2, 7, 5), offset
    loss, grad = mse(s, t, conf, 0.3, 2.0, reduction)
    ref_loss, ref_grad = reference_with_grad(reference.confidence_masked_mse, s, t.double(),
                                             conf.double(), threshold=0.3, power=2.0,
                                             reduction=reduction)
    assert_matches(loss, ref_loss, torch.float32)
    assert_matches(grad, ref_grad, torch.float32)


def _all_native_calls(device, reduction, weighted=True):
    """Every native op once, on small inputs, results concatenated."""
    s4, t4 = torch.randn(2, 8, 6, 10, device=device), torch.randn(2, 8, 6, 10, device=device)
    conf = torch.rand(2, 6, 10, device=device)
    s2, t2 = torch.randn(64, 16, device=device), torch.randn(64, 16, device=device)
    w = torch.rand(128, device=device)[::2] if weighted else None
    inputs = (s4, t4, conf, s2, t2, w)

    def run():
        outs = [*mse(s4, t4, conf, 0.5, 1.0, reduction)]
        for op in (kl, adl):
            for mode in ("softmax", "sigmoid"):
                outs += op(s2, t2, w, mode=mode, reduction=reduction)
        return [o.reshape(-1).float() for o in outs]
    return inputs, run


@needs_cuda
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [True, False])
def test_cuda_no_host_synchronisation(reduction, weighted):
    """Before issue 10 the CUDA kernels called .item() on the mask sum and the weight sum."""
    _, run = _all_native_calls("cuda", reduction, weighted)
    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@needs_cuda
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cuda_graph_capture_and_replay(reduction):
    (s4, t4, conf, s2, t2, w), run = _all_native_calls("cuda", reduction)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    for x in (s4, t4, s2, t2):
        x.copy_(torch.randn_like(x))
    conf.copy_(torch.rand_like(conf))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, run()):
        torch.testing.assert_close(got, want)


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cuda_second_device(reduction):
    """Inputs on cuda:1 while cuda:0 is current: the kernels run on cuda:1 (device guard)."""
    torch.cuda.set_device(0)
    (s4, t4, conf, s2, t2, w), run = _all_native_calls("cuda:1", reduction)
    out = run()
    assert all(o.device == torch.device("cuda:1") for o in out)
    loss, grad = mse(s4, t4, conf, 0.5, 1.0, reduction)
    ref_loss, ref_grad = reference_with_grad(reference.confidence_masked_mse, s4, t4.double(),
                                             conf.double(), threshold=0.5, reduction=reduction)
    assert_matches(loss, ref_loss, torch.float32)
    assert_matches(grad, ref_grad, torch.float32)
    for op_name, (op, ref) in ROW_OPS.items():
        loss, grad = op(s2, t2, w, reduction=reduction)
        ref_loss, ref_grad = reference_with_grad(ref, s2, t2.double(), weight=w.double(),
                                                 reduction=reduction)
        assert_matches(loss, ref_loss, torch.float32)
        assert_matches(grad, ref_grad, torch.float32)


# ------------------------------------------------------------------ 7. 64-bit offsets (> 2^31 elements)
def _large_memory_ok(device, gib):
    if device == "cuda":
        return HAS_CUDA and torch.cuda.mem_get_info()[0] > gib * 2**30
    return os.environ.get("KDKERNELS_TEST_LARGE") == "1"


LARGE_DEVICES = [pytest.param(d, marks=pytest.mark.skipif(
    not _large_memory_ok(d, 16), reason="needs ~16 GiB free (on CPU: set KDKERNELS_TEST_LARGE=1)"))
    for d in ("cpu", "cuda")]


@pytest.mark.parametrize("device", LARGE_DEVICES)
def test_masked_mse_beyond_int32_offsets(device):
    """(1, 128, 2^24 + 16) bfloat16 features = 2^31 + 2048 elements: the last plane is read and
    written past offset 2^31."""
    C, HW = 128, 2**24 + 16
    t = torch.zeros(1, C, 1, HW, dtype=torch.bfloat16, device=device)
    s = torch.ones(1, C, 1, HW, dtype=torch.bfloat16, device=device)
    s[0, C - 1, 0, HW - 1] = 2.0
    conf = torch.ones(1, 1, HW, device=device)
    conf[0, 0, HW - 1] = 0.5
    loss, grad = mse(s, t, conf, 0.0, 1.0, "sum")
    expected = C * (HW - 1) + (C - 1) * 0.5 + 0.5 * 4
    assert abs(loss.item() - expected) < 1e-2 * expected
    assert grad[0, C - 1, 0, HW - 1].item() == 2.0  # 2 m (s − t) = 2 · 0.5 · 2
    assert grad[0, C - 1, 0, HW - 2].item() == 2.0  # 2 · 1 · 1
    assert grad[0, C - 2, 0, HW - 1].item() == 1.0  # 2 · 0.5 · 1


@pytest.mark.parametrize("device", LARGE_DEVICES)
@pytest.mark.parametrize("op_name", list(ROW_OPS))
def test_row_losses_beyond_int32_offsets(device, op_name):
    """(2^25 + 8, 64) bfloat16 logits = 2^31 + 512 elements; every row but the last has equal
    student and teacher (loss 0), the last row sits past offset 2^31."""
    R, K = 2**25 + 8, 64
    op, ref = ROW_OPS[op_name]
    s = torch.zeros(R, K, dtype=torch.bfloat16, device=device)
    t = torch.zeros(R, K, dtype=torch.bfloat16, device=device)
    last_s, last_t = torch.randn(1, K).bfloat16(), torch.randn(1, K).bfloat16()
    s[-1], t[-1] = last_s[0].to(device), last_t[0].to(device)
    w = torch.ones(R, device=device)
    w[-1] = 2.0
    loss, grad = op(s, t, w, mode="softmax", reduction="sum")
    ref_loss, ref_grad = reference_with_grad(ref, last_s, last_t.double(), mode="softmax",
                                             weight=torch.tensor([2.0], dtype=torch.float64),
                                             reduction="sum")
    assert_matches(loss.float(), ref_loss, torch.bfloat16)
    assert_matches(grad[-1:].float(), ref_grad, torch.bfloat16)
    assert torch.all(grad[-2] == 0)


# ------------------------------------------------------------------ 2. one backend-neutral header
def test_backend_neutral_header_shared_by_cpu_and_cuda():
    """Argument parsing, checks, the normaliser and the bool → template dispatch live once in
    csrc/ops/common.h; the CUDA unit includes it, not a CPU header."""
    common = (ROOT / "csrc/ops/common.h").read_text()
    for name in ("struct RowLossArgs", "struct SeparableMseArgs", "parse_reduction", "parse_softmax",
                 "mean_denominator", "dispatch_bools", "check_row_inputs", "check_separable_inputs"):
        assert name in common, name
    sources = {p: p.read_text() for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu")}
    for path, text in sources.items():
        if path.name == "common.h" and path.parent.name == "ops":
            continue
        for name in ("struct RowLossArgs", "struct SeparableMseArgs", "Reduction parse_reduction(",
                     "bool parse_softmax(", "enum Reduction"):
            assert name not in text, f"{path} defines {name} again"
    cuda = "".join(t for p, t in sources.items() if p.suffix == ".cu")
    assert '#include "../common.h"' in cuda and '#include "../cpu/' not in cuda
    assert "dispatch_bools(" in cuda
    assert "dispatch_bools(" in (ROOT / "csrc/ops/cpu/row_losses.cpp").read_text()
    assert ".item<" not in cuda and ".item()" not in cuda  # no host synchronisation
