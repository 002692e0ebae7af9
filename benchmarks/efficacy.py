"""The efficacy study: does confidence-based distillation deliver what the thesis claims?

    python -m benchmarks.efficacy                       # CPU preset (benchmarks/efficacy/cpu.yaml)
    python -m benchmarks.efficacy --preset gpu          # GPU preset: larger images, longer schedules
    python -m benchmarks.efficacy --seeds 0 --rows baseline,conf_kd   # a subset (a name: every setting)
    python -m benchmarks.efficacy --rows scarce/unlabeled_kl          # one setting's row
    python -m benchmarks.efficacy --render               # tables/plot from the stored results only

Trains one teacher per setting, then every student row of the preset for each seed, evaluates each
with COCOeval on the val split and writes mean ± std of AP/AP50/AP75 per row to ``--markdown``
(default benchmarks/EFFICACY.md), a PNG bar chart and the raw JSON. Every finished (row, seed) leaves
``result.json`` in its run folder and is not retrained when the study is run again (a run that
stopped half way resumes from its checkpoint).

A preset (YAML) holds ``trainer`` (config file or preset name of kdkernels-train), ``set`` (dotted
overrides for every run), ``teacher_set`` / ``student_set`` (overrides for those runs), ``seeds``,
``settings`` (name → extra overrides, e.g. the label-scarce data) and ``rows`` (name, setting, mode
teacher|baseline|distill, overrides, a one-line description).

Peer presets (``distill.method`` cwd | pkd | fgd | fgd_conf, kdkernels/train/peers.py): a row that sets
a peer method and no ``distill.method_weight`` gets the preset's ``peer_scales[method]`` (default 1 =
the published weights). ``vars`` names placeholders: a row value ``${name}`` is replaced by
``vars[name]`` (``--var name=value`` overrides it), e.g. the method of the "best label-free peer +
unlabeled images" row. ``tune`` (seed, scales, methods, setting) defines the weight-tuning sweep
``tune_<method>_x<scale>`` on its own seed, run with ``--tune``:

    python -m benchmarks.efficacy --tune                # the sweep (seed 100, 0.25/1/4 × published)
    python -m benchmarks.efficacy --var best_label_free_peer=pkd --rows peer_unlabeled

The markdown then reports the AP of every scale, the chosen one (best AP on the tuning seed) and the
scale the preset's ``peer_scales`` uses, plus the head-to-head of the thesis rows against the peers.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "efficacy"
METRICS = ("AP", "AP50", "AP75")
PEER_METHODS = ("cwd", "pkd", "fgd", "fgd_conf")
_VAR = re.compile(r"\$\{(\w+)\}")


# ----------------------------------------------------------------------------------------------
# preset → runs
# ----------------------------------------------------------------------------------------------

def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.exists():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise SystemExit(f"efficacy: preset {name_or_path!r} not found (presets: "
                         f"{', '.join(p.stem for p in sorted(PRESET_DIR.glob('*.yaml')))})")
    preset = yaml.safe_load(path.read_text()) or {}
    for key in ("rows", "seeds"):
        if not preset.get(key):
            raise SystemExit(f"efficacy: preset {path} has no {key!r}")
    settings = preset.setdefault("settings", {"full": {}})
    for r in preset["rows"]:
        r.setdefault("setting", "full")
        r.setdefault("mode", "distill")
        r.setdefault("set", {})
        if r["setting"] not in settings:
            raise SystemExit(f"efficacy: row {r['name']!r} names unknown setting {r['setting']!r}")
        if r["mode"] not in ("teacher", "baseline", "distill"):
            raise SystemExit(f"efficacy: row {r['name']!r}: mode must be teacher, baseline or distill")
    keys = [(r["setting"], r["name"]) for r in preset["rows"]]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"efficacy: preset {path} repeats a (setting, row name)")
    preset.setdefault("vars", {})
    preset.setdefault("peer_scales", {})
    preset["tune_rows"] = tune_rows(preset)
    if preset["tune_rows"] and preset["tune"].get("setting", "full") not in settings:
        raise SystemExit(f"efficacy: tune.setting {preset['tune']['setting']!r} is not a setting")
    preset["_path"] = str(path)
    return preset


def _scale_text(scale) -> str:
    return f"{float(scale):g}"


def tune_rows(preset: dict) -> list:
    """The weight-tuning rows ``tune_<method>_x<scale>`` (method_weight = scale) on the tune seed."""
    tune = preset.get("tune")
    if not tune:
        return []
    methods = tune.get("methods", list(PEER_METHODS))
    unknown = [m for m in methods if m not in PEER_METHODS]
    if unknown or not tune.get("scales"):
        raise SystemExit(f"efficacy: tune needs scales and methods from {', '.join(PEER_METHODS)} (got {unknown})")
    return [{"name": f"tune_{m}_x{_scale_text(sc)}", "setting": tune.get("setting", "full"), "mode": "distill",
             "seeds": [tune.get("seed", 100)], "tune": (m, float(sc)),
             "description": f"tuning: {m} with {_scale_text(sc)} × its published weights",
             "set": {"distill.method": m, "distill.method_weight": float(sc), **(tune.get("set") or {})}}
            for m in methods for sc in tune["scales"]]


def _substitute(value, variables: dict, where: str):
    """``${name}`` → variables[name] (SystemExit naming the row for an unknown name)."""
    if isinstance(value, str):
        m = _VAR.fullmatch(value.strip())
        if m:
            if m.group(1) not in variables:
                raise SystemExit(f"efficacy: {where} uses ${{{m.group(1)}}}, which the preset's vars do not define")
            return variables[m.group(1)]
    return value


def row_overrides(preset: dict, row: dict) -> dict:
    """A row's overrides with the ``${var}`` placeholders filled in and, for a peer method without an
    explicit method_weight, the preset's ``peer_scales[method]``."""
    where = f"row {row['setting']}/{row['name']}"
    out = {k: _substitute(v, preset.get("vars") or {}, where) for k, v in (row.get("set") or {}).items()}
    method = out.get("distill.method")
    if method in PEER_METHODS and "distill.method_weight" not in out:
        out["distill.method_weight"] = float((preset.get("peer_scales") or {}).get(method, 1.0))
    return out


