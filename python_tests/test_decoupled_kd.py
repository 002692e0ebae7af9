"""The fused decoupled_kd kernel (cpu, triton, cuda) against the float64 reference: backend × dtype ×
reduction × shape, targets in every column block, dominant targets, empty batches, label checks in
the kernel, every Triton autotune config, and the no-gradient path. (The check against MMRazor's
DKDLoss code, compile, autocast and bad input are in test_peer_row_losses.py.)"""
import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, DTYPES, FUSED_BACKENDS, assert_close, run_with_grad

R = kdkernels.reference
REDUCTIONS = ["mean", "sum", "none"]


def make(b, k, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(b, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    return s, t, torch.randint(0, k, (b,), generator=g)


def check(backend, s, t, labels, dtype, **kw):
    dev = backend.device
    up = torch.randn(s.shape[:-1], dtype=torch.float64) if kw.get("reduction") == "none" else None
    loss, grad = run_with_grad(lambda x: kdkernels.decoupled_kd(x, t.to(dev), labels.to(dev), **kw), s.to(dev), up)
    ref_loss, ref_grad = run_with_grad(lambda x: R.decoupled_kd(x, t.double(), labels, **kw), s.double(), up)
    assert loss.shape == ref_loss.shape
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("lead,k", [((1,), 2), ((6, 5), 13), ((64,), 100)], ids=str)
def test_matches_reference(backend, dtype, reduction, lead, k):
    """Backend × dtype × reduction × shape (leading dims flattened) against the float64 reference."""
    s, t, labels = make(int(torch.tensor(lead).prod()), k, dtype)
    s, t, labels = s.reshape(*lead, k), t.reshape(*lead, k), labels.reshape(lead)
    check(backend, s, t, labels, dtype, alpha=1.0, beta=8.0, temperature=4.0, reduction=reduction)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha,beta,tau", [(1.0, 8.0, 4.0), (0.0, 1.0, 1.0), (2.0, 0.0, 0.5)])
def test_targets_in_every_position(backend, dtype, alpha, beta, tau):
    """K = 300: targets at the first, last and a middle column and at random; α or β may be 0."""
    s, t, labels = make(12, 300, dtype, seed=1)
    labels[:4] = torch.tensor([0, 299, 128, 255])
    for reduction in REDUCTIONS:
        check(backend, s, t, labels, dtype, alpha=alpha, beta=beta, temperature=tau, reduction=reduction)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dominant_target_keeps_precision(backend, dtype):
    """A teacher that puts p_g ≈ 1 − 1e-30 on the target: TCKD and NCKD stay as precise as the
    inputs (1 − p_g is never formed as a difference) and the target's exp never overflows."""
    s, t, labels = make(16, 10, torch.float64, seed=2, scale=1.0)
    t[torch.arange(16), labels] += 70.0
    s[torch.arange(8), labels[:8]] += 40.0
    s, t = s.to(dtype), t.to(dtype)
    check(backend, s, t, labels, dtype, alpha=1.0, beta=8.0, temperature=1.0, reduction="sum")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(backend, reduction):
    s = torch.randn(0, 5, device=backend.device, requires_grad=True)
    loss = kdkernels.decoupled_kd(s, torch.randn(0, 5, device=backend.device),
                                  torch.zeros(0, dtype=torch.long, device=backend.device), reduction=reduction)
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert not torch.isnan(loss).any() and (loss == 0).all()
    loss.sum().backward()
    assert s.grad.shape == (0, 5)


@pytest.mark.parametrize("backend", FUSED_BACKENDS, indirect=True)
def test_no_grad_gives_the_same_loss(backend):
    s, t, labels = make(20, 33, torch.float32, seed=3)
    dev = backend.device
    kw = dict(alpha=1.0, beta=8.0, temperature=4.0)
    with torch.no_grad():
        plain = kdkernels.decoupled_kd(s.to(dev), t.to(dev), labels.to(dev), **kw)
    with_grad = kdkernels.decoupled_kd(s.to(dev).requires_grad_(True), t.to(dev), labels.to(dev), **kw)
    torch.testing.assert_close(plain, with_grad.detach())


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_labels_any_integer_dtype_and_strides(backend):
    s, t, labels = make(6, 7, torch.float32, seed=4)
    dev = backend.device
    wide = torch.stack([labels, labels], dim=1).to(torch.int32)[:, 1]  # strided int32 view
    got = kdkernels.decoupled_kd(s.to(dev), t.to(dev), wide.to(dev), reduction="none")
    want = kdkernels.decoupled_kd(s.to(dev), t.to(dev), labels.to(dev), reduction="none")
    torch.testing.assert_close(got, want)
    s4, t4 = s.reshape(2, 3, 7), t.reshape(2, 3, 7)  # leading dims are flattened
    got4 = kdkernels.decoupled_kd(s4.to(dev), t4.to(dev), labels.reshape(2, 3).to(dev), reduction="none")
    torch.testing.assert_close(got4.reshape(6), want)


def test_cpu_kernel_checks_labels_itself():
    """The raw CPU op rejects an out-of-range label by name (the Python check is skipped under
    tracing; the kernel still never reads outside the row)."""
    s, t, labels = make(300, 4, torch.float32, seed=5)
    labels[257] = 4
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got 4 at row 257"):
        torch.ops.kdkernels.decoupled_kd(s, t, labels, 1.0, 1.0, 1.0, "mean", False)
    with pytest.raises(TypeError, match="labels must be int64"):
        torch.ops.kdkernels.decoupled_kd(s, t, labels.int(), 1.0, 1.0, 1.0, "mean", False)
    with pytest.raises(ValueError, match="alpha"):
        torch.ops.kdkernels.decoupled_kd(s, t, labels, 1.0, -1.0, 1.0, "mean", False)


def test_matches_the_composite_form_on_cpu():
    """The fused kernel equals the composite it replaced: NCKD as soft_label_kl with MMRazor's
    −1000 shift of the target, TCKD from two log-sum-exps."""
    s, t, labels = make(50, 80, torch.float32, seed=6)
    onehot = torch.nn.functional.one_hot(labels, 80).bool()
    a, b = t / 4.0, s / 4.0
    shift = onehot.float() * 1000.0
    nckd = kdkernels.soft_label_kl(b - shift, a - shift, reduction="none")

    def log_parts(x):
        lse = torch.logsumexp(x, dim=1)
        return x.gather(1, labels[:, None])[:, 0] - lse, torch.logsumexp(x.masked_fill(onehot, -torch.inf), 1) - lse

    (tg, tr), (sg, sr) = log_parts(a), log_parts(b)
    tckd = tg.exp() * (tg - sg) + tr.exp() * (tr - sr)
    composite = 16.0 * (tckd + 8.0 * nckd)
    fused = kdkernels.decoupled_kd(s, t, labels, beta=8.0, temperature=4.0, reduction="none")
    torch.testing.assert_close(fused, composite, rtol=1e-4, atol=1e-5)


# ---- Triton: every GPU autotune config alone, with column blocks smaller than K ----

@pytest.fixture
def triton_dkd(monkeypatch):
    if "triton" not in kdkernels.available_backends("cpu") and not torch.cuda.is_available():
        pytest.skip("triton runs on CPU only with TRITON_INTERPRET=1 (and a CUDA device otherwise)")
    from kdkernels.triton import _common, decoupled_kd as module

    def nan_empty(shape, dtype, device):  # an element a config leaves unwritten shows up as NaN
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_common, "empty", nan_empty)
    monkeypatch.setitem(_common.BLOCK_LIMITS, "K", 128)
    return _common, module._dkd_kernel


@pytest.mark.parametrize("config", range(4))
def test_each_triton_config_forced(triton_dkd, monkeypatch, config):
    """Each GPU config alone on 37 rows of K = 300 (3 column blocks of 128, several row tiles):
    every output written, results equal to the reference."""
    common, kernel = triton_dkd
    configs = common.gpu_configs("rows")
    monkeypatch.setattr(kernel, "configs", [configs[config]])
    monkeypatch.setattr(kernel, "cache", {})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    s, t, labels = make(37, 300, torch.float32, seed=7)
    labels[:3] = torch.tensor([0, 127, 128])
    from conftest import Backend
    with kdkernels.use_backend("triton"):
        for reduction in REDUCTIONS:
            check(Backend("triton", device), s, t, labels, torch.float32, alpha=1.0, beta=8.0,
                  temperature=2.0, reduction=reduction)
    assert kernel.best_config == configs[config]


# ---- Triton: the kernel compiles for sm_90 through the NVIDIA pipeline (no GPU needed) ----

_AOT_BODY = r"""
from kdkernels.triton import _common, decoupled_kd as D
for dt, mean, rows, grad, block_k in [("fp32", True, False, True, 128), ("fp32", False, True, False, 512),
                                      ("bf16", False, False, True, 128), ("fp64", True, False, True, 128)]:
    acc = "fp64" if dt == "fp64" else "fp32"
    for tile, warps in _common._GPU_TILES["rows"]:
        sig = dict(s_ptr="*" + dt, t_ptr="*" + dt, y_ptr="*i64", out_ptr="*" + (dt if rows else acc),
                   grad_ptr="*" + (dt if grad else acc), partial_ptr="*" + acc, R="i32", K="i32",
                   stride_s="i32", stride_t="i32", num_partials="i32", temp_hi="fp32", temp_lo="fp32",
                   alpha_hi="fp32", alpha_lo="fp32", beta_hi="fp32", beta_lo="fp32")
        consts = dict(MEAN=mean, WRITE_ROWS=rows, WRITE_GRAD=grad,
                      ACC=tl.float64 if acc == "fp64" else tl.float32, BLOCK_K=block_k,
                      PART=512 // block_k, TILE=tile)
        build(D._dkd_kernel, sig, consts, warps)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the other tests compile and run the kernel")
def test_triton_kernel_compiles_for_sm90_without_gpu():
    from triton_aot import compile_for_sm90
    compile_for_sm90(_AOT_BODY)
