"""``kdkernels-yolo``: Ultralytics-style command line for YOLO distillation with kdkernels.

    kdkernels-yolo make-data [out=data/yolo] [scarce_fraction=0.1] [coco_root=<COCO set>]
    kdkernels-yolo train model=yolo11n.yaml data=data/yolo/data.yaml distill_model=teacher.pt \\
        unlabeled=data/yolo/images/unlabeled epochs=30 imgsz=64 device=cpu
    kdkernels-yolo train resume model=runs/detect/train/weights/last.pt
    kdkernels-yolo help

``train`` takes every Ultralytics train argument plus the KD keys (see
``kdkernels.integrations.ultralytics.config``) as ``key=value``; a bare ``resume`` is ``resume=True``.
Offline by default (``YOLO_OFFLINE=1``, no download of weights, fonts or the AMP-check model).
"""
from __future__ import annotations

import json
import sys

from .offline import set_offline_env

__all__ = ["main"]

USAGE = __doc__


def _pairs(argv) -> dict:
    from ultralytics.cfg import parse_key_value_pair, smart_value
    out = {}
    for a in argv:
        if "=" in a:
            k, v = parse_key_value_pair(a)
            out[k] = smart_value(v) if isinstance(v, str) else v
        elif a in ("resume", "val", "plots", "exist_ok"):
            out[a] = True
        else:
            raise SystemExit(f"kdkernels-yolo: argument {a!r} is not key=value\n{USAGE}")
    return out


def train(args: dict):
    """``YOLO(model).train(trainer=KDDetectionTrainer, **args)``; returns the validation metrics."""
    from ultralytics import YOLO
    from .trainer import KDDetectionTrainer
    if args.get("resume") and "model" in args and str(args["model"]).endswith(".pt"):
        args = {**args, "resume": args.pop("model")}
        return KDDetectionTrainer(overrides=args).train()
    model = args.pop("model", "yolo11n.yaml")
    return YOLO(model).train(trainer=KDDetectionTrainer, **args)


def make_data(args: dict) -> dict:
    from .data import make_yolo_data
    out = args.pop("out", "data/yolo")
    info = make_yolo_data(out, **args)
    print(json.dumps(info, indent=1))
    return info


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(USAGE)
        return 0
    set_offline_env()
    cmd, args = argv[0], _pairs(argv[1:])
    if cmd == "train":
        train(args)
    elif cmd == "make-data":
        make_data(args)
    else:
        print(f"kdkernels-yolo: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
