"""KDDetectionTrainer: Ultralytics' DetectionTrainer distilling a teacher into the student with the
kdkernels terms (see :mod:`.model`), on labelled and (optionally) unlabeled images.

    from kdkernels.integrations.ultralytics import KDDetectionTrainer
    KDDetectionTrainer(overrides=dict(model="yolo11n.yaml", data="data.yaml", distill_model="teacher.pt",
                                      unlabeled="images/unlabeled", epochs=10, imgsz=64)).train()

Ultralytics conventions are kept: every setting is a ``key=value`` override (the KD keys of
:mod:`.config` next to Ultralytics' own), the KD terms are loss items (progress bar, results.csv),
checkpoints are Ultralytics' (``last.pt`` resumes with ``resume=True``; the final ``best.pt`` holds
the student alone), AMP and the DDP launcher work as for any trainer (the class is importable, so the
launcher's generated script can rebuild it), and ``compile=True`` stays on.
"""
from __future__ import annotations

import contextlib
from copy import copy
from pathlib import Path

from torch import nn
from ultralytics.cfg import cfg2dict, get_cfg
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.checks import check_imgsz
from ultralytics.utils.torch_utils import unwrap_model

from .config import KD_DEFAULTS, kd_config, split_kd_overrides
from .model import KDDistillationModel
from .offline import offline_mode
from .unlabeled import InterleavedLoader, build_unlabeled_loader

__all__ = ["KDDetectionTrainer", "check_overrides", "kd_base_cfg"]


def kd_base_cfg(cfg=DEFAULT_CFG) -> dict:
    """Ultralytics' settings ``cfg`` plus the KD keys at their defaults: the KD keys are then known keys,
    and Ultralytics checks the rest."""
    return {**KD_DEFAULTS, **cfg2dict(cfg)}


def _check_kd_overrides(overrides: dict) -> None:
    """The KD keys among ``overrides`` checked (``kd_config``, the other KD keys at their defaults)."""
    kd_config({**KD_DEFAULTS, **split_kd_overrides(overrides)[1]})


def check_overrides(overrides: dict, cfg=DEFAULT_CFG) -> None:
    """The trainer's argument checks without building it: the KD keys (``kd_config``) and Ultralytics' keys
    and values (``get_cfg``, its help text not printed); errors name the key."""
    _check_kd_overrides(overrides)
    logger_was_disabled, LOGGER.disabled = LOGGER.disabled, True
    try:
        get_cfg(kd_base_cfg(cfg), overrides)
    finally:
        LOGGER.disabled = logger_was_disabled


