"""The distillation settings: Ultralytics-style flat ``key=value`` arguments next to its own.

They live in the trainer's ``args`` namespace (so ``args.yaml``, checkpoints, resume and the DDP
launcher carry them) and are validated here with errors that name the key. ``unlabeled=`` with every
term of unlabeled batches off (the weights of ``UNLABELED_TERMS`` all 0) is an error too.

| key | default | meaning |
|---|---|---|
| ``distill_model`` | (Ultralytics' own key) | teacher checkpoint ``.pt``; required by the KD trainer |
| ``kd_feat`` | 6.0 | feature imitation weight (Ultralytics' ``dis`` default), 0 = off |
| ``kd_feat_threshold`` | 0.0 | τ: neck pixels with teacher confidence < τ are left out |
| ``kd_feat_power`` | 1.0 | α: pixel weight conf^α (τ=0, α=1 is Ultralytics' ``loss_sl2``) |
| ``kd_cls`` | 1.0 | class-score soft-label KL weight (labelled batches), 0 = off |
| ``kd_T`` | 2.0 | temperature of the class KL and of ADL |
| ``kd_cls_conf`` | True | weight each anchor's KL by the teacher confidence |
| ``kd_ld`` | 1.0 | localisation distillation weight (both batch kinds), 0 = off |
| ``kd_ld_T`` | 2.0 | temperature of the DFL-bin softmax KL |
| ``kd_ld_threshold`` | 0.0 | anchors with teacher confidence < τ are left out of LD |
| ``kd_unl`` | 1.0 | class-score term weight on unlabeled batches, 0 = off |
| ``kd_unl_loss`` | "adl" | "adl" (adaptive distillation loss) or "kl" (the labelled KL) |
| ``kd_adl_beta`` / ``kd_adl_gamma`` | 1.0 / 2.0 | ADL's β (teacher entropy) and γ (focusing) |
| ``unlabeled`` | None | folder or ``.txt`` list of unlabeled images |
| ``unlabeled_ratio`` | 0.5 | unlabeled batches per labelled batch (0.5: one after every two) |
| ``offline`` | True | no network: no download of weights/fonts, no AMP-check download, no events |
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["KD_DEFAULTS", "KDConfig", "check_number", "kd_config", "split_kd_overrides"]

KD_DEFAULTS = {
    "kd_feat": 6.0, "kd_feat_threshold": 0.0, "kd_feat_power": 1.0,
    "kd_cls": 1.0, "kd_T": 2.0, "kd_cls_conf": True,
    "kd_ld": 1.0, "kd_ld_T": 2.0, "kd_ld_threshold": 0.0,
    "kd_unl": 1.0, "kd_unl_loss": "adl", "kd_adl_beta": 1.0, "kd_adl_gamma": 2.0,
    "unlabeled": None, "unlabeled_ratio": 0.5, "offline": True,
}

UNLABELED_TERMS = ("kd_feat", "kd_unl", "kd_ld")  # the weights of the terms that run on unlabeled batches


@dataclass(frozen=True)
class KDConfig:
    """The validated KD settings (see the module table)."""
    kd_feat: float = 6.0
    kd_feat_threshold: float = 0.0
    kd_feat_power: float = 1.0
    kd_cls: float = 1.0
    kd_T: float = 2.0
    kd_cls_conf: bool = True
    kd_ld: float = 1.0
    kd_ld_T: float = 2.0
    kd_ld_threshold: float = 0.0
    kd_unl: float = 1.0
    kd_unl_loss: str = "adl"
    kd_adl_beta: float = 1.0
    kd_adl_gamma: float = 2.0
    unlabeled: str | None = None
    unlabeled_ratio: float = 0.5
    offline: bool = True


def split_kd_overrides(overrides: dict) -> tuple[dict, dict]:
    """(Ultralytics' own overrides, the KD keys) of a ``key=value`` dict."""
    own = {k: v for k, v in overrides.items() if k not in KD_DEFAULTS}
    return own, {k: v for k, v in overrides.items() if k in KD_DEFAULTS}


def check_number(value, key: str, *, minimum=None, positive=False) -> float:
    """``value`` as a finite float (> 0 with ``positive``, >= ``minimum``); TypeError / ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"'{key}={value!r}' must be a number") from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"'{key}={value!r}' must be finite")
    if positive and value <= 0:
        raise ValueError(f"'{key}={value!r}' must be > 0")
    if minimum is not None and value < minimum:
        raise ValueError(f"'{key}={value!r}' must be >= {minimum}")
    return value


def _boolean(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise TypeError(f"'{key}={value!r}' must be True or False")


def kd_config(args) -> KDConfig:
    """Validate the KD keys of an args namespace or dict (missing keys take their defaults)."""
    get = args.get if isinstance(args, dict) else (lambda k, d: getattr(args, k, d))
    raw = {f.name: get(f.name, KD_DEFAULTS[f.name]) for f in fields(KDConfig)}
    out = {}
    for key, value in raw.items():
        if key in ("kd_cls_conf", "offline"):
            out[key] = _boolean(value, key)
        elif key == "kd_unl_loss":
            if value not in ("adl", "kl"):
                raise ValueError(f"'kd_unl_loss={value!r}' must be 'adl' or 'kl'")
            out[key] = value
        elif key == "unlabeled":
            out[key] = _unlabeled_path(value)
        elif key in ("kd_T", "kd_ld_T"):
            out[key] = check_number(value, key, positive=True)
        elif key in ("kd_feat_threshold", "kd_feat_power", "kd_ld_threshold"):
            out[key] = check_number(value, key)
        else:  # weights, ratio, beta, gamma
            out[key] = check_number(value, key, minimum=0.0)
    cfg = KDConfig(**out)
    _check_unlabeled_terms(cfg)
    return cfg


def _check_unlabeled_terms(cfg: KDConfig) -> None:
    """ValueError naming the keys when unlabeled batches would run with every one of their terms off
    (they would have no loss to train on)."""
    if cfg.unlabeled and cfg.unlabeled_ratio > 0 and not any(getattr(cfg, k) > 0 for k in UNLABELED_TERMS):
        raise ValueError(f"'unlabeled={cfg.unlabeled}' with {', '.join(f'{k}=0' for k in UNLABELED_TERMS)}: no term "
                         "runs on unlabeled batches; set one of these weights > 0, or drop 'unlabeled' "
                         "(or set unlabeled_ratio=0)")


def _unlabeled_path(value):
    if value in (None, "", "None", "none"):
        return None
    path = Path(str(value))
    if not (path.is_dir() or (path.is_file() and path.suffix == ".txt")):
        raise FileNotFoundError(f"'unlabeled={value}' must be a folder of images or a .txt list of images")
    return str(path)
