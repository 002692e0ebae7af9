"""Trainer configuration: dataclasses loaded from YAML with `--set key=value` overrides.

Unknown keys, wrong types, non-finite numbers (.inf, .nan) and out-of-range values raise ConfigError
naming the key. Float fields also take exponent literals without a dot (`1e-3`), which YAML 1.1
reads as strings.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
# the generator's first 8 shapes (kdkernels.train.synthetic.CLASS_NAMES[:8]), look-alikes included
DEFAULT_CLASSES = ("circle", "ring", "square", "hollow_square", "triangle", "cross", "diamond", "ellipse")
SHAPES = DEFAULT_CLASSES + ("star", "hexagon")


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    root: str = "data/synthetic"                 # folder made by `kdkernels-train make-data`
    train_images: str = "images/train"
    train_ann: str = "annotations/instances_train.json"
    unlabeled_images: typing.Optional[str] = "images/unlabeled"   # null: no unlabeled data
    unlabeled_list: typing.Optional[str] = None  # JSON list of file names (label-scarce split)
    val_images: str = "images/val"
    val_ann: str = "annotations/instances_val.json"
    image_size: int = 96
    cache_images: bool = True
    # The synthetic set's generator knobs (`make-data`, and the automatic generation when data.root
    # holds no data yet); ignored for other COCO data. Defaults: the hard set (8 shapes incl.
    # look-alikes, objects from 6 px, clutter, occlusion); the demo preset makes an easier one.
    num_train: int = 1000
    num_unlabeled: int = 1000
    num_val: int = 300
    classes: typing.List[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    seed: typing.Optional[int] = None            # generator seed (null: the run's seed)
    label_fraction: float = 1.0                  # labeled share of the train split (rest → unlabeled_list)
    max_objects: int = 6
    min_size: float = 6.0                        # px, smallest object side
    max_size_frac: float = 0.45                  # largest object side as a fraction of image_size
    max_occlusion: float = 0.7                   # more hidden than this: drawn but not annotated
    overlap_prob: float = 0.35                   # chance an object is placed next to an earlier one
    clutter: float = 1.0                         # clutter amount (lines, arcs, blobs), 0 = none
    noise_std: float = 0.04                      # pixel noise


@dataclass
class ModelConfig:
    arch: str = "retinanet"                      # retinanet | fcos
    teacher: str = "demo-teacher"
    student: str = "demo-student"
    anchor_sizes: typing.List[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    head_norm: bool = False                      # GroupNorm in the RetinaNet head (torchvision's v2 head)
    teacher_backbone_weights: typing.Optional[str] = None   # local file; nothing is downloaded
    student_backbone_weights: typing.Optional[str] = None


@dataclass
class TrainConfig:
    iterations: int = 600
    batch_size: int = 8
    unlabeled_batch_size: int = 8
    unlabeled_every: int = 2                     # one unlabeled step after every k labeled ones (0: none)
    optimizer: str = "sgd"                       # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    grad_clip: float = 10.0
    hflip: bool = True
    log_every: int = 20
    ckpt_every: int = 100
    amp: str = "auto"                            # auto (bf16 on CUDA) | bf16 | off
    device: str = "auto"                         # auto | cpu | cuda
    num_threads: int = 0                         # CPU threads for torch (0: torch's default, one per core)


@dataclass
class DistillConfig:
    temperature: float = 2.0
    kl_weight: float = 1.0                       # λ_kl: soft-label KL on class logits
    kl_confidence_weighting: bool = True         # weight rows by teacher confidence (False: uniform)
    feat_weight: float = 1.0                     # λ_feat: FPN feature imitation
    feat_region: str = "confidence"              # confidence (label-free) | gt (inside GT boxes)
    feat_threshold: float = 0.3                  # τ
    feat_power: float = 1.0                      # α: mask weight conf^α
    loc_weight: float = 1.0                      # λ_loc: box-regression imitation
    loc_threshold: float = 0.3
    unlabeled_loss: str = "adl"                  # adl | kl (on unlabeled batches)
    adl_weight: float = 1.0
    adl_beta: float = 1.0
    adl_gamma: float = 2.0
    adl_variant: str = "paper"                   # paper (KL) | code (KL + H, authors' Caffe2 op)
    teacher_checkpoint: typing.Optional[str] = None   # default: <out_dir>/teacher/model.pt
    # Which KD terms (kdkernels/train/peers.py, METHOD.md "Peer presets"): thesis (the terms above) |
    # cwd | pkd | fgd | fgd_conf. A peer preset is the detection loss + that peer's published feature
    # loss(es) only; `peer_thesis_terms` adds thesis terms to it (kl, unlabeled, feat, loc, with their
    # weights above). method_weight scales every published weight of the peer (the efficacy tuning knob).
    method: str = "thesis"
    method_weight: float = 1.0
    peer_thesis_terms: typing.List[str] = field(default_factory=list)
    # CWD (Shu et al. 2021; MMRazor ChannelWiseDivergence, its RetinaNet FPN config): tau, loss_weight
    cwd_tau: float = 1.0
    cwd_weight: float = 10.0
    # PKD (Cao et al. 2022; MMRazor PKDLoss, its RetinaNet FPN config): loss_weight
    pkd_weight: float = 10.0
    # FGD (Yang et al. 2022; yzd-v/FGD RetinaNet configs): temp, alpha (fg), beta (bg), gamma
    # (attention), lambda (global relation)
    fgd_temp: float = 0.5
    fgd_alpha: float = 0.001
    fgd_beta: float = 0.0005
    fgd_gamma: float = 0.0005
    fgd_lambda: float = 0.000005


@dataclass
class EvalConfig:
    batch_size: int = 16
    score_thresh: float = 0.05
    detections_per_img: int = 100


@dataclass
class Config:
    seed: int = 0
    out_dir: str = "runs/demo"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model.arch": ("retinanet", "fcos"),
    "train.optimizer": ("sgd", "adamw"),
    "train.amp": ("auto", "bf16", "off"),
    "train.device": ("auto", "cpu", "cuda"),
    "distill.feat_region": ("confidence", "gt"),
    "distill.unlabeled_loss": ("adl", "kl"),
    "distill.adl_variant": ("paper", "code"),
    "distill.method": ("thesis", "cwd", "pkd", "fgd", "fgd_conf"),
}
# The peer-preset keys (added after the thesis's): they do not change a thesis run, so a thesis run's
# config hash leaves them out and a checkpoint written before they existed reads them at their defaults.
PEER_KEYS = ("method", "method_weight", "peer_thesis_terms", "cwd_tau", "cwd_weight", "pkd_weight", "fgd_temp",
             "fgd_alpha", "fgd_beta", "fgd_gamma", "fgd_lambda")
# list keys whose items must be one of these (each at most once)
ITEM_CHOICES = {
    "distill.peer_thesis_terms": ("kl", "unlabeled", "feat", "loc"),
}
POSITIVE = {"data.image_size", "data.num_train", "data.num_val", "data.max_objects", "data.max_size_frac",
            "train.iterations", "train.batch_size", "train.lr", "train.log_every",
            "train.ckpt_every", "distill.temperature", "eval.batch_size", "distill.cwd_tau", "distill.fgd_temp"}
NON_NEGATIVE = {"train.num_threads", "data.num_unlabeled", "data.clutter", "data.noise_std", "train.unlabeled_batch_size", "train.unlabeled_every", "train.warmup_iters",
                "train.weight_decay", "train.momentum", "train.grad_clip", "distill.kl_weight",
                "distill.feat_weight", "distill.loc_weight", "distill.adl_weight", "distill.adl_beta",
                "distill.adl_gamma", "distill.feat_power", "distill.method_weight", "distill.cwd_weight",
                "distill.pkd_weight", "distill.fgd_alpha", "distill.fgd_beta", "distill.fgd_gamma",
                "distill.fgd_lambda"}
UNIT = {"data.max_size_frac", "data.max_occlusion", "data.overlap_prob", "distill.feat_threshold", "distill.loc_threshold", "eval.score_thresh"}


# a decimal number as YAML 1.2 / Python write it (1e-3, 2E+4, .5, -3.0); YAML 1.1 leaves 1e-3 a string
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _as_float(value, key):
    """A float field's value: numbers and numeric strings such as '1e-3'; finite only."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, float):
        raise ConfigError(f"{key} must be float, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return value


def _check_type(value, tp, key):
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check_type(value, inner, key)
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        return _as_float(value, key)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _check_type(value, tp, key)
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    flat = {}
    for section in ("data", "model", "train", "distill", "eval"):
        for k, v in dataclasses.asdict(getattr(cfg, section)).items():
            flat[f"{section}.{k}"] = v
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {flat[key]!r}")
    for key, choices in ITEM_CHOICES.items():
        for item in flat[key]:
            if item not in choices:
                raise ConfigError(f"{key}: unknown item {item!r} (one of {', '.join(choices)})")
        if len(set(flat[key])) != len(flat[key]):
            raise ConfigError(f"{key} has duplicates: {flat[key]}")
    for key in POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"{key} must be > 0, got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if not flat[key] >= 0:
            raise ConfigError(f"{key} must be >= 0, got {flat[key]!r}")
    for key in UNIT:
        if not 0 <= flat[key] <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {flat[key]!r}")
    d = cfg.data
    if not 0 < d.label_fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {d.label_fraction!r}")
    if not d.classes:
        raise ConfigError("data.classes must name at least one shape")
    for name in d.classes:
        if name not in SHAPES:
            raise ConfigError(f"data.classes: unknown shape {name!r} (shapes: {', '.join(SHAPES)})")
    if len(set(d.classes)) != len(d.classes):
        raise ConfigError(f"data.classes has duplicates: {d.classes}")
    if not 2 <= d.min_size <= d.max_size_frac * d.image_size:
        raise ConfigError(f"data.min_size must be in [2, data.max_size_frac * data.image_size = "
                          f"{d.max_size_frac * d.image_size:g}], got {d.min_size!r}")
    if not cfg.model.anchor_sizes or any(s <= 0 for s in cfg.model.anchor_sizes):
        raise ConfigError(f"model.anchor_sizes must be positive sizes, got {cfg.model.anchor_sizes!r}")
    return cfg


def parse_override(text: str):
    if "=" not in text:
        raise ConfigError(f"override must look like key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(path=None, overrides=()) -> Config:
    """YAML file (or the packaged demo preset when None / a preset name) + dotted overrides."""
    if path is None:
        path = CONFIG_DIR / "demo.yaml"
    elif not Path(path).exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        path = CONFIG_DIR / f"{path}.yaml"
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (presets: "
                          f"{', '.join(p.stem for p in CONFIG_DIR.glob('*.yaml'))})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    return validate(_build(Config, data, ""))
