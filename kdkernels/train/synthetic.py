"""Deterministic synthetic COCO-format detection data: textured shapes on cluttered backgrounds.

    from kdkernels.train.synthetic import make_synthetic_coco
    info = make_synthetic_coco("data/shapes96", image_size=96, seed=0)
    # info["train_images"], info["train_ann"], info["val_images"], info["val_ann"], info["unlabeled_images"], ...

Layout written under ``out_dir``::

    images/train/000000.png ...        every train image (labelled or not)
    images/unlabeled/000000.png ...    extra unlabelled images (no annotations anywhere)
    images/val/000000.png ...
    annotations/instances_train.json   COCO instances for the labelled train images only
    annotations/instances_val.json
    annotations/train_unlabeled_images.json   JSON list of train file names left without labels
                                               (non-empty only when label_fraction < 1)
    dataset.json                       generation parameters, class names and counts

What an image holds: a background (two-colour gradient plus low-frequency noise), clutter that is
not an object (lines, arcs, irregular blobs), then 1..max_objects shapes, each a class from
``CLASS_NAMES`` (filled circle, ring, filled square, hollow square, triangle, cross, diamond, ellipse,
star, hexagon; the first ``num_classes`` are used) filled with a texture (solid, stripes, checker,
noise, gradient) in random colours. The class is carried by the shape alone: colours and textures
are independent of it, and several classes are look-alikes (ring/circle differ by the hole,
hollow/filled square likewise, ellipse/circle by the aspect ratio, diamond/square by the rotation and
aspect, hexagon/circle at small scale). Sizes are log-uniform from ``min_size`` px to
``max_size_frac`` of the image side (about half are under 16 px at 96 px). Later objects occlude
earlier ones and some are placed next to an existing one on purpose; an object whose visible fraction
is under ``1 - max_occlusion`` is left unannotated (but still drawn). A few thin lines are drawn over
the objects, then the whole image gets colour jitter (brightness, contrast, per-channel gain) and
pixel noise. Drawing is anti-aliased by supersampling.

Each annotation's ``bbox`` is ``[x, y, w, h]`` in pixels, the full extent of the object's shape
(including any part hidden behind a later object, clipped to the image), exact to 1/4 px; ``area``
is ``w * h``; ``visible`` (extra key, ignored by pycocotools) is the unoccluded fraction of the shape.
Category ids are non-contiguous like COCO's (``CATEGORY_IDS``).

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so the same
arguments give byte-identical files.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "CATEGORY_IDS", "make_synthetic_coco", "ensure_synthetic_coco"]

GENERATOR_VERSION = 1
CLASS_NAMES = ("circle", "ring", "square", "hollow_square", "triangle", "cross", "diamond", "ellipse",
               "star", "hexagon")
CATEGORY_IDS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)  # non-contiguous, like COCO's
TEXTURES = ("solid", "stripes", "checker", "noise", "gradient")
TEXTURE_P = (0.35, 0.2, 0.15, 0.15, 0.15)
_SPLIT_CODE = {"train": 1, "unlabeled": 2, "val": 3, "label_subset": 4}
SS = 4  # supersampling factor for anti-aliased masks and quarter-pixel boxes


# ----------------------------------------------------------------------------------------------
# shapes: outer polygon and optional hole, in local coordinates with radius ~1
# ----------------------------------------------------------------------------------------------

def _circle_pts(n=48, r=1.0, aspect=1.0):
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([r * np.cos(t), r * aspect * np.sin(t)], axis=1)


def _shape(rng, name):
    """-> (outer (N,2), hole (M,2) or None, rotation in radians)."""
    any_rot = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        return _circle_pts(), None, 0.0
    if name == "ring":
        return _circle_pts(), _circle_pts(r=rng.uniform(0.5, 0.7)), 0.0
    sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    small_rot = math.radians(rng.uniform(-12, 12))
    if name == "square":
        return sq, None, small_rot
    if name == "hollow_square":
        return sq, sq * rng.uniform(0.55, 0.72), small_rot
    if name == "triangle":
        return _circle_pts(3), None, any_rot
    if name == "cross":
        w = rng.uniform(0.25, 0.4)
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
               (-1, -w), (-w, -w)]
        return np.array(pts, dtype=np.float64), None, math.radians(rng.uniform(-20, 20))
    if name == "diamond":
        a = rng.uniform(0.5, 0.75)
        pts = np.array([[1, 0], [0, a], [-1, 0], [0, -a]], dtype=np.float64)
        return pts, None, math.radians(rng.choice([0.0, 90.0]) + rng.uniform(-12, 12))
    if name == "ellipse":
        return _circle_pts(aspect=rng.uniform(0.4, 0.65)), None, any_rot
    if name == "star":
        t = np.linspace(0.0, 2 * math.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1), None, any_rot
    if name == "hexagon":
        return _circle_pts(6), None, any_rot
    raise ValueError(f"unknown shape {name!r}")


def _place(outer, hole, rot, cx, cy, size):
    """Rotate, scale so the larger side of the outer polygon's extent is ``size``, translate."""
    c, s = math.cos(rot), math.sin(rot)
    R = np.array([[c, -s], [s, c]])
    outer = outer @ R.T
    hole = None if hole is None else hole @ R.T
    ext = (outer.max(0) - outer.min(0)).max()
    k = size / ext
    mid = (outer.max(0) + outer.min(0)) / 2
    off = np.array([cx, cy]) - mid * k
    return outer * k + off, (None if hole is None else hole * k + off)


