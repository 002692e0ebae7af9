"""The KD part of a YOLO training step: Ultralytics' eager loss vs kdkernels, forward + backward.

    python -m benchmarks.efficacy_yolo_speed                   # CPU, 64 and 320 px, batch 16, one thread
    python -m benchmarks.efficacy_yolo_speed --device cuda --imgsz 640 --batch 32 --threads 0

One process, interleaved repeats, medians. Student yolo11n, teacher yolo11s (random weights: the
time does not depend on them). Rows:

- KD part alone, from the captured neck features and head outputs (leaf tensors), fwd + bwd:
  ``ultralytics_feat`` (DistillationModel's projector + teacher scores + loss_sl2 per level, eager),
  ``kdk_feat`` (the same term through kdkernels.confidence_masked_mse), ``kdk_full`` (features + class
  KL + LD, kdkernels ops), ``eager_full`` (the same three terms in plain PyTorch: the reference backend);
  the ``*_loss`` rows: the same without the projector (projected features as leaves), the loss ops alone;
- whole step (teacher forward, student forward, detection loss, KD, backward, SGD step):
  ``step_no_kd``, ``step_ultralytics_kd``, ``step_kdk_full``; the KD share of a step is
  KD part / whole step with that KD.
Writes benchmarks/EFFICACY_YOLO_SPEED.json and .png and prints the markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent


def _models(imgsz: int, device):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    out = []
    for yaml, seed in (("yolo11s.yaml", 1), ("yolo11n.yaml", 2)):
        torch.manual_seed(seed)
        m = DetectionModel(yaml, nc=4, verbose=False).to(device)
        m.args = get_cfg(overrides={"imgsz": imgsz})
        out.append(m)
    return out


def _batch(n: int, imgsz: int, device):
    g = torch.Generator().manual_seed(0)
    k = 3 * n
    return {"img": torch.rand(n, 3, imgsz, imgsz, generator=g).to(device),
            "cls": torch.randint(0, 4, (k, 1), generator=g).float().to(device),
            "bboxes": (torch.rand(k, 4, generator=g) * 0.4 + 0.3).to(device),
            "batch_idx": torch.arange(n).repeat_interleave(3).float().to(device)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fns: dict, device, repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each function, calls interleaved."""
    times = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _kd_part_fns(kd_model, ul_model, batch):
    """The KD part's fwd+bwd from captured leaf tensors, for each variant."""
    import kdkernels
    from kdkernels.integrations.ultralytics.config import KDConfig
    from kdkernels.integrations.ultralytics.losses import kd_terms
    from kdkernels.integrations.ultralytics.model import _branches
    kd_model.train()
    kd_model._student_feats.clear(), kd_model._teacher_feats.clear()
    kd_model.student_model(batch["img"])
    with torch.no_grad():
        kd_model.teacher_model(batch["img"])
    n = len(kd_model.feats_idx) - 1
    s_raw = [kd_model._student_feats[i].detach().requires_grad_() for i in range(n)]
    t_feats = [kd_model._teacher_feats[i].detach() for i in range(n)]
    s_br = [(s.detach().requires_grad_(), b.detach().requires_grad_()) for s, b in _branches(kd_model._student_feats[n])]
    t_br = [(s.detach(), b.detach()) for s, b in _branches(kd_model._teacher_feats[n])]
    proj = kd_model.projector

    def ultralytics_feat():
        scores = t_br[0][0]
        parts = torch.split(scores, [f.shape[-2] * f.shape[-1] for f in t_feats], dim=-1)
        ts = tuple(p.sigmoid().max(dim=1, keepdim=True).values for p in parts)
        loss = sum(ul_model.loss_sl2(None, proj[i](s_raw[i]), t_feats[i], i, ts) * 6.0 for i in range(n))
        loss.backward()

    with torch.no_grad():  # projected student features as leaves: the loss ops alone
        s_proj = [proj[i](s_raw[i]).detach().requires_grad_() for i in range(n)]

    def ultralytics_feat_loss():
        scores = t_br[0][0]
        parts = torch.split(scores, [f.shape[-2] * f.shape[-1] for f in t_feats], dim=-1)
        ts = tuple(p.sigmoid().max(dim=1, keepdim=True).values for p in parts)
        sum(ul_model.loss_sl2(None, s_proj[i], t_feats[i], i, ts) * 6.0 for i in range(n)).backward()

    def ours(cfg, backend=None, project=True):
        def fn():
            ctx = kdkernels.use_backend(backend) if backend else _Null()
            with ctx:
                feats = [proj[i](s_raw[i]) for i in range(n)] if project else s_proj
                out = kd_terms(cfg, True, kd_model.reg_max, feats, t_feats, s_br, t_br, t_br[0][0])
                sum(out.values()).backward()
        return fn
    full, feat = KDConfig(), KDConfig(kd_cls=0.0, kd_ld=0.0)
    return {"ultralytics_feat": ultralytics_feat, "kdk_feat": ours(feat), "kdk_full": ours(full),
            "eager_full": ours(full, "reference"), "ultralytics_feat_loss": ultralytics_feat_loss,
            "kdk_feat_loss": ours(feat, project=False), "kdk_full_loss": ours(full, project=False),
            "eager_full_loss": ours(full, "reference", project=False)}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _step_fns(teacher, student, batch):
    import copy
    from ultralytics.nn.distill_model import DistillationModel
    from kdkernels.integrations.ultralytics.config import KDConfig
    from kdkernels.integrations.ultralytics.model import KDDistillationModel
    models = {"step_no_kd": copy.deepcopy(student),
              "step_ultralytics_kd": DistillationModel(copy.deepcopy(teacher), copy.deepcopy(student)),
              "step_kdk_full": KDDistillationModel(copy.deepcopy(teacher), copy.deepcopy(student), KDConfig())}
    fns = {}
    for name, m in models.items():
        m.train()
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4)

        def step(m=m, opt=opt):
            loss, _ = m.loss(dict(batch))
            loss.sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        fns[name] = step
    return fns, models