def _overrides(*dicts) -> list:
    out = []
    for d in dicts:
        for k, v in (d or {}).items():
            out.append(f"{k}={json.dumps(v)}")
    return out


def teacher_setting(preset: dict, setting: str) -> str:
    """Which setting's teacher a setting distils from (`teacher_from`, default itself): the
    label-scarce setting reuses the teacher trained with all labels."""
    return (preset["settings"].get(setting) or {}).get("teacher_from", setting)


def teacher_config(preset: dict, setting: str):
    """The teacher of a setting, trained once (seed `teacher_seed`, default 0) on that setting's data."""
    from kdkernels.train.config import load_config
    setting = teacher_setting(preset, setting)
    s = preset["settings"].get(setting) or {}
    out = Path(preset["out_dir"]) / setting / "teacher"
    return load_config(preset.get("trainer"), _overrides(preset.get("set"), s.get("set"), preset.get("teacher_set"),
                                                         {"out_dir": str(out), "seed": preset.get("teacher_seed", 0)}))


def row_config(preset: dict, row: dict, seed: int):
    from kdkernels.train.config import load_config
    s = preset["settings"][row["setting"]] or {}
    out = Path(preset["out_dir"]) / row["setting"] / row["name"] / f"seed{seed}"
    extra = {"out_dir": str(out), "seed": seed}
    if row["mode"] == "distill":
        t = teacher_config(preset, row["setting"])
        extra["distill.teacher_checkpoint"] = str(Path(t.out_dir) / "teacher" / "model.pt")
    return load_config(preset.get("trainer"), _overrides(preset.get("set"), s.get("set"), preset.get("student_set"),
                                                         row_overrides(preset, row), extra))


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------