def _hires_mask(S, polys):
    """polys: list of (points (N,2) in image px, fill 0/255). -> (alpha (S,S) float32, hi (S*SS,S*SS) bool)."""
    hi = Image.new("L", (S * SS, S * SS), 0)
    d = ImageDraw.Draw(hi)
    for pts, fill in polys:
        d.polygon([(float(x), float(y)) for x, y in pts * SS], fill=fill)
    alpha = np.asarray(hi.reduce(SS), dtype=np.float32) / 255.0
    return alpha, np.asarray(hi) > 127


# ----------------------------------------------------------------------------------------------
# textures and compositing
# ----------------------------------------------------------------------------------------------

def _smooth_noise(rng, S, grid):
    g = rng.random((grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((S, S), Image.BILINEAR), dtype=np.float32)


def _texture(rng, S, xx, yy, c1, c2, kind):
    if kind == "solid":
        return np.broadcast_to(c1, (S, S, 3))
    th = rng.uniform(0, math.pi)
    u = xx * math.cos(th) + yy * math.sin(th)
    if kind == "stripes":
        m = ((u / rng.uniform(2.5, 8.0) + rng.random()) % 1.0) < 0.5
    elif kind == "checker":
        v = -xx * math.sin(th) + yy * math.cos(th)
        p = rng.uniform(2.5, 7.0)
        m = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    elif kind == "noise":
        m = _smooth_noise(rng, S, int(rng.integers(6, 16)))
    else:  # gradient
        m = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
    m = m.astype(np.float32)[..., None]
    return c1 * (1 - m) + c2 * m


def _blend(img, alpha, color_or_tex):
    a = alpha[..., None]
    img *= 1 - a
    img += a * color_or_tex


def _contrasting_color(rng, img, alpha, min_dist=0.28, tries=8):
    w = alpha.sum()
    local = (img * alpha[..., None]).sum((0, 1)) / max(float(w), 1e-6)
    best, best_d = None, -1.0
    for _ in range(tries):
        c = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        d = float(np.linalg.norm(c - local))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


# ----------------------------------------------------------------------------------------------
# one image
# ----------------------------------------------------------------------------------------------

def _clutter(rng, img, S, xx, yy, n_lines, n_arcs, n_blobs, thin_only=False):
    for _ in range(n_lines):
        hi = Image.new("L", (S * SS, S * SS), 0)
        p = rng.uniform(-0.1 * S, 1.1 * S, 4) * SS
        width = (1 if thin_only else int(rng.integers(1, 3))) * SS
        ImageDraw.Draw(hi).line([(p[0], p[1]), (p[2], p[3])], fill=255, width=width)
        alpha = np.asarray(hi.reduce(SS), dtype=np.float32) / 255.0
        _blend(img, alpha * rng.uniform(0.5, 1.0), rng.uniform(0, 1, 3).astype(np.float32))
    for _ in range(n_arcs):
        hi = Image.new("L", (S * SS, S * SS), 0)
        r = rng.uniform(3, 0.25 * S)
        cx, cy = rng.uniform(0, S, 2)
        start = rng.uniform(0, 360)
        ImageDraw.Draw(hi).arc([(cx - r) * SS, (cy - r) * SS, (cx + r) * SS, (cy + r) * SS], start,
                               start + rng.uniform(60, 220), fill=255, width=int(rng.integers(1, 3)) * SS)
        alpha = np.asarray(hi.reduce(SS), dtype=np.float32) / 255.0
        _blend(img, alpha, rng.uniform(0, 1, 3).astype(np.float32))
    for _ in range(n_blobs):
        # smooth amoeba: radius = r0 * (1 + low-order Fourier wobble), unlike any of the shape classes
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        k = np.arange(1, 4)[:, None]
        wob = (rng.uniform(0.12, 0.3, (3, 1)) * np.cos(k * t + rng.uniform(0, 2 * math.pi, (3, 1)))).sum(0)
        r = rng.uniform(3, 0.15 * S) * np.clip(1 + wob, 0.3, None)
        cx, cy = rng.uniform(0, S, 2)
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
        alpha, _ = _hires_mask(S, [(pts, 255)])
        c1 = rng.uniform(0, 1, 3).astype(np.float32)
        c2 = np.clip(c1 + rng.normal(0, 0.3, 3), 0, 1).astype(np.float32)
        kind = TEXTURES[int(rng.choice(len(TEXTURES), p=TEXTURE_P))]
        _blend(img, alpha, _texture(rng, S, xx, yy, c1, c2, kind))


def _render(rng, p, xx, yy):
    """-> (uint8 (S,S,3), list of dicts with class index, bbox [x,y,w,h], visible fraction)."""
    S = p["image_size"]
    # background: gradient between two colours + low-frequency noise
    ca, cb = rng.uniform(0.05, 0.95, (2, 3)).astype(np.float32)
    th = rng.uniform(0, 2 * math.pi)
    g = xx * math.cos(th) + yy * math.sin(th)
    g = ((g - g.min()) / max(float(np.ptp(g)), 1e-6))[..., None]
    img = ca * (1 - g) + cb * g
    amp = rng.uniform(0.05, 0.3)
    img += amp * (_smooth_noise(rng, S, int(rng.integers(3, 9)))[..., None] - 0.5) * rng.uniform(0.3, 1.0, 3)
    img = np.clip(img, 0, 1).astype(np.float32)

    c = p["clutter"]
    _clutter(rng, img, S, xx, yy, rng.poisson(2.0 * c), rng.poisson(1.0 * c), rng.poisson(1.2 * c))

    # objects
    n_obj = int(rng.integers(1, p["max_objects"] + 1))
    lo, hi_size = math.log(p["min_size"]), math.log(max(p["max_size_frac"] * S, p["min_size"]))
    objs = []  # (class, alpha, box)
    for i in range(n_obj):
        cls = int(rng.integers(p["num_classes"]))
        size = math.exp(rng.uniform(lo, hi_size))
        half = 0.5 * size
        if objs and rng.random() < p["overlap_prob"]:
            _, _, pb = objs[int(rng.integers(len(objs)))]
            pcx, pcy = pb[0] + pb[2] / 2, pb[1] + pb[3] / 2
            d = rng.uniform(0.3, 0.9) * (max(pb[2], pb[3]) / 2 + half)
            a = rng.uniform(0, 2 * math.pi)
            cx, cy = pcx + d * math.cos(a), pcy + d * math.sin(a)
        else:
            cx, cy = rng.uniform(0, S, 2)
        cx = float(np.clip(cx, half, S - half))
        cy = float(np.clip(cy, half, S - half))
        outer, hole, rot = _shape(rng, p["names"][cls])
        outer, hole = _place(outer, hole, rot, cx, cy, size)
        polys = [(outer, 255)] + ([] if hole is None else [(hole, 0)])
        alpha, mask = _hires_mask(S, polys)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0 or alpha.sum() <= 0:
            continue
        box = (float(cols[0]) / SS, float(rows[0]) / SS, float(cols[-1] + 1 - cols[0]) / SS,
               float(rows[-1] + 1 - rows[0]) / SS)
        c1 = _contrasting_color(rng, img, alpha)
        c2 = np.clip(c1 + rng.normal(0, 0.3, 3), 0, 1).astype(np.float32)
        kind = TEXTURES[int(rng.choice(len(TEXTURES), p=TEXTURE_P))]
        _blend(img, alpha, _texture(rng, S, xx, yy, c1, c2, kind))
        objs.append((cls, alpha, box))

    # visibility: what of each object is not covered by later ones
    trans = np.ones((S, S), dtype=np.float32)
    anns = []
    for cls, alpha, box in reversed(objs):
        vis = float((alpha * trans).sum() / alpha.sum())
        trans *= 1 - alpha
        if vis >= 1 - p["max_occlusion"]:
            anns.append({"class": cls, "bbox": box, "visible": vis})
    anns.reverse()

    # a few thin lines over everything, then photometric jitter and pixel noise
    _clutter(rng, img, S, xx, yy, int(rng.random() < 0.3 * c), 0, 0, thin_only=True)
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)
    mean = img.mean((0, 1))
    img = (img - mean) * rng.uniform(0.7, 1.2) + mean
    img = img * gain.astype(np.float32) + rng.normal(0, p["noise_std"] * rng.random(), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), anns


