"""Teacher and student RetinaNet (or FCOS) detectors with one anchor layout, and a forward pass that
exposes what distillation needs: FPN features, per-anchor class logits and box regression.

Presets (config `model.teacher` / `model.student`):
  demo-teacher   ResNet-style [2,2,2,2] at width 32, FPN 64 ch   (CPU demo)
  demo-student   ResNet-style [1,1,1,1] at width 12, FPN 32 ch
  resnet50       torchvision ResNet-50-FPN, 256 ch (paper scale; weights from a local file only)
  resnet18       torchvision ResNet-18-FPN, 256 ch
  mobilenet_v3   torchvision MobileNetV3-Large-FPN, 256 ch
All presets give P3–P7 (strides 8–128) so the teacher's and student's anchors coincide.
"""
from __future__ import annotations

from collections import OrderedDict
import typing
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

PRESETS = {
    "demo-teacher": dict(kind="tiny", blocks=(2, 2, 2, 2), width=32, fpn=64),
    "demo-student": dict(kind="tiny", blocks=(1, 1, 1, 1), width=12, fpn=32),
    "resnet50": dict(kind="torchvision", name="resnet50", fpn=256),
    "resnet18": dict(kind="torchvision", name="resnet18", fpn=256),
    "mobilenet_v3": dict(kind="mobilenet", fpn=256),
}


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.skip is None else self.skip(x)))


class TinyResNet(nn.Module):
    """ResNet-style body with configurable width; returns C3, C4, C5 (strides 8, 16, 32)."""

    def __init__(self, blocks=(1, 1, 1, 1), width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        chans = [width, width * 2, width * 4, width * 8]
        layers, cin = [], width
        for i, (n, c) in enumerate(zip(blocks, chans)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(*[_Block(cin if j == 0 else c, c, stride if j == 0 else 1) for j in range(n)]))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.channels = chans[1:]

    def forward(self, x):
        x = self.layer1(self.pool(self.stem(x)))  # stride 4
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict([("0", c3), ("1", c4), ("2", c5)])


class _TinyBackboneWithFPN(nn.Module):
    def __init__(self, body: TinyResNet, out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(self.body(x))


def build_backbone(preset: str, weights_path: str | None = None):
    if preset not in PRESETS:
        raise ValueError(f"model preset must be one of {sorted(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    if spec["kind"] == "tiny":
        backbone = _TinyBackboneWithFPN(TinyResNet(spec["blocks"], spec["width"]), spec["fpn"])
    elif spec["kind"] == "torchvision":
        backbone = resnet_fpn_backbone(backbone_name=spec["name"], weights=None, trainable_layers=5,
                                       returned_layers=[2, 3, 4],
                                       extra_blocks=LastLevelP6P7(spec["fpn"], spec["fpn"]))
    else:
        from torchvision.models import mobilenet_v3_large
        from torchvision.models.detection.backbone_utils import _mobilenet_extractor
        backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None), True, 6,
                                        returned_layers=[4, 5], extra_blocks=LastLevelP6P7(spec["fpn"], spec["fpn"]))
    if weights_path:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if len(missing) == len(backbone.state_dict()):
            raise ValueError(f"weights file {weights_path} matches none of the {preset} backbone's parameters")
    return backbone


def anchor_generator(anchor_sizes=(8, 16, 32, 64, 128)):
    """3 scales × 3 aspect ratios per location on P3–P7 (RetinaNet's layout, sizes for small images)."""
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, max(1, channels // 4)), channels)


def build_detector(preset: str, num_classes: int, image_size: int, *, arch: str = "retinanet",
                   anchor_sizes=(8, 16, 32, 64, 128), weights_path: str | None = None,
                   score_thresh: float = 0.05, detections_per_img: int = 100, head_norm: bool = False) -> nn.Module:
    """A detector whose transform keeps images at `image_size` (no resize to 800 px).
    head_norm: GroupNorm in the RetinaNet head convs (torchvision's RetinaNet v2 head): trains faster
    and more stably from scratch (FCOS heads always have it)."""
    backbone = build_backbone(preset, weights_path)
    common = dict(min_size=image_size, max_size=image_size, score_thresh=score_thresh,
                  detections_per_img=detections_per_img)
    if arch == "retinanet":
        gen = anchor_generator(anchor_sizes)
        head = None
        if head_norm:
            from torchvision.models.detection.retinanet import RetinaNetHead
            head = RetinaNetHead(backbone.out_channels, gen.num_anchors_per_location()[0], num_classes,
                                 norm_layer=_group_norm)
        return RetinaNet(backbone, num_classes, anchor_generator=gen, head=head, **common)
    if arch == "fcos":
        gen = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((1.0,),) * len(anchor_sizes))
        return FCOS(backbone, num_classes, anchor_generator=gen, **common)
    raise ValueError(f"model.arch must be 'retinanet' or 'fcos', got {arch!r}")


@dataclass
class DetectorOutputs:
    features: list            # FPN levels, each (N, C, H_l, W_l)
    cls_logits: torch.Tensor  # (N, Σ_l H_l W_l A, K)
    bbox_regression: torch.Tensor  # (N, Σ_l H_l W_l A, 4)
    level_shapes: list        # [(H_l, W_l)]
    num_anchors: int          # A per location
    losses: dict              # detection losses (empty without targets)
    image_sizes: list
    adapted: typing.Optional[list] = None  # student features through the KD adapter (trainer)
    relation: typing.Optional[list] = None  # FGD presets: [(GcBlock_s(adapted), GcBlock_t(teacher))] per level


def forward_detector(model: nn.Module, images, targets=None) -> DetectorOutputs:
    """RetinaNet/FCOS forward that keeps features and raw head outputs (training-mode losses if targets)."""
    images_t, targets_t = model.transform(images, targets)
    feats = model.backbone(images_t.tensors)
    feats = list(feats.values()) if isinstance(feats, dict) else [feats]
    head = model.head(feats)
    shapes = [(f.shape[-2], f.shape[-1]) for f in feats]
    total = sum(h * w for h, w in shapes)
    num_anchors = head["cls_logits"].shape[1] // total
    losses = {}
    if targets_t is not None:
        anchors = model.anchor_generator(images_t, feats)
        if isinstance(model, FCOS):
            num_per_level = [h * w for h, w in shapes]
            losses = model.compute_loss(targets_t, head, anchors, num_per_level)
        else:
            losses = model.compute_loss(targets_t, head, anchors)
    return DetectorOutputs(feats, head["cls_logits"], head["bbox_regression"], shapes, num_anchors,
                           losses, images_t.image_sizes)
