"""YOLO efficacy study: kdkernels distillation in Ultralytics vs its built-in KD and the baseline.

    python -m benchmarks.efficacy_yolo                      # CPU preset (benchmarks/efficacy_yolo/cpu.yaml)
    python -m benchmarks.efficacy_yolo --seeds 0            # one seed per row (the reduced CPU run)
    python -m benchmarks.efficacy_yolo --preset gpu         # GPU preset
    python -m benchmarks.efficacy_yolo --rows baseline,kdk_full --seeds 1
    python -m benchmarks.efficacy_yolo --render             # tables/plot from the stored results only

Exports the synthetic set in YOLO format (kdkernels.integrations.ultralytics.data), trains the
teacher once, then every (row, seed) student; each run's mAP50-95 / mAP50 come from Ultralytics'
validator on the val split (the final validation of ``best.pt``). A finished run leaves
``result.json`` in its folder and is not retrained (resumable); an interrupted one restarts.
Writes ``benchmarks/EFFICACY_YOLO.md`` (table), ``.json`` (every run) and ``.png`` (bars).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parent
PRESETS = HERE / "efficacy_yolo"


def _load(preset: str) -> dict:
    path = Path(preset) if Path(preset).exists() else PRESETS / f"{preset}.yaml"
    return yaml.safe_load(path.read_text())


def _data(cfg: dict) -> dict:
    from kdkernels.integrations.ultralytics.data import make_yolo_data
    d = cfg["data"]
    out = Path(d["out"])
    if (out / "export.json").exists():
        return json.loads((out / "export.json").read_text())
    return make_yolo_data(out, scarce_fraction=d["scarce_fraction"], seed=d["seed"])


def _train(kind: str, model: str, args: dict, run_dir: Path) -> dict:
    """One Ultralytics training run (offline) → mAP50-95, mAP50 of best.pt, seconds, optimizer steps."""
    from ultralytics import YOLO
    from kdkernels.integrations.ultralytics import KDDetectionTrainer, offline_mode
    steps = {"n": 0}

    def count(trainer):
        steps["n"] += 1
    yolo = YOLO(model)
    yolo.add_callback("on_train_batch_end", count)
    t0 = time.perf_counter()
    with offline_mode():
        trainer = KDDetectionTrainer if kind == "kdk" else None
        metrics = yolo.train(trainer=trainer, project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
                             verbose=False, **args)
    return {"mAP50-95": float(metrics.box.map), "mAP50": float(metrics.box.map50),
            "seconds": round(time.perf_counter() - t0, 1), "batches": steps["n"],
            "weights": str(run_dir / "weights" / "best.pt")}


def _run(name: str, kind: str, model: str, args: dict, run_dir: Path) -> dict:
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    res = {"row": name, **_train(kind, model, args, run_dir), "args": {k: str(v) for k, v in args.items()}}
    done.write_text(json.dumps(res, indent=1))
    return res


def _row_args(cfg: dict, row: dict, data: dict, teacher: str, seed: int) -> dict:
    args = {**cfg["common"], "seed": seed, "epochs": row.get("epochs", cfg["student"]["epochs"]),
            "data": data["scarce_yaml"] if row.get("scarce") else data["data_yaml"]}
    extra = dict(row.get("args", {}))
    if "unlabeled" in extra:
        extra["unlabeled"] = data[extra["unlabeled"]]
    if row["kind"] in ("kdk", "ultralytics"):
        extra["distill_model"] = teacher
    return {**args, **extra}


def run_study(cfg: dict, runs: Path, seeds, rows) -> list:
    from tqdm import tqdm
    import torch
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    data = _data(cfg)
    t_args = {**cfg["common"], "seed": 0, "epochs": cfg["teacher"]["epochs"], "data": data["data_yaml"]}
    teacher = _run("teacher", "plain", cfg["teacher"]["model"], t_args, runs / "teacher")
    results = [{**teacher, "seed": 0}]
    jobs = [(r, s) for s in seeds for r in cfg["rows"] if not rows or r["name"] in rows]
    for row, seed in tqdm(jobs, desc="efficacy_yolo", unit="run"):
        args = _row_args(cfg, row, data, teacher["weights"], seed)
        res = _run(row["name"], row["kind"], cfg["student"]["model"], args, runs / row["name"] / f"seed{seed}")
        results.append({**res, "seed": seed})
    return results


def _collect(runs: Path) -> list:
    out = []
    for p in sorted(runs.glob("**/result.json")):
        r = json.loads(p.read_text())
        r.setdefault("seed", int(p.parent.name[4:]) if p.parent.name.startswith("seed") else 0)
        out.append(r)
    return out


def _stats(values):
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summarize(cfg: dict, results: list) -> list:
    """Per row: n seeds, mean ± std of mAP50-95 and mAP50 (in %), mean seconds and batches."""
    table = []
    for row in [{"name": "teacher", "desc": f"{cfg['teacher']['model']}, ground truth"}] + cfg["rows"]:
        rs = [r for r in results if r["row"] == row["name"]]
        if not rs:
            continue
        m, s = _stats([100 * r["mAP50-95"] for r in rs])
        m50, s50 = _stats([100 * r["mAP50"] for r in rs])
        table.append({"row": row["name"], "desc": row["desc"], "n": len(rs), "map": m, "map_std": s, "map50": m50,
                      "map50_std": s50, "seconds": statistics.fmean(r["seconds"] for r in rs),
                      "batches": round(statistics.fmean(r["batches"] for r in rs)),
                      "seeds": sorted(r["seed"] for r in rs)})
    return table


def _pm(m, s):
    return f"{m:.1f}" if s != s else f"{m:.1f} ± {s:.1f}"


def _reference(table: list, t: dict):
    """The Ultralytics-KD row trained on as many batches as row t (None for teacher/scarce/itself)."""
    if t["row"] == "teacher" or t["row"].startswith(("scarce", "ultralytics")):
        return None
    refs = [r for r in table if r["row"].startswith("ultralytics_kd") and abs(r["batches"] - t["batches"]) <= 2]
    return refs[0] if refs else None


def markdown(cfg: dict, table: list, meta: dict) -> str:
    lines = ["| row | what | seeds | mAP50-95 (%) | mAP50 (%) | Δ mAP50-95 vs Ultralytics KD, as many batches | "
             "batches | s/run |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        ref = _reference(table, t)
        delta = "" if ref is None else f"{t['map'] - ref['map']:+.1f} ({ref['row']})"
        lines.append(f"| {t['row']} | {t['desc']} | {t['n']} | {_pm(t['map'], t['map_std'])} | "
                     f"{_pm(t['map50'], t['map50_std'])} | {delta} | {t['batches']} | {t['seconds']:.0f} |")
    return "\n".join(lines) + f"\n\nMeasured {meta['date']} on {meta['machine']}; command `{meta['command']}`.\n"


def plot(table: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 3.8))
    xs = range(len(table))
    ax.bar([x - 0.2 for x in xs], [t["map"] for t in table], 0.4, yerr=[0 if t["map_std"] != t["map_std"] else
           t["map_std"] for t in table], label="mAP50-95", capsize=3)
    ax.bar([x + 0.2 for x in xs], [t["map50"] for t in table], 0.4, yerr=[0 if t["map50_std"] != t["map50_std"] else
           t["map50_std"] for t in table], label="mAP50", capsize=3)
    ax.set_xticks(list(xs), [t["row"] for t in table], rotation=25, ha="right")
    ax.set_ylabel("%")
    ax.set_title("YOLO distillation on the synthetic set (Ultralytics validator)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(cfg: dict, results: list, out_stem: Path, meta: dict) -> list:
    table = summarize(cfg, results)
    out_stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "table": table, "runs": results}, indent=1))
    plot(table, out_stem.with_suffix(".png"))
    print(markdown(cfg, table, meta))
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seeds", type=int, nargs="*", help="default: the preset's")
    p.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    p.add_argument("--runs", default=None, help="run folder (default runs/efficacy_yolo/<preset>)")
    p.add_argument("--out", default=str(HERE / "EFFICACY_YOLO"), help="output stem (.json, .png)")
    p.add_argument("--render", action="store_true", help="only render the stored results")
    a = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    cfg = _load(a.preset)
    runs = Path(a.runs or f"runs/efficacy_yolo/{Path(a.preset).stem}").resolve()  # Ultralytics nests relative paths
    rows = [r for r in a.rows.split(",") if r]
    if not a.render:
        run_study(cfg, runs, a.seeds if a.seeds is not None else cfg["seeds"], rows)
    meta = {"date": _dt.date.today().isoformat(), "preset": a.preset, "command": " ".join(["python -m benchmarks.efficacy_yolo"] + (argv if argv is not None else sys.argv[1:])),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    render(cfg, _collect(runs), Path(a.out), meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
