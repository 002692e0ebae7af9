"""kdkernels-train: make data, train teacher / baseline / distilled student, evaluate, run the demo.

    kdkernels-train make-data [--config C]         # embedded synthetic COCO-format set → data.root
    kdkernels-train teacher  [--config C] [--set train.iterations=100] [--resume]
    kdkernels-train baseline [--config C] ...      # student, ground-truth loss only
    kdkernels-train distill  [--config C] ...      # student + confidence-based KD (+ unlabeled ADL)
    kdkernels-train eval     [--config C] [--which teacher baseline distill]
    kdkernels-train demo     [--config C]          # all of the above, then the AP table
    kdkernels-train step-bench [--config C]        # KD share of a training step, kdkernels vs eager
Configs are YAML (packaged presets: demo, paper); `--set key=value` overrides any field.
Errors (bad config, data, checkpoint or teacher file) print one line naming the key or file and exit
with 1 (2 for config errors). Ctrl-C / SIGTERM while training saves a checkpoint at the end of the
current step and exits with 130 / 143; `--resume` continues from it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .config import PEER_KEYS, ConfigError, load_config

STAGES = ("teacher", "baseline", "distill")


def _config(args):
    return load_config(args.config, args.set or [])


def _add_config_args(p):
    p.add_argument("--config", default=None, help="YAML file or preset name (default: demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")


def config_hash(cfg, mode: str) -> str:
    """What a stage's result depends on (eval settings excluded; a distilled student also depends on
    the teacher it learned from, through the teacher's own stamp)."""
    d = cfg.to_dict()
    d.pop("eval")
    for k in ("num_threads", "log_every", "ckpt_every"):  # no effect on the trained model
        d["train"].pop(k)
    d["mode"] = mode
    if mode != "distill":
        d.pop("distill")
    else:
        if d["distill"]["method"] == "thesis":  # as before the peer presets existed: same hash, results kept
            for k in PEER_KEYS:
                d["distill"].pop(k)
        stamp = Path(cfg.distill.teacher_checkpoint or Path(cfg.out_dir) / "teacher" / "model.pt").with_name(
            "config_hash.txt")
        d["teacher_stamp"] = stamp.read_text().strip() if stamp.is_file() else None
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def synthetic_kwargs(cfg) -> dict:
    """make_synthetic_coco's arguments from the config's data section."""
    d = cfg.data
    return dict(image_size=d.image_size, num_train=d.num_train, num_unlabeled=d.num_unlabeled, num_val=d.num_val,
                classes=list(d.classes), seed=cfg.seed if d.seed is None else d.seed, label_fraction=d.label_fraction,
                max_objects=d.max_objects, min_size=d.min_size, max_size_frac=d.max_size_frac,
                max_occlusion=d.max_occlusion, overlap_prob=d.overlap_prob, clutter=d.clutter,
                noise_std=d.noise_std)


def _synthetic_differences(root: Path, want: dict):
    """None when root holds no synthetic set of ours; else the list of settings that differ from `want`."""
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != "kdkernels.train.synthetic":
        return None
    have = dict(meta.get("params", {}))
    have["classes"] = meta.get("class_names")
    diff = []
    for k, v in want.items():
        h = have.get(k)
        same = (float(h) == float(v) if isinstance(h, (int, float)) and isinstance(v, (int, float))
                and not isinstance(h, bool) else h == v)
        if not same:
            diff.append(k)
    return diff


