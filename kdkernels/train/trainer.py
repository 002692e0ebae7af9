"""Training loops: teacher, baseline student (GT only) and distilled student (labeled + unlabeled).

Iteration-based, deterministic data order (a permutation per epoch from the seed), atomic
checkpoints (temp file + rename) every `train.ckpt_every` steps, and `resume=True` continues from
the last checkpoint. Multi-process through torchrun + DDP (gloo on CPU, nccl on CUDA): each rank
takes its shard of every batch's permutation; rank 0 writes checkpoints, metrics and plots.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .config import Config
from .data import CocoDetection, ImageFolder
from .distill import FeatureAdapter, distill_losses
from .models import build_detector, forward_detector

MODES = ("teacher", "baseline", "distill")


# ----------------------------------------------------------------------------- helpers
def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def set_threads(cfg: Config) -> None:
    """train.num_threads > 0: use that many CPU threads (torchrun sets OMP_NUM_THREADS=1 per process)."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)


def autocast_for(cfg: Config, device: torch.device):
    use = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else nullcontext()


class Dist:
    """torchrun environment (world size 1 when not launched by torchrun)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item() / self.world


class BatchStream:
    """Deterministic batches: epoch e uses permutation(seed, e); batch b of it is taken by all
    ranks, each keeping its shard. `batch(i)` is a pure function of i, so resume is exact."""

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world: int, cache: bool):
        if len(dataset) == 0:
            raise ValueError("cannot train on an empty dataset")
        self.dataset, self.seed, self.rank, self.world = dataset, seed, rank, world
        self.global_batch = batch_size * world
        self.per_epoch = max(1, len(dataset) // self.global_batch)
        self.cache = {} if cache else None

    def _item(self, idx: int):
        if self.cache is None:
            return self.dataset[idx]
        if idx not in self.cache:
            self.cache[idx] = self.dataset[idx]
        return self.cache[idx]

    def batch(self, i: int):
        epoch, pos = divmod(i, self.per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        if len(perm) < self.global_batch:  # tiny sets: repeat
            perm = perm.repeat(math.ceil(self.global_batch / len(perm)))
        idx = perm[pos * self.global_batch:(pos + 1) * self.global_batch][self.rank::self.world]
        return [self._item(int(j)) for j in idx]


def hflip(images, targets, generator):
    """Random horizontal flip, decided per image by `generator` (deterministic per step)."""
    out_i, out_t = [], []
    for img, tgt in zip(images, targets):
        if torch.rand((), generator=generator).item() < 0.5:
            img = img.flip(-1)
            if tgt is not None and "boxes" in tgt and tgt["boxes"].numel():
                w = img.shape[-1]
                b = tgt["boxes"].clone()
                b[:, [0, 2]] = w - tgt["boxes"][:, [2, 0]]
                tgt = dict(tgt, boxes=b)
        out_i.append(img)
        out_t.append(tgt)
    return out_i, out_t


def lr_at(cfg: Config, it: int) -> float:
    tc = cfg.train
    if it < tc.warmup_iters:
        return tc.lr * (0.001 + 0.999 * it / tc.warmup_iters)
    progress = (it - tc.warmup_iters) / max(1, tc.iterations - tc.warmup_iters)
    return tc.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(cfg: Config, params):
    params = [p for p in params if p.requires_grad]
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                               weight_decay=cfg.train.weight_decay, foreach=True)
    # foreach: one fused update per step instead of a Python loop over the tensors (CPU default is the loop)
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=True)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def data_path(cfg: Config, rel: str | None) -> Path | None:
    if rel is None:
        return None
    p = Path(rel)
    return p if p.is_absolute() else Path(cfg.data.root) / p


def labeled_dataset(cfg: Config) -> CocoDetection:
    return CocoDetection(data_path(cfg, cfg.data.train_images), data_path(cfg, cfg.data.train_ann))


def val_dataset(cfg: Config) -> CocoDetection:
    return CocoDetection(data_path(cfg, cfg.data.val_images), data_path(cfg, cfg.data.val_ann))


def unlabeled_dataset(cfg: Config):
    """Unlabeled images: the unlabeled folder, plus the label-scarce list of train images if set."""
    parts = []
    if cfg.data.unlabeled_images:
        parts.append(ImageFolder(data_path(cfg, cfg.data.unlabeled_images)))
    if cfg.data.unlabeled_list:
        names = json.loads(data_path(cfg, cfg.data.unlabeled_list).read_text())
        if names:
            parts.append(ImageFolder(data_path(cfg, cfg.data.train_images), file_list=names))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)


def model_dir(cfg: Config, mode: str) -> Path:
    return Path(cfg.out_dir) / mode


def load_model_file(path: Path, cfg: Config, preset: str, num_classes: int, device) -> nn.Module:
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file {path} does not exist: train it first "
                                f"(kdkernels-train teacher/baseline/distill)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_detector(state.get("preset", preset), state.get("num_classes", num_classes),
                           cfg.data.image_size, arch=cfg.model.arch,
                           anchor_sizes=tuple(cfg.model.anchor_sizes), head_norm=cfg.model.head_norm,
                           score_thresh=cfg.eval.score_thresh,
                           detections_per_img=cfg.eval.detections_per_img)
    model.load_state_dict(state["model"])
    return model.to(device)


class StudentWithAdapter(nn.Module):
    """One module for DDP: forward returns the detector outputs (and adapted features on demand)."""

    def __init__(self, detector: nn.Module, adapter: FeatureAdapter | None):
        super().__init__()
        self.detector = detector
        self.adapter = adapter if adapter is not None else FeatureAdapter(1, 1)

    def forward(self, images, targets=None, adapt: bool = False):
        out = forward_detector(self.detector, images, targets)
        if adapt:  # inside forward, so DDP sees the adapter's parameters in the graph
            out.adapted = self.adapter(out.features)
        return out


# ----------------------------------------------------------------------------- training
_STEP_HOOK = None  # tests: called as hook(mode, iteration) before every step (e.g. to simulate a crash)

# settings that may change between a checkpoint and --resume
RESUME_FREE = {"train.iterations", "train.log_every", "train.ckpt_every", "train.device", "train.num_threads"}


def _file_id(path) -> list | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def resume_differences(state: dict, cfg: Config, mode: str, teacher_id=None) -> list:
    """The config keys (and 'teacher') in which a checkpoint differs from this run; [] if it can resume."""
    have, want = _flatten(state.get("config", {})), _flatten(cfg.to_dict())
    skip = RESUME_FREE | {k for k in want if k.startswith("eval.")}
    if mode != "distill":
        skip |= {k for k in want if k.startswith("distill.")}
    diff = sorted(k for k in set(have) | set(want) if k not in skip and have.get(k) != want.get(k))
    if state.get("mode", mode) != mode:
        diff.insert(0, "mode")
    if mode == "distill" and state.get("teacher_id") != teacher_id:
        diff.append("teacher (the teacher model file changed)")
    return diff

def train(cfg: Config, mode: str, *, resume: bool = False, progress: bool = True) -> dict:
    """Train the teacher, the baseline student or the distilled student; returns the run's metrics."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    set_threads(cfg)
    device = resolve_device(cfg.train.device)
    env = Dist(device)
    device = env.device
    seed_everything(cfg.seed + env.rank)
    out = model_dir(cfg, mode)
    ckpt_path = out / "checkpoint.pt"

    train_set = labeled_dataset(cfg)
    num_classes = train_set.num_classes
    preset = cfg.model.teacher if mode == "teacher" else cfg.model.student
    weights = cfg.model.teacher_backbone_weights if mode == "teacher" else cfg.model.student_backbone_weights
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    detector = build_detector(preset, num_classes, cfg.data.image_size, arch=cfg.model.arch,
                              anchor_sizes=tuple(cfg.model.anchor_sizes), weights_path=weights,
                              head_norm=cfg.model.head_norm,
                              score_thresh=cfg.eval.score_thresh,
                              detections_per_img=cfg.eval.detections_per_img).to(device)
    teacher = adapter = None
    unlabeled = None
    tpath = None
    if mode == "distill":
        tpath = Path(cfg.distill.teacher_checkpoint or model_dir(cfg, "teacher") / "model.pt")
        teacher = load_model_file(tpath, cfg, cfg.model.teacher, num_classes, device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        adapter = FeatureAdapter(detector.backbone.out_channels, teacher.backbone.out_channels).to(device)
        if cfg.train.unlabeled_every > 0:
            unlabeled = unlabeled_dataset(cfg)
    module = StudentWithAdapter(detector, adapter).to(device)
    wrapped = module
    if env.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
    optimizer = make_optimizer(cfg, module.parameters())

    teacher_id = _file_id(tpath) if mode == "distill" else None
    history, start, seconds_before = [], 0, 0.0
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        diff = resume_differences(state, cfg, mode, teacher_id)
        if diff and resume == "compatible":
            if env.main:
                print(f"[{mode}] checkpoint {ckpt_path} was written with other settings ({', '.join(diff)}): "
                      f"starting from scratch")
        elif diff:
            raise ValueError(f"--resume: {ckpt_path} was written with other settings ({', '.join(diff)}); "
                             f"run with the same config (train.iterations may change) or without --resume")
        else:
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            start, history = state["iteration"], state["history"]
            seconds_before = state.get("train_seconds", 0.0)
            torch.set_rng_state(state["rng"])
            if env.main:
                print(f"[{mode}] resumed from {ckpt_path} at iteration {start}")
    elif resume is True and env.main:
        print(f"[{mode}] --resume: no checkpoint at {ckpt_path}, starting from scratch")

    labeled_stream = BatchStream(train_set, cfg.train.batch_size, cfg.seed, env.rank, env.world, cfg.data.cache_images)
    unlabeled_stream = (BatchStream(unlabeled, cfg.train.unlabeled_batch_size, cfg.seed + 17, env.rank, env.world,
                                    cfg.data.cache_images) if unlabeled is not None else None)

    def save_checkpoint(it):
        if env.main:
            atomic_save({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                         "iteration": it, "history": history, "rng": torch.get_rng_state(),
                         "config": cfg.to_dict(), "mode": mode, "teacher_id": teacher_id,
                         "train_seconds": seconds_before + time.perf_counter() - t0}, ckpt_path)

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.train.iterations), desc=mode, initial=start, total=cfg.train.iterations,
               disable=not (progress and env.main), dynamic_ncols=True)
    running: dict = {}
    u_every = cfg.train.unlabeled_every
    for it in bar:
        if _STEP_HOOK is not None:
            _STEP_HOOK(mode, it)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, it)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + it)
        is_unlabeled = unlabeled_stream is not None and u_every > 0 and it % (u_every + 1) == u_every
        module.train()
        if is_unlabeled:
            batch = unlabeled_stream.batch(it // (u_every + 1))
            images = [b[0] for b in batch]
            targets = [None] * len(images)
        else:
            li = it - (it // (u_every + 1) if unlabeled_stream is not None and u_every > 0 else 0)
            batch = labeled_stream.batch(li)
            images, targets = [b[0] for b in batch], [b[1] for b in batch]
        if cfg.train.hflip:
            images, targets = hflip(images, targets, gen)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = None if is_unlabeled else [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                                            for t in targets]
        dc = cfg.distill
        adapt = teacher is not None and dc.feat_weight > 0 and (dc.feat_region == "confidence" or not is_unlabeled)
        with autocast_for(cfg, device):
            s_out = wrapped(images, targets, adapt=adapt)
            losses = {} if is_unlabeled else {f"det_{k}": v for k, v in s_out.losses.items()}
            if teacher is not None:
                with torch.inference_mode():
                    t_out = forward_detector(teacher, images)
                t_out = _clone_outputs(t_out)
                losses.update(distill_losses(s_out, t_out, module.adapter, cfg.distill,
                                             labeled=not is_unlabeled, targets=targets))
        loss = sum(losses.values())
        if env.world > 1:  # DDP: every output must reach the loss, or the reducer waits for it
            outs = [s_out.cls_logits, s_out.bbox_regression] + list(s_out.adapted or [])
            loss = loss + 0.0 * sum(o.float().sum() for o in outs)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[{mode}] non-finite loss at iteration {it}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(module.parameters(), cfg.train.grad_clip)
        optimizer.step()
        for k, v in losses.items():
            running.setdefault(k, []).append(v.item())
        running.setdefault("total", []).append(loss.item())
        if (it + 1) % cfg.train.log_every == 0 or it + 1 == cfg.train.iterations:
            row = {"iteration": it + 1, "lr": lr_at(cfg, it),
                   **{k: env.mean(sum(v) / len(v)) for k, v in running.items()}}
            history.append(row)
            running = {}
            bar.set_postfix(loss=f"{row['total']:.3f}")
        if (it + 1) % cfg.train.ckpt_every == 0 and it + 1 < cfg.train.iterations:
            save_checkpoint(it + 1)
    train_seconds = seconds_before + time.perf_counter() - t0
    unlabeled_count = (cfg.train.iterations // (u_every + 1)
                       if unlabeled_stream is not None and u_every > 0 else 0)
    labeled_count = cfg.train.iterations - unlabeled_count
    save_checkpoint(cfg.train.iterations)
    metrics = {"mode": mode, "iterations": cfg.train.iterations, "start_iteration": start,
               "train_seconds": round(train_seconds, 1),
               "world_size": env.world, "labeled_steps": labeled_count, "unlabeled_steps": unlabeled_count,
               "history": history}
    if env.main:
        atomic_save({"model": detector.state_dict(), "preset": preset, "num_classes": num_classes,
                     "config": cfg.to_dict()}, out / "model.pt")
        atomic_write_text(json.dumps(metrics, indent=1), out / "metrics.json")
        from .report import plot_losses
        plot_losses(history, out / "loss_curve.png", title=f"{mode} ({preset})")
        print(f"[{mode}] {cfg.train.iterations} iterations in {train_seconds:.0f} s → {out / 'model.pt'}")
    env.barrier()
    return metrics


def _clone_outputs(o):
    """Inference-mode tensors cannot enter autograd graphs: make ordinary copies (no grad)."""
    from .models import DetectorOutputs
    return DetectorOutputs([f.clone() for f in o.features], o.cls_logits.clone(), o.bbox_regression.clone(),
                           o.level_shapes, o.num_anchors, {}, o.image_sizes)
