"""``kdkernels-yolo``: Ultralytics-style command line for YOLO distillation with kdkernels.

    kdkernels-yolo make-data [out=data/yolo] [scarce_fraction=0.1] [coco_root=<COCO set>]
    kdkernels-yolo train model=yolo11n.yaml data=data/yolo/data.yaml distill_model=teacher.pt \\
        unlabeled=data/yolo/images/unlabeled epochs=30 imgsz=64 device=cpu
    kdkernels-yolo train resume model=runs/detect/train/weights/last.pt
    kdkernels-yolo help

``train`` takes every Ultralytics train argument plus the KD keys (see
``kdkernels.integrations.ultralytics.config``) as ``key=value``; a bare ``resume`` is ``resume=True``.
Offline by default (``YOLO_OFFLINE=1``, no download of weights, fonts or the AMP-check model).
As ``kdkernels-train``: a bad argument (unknown key, bad value) is one line naming the key, exit 2; a
bad data, checkpoint or teacher file one line naming it, exit 1.
"""
from __future__ import annotations

import inspect
import json
import sys

from kdkernels.train.cli import RUN_ERRORS, report_config_error, report_run_error
from kdkernels.train.config import ConfigError

from .offline import set_offline_env

__all__ = ["main"]

USAGE = __doc__


ARG_ERRORS = (SyntaxError, TypeError, ValueError, FileNotFoundError)  # what the argument checks raise


def _pairs(argv) -> dict:
    """``key=value`` arguments → {key: Ultralytics-parsed value}; a bare flag (``resume``, ...) is True."""
    from ultralytics.cfg import parse_key_value_pair, smart_value
    out = {}
    for a in argv:
        if "=" in a:
            k, v = parse_key_value_pair(a)
            out[k] = smart_value(v) if isinstance(v, str) else v
        elif a in ("resume", "val", "plots", "exist_ok"):
            out[a] = True
        else:
            raise ConfigError(f"argument {a!r} is not key=value (see kdkernels-yolo help)")
    return out


def _one_line(exc: Exception) -> str:
    """An exception's message on one line (Ultralytics' key errors end in newlines)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def check_train_args(args: dict) -> None:
    """ConfigError naming the key for a bad ``train`` argument (the checks the trainer runs on its overrides)."""
    from .trainer import check_overrides
    try:
        check_overrides(args)
    except ARG_ERRORS as e:
        raise ConfigError(_one_line(e)) from None


def train(args: dict):
    """``YOLO(model).train(trainer=KDDetectionTrainer, **args)``; returns the validation metrics."""
    from ultralytics import YOLO
    from .trainer import KDDetectionTrainer
    if args.get("resume") and "model" in args and str(args["model"]).endswith(".pt"):
        args = {**args, "resume": args.pop("model")}
        return KDDetectionTrainer(overrides=args).train()
    model = args.pop("model", "yolo11n.yaml")
    return YOLO(model).train(trainer=KDDetectionTrainer, **args)


def make_data_keys() -> list:
    """The ``make-data`` keys: ``out`` and make_yolo_data's keyword arguments."""
    from .data import make_yolo_data
    return ["out"] + [k for k, p in inspect.signature(make_yolo_data).parameters.items() if p.kind == p.KEYWORD_ONLY]


def check_make_data_args(args: dict) -> None:
    """ConfigError naming the key for an unknown ``make-data`` key or a bad value."""
    from .data import check_export_args
    unknown = sorted(set(args) - set(make_data_keys()))
    if unknown:
        raise ConfigError(f"'{unknown[0]}' is not a make-data argument (valid: {', '.join(make_data_keys())})")
    try:
        check_export_args(**{k: v for k, v in args.items() if k in ("scarce_fraction", "seed")})
    except ARG_ERRORS as e:
        raise ConfigError(_one_line(e)) from None


def make_data(args: dict) -> dict:
    """``make_yolo_data(out, **args)``; prints and returns its summary."""
    from .data import make_yolo_data
    out = args.pop("out", "data/yolo")
    info = make_yolo_data(out, **args)
    print(json.dumps(info, indent=1))
    return info


COMMANDS = {"train": (check_train_args, train), "make-data": (check_make_data_args, make_data)}


def main(argv=None) -> int:
    """The ``kdkernels-yolo`` command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(USAGE)
        return 0
    set_offline_env()
    cmd = argv[0]
    if cmd not in COMMANDS:
        print(f"kdkernels-yolo: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        return 2
    check, run = COMMANDS[cmd]
    try:
        args = _pairs(argv[1:])
        check(args)
    except ConfigError as exc:
        return report_config_error("kdkernels-yolo", exc)
    try:
        run(args)
    except RUN_ERRORS as exc:
        return report_run_error(f"kdkernels-yolo {cmd}", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
