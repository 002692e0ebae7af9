"""Public API: backend selection, build info, nn wrappers, and every bad input of METHOD.md."""
import os
import subprocess
import sys

import pytest
import torch

import kdkernels


def test_version_and_build_info():
    assert isinstance(kdkernels.__version__, str)
    info = kdkernels.build_info()
    assert info["native"], info["native_error"]
    assert "cpu" in info["compiled_backends"]
    for key in ("compiler", "cpu_isa", "torch", "torch_compiled"):
        assert info[key]


def test_set_and_use_backend():
    assert kdkernels.get_backend() in kdkernels.BACKENDS
    with kdkernels.use_backend("reference"):
        assert kdkernels.get_backend() == "reference"
        with kdkernels.use_backend("cpu"):
            assert kdkernels.get_backend() == "cpu"
        assert kdkernels.get_backend() == "reference"
    kdkernels.set_backend("reference")
    try:
        assert kdkernels.get_backend() == "reference"
    finally:
        kdkernels.set_backend("auto")
    with pytest.raises(ValueError, match="backend"):
        kdkernels.set_backend("tpu")
    with pytest.raises(ValueError, match="backend"):
        with kdkernels.use_backend("fast"):
            pass


def test_backends_agree():
    s, t = torch.randn(50, 80), torch.randn(50, 80)
    with kdkernels.use_backend("cpu"):
        a = kdkernels.soft_label_kl(s, t, mode="sigmoid")
    with kdkernels.use_backend("reference"):
        b = kdkernels.soft_label_kl(s, t, mode="sigmoid")
    torch.testing.assert_close(a, b)


def test_cpu_backend_rejects_other_devices():
    with kdkernels.use_backend("cuda"), pytest.raises((ValueError, RuntimeError), match="cuda"):
        kdkernels.soft_label_kl(torch.randn(2, 3), torch.randn(2, 3))
    with kdkernels.use_backend("cpu"), pytest.raises(ValueError, match="CPU tensors"):
        kdkernels.soft_label_kl(torch.randn(2, 3, device="meta"), torch.randn(2, 3, device="meta"))


def test_env_backend():
    code = "import kdkernels; print(kdkernels.get_backend())"
    env = dict(os.environ, KDKERNELS_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["KDKERNELS_BACKEND"] = "nope"
    code = "import torch, kdkernels; kdkernels.soft_label_kl(torch.randn(2, 3), torch.randn(2, 3))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "KDKERNELS_BACKEND" in out.stderr


def test_nn_modules():
    s, t = torch.randn(2, 4, 5, 5, requires_grad=True), torch.randn(2, 4, 5, 5)
    conf = torch.rand(2, 5, 5)
    m = kdkernels.nn.ConfidenceMaskedMSE(threshold=0.5)
    torch.testing.assert_close(m(s, t, conf), kdkernels.confidence_masked_mse(s, t, conf, threshold=0.5))
    logits_s, logits_t = torch.randn(8, 3), torch.randn(8, 3)
    kl = kdkernels.nn.SoftLabelKL(temperature=2.0, mode="sigmoid")
    torch.testing.assert_close(kl(logits_s, logits_t), kdkernels.soft_label_kl(logits_s, logits_t, temperature=2.0, mode="sigmoid"))
    adl = kdkernels.nn.AdaptiveDistillationLoss(beta=1.5, gamma=1.0)
    torch.testing.assert_close(adl(logits_s, logits_t), kdkernels.adaptive_distillation_loss(logits_s, logits_t, beta=1.5, gamma=1.0))
    assert "temperature=2.0" in repr(kl)
    torch.testing.assert_close(kdkernels.nn.TeacherConfidence()(logits_t), kdkernels.teacher_confidence(logits_t))
    labels = torch.randint(0, 3, (8,))
    torch.testing.assert_close(kdkernels.nn.DecoupledKD(beta=8.0)(logits_s, logits_t, labels),
                               kdkernels.decoupled_kd(logits_s, logits_t, labels, beta=8.0))
    torch.testing.assert_close(kdkernels.nn.ChannelWiseDivergence(temperature=2.0)(s, t),
                               kdkernels.channel_wise_divergence(s, t, temperature=2.0))
    torch.testing.assert_close(kdkernels.nn.PearsonFeatureLoss()(s, t), kdkernels.pearson_feature_loss(s, t))
    torch.testing.assert_close(kdkernels.nn.SeparableWeightedMSE(reduction="sum")(s, t, conf),
                               kdkernels.separable_weighted_mse(s, t, conf, reduction="sum"))
    w = torch.rand(8)
    torch.testing.assert_close(kdkernels.nn.LocalizationDistillation()(logits_s, logits_t, weight=w),
                               kdkernels.localization_distillation(logits_s, logits_t, weight=w))
    with pytest.raises(TypeError, match="tau"):
        kdkernels.nn.ChannelWiseDivergence(tau=4.0)


S4, T4, C3 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4)
L, LT = torch.randn(6, 5), torch.randn(6, 5)