class KDDetectionTrainer(DetectionTrainer):
    """DetectionTrainer + kdkernels distillation (``distill_model`` required; KD keys in :mod:`.config`)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        base = kd_base_cfg(cfg)
        overrides = dict(overrides or {})
        _check_kd_overrides(overrides)  # fail early, naming the key
        with offline_mode(kd_config(overrides).offline if "offline" in overrides else True):
            super().__init__(base, overrides, _callbacks)
        self.kd = kd_config(self.args)
        if not self.args.distill_model:
            raise ValueError("distill_model=<teacher .pt> is required by the kdkernels KD trainer "
                             "(use Ultralytics' DetectionTrainer to train without a teacher)")
        self.kd_teacher = str(self.args.distill_model)

    def train(self):
        """Ultralytics' train (single process, or the DDP launcher), offline unless ``offline=False``."""
        with offline_mode(self.kd.offline):
            return super().train()

    def get_dataset(self):
        with offline_mode(kd_config(self.args).offline):
            return super().get_dataset()

    def setup_model(self):
        """The student (from YAML, weights, or a resumed KD checkpoint) wrapped in KDDistillationModel."""
        if isinstance(self.model, nn.Module):
            if not isinstance(unwrap_model(self.model), KDDistillationModel):
                self.model = self._wrap(self.model, None)
            return None
        cfg, weights, ckpt = self.model, None, None
        if str(self.model).lower().endswith(".pt"):
            weights, ckpt = load_checkpoint(self.model)
            cfg = weights.yaml
        if isinstance(self.args.pretrained, (str, Path)) and not self.resume:
            weights, _ = load_checkpoint(self.args.pretrained)
        elif self.args.pretrained is False and not self.resume:
            weights = None
        projector = None
        if isinstance(weights, DistillationModel):  # resuming: student + projector from the checkpoint
            projector, weights = weights.projector, weights.student_model
        student = self.get_model(cfg=cfg, weights=weights, verbose=RANK in {-1, 0})
        self.model = self._wrap(student, projector)
        return ckpt

    def _wrap(self, student, projector):
        """``student`` in a KDDistillationModel (its setup runs the teacher and student at ``imgsz``)."""
        student.nc, student.names, student.args = self.data["nc"], self.data["names"], self.args
        self._round_imgsz(student)
        model = KDDistillationModel(self.kd_teacher, student, self.kd)
        if projector is not None:
            model.projector.load_state_dict(projector.state_dict())
        return model

    def _round_imgsz(self, student) -> None:
        """``imgsz`` rounded up to a multiple of the student's largest stride (at least 32), with Ultralytics'
        warning: the check Ultralytics' ``_setup_train`` runs after ``setup_model``, run before the
        distillation model's setup forward, which needs the feature maps of both models to line up."""
        gs = max(int(student.stride.max()), 32)
        self.args.imgsz = check_imgsz(self.args.imgsz, stride=gs, floor=gs, max_dim=1)

    def set_model_attributes(self):
        """nc, names and args on the wrapper and on the student."""
        super().set_model_attributes()
        student = getattr(unwrap_model(self.model), "student_model", None)
        if student is not None:
            student.nc, student.names, student.args = self.data["nc"], self.data["names"], self.args

    def _setup_train(self):
        """Ultralytics' setup, with ``compile`` left on: the base class turns it off whenever
        ``distill_model`` is set, so the key is hidden while it runs (the model is already wrapped)."""
        teacher, self.args.distill_model = self.args.distill_model, None
        try:
            super()._setup_train()
        finally:
            self.args.distill_model = teacher
        if self.args.compile:  # Ultralytics' "compile complete" above is before the (lazy) compile itself
            LOGGER.info("compile: the first step of each batch kind (labelled, unlabeled) traces and compiles the whole "
                        "distillation step; with an empty Inductor cache this takes minutes on a few CPU cores "
                        "(README, YOLO section), later runs reuse the cache")

    def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
        """The labelled loader; in train mode with ``unlabeled=``, interleaved with the unlabeled one."""
        loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
        if mode != "train" or not self.kd.unlabeled or self.kd.unlabeled_ratio == 0:
            return loader
        gs = max(int(unwrap_model(self.model).stride.max()), 32)
        unl = build_unlabeled_loader(self.args, self.kd.unlabeled, batch_size, self.data, gs, rank, self.device)
        LOGGER.info(f"unlabeled: {len(unl.dataset)} images, {self.kd.unlabeled_ratio} unlabeled batches per "
                    f"labelled batch")
        return InterleavedLoader(loader, unl, self.kd.unlabeled_ratio)

    def get_validator(self):
        """Ultralytics' DetectionValidator, given the args without the KD keys (it checks every key)."""
        from ultralytics.models import yolo
        from ultralytics.utils import IterableSimpleNamespace
        args = IterableSimpleNamespace(**{k: v for k, v in vars(self.args).items() if k not in KD_DEFAULTS})
        return yolo.detect.DetectionValidator(self.test_loader, save_dir=self.save_dir, args=args,
                                              _callbacks=self.callbacks)

    def _close_dataloader_mosaic(self):
        super()._close_dataloader_mosaic()
        unl = getattr(self.train_loader, "unlabeled", None)
        if unl is not None and hasattr(unl.dataset, "close_mosaic"):
            unl.dataset.mosaic = False
            unl.dataset.close_mosaic(hyp=copy(self.args))
