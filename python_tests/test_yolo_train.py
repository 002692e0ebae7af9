"""kdkernels.integrations.ultralytics end to end: tiny YOLOs (64 px, a few iterations) trained by
KDDetectionTrainer on the embedded synthetic set exported in YOLO format, with the network blocked;
YOLO26 (no DFL); resume; compile left on; the DDP launcher's generated script."""
import csv
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from kdkernels.integrations.ultralytics import KDDetectionTrainer, make_yolo_data  # noqa: E402
from kdkernels.integrations.ultralytics import model as kd_model  # noqa: E402

TINY = dict(image_size=64, num_train=16, num_unlabeled=8, num_val=8, classes=["circle", "square", "triangle", "cross"],
            max_objects=3, min_size=14.0, max_size_frac=0.6, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_yolo_data(tmp_path_factory.mktemp("yolo"), synthetic=TINY, scarce_fraction=0.25)


def _teacher(path: Path, yaml: str) -> str:
    torch.manual_seed(0)
    torch.save({"model": DetectionModel(yaml, nc=4, verbose=False), "train_args": {"imgsz": 64}}, path)
    return str(path)


@pytest.fixture(scope="module")
def teacher11(tmp_path_factory):
    return _teacher(tmp_path_factory.mktemp("t") / "yolo11n_teacher.pt", "yolo11n.yaml")


def _args(data, teacher, tmp_path, **kw):
    args = dict(model="yolo11n.yaml", data=data["data_yaml"], distill_model=teacher, epochs=1, imgsz=64, batch=4,
                device="cpu", workers=0, plots=False, amp=False, mosaic=0.0, warmup_epochs=0, val=False,
                project=str(tmp_path), name="run", exist_ok=True, verbose=False)
    return {**args, **kw}


def _csv(trainer):
    with open(trainer.csv) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection or name lookup is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:2] or args[:1])
        raise OSError("network blocked in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_yolo11_distills_with_unlabeled_images_offline(data, teacher11, tmp_path, no_network):
    trainer = KDDetectionTrainer(overrides=_args(data, teacher11, tmp_path, unlabeled=data["unlabeled"],
                                                 unlabeled_ratio=1.0, kd_T=3.0))
    trainer.train()
    assert no_network == []
    assert trainer.loss_names == ("box_loss", "cls_loss", "dfl_loss", "kd_feat", "kd_cls", "kd_unl", "kd_ld")
    assert len(trainer.train_loader) == 2 * 4  # 4 labelled batches of 4, each followed by an unlabeled one
    (row,) = _csv(trainer)
    for k in ("kd_feat", "kd_cls", "kd_unl", "kd_ld"):
        assert float(row[f"train/{k}"]) > 0, k
    best, _ = load_checkpoint(trainer.best)
    assert type(best) is DetectionModel  # the final checkpoint holds the student alone
    import yaml
    assert yaml.safe_load((trainer.save_dir / "args.yaml").read_text())["kd_T"] == 3.0  # KD keys are run args


def test_yolo26_head_without_dfl_trains(data, tmp_path, no_network):
    teacher = _teacher(tmp_path / "yolo26n_teacher.pt", "yolo26n.yaml")
    trainer = KDDetectionTrainer(overrides=_args(data, teacher, tmp_path, model="yolo26n.yaml"))
    trainer.train()
    assert no_network == []
    assert trainer.loss_names[-3:] == ("kd_feat", "kd_cls", "kd_box")
    (row,) = _csv(trainer)
    assert all(float(row[f"train/{k}"]) > 0 for k in ("kd_feat", "kd_cls", "kd_box"))


class _Stop(Exception):
    pass


def test_resume_continues_at_the_next_epoch_with_the_kd_settings(data, teacher11, tmp_path):
    args = _args(data, teacher11, tmp_path, epochs=2, kd_ld=0.5, kd_feat_threshold=0.2)
    first = KDDetectionTrainer(overrides=args)

    def stop(trainer):
        raise _Stop
    first.add_callback("on_model_save", stop)
    with pytest.raises(_Stop):
        first.train()
    saved, ckpt = load_checkpoint(first.last)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None
    second = KDDetectionTrainer(overrides={"resume": str(first.last)})
    assert second.kd == first.kd and second.kd.kd_ld == 0.5 and second.kd.kd_feat_threshold == 0.2
    restored = {}
    second.add_callback("on_pretrain_routine_end", lambda t: restored.update(
        projector=unwrap_model(t.model).projector.state_dict(), student=unwrap_model(t.model).student_model))
    second.train()
    assert second.start_epoch == 1
    assert [int(r["epoch"]) for r in _csv(second)] == [1, 2]
    for k, v in saved.projector.state_dict().items():  # the trained projector came back with the student
        torch.testing.assert_close(restored["projector"][k], v, msg=k)


def test_compile_stays_on_and_the_kd_terms_compile_without_graph_break(data, teacher11, tmp_path, monkeypatch):
    import ultralytics.engine.trainer as ul_trainer
    compiled = []

    def fast_compile(model, device, mode="default", **kw):  # Ultralytics compiles with inductor: slow on 2 cores
        compiled.append(mode)
        return torch.compile(model, backend="eager")
    monkeypatch.setattr(ul_trainer, "attempt_compile", fast_compile)
    monkeypatch.setattr(kd_model, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    trainer = KDDetectionTrainer(overrides=_args(data, teacher11, tmp_path, compile=True))
    trainer.train()
    assert compiled == [True] and trainer.args.compile is True  # not turned off for distillation
    model = unwrap_model(trainer.model)
    assert hasattr(model._kd_fn, "_torchdynamo_orig_callable")  # compiled with fullgraph=True: a break raises
    (row,) = _csv(trainer)
    assert all(float(row[f"train/{k}"]) > 0 for k in ("kd_feat", "kd_cls", "kd_ld"))


def test_ddp_launcher_script_rebuilds_the_kd_trainer(data, teacher11, tmp_path, monkeypatch):
    """Ultralytics' multi-GPU launcher pickles type(trainer) and its args into a generated script;
    run that script (with train() replaced by a report) in a fresh interpreter. Without cloudpickle
    (the extra installs it for real DDP runs) the standard pickle stands in: it pickles classes by
    reference only, so it proves the trainer class is importable by the script."""
    import importlib.util
    import pickle

    import ultralytics.utils.checks as checks
    from ultralytics.utils import callbacks
    stand_in = importlib.util.find_spec("cloudpickle") is None
    if stand_in:
        monkeypatch.setitem(sys.modules, "cloudpickle", pickle)
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file
    monkeypatch.setattr(checks, "check_requirements", lambda *a, **k: True)  # no pip install of cloudpickle
    trainer = KDDetectionTrainer(overrides=_args(data, teacher11, tmp_path, kd_cls=0.25, unlabeled=data["unlabeled"]))
    if stand_in:  # the integration callbacks hold lambdas, which only cloudpickle can pickle
        trainer.callbacks = callbacks.get_default_callbacks()
    file = generate_ddp_file(trainer)
    try:
        script = Path(file).read_text().replace(
            "trainer.train()", "print('REBUILT', type(trainer).__module__, type(trainer).__name__, trainer.kd.kd_cls, "
                               "trainer.kd.unlabeled, trainer.kd_teacher)")
        run = tmp_path / "ddp_check.py"
        run.write_text(script)
        out = subprocess.run([sys.executable, str(run)], capture_output=True, text=True, timeout=300)
    finally:
        ddp_cleanup(trainer, file)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("REBUILT")][0]
    assert line.split() == ["REBUILT", "kdkernels.integrations.ultralytics.trainer", "KDDetectionTrainer", "0.25",
                            data["unlabeled"], teacher11]


def test_yolo_export_and_label_scarce_split(data):
    root = Path(data["root"])
    names = sorted(p.name for p in (root / "images" / "train").iterdir())
    labeled = [Path(x).name for x in (root / "scarce_labeled.txt").read_text().split()]
    unlabeled = [Path(x).name for x in (root / "scarce_unlabeled.txt").read_text().split()]
    assert sorted(labeled + unlabeled) == names and not set(labeled) & set(unlabeled)
    boxes = {n: len((root / "labels" / "train" / (Path(n).stem + ".txt")).read_text().split("\n")) - 1 for n in names}
    share = sum(boxes[n] for n in labeled) / sum(boxes.values())
    assert share >= 0.25 and share - max(boxes[n] for n in labeled) / sum(boxes.values()) < 0.25  # minimal prefix
    line = (root / "labels" / "train" / "000000.txt").read_text().split("\n")[0].split()
    assert 0 <= int(line[0]) < 4 and all(0 < float(v) <= 1 for v in line[1:])
    assert len(list((root / "images" / "unlabeled").iterdir())) == TINY["num_unlabeled"]


def test_cli_make_data_and_train(data, teacher11, tmp_path, no_network):
    from kdkernels.integrations.ultralytics.cli import main
    out = tmp_path / "yolo"
    assert main(["make-data", f"out={out}", f"coco_root={data['coco_root']}", "scarce_fraction=0.5"]) == 0
    assert (out / "data_scarce.yaml").exists()
    assert main(["train", "model=yolo11n.yaml", f"data={out / 'data.yaml'}", f"distill_model={teacher11}",
                 "epochs=1", "imgsz=64", "batch=8", "device=cpu", "workers=0", "plots=False", "amp=False",
                 "val=False", "mosaic=0", f"project={tmp_path}", "name=cli", "kd_cls=0.5", "kd_ld=0"]) == 0
    (row,) = list(csv.DictReader(open(tmp_path / "cli" / "results.csv")))
    assert "train/kd_cls" in row and "train/kd_ld" not in row and float(row["train/kd_feat"]) > 0
    assert no_network == []


def test_every_unlabeled_term_off_is_refused_before_training(data, teacher11, tmp_path):
    """It crashed at the first unlabeled batch (no loss with a gradient); now the trainer refuses it."""
    with pytest.raises(ValueError, match=r"with kd_feat=0, kd_unl=0, kd_ld=0: no term runs on unlabeled batches"):
        KDDetectionTrainer(overrides=_args(data, teacher11, tmp_path, unlabeled=data["unlabeled"], kd_feat=0,
                                           kd_ld=0, kd_unl=0))


def test_imgsz_not_a_multiple_of_the_stride_is_rounded_up(data, teacher11, tmp_path):
    """As in Ultralytics (imgsz=33 → 64 with a warning); the distillation model's setup forward at 33 px failed."""
    trainer = KDDetectionTrainer(overrides=_args(data, teacher11, tmp_path, imgsz=33, fraction=0.25))
    trainer.train()
    assert trainer.args.imgsz == 64
    (row,) = _csv(trainer)
    assert float(row["train/kd_feat"]) > 0


def test_unreadable_unlabeled_image_fails_before_the_first_step(data, teacher11, tmp_path):
    """Every unlabeled image is decoded once when the loader is built (as kdkernels-train does); a
    truncated one failed the run at the first unlabeled batch."""
    folder = tmp_path / "unl"
    folder.mkdir()
    sources = sorted(Path(data["unlabeled"]).iterdir())[:3]
    for src in sources:
        (folder / src.name).write_bytes(src.read_bytes())
    good = sources[0].read_bytes()
    (folder / "zz_trunc.png").write_bytes(good[:len(good) // 2])
    trainer = KDDetectionTrainer(overrides=_args(data, teacher11, tmp_path, unlabeled=str(folder)))
    steps = []
    trainer.add_callback("on_train_batch_start", lambda t: steps.append(1))
    with pytest.raises(ValueError, match=rf"unlabeled={re.escape(str(folder))}: 1 unreadable image .*zz_trunc\.png"):
        trainer.train()
    assert steps == []


def _coco_set(root: Path, bbox, category_id=1) -> Path:
    """A one-image COCO set (train and val) whose train annotation id 7 has ``bbox`` and ``category_id``."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(root / "images" / split / "a.png")
    (root / "annotations").mkdir()
    for split, box, cat in (("train", bbox, category_id), ("val", [1, 1, 5, 5], 1)):
        ann = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 32}],
               "annotations": [{"id": 7, "image_id": 1, "category_id": cat, "bbox": box, "iscrowd": 0}],
               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(ann))
    return root


@pytest.mark.parametrize("bbox,category_id,match", [
    ([10, 10, float("nan"), 5], 1, "bbox must be 4 finite numbers"),
    ([50, 10, 30, 5], 1, r"is outside the image \(a\.png, 64x32\)"),
    ([10, 10, -4, 5], 1, "has negative width or height"),
    ([10, 10, 4, 5], 9, "unknown category id 9"),
])
def test_make_data_checks_coco_annotations_as_kdkernels_train_does(tmp_path, capsys, bbox, category_id, match):
    """The converter reads COCO files through kdkernels-train's check: NaN became the label line
    'k nan … nan …', out-of-image boxes were clipped, negative sizes and unknown categories dropped."""
    from kdkernels.integrations.ultralytics.cli import main
    from kdkernels.train.data import CocoDetection
    coco = _coco_set(tmp_path / "coco", bbox, category_id)
    where = rf"instances_train\.json: annotation id 7 \(image id 1\): .*{match}"
    with pytest.raises(ValueError, match=where):
        CocoDetection(coco / "images" / "train", coco / "annotations" / "instances_train.json")
    with pytest.raises(ValueError, match=where):
        make_yolo_data(tmp_path / "out", coco_root=coco)
    assert main(["make-data", f"out={tmp_path / 'out'}", f"coco_root={coco}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(rf"^kdkernels-yolo make-data: error: .*{where}", err), err
    assert not (tmp_path / "out" / "labels" / "train" / "a.txt").exists()


@pytest.mark.parametrize("argv,match", [
    (["make-data", "scarce_fraction=nan"], "'scarce_fraction=nan' must be finite"),
    (["make-data", "scarce_fraction=1.5"], "'scarce_fraction=1.5' must be <= 1"),
    (["make-data", "bogus=1"], "'bogus' is not a make-data argument"),
    (["make-data", "seed=x"], "'seed='x'' must be an integer"),
    (["train", "bogus=1"], "'bogus' is not a valid YOLO argument"),
    (["train", "kd_T=0"], "'kd_T=0.0' must be > 0"),
    (["train", "epochs=abc"], "'epochs=abc' is of invalid type str"),
    (["train", "oops"], "argument 'oops' is not key=value"),
])
def test_cli_bad_arguments_are_one_line_errors_naming_the_key(tmp_path, capsys, argv, match):
    """As kdkernels-train reports a bad --set: 'config error', one line, exit 2, before any work."""
    from kdkernels.integrations.ultralytics.cli import main
    assert main(argv + [f"out={tmp_path / 'out'}"] * (argv[0] == "make-data")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdkernels-yolo: config error: ") and "\n" not in err and match in err, err
    assert not (tmp_path / "out").exists()
