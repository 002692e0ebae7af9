"""FGD's foreground/background masks: the per-image, per-box Python loop of the official code vs the
trainer's vectorised version (kdkernels.train.peers.fgd_box_masks), on every FPN level of a batch.

    python -m benchmarks.fgd_masks                     # CPU, batch 8/16 × 2/10/50 boxes, 5 levels
    python -m benchmarks.fgd_masks --device cuda --image-size 800
    python -m benchmarks.fgd_masks --quick             # a smoke run

Times one batch's masks on all levels (P3–P7 of a --image-size square image: strides 8–128),
median of interleaved repetitions after a warm-up, and checks both give identical masks. Prints a
markdown table and writes the JSON (--out, default benchmarks/FGD_MASKS.json).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from kdkernels.train.peers import fgd_box_masks, pad_boxes

STRIDES = (8, 16, 32, 64, 128)


def fgd_masks_loop(gt_bboxes, img_shapes, shape):
    """FGD's masks as yzd-v/FGD (mmdet/distillation/losses/fgd.py, FeatureLoss.forward) builds them:
    a Python loop over images and, inside, over boxes. gt_bboxes: per-image (B_i, 4) tensors;
    img_shapes: per-image (h, w)."""
    n = len(gt_bboxes)
    h, w = shape
    device = gt_bboxes[0].device if n else "cpu"
    mask_fg = torch.zeros(n, h, w, device=device)
    mask_bg = torch.ones(n, h, w, device=device)
    for i in range(n):
        scaled = torch.ones_like(gt_bboxes[i])
        scaled[:, 0] = gt_bboxes[i][:, 0] / img_shapes[i][1] * w
        scaled[:, 2] = gt_bboxes[i][:, 2] / img_shapes[i][1] * w
        scaled[:, 1] = gt_bboxes[i][:, 1] / img_shapes[i][0] * h
        scaled[:, 3] = gt_bboxes[i][:, 3] / img_shapes[i][0] * h
        wmin, wmax = torch.floor(scaled[:, 0]).int(), torch.ceil(scaled[:, 2]).int()
        hmin, hmax = torch.floor(scaled[:, 1]).int(), torch.ceil(scaled[:, 3]).int()
        area = 1.0 / (hmax.view(1, -1) + 1 - hmin.view(1, -1)) / (wmax.view(1, -1) + 1 - wmin.view(1, -1))
        for j in range(len(gt_bboxes[i])):
            mask_fg[i][hmin[j]:hmax[j] + 1, wmin[j]:wmax[j] + 1] = torch.maximum(
                mask_fg[i][hmin[j]:hmax[j] + 1, wmin[j]:wmax[j] + 1], area[0][j])
        mask_bg[i] = torch.where(mask_fg[i] > 0, 0, 1)
        if torch.sum(mask_bg[i]):
            mask_bg[i] /= torch.sum(mask_bg[i])
    return mask_fg, mask_bg


def random_boxes(n_images: int, n_boxes: int, image_size: int, generator, device="cpu"):
    """n_boxes boxes per image, sides 2 px to half the image, inside the image."""
    out = []
    for _ in range(n_images):
        wh = 2 + torch.rand(n_boxes, 2, generator=generator) * (image_size / 2 - 2)
        xy = torch.rand(n_boxes, 2, generator=generator) * (image_size - wh)
        out.append(torch.cat([xy, xy + wh], 1).to(device))
    return out


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def measure(batch: int, boxes: int, image_size: int, device: str, repeats: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    gt = random_boxes(batch, boxes, image_size, gen, device)
    sizes = [(image_size, image_size)] * batch
    shapes = [(math.ceil(image_size / s), math.ceil(image_size / s)) for s in STRIDES]

    def loop():
        return [fgd_masks_loop(gt, sizes, sh) for sh in shapes]

    def vectorised():  # padding included: the trainer pads once per batch
        padded, valid = pad_boxes([{"boxes": b} for b in gt], device)
        return [fgd_box_masks(padded, valid, sizes, sh) for sh in shapes]

    for (fl, bl), (fv, bv) in zip(loop(), vectorised()):  # warm-up and the equality check
        if not (torch.equal(fl, fv) and torch.equal(bl, bv)):
            raise AssertionError(f"vectorised masks differ from the loop's (batch {batch}, boxes {boxes})")
    samples = {"loop": [], "vectorised": []}
    for _ in range(repeats):
        samples["loop"].append(_time(loop, device))
        samples["vectorised"].append(_time(vectorised, device))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"batch": batch, "boxes_per_image": boxes, "levels": [list(s) for s in shapes],
            "loop_ms": round(1000 * med["loop"], 3), "vectorised_ms": round(1000 * med["vectorised"], 3),
            "speedup": round(med["loop"] / med["vectorised"], 1),
            "samples_ms": {k: [round(1000 * x, 3) for x in v] for k, v in samples.items()}}


def table(rows: list) -> str:
    lines = ["| batch | boxes / image | per-box loop (ms) | vectorised (ms) | speed-up |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['boxes_per_image']} | {r['loop_ms']:.2f} | {r['vectorised_ms']:.2f} | "
                     f"{r['speedup']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fgd_masks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-size", type=int, default=640, help="square image side in px (default 640)")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--boxes", type=int, nargs="+", default=[2, 10, 50])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help="batch 2, 3 boxes, 2 repeats")
    p.add_argument("--out", default="benchmarks/FGD_MASKS.json")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.boxes, args.repeats = [2], [3], 2
    torch.set_num_threads(args.threads)
    rows = [measure(b, k, args.image_size, args.device, args.repeats) for b in args.batches for k in args.boxes]
    report = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
              "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "image_size": args.image_size, "strides": list(STRIDES), "repeats": args.repeats, "rows": rows}
    report["table"] = table(rows)
    print(report["table"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
