"""kdkernels-train: make data, train teacher / baseline / distilled student, evaluate, run the demo.

    kdkernels-train make-data                      # embedded synthetic COCO-format set → data/synthetic
    kdkernels-train teacher  [--config C] [--set train.iterations=100] [--resume]
    kdkernels-train baseline [--config C] ...      # student, ground-truth loss only
    kdkernels-train distill  [--config C] ...      # student + confidence-based KD (+ unlabeled ADL)
    kdkernels-train eval     [--config C] [--which teacher baseline distill]
    kdkernels-train demo     [--config C]          # all of the above, then the AP table
    kdkernels-train step-bench [--config C]        # KD share of a training step, kdkernels vs eager
Configs are YAML (packaged presets: demo, paper); `--set key=value` overrides any field.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .config import ConfigError, load_config

STAGES = ("teacher", "baseline", "distill")


def _config(args):
    return load_config(args.config, args.set or [])


def _add_config_args(p):
    p.add_argument("--config", default=None, help="YAML file or preset name (default: demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")


def config_hash(cfg, mode: str) -> str:
    """What a stage's result depends on (eval settings excluded)."""
    d = cfg.to_dict()
    d.pop("eval")
    d["mode"] = mode
    if mode != "distill":
        d.pop("distill")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def ensure_data(cfg, *, seed: int | None = None) -> None:
    from .synthetic import make_synthetic_coco
    root = Path(cfg.data.root)
    if (root / "dataset.json").is_file():
        return
    print(f"[data] generating the synthetic set in {root}")
    make_synthetic_coco(root, image_size=cfg.data.image_size, seed=cfg.seed if seed is None else seed)


def run_stage(cfg, mode: str, *, resume: bool, force: bool = False) -> None:
    from .trainer import model_dir, train
    stamp = model_dir(cfg, mode) / "config_hash.txt"
    done = (model_dir(cfg, mode) / "model.pt").is_file() and stamp.is_file()
    if done and not force and stamp.read_text().strip() == config_hash(cfg, mode):
        print(f"[{mode}] already trained with this config: {model_dir(cfg, mode) / 'model.pt'} (skipping)")
        return
    train(cfg, mode, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        stamp.write_text(config_hash(cfg, mode))


def evaluate_models(cfg, which, *, device=None) -> dict:
    import torch

    from .evaluate import evaluate
    from .report import ap_table, plot_ap_bars
    from .trainer import load_model_file, model_dir, resolve_device, val_dataset
    device = device or resolve_device(cfg.train.device)
    val = val_dataset(cfg)
    names = {"teacher": f"teacher ({cfg.model.teacher})", "baseline": f"student baseline ({cfg.model.student})",
             "distill": f"student distilled ({cfg.model.student})"}
    results = {}
    for mode in which:
        preset = cfg.model.teacher if mode == "teacher" else cfg.model.student
        model = load_model_file(model_dir(cfg, mode) / "model.pt", cfg, preset, val.num_classes, device)
        with torch.no_grad():
            results[names[mode]] = evaluate(model, val, batch_size=cfg.eval.batch_size, device=device, desc=f"eval {mode}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    plot_ap_bars(results, out / "ap_bars.png")
    table = ap_table(results)
    (out / "eval.md").write_text(table + "\n")
    print(table)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kdkernels-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-data", help="generate the embedded synthetic COCO-format data set")
    p.add_argument("--out", default=None, help="output folder (default: the config's data.root)")
    _add_config_args(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-train", type=int, default=None)
    p.add_argument("--num-unlabeled", type=int, default=None)
    p.add_argument("--num-val", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--label-fraction", type=float, default=None)
    for mode in STAGES:
        p = sub.add_parser(mode, help=f"train the {mode} model")
        _add_config_args(p)
        p.add_argument("--resume", action="store_true", help="continue from <out_dir>/<mode>/checkpoint.pt")
    p = sub.add_parser("eval", help="COCO AP of trained models on the val split")
    _add_config_args(p)
    p.add_argument("--which", nargs="+", choices=STAGES, default=list(STAGES))
    p = sub.add_parser("demo", help="make data, train teacher, baseline and distilled students, print AP")
    _add_config_args(p)
    p.add_argument("--fresh", action="store_true", help="retrain stages that are already done")
    p = sub.add_parser("step-bench", help="KD share of one training step: kdkernels vs eager losses")
    _add_config_args(p)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None, help="JSON output (default: <out_dir>/step_bench.json)")
    args = parser.parse_args(argv)

    try:
        cfg = _config(args)
    except ConfigError as exc:
        print(f"kdkernels-train: config error: {exc}", file=sys.stderr)
        return 2

    if args.command == "make-data":
        from .synthetic import make_synthetic_coco
        kw = {k: v for k, v in dict(seed=args.seed, num_train=args.num_train, num_unlabeled=args.num_unlabeled,
                                      num_val=args.num_val, num_classes=args.num_classes,
                                      label_fraction=args.label_fraction).items() if v is not None}
        kw.setdefault("seed", cfg.seed)
        t0 = time.perf_counter()
        info = make_synthetic_coco(Path(args.out or cfg.data.root), image_size=cfg.data.image_size, **kw)
        print(json.dumps(info, indent=1, default=str))
        print(f"[data] done in {time.perf_counter() - t0:.1f} s")
    elif args.command in STAGES:
        ensure_data(cfg)
        run_stage(cfg, args.command, resume=args.resume, force=True)
    elif args.command == "eval":
        evaluate_models(cfg, args.which)
    elif args.command == "demo":
        t0 = time.perf_counter()
        ensure_data(cfg)
        for mode in STAGES:
            run_stage(cfg, mode, resume=not args.fresh, force=args.fresh)
        results = evaluate_models(cfg, STAGES)
        summary = {"wall_seconds": round(time.perf_counter() - t0, 1), "results": results}
        (Path(cfg.out_dir) / "demo.json").write_text(json.dumps(summary, indent=1))
        print(f"[demo] finished in {summary['wall_seconds']:.0f} s; tables and plots in {cfg.out_dir}/")
    elif args.command == "step-bench":
        ensure_data(cfg)
        from .step_bench import run_step_bench
        run_step_bench(cfg, repeats=args.repeats, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
