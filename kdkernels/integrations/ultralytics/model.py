"""KDDistillationModel: Ultralytics' DistillationModel with the kdkernels KD terms.

It keeps everything of the parent (forward hooks on the Detect head's inputs and on the head, the
1×1-conv projector, the frozen teacher that the EMA and the final checkpoints leave out, fuse) and
replaces the loss:

    labelled batch:   L = N · (L_det(GT) + kd_feat + kd_cls + kd_ld | kd_box)
    unlabeled batch:  L = N · (            kd_feat + kd_unl + kd_ld | kd_box)

N = batch size (Ultralytics' convention: the loss items are per image, the backward loss is ×N).
The terms are those of :mod:`.losses`; with ``compile=True`` they run as one
``torch.compile(fullgraph=True)`` function.
"""
from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.nn.modules.head import Detect
from ultralytics.nn.tasks import DetectionModel, load_checkpoint

from .config import KDConfig
from .losses import kd_terms

__all__ = ["KDDistillationModel", "detect_head", "check_teacher"]

COMPILE_BACKEND = "inductor"  # torch.compile backend of the KD terms (Ultralytics compiles the model with inductor)


def detect_head(model) -> Detect:
    """The Detect head of an Ultralytics model (its last Detect module)."""
    heads = [m for m in model.model if isinstance(m, Detect)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no Detect head")
    return heads[-1]


def check_teacher(teacher, student, kd: KDConfig, where: str = "distill_model") -> None:
    """Errors (naming ``distill_model``) for a teacher whose head cannot be paired with the student's.

    Feature levels: same count and strides (the terms pair the levels one by one). Classes: same
    count when a class term is on. reg_max: the same when the localisation term is on.
    """
    try:
        t = detect_head(teacher)
    except ValueError as e:
        raise ValueError(f"{where}: the teacher {e}") from None
    s = detect_head(student)
    t_str, s_str = [int(x) for x in t.stride.tolist()], [int(x) for x in s.stride.tolist()]
    if t.nl != s.nl or t_str != s_str:
        raise ValueError(f"{where}: the teacher's Detect head has {t.nl} feature levels at strides {t_str}, the "
                         f"student's has {s.nl} at strides {s_str}; distillation pairs the levels one by one, so "
                         "both must use the same levels (e.g. both P3-P5)")
    if t.nc != s.nc and (kd.kd_cls > 0 or kd.kd_unl > 0):
        raise ValueError(f"{where}: the teacher predicts {t.nc} classes, the student {s.nc}; the class-score "
                         "terms need the same classes (or set kd_cls=0 kd_unl=0)")
    if t.reg_max != s.reg_max and kd.kd_ld > 0:
        raise ValueError(f"{where}: the teacher's head has reg_max={t.reg_max}, the student's reg_max={s.reg_max}; "
                         "localisation distillation compares the box outputs bin by bin, so they must be equal "
                         "(or set kd_ld=0)")


def _load_teacher(teacher):
    """The teacher DetectionModel of ``distill_model`` (a checkpoint path or a module); errors name the key."""
    where = teacher
    if isinstance(teacher, (str, Path)):
        if not Path(teacher).is_file():
            raise FileNotFoundError(f"distill_model={teacher}: no such teacher checkpoint (a .pt file)")
        try:
            teacher = load_checkpoint(teacher)[0]
        except Exception as e:  # unpickling or Ultralytics' format checks: any failure means an unusable file
            raise ValueError(f"distill_model={where}: cannot load it as an Ultralytics checkpoint "
                             f"({type(e).__name__}: {e})") from e
    if not isinstance(teacher, DetectionModel):
        raise ValueError(f"distill_model={where if isinstance(where, (str, Path)) else type(where).__name__}: holds a "
                         f"{type(teacher).__name__}, not an Ultralytics detection model (a YOLO .pt checkpoint)")
    return teacher


def _branches(head_out) -> list:
    """A Detect output (train dict, or eval (y, dict)) → [(scores (N,K,A), boxes (N,4R,A))] per branch."""
    d = head_out[1] if isinstance(head_out, tuple) else head_out
    if "one2many" in d:
        return [(d[b]["scores"], d[b]["boxes"]) for b in ("one2many", "one2one") if d.get(b)]
    return [(d["scores"], d["boxes"])]


class KDDistillationModel(DistillationModel):
    """Teacher-student pair whose loss adds the kdkernels KD terms (see the module docstring).

    Args:
        teacher_model: teacher checkpoint path (``distill_model``) or module.
        student_model: the student DetectionModel (its ``args`` set: ``imgsz``, ``dis``, ...).
        kd: the validated KD settings.
    """

    def __init__(self, teacher_model, student_model, kd: KDConfig):
        teacher = _load_teacher(teacher_model)
        check_teacher(teacher, student_model, kd)
        super().__init__(teacher_model=teacher, student_model=student_model)
        self.kd = kd
        self.reg_max = detect_head(student_model).reg_max
        self._kd_fn = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_kd_fn"] = None  # a compiled function is rebuilt, not pickled
        return state

    def _terms_fn(self):
        if self._kd_fn is None:
            fn = kd_terms
            compile_mode = getattr(self.student_model.args, "compile", False)
            if compile_mode:
                fn = torch.compile(kd_terms, fullgraph=True, backend=COMPILE_BACKEND, dynamic=False)
            self._kd_fn = fn
        return self._kd_fn

    def item_names(self) -> list:
        """The KD loss item names of this configuration (in the order they are reported)."""
        kd, names = self.kd, []
        names += ["kd_feat"] if kd.kd_feat > 0 else []
        names += ["kd_cls"] if kd.kd_cls > 0 else []
        names += ["kd_unl"] if kd.kd_unl > 0 and kd.unlabeled else []
        names += (["kd_ld"] if self.reg_max > 1 else ["kd_box"]) if kd.kd_ld > 0 else []
        return names

    def _det_loss_names(self) -> tuple:
        crit = getattr(self.student_model, "criterion", None)
        if crit is None:
            crit = self.student_model.criterion = self.student_model.init_criterion()
        return tuple(getattr(crit, "loss_names", None) or crit.one2one.loss_names)

    def _items(self, det_items: dict, kd: dict, device) -> dict:
        zero = torch.zeros((), device=device)
        items = {k: v for k, v in det_items.items()}
        items.update({k: kd[k].detach().float() if k in kd else zero for k in self.item_names()})
        return items

    def loss(self, batch, preds=None):
        """(loss vector to be summed, loss items) for a batch; ``batch["unlabeled"]`` marks unlabeled ones."""
        img = batch["img"]
        if not self.training:  # validation during training: detection loss, KD items at 0
            if preds is None:
                preds = self.student_model(img)
            det, det_items = self.student_model.loss(batch, preds)
            return torch.cat([det, torch.zeros(1, device=img.device)]), self._items(det_items, {}, img.device)
        labeled = not batch.get("unlabeled", False)
        self._teacher_feats.clear()
        if preds is None:
            self._student_feats.clear()
            preds = self.student_model(img)
        with torch.no_grad():
            self.teacher_model(img)
        kd = self.kd_losses(labeled)
        if labeled:
            det, det_items = self.student_model.loss(batch, preds)
        else:  # no ground truth is read: the detection loss is not computed at all
            det_items = {k: torch.zeros((), device=img.device) for k in self._det_loss_names()}
            det = torch.zeros(len(det_items), device=img.device)
        kd_sum = torch.stack(list(kd.values())).sum() if kd else torch.zeros((), device=img.device)
        return torch.cat([det, (kd_sum * img.shape[0]).reshape(1)]), self._items(det_items, kd, img.device)

    def kd_losses(self, labeled: bool) -> dict:
        """The weighted KD terms from the features the hooks captured in the last teacher and student forward."""
        n = len(self.feats_idx) - 1
        s_feats = [self.projector[i](self.decouple_outputs(self._student_feats[i])) for i in range(n)]
        t_feats = [self.decouple_outputs(self._teacher_feats[i]) for i in range(n)]
        s_br, t_br = _branches(self._student_feats[n]), _branches(self._teacher_feats[n])
        t_conf = torch.stack([s for s, _ in t_br]).mean(0) if len(t_br) > 1 else t_br[0][0]
        if len(t_br) < len(s_br):  # a one-branch teacher for a two-branch student: the same targets
            t_br = t_br * len(s_br)
        return self._terms_fn()(self.kd, labeled, self.reg_max, s_feats, t_feats, s_br, t_br[:len(s_br)], t_conf)