def ensure_data(cfg, *, overwrite: bool = False, wait_seconds: float = 1800.0) -> None:
    """Generate the synthetic set in data.root unless it is there with the config's settings.

    A folder holding other data (an annotation file but no synthetic dataset.json) is used as is.
    A synthetic set made with other settings is regenerated (with a message). Under torchrun only
    rank 0 generates; the other ranks wait for it."""
    from .synthetic import make_synthetic_coco
    root = Path(cfg.data.root)
    want = synthetic_kwargs(cfg)
    diff = _synthetic_differences(root, want)
    if diff == [] and not overwrite:
        return
    ann = Path(cfg.data.train_ann)
    ann = ann if ann.is_absolute() else root / ann
    if diff is None and ann.is_file() and not overwrite:
        return  # the user's own COCO data
    if int(os.environ.get("RANK", "0")) != 0:
        t0 = time.monotonic()
        while _synthetic_differences(root, want) != []:
            if time.monotonic() - t0 > wait_seconds:
                raise TimeoutError(f"rank {os.environ.get('RANK')}: waited {wait_seconds:.0f} s for rank 0 to "
                                   f"generate the data set in {root}")
            time.sleep(1.0)
        return
    if diff:
        print(f"[data] {root} was generated with other settings ({', '.join(diff)}): regenerating")
    else:
        print(f"[data] generating the synthetic set in {root}")
    t0 = time.perf_counter()
    info = make_synthetic_coco(root, overwrite=bool(diff) or overwrite, **want)
    print(f"[data] {info['num_train']} train ({info['num_train_annotations']} boxes), {info['num_unlabeled']} "
          f"unlabeled, {info['num_val']} val images, classes {', '.join(info['class_names'])} "
          f"({time.perf_counter() - t0:.1f} s)")


def run_stage(cfg, mode: str, *, resume, force: bool = False) -> dict | None:
    """Train one stage unless (force=False) it is already trained with this config.
    resume: True (continue from the checkpoint; error if it was written with another config),
    "compatible" (continue only if the checkpoint's config matches, else start over) or False."""
    from .trainer import atomic_write_text, model_dir, train
    stamp = model_dir(cfg, mode) / "config_hash.txt"
    want = config_hash(cfg, mode)
    done = (model_dir(cfg, mode) / "model.pt").is_file() and stamp.is_file()
    if done and not force and stamp.read_text().strip() == want:
        print(f"[{mode}] already trained with this config: {model_dir(cfg, mode) / 'model.pt'} (skipping)")
        return None
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        stamp.unlink(missing_ok=True)
    metrics = train(cfg, mode, resume=resume)
    if main:
        atomic_write_text(want, stamp)
    return metrics


def evaluate_stages(cfg, which, *, device=None) -> dict:
    """COCO metrics of the trained models of the stages in `which`: {stage: {"AP": .., ...}}."""
    import torch

    from .evaluate import evaluate
    from .trainer import load_model_file, model_dir, resolve_device, set_threads, val_dataset
    set_threads(cfg)
    device = device or resolve_device(cfg.train.device)
    val = val_dataset(cfg)
    results = {}
    for mode in which:
        preset = cfg.model.teacher if mode == "teacher" else cfg.model.student
        model = load_model_file(model_dir(cfg, mode) / "model.pt", cfg, preset, val.num_classes, device)
        with torch.no_grad():
            results[mode] = evaluate(model, val, batch_size=cfg.eval.batch_size, device=device, desc=f"eval {mode}")
    return results


def evaluate_models(cfg, which, *, device=None) -> dict:
    """evaluate_stages + the AP table (printed, eval.md), eval.json and the AP bar chart in out_dir."""
    from .report import ap_table, plot_ap_bars
    names = {"teacher": f"teacher ({cfg.model.teacher})", "baseline": f"student baseline ({cfg.model.student})",
             "distill": f"student distilled ({cfg.model.student})"}
    results = {names[mode]: m for mode, m in evaluate_stages(cfg, which, device=device).items()}
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
    p.add_argument("--overwrite", action="store_true", help="regenerate even if the set is already there")
    for mode in STAGES:
        p = sub.add_parser(mode, help=f"train the {mode} model")
        _add_config_args(p)
        p.add_argument("--resume", action="store_true",
                       help="continue from <out_dir>/<mode>/checkpoint.pt (or checkpoint.prev.pt if it is damaged)")
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
        return report_config_error("kdkernels-train", exc)

    try:
        return _run(args, cfg)
    except RUN_ERRORS as exc:
        return report_run_error(f"kdkernels-train {args.command}", exc)
    except KeyboardInterrupt:
        print(f"kdkernels-train {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .trainer import TrainingInterrupted
        if not isinstance(exc, TrainingInterrupted):
            raise
        print(f"kdkernels-train {args.command}: {exc}; {_resume_hint(args, exc)}", file=sys.stderr)
        return exc.exit_code
    finally:
        _shutdown_distributed()


RUN_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, ValueError, TimeoutError)  # reported in one line


