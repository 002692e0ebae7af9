"""COCO evaluation (pycocotools COCOeval) of a detector on the val split."""
from __future__ import annotations

import contextlib
import io

import torch
from tqdm import tqdm

from .data import CocoDetection

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@torch.no_grad()
def evaluate(model, dataset: CocoDetection, *, batch_size: int = 16, device="cpu", progress: bool = True,
             desc: str = "eval") -> dict:
    """Returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} in percent (COCO's −1 for empty areas → nan)."""
    from pycocotools.cocoeval import COCOeval
    model.eval().to(device)
    results = []
    ids = list(range(len(dataset)))
    for start in tqdm(range(0, len(ids), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        items = [dataset[i] for i in ids[start:start + batch_size]]
        images = [im.to(device) for im, _ in items]
        for (_, target), det in zip(items, model(images)):
            boxes = det["boxes"].float().cpu()
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
            for b, s, l in zip(xywh.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": int(target["image_id"]), "category_id": dataset.label_to_category_id(l),
                                "bbox": [round(v, 2) for v in b], "score": round(float(s), 5)})
    if not results:
        return {k: 0.0 for k in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        dets = dataset.coco.loadRes(results)
        ev = COCOeval(dataset.coco, dets, "bbox")
        ev.params.imgIds = sorted(dataset.coco.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) * 100 if v >= 0 else float("nan")) for k, v in zip(STAT_NAMES, ev.stats[:6])}
