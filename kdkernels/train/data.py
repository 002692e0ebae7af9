"""Detection data: a validated COCO-instances dataset, an unlabelled image folder, and the collate function.

    ds = CocoDetection("data/synthetic/images/train", "data/synthetic/annotations/instances_train.json")
    image, target = ds[0]     # float32 (3, H, W) in [0, 1]; {"boxes": (n, 4) xyxy, "labels": (n,), "image_id"}
    val = CocoDetection(".../images/val", ".../annotations/instances_val.json", category_ids=ds.category_ids)
    unl = ImageFolder("data/synthetic/images/unlabeled")
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate)

Every annotation is checked when the dataset is built, so bad data fails at once with the file and
the record named: invalid JSON (``ValueError`` with the line/column), a missing image file
(``FileNotFoundError`` with the path and image id), a box with negative size or outside its image, an
unknown category or image id (``ValueError`` with the annotation id and image id). Crowd annotations
(``iscrowd=1``) and boxes of zero width or height are skipped, as is the convention, and counted in
``.skipped`` with one warning that sums them up. ``read_coco_annotations`` is that check on its own:
the YOLO converter (``kdkernels-yolo make-data``) reads COCO files through it too.

An unlabelled ``ImageFolder`` decodes every image when it is built: unreadable files (garbage,
truncated, empty) are a ``ValueError`` listing them, not skipped, so a run never starts on a folder
it would later trip over, and the index -> file mapping that resumed runs rely on never shifts
(``check_images_readable``, also the YOLO integration's check of its unlabeled images).
``check_same_categories`` makes a train/val pair with different categories an error naming both files.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["CocoAnnotations", "CocoDetection", "ImageFolder", "check_images_readable", "check_same_categories",
           "collate", "load_image", "read_categories", "read_coco_annotations", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
BOX_TOLERANCE = 0.5  # px a box may overhang its image (rounding in real annotation files); clipped


def _load_uint8(path) -> np.ndarray:
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ImportError) as e:
        # ImportError: once Ultralytics is imported, its PIL.Image.open patch answers an
        # undecodable file by importing the optional pi_heif plugin
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


MAX_LISTED_IMAGES = 10  # unreadable images listed in check_images_readable's error (then a count)


def check_images_readable(paths, where: str) -> None:
    """Decode every image file once; one ValueError naming ``where`` and listing the unreadable ones
    (not an image, truncated, empty: the first MAX_LISTED_IMAGES, then a count). The unlabeled-image
    check of ``kdkernels-train`` (ImageFolder) and of the YOLO integration's unlabeled dataset."""
    bad = []
    for path in paths:
        try:
            _load_uint8(path)
        except ValueError as e:
            bad.append(f"{path} ({str(e.__cause__ or e).splitlines()[0][:120]})")
    if bad:
        listed = "; ".join(bad[:MAX_LISTED_IMAGES])
        more = f"; and {len(bad) - MAX_LISTED_IMAGES} more" if len(bad) > MAX_LISTED_IMAGES else ""
        raise ValueError(f"{where}: {len(bad)} unreadable image file{'s' if len(bad) > 1 else ''} "
                         f"(fix or remove them): {listed}{more}")


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


def load_image(path) -> torch.Tensor:
    """RGB image file -> float32 tensor (3, H, W) in [0, 1]. FileNotFoundError / ValueError name the file."""
    return _to_tensor(_load_uint8(path))


def collate(batch):
    """[(image, target), ...] -> ([image, ...], [target, ...]) (torchvision detection convention)."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


def _read_json(path):
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from None


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _read_instances(ann_file: Path) -> dict:
    """The annotation file's JSON, checked to be a COCO instances object ('annotations' defaults to [])."""
    data = _read_json(ann_file)
    where = str(ann_file)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a COCO instances object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{where}: missing or non-list {key!r}")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{where}: 'annotations' must be a list")
    data.setdefault("annotations", [])
    return data


def _parse_categories(categories: list, where: str) -> dict:
    """{category id: name} of a COCO 'categories' list; ValueError for a missing or duplicate id."""
    file_cats = {}
    for k, c in enumerate(categories):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise ValueError(f"{where}: categories[{k}] has no integer 'id': {c!r}")
        if c["id"] in file_cats:
            raise ValueError(f"{where}: duplicate category id {c['id']}")
        file_cats[c["id"]] = str(c.get("name", c["id"]))
    return file_cats


