"""Training loops: teacher, baseline student (GT only) and distilled student (labeled + unlabeled).

Iteration-based, deterministic data order (a permutation per epoch from the seed), atomic and
checksummed checkpoints (kdkernels.train.checkpoint: temp file + fsync + rename, sha256 verified on
load, the previous good one kept as checkpoint.prev.pt) every `train.ckpt_every` steps, and
`resume=True` continues from the newest usable checkpoint (refusing one beyond `train.iterations`).
SIGINT/SIGTERM finish the current step, save a checkpoint and raise TrainingInterrupted.
Multi-process through torchrun + DDP (gloo on CPU, nccl on CUDA): each rank takes its shard of
every batch's permutation; rank 0 writes checkpoints, metrics and plots.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .checkpoint import (CheckpointError, atomic_save, atomic_write_text, load_latest, load_verified,  # noqa: F401
                         previous_path, save_checkpoint, save_verified, sweep_stale_temp_files)
from .config import PEER_KEYS, Config, DistillConfig
from .data import CocoDetection, ImageFolder, check_same_categories
from .distill import FeatureAdapter, distill_losses, needs_adapted_features
from .peers import build_peer_modules
from .models import build_detector, forward_detector

MODES = ("teacher", "baseline", "distill")


# ----------------------------------------------------------------------------- helpers
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


def check_categories(cfg: Config) -> None:
    """The train and val annotation files must have the same categories (ValueError naming both)."""
    check_same_categories(data_path(cfg, cfg.data.train_ann), data_path(cfg, cfg.data.val_ann))


def val_dataset(cfg: Config) -> CocoDetection:
    check_categories(cfg)
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


def load_model_file(path: Path, cfg: Config, preset: str, num_classes: int, device, *,
                    what: str = "model file") -> nn.Module:
    """A trained detector from a stage's model.pt (checksum verified). FileNotFoundError when it is
    missing; CheckpointError (a ValueError) naming the file when it is damaged, another kind of
    file, trained for another number of classes or not fitting the config's architecture."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: train it first "
                                f"(kdkernels-train teacher/baseline/distill)")
    state = load_verified(path, kind="model", what=what)
    file_classes = state.get("num_classes", num_classes)
    if file_classes != num_classes:
        raise CheckpointError(f"{what} {path} was trained for {file_classes} classes, but the data has {num_classes}")
    file_preset = state.get("preset", preset)
    model = build_detector(file_preset, num_classes, cfg.data.image_size, arch=cfg.model.arch,
                           anchor_sizes=tuple(cfg.model.anchor_sizes), head_norm=cfg.model.head_norm,
                           score_thresh=cfg.eval.score_thresh,
                           detections_per_img=cfg.eval.detections_per_img)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(f"{what} {path} does not fit model {file_preset} ({cfg.model.arch}, "
                              f"model.head_norm={cfg.model.head_norm}): {first}") from None
    return model.to(device)