# ----------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------

def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def _coco(images, anns, categories, split):
    return {
        "info": {"description": f"kdkernels synthetic shapes ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories,
    }


def _check_int(v, name, minimum):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def make_synthetic_coco(out_dir, *, image_size: int = 96, num_train: int = 1000, num_unlabeled: int = 1000,
                        num_val: int = 300, num_classes: int = 8, seed: int = 0, label_fraction: float = 1.0,
                        max_objects: int = 6, min_size: float = 6.0, max_size_frac: float = 0.45,
                        max_occlusion: float = 0.7, overlap_prob: float = 0.35, clutter: float = 1.0,
                        noise_std: float = 0.04, classes=None, overwrite: bool = False) -> dict:
    """Write a synthetic COCO detection set under ``out_dir`` (see the module docstring); return paths and counts.

    ``label_fraction`` in (0, 1]: that fraction of the train images (at least one, chosen with the seed)
    keeps its annotations in instances_train.json; the rest are listed in
    annotations/train_unlabeled_images.json. ``out_dir`` must be empty or absent unless ``overwrite``,
    which deletes the images/, annotations/ and dataset.json a previous call wrote there.
    ``classes``: shape names from ``CLASS_NAMES`` to use instead of the first ``num_classes``
    (``num_classes`` is then ``len(classes)``); each keeps its own category id from ``CATEGORY_IDS``.
    Easier sets for quick demos: distinct shapes (e.g. circle, square, triangle, cross), a larger
    ``min_size``, less ``clutter``, ``overlap_prob`` and ``max_occlusion``.
    """
    params = _checked_params(image_size=image_size, num_train=num_train, num_unlabeled=num_unlabeled,
                             num_val=num_val, num_classes=num_classes, seed=seed, label_fraction=label_fraction,
                             max_objects=max_objects, min_size=min_size, max_size_frac=max_size_frac,
                             max_occlusion=max_occlusion, overlap_prob=overlap_prob, clutter=clutter,
                             noise_std=noise_std, classes=classes)
    out = Path(out_dir)
    dirs = _prepare_out_dir(out, overwrite)
    names = params["classes"] if params["classes"] is not None else list(CLASS_NAMES[:params["num_classes"]])
    cat_ids = [CATEGORY_IDS[CLASS_NAMES.index(n)] for n in names]
    t0 = time.perf_counter()
    splits = _render_splits(params, names, cat_ids, dirs)
    seconds = time.perf_counter() - t0
    paths = _write_outputs(out, dirs, params, names, cat_ids, splits)
    return {**paths, **splits["counts"], "category_ids": cat_ids, "class_names": list(names),
            "params": params, "seconds": seconds}


def _checked_params(*, image_size, num_train, num_unlabeled, num_val, num_classes, seed, label_fraction,
                    max_objects, min_size, max_size_frac, max_occlusion, overlap_prob, clutter, noise_std,
                    classes) -> dict:
    """make_synthetic_coco's arguments checked (ValueError naming the argument) and normalised: the
    ``params`` it records in dataset.json."""
    S = _check_int(image_size, "image_size", 16)
    counts = {k: _check_int(v, k, 0) for k, v in (("num_train", num_train), ("num_unlabeled", num_unlabeled),
                                                  ("num_val", num_val))}
    num_classes = _check_int(num_classes, "num_classes", 1)
    seed = _check_int(seed, "seed", 0)
    max_objects = _check_int(max_objects, "max_objects", 1)
    classes, num_classes = _checked_classes(classes, num_classes)
    _check_ranges(S, label_fraction, min_size, max_size_frac, max_occlusion, overlap_prob, clutter, noise_std)
    return dict(image_size=S, **counts, num_classes=num_classes, seed=seed, label_fraction=float(label_fraction),
                max_objects=max_objects, min_size=float(min_size), max_size_frac=float(max_size_frac),
                max_occlusion=float(max_occlusion), overlap_prob=float(overlap_prob), clutter=float(clutter),
                noise_std=float(noise_std), classes=classes)


def _checked_classes(classes, num_classes: int):
    """(classes as a list or None, the number of classes); ValueError for unknown or repeated shapes."""
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or not len(classes):
            raise ValueError(f"classes must be a non-empty list of shape names, got {classes!r}")
        classes = list(classes)
        bad = [c for c in classes if c not in CLASS_NAMES]
        if bad:
            raise ValueError(f"classes: unknown shape {bad[0]!r} (shapes available: {', '.join(CLASS_NAMES)})")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {classes}")
        num_classes = len(classes)
    if num_classes > len(CLASS_NAMES):
        raise ValueError(f"num_classes must be <= {len(CLASS_NAMES)} (shapes available: {', '.join(CLASS_NAMES)}), "
                         f"got {num_classes}")
    return classes, num_classes


def _check_ranges(S, label_fraction, min_size, max_size_frac, max_occlusion, overlap_prob, clutter, noise_std):
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")
    if not 2 <= min_size <= max_size_frac * S:
        raise ValueError(f"need 2 <= min_size <= max_size_frac * image_size, got min_size={min_size}, "
                         f"max_size_frac * image_size={max_size_frac * S}")
    if not 0 <= max_occlusion <= 1:
        raise ValueError(f"max_occlusion must be in [0, 1], got {max_occlusion!r}")
    if not 0 <= overlap_prob <= 1:
        raise ValueError(f"overlap_prob must be in [0, 1], got {overlap_prob!r}")
    if not clutter >= 0 or not noise_std >= 0:
        raise ValueError(f"clutter and noise_std must be >= 0, got clutter={clutter!r}, noise_std={noise_std!r}")


def _prepare_out_dir(out: Path, overwrite: bool) -> dict:
    """The split image folders under `out` (created); a non-empty `out` only with overwrite, which
    deletes what a previous call wrote there."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace the data set there")
        for sub in ("images", "annotations"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "dataset.json").unlink(missing_ok=True)
    dirs = {s: out / "images" / s for s in ("train", "unlabeled", "val")}
    for d in list(dirs.values()) + [out / "annotations"]:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _render_split(split: str, n: int, render_params: dict, folder: Path) -> list:
    """Draw and save the `n` images of `split`; [(image id, file name, objects)]."""
    S, seed = render_params["image_size"], render_params["seed"]
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    recs = []
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        arr, anns = _render(rng, render_params, xx, yy)
        name = f"{i:06d}.png"
        Image.fromarray(arr).save(folder / name, format="PNG")
        recs.append((i + 1, name, anns))
    return recs


def _to_coco(recs: list, split: str, S: int, cat_ids: list, categories: list):
    """(COCO instances dict, number of annotations) of rendered records."""
    images, anns = [], []
    for img_id, name, objs in recs:
        images.append({"id": img_id, "file_name": name, "width": S, "height": S})
        for o in objs:
            x, y, w, h = o["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_ids[o["class"]],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "visible": round(o["visible"], 3)})
    return _coco(images, anns, categories, split), len(anns)


def _labeled_subset(num_train: int, label_fraction: float, seed: int) -> set:
    """Indices of the train images that keep their annotations (all unless label_fraction < 1)."""
    if num_train and label_fraction < 1:
        n_lab = max(1, int(round(num_train * label_fraction)))
        pick = np.random.default_rng([seed, _SPLIT_CODE["label_subset"]]).choice(num_train, n_lab, replace=False)
        return set(int(k) for k in pick)
    return set(range(num_train))


def _render_splits(params: dict, names: list, cat_ids: list, dirs: dict) -> dict:
    """Render the train, val and unlabeled images (each from its own generator); the train and val
    COCO dicts, the list of train images left unlabeled, and the counts."""
    render_params = {**params, "names": names}  # _render draws class index k as shape names[k]
    categories = [{"id": cid, "name": n, "supercategory": "shape"} for n, cid in zip(names, cat_ids)]
    S, num_train = params["image_size"], params["num_train"]
    train = _render_split("train", num_train, render_params, dirs["train"])
    keep = _labeled_subset(num_train, params["label_fraction"], params["seed"])
    train_coco, n_train_anns = _to_coco([r for k, r in enumerate(train) if k in keep], "train", S, cat_ids, categories)
    train_unlab = [r[1] for k, r in enumerate(train) if k not in keep]
    val_coco, n_val_anns = _to_coco(_render_split("val", params["num_val"], render_params, dirs["val"]), "val",
                                    S, cat_ids, categories)
    _render_split("unlabeled", params["num_unlabeled"], render_params, dirs["unlabeled"])
    counts = {
        "num_train": num_train, "num_train_labeled": len(keep), "num_train_unlabeled": len(train_unlab),
        "num_unlabeled": params["num_unlabeled"], "num_val": params["num_val"],
        "num_train_annotations": n_train_anns, "num_val_annotations": n_val_anns,
        "num_classes": params["num_classes"],
    }
    return {"train": train_coco, "val": val_coco, "train_unlabeled": train_unlab, "counts": counts}


def _write_outputs(out: Path, dirs: dict, params: dict, names: list, cat_ids: list, splits: dict) -> dict:
    """Write the annotation files and dataset.json; their paths (and the image folders')."""
    paths = {
        "root": str(out),
        "train_images": str(dirs["train"]),
        "train_ann": str(out / "annotations" / "instances_train.json"),
        "train_unlabeled_list": str(out / "annotations" / "train_unlabeled_images.json"),
        "unlabeled_images": str(dirs["unlabeled"]),
        "val_images": str(dirs["val"]),
        "val_ann": str(out / "annotations" / "instances_val.json"),
        "dataset_json": str(out / "dataset.json"),
    }
    _write_json(paths["train_ann"], splits["train"])
    _write_json(paths["val_ann"], splits["val"])
    _write_json(paths["train_unlabeled_list"], splits["train_unlabeled"])
    meta = {"generator": "kdkernels.train.synthetic", "generator_version": GENERATOR_VERSION, "params": params,
            "category_ids": cat_ids, "class_names": list(names), "counts": splits["counts"]}
    _write_json(paths["dataset_json"], meta)
    return paths


def ensure_synthetic_coco(out_dir, **kwargs) -> dict:
    """``make_synthetic_coco`` unless ``out_dir/dataset.json`` records the same parameters (then reuse it)."""
    out = Path(out_dir)
    meta_path = out / "dataset.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        if meta is not None and meta.get("generator_version") == GENERATOR_VERSION:
            want = {**_defaults(), **{k: v for k, v in kwargs.items() if k != "overwrite"}}
            have = meta.get("params", {})
            if all(_same(have.get(k), v) for k, v in want.items()):
                return _info_from_meta(out, meta)
    return make_synthetic_coco(out, **{**kwargs, "overwrite": True})


def _same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _defaults():
    import inspect
    sig = inspect.signature(make_synthetic_coco)
    return {k: p.default for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and k != "overwrite"}


def _info_from_meta(out, meta):
    a = out / "annotations"
    return {"root": str(out), "train_images": str(out / "images" / "train"),
            "train_ann": str(a / "instances_train.json"),
            "train_unlabeled_list": str(a / "train_unlabeled_images.json"),
            "unlabeled_images": str(out / "images" / "unlabeled"), "val_images": str(out / "images" / "val"),
            "val_ann": str(a / "instances_val.json"), "dataset_json": str(out / "dataset.json"),
            **meta["counts"], "category_ids": meta["category_ids"], "class_names": meta["class_names"],
            "params": meta["params"], "seconds": 0.0}


if __name__ == "__main__":  # python -m kdkernels.train.synthetic OUT_DIR [image_size]
    import sys
    info = make_synthetic_coco(sys.argv[1], image_size=int(sys.argv[2]) if len(sys.argv) > 2 else 96,
                               overwrite=True)
    print(json.dumps({k: v for k, v in info.items() if k != "params"}, indent=1))
