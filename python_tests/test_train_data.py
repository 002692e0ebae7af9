"""Trainer data layer: the synthetic COCO generator, CocoDetection, ImageFolder, collate, and bad data."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
from PIL import Image  # noqa: E402

from kdkernels.train.data import CocoDetection, ImageFolder, check_same_categories, collate, load_image  # noqa: E402
from kdkernels.train.synthetic import CATEGORY_IDS, CLASS_NAMES, ensure_synthetic_coco, make_synthetic_coco  # noqa: E402

SMALL = dict(image_size=48, num_train=12, num_unlabeled=4, num_val=5, min_size=5.0)


def _files(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("synth") / "d", seed=3, **SMALL)


# ---------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------

def test_generation_is_deterministic(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", seed=1, **SMALL)
    b = make_synthetic_coco(tmp_path / "b", seed=1, **SMALL)
    c = make_synthetic_coco(tmp_path / "c", seed=2, **SMALL)
    fa, fb, fc = _files(Path(a["root"])), _files(Path(b["root"])), _files(Path(c["root"]))
    assert len(fa) == 12 + 4 + 5 + 4  # images + 3 annotation files + dataset.json
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["annotations/instances_train.json"] != fc["annotations/instances_train.json"]
    assert sum(fa[k] != fc[k] for k in fa if k.endswith(".png")) == 21


def test_layout_and_return_value(synth):
    root = Path(synth["root"])
    for split, n in (("train", 12), ("unlabeled", 4), ("val", 5)):
        assert len(list((root / "images" / split).glob("*.png"))) == n
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["params"]["seed"] == 3 and meta["params"]["image_size"] == 48
    assert synth["category_ids"] == list(CATEGORY_IDS[:8]) and synth["class_names"] == list(CLASS_NAMES[:8])
    assert synth["num_train_labeled"] == 12 and synth["num_train_unlabeled"] == 0
    assert json.loads(Path(synth["train_unlabeled_list"]).read_text()) == []
    assert synth["num_train_annotations"] >= 12  # at least one object per image survives occlusion


def test_coco_files_load_with_pycocotools(synth):
    from pycocotools.coco import COCO
    for key, n in (("train_ann", 12), ("val_ann", 5)):
        coco = COCO(synth[key])
        assert len(coco.getImgIds()) == n
        assert sorted(coco.getCatIds()) == synth["category_ids"]
        assert len(coco.getAnnIds()) > 0


def test_boxes_inside_images_and_well_formed(synth):
    for key, split in (("train_ann", "train"), ("val_ann", "val")):
        d = json.loads(Path(synth[key]).read_text())
        images = {im["id"]: im for im in d["images"]}
        ids = [a["id"] for a in d["annotations"]]
        assert len(set(ids)) == len(ids)
        for a in d["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= im["width"] and y + h <= im["height"]
            assert a["iscrowd"] == 0 and a["area"] == pytest.approx(w * h)
            assert a["category_id"] in synth["category_ids"]
            assert 0.3 <= a["visible"] <= 1.0
            assert max(w, h) >= 4  # min_size=5 minus anti-aliasing
        for im in d["images"]:
            assert Image.open(Path(synth[f"{split}_images"]) / im["file_name"]).size == (48, 48)


def test_coco_detection_on_synthetic(synth):
    ds = CocoDetection(synth["train_images"], synth["train_ann"])
    assert len(ds) == 12 and ds.num_classes == 8
    assert ds.category_ids == synth["category_ids"] and ds.class_names == synth["class_names"]
    assert ds.skipped == {}
    assert ds.coco.getCatIds() == synth["category_ids"]
    total = 0
    for k in range(len(ds)):
        image, target = ds[k]
        assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
        assert 0 <= image.min() and image.max() <= 1
        b = target["boxes"]
        assert b.dtype == torch.float32 and b.shape[1] == 4
        assert target["labels"].dtype == torch.int64 and target["labels"].shape == (b.shape[0],)
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert (b >= 0).all() and (b <= 48).all()
        assert ((target["labels"] >= 0) & (target["labels"] < 8)).all()
        assert target["image_id"] == ds.image_ids[k]
        total += b.shape[0]
    assert total == synth["num_train_annotations"]
    assert [ds.label_to_category_id(k) for k in range(8)] == synth["category_ids"]
    with pytest.raises(ValueError, match="label"):
        ds.label_to_category_id(8)
    # boxes/labels agree with the JSON (xywh -> xyxy, category id -> label)
    d = json.loads(Path(synth["train_ann"]).read_text())
    first = d["images"][0]["id"]
    anns = [a for a in d["annotations"] if a["image_id"] == first]
    _, t = ds[ds.image_ids.index(first)]
    want = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns])
    torch.testing.assert_close(t["boxes"], want)
    assert t["labels"].tolist() == [synth["category_ids"].index(a["category_id"]) for a in anns]


def test_collate_and_dataloader(synth):
    ds = CocoDetection(synth["val_images"], synth["val_ann"], cache_images=True)
    images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 3
    assert images[0].shape == (3, 48, 48) and set(targets[0]) == {"boxes", "labels", "image_id"}
    torch.testing.assert_close(ds[0][0], ds[0][0])  # cached path


def test_label_fraction(tmp_path):
    info = make_synthetic_coco(tmp_path / "d", seed=0, label_fraction=0.25, **SMALL)
    assert info["num_train_labeled"] == 3 and info["num_train_unlabeled"] == 9
    d = json.loads(Path(info["train_ann"]).read_text())
    unl = json.loads(Path(info["train_unlabeled_list"]).read_text())
    labeled = [im["file_name"] for im in d["images"]]
    assert len(labeled) == 3 and len(unl) == 9
    assert sorted(labeled + unl) == sorted(p.name for p in Path(info["train_images"]).glob("*.png"))
    assert {a["image_id"] for a in d["annotations"]} <= {im["id"] for im in d["images"]}
    assert len(d["categories"]) == 8  # every category listed even when few images are labelled
    ds = CocoDetection(info["train_images"], info["train_ann"])
    assert len(ds) == 3
    rest = ImageFolder(info["train_images"], file_list=info["train_unlabeled_list"])
    assert rest.file_names == unl
    # same seed -> same labelled subset; full fraction keeps everything
    again = make_synthetic_coco(tmp_path / "e", seed=0, label_fraction=0.25, **SMALL)
    assert Path(again["train_ann"]).read_bytes() == Path(info["train_ann"]).read_bytes()
    with pytest.raises(ValueError, match="label_fraction"):
        make_synthetic_coco(tmp_path / "f", label_fraction=0.0, **SMALL)


def test_unlabeled_folder_loads(synth):
    u = ImageFolder(synth["unlabeled_images"])
    assert len(u) == 4
    image, meta = u[2]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert meta == {"image_id": 2, "file_name": "000002.png"}
    images, metas = collate([u[0], u[1]])
    assert len(images) == 2 and metas[1]["file_name"] == "000001.png"
    sub = ImageFolder(synth["unlabeled_images"], file_list=["000003.png", "000001.png"])
    assert len(sub) == 2 and sub[0][1]["file_name"] == "000003.png"


def test_generator_refuses_to_clobber_and_ensure_reuses(tmp_path):
    info = make_synthetic_coco(tmp_path / "d", **SMALL)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_coco(tmp_path / "d", **SMALL)
    stamp = Path(info["train_ann"]).stat().st_mtime_ns
    again = ensure_synthetic_coco(tmp_path / "d", **SMALL)
    assert Path(again["train_ann"]).stat().st_mtime_ns == stamp and again["num_val"] == 5
    other = ensure_synthetic_coco(tmp_path / "d", **{**SMALL, "num_val": 3})
    assert other["num_val"] == 3 and len(list(Path(other["val_images"]).glob("*.png"))) == 3


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_coco(tmp_path / "a", num_classes=11, **SMALL)
    with pytest.raises(ValueError, match="min_size"):
        make_synthetic_coco(tmp_path / "b", **{**SMALL, "min_size": 40.0})


# ---------------------------------------------------------------------------------------------
# bad data: hand-written fixtures
# ---------------------------------------------------------------------------------------------

def _fixture(tmp_path, annotations, *, images=None, categories=None, write_images=True):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    images = images if images is not None else [
        {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 9, "file_name": "b.png", "width": 40, "height": 30},
    ]
    if write_images:
        for im in images:
            Image.fromarray(np.full((im["height"], im["width"], 3), 128, np.uint8)).save(img_dir / im["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": categories or [{"id": 4, "name": "x"}, {"id": 11, "name": "y"}]}))
    return img_dir, ann


def _ann(aid, image_id=7, cat=4, bbox=(1, 2, 10, 5), **kw):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "iscrowd": 0, **kw}


def test_valid_fixture_and_empty_image(tmp_path):
    img_dir, ann = _fixture(tmp_path, [_ann(1), _ann(2, cat=11, bbox=(0, 0, 40, 30))])
    ds = CocoDetection(img_dir, ann)
    assert ds.category_ids == [4, 11] and ds.class_names == ["x", "y"] and ds.skipped == {}
    image, t = ds[0]
    assert image.shape == (3, 30, 40) and t["image_id"] == 7
    torch.testing.assert_close(t["boxes"], torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 40.0, 30.0]]))
    assert t["labels"].tolist() == [0, 1]
    _, empty = ds[1]  # image 9 has no annotations: kept, with (0, 4) boxes
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64
    # an explicit mapping (e.g. the train set's) is honoured
    assert CocoDetection(img_dir, ann, category_ids=[11, 4]).category_ids == [4, 11]


def test_invalid_json(tmp_path):
    img_dir, ann = _fixture(tmp_path, [])
    ann.write_text('{\n "images": [],\n "annotations": [,]\n}')
    with pytest.raises(ValueError, match=r"ann\.json: invalid JSON at line 3 column 18"):
        CocoDetection(img_dir, ann)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


def test_missing_image_file_at_construction(tmp_path):
    img_dir, ann = _fixture(tmp_path, [_ann(1)])
    (img_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png.*image id 9"):
        CocoDetection(img_dir, ann)


def test_missing_image_file_at_load(tmp_path):
    img_dir, ann = _fixture(tmp_path, [_ann(1)])
    ds = CocoDetection(img_dir, ann)
    (img_dir / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.png.*image id 7"):
        ds[0]


def test_image_size_mismatch_at_load(tmp_path):
    img_dir, ann = _fixture(tmp_path, [_ann(1)])
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(img_dir / "a.png")
    with pytest.raises(ValueError, match=r"image id 7.*10x10"):
        CocoDetection(img_dir, ann)[0]


def test_corrupt_image(tmp_path):
    img_dir, ann = _fixture(tmp_path, [_ann(1)])
    (img_dir / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"a\.png"):
        CocoDetection(img_dir, ann)[0]
    with pytest.raises(ValueError, match=r"a\.png"):
        load_image(img_dir / "a.png")
    with pytest.raises(FileNotFoundError, match=r"zz\.png"):
        load_image(img_dir / "zz.png")


@pytest.mark.parametrize("bbox", [(35, 2, 10, 5), (-3, 2, 10, 5), (1, 28, 10, 5), (1, -2, 10, 5)])
def test_box_outside_image(tmp_path, bbox):
    img_dir, ann = _fixture(tmp_path, [_ann(1), _ann(23, image_id=9, bbox=bbox)])
    with pytest.raises(ValueError, match=r"ann\.json.*annotation id 23 \(image id 9\).*outside"):
        CocoDetection(img_dir, ann)


@pytest.mark.parametrize("bbox", [(1, 2, -4, 5), (1, 2, 4, -0.5)])
def test_negative_box_size(tmp_path, bbox):
    img_dir, ann = _fixture(tmp_path, [_ann(5, bbox=bbox)])
    with pytest.raises(ValueError, match=r"ann\.json.*annotation id 5 \(image id 7\).*negative"):
        CocoDetection(img_dir, ann)


@pytest.mark.parametrize("bbox", [(1, 2, 3), "1,2,3,4", (1, 2, float("nan"), 4), (1, 2, True, 4)])
def test_malformed_box(tmp_path, bbox):
    img_dir, ann = _fixture(tmp_path, [_ann(5, bbox=[0, 0, 1, 1])])
    d = json.loads(ann.read_text())
    d["annotations"][0]["bbox"] = bbox if isinstance(bbox, str) else list(bbox)
    ann.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"annotation id 5.*bbox"):
        CocoDetection(img_dir, ann)


def test_unknown_category(tmp_path):
    img_dir, ann = _fixture(tmp_path, [_ann(1), _ann(31, cat=5)])
    with pytest.raises(ValueError, match=r"annotation id 31.*unknown category id 5"):
        CocoDetection(img_dir, ann)
    # a category of the file that the given mapping leaves out is an error too
    img_dir, ann = _fixture(tmp_path, [_ann(1), _ann(32, cat=11)])
    with pytest.raises(ValueError, match=r"annotation id 32.*category id 11"):
        CocoDetection(img_dir, ann, category_ids=[4])
    with pytest.raises(ValueError, match=r"category_ids \[99\]"):
        CocoDetection(img_dir, ann, category_ids=[4, 99])


def test_unknown_image_id_and_duplicates(tmp_path):
    img_dir, ann = _fixture(tmp_path, [_ann(1, image_id=8)])
    with pytest.raises(ValueError, match=r"annotation id 1.*unknown image id 8"):
        CocoDetection(img_dir, ann)
    img_dir, ann = _fixture(tmp_path, [_ann(1), _ann(1)])
    with pytest.raises(ValueError, match="duplicate annotation id 1"):
        CocoDetection(img_dir, ann)


def test_skips_crowd_and_degenerate_with_one_warning(tmp_path):
    anns = [_ann(1), _ann(2, iscrowd=1), _ann(3, iscrowd=1, bbox=(0, 0, 40, 30)), _ann(4, bbox=(3, 3, 0, 5)),
            _ann(5, image_id=9, bbox=(3, 3, 6, 0)), _ann(6, image_id=9, cat=11)]
    img_dir, ann = _fixture(tmp_path, anns)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = CocoDetection(img_dir, ann)
    msgs = [str(w.message) for w in rec if "skipped" in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert "ann.json" in msgs[0] and "crowd: 2" in msgs[0] and "degenerate: 2" in msgs[0]
    assert ds.skipped == {"crowd": 2, "degenerate": 2}
    assert ds[0][1]["boxes"].shape == (1, 4) and ds[1][1]["labels"].tolist() == [1]
    assert ds.num_annotations == 2
    assert len(ds.coco.getAnnIds()) == 6  # the COCO object keeps every record (COCOeval ignores crowds)


def test_coco_eval_runs_on_dataset(synth):
    from pycocotools.cocoeval import COCOeval
    ds = CocoDetection(synth["val_images"], synth["val_ann"])
    dets = []
    for k in range(len(ds)):  # perfect detections from the targets -> AP 1
        _, t = ds[k]
        for b, lab in zip(t["boxes"].tolist(), t["labels"].tolist()):
            dets.append({"image_id": t["image_id"], "category_id": ds.label_to_category_id(lab),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": 1.0})
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"empty has no \.png"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"ghost\.png"):
        ImageFolder(tmp_path / "empty", file_list=["ghost.png"])
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2")
    with pytest.raises(ValueError, match=r"list\.json.*invalid JSON"):
        ImageFolder(tmp_path / "empty", file_list=lst)


def _unlabeled(tmp_path, n=4):
    folder = tmp_path / "unl"
    folder.mkdir()
    for k in range(n):
        Image.fromarray(np.full((20, 30, 3), (40 * k) % 256, np.uint8)).save(folder / f"{k}.png")
    return folder


def test_unreadable_images_fail_the_folder_with_the_list(tmp_path):
    """Policy: unreadable files in an unlabeled folder are an error at construction listing every
    one of them (skipping would silently shift the index -> file mapping a resumed run relies on)."""
    folder = _unlabeled(tmp_path)
    good = (folder / "1.png").read_bytes()
    (folder / "1.png").write_bytes(good[:len(good) // 2])  # truncated
    (folder / "3.png").write_bytes(b"not an image at all")  # garbage
    (folder / "2.png").write_bytes(b"")  # empty
    with pytest.raises(ValueError) as exc:
        ImageFolder(folder)
    msg = str(exc.value)
    assert str(folder) in msg and "3 unreadable" in msg, msg
    for name in ("1.png", "2.png", "3.png"):
        assert name in msg
    assert "0.png" not in msg
    with pytest.raises(ValueError, match=r"1 unreadable.*3\.png"):
        ImageFolder(folder, file_list=["0.png", "3.png"])
    assert len(ImageFolder(folder, file_list=["0.png"])) == 1
    assert len(ImageFolder(folder, check_images=False)) == 4  # opt-out: found at load time instead


def test_unreadable_image_list_is_capped(tmp_path):
    folder = _unlabeled(tmp_path, n=14)
    for k in range(14):
        (folder / f"{k}.png").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"14 unreadable.*and 4 more"):
        ImageFolder(folder)


def test_train_val_categories_must_agree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, train = _fixture(tmp_path / "a", [_ann(1)])
    _, val = _fixture(tmp_path / "b", [_ann(1)])
    check_same_categories(train, val)  # same ids and names
    _, val = _fixture(tmp_path / "b", [_ann(1)], categories=[{"id": 4, "name": "x"}, {"id": 11, "name": "z"}])
    with pytest.raises(ValueError) as exc:
        check_same_categories(train, val)
    msg = str(exc.value)
    assert str(train) in msg and str(val) in msg and "11" in msg and "'y'" in msg and "'z'" in msg, msg
    _, val = _fixture(tmp_path / "b", [_ann(1)], categories=[{"id": 4, "name": "x"}])
    with pytest.raises(ValueError) as exc:
        check_same_categories(train, val)
    msg = str(exc.value)
    assert "11 'y' only in" in msg and str(train) in msg and str(val) in msg, msg
