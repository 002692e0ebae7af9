"""COCO → YOLO format, and the embedded synthetic set exported for Ultralytics (no download).

    from kdkernels.integrations.ultralytics.data import make_yolo_data
    info = make_yolo_data("data/yolo")          # the demo synthetic set, YOLO format, + label-scarce split
    # info["data_yaml"], info["scarce_yaml"], info["unlabeled"], info["scarce_unlabeled"]

Layout written under ``out_dir``::

    images/{train,val,unlabeled}/*.png   the images (hard links to the COCO set's files when possible)
    labels/{train,val}/*.txt             one line per box: ``class cx cy w h`` (normalised to [0, 1])
    data.yaml                            full labels: train images/train, val images/val, names
    scarce_labeled.txt                   label-scarce split: the train images keeping their labels ...
    scarce_unlabeled.txt                 ... and the others (their labels are never read through this list)
    data_scarce.yaml                     train: scarce_labeled.txt, val: images/val
    export.json                          source, counts, class names, the scarce split's box share

Class ``k`` is the k-th smallest COCO category id (as in ``kdkernels.train.data.CocoDetection``).
The label-scarce split keeps whole images: train images in a seeded random order are taken until they
hold ``scarce_fraction`` of all train boxes. A COCO set written with ``label_fraction < 1`` (its
``annotations/train_unlabeled_images.json``) gives those images no label file at all.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from kdkernels.train.data import read_coco_annotations

from .config import check_number

__all__ = ["check_export_args", "coco_to_yolo", "make_yolo_data", "demo_synthetic_kwargs"]


def demo_synthetic_kwargs() -> dict:
    """The synthetic generator's settings of the ``kdkernels-train`` demo preset (64 px, 4 shapes)."""
    from kdkernels.train.cli import synthetic_kwargs
    from kdkernels.train.config import load_config
    return synthetic_kwargs(load_config("demo"))


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _yolo_lines(boxes: list, labels: list, image: dict) -> list:
    """Checked xyxy px boxes (clipped to the image) and labels → ``"k cx cy w h"`` lines normalised by
    the image size."""
    W, H = float(image["width"]), float(image["height"])
    return [f"{k} {(x0 + x1) / 2 / W:.6f} {(y0 + y1) / 2 / H:.6f} {(x1 - x0) / W:.6f} {(y1 - y0) / H:.6f}"
            for (x0, y0, x1, y1), k in zip(boxes, labels)]


def coco_to_yolo(images_dir, ann_file, out_dir, split: str, *, category_ids=None,
                 unlabeled_names=()) -> dict:
    """Write one COCO split as YOLO ``images/<split>`` + ``labels/<split>``.

    The file is read and checked as ``kdkernels-train`` reads it (``kdkernels.train.data.read_coco_annotations``):
    a malformed or non-finite box, one with negative size or outside its image (beyond ``BOX_TOLERANCE``), an
    unknown category or image id, a missing image file is an error naming the file and the annotation
    (nothing is written for that split); crowd and zero-size boxes are skipped with one warning, and
    boxes overhanging within the tolerance are clipped.

    Args:
        images_dir: folder of the split's images; ann_file: its COCO instances JSON.
        out_dir: the YOLO data root. split: sub-folder name (``train``, ``val``).
        category_ids: the class order (class k = k-th smallest id); default: the file's categories.
        unlabeled_names: file names in ``images_dir`` without annotations that are copied with no
            label file (the generator's ``train_unlabeled_images.json``).
    Returns:
        ``{"names": [...], "category_ids": [...], "images": n, "boxes": per-file box counts}``.
    """
    ann = read_coco_annotations(ann_file, category_ids=category_ids, images_dir=images_dir)
    img_out, lab_out = Path(out_dir) / "images" / split, Path(out_dir) / "labels" / split
    img_out.mkdir(parents=True, exist_ok=True)
    lab_out.mkdir(parents=True, exist_ok=True)
    boxes = {}
    for iid, im in ann.images.items():
        name = im["file_name"]
        _link_or_copy(Path(images_dir) / name, img_out / name)
        lines = _yolo_lines(ann.boxes[iid], ann.labels[iid], im)
        (lab_out / (Path(name).stem + ".txt")).write_text("".join(f"{ln}\n" for ln in lines))
        boxes[name] = len(lines)
    for name in unlabeled_names:
        _link_or_copy(Path(images_dir) / name, img_out / name)
    return {"names": ann.class_names, "category_ids": ann.category_ids, "images": len(boxes), "boxes": boxes}


def _copy_folder(src, dst) -> int:
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in Path(src).iterdir() if p.is_file())
    for p in files:
        _link_or_copy(p, dst / p.name)
    return len(files)


