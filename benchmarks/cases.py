"""The benchmark cases: one definition shared by run.py (timing + memory) and test_bench.py.

A case is one op with one fixed argument set and a sweep of sizes. For every case there are three
variants computing the same loss:

    eager      kdkernels.reference.<op>(...)                 plain PyTorch, the ground truth
    compiled   torch.compile(kdkernels.reference.<op>)(...)  compiled once per case, static shapes
                                                             (one specialised graph per size; the
                                                             first call per size compiles and is a
                                                             warm-up, never timed)
    kdkernels  kdkernels.<op>(...)                           the public op, backend "auto"

plus one variant per further kdkernels backend that runs on the device, named after it: the
backends come from ``kdkernels.available_backends(device)`` (fastest first, so its first entry is
what "auto" picks = the ``kdkernels`` variant; "reference" = eager is left out). On CUDA with the
CUDA extension and triton that adds ``triton`` = kdkernels.<op> under ``kdkernels.use_backend("triton")``.

Inputs are built by ``Case.setup(size, dtype, device)``; the student requires grad, the teacher,
the confidence and the weights do not (they are targets).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import kdkernels
from kdkernels import reference

VARIANTS = ("eager", "compiled", "kdkernels")   # the variants on every device
MODES = ("fwd", "fwd+bwd")

# Every size of every case compiles one static-shape graph of the same reference function (the
# sigmoid and softmax soft_label_kl cases even share one code object): lift dynamo's recompile
# limit so no size silently falls back to eager.
_RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class Size:
    """One point of a size sweep. ``shape`` is the student's (and teacher's) shape."""
    label: str
    shape: tuple[int, ...]
    quick: bool = False        # part of the --quick sweep (small, compiles fast)
    realistic: bool = False    # a detection-realistic shape (headline numbers)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Inputs:
    """Arguments of one call: ``op(student, teacher, *extra, **kwargs)``."""
    student: torch.Tensor
    teacher: torch.Tensor
    extra: tuple = ()
    kwargs: dict = field(default_factory=dict)

    @property
    def input_bytes(self) -> int:
        """Bytes of student + teacher (the unit of the memory multiples)."""
        return (self.student.numel() * self.student.element_size()
                + self.teacher.numel() * self.teacher.element_size())

    @property
    def tensor_bytes(self) -> int:
        """Bytes of one of the two big tensors."""
        return self.student.numel() * self.student.element_size()

    @property
    def extra_bytes(self) -> int:
        """Bytes of the small tensors (confidence / weight)."""
        return sum(x.numel() * x.element_size() for x in
                   list(self.extra) + list(self.kwargs.values()) if isinstance(x, torch.Tensor))

    def reset(self) -> None:
        """zero_grad(set_to_none=True) for the student."""
        self.student.grad = None


@dataclass(eq=False)
class Case:
    name: str                  # unique id, e.g. "soft_label_kl[sigmoid]"
    op: str                    # attribute of kdkernels and kdkernels.reference
    kwargs: dict               # fixed keyword arguments of the op
    sizes: tuple[Size, ...]
    kind: str                  # "features" (N, C, H, W) + confidence (N, H, W) | "logits" (R, K) + weight (R,)
                               # | "feature_pair" (N, C, H, W) only | "labels" (R, K) + labels (R,)
                               # | "separable" (N, C, H, W) + spatial (N, H, W) and channel (N, C) weights
    description: str = ""
    _compiled: Callable | None = field(default=None, repr=False)

    # -- inputs --------------------------------------------------------------------------------
    def setup(self, size: Size, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0) -> Inputs:
        device = torch.device(device)
        gen = torch.Generator(device=device).manual_seed(seed)

        def randn(shape, scale=1.0):
            return (torch.randn(shape, generator=gen, device=device) * scale).to(dtype)

        if self.kind == "features":
            n, c, h, w = size.shape
            student = randn(size.shape).requires_grad_()
            teacher = randn(size.shape)
            # uniform in [0, 1]: with threshold 0.5 half of the pixels are imitated
            confidence = torch.rand((n, h, w), generator=gen, device=device).to(dtype)
            return Inputs(student, teacher, (confidence,), dict(self.kwargs))
        if self.kind == "feature_pair":
            return Inputs(randn(size.shape).requires_grad_(), randn(size.shape), (), dict(self.kwargs))
        if self.kind == "labels":
            rows, k = size.shape
            labels = torch.randint(0, k, (rows,), generator=gen, device=device)
            return Inputs(randn(size.shape, 2.0).requires_grad_(), randn(size.shape, 2.0), (labels,),
                          dict(self.kwargs))
        if self.kind == "separable":
            n, c, h, w = size.shape
            student = randn(size.shape).requires_grad_()
            teacher = randn(size.shape)
            # FGD-like: a spatial map that is 0 on half of the pixels (a foreground mask times an
            # attention), a channel attention C·softmax (mean 1)
            spatial = torch.rand((n, h, w), generator=gen, device=device)
            spatial = torch.where(spatial < 0.5, 0.0, 2.0 * spatial).to(dtype)
            channel = (c * torch.softmax(torch.randn((n, c), generator=gen, device=device), dim=1)).to(dtype)
            return Inputs(student, teacher, (spatial, channel), dict(self.kwargs))
        if self.kind == "logits":
            student = randn(size.shape, 2.0).requires_grad_()
            teacher = randn(size.shape, 2.0)
            weight = kdkernels.teacher_confidence(teacher, mode=self.kwargs.get("mode", "sigmoid"))
            return Inputs(student, teacher, (), dict(self.kwargs, weight=weight))
        raise ValueError(f"unknown case kind {self.kind!r}")

    # -- the three variants ----------------------------------------------------------------------
    def compiled(self) -> Callable:
        """torch.compile(kdkernels.reference.<op>), created once per case (static shapes)."""
        if self._compiled is None:
            cfg = torch._dynamo.config
            for knob in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, knob):
                    setattr(cfg, knob, max(getattr(cfg, knob), _RECOMPILE_LIMIT))
            if hasattr(cfg, "accumulated_recompile_limit"):
                cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * _RECOMPILE_LIMIT)
            self._compiled = torch.compile(getattr(reference, self.op), dynamic=False)
        return self._compiled

    def fn(self, variant: str) -> Callable[[Inputs], torch.Tensor]:
        """The loss of one variant as a function of the inputs."""
        if variant == "eager":
            f = getattr(reference, self.op)
        elif variant == "compiled":
            f = self.compiled()
        elif variant == "kdkernels":
            f = getattr(kdkernels, self.op)
        elif variant in kdkernels.BACKENDS and variant != "auto":   # one pinned backend
            op = getattr(kdkernels, self.op)

            def f(*args, **kwargs):
                with kdkernels.use_backend(variant):
                    return op(*args, **kwargs)
        else:
            raise ValueError(f"variant must be one of {VARIANTS} or a backend of "
                             f"{kdkernels.BACKENDS[1:]}, got {variant!r}")

        def loss(inp: Inputs) -> torch.Tensor:
            return f(inp.student, inp.teacher, *inp.extra, **inp.kwargs)

        loss.__name__ = f"{self.name}:{variant}"
        return loss

    def sizes_for(self, quick: bool) -> tuple[Size, ...]:
        return tuple(s for s in self.sizes if s.quick) if quick else self.sizes


def variants_for(device) -> tuple[str, ...]:
    """The variants benchmarked on `device`: VARIANTS, plus every further backend of
    ``kdkernels.available_backends(device)`` after the first (which "auto" = ``kdkernels`` runs),
    "reference" excepted (that is eager). Triton on a CPU device is its interpreter (a test
    mode, TRITON_INTERPRET=1), not a kernel worth timing: left out."""
    device = torch.device(device)
    extra = tuple(b for b in kdkernels.available_backends(device)[1:]
                  if b != "reference" and not (b == "triton" and device.type != "cuda"))
    return VARIANTS + extra


def forward(fn: Callable[[Inputs], torch.Tensor], inp: Inputs) -> torch.Tensor:
    """Training forward: grad mode on, the student requires grad, the autograd graph is built
    (so the fused kernels also write the student gradient here, as they do in training)."""
    return fn(inp)


def forward_backward(fn: Callable[[Inputs], torch.Tensor], inp: Inputs) -> torch.Tensor:
    """Forward + loss.backward() into a fresh student.grad (reset with ``inp.reset()`` first)."""
    loss = fn(inp)
    loss.backward()
    return loss


STEPS = {"fwd": forward, "fwd+bwd": forward_backward}


# --- the sweep ----------------------------------------------------------------------------------
_FEATURE_SIZES = (
    Size("(2,64,32,32)", (2, 64, 32, 32), quick=True),
    Size("P5 (2,256,25,42)", (2, 256, 25, 42)),
    Size("P4 (2,256,50,84)", (2, 256, 50, 84)),
    Size("P3 (2,256,100,168)", (2, 256, 100, 168), realistic=True),
)
_LOGIT_SIZES = (
    Size("(4096,80)", (4096, 80), quick=True),
    Size("(32768,80)", (32768, 80)),
    Size("(100000,80)", (100000, 80)),
    Size("RetinaNet (400000,80)", (400000, 80), realistic=True),
)

_PKD_SIZES = (
    Size("(2,64,32,32)", (2, 64, 32, 32), quick=True),
    Size("(8,256,40,40)", (8, 256, 40, 40), realistic=True),
    Size("(16,256,80,80)", (16, 256, 80, 80), realistic=True),
)
_BIN_SIZES = (  # LD rows: anchors × 4 box sides, K = reg_max + 1 (or reg_max = 16 bins in YOLOv8/11)
    Size("(4096,17)", (4096, 17), quick=True),
    Size("(65536,17)", (65536, 17)),
    Size("YOLO11 b16 640px (537600,16)", (537600, 16), realistic=True),
)
_CLASS_SIZES = (  # DKD rows: images (classification) or anchors (detection) × classes
    Size("(256,100)", (256, 100), quick=True),
    Size("ImageNet b256 (256,1000)", (256, 1000)),
    Size("(100000,80)", (100000, 80), realistic=True),
)

CASES: tuple[Case, ...] = (
    Case("confidence_masked_mse", "confidence_masked_mse", dict(threshold=0.5, reduction="mean"),
         _FEATURE_SIZES, "features",
         "FPN feature imitation, mask = confidence ≥ 0.5 (confidence uniform in [0, 1])"),
    Case("separable_weighted_mse", "separable_weighted_mse", dict(reduction="sum"), _FEATURE_SIZES,
         "separable", "FGD's focal feature term: spatial weight (0 on half of the pixels) × channel weight"),
    Case("soft_label_kl[sigmoid]", "soft_label_kl", dict(mode="sigmoid"), _LOGIT_SIZES, "logits",
         "per-class binary KL, weight = teacher confidence"),
    Case("soft_label_kl[softmax]", "soft_label_kl", dict(mode="softmax"), _LOGIT_SIZES, "logits",
         "softmax KL over K, weight = teacher confidence"),
    Case("adaptive_distillation_loss[sigmoid]", "adaptive_distillation_loss", dict(mode="sigmoid"),
         _LOGIT_SIZES, "logits", "ADL (β = 1, γ = 2), weight = teacher confidence"),
    Case("adaptive_distillation_loss[softmax]", "adaptive_distillation_loss", dict(mode="softmax"),
         _LOGIT_SIZES, "logits", "softmax ADL (β = 1, γ = 2), weight = teacher confidence"),
    Case("channel_wise_divergence", "channel_wise_divergence", dict(temperature=4.0), _FEATURE_SIZES,
         "feature_pair", "CWD: softmax over H·W per channel, T = 4 (soft_label_kl kernel)"),
    Case("localization_distillation", "localization_distillation", dict(temperature=10.0), _BIN_SIZES,
         "logits", "LD: box-edge bin KL, T = 10, mean over bins, weight = teacher confidence"),
    Case("decoupled_kd", "decoupled_kd", dict(alpha=1.0, beta=8.0, temperature=4.0), _CLASS_SIZES,
         "labels", "DKD: α = 1, β = 8, T = 4 (fused DKD kernel)"),
    Case("pearson_feature_loss", "pearson_feature_loss", dict(reduction="mean"), _PKD_SIZES, "feature_pair",
         "PKD: per-channel standardised features, MSE / 2 (MMRazor PKDLoss)"),
)
CASES_BY_NAME = {c.name: c for c in CASES}