BAD_MSE = [
    (dict(student=S4[0]), ValueError, "student"),
    (dict(teacher=torch.randn(2, 3, 4, 5)), ValueError, "same shape"),
    (dict(teacher=T4.double()), TypeError, "same dtype"),
    (dict(student=S4.long(), teacher=T4.long()), TypeError, "student"),
    (dict(confidence=torch.rand(2, 4, 5)), ValueError, "confidence"),
    (dict(confidence=torch.rand(2, 2, 4, 4)), ValueError, "confidence"),
    (dict(confidence=torch.rand(2, 4, 4, device="meta")), ValueError, "confidence"),
    (dict(confidence=C3.int()), TypeError, "confidence"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(threshold=float("nan")), ValueError, "threshold"),
    (dict(student=[1.0]), TypeError, "student"),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
@pytest.mark.parametrize("bad,exc,match", BAD_MSE)
def test_bad_input_masked_mse(backend, bad, exc, match):
    args = dict(student=S4, teacher=T4, confidence=C3)
    bad = dict(bad)
    kwargs = {k: bad.pop(k) for k in list(bad) if k not in args}
    args.update(bad)
    with pytest.raises(exc, match=match):
        kdkernels.confidence_masked_mse(args["student"], args["teacher"], args["confidence"], **kwargs)


BAD_ROWS = [
    (dict(teacher_logits=torch.randn(6, 4)), ValueError, "same shape"),
    (dict(teacher_logits=LT.half()), TypeError, "same dtype"),
    (dict(student_logits=L.int(), teacher_logits=LT.int()), TypeError, "student_logits"),
    (dict(student_logits=torch.randn(6, 0), teacher_logits=torch.randn(6, 0)), ValueError, "K >= 1"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-2.0), ValueError, "temperature"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(mode="relu"), ValueError, "mode"),
    (dict(reduction="batchmean"), ValueError, "reduction"),
    (dict(weight=torch.rand(5)), ValueError, "weight"),
    (dict(weight=-torch.rand(6)), ValueError, "weight must be finite and >= 0"),
    (dict(weight=torch.rand(6).long()), TypeError, "weight"),
    (dict(weight=torch.rand(6, device="meta")), ValueError, "weight"),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
@pytest.mark.parametrize("op", [kdkernels.soft_label_kl, kdkernels.adaptive_distillation_loss])
@pytest.mark.parametrize("bad,exc,match", BAD_ROWS)
def test_bad_input_row_losses(backend, op, bad, exc, match):
    args = dict(student_logits=L, teacher_logits=LT)
    bad = dict(bad)
    kwargs = {k: bad.pop(k) for k in list(bad) if k not in args}
    args.update(bad)
    with pytest.raises(exc, match=match):
        op(args["student_logits"], args["teacher_logits"], **kwargs)


@pytest.mark.parametrize("bad,exc,match", [(dict(beta=-1.0), ValueError, "beta"), (dict(gamma=-0.5), ValueError, "gamma"),
                                           (dict(detach_weight="yes"), TypeError, "detach_weight")])
def test_bad_input_adl(bad, exc, match):
    with pytest.raises(exc, match=match):
        kdkernels.adaptive_distillation_loss(L, LT, **bad)
