"""teacher_confidence and confidence_map against the reference."""
import pytest
import torch

import kdkernels
from conftest import DTYPES, assert_close


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_teacher_confidence(dtype, mode):
    logits = (torch.randn(3, 11, 80, dtype=torch.float64) * 4).to(dtype).requires_grad_()
    conf = kdkernels.teacher_confidence(logits, mode=mode)
    probs = torch.sigmoid(logits.double()) if mode == "sigmoid" else torch.softmax(logits.double(), -1)
    assert conf.shape == (3, 11) and not conf.requires_grad
    assert_close(conf, probs.amax(-1), dtype, "confidence")
    assert_close(kdkernels.reference.teacher_confidence(logits, mode=mode), probs.amax(-1), dtype, "reference")


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_confidence_map(mode):
    n, a, k, h, w = 2, 9, 5, 6, 7
    head = torch.randn(n, a * k, h, w, dtype=torch.float64)
    cmap = kdkernels.confidence_map(head, num_anchors=a, mode=mode)
    per = head.view(n, a, k, h, w)
    probs = torch.sigmoid(per) if mode == "sigmoid" else torch.softmax(per, dim=2)
    torch.testing.assert_close(cmap, probs.amax(dim=(1, 2)))
    torch.testing.assert_close(kdkernels.reference.confidence_map(head, a, mode=mode), cmap)


def test_confidence_map_bad_anchors():
    with pytest.raises(ValueError, match="num_anchors"):
        kdkernels.confidence_map(torch.randn(1, 10, 2, 2), num_anchors=3)
    with pytest.raises(ValueError, match="cls_logits"):
        kdkernels.confidence_map(torch.randn(10, 2, 2), num_anchors=1)
    with pytest.raises(ValueError, match="mode"):
        kdkernels.teacher_confidence(torch.randn(2, 3), mode="max")