def _parse_images(records: list, where: str, images_dir: Path | None) -> dict:
    """{image id: record} of a COCO 'images' list; with ``images_dir``, every file must exist there."""
    images = {}
    for k, im in enumerate(records):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise ValueError(f"{where}: images[{k}] has no integer 'id': {im!r}")
        iid = im["id"]
        if iid in images:
            raise ValueError(f"{where}: duplicate image id {iid}")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ValueError(f"{where}: image id {iid} has no 'file_name'")
        for dim in ("width", "height"):
            if not _is_number(im.get(dim)) or im[dim] <= 0:
                raise ValueError(f"{where}: image id {iid} ({im['file_name']}) has no positive {dim!r}: "
                                 f"{im.get(dim)!r}")
        if images_dir is not None and not (images_dir / im["file_name"]).is_file():
            raise FileNotFoundError(f"{where}: image file not found: {images_dir / im['file_name']} "
                                    f"(image id {iid})")
        images[iid] = im
    return images


def _check_bbox(bbox, image: dict, rec: str) -> tuple:
    """An annotation's [x, y, w, h]: 4 finite numbers, no negative size, inside the image (within
    BOX_TOLERANCE px)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise ValueError(f"{rec}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"{rec}: bbox {list(bbox)} has negative width or height")
    W, H = float(image["width"]), float(image["height"])
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > W + t or y + h > H + t:
        raise ValueError(f"{rec}: bbox {list(bbox)} [x, y, w, h] is outside the image "
                         f"({image['file_name']}, {W:g}x{H:g})")
    return x, y, w, h


def _coco_index(data: dict):
    """A pycocotools COCO object over the (checked) annotation data, built without its prints."""
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_categories(ann_file) -> dict:
    """{category id: name} of a COCO instances file (checked like CocoDetection does)."""
    ann_file = Path(ann_file)
    return _parse_categories(_read_instances(ann_file)["categories"], str(ann_file))


def check_same_categories(train_ann, val_ann) -> None:
    """ValueError naming both files unless their categories have the same ids and names (labels are
    category ids in sorted order, so a model trained on one file is evaluated on the other)."""
    train, val = read_categories(train_ann), read_categories(val_ann)
    if train == val:
        return
    diff = [f"{c} {train[c]!r} only in {train_ann}" for c in sorted(set(train) - set(val))]
    diff += [f"{c} {val[c]!r} only in {val_ann}" for c in sorted(set(val) - set(train))]
    diff += [f"{c} is {train[c]!r} in train, {val[c]!r} in val" for c in sorted(set(train) & set(val))
             if train[c] != val[c]]
    raise ValueError(f"the train annotations {train_ann} and the val annotations {val_ann} have different "
                     f"categories (category id, name): {'; '.join(diff)}")


def _label_map(file_cats: dict, category_ids, where: str) -> list:
    """The sorted category ids that become labels 0..K-1: ``category_ids`` (each must be one of the
    file's) or every category of the file."""
    if category_ids is None:
        cat_ids = sorted(file_cats)
    else:
        cat_ids = sorted(int(c) for c in category_ids)
        if len(set(cat_ids)) != len(cat_ids):
            raise ValueError(f"category_ids has duplicates: {list(category_ids)}")
        missing = [c for c in cat_ids if c not in file_cats]
        if missing:
            raise ValueError(f"{where}: category_ids {missing} are not among the file's categories "
                             f"{sorted(file_cats)}")
    if not cat_ids:
        raise ValueError(f"{where}: no categories")
    return cat_ids


@dataclass
class CocoAnnotations:
    """A COCO instances file after every check (see :func:`read_coco_annotations`).

    ``boxes[image id]``: usable boxes as clipped xyxy pixel tuples; ``labels[image id]``: their labels
    (label k = ``category_ids[k]``); ``skipped``: {"crowd" | "degenerate": count}; ``data``: the file's
    JSON (``iscrowd`` and ``area`` filled in where missing, as COCOeval reads them)."""
    data: dict
    images: dict
    category_ids: list
    class_names: list
    boxes: dict
    labels: dict
    skipped: dict


def read_coco_annotations(ann_file, *, category_ids=None, images_dir=None) -> CocoAnnotations:
    """Read and check a COCO instances file: every record, box and category (errors name the file and
    the annotation/image id; see the module docstring). With ``images_dir``, every image file must exist
    there. Crowd and zero-size boxes are skipped, counted, and reported in one warning. The one check of
    COCO annotations: ``CocoDetection`` and the YOLO converter both read through it."""
    where = str(ann_file)
    data = _read_instances(Path(ann_file))
    file_cats = _parse_categories(data["categories"], where)
    cat_ids = _label_map(file_cats, category_ids, where)
    images = _parse_images(data["images"], where, None if images_dir is None else Path(images_dir))
    boxes, labels, skipped = _parse_annotations(data["annotations"], images, file_cats, cat_ids, where)
    if skipped:
        warnings.warn(f"{where}: skipped {sum(skipped.values())} annotations ("
                      + ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) + ")", stacklevel=3)
    return CocoAnnotations(data, images, cat_ids, [file_cats[c] for c in cat_ids], boxes, labels, skipped)


