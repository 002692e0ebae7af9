"""Step-time benchmark: one student training step with the KD losses through kdkernels vs the same
losses in eager PyTorch (kdkernels.reference), and the KD share of the step.

KD share = (step with KD losses − step without them) / step with KD losses, where both steps run
the student forward/backward, the teacher forward and the detection loss; medians of interleaved
repeats so machine noise hits every variant alike. The step difference includes the extra backward
the KD terms cause through the student (the 1×1 adapter, and on unlabeled batches the box head,
which no other loss trains there); "KD loss ops alone" times just the KD losses' forward + backward
from the student's outputs, i.e. what the loss implementation (kdkernels or eager) costs.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

import kdkernels

from .distill import FeatureAdapter, distill_losses
from .models import build_detector, forward_detector
from .trainer import autocast_for, labeled_dataset, resolve_device, set_threads, unlabeled_dataset


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_step_bench(cfg, *, repeats: int = 10, out=None) -> dict:
    set_threads(cfg)
    device = resolve_device(cfg.train.device)
    data = labeled_dataset(cfg)
    k = data.num_classes
    mk = dict(arch=cfg.model.arch, anchor_sizes=tuple(cfg.model.anchor_sizes), head_norm=cfg.model.head_norm)
    student = build_detector(cfg.model.student, k, cfg.data.image_size, **mk).to(device).train()
    teacher = build_detector(cfg.model.teacher, k, cfg.data.image_size, **mk).to(device).eval()
    tpath = Path(cfg.distill.teacher_checkpoint or Path(cfg.out_dir) / "teacher" / "model.pt")
    trained_teacher = False
    if tpath.is_file():  # a trained teacher's confidence gives realistic KD regions (timing barely depends on it)
        try:
            teacher.load_state_dict(torch.load(tpath, map_location="cpu", weights_only=False)["model"])
            trained_teacher = True
        except (RuntimeError, KeyError) as exc:
            print(f"[step-bench] {tpath} does not fit this config's teacher, timing an untrained one ({exc})"[:300])
    adapter = FeatureAdapter(student.backbone.out_channels, teacher.backbone.out_channels).to(device)
    opt = torch.optim.SGD(list(student.parameters()) + list(adapter.parameters()), lr=1e-4)
    batch = [data[i % len(data)] for i in range(cfg.train.batch_size)]
    images = [b[0].to(device) for b in batch]
    targets = [{kk: (v.to(device) if torch.is_tensor(v) else v) for kk, v in b[1].items()} for b in batch]
    unl = unlabeled_dataset(cfg)
    u_images = [unl[i % len(unl)][0].to(device) for i in range(cfg.train.unlabeled_batch_size)] if unl else None

    def step(kd: str | None, labeled: bool):
        imgs = images if labeled else u_images
        tg = targets if labeled else None
        _sync(device)
        t0 = time.perf_counter()
        with autocast_for(cfg, device):
            s = forward_detector(student, imgs, tg)
            with torch.no_grad():
                t = forward_detector(teacher, imgs)
            loss = sum(s.losses.values()) if labeled else 0.0 * s.cls_logits.sum()
            if kd is not None:
                with kdkernels.use_backend(kd):
                    loss = loss + sum(distill_losses(s, t, adapter, cfg.distill, labeled=labeled, targets=tg).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - t0

    def kd_ops(kd: str, labeled: bool):
        """The KD losses alone (forward + backward from the student's head/FPN outputs as leaves):
        what the loss implementation costs, without the extra backward they cause through the model."""
        imgs = images if labeled else u_images
        tg = targets if labeled else None
        with torch.no_grad(), autocast_for(cfg, device):
            s = forward_detector(student, imgs, tg)
            t = forward_detector(teacher, imgs)
        s.features = [f.detach().requires_grad_() for f in s.features]
        s.cls_logits = s.cls_logits.detach().requires_grad_()
        s.bbox_regression = s.bbox_regression.detach().requires_grad_()
        _sync(device)
        t0 = time.perf_counter()
        with autocast_for(cfg, device), kdkernels.use_backend(kd):
            loss = sum(distill_losses(s, t, adapter, cfg.distill, labeled=labeled, targets=tg).values())
        loss.backward()
        _sync(device)
        return time.perf_counter() - t0

    backend = "cuda" if device.type == "cuda" and kdkernels.build_info()["native"] and "cuda" in kdkernels.build_info()["compiled_backends"] else "auto"
    variants = {"no KD losses": None, "KD via kdkernels": backend, "KD via eager PyTorch": "reference"}
    report = {"device": str(device), "threads": torch.get_num_threads(), "batch_size": cfg.train.batch_size,
              "image_size": cfg.data.image_size, "student": cfg.model.student, "teacher": cfg.model.teacher,
              "trained_teacher": str(tpath) if trained_teacher else None, "repeats": repeats, "batches": {}}
    for labeled in ([True, False] if u_images else [True]):
        times = {name: [] for name in variants}
        for _ in range(2):  # warm-up
            for kd in variants.values():
                step(kd, labeled)
        for _ in range(repeats):
            for name, kd in variants.items():
                times[name].append(step(kd, labeled))
        ops = {name: [] for name, kd in variants.items() if kd is not None}
        for _ in range(repeats):
            for name in ops:
                ops[name].append(kd_ops(variants[name], labeled))
        med = {name: statistics.median(v) for name, v in times.items()}
        base = med["no KD losses"]
        rows = {}
        for name, m in med.items():
            row = {"median_ms": round(1000 * m, 2),
                   "kd_share_pct": None if variants[name] is None else round(100 * max(m - base, 0.0) / m, 2)}
            if name in ops:
                op = statistics.median(ops[name])
                row["kd_ops_ms"] = round(1000 * op, 3)
                row["kd_ops_share_pct"] = round(100 * op / m, 2)
            rows[name] = row
        report["batches"]["labeled" if labeled else "unlabeled"] = rows
    lines = ["| batch | variant | step median (ms) | KD share of step | KD loss ops alone (ms) | their share |",
             "|---|---|---:|---:|---:|---:|"]
    for kind, rows in report["batches"].items():
        for name, r in rows.items():
            share = "—" if r["kd_share_pct"] is None else f"{r['kd_share_pct']:.1f} %"
            ops = ("—", "—") if "kd_ops_ms" not in r else (f"{r['kd_ops_ms']:.2f}", f"{r['kd_ops_share_pct']:.1f} %")
            lines.append(f"| {kind} | {name} | {r['median_ms']:.1f} | {share} | {ops[0]} | {ops[1]} |")
    table = "\n".join(lines)
    report["table"] = table
    print(table)
    path = Path(out) if out else Path(cfg.out_dir) / "step_bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report