def _scarce_split(boxes: dict, fraction: float, seed: int) -> tuple:
    """Whole images, in a seeded random order, until they hold ``fraction`` of the boxes."""
    names = sorted(boxes)
    order = np.random.default_rng([seed, 10]).permutation(len(names))
    total, kept, labeled = sum(boxes.values()), 0, []
    for i in order:
        if kept >= fraction * total and labeled:
            break
        labeled.append(names[i])
        kept += boxes[names[i]]
    chosen = set(labeled)
    return sorted(labeled), [n for n in names if n not in chosen], kept / max(total, 1)


def check_export_args(scarce_fraction=0.1, seed=0) -> tuple:
    """(scarce_fraction, seed) of :func:`make_yolo_data`, checked: a finite number in (0, 1] and an integer;
    TypeError / ValueError naming the key otherwise."""
    fraction = check_number(scarce_fraction, "scarce_fraction", positive=True)
    if fraction > 1:
        raise ValueError(f"'scarce_fraction={fraction!r}' must be <= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"'seed={seed!r}' must be an integer")
    return fraction, seed


def _write_list(path: Path, split: str, names) -> None:
    path.write_text("".join(f"./images/{split}/{n}\n" for n in names))


def _write_yaml(path: Path, root: Path, train: str, names: list) -> None:
    import yaml
    body = {"path": str(root.resolve()), "train": train, "val": "images/val",
            "names": {k: n for k, n in enumerate(names)}}
    path.write_text(yaml.safe_dump(body, sort_keys=False))


def make_yolo_data(out_dir, *, coco_root=None, synthetic: dict | None = None, scarce_fraction: float = 0.1,
                   seed: int = 0) -> dict:
    """The embedded synthetic set (or the COCO set at ``coco_root``) in YOLO format under ``out_dir``.

    Args:
        out_dir: YOLO data root (written; existing label files are overwritten).
        coco_root: a COCO set laid out as ``kdkernels.train.synthetic`` writes it
            (``images/{train,val,unlabeled}``, ``annotations/instances_{train,val}.json``). Default:
            ``<out_dir>/coco``, generated (or reused) with ``ensure_synthetic_coco(**synthetic)``.
        synthetic: generator settings; default :func:`demo_synthetic_kwargs` (the demo preset).
        scarce_fraction: share of the train boxes kept labelled by the label-scarce split, in (0, 1].
        seed: seed of the label-scarce split.
    Returns:
        paths (``data_yaml``, ``scarce_yaml``, ``unlabeled``, ``scarce_unlabeled``, ``root``) and counts.
    """
    scarce_fraction, seed = check_export_args(scarce_fraction, seed)
    out = Path(out_dir)
    if coco_root is None:
        from kdkernels.train.synthetic import ensure_synthetic_coco
        coco_root = out / "coco"
        ensure_synthetic_coco(coco_root, **(synthetic or demo_synthetic_kwargs()))
    coco = Path(coco_root)
    unl_list = coco / "annotations" / "train_unlabeled_images.json"
    no_labels = json.loads(unl_list.read_text()) if unl_list.exists() else []
    train = coco_to_yolo(coco / "images" / "train", coco / "annotations" / "instances_train.json", out, "train",
                         unlabeled_names=no_labels)
    val = coco_to_yolo(coco / "images" / "val", coco / "annotations" / "instances_val.json", out, "val",
                       category_ids=train["category_ids"])
    n_extra = _copy_folder(coco / "images" / "unlabeled", out / "images" / "unlabeled") \
        if (coco / "images" / "unlabeled").is_dir() else 0
    labeled, rest, share = _scarce_split(train["boxes"], scarce_fraction, seed)
    _write_list(out / "scarce_labeled.txt", "train", labeled)
    _write_list(out / "scarce_unlabeled.txt", "train", sorted(rest + list(no_labels)))
    _write_yaml(out / "data.yaml", out, "images/train", train["names"])
    _write_yaml(out / "data_scarce.yaml", out, "scarce_labeled.txt", train["names"])
    info = {"root": str(out), "data_yaml": str(out / "data.yaml"), "scarce_yaml": str(out / "data_scarce.yaml"),
            "unlabeled": str(out / "images" / "unlabeled"), "scarce_unlabeled": str(out / "scarce_unlabeled.txt"),
            "names": train["names"], "category_ids": train["category_ids"], "num_train": train["images"],
            "num_train_unlabeled": len(no_labels), "num_val": val["images"], "num_unlabeled": n_extra,
            "train_boxes": sum(train["boxes"].values()), "scarce_images": len(labeled),
            "scarce_box_share": round(share, 4), "scarce_fraction": scarce_fraction, "coco_root": str(coco)}
    (out / "export.json").write_text(json.dumps(info, indent=1))
    return info