def report_config_error(prog: str, exc: Exception) -> int:
    """Print a bad setting's one-line error (it names the key) to stderr; the exit code, 2. The path of
    ``kdkernels-train``'s bad ``--config``/``--set`` values and of ``kdkernels-yolo``'s bad ``key=value``."""
    print(f"{prog}: config error: {exc}", file=sys.stderr)
    return 2


def report_run_error(where: str, exc: Exception) -> int:
    """Print an error of a run (one of RUN_ERRORS: bad data, checkpoint or teacher file) in one line to
    stderr; the exit code, 1."""
    print(f"{where}: error: {exc}", file=sys.stderr)
    return 1


def _resume_hint(args, exc) -> str:
    """How to continue an interrupted command."""
    if args.command == "demo":
        return "run the same kdkernels-train demo command again to continue (it resumes the stage)"
    return f"continue with: kdkernels-train {exc.mode} --resume (with the same --config/--set options)"


def _shutdown_distributed():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(args, cfg) -> int:
    if args.command == "make-data":
        if args.out:
            cfg.data.root = args.out
        flags = dict(num_train=args.num_train, num_unlabeled=args.num_unlabeled, num_val=args.num_val,
                     label_fraction=args.label_fraction)
        for k, v in flags.items():
            if v is not None:
                setattr(cfg.data, k, v)
        if args.num_classes is not None:
            from .synthetic import CLASS_NAMES
            if not 1 <= args.num_classes <= len(CLASS_NAMES):
                raise ConfigError(f"--num-classes must be in [1, {len(CLASS_NAMES)}], got {args.num_classes}")
            cfg.data.classes = list(CLASS_NAMES[:args.num_classes])
        if args.seed is not None:
            cfg.seed = args.seed
        from .config import validate
        validate(cfg)
        if _synthetic_differences(Path(cfg.data.root), synthetic_kwargs(cfg)) == [] and not args.overwrite:
            print(f"[data] {cfg.data.root} already holds the synthetic set with these settings "
                  f"(--overwrite regenerates it)")
        else:
            ensure_data(cfg, overwrite=args.overwrite)
    elif args.command in STAGES:
        ensure_data(cfg)
        run_stage(cfg, args.command, resume=args.resume, force=True)
    elif args.command == "eval":
        evaluate_models(cfg, args.which)
    elif args.command == "demo":
        t0 = time.perf_counter()
        ensure_data(cfg)
        stages = {}
        for mode in STAGES:
            t1 = time.perf_counter()
            run_stage(cfg, mode, resume=False if args.fresh else "compatible", force=args.fresh)
            stages[mode] = round(time.perf_counter() - t1, 1)
        results = evaluate_models(cfg, STAGES)
        summary = {"wall_seconds": round(time.perf_counter() - t0, 1), "stage_seconds": stages,
                   "results": results, "config": cfg.to_dict()}
        (Path(cfg.out_dir) / "demo.json").write_text(json.dumps(summary, indent=1))
        print(f"[demo] finished in {summary['wall_seconds']:.0f} s; tables and plots in {cfg.out_dir}/")
    elif args.command == "step-bench":
        ensure_data(cfg)
        from .step_bench import run_step_bench
        run_step_bench(cfg, repeats=args.repeats, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
