"""Step-time benchmark: one student training step with the KD losses through kdkernels vs the same
losses in eager PyTorch (kdkernels.reference), and the KD share of the step.

KD share = (step with KD losses − step without them) / step with KD losses, where both steps run
the student forward/backward, the teacher forward and the detection loss; medians of interleaved
repeats so machine noise hits every variant alike. The step difference includes the extra backward
the KD terms cause through the student (the 1×1 adapter, and on unlabeled batches the box head,
which no other loss trains there); "KD loss ops alone" times just the KD losses' forward + backward
from the student's outputs, i.e. what the loss implementation (kdkernels or eager) costs.
"KD via kdkernels" runs the fastest backend that kdkernels.available_backends(device) lists for the
device (recorded as `kdkernels_backend` in the report).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

import kdkernels

from .checkpoint import CheckpointError, load_verified
from .distill import FeatureAdapter, distill_losses
from .models import build_detector, forward_detector
from .peers import build_peer_modules
from .trainer import autocast_for, labeled_dataset, resolve_device, set_threads, unlabeled_dataset


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def kdkernels_backend(device) -> str:
    """The backend the "KD via kdkernels" variant times: the fastest one kdkernels.available_backends
    lists for `device` ("reference", i.e. the eager path, only when no fused backend runs there)."""
    return kdkernels.available_backends(device)[0]


class _Bench:
    """The models, the optimizer and one fixed labeled (and unlabeled) batch that every variant times."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        data = labeled_dataset(cfg)
        k, mk = data.num_classes, dict(arch=cfg.model.arch, anchor_sizes=tuple(cfg.model.anchor_sizes),
                                       head_norm=cfg.model.head_norm)
        self.student = build_detector(cfg.model.student, k, cfg.data.image_size, **mk).to(self.device).train()
        self.teacher = build_detector(cfg.model.teacher, k, cfg.data.image_size, **mk).to(self.device).eval()
        self.tpath = Path(cfg.distill.teacher_checkpoint or Path(cfg.out_dir) / "teacher" / "model.pt")
        self.trained_teacher = self._load_teacher()
        self.adapter = FeatureAdapter(self.student.backbone.out_channels,
                                      self.teacher.backbone.out_channels).to(self.device)
        self.peer = build_peer_modules(cfg.distill, self.teacher.backbone.out_channels, len(cfg.model.anchor_sizes))
        extra = [] if self.peer is None else list(self.peer.to(self.device).parameters())
        self.opt = torch.optim.SGD(list(self.student.parameters()) + list(self.adapter.parameters()) + extra, lr=1e-4)
        batch = [data[i % len(data)] for i in range(cfg.train.batch_size)]
        self.images = [b[0].to(self.device) for b in batch]
        self.targets = [{kk: (v.to(self.device) if torch.is_tensor(v) else v) for kk, v in b[1].items()}
                        for b in batch]
        unl = unlabeled_dataset(cfg)
        self.u_images = ([unl[i % len(unl)][0].to(self.device) for i in range(cfg.train.unlabeled_batch_size)]
                         if unl else None)

    def _load_teacher(self) -> bool:
        """A trained teacher's confidence gives realistic KD regions (timing barely depends on it)."""
        if not self.tpath.is_file():
            return False
        try:
            self.teacher.load_state_dict(load_verified(self.tpath, kind="model", what="teacher model file")["model"])
            return True
        except (RuntimeError, KeyError, CheckpointError) as exc:
            print(f"[step-bench] {self.tpath} does not fit this config's teacher, timing an untrained one "
                  f"({exc})"[:300])
            return False

    def batch(self, labeled: bool):
        return (self.images, self.targets) if labeled else (self.u_images, None)

    def step(self, kd: str | None, labeled: bool) -> float:
        """Seconds of one training step (student forward/backward, teacher forward, detection loss, the
        KD losses through backend `kd` unless None)."""
        imgs, tg = self.batch(labeled)
        _sync(self.device)
        t0 = time.perf_counter()
        with autocast_for(self.cfg, self.device):
            s = forward_detector(self.student, imgs, tg)
            with torch.no_grad():
                t = forward_detector(self.teacher, imgs)
            loss = sum(s.losses.values()) if labeled else 0.0 * s.cls_logits.sum()
            if kd is not None:
                with kdkernels.use_backend(kd):
                    loss = loss + sum(distill_losses(s, t, self.adapter, self.cfg.distill, labeled=labeled,
                                                     targets=tg, peer_modules=self.peer).values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        _sync(self.device)
        return time.perf_counter() - t0

    def kd_ops(self, kd: str, labeled: bool) -> float:
        """The KD losses alone (forward + backward from the student's head/FPN outputs as leaves):
        what the loss implementation costs, without the extra backward they cause through the model."""
        imgs, tg = self.batch(labeled)
        with torch.no_grad(), autocast_for(self.cfg, self.device):
            s = forward_detector(self.student, imgs, tg)
            t = forward_detector(self.teacher, imgs)
        s.features = [f.detach().requires_grad_() for f in s.features]
        s.cls_logits = s.cls_logits.detach().requires_grad_()
        s.bbox_regression = s.bbox_regression.detach().requires_grad_()
        _sync(self.device)
        t0 = time.perf_counter()
        with autocast_for(self.cfg, self.device), kdkernels.use_backend(kd):
            loss = sum(distill_losses(s, t, self.adapter, self.cfg.distill, labeled=labeled, targets=tg,
                                      peer_modules=self.peer).values())
        loss.backward()
        _sync(self.device)
        return time.perf_counter() - t0


def _time_batch(bench: _Bench, variants: dict, labeled: bool, repeats: int) -> dict:
    """Median step and KD-op times of every variant on one batch kind, interleaved so that machine
    noise hits every variant alike; {variant: row}."""
    times = {name: [] for name in variants}
    for _ in range(2):  # warm-up
        for kd in variants.values():
            bench.step(kd, labeled)
    for _ in range(repeats):
        for name, kd in variants.items():
            times[name].append(bench.step(kd, labeled))
    ops = {name: [] for name, kd in variants.items() if kd is not None}
    for _ in range(repeats):
        for name in ops:
            ops[name].append(bench.kd_ops(variants[name], labeled))
    return _rows({name: statistics.median(v) for name, v in times.items()},
                 {name: statistics.median(v) for name, v in ops.items()}, variants)


def _rows(med: dict, ops: dict, variants: dict) -> dict:
    base = med["no KD losses"]
    rows = {}
    for name, m in med.items():
        row = {"median_ms": round(1000 * m, 2),
               "kd_share_pct": None if variants[name] is None else round(100 * max(m - base, 0.0) / m, 2)}
        if name in ops:
            row["kd_ops_ms"] = round(1000 * ops[name], 3)
            row["kd_ops_share_pct"] = round(100 * ops[name] / m, 2)
        rows[name] = row
    return rows


def _table(batches: dict) -> str:
    lines = ["| batch | variant | step median (ms) | KD share of step | KD loss ops alone (ms) | their share |",
             "|---|---|---:|---:|---:|---:|"]
    for kind, rows in batches.items():
        for name, r in rows.items():
            share = "—" if r["kd_share_pct"] is None else f"{r['kd_share_pct']:.1f} %"
            ops = (("—", "—") if "kd_ops_ms" not in r
                   else (f"{r['kd_ops_ms']:.2f}", f"{r['kd_ops_share_pct']:.1f} %"))
            lines.append(f"| {kind} | {name} | {r['median_ms']:.1f} | {share} | {ops[0]} | {ops[1]} |")
    return "\n".join(lines)


def run_step_bench(cfg, *, repeats: int = 10, out=None) -> dict:
    """Time the three variants (no KD losses, KD via kdkernels, KD via eager PyTorch) on a labeled
    and an unlabeled batch; print the table and write the report (JSON) to `out`
    (default <out_dir>/step_bench.json)."""
    set_threads(cfg)
    bench = _Bench(cfg)
    backend = kdkernels_backend(bench.device)
    variants = {"no KD losses": None, "KD via kdkernels": backend, "KD via eager PyTorch": "reference"}
    report = {"device": str(bench.device), "threads": torch.get_num_threads(), "batch_size": cfg.train.batch_size,
              "image_size": cfg.data.image_size, "student": cfg.model.student, "teacher": cfg.model.teacher,
              "trained_teacher": str(bench.tpath) if bench.trained_teacher else None,
              "kdkernels_backend": backend, "repeats": repeats, "batches": {}}
    for labeled in ([True, False] if bench.u_images else [True]):
        report["batches"]["labeled" if labeled else "unlabeled"] = _time_batch(bench, variants, labeled, repeats)
    report["table"] = _table(report["batches"])
    print(report["table"])
    path = Path(out) if out else Path(cfg.out_dir) / "step_bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report