def _parse_annotations(annotations: list, images: dict, file_cats: dict, cat_ids: list, where: str):
    """Checked boxes (xyxy, clipped) and labels per image id; crowd and degenerate boxes are counted
    in the returned ``skipped`` instead."""
    cat_to_label = {c: k for k, c in enumerate(cat_ids)}
    boxes = {iid: [] for iid in images}
    labels = {iid: [] for iid in images}
    skipped = {}
    seen = set()
    for k, a in enumerate(annotations):
        iid, box, reason = _check_annotation(k, a, seen, images, file_cats, cat_ids, where)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        boxes[iid].append(box)
        labels[iid].append(cat_to_label[a["category_id"]])
    return boxes, labels, skipped


def _check_annotation(k: int, a, seen: set, images: dict, file_cats: dict, cat_ids: list, where: str):
    """(image id, clipped xyxy box, None) for a usable annotation, (image id, None, reason) for a
    skipped one; ValueError naming the annotation and image id for a bad one."""
    if not isinstance(a, dict) or not _is_int(a.get("id")):
        raise ValueError(f"{where}: annotations[{k}] has no integer 'id': {a!r}")
    aid = a["id"]
    if aid in seen:
        raise ValueError(f"{where}: duplicate annotation id {aid}")
    seen.add(aid)
    iid = a.get("image_id")
    rec = f"{where}: annotation id {aid} (image id {iid})"
    if iid not in images:
        raise ValueError(f"{rec}: unknown image id {iid!r}")
    _check_category(a.get("category_id"), file_cats, cat_ids, rec)
    x, y, w, h = _check_bbox(a.get("bbox"), images[iid], rec)
    a.setdefault("iscrowd", 0)  # COCOeval reads both; fill them for hand-made files
    a.setdefault("area", w * h)
    if a["iscrowd"]:
        return iid, None, "crowd"
    W, H = float(images[iid]["width"]), float(images[iid]["height"])
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, W), min(y + h, H)
    if w == 0 or h == 0 or x1 <= x0 or y1 <= y0:
        return iid, None, "degenerate"
    return iid, (x0, y0, x1, y1), None


def _check_category(cid, file_cats: dict, cat_ids: list, rec: str) -> None:
    """ValueError naming the annotation unless ``cid`` is one of the file's categories and of ``cat_ids``."""
    if cid not in file_cats:
        raise ValueError(f"{rec}: unknown category id {cid!r} (file categories: {sorted(file_cats)})")
    if cid not in cat_ids:
        raise ValueError(f"{rec}: category id {cid!r} ({file_cats[cid]}) is not in category_ids {cat_ids}")


