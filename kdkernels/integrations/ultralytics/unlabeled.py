"""Unlabeled images in the Ultralytics pipeline: a dataset that reads no label file, and a loader
that interleaves its batches with the labelled ones.

The unlabeled dataset is Ultralytics' own ``YOLODataset`` (same augmentation: mosaic, affine, HSV,
flips, letterbox, close_mosaic) with empty labels, so the teacher and the student get the same
augmented image: both run on ``batch["img"]``. Its batches carry ``batch["unlabeled"] = True``.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from ultralytics.data import YOLODataset, build_dataloader
from ultralytics.utils import colorstr

from kdkernels.train.data import check_images_readable

__all__ = ["UnlabeledDataset", "InterleavedLoader", "build_unlabeled_loader"]


class UnlabeledDataset(YOLODataset):
    """YOLODataset over a folder or ``.txt`` list of images whose labels are never read (all empty)."""

    def get_labels(self) -> list:
        """One empty label per image (shape read from the image header); no label file, no cache.

        Every image is decoded once first (``check_images_readable``, as ``kdkernels-train`` checks its
        unlabeled folder): unreadable files (not an image, truncated, empty) are one ValueError listing
        them, before the first step, rather than an error at the batch that would read them."""
        self.label_files = []
        check_images_readable(self.im_files, f"unlabeled={self.img_path}")
        labels = []
        for f in self.im_files:
            with Image.open(f) as im:
                w, h = im.size
            labels.append({"im_file": f, "shape": (h, w), "cls": np.zeros((0, 1), np.float32),
                           "bboxes": np.zeros((0, 4), np.float32), "segments": [], "keypoints": None,
                           "normalized": True, "bbox_format": "xywh"})
        if not labels:
            raise FileNotFoundError(f"unlabeled: no images found in {self.img_path}")
        return labels

    @staticmethod
    def collate_fn(batch):
        """YOLODataset's collate, plus ``unlabeled = True`` (the model reads no ground truth then)."""
        out = YOLODataset.collate_fn(batch)
        out["unlabeled"] = True
        return out


def build_unlabeled_loader(args, img_path, batch: int, data: dict, stride: int, rank: int, device):
    """An Ultralytics InfiniteDataLoader over :class:`UnlabeledDataset` with the training augmentation."""
    dataset = UnlabeledDataset(img_path=img_path, imgsz=args.imgsz, batch_size=batch, augment=True, hyp=args,
                               rect=False, cache=args.cache or None, single_cls=args.single_cls or False,
                               stride=stride, pad=0.0, prefix=colorstr("unlabeled: "), task=args.task,
                               classes=args.classes, data=data, fraction=1.0)
    return build_dataloader(dataset, batch=batch, workers=args.workers, shuffle=True, rank=rank,
                            drop_last=bool(args.compile), device=device)


class _Samplers:
    """The labelled sampler (length, attributes), with set_epoch applied to both samplers."""

    def __init__(self, labeled, unlabeled):
        self.labeled, self.unlabeled = labeled, unlabeled

    def __len__(self):
        return len(self.labeled)

    def set_epoch(self, epoch: int) -> None:
        for s in (self.labeled, self.unlabeled):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    def __getattr__(self, name):
        if name in ("labeled", "unlabeled"):
            raise AttributeError(name)
        return getattr(self.labeled, name)


class InterleavedLoader:
    """Labelled batches with ``ratio`` unlabeled batches per labelled one, in one epoch.

    After the i-th labelled batch (1-based) ``floor(i·ratio) − floor((i−1)·ratio)`` unlabeled batches
    follow (ratio 0.5: one after every second labelled batch). An epoch is one pass over the labelled
    loader; the unlabeled loader is cycled. Any other attribute (``dataset``, ``sampler``,
    ``batch_size``, ``num_workers``) is the labelled loader's.
    """

    def __init__(self, labeled, unlabeled, ratio: float):
        if ratio < 0:
            raise ValueError(f"unlabeled_ratio must be >= 0, got {ratio!r}")
        self.labeled, self.unlabeled, self.ratio = labeled, unlabeled, float(ratio)
        self._unl_iter = None

    def _due(self, i: int) -> int:
        return int(np.floor(i * self.ratio + 1e-9))

    def __len__(self) -> int:
        n = len(self.labeled)
        return n + self._due(n)

    def _next_unlabeled(self):
        if self._unl_iter is None:
            self._unl_iter = iter(self.unlabeled)
        try:
            return next(self._unl_iter)
        except StopIteration:
            self._unl_iter = iter(self.unlabeled)
            return next(self._unl_iter)

    def __iter__(self):
        for i, batch in enumerate(self.labeled, start=1):
            yield batch
            for _ in range(self._due(i) - self._due(i - 1)):
                yield self._next_unlabeled()

    @property
    def sampler(self):
        """The labelled loader's sampler; ``set_epoch`` (DDP) reaches the unlabeled one too."""
        return _Samplers(self.labeled.sampler, getattr(self.unlabeled, "sampler", None))

    def reset(self):
        """Reset both loaders (after close_mosaic)."""
        for loader in (self.labeled, self.unlabeled):
            if hasattr(loader, "reset"):
                loader.reset()
        self._unl_iter = None

    def close(self):
        for loader in (self.labeled, self.unlabeled):
            if hasattr(loader, "close"):
                loader.close()

    def __getattr__(self, name):
        if name in ("labeled", "unlabeled", "ratio", "_unl_iter"):
            raise AttributeError(name)
        return getattr(self.labeled, name)