def run_one(cfg, mode: str) -> dict:
    """Train (or resume, or skip when done with this config) and evaluate one run; result.json
    in its out_dir marks it finished."""
    from kdkernels.train.cli import config_hash, ensure_data, evaluate_stages, run_stage
    from kdkernels.train.trainer import atomic_write_text
    result_file = Path(cfg.out_dir) / "result.json"
    want = config_hash(cfg, mode)
    if result_file.is_file():
        stored = json.loads(result_file.read_text())
        if stored.get("config_hash") == want:
            return stored
    ensure_data(cfg)
    t0 = time.perf_counter()
    run_stage(cfg, mode, resume="compatible")
    metrics = evaluate_stages(cfg, [mode])[mode]
    result = {"config_hash": want, "mode": mode, "seed": cfg.seed, "metrics": metrics,
              "train_eval_seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(json.dumps(result, indent=1), result_file)
    return result


def _wanted(row: dict, rows_wanted) -> bool:
    """A row is selected by its name (in every setting) or by ``setting/name``."""
    return not rows_wanted or row["name"] in rows_wanted or f"{row['setting']}/{row['name']}" in rows_wanted


def plan(preset: dict, rows_wanted=None, seeds=None, *, tune: bool = False) -> list:
    """[(label, setting, row or None, seed, mode)], teachers first. tune: the weight-tuning rows
    (each on its own seeds unless `seeds` is given) instead of the study's rows."""
    all_rows = preset["tune_rows"] if tune else preset["rows"]
    rows = [r for r in all_rows if _wanted(r, rows_wanted)]
    jobs, teachers = [], []
    for r in rows:
        if r["mode"] == "teacher":
            continue
        t_setting = teacher_setting(preset, r["setting"])
        if r["mode"] == "distill" and t_setting not in teachers:
            teachers.append(t_setting)
    for r in preset["rows"]:
        if r["mode"] == "teacher" and r["setting"] not in teachers and _wanted(r, rows_wanted):
            teachers.append(r["setting"])
    for t in teachers:
        jobs.append(("teacher", t, None, preset.get("teacher_seed", 0), "teacher"))
    for r in rows:
        if r["mode"] == "teacher":
            continue
        for seed in (seeds if seeds is not None else r.get("seeds", preset["seeds"])):
            jobs.append((r["name"], r["setting"], r, seed, r["mode"]))
    return jobs


def run_study(preset: dict, rows_wanted=None, seeds=None, command: str | None = None, tune: bool = False) -> dict:
    """Runs (or finds finished) every planned job; raw.json keeps all results and, under
    ``_commands``, every command whose runs are in it, in the order they were run."""
    from tqdm import tqdm
    jobs = plan(preset, rows_wanted, seeds, tune=tune)
    out = Path(preset["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    raw_file = out / "raw.json"
    raw = json.loads(raw_file.read_text()) if raw_file.is_file() else {}
    t_start = time.perf_counter()
    bar = tqdm(jobs, desc="efficacy", unit="run", dynamic_ncols=True)
    for label, setting, row, seed, mode in bar:
        bar.set_postfix_str(f"{setting}/{label}/seed{seed}")
        cfg = teacher_config(preset, setting) if row is None else row_config(preset, row, seed)
        res = run_one(cfg, mode)
        raw.setdefault(setting, {}).setdefault(label, {})[str(seed)] = res
        raw_file.write_text(json.dumps(raw, indent=1))
    raw["_meta"] = {"wall_seconds_this_run": round(time.perf_counter() - t_start, 1)}
    if command:
        raw["_commands"] = list(dict.fromkeys(raw.get("_commands", []) + [command]))
    raw_file.write_text(json.dumps(raw, indent=1))
    return raw


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

def summarize(raw: dict, preset: dict) -> list:
    """One dict per row present in raw: setting, name, description, n, mean/std per metric."""
    out = []
    order = [("teacher", s) for s in preset["settings"]] + [(r["name"], r["setting"]) for r in preset["rows"]
                                                            if r["mode"] != "teacher"]
    desc = {(r["setting"], r["name"]): fill_text(r.get("description", ""), preset) for r in preset["rows"]}
    for name, setting in order:
        runs = raw.get(setting, {}).get(name)
        if not runs:
            continue
        vals = {m: [r["metrics"][m] for r in runs.values()] for m in METRICS}
        text = desc.get((setting, name), "the teacher itself (reference)" if name == "teacher" else "")
        row = {"setting": setting, "name": name, "description": text, "n": len(runs),
               "seconds": sum(r.get("train_eval_seconds", 0.0) for r in runs.values())}
        for m, v in vals.items():
            row[m] = statistics.fmean(v)
            row[m + "_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
        out.append(row)
    return out


def _cell(row, m):
    return f"{row[m]:.1f} ± {row[m + '_std']:.1f}" if row["n"] > 1 else f"{row[m]:.1f}"


def claims(rows: list) -> list:
    """The thesis's claims as measured checks: (claim, value text, holds or None when rows missing)."""
    by = {(r["setting"], r["name"]): r for r in rows}

    def ap(setting, name):
        r = by.get((setting, name))
        return None if r is None else r["AP"]

    def std(setting, name):
        r = by.get((setting, name))
        return 0.0 if r is None else r["AP_std"]

    out = []
    t, b, full = ap("full", "teacher"), ap("full", "baseline"), ap("full", "conf_kd")
    if t is not None and b is not None:
        out.append(("teacher − baseline student gap ≥ 8 AP", f"{t - b:+.1f} AP", t - b >= 8))
    if full is not None and b is not None:
        out.append(("confidence KD (soft labels + label-free features + localisation) ≥ baseline + 3 AP",
                    f"{full - b:+.1f} AP", full - b >= 3))
    full2, b2 = ap("full", "conf_kd_2x"), ap("full", "baseline_2x")
    if full2 is not None and b2 is not None:
        out.append(("(2× steps) confidence KD ≥ baseline + 3 AP, both with the unlabeled rows' step count",
                    f"{full2 - b2:+.1f} AP", full2 - b2 >= 3))
    adl, kl = ap("full", "unlabeled_adl"), ap("full", "unlabeled_kl")
    if adl is not None and full is not None:
        ok = adl - full >= 1 and (kl is None or adl >= kl)
        kl_txt = f", vs plain KL {adl - kl:+.1f} AP" if kl is not None else ""
        out.append(("+ unlabeled with ADL ≥ further +1 AP and ≥ unlabeled with plain KL",
                    f"{adl - full:+.1f} AP over confidence KD{kl_txt}", ok))
    sa, sk = ap("scarce", "unlabeled_adl"), ap("scarce", "unlabeled_kl")
    if sa is not None and sk is not None:
        out.append(("label-scarce: unlabeled with ADL ≥ unlabeled with plain KL",
                    f"{sa - sk:+.1f} AP (std {max(std('scarce', 'unlabeled_adl'), std('scarce', 'unlabeled_kl')):.1f})",
                    sa >= sk))
    ctrl = ap("full", "conf_kd_2x")
    if adl is not None and ctrl is not None:
        out.append(("(control) unlabeled ADL ≥ conf_kd trained for the same number of steps on labels only",
                    f"{adl - ctrl:+.1f} AP", adl >= ctrl))
    fc, fg = ap("full", "feat_conf"), ap("full", "feat_gt")
    if fc is not None and fg is not None:
        tol = max(std("full", "feat_conf"), std("full", "feat_gt"))
        out.append(("label-free (confidence) region ≥ ground-truth-box region within one std",
                    f"{fc - fg:+.1f} AP (std {tol:.1f})", fc >= fg - tol))
    ts, bs, fs = ap("scarce", "teacher") or t, ap("scarce", "baseline"), ap("scarce", "unlabeled_adl")
    if ts is not None and bs is not None and fs is not None and ts > bs:
        closed = (fs - bs) / (ts - bs)
        out.append(("label-scarce (10 % boxes): full method closes ≥ 50 % of the teacher–student gap",
                    f"{100 * closed:.0f} % of {ts - bs:.1f} AP", closed >= 0.5))
    return out


def fill_text(text: str, preset: dict) -> str:
    """A description with its ``${var}`` placeholders filled in (unknown names left as they are)."""
    variables = preset.get("vars") or {}
    return _VAR.sub(lambda m: str(variables.get(m.group(1), m.group(0))), text)


# (setting, the thesis row, the peer rows it is compared with on the same schedule)
HEAD_TO_HEAD = (
    ("full", "conf_kd", ("cwd", "pkd", "fgd", "fgd_conf")),
    ("full", "unlabeled_adl", ("peer_unlabeled",)),
    ("scarce", "unlabeled_adl", ("fgd", "fgd_conf")),
)


def paired_wins(raw: dict, setting: str, thesis: str, peer: str) -> str:
    """"w/n": of the n seeds both rows ran (same init and data order per seed), the thesis row has
    the higher AP in w; "—" without raw results."""
    a, b = (raw.get(setting, {}).get(name) or {} for name in (thesis, peer))
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "—"
    wins = sum(a[sd]["metrics"]["AP"] > b[sd]["metrics"]["AP"] for sd in seeds)
    return f"{wins}/{len(seeds)}"


def head_to_head(rows: list, raw: dict | None = None) -> list:
    """(setting, thesis row, peer row, thesis AP, peer AP, Δ = thesis − peer, spread = the larger
    std, verdict, seeds the thesis row won (paired_wins)) for every pair of HEAD_TO_HEAD present."""
    by = {(r["setting"], r["name"]): r for r in rows}
    out = []
    for setting, thesis, peer_rows in HEAD_TO_HEAD:
        a = by.get((setting, thesis))
        for name in peer_rows:
            b = by.get((setting, name))
            if a is None or b is None:
                continue
            delta, spread = a["AP"] - b["AP"], max(a["AP_std"], b["AP_std"])
            verdict = ("thesis wins" if delta > spread else "**peer wins**" if delta < -spread
                       else "within the spread")
            out.append((setting, thesis, name, a["AP"], b["AP"], delta, spread, verdict,
                        paired_wins(raw or {}, setting, thesis, name)))
    return out


def tuning(raw: dict, preset: dict) -> list:
    """Per tuned method: {method, scales: {scale: mean AP}, chosen, preset}; chosen = the scale with
    the best AP on the tuning seed(s) (a tie goes to the scale nearest the published weights)."""
    import math
    by_method: dict = {}
    for r in preset.get("tune_rows", []):
        runs = raw.get(r["setting"], {}).get(r["name"])
        if not runs:
            continue
        method, scale = r["tune"]
        by_method.setdefault(method, {})[scale] = statistics.fmean(x["metrics"]["AP"] for x in runs.values())
    out = []
    for method, scales in by_method.items():
        chosen = max(scales, key=lambda sc: (scales[sc], -abs(math.log(sc)) if sc > 0 else -math.inf))
        out.append({"method": method, "scales": dict(sorted(scales.items())), "chosen": chosen,
                    "preset": float((preset.get("peer_scales") or {}).get(method, 1.0))})
    return out


def _peer_sections(rows: list, raw: dict, preset: dict) -> list:
    lines = []
    pairs = head_to_head(rows, raw)
    if pairs:
        lines += ["", "## Head to head: the thesis's method against the peers", "",
                  "Same student, schedule, data and seeds per pair; Δ = thesis − peer AP, spread = the larger of the "
                  "two rows' std over seeds; seeds won = of the seeds both rows ran (same initialisation and data "
                  "order), those where the thesis row has the higher AP.", "",
                  "| setting | thesis row | peer row | thesis AP | peer AP | Δ AP | spread | verdict | seeds won |",
                  "|---|---|---|---:|---:|---:|---:|---|---:|"]
        lines += [f"| {st} | {a} | {b} | {x:.1f} | {y:.1f} | {d:+.1f} | {sp:.1f} | {v} | {w} |"
                  for st, a, b, x, y, d, sp, v, w in pairs]
    tuned = tuning(raw, preset)
    if tuned:
        tune = preset.get("tune") or {}
        scales = sorted({sc for t in tuned for sc in t["scales"]})
        lines += ["", f"## Peer weight tuning (seed {tune.get('seed', 100)}, setting {tune.get('setting', 'full')})", "",
                  "COCO AP of each peer with its published weights × `distill.method_weight` on a seed that no row of "
                  "the study uses; chosen = the best scale. The study's rows use the preset's `peer_scales`.", "",
                  "| method | " + " | ".join(f"× {_scale_text(sc)}" for sc in scales) + " | chosen | peer_scales |",
                  "|---|" + "---:|" * len(scales) + "---:|---:|"]
        for t in tuned:
            cells = [f"{t['scales'][sc]:.1f}" if sc in t["scales"] else "—" for sc in scales]
            flag = "" if t["preset"] == t["chosen"] else " (differs)"
            lines.append(f"| {t['method']} | " + " | ".join(cells)
                         + f" | × {_scale_text(t['chosen'])} | × {_scale_text(t['preset'])}{flag} |")
    return lines


def render(raw: dict, preset: dict, markdown: Path, plot: Path, commands: list) -> str:
    rows = summarize(raw, preset)
    lines = ["# Efficacy study: confidence-based distillation on the synthetic detection benchmark", "",
             f"Generated by `python -m benchmarks.efficacy --preset {Path(preset['_path']).stem}` on "
             f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}; preset `{preset['_path']}`.",
             f"Machine: {platform.processor() or platform.machine()}, {platform.platform()}; "
             f"{preset.get('device_note', 'CPU')}.", "",
             "Mean ± sample std over seeds (`n`) of COCO AP on the val split, in percent. Same student, schedule "
             "and data order per seed in every row; the teacher is trained once per setting.", "",
             "| setting | row | what it adds | n | AP | AP50 | AP75 | train+eval min |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['name']} | {r['description']} | {r['n']} | {_cell(r, 'AP')} | "
                     f"{_cell(r, 'AP50')} | {_cell(r, 'AP75')} | {r['seconds'] / 60:.1f} |")
    total = sum(r["seconds"] for r in rows) / 60
    lines += ["", f"Sum of train+eval time over all runs: **{total:.0f} min** (one process after another would take "
              "about this long; runs were single-threaded)."]
    cl = claims(rows)
    if cl:
        lines += ["", "## The thesis's claims, measured", "", "| claim | measured | holds |", "|---|---|---|"]
        for text, val, ok in cl:
            lines.append(f"| {text} | {val} | {'yes' if ok else '**no**'} |")
    lines += _peer_sections(rows, raw, preset)
    lines += ["", f"![AP per row]({plot.name})", "", "## Commands", ""] + [f"    {c}" for c in commands]
    if preset.get("notes"):
        lines += ["", "## Notes", "", preset["notes"].strip()]
    text = "\n".join(lines) + "\n"
    markdown.write_text(text)
    _plot(rows, plot)
    return text


def _plot(rows: list, path: Path) -> None:
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['setting']}\n{r['name']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows)), 4.2))
    width = 0.27
    for i, m in enumerate(METRICS):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(xs, [r[m] for r in rows], width, yerr=[r[m + "_std"] for r in rows], capsize=2, label=m)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("COCO AP (%)")
    ax.set_title("Efficacy study (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.efficacy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help="preset name in benchmarks/efficacy/ or a YAML path")
    p.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the preset's)")
    p.add_argument("--markdown", default="benchmarks/EFFICACY.md")
    p.add_argument("--render", action="store_true", help="only rebuild the tables from the stored results")
    p.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    p.add_argument("--tune", action="store_true",
                   help="run the peer weight-tuning rows (the preset's tune section) instead of the study's")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="set a preset placeholder ${NAME} (e.g. best_label_free_peer=pkd); repeatable")
    args = p.parse_args(argv)
    preset = load_preset(args.preset)
    for text in args.var:
        if "=" not in text:
            raise SystemExit(f"efficacy: --var must look like NAME=VALUE, got {text!r}")
        name, value = text.split("=", 1)
        preset["vars"][name.strip()] = yaml.safe_load(value)
    if args.tune and not preset["tune_rows"]:
        raise SystemExit(f"efficacy: preset {preset['_path']} has no tune section")
    rows_wanted = set(args.rows.split(",")) if args.rows else None
    if rows_wanted:
        listed = preset["tune_rows"] if args.tune else preset["rows"]
        known = {r["name"] for r in listed} | {f"{r['setting']}/{r['name']}" for r in listed}
        unknown = rows_wanted - known
        if unknown:
            raise SystemExit(f"efficacy: unknown rows {sorted(unknown)}")
    if args.dry_run:
        for label, setting, row, seed, mode in plan(preset, rows_wanted, args.seeds, tune=args.tune):
            method = "" if row is None else row_overrides(preset, row).get("distill.method", "")
            print(f"{setting:8s} {label:20s} seed {seed} ({mode}{', ' + method if method else ''})")
        return 0
    raw_file = Path(preset["out_dir"]) / "raw.json"
    args_used = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--render"]
    cmd = " ".join(["python -m benchmarks.efficacy"] + args_used)
    if args.render:
        if not raw_file.is_file():
            raise SystemExit(f"efficacy: no results in {raw_file} yet")
        raw = json.loads(raw_file.read_text())
    else:
        raw = run_study(preset, rows_wanted, args.seeds, command=cmd, tune=args.tune)
    markdown = Path(args.markdown)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    plot = markdown.with_suffix(".png")
    markdown.with_suffix(".json").write_text(json.dumps({"summary": summarize(raw, preset), "raw": raw}, indent=1, default=str))
    print(render(raw, preset, markdown, plot, raw.get("_commands") or [cmd]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