class CocoDetection(torch.utils.data.Dataset):
    """A COCO instances file (bounding boxes) as a torch Dataset.

    ``category_ids``: the label mapping to use (sorted; label k is the k-th smallest id); give the
    training set's ``.category_ids`` to the validation set so labels agree. Default: every category of
    the file. Labels are contiguous 0..K-1; ``label_to_category_id`` maps back for COCOeval.
    ``cache_images`` keeps the decoded images in memory (as uint8) after the first load.
    ``check_files`` checks at construction that every image file exists.
    """

    def __init__(self, images_dir, ann_file, *, category_ids=None, cache_images: bool = False,
                 check_files: bool = True):
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.images_dir} (for {self.ann_file})")
        ann = read_coco_annotations(self.ann_file, category_ids=category_ids,
                                    images_dir=self.images_dir if check_files else None)
        self.category_ids, self.class_names, self.skipped = ann.category_ids, ann.class_names, ann.skipped
        self.num_classes = len(self.category_ids)
        self._set_items(ann.images, ann.boxes, ann.labels)
        self.cache_images = cache_images
        self._cache = {}
        self.coco = _coco_index(ann.data)

    def _set_items(self, images: dict, boxes: dict, labels: dict) -> None:
        """Items in image id order: boxes (n, 4) float32 and labels (n,) int64 per image."""
        self.image_ids = sorted(images)
        self._images = images
        self._boxes = [torch.tensor(boxes[i], dtype=torch.float32).reshape(-1, 4) for i in self.image_ids]
        self._labels = [torch.tensor(labels[i], dtype=torch.int64) for i in self.image_ids]
        self.num_annotations = sum(len(b) for b in self._boxes)

    def __len__(self):
        return len(self.image_ids)

    def label_to_category_id(self, label) -> int:
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label must be in [0, {self.num_classes}), got {label}")
        return self.category_ids[label]

    def image_info(self, index) -> dict:
        """The COCO image record of item ``index``."""
        return self._images[self.image_ids[index]]

    def _load(self, index) -> np.ndarray:
        if index in self._cache:
            return self._cache[index]
        info = self.image_info(index)
        path = self.images_dir / info["file_name"]
        try:
            arr = _load_uint8(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.ann_file}: image file not found: {path} (image id {info['id']})") from None
        except ValueError as e:
            raise ValueError(f"{self.ann_file}: image id {info['id']}: {e}") from e
        if arr.shape[0] != info["height"] or arr.shape[1] != info["width"]:
            raise ValueError(f"{self.ann_file}: image id {info['id']} ({path}) is {arr.shape[1]}x{arr.shape[0]}, "
                             f"but the annotation file says {info['width']}x{info['height']}")
        if self.cache_images:
            self._cache[index] = arr
        return arr

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        image = _to_tensor(self._load(index))
        target = {"boxes": self._boxes[index].clone(), "labels": self._labels[index].clone(),
                  "image_id": int(self.image_ids[index])}
        return image, target

    def __repr__(self):
        return (f"CocoDetection({self.ann_file}, images={len(self)}, annotations={self.num_annotations}, "
                f"classes={self.num_classes}, skipped={self.skipped})")


class ImageFolder(torch.utils.data.Dataset):
    """Unlabelled images (png/jpg) in ``folder``, sorted by name, or the subset named by ``file_list``
    (a list of file names relative to ``folder``, or the path of a JSON file holding such a list).
    Items are ``(image, {"image_id": index, "file_name": name})``.

    ``check_images`` (default): every image is decoded once at construction, and unreadable files
    (not an image, truncated, empty) raise one ValueError that names the folder and lists them
    (:func:`check_images_readable`). They are not skipped: the folder is fixed or the files
    removed, so every run and every resume sees the same images at the same indices."""

    def __init__(self, folder, *, file_list=None, cache_images: bool = False, check_images: bool = True):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.folder}")
        names = self._list_folder() if file_list is None else self._read_file_list(file_list)
        if check_images:
            check_images_readable([self.folder / n for n in names], f"image folder {self.folder}")
        self.file_names = names
        self.cache_images = cache_images
        self._cache = {}

    def _list_folder(self) -> list:
        names = sorted(p.name for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not names:
            raise ValueError(f"image folder {self.folder} has no {'/'.join(IMAGE_EXTENSIONS)} images")
        return names

    def _read_file_list(self, file_list) -> list:
        source = "file_list"
        if isinstance(file_list, (str, os.PathLike)):
            source = str(file_list)
            file_list = _read_json(file_list)
            if not isinstance(file_list, list):
                raise ValueError(f"{source}: expected a JSON list of file names")
        names = list(file_list)
        if not names:
            raise ValueError(f"{source} names no images (folder {self.folder})")
        for n in names:
            if not isinstance(n, str) or not (self.folder / n).is_file():
                raise FileNotFoundError(f"{source}: image file not found: {self.folder / str(n)}")
        return names

    def __len__(self):
        return len(self.file_names)

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        name = self.file_names[index]
        arr = self._cache.get(index)
        if arr is None:
            arr = _load_uint8(self.folder / name)
            if self.cache_images:
                self._cache[index] = arr
        return _to_tensor(arr), {"image_id": index, "file_name": name}

    def __repr__(self):
        return f"ImageFolder({self.folder}, images={len(self)})"