class StudentWithAdapter(nn.Module):
    """One module for DDP: forward returns the detector outputs (and adapted features on demand).
    `peer`: the trainable modules of a peer preset (FGD's GcBlocks, peers.FGDRelation) or None; they
    run inside forward on the adapted student and the given teacher features, so DDP sees them,
    the optimizer holds them and checkpoints save them (state-dict keys peer.*)."""

    def __init__(self, detector: nn.Module, adapter: FeatureAdapter | None, peer: nn.Module | None = None):
        super().__init__()
        self.detector = detector
        self.adapter = adapter if adapter is not None else FeatureAdapter(1, 1)
        if peer is not None:  # no attribute otherwise: the thesis method's checkpoints keep their keys
            self.peer = peer

    def forward(self, images, targets=None, adapt: bool = False, teacher_features=None):
        out = forward_detector(self.detector, images, targets)
        if adapt:  # inside forward, so DDP sees the adapter's parameters in the graph
            out.adapted = self.adapter(out.features)
            if teacher_features is not None and hasattr(self, "peer"):
                out.relation = self.peer(out.adapted, teacher_features)
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
    if "distill.temperature" in have and "distill.method" not in have:
        # written before the peer presets existed: the thesis method, the peer keys at their defaults
        defaults = DistillConfig()
        have.update({f"distill.{k}": getattr(defaults, k) for k in PEER_KEYS})
    skip = RESUME_FREE | {k for k in want if k.startswith("eval.")}
    if mode != "distill":
        skip |= {k for k in want if k.startswith("distill.")}
    diff = sorted(k for k in set(have) | set(want) if k not in skip and have.get(k) != want.get(k))
    if state.get("mode", mode) != mode:
        diff.insert(0, "mode")
    if mode == "distill" and state.get("teacher_id") != teacher_id:
        diff.append("teacher (the teacher model file changed)")
    return diff


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training: `path` holds the checkpoint of `iteration` (None when a
    second signal stopped it at once); exit with `exit_code` (128 + signal number)."""

    def __init__(self, mode: str, signum: int, iteration: int | None, path: Path):
        self.mode, self.signum, self.iteration, self.path = mode, signum, iteration, Path(path)
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        if iteration is None:
            last = f"the last checkpoint is {path}" if Path(path).is_file() else "no checkpoint was saved"
            msg = f"stopped at once by a second {name}; {last}"
        else:
            msg = f"interrupted by {name}: saved the checkpoint of iteration {iteration} to {path}"
        super().__init__(msg)


class StopOnSignal:
    """While active (main thread only): the first SIGINT/SIGTERM is recorded, so the loop finishes
    its step, checkpoints and stops; a second one raises TrainingInterrupted at once. The previous
    handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, mode: str, ckpt_path: Path):
        self.mode, self.ckpt_path = mode, ckpt_path
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise TrainingInterrupted(self.mode, signum, None, self.ckpt_path)
        self.signum = signum
        if os.environ.get("RANK", "0") == "0":  # os.write: safe inside a signal handler, unlike print
            os.write(2, f"\n[{self.mode}] {signal.Signals(signum).name}: saving a checkpoint at the end of this "
                        f"step, then stopping (send it again to stop at once)\n".encode())

    def requested(self, env: "Dist") -> int:
        """The signal to stop for (0: none); under DDP the ranks agree, so all stop at the same step."""
        if env.world == 1:
            return self.signum or 0
        flag = torch.tensor([self.signum or 0], device=env.device if env.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


@dataclass
class Run:
    """Everything one training run holds: config, data streams, models, optimizer and progress."""
    cfg: Config
    mode: str
    env: Dist
    train_set: CocoDetection
    unlabeled: object = None
    preset: str = ""
    detector: nn.Module = None
    teacher: nn.Module = None
    module: nn.Module = None
    wrapped: nn.Module = None
    optimizer: torch.optim.Optimizer = None
    teacher_id: list = None
    history: list = field(default_factory=list)
    start: int = 0
    seconds_before: float = 0.0
    t0: float = 0.0
    labeled_stream: BatchStream = None
    unlabeled_stream: BatchStream = None

    @property
    def out(self) -> Path:
        return model_dir(self.cfg, self.mode)

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def device(self) -> torch.device:
        return self.env.device

    def say(self, text: str) -> None:
        if self.env.main:
            print(f"[{self.mode}] {text}")

    def uses_unlabeled(self) -> bool:
        return self.unlabeled_stream is not None and self.cfg.train.unlabeled_every > 0


def train(cfg: Config, mode: str, *, resume: bool = False, progress: bool = True) -> dict:
    """Train the teacher, the baseline student or the distilled student; returns the run's metrics.

    resume: True (continue from the newest usable checkpoint; errors for one with other settings,
    one beyond train.iterations or only damaged ones), "compatible" (continue only when that works,
    else start over) or False. SIGINT/SIGTERM: the step finishes, a checkpoint is saved and
    TrainingInterrupted is raised."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    set_threads(cfg)
    env = Dist(resolve_device(cfg.train.device))
    seed_everything(cfg.seed + env.rank)
    run = _load_data(cfg, mode, env)
    _sweep_interrupted_writes(run)
    _build_models(run)
    if resume:
        _resume(run, resume)
    _make_streams(run)
    with StopOnSignal(mode, run.ckpt_path) as stop:
        _train_loop(run, stop, progress)
    return _finish(run)


# ----------------------------------------------------------------------------- train(): setup
def _load_data(cfg: Config, mode: str, env: Dist) -> Run:
    """The labeled set (and the unlabeled one for distill), checked before any model is built."""
    train_set = labeled_dataset(cfg)
    if data_path(cfg, cfg.data.val_ann).is_file():
        check_categories(cfg)
    unlabeled = unlabeled_dataset(cfg) if mode == "distill" and cfg.train.unlabeled_every > 0 else None
    return Run(cfg, mode, env, train_set, unlabeled)


def _sweep_interrupted_writes(run: Run) -> None:
    """Rank 0 removes the temp files a killed earlier run left in the stage's folder (and says so)."""
    if run.env.main:
        removed = sweep_stale_temp_files(run.out)
        if removed:
            run.say(f"removed {len(removed)} temp file(s) of an interrupted write: "
                    + ", ".join(p.name for p in removed))


def _build_models(run: Run) -> None:
    """Student (same initial weights on every rank), teacher and adapter for distill, DDP, optimizer."""
    cfg, mode, device = run.cfg, run.mode, run.device
    num_classes = run.train_set.num_classes
    run.preset = cfg.model.teacher if mode == "teacher" else cfg.model.student
    weights = cfg.model.teacher_backbone_weights if mode == "teacher" else cfg.model.student_backbone_weights
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    run.detector = build_detector(run.preset, num_classes, cfg.data.image_size, arch=cfg.model.arch,
                                  anchor_sizes=tuple(cfg.model.anchor_sizes), weights_path=weights,
                                  head_norm=cfg.model.head_norm, score_thresh=cfg.eval.score_thresh,
                                  detections_per_img=cfg.eval.detections_per_img).to(device)
    adapter = peer = None
    if mode == "distill":
        tpath = Path(cfg.distill.teacher_checkpoint or model_dir(cfg, "teacher") / "model.pt")
        run.teacher = load_model_file(tpath, cfg, cfg.model.teacher, num_classes, device,
                                      what="teacher model file").eval()
        for p in run.teacher.parameters():
            p.requires_grad_(False)
        adapter = FeatureAdapter(run.detector.backbone.out_channels, run.teacher.backbone.out_channels).to(device)
        run.teacher_id = _file_id(tpath)
        peer = build_peer_modules(cfg.distill, run.teacher.backbone.out_channels, len(cfg.model.anchor_sizes))
    run.module = StudentWithAdapter(run.detector, adapter, peer).to(device)
    run.wrapped = run.module
    if run.env.world > 1:
        run.wrapped = nn.parallel.DistributedDataParallel(run.module, find_unused_parameters=True)
    run.optimizer = make_optimizer(cfg, run.module.parameters())


def _resume(run: Run, resume) -> None:
    """Continue from the newest usable checkpoint (falling back to the previous one), see train()."""
    compatible = resume == "compatible"
    try:
        state, path = load_latest(run.ckpt_path, log=run.say)
    except CheckpointError as exc:
        if not compatible:
            raise CheckpointError(f"--resume: {exc}") from None
        run.say(f"cannot resume ({exc}): starting from scratch")
        return
    if state is None:
        if not compatible:
            run.say(f"--resume: no checkpoint at {run.ckpt_path}, starting from scratch")
        return
    diff = resume_differences(state, run.cfg, run.mode, run.teacher_id)
    beyond = _beyond_iterations(state, run.cfg)
    if compatible and (diff or beyond):
        run.say(f"checkpoint {path} was written with other settings ({', '.join(diff + beyond)}): "
                f"starting from scratch")
        return
    if diff:
        raise ValueError(f"--resume: {path} was written with other settings ({', '.join(diff)}); "
                         f"run with the same config (train.iterations may change) or without --resume")
    if beyond:
        raise ValueError(f"--resume: {path} is at iteration {state['iteration']}, beyond "
                         f"train.iterations={run.cfg.train.iterations}; resuming would rewrite the run with "
                         f"fewer iterations. Set train.iterations >= {state['iteration']} to continue it, or "
                         f"train a shorter run into another out_dir")
    _load_state(run, state)
    run.say(f"resumed from {path} at iteration {run.start}")


def _beyond_iterations(state: dict, cfg: Config) -> list:
    it = state.get("iteration", 0)
    return [f"train.iterations={cfg.train.iterations} < its iteration {it}"] if it > cfg.train.iterations else []


def _load_state(run: Run, state: dict) -> None:
    run.module.load_state_dict(state["module"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.start, run.history = state["iteration"], state["history"]
    run.seconds_before = state.get("train_seconds", 0.0)
    torch.set_rng_state(state["rng"])


def _make_streams(run: Run) -> None:
    cfg, env = run.cfg, run.env
    run.labeled_stream = BatchStream(run.train_set, cfg.train.batch_size, cfg.seed, env.rank, env.world,
                                     cfg.data.cache_images)
    if run.unlabeled is not None:
        run.unlabeled_stream = BatchStream(run.unlabeled, cfg.train.unlabeled_batch_size, cfg.seed + 17, env.rank,
                                           env.world, cfg.data.cache_images)


def _save_run_checkpoint(run: Run, it: int) -> None:
    """Rank 0 writes the checkpoint of iteration `it` (the previous one is kept as checkpoint.prev.pt)."""
    if run.env.main:
        save_checkpoint({"module": run.module.state_dict(), "optimizer": run.optimizer.state_dict(),
                         "iteration": it, "history": run.history, "rng": torch.get_rng_state(),
                         "config": run.cfg.to_dict(), "mode": run.mode, "teacher_id": run.teacher_id,
                         "train_seconds": run.seconds_before + time.perf_counter() - run.t0}, run.ckpt_path)


# ----------------------------------------------------------------------------- train(): the loop
def _train_loop(run: Run, stop: StopOnSignal, progress: bool) -> None:
    cfg = run.cfg
    run.t0 = time.perf_counter()
    bar = tqdm(range(run.start, cfg.train.iterations), desc=run.mode, initial=run.start,
               total=cfg.train.iterations, disable=not (progress and run.env.main), dynamic_ncols=True)
    running: dict = {}
    for it in bar:
        if _STEP_HOOK is not None:
            _STEP_HOOK(run.mode, it)
        losses, loss = _train_step(run, it)
        for k, v in losses.items():
            running.setdefault(k, []).append(v.item())
        running.setdefault("total", []).append(loss.item())
        if (it + 1) % cfg.train.log_every == 0 or it + 1 == cfg.train.iterations:
            _log_row(run, it, running, bar)
            running = {}
        saved = (it + 1) % cfg.train.ckpt_every == 0 and it + 1 < cfg.train.iterations
        if saved:
            _save_run_checkpoint(run, it + 1)
        signum = stop.requested(run.env)
        if signum and it + 1 < cfg.train.iterations:
            _stop_after_step(run, it + 1, signum, saved, bar)


def _stop_after_step(run: Run, iteration: int, signum: int, saved: bool, bar) -> None:
    """A stop signal: checkpoint this step (unless just done), then raise TrainingInterrupted on every rank."""
    if not saved:
        _save_run_checkpoint(run, iteration)
    bar.close()
    run.env.barrier()  # rank 0's checkpoint is on disk before any rank exits
    raise TrainingInterrupted(run.mode, signum, iteration, run.ckpt_path)


def _step_batch(run: Run, it: int):
    """(images, targets or None) of step `it`: every (u_every+1)-th step is unlabeled when there is
    unlabeled data; the labeled steps walk the labeled stream without gaps."""
    u_every = run.cfg.train.unlabeled_every
    if run.uses_unlabeled() and it % (u_every + 1) == u_every:
        batch = run.unlabeled_stream.batch(it // (u_every + 1))
        return [b[0] for b in batch], None
    li = it - (it // (u_every + 1) if run.uses_unlabeled() else 0)
    batch = run.labeled_stream.batch(li)
    return [b[0] for b in batch], [b[1] for b in batch]


def _train_step(run: Run, it: int):
    """One optimizer step at iteration `it`; returns (the loss terms, their sum)."""
    cfg, device = run.cfg, run.device
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(cfg, it)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + it)
    run.module.train()
    images, targets = _step_batch(run, it)
    is_unlabeled = targets is None
    if cfg.train.hflip:
        images, targets = hflip(images, [None] * len(images) if is_unlabeled else targets, gen)
    images = [im.to(device, non_blocking=True) for im in images]
    targets = None if is_unlabeled else [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                                        for t in targets]
    losses, s_out = _step_losses(run, images, targets)
    loss = sum(losses.values())
    if run.env.world > 1:  # DDP: every output must reach the loss, or the reducer waits for it
        outs = [s_out.cls_logits, s_out.bbox_regression] + list(s_out.adapted or [])
        outs += [g for pair in (s_out.relation or []) for g in pair]
        loss = loss + 0.0 * sum(o.float().sum() for o in outs)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"[{run.mode}] non-finite loss at iteration {it}: "
                                 f"{ {k: float(v) for k, v in losses.items()} }")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.module.parameters(), cfg.train.grad_clip)
    run.optimizer.step()
    return losses, loss


def _step_losses(run: Run, images, targets):
    """The loss terms of one batch (targets None: unlabeled) and the student's outputs."""
    dc, is_unlabeled = run.cfg.distill, targets is None
    adapt = run.teacher is not None and needs_adapted_features(dc, labeled=not is_unlabeled)
    with autocast_for(run.cfg, run.device):
        t_out = None
        if run.teacher is not None:  # first: the peer modules (GcBlocks) take the teacher's features
            with torch.inference_mode():
                t_out = forward_detector(run.teacher, images)
            t_out = _clone_outputs(t_out)
        peer = getattr(run.module, "peer", None)
        s_out = run.wrapped(images, targets, adapt=adapt,
                            teacher_features=t_out.features if peer is not None and adapt else None)
        losses = {} if is_unlabeled else {f"det_{k}": v for k, v in s_out.losses.items()}
        if t_out is not None:
            losses.update(distill_losses(s_out, t_out, run.module.adapter, dc, labeled=not is_unlabeled,
                                         targets=targets, peer_modules=peer,
                                         image_sizes=[tuple(im.shape[-2:]) for im in images]))
    return losses, s_out


def _log_row(run: Run, it: int, running: dict, bar) -> None:
    row = {"iteration": it + 1, "lr": lr_at(run.cfg, it),
           **{k: run.env.mean(sum(v) / len(v)) for k, v in running.items()}}
    run.history.append(row)
    bar.set_postfix(loss=f"{row['total']:.3f}")


# ----------------------------------------------------------------------------- train(): the end
def _finish(run: Run) -> dict:
    """Final checkpoint, then (rank 0) model.pt, metrics.json and the loss curve."""
    cfg, iterations = run.cfg, run.cfg.train.iterations
    train_seconds = run.seconds_before + time.perf_counter() - run.t0
    u_every = cfg.train.unlabeled_every
    unlabeled_count = iterations // (u_every + 1) if run.uses_unlabeled() else 0
    _save_run_checkpoint(run, iterations)
    metrics = {"mode": run.mode, "iterations": iterations, "start_iteration": run.start,
               "train_seconds": round(train_seconds, 1),
               "world_size": run.env.world, "labeled_steps": iterations - unlabeled_count,
               "unlabeled_steps": unlabeled_count, "history": run.history}
    if run.env.main:
        out = run.out
        save_verified({"model": run.detector.state_dict(), "preset": run.preset,
                       "num_classes": run.train_set.num_classes, "config": cfg.to_dict()},
                      out / "model.pt", kind="model")
        atomic_write_text(json.dumps(metrics, indent=1), out / "metrics.json")
        from .report import plot_losses
        plot_losses(run.history, out / "loss_curve.png", title=f"{run.mode} ({run.preset})")
        print(f"[{run.mode}] {iterations} iterations in {train_seconds:.0f} s → {out / 'model.pt'}")
    run.env.barrier()
    return metrics


def _clone_outputs(o):
    """Inference-mode tensors cannot enter autograd graphs: make ordinary copies (no grad)."""
    from .models import DetectorOutputs
    return DetectorOutputs([f.clone() for f in o.features], o.cls_logits.clone(), o.bbox_regression.clone(),
                           o.level_shapes, o.num_anchors, {}, o.image_sizes)