def measure(imgsz: int, batch_size: int, device, repeats: int) -> dict:
    from ultralytics.nn.distill_model import DistillationModel
    teacher, student = _models(imgsz, device)
    batch = _batch(batch_size, imgsz, device)
    step_fns, models = _step_fns(teacher, student, batch)
    part = _timeit(_kd_part_fns(models["step_kdk_full"], DistillationModel, batch), device, repeats)
    step = _timeit(step_fns, device, max(repeats // 2, 3))
    share = {"ultralytics": part["ultralytics_feat"] / step["step_ultralytics_kd"],
             "kdk_full": part["kdk_full"] / step["step_kdk_full"]}
    return {"imgsz": imgsz, "batch": batch_size, "ms": {k: 1e3 * v for k, v in {**part, **step}.items()},
            "kd_share_of_step": share}


def markdown(results: list, meta: dict) -> str:
    lines = ["| imgsz | batch | KD part (fwd+bwd) | ms | × vs Ultralytics eager | whole step (ms) | KD share of step |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for r in results:
        ms = r["ms"]
        rows = [("Ultralytics `loss_sl2` features (eager)", "ultralytics_feat", "step_ultralytics_kd",
                 r["kd_share_of_step"]["ultralytics"]),
                ("kdkernels features (same term)", "kdk_feat", None, None),
                ("kdkernels features + class KL + LD", "kdk_full", "step_kdk_full", r["kd_share_of_step"]["kdk_full"]),
                ("the same three terms, eager PyTorch", "eager_full", None, None)]
        for label, k, step, share in rows:
            lines.append(f"| {r['imgsz']} | {r['batch']} | {label} | {ms[k]:.2f} | "
                         f"{ms['ultralytics_feat'] / ms[k]:.2f} | {'' if step is None else f'{ms[step]:.0f}'} | "
                         f"{'' if share is None else f'{100 * share:.1f} %'} |")
        for label, k in (("loss ops alone: Ultralytics `loss_sl2` features", "ultralytics_feat_loss"),
                         ("loss ops alone: kdkernels features", "kdk_feat_loss"),
                         ("loss ops alone: kdkernels features + class KL + LD", "kdk_full_loss"),
                         ("loss ops alone: the same three terms, eager", "eager_full_loss")):
            lines.append(f"| {r['imgsz']} | {r['batch']} | {label} | {ms[k]:.2f} | "
                         f"{ms['ultralytics_feat_loss'] / ms[k]:.2f} | | |")
        lines.append(f"| {r['imgsz']} | {r['batch']} | (whole step without KD) | | | {ms['step_no_kd']:.0f} | |")
    return "\n".join(lines) + f"\n\n{meta['date']}, {meta['device']}, {meta['threads']} thread(s); `{meta['command']}`.\n"


def plot(results: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["ultralytics_feat", "kdk_feat", "kdk_full", "eager_full", "ultralytics_feat_loss", "kdk_feat_loss",
            "kdk_full_loss", "eager_full_loss"]
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        ax.bar(keys, [r["ms"][k] for k in keys], color=["tab:gray", "tab:blue", "tab:green", "tab:orange"] * 2)
        ax.set_title(f"KD part fwd+bwd, {r['imgsz']} px, batch {r['batch']}")
        ax.set_ylabel("ms (median)")
        ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--imgsz", type=int, nargs="*", default=[64, 320])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = all cores)")
    p.add_argument("--out", default=str(HERE / "EFFICACY_YOLO_SPEED"))
    a = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    from tqdm import tqdm
    results = [measure(s, a.batch, device, a.repeats) for s in tqdm(a.imgsz, desc="speed", unit="size")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    meta = {"date": time.strftime("%Y-%m-%d"), "device": f"{device.type}: {name}", "threads": torch.get_num_threads(),
            "command": " ".join(["python -m benchmarks.efficacy_yolo_speed"] + (argv if argv is not None else sys.argv[1:]))}
    Path(a.out).with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, Path(a.out).with_suffix(".png"))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
