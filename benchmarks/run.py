"""Speed and memory of eager reference vs torch.compile(reference) vs kdkernels, in one run.

    python -m benchmarks.run --device cpu [--quick] [--dtype float32] [--out benchmarks/out]
                             [--markdown benchmarks/RESULTS.md] [--threads N] [--cases a,b]
    python -m benchmarks.run --device cuda --dtypes float32,bfloat16 --realistic --budget 200 \
                             [--json all.json] [--png all.png]

For every case and size of ``benchmarks.cases`` it times the training forward ("fwd": grad mode
on, student requires grad) and forward + ``loss.backward()`` ("fwd+bwd", student.grad reset to
None before each call, outside the timed region) of every variant (eager, compiled, kdkernels, and
one variant per further backend of ``kdkernels.available_backends(device)``: on CUDA with the
CUDA extension built, triton). Repetitions are
interleaved round-robin (the variant order rotates every round) so that machine noise hits all
variants alike; each repetition times a batch of calls sized to last about ``--target`` seconds
and records the mean per call. Reported: median and p20/p80 over repetitions, speedups
<variant>/kdkernels (ratios of medians), the peak extra memory of one fwd + bwd (method in
``benchmarks.memory``) and, for confidence_masked_mse, the achieved bandwidth against this
machine's copy bandwidth (median of ``dst.copy_(src)`` on 256 MB fp32, bandwidth = 2 × bytes / time).

The machine may be shared: the cores other processes keep busy during each row are measured
from /proc/stat and reported; a disturbed row is timed again (``--retries``) after waiting for a
quiet moment (``--wait-quiet``), and the least disturbed attempt is kept.

Writes ``bench_<device>_<dtype>.json`` (all raw numbers + machine info) and ``.png`` under --out,
prints markdown tables, and with --markdown writes them with a header naming machine and date.
Several dtypes (``--dtypes float32,bfloat16``) run one after the other; ``--json`` / ``--png`` also
write all of them into one JSON / one bar chart. ``--budget S`` starts no new size (and no memory
measurement) after S seconds, shared out between the dtypes (dtype i of n stops at (i + 1) / n of
it), and still writes everything measured so far (the skipped sizes are listed), so that a run
fits a fixed time slot.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import kdkernels

from . import memory as M
from .cases import CASES, MODES, STEPS, variants_for

MB = 1e6
DISTURBED = 0.25          # other processes' busy cores above which a row counts as disturbed
RETRY_MAX_S = 60.0        # rows whose timing took longer are not retried (keeps the run ~10 min)


# --- machine load from other processes (the machine may be shared) -----------------------------
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_ticks() -> tuple[int, int] | None:
    """(CPU ticks busy machine-wide, CPU ticks of this process and its threads), or None."""
    try:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        rest = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    busy = sum(vals) - vals[3] - vals[4]        # all but idle and iowait
    return busy, int(rest[11]) + int(rest[12])  # utime + stime


class ForeignLoad:
    """Average number of cores kept busy by *other* processes between start() and stop()."""

    def start(self):
        self._t0, self._b0 = time.perf_counter(), _busy_ticks()
        return self

    def stop(self) -> float | None:
        b1, wall = _busy_ticks(), time.perf_counter() - self._t0
        if b1 is None or self._b0 is None or wall <= 0:
            return None
        return max(0.0, ((b1[0] - self._b0[0]) - (b1[1] - self._b0[1])) / _HZ / wall)


def wait_quiet(max_wait: float, threshold: float = 0.15, window: float = 1.0) -> dict:
    """Wait (up to max_wait s) until other processes use < threshold cores over one window."""
    waited, load = 0.0, None
    while waited < max_wait:
        probe = ForeignLoad().start()
        time.sleep(window)
        load = probe.stop()
        if load is None or load < threshold:
            break
        waited += window
    return {"waited_s": waited, "foreign_cores_before": load}


# --- timing -------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batch(call, reset, n: int, device) -> float:
    """Mean seconds per call over n calls; reset() runs before each call, outside the clock."""
    total = 0.0
    for _ in range(n):
        reset()
        _sync(device)
        t0 = time.perf_counter()
        out = call()
        _sync(device)
        total += time.perf_counter() - t0
        del out
    return total / n


def _percentile(xs, q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _stats(samples) -> dict:
    return {"median": _percentile(samples, 0.5), "p20": _percentile(samples, 0.2),
            "p80": _percentile(samples, 0.8), "min": min(samples), "samples": list(samples)}


def _reps_for(seconds_per_call: float, quick: bool) -> int:
    if quick:
        return 3
    if seconds_per_call < 0.05:
        return 15
    if seconds_per_call < 0.5:
        return 7
    return 5


def warm_up(case, inp, device, variants) -> dict:
    """Compile/warm every variant, check it against eager, estimate its time per call and mode."""
    warm: dict = {}
    checks: dict = {}
    for v in variants:
        fn = case.fn(v)
        inp.reset()
        t0 = time.perf_counter()
        loss = STEPS["fwd+bwd"](fn, inp)
        _sync(device)
        first = time.perf_counter() - t0
        checks[v] = (float(loss.detach().double()), inp.student.grad.detach().clone())
        del loss
        if v == "compiled":   # a second untimed call: nothing may be left to compile later
            inp.reset()
            STEPS["fwd+bwd"](fn, inp)
        est = {mode: _time_batch(lambda: STEPS[mode](fn, inp), inp.reset, 1, device) for mode in MODES}
        inp.reset()
        warm[v] = {"first_call_s": first, "estimate_s": est}
    # correctness: every variant against eager (a wrong fast kernel is not a speedup)
    ref_loss, ref_grad = checks["eager"]
    scale = ref_grad.abs().max().item() or 1.0
    for v in variants:
        loss_v, grad_v = checks[v]
        warm[v]["loss"] = loss_v
        warm[v]["loss_rel_err"] = abs(loss_v - ref_loss) / max(abs(ref_loss), 1e-30)
        warm[v]["grad_max_err_rel"] = (grad_v.double() - ref_grad.double()).abs().max().item() / scale
    return warm


def time_variants(case, inp, device, variants, warm: dict, *, quick: bool, reps: int | None,
                  target: float):
    """Time fwd and fwd+bwd of all variants, repetitions interleaved round-robin.

    Returns ({variant: {mode: stats}}, cores that other processes kept busy meanwhile)."""
    fns = {v: case.fn(v) for v in variants}
    out: dict = {v: {} for v in variants}
    probe = ForeignLoad().start()
    for mode in MODES:
        step = STEPS[mode]
        calls = {v: (lambda f=fns[v]: step(f, inp)) for v in variants}
        single = {v: warm[v]["estimate_s"][mode] for v in variants}
        inner = {v: max(1, min(2000, round(target / max(single[v], 1e-7)))) for v in variants}
        n_reps = reps or _reps_for(max(single.values()), quick)
        samples: dict = {v: [] for v in variants}
        gc.collect()
        gc.disable()
        try:
            for r in range(n_reps):
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    samples[v].append(_time_batch(calls[v], inp.reset, inner[v], device))
        finally:
            gc.enable()
            inp.reset()
        for v in variants:
            out[v][mode] = dict(_stats(samples[v]), calls_per_sample=inner[v], reps=n_reps)
    return out, probe.stop()


def copy_bandwidth(device, *, quick: bool) -> dict:
    """Median time of dst.copy_(src) on a 256 MB float32 tensor; bandwidth = 2 × bytes / time."""
    n = 64 * 1024 * 1024
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    probe = ForeignLoad().start()
    samples = [_time_batch(lambda: dst.copy_(src), lambda: None, 1, device) for _ in range(5 if quick else 15)]
    foreign = probe.stop()
    st = _stats(samples)
    nbytes = n * 4
    del src, dst
    return {"bytes": nbytes, "time": st, "bandwidth_Bps": 2 * nbytes / st["median"],
            "bandwidth_p20_p80_Bps": [2 * nbytes / st["p80"], 2 * nbytes / st["p20"]],
            "foreign_cores": foreign}


# --- machine ------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def machine_info(device) -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "kdkernels_build_info": kdkernels.build_info(),
        "loadavg_start": os.getloadavg(),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- reports ------------------------------------------------------------------------------------
def _ms(x) -> str:
    x *= 1e3
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _mb(x) -> str:
    return "–" if x is None else (f"{x / MB:.1f}" if x < 100 * MB else f"{x / MB:.0f}")


def _load(x) -> str:
    return "?" if x is None else f"{x:.2f}" + (" †" if x > DISTURBED else "")


def _others(variants) -> list:
    return [v for v in variants if v != "kdkernels"]


def headline(result: dict) -> list:
    """Summary lines for the detection-realistic sizes (fwd+bwd speedups, memory, roofline)."""
    variants = result["variants"]
    rows = [r for r in result["results"] if r["realistic"]]
    if not rows:
        return []
    lines = ["### Headline: detection-realistic shapes, fwd+bwd\n"]
    head = (["case", "size", "kdkernels ms"] + [f"{v}/kd" for v in _others(variants)]
            + [f"peak extra {v} MB (× input)" for v in variants])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---|" + "---:|" * (len(head) - 2))
    for row in rows:
        mem = row.get("memory") or {}
        cells = [row["case"], row["size"], _ms(row["variants"]["kdkernels"]["fwd+bwd"]["median"])]
        cells += [f"{row['speedup']['fwd+bwd'][f'{v}/kdkernels']:.2f}×" for v in _others(variants)]
        for v in variants:
            x = mem.get(v, {}).get("peak_extra_bytes")
            cells.append("–" if x is None else f"{_mb(x)} ({x / row['input_bytes']:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    for rf in result["roofline"]:
        if rf["realistic"]:
            lines.append(f"\nconfidence_masked_mse {rf['size']} fwd+bwd moves at least "
                         f"{_mb(rf['bytes_moved'])} MB: kdkernels reaches "
                         f"{rf['achieved_Bps']['kdkernels'] / 1e9:.1f} GB/s = "
                         f"**{100 * rf['fraction_of_copy_bw']['kdkernels']:.0f}% of the copy bandwidth** ("
                         + ", ".join(f"{v} {100 * rf['fraction_of_copy_bw'][v]:.0f}%" for v in _others(variants))
                         + ").")
    lines.append("")
    return lines


def markdown(result: dict) -> str:
    variants = result["variants"]
    bw = result["copy_bandwidth"]
    short = {"eager": "eager", "compiled": "compiled", "kdkernels": "kd"}
    lines = headline(result)
    lines.append("### Time (ms, median over interleaved repetitions; p20/p80 and raw samples in the JSON)\n")
    head = (["case", "size"] + [f"{mode} {v}" for mode in MODES for v in variants]
            + [f"{mode} {short.get(v, v)}/kd" for mode in ("fwd+bwd", "fwd") for v in _others(variants)]
            + ["other load"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---|" + "---:|" * (len(head) - 2))
    for row in result["results"]:
        cells = [row["case"], row["size"]]
        cells += [_ms(row["variants"][v][mode]["median"]) for mode in MODES for v in variants]
        cells += [f"{row['speedup'][mode][f'{v}/kdkernels']:.2f}×" for mode in ("fwd+bwd", "fwd")
                  for v in _others(variants)]
        cells.append(_load(row.get("foreign_cores")))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n*x/kd* = median time of x ÷ median time of kdkernels (> 1: kdkernels is faster). "
                 f"*other load* = cores kept busy by other processes while the row was timed "
                 f"(/proc/stat); rows marked † had more than {DISTURBED} cores taken and are less reliable.")

    if any(row.get("memory") for row in result["results"]):
        lines.append("\n### Peak extra memory of one fwd+bwd (MB, and × the input bytes = student + teacher)\n")
        lines.append(f"Method: {result['memory_method']}\n")
        head = (["case", "size", "input MB"] + [f"{v} MB" for v in variants] + [f"{v} ×" for v in variants])
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * (len(head) - 2))
        for row in result["results"]:
            mem = row.get("memory") or {}
            vals = [mem.get(v, {}).get("peak_extra_bytes") for v in variants]
            mult = ["–" if x is None else f"{x / row['input_bytes']:.2f}" for x in vals]
            lines.append(f"| {row['case']} | {row['size']} | {_mb(row['input_bytes'])} | "
                         + " | ".join(_mb(x) for x in vals) + " | " + " | ".join(mult) + " |")

    if result["roofline"]:
        lines.append("\n### Roofline: confidence_masked_mse fwd+bwd against the copy bandwidth\n")
        lines.append(f"Copy bandwidth (`dst.copy_(src)`, 256 MB fp32, {result['machine']['torch_threads']} "
                     f"threads, 2 × bytes / median time): **{bw['bandwidth_Bps'] / 1e9:.1f} GB/s** "
                     f"(p20–p80 of the time: {bw['bandwidth_p20_p80_Bps'][0] / 1e9:.1f}–"
                     f"{bw['bandwidth_p20_p80_Bps'][1] / 1e9:.1f} GB/s; other load "
                     f"{_load(bw.get('foreign_cores'))}). Bytes an ideal fused fwd+bwd moves = read "
                     "student + read teacher + write the gradient (3 × one tensor) + read the confidence; "
                     "achieved = those bytes ÷ the fwd+bwd median.\n")
        head = ["size", "bytes moved (MB)"] + [f"{v} GB/s" for v in variants] + [
            f"{v} % of copy" for v in variants]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|" + "---:|" * (len(head) - 1))
        for rf in result["roofline"]:
            lines.append(f"| {rf['size']} | {_mb(rf['bytes_moved'])} | "
                         + " | ".join(f"{rf['achieved_Bps'][v] / 1e9:.1f}" for v in variants) + " | "
                         + " | ".join(f"{100 * rf['fraction_of_copy_bw'][v]:.0f}%" for v in variants) + " |")
    if result.get("skipped"):
        lines.append(f"\nNot measured (the time budget of {result['budget_s']:.0f} s was spent): "
                     + ", ".join(f"{c} {s}" for c, s in result["skipped"]) + ".")
    lines.append("")
    return "\n".join(lines)


def markdown_header(result: dict) -> str:
    m = result["machine"]
    bi = m["kdkernels_build_info"]
    la0, la1 = m["loadavg_start"], m["loadavg_end"]
    variants = result["variants"]
    desc = {"eager": "eager = `kdkernels.reference.<op>`",
            "compiled": "compiled = `torch.compile(kdkernels.reference.<op>)` (static shapes, compiled "
                        "and warmed up before timing)",
            "kdkernels": "kdkernels = `kdkernels.<op>` (backend auto)"}
    return "\n".join([
        "# kdkernels benchmarks",
        "",
        f"Generated by `python -m benchmarks.run {' '.join(m['argv'][1:])}` on {m['date']} "
        f"(wall time {result['wall_time_s'] / 60:.1f} min).",
        "",
        f"- Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['platform']}); "
        f"torch threads: {m['torch_threads']}" + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
        f"- Software: torch {m['torch']}, Python {m['python']}, kdkernels {bi.get('kdkernels')} "
        f"(backends {', '.join(bi.get('compiled_backends', []))}; CPU ISA {bi.get('cpu_isa', '?')}; "
        f"{bi.get('compiler', '?')})",
        f"- Device {m['device']}, dtype {result['dtype']}; load average at start {la0[0]:.2f}, "
        f"at end {la1[0]:.2f}",
        "- Variants: " + "; ".join(desc.get(v, f"{v} = `kdkernels.<op>` under `kdkernels.use_backend(\"{v}\")`")
                                   for v in variants) + ".",
        "- fwd = training forward (grad mode, student requires grad; the fused kernels write the "
        "gradient here); fwd+bwd = forward + `loss.backward()` into a fresh `student.grad`. "
        "Repetitions interleaved round-robin across the variants.",
        "",
    ])


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["case"] for r in result["results"]))
    cols = 2 if len(names) > 1 else 1
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        rs = [r for r in result["results"] if r["case"] == name]
        x = [r["numel"] for r in rs]
        for v in result["variants"]:
            st = [r["variants"][v]["fwd+bwd"] for r in rs]
            ax.plot(x, [s["median"] * 1e3 for s in st], marker="o", label=v)
            ax.fill_between(x, [s["p20"] * 1e3 for s in st], [s["p80"] * 1e3 for s in st], alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("student elements")
        ax.set_ylabel("fwd+bwd ms (median, p20–p80 band)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu_model']} ({m['torch_threads']} threads)"
    fig.suptitle(f"kdkernels fwd+bwd, {m['device']} {result['dtype']}: {where}, torch {m['torch']}, "
                 f"{m['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line -------------------------------------------------------------------------------
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke test)")
    ap.add_argument("--realistic", action="store_true", help="only the detection-realistic sizes")
    ap.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="one dtype (default float32)")
    ap.add_argument("--dtypes", default=None, metavar="A,B",
                    help="comma-separated dtypes, run one after the other (e.g. float32,bfloat16)")
    ap.add_argument("--out", default="benchmarks/out", help="folder for the JSON and the PNG")
    ap.add_argument("--markdown", default=None, metavar="PATH", help="also write the tables to PATH")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write all dtypes' results to one JSON")
    ap.add_argument("--png", default=None, metavar="PATH", help="also draw all dtypes' fwd+bwd times as bars")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per variant (default: by size)")
    ap.add_argument("--target", type=float, default=None,
                    help="seconds per repetition (calls are batched up to it; default 0.05, quick 0.01)")
    ap.add_argument("--budget", type=float, default=None, metavar="S",
                    help="start no new size or memory measurement after S seconds (the rest is listed "
                         "as skipped); the outputs are written either way")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                    help="before each size wait up to S seconds until other processes use < 0.15 "
                         "cores (default 10, 0 with --quick)")
    ap.add_argument("--retries", type=int, default=None,
                    help=f"time a size again (up to N times, keeping the least disturbed attempt) when "
                         f"other processes kept > {DISTURBED} cores busy and the attempt took "
                         f"< {RETRY_MAX_S:.0f} s (default 1, 0 with --quick)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="measure nothing: re-render the PNG and tables (and --markdown) from a saved JSON")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    """Parsed arguments with the defaults that depend on others filled in (dtypes, cases, ...)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.dtype and args.dtypes:
        ap.error("give --dtype or --dtypes, not both")
    args.dtypes = (args.dtypes or args.dtype or "float32").split(",")
    bad = [d for d in args.dtypes if d not in DTYPE_NAMES]
    if bad:
        ap.error(f"unknown dtype(s) {bad}; known: {list(DTYPE_NAMES)}")
    args.target = args.target or (0.01 if args.quick else 0.05)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 10.0
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    args.case_list = CASES
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            ap.error(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in CASES]}")
        args.case_list = tuple(c for c in CASES if c.name in wanted)
    if not args.render and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    return args


# --- one size -----------------------------------------------------------------------------------
def time_with_retries(case, size, inp, device, variants, warm, args) -> tuple[dict, list]:
    """time_variants, again (up to --retries times) while other processes disturbed it.
    Returns (the least disturbed attempt, all attempts)."""
    attempts = []
    for attempt in range(1 + args.retries):
        quiet = wait_quiet(args.wait_quiet * (1 + attempt)) if args.wait_quiet > 0 else {}
        t0 = time.perf_counter()
        timings, foreign = time_variants(case, inp, device, variants, warm, quick=args.quick,
                                         reps=args.reps, target=args.target)
        took = time.perf_counter() - t0
        attempts.append({"foreign_cores": foreign, "wait_quiet": quiet, "seconds": took,
                         "timings": timings})
        if foreign is None or foreign <= DISTURBED:
            break
        retry = attempt < args.retries and took < RETRY_MAX_S
        tqdm.write(f"note: {case.name} {size.label}: other processes kept {foreign:.2f} cores busy"
                   + (", timing it again" if retry else ""), file=sys.stderr)
        if not retry:
            break
    return min(attempts, key=lambda a: a["foreign_cores"] or 0.0), attempts


def warn_inaccurate(case, size, dtype, warm: dict) -> None:
    """A warning for every variant whose loss or gradient is off the eager one (a wrong fast
    kernel is not a speedup)."""
    tol = 1e-3 if dtype in (torch.float32, torch.float64) else 3e-2
    for v, w in warm.items():
        if w["loss_rel_err"] > tol or w["grad_max_err_rel"] > tol:
            tqdm.write(f"WARNING: {case.name} {size.label} {v}: loss rel err {w['loss_rel_err']:.2e}, "
                       f"grad max err {w['grad_max_err_rel']:.2e} of max |grad| vs eager", file=sys.stderr)


def bench_size(case, size, dtype, device, variants, args) -> dict:
    """Warm up, check and time every variant at one size: one row of the result."""
    t_row = time.perf_counter()
    inp = case.setup(size, dtype, device)
    warm = warm_up(case, inp, device, variants)
    best, attempts = time_with_retries(case, size, inp, device, variants, warm, args)
    timings = best["timings"]
    for v in variants:
        timings[v]["warmup"] = warm[v]
    row = {"case": case.name, "op": case.op, "kwargs": dict(case.kwargs),
           "size": size.label, "shape": list(size.shape), "numel": size.numel,
           "realistic": size.realistic, "input_bytes": inp.input_bytes,
           "tensor_bytes": inp.tensor_bytes, "extra_bytes": inp.extra_bytes,
           "variants": timings, "speedup": {},
           "foreign_cores": best["foreign_cores"], "wait_quiet": best["wait_quiet"],
           "attempts": [{k: a[k] for k in ("foreign_cores", "wait_quiet", "seconds")} for a in attempts]}
    for mode in MODES:
        kd = timings["kdkernels"][mode]["median"]
        row["speedup"][mode] = {f"{v}/kdkernels": timings[v][mode]["median"] / kd for v in _others(variants)}
    warn_inaccurate(case, size, dtype, warm)
    row["wall_s"] = time.perf_counter() - t_row
    return row


# --- memory and roofline ------------------------------------------------------------------------
def _past(deadline) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def memory_cuda(result: dict, cases, dtype, device, deadline) -> None:
    result["memory_method"] = ("torch.cuda.max_memory_allocated() − memory_allocated() around one "
                               "warmed-up fwd+bwd (includes the student gradient)")
    for row in tqdm(result["results"], desc="memory", unit="size", file=sys.stderr):
        if _past(deadline):
            break
        case = next(c for c in cases if c.name == row["case"])
        size = next(s for s in case.sizes if s.label == row["size"])
        row["memory"] = {v: M.measure(case, size, v, dtype, device) for v in result["variants"]}


def memory_cpu(result: dict, cases, dtype_name: str, quick: bool, deadline) -> None:
    reset_ok = M.hwm_reset_supported()
    result["memory_method"] = (
        "peak RSS (VmHWM) − RSS just before one fwd+bwd of a warmed-up variant, in child "
        "processes with glibc's mmap threshold at 64 KiB (freed buffers go back to the OS) and "
        "VmHWM reset through /proc/self/clear_refs; includes the student gradient"
        if reset_ok else
        "peak RSS (VmHWM) − RSS after setup, one child per variant, no warm-up (VmHWM cannot be "
        "reset on this kernel): includes first-call initialisation; compiled unavailable")
    rows, variants = result["results"], result["variants"]
    # one child per case (progress per case); the --quick run uses a single child
    groups = [rows] if quick else [[r for r in rows if r["case"] == c.name] for c in cases]
    for group in tqdm([g for g in groups if g], desc="memory", unit="child", file=sys.stderr):
        if _past(deadline):
            break
        items = [(r["case"], r["size"], v) for r in group for v in variants]
        mem = M.measure_cpu(items, dtype=dtype_name, threads=torch.get_num_threads(), reset_ok=reset_ok)
        for r in group:
            r["memory"] = {v: mem[(r["case"], r["size"], v)] for v in variants}


def add_roofline(result: dict) -> None:
    """confidence_masked_mse fwd+bwd: the bytes an ideal fused pass moves ÷ time, vs the copy bandwidth."""
    result["roofline"] = []
    bw = result["copy_bandwidth"]["bandwidth_Bps"]
    for row in result["results"]:
        if row["op"] != "confidence_masked_mse":
            continue
        moved = 3 * row["tensor_bytes"] + row["extra_bytes"]
        achieved = {v: moved / row["variants"][v]["fwd+bwd"]["median"] for v in result["variants"]}
        result["roofline"].append({"size": row["size"], "realistic": row["realistic"], "bytes_moved": moved,
                                   "achieved_Bps": achieved,
                                   "fraction_of_copy_bw": {v: a / bw for v, a in achieved.items()}})


# --- one dtype ----------------------------------------------------------------------------------
def run_dtype(args, dtype_name: str, device, deadline=None) -> dict:
    """Every case and size of the run in one dtype (sizes past the deadline are listed as skipped)."""
    t_start = time.perf_counter()
    dtype = getattr(torch, dtype_name)
    variants = variants_for(device)
    result = {"machine": machine_info(device), "dtype": dtype_name, "quick": args.quick,
              "realistic_only": args.realistic, "variants": list(variants), "modes": list(MODES),
              "backends": kdkernels.available_backends(device), "results": []}
    if args.budget is not None:
        result.update(budget_s=args.budget, skipped=[])
    result["copy_bandwidth"] = copy_bandwidth(device, quick=args.quick)
    work = [(c, s) for c in args.case_list for s in c.sizes_for(args.quick) if s.realistic or not args.realistic]
    bar = tqdm(work, desc=f"timing {dtype_name}", unit="size", file=sys.stderr)
    for case, size in bar:
        if _past(deadline):
            result["skipped"].append([case.name, size.label])
            continue
        bar.set_postfix_str(f"{case.name} {size.label}")
        result["results"].append(bench_size(case, size, dtype, device, variants, args))
        gc.collect()
    # memory: after the timing, so that torch.compile's on-disk cache is warm for the CPU children
    if not args.no_memory and result["results"]:
        if device.type == "cuda":
            memory_cuda(result, args.case_list, dtype, device, deadline)
        else:
            memory_cpu(result, args.case_list, dtype_name, args.quick, deadline)
    add_roofline(result)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["wall_time_s"] = time.perf_counter() - t_start
    return result


# --- main ---------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    """Run (or --render) the benchmark; returns the result, or {"runs": [...]} for several dtypes."""
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        results = saved["runs"] if "runs" in saved else [saved]
        for result in results:
            write_outputs(result, out_dir, write_json=False)
        write_combined(results, out_dir, args, write_json=False)
        return saved

    t0 = time.perf_counter()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for i, dtype_name in enumerate(args.dtypes):
        # the budget is shared out: dtype i stops at (i + 1) / n of it (what one leaves, the next gets)
        deadline = None if args.budget is None else t0 + args.budget * (i + 1) / len(args.dtypes)
        results.append(run_dtype(args, dtype_name, device, deadline))
        write_outputs(results[-1], out_dir)
    write_combined(results, out_dir, args)
    return results[0] if len(results) == 1 else {"runs": results}


# --- outputs ------------------------------------------------------------------------------------
def _paths(result: dict, out_dir: Path) -> tuple[Path, Path]:
    stem = f"bench_{torch.device(result['machine']['device']).type}_{result['dtype']}"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.png"


def write_outputs(result: dict, out_dir: Path, *, write_json: bool = True) -> None:
    """bench_<device>_<dtype>.json and .png under out_dir, the tables on stdout."""
    json_path, png_path = _paths(result, out_dir)
    if write_json:
        json_path.write_text(json.dumps(result, indent=1))
    plot(result, png_path)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in ([json_path] if write_json else []) + [png_path])
          + f" ({result['dtype']} took {result['wall_time_s']:.0f} s)", file=sys.stderr)


def markdown_document(results: list, out_dir: Path, json_path=None, png_path=None) -> str:
    """The --markdown file: header (machine, date, variants) and tables; one section per dtype."""
    parts = []
    for result in results:
        own_json, own_png = _paths(result, out_dir)
        parts.append(markdown_header(result) + "\n" + markdown(result)
                     + f"\nPlot: `{png_path or own_png}`; raw numbers: `{json_path or own_json}`.\n")
    if len(parts) == 1:
        return parts[0]
    # several dtypes: one title, then each header without its title line
    return "# kdkernels benchmarks\n\n" + "\n".join(
        f"## {r['dtype']}\n\n" + p.split("\n", 2)[2] for r, p in zip(results, parts))


def write_combined(results: list, out_dir: Path, args, *, write_json: bool = True) -> None:
    """--markdown (all dtypes), --json (all dtypes in one file) and --png (one bar chart)."""
    if args.json and write_json:
        Path(args.json).write_text(json.dumps({"runs": results}, indent=1))
    if args.png:
        plot_bars(results, Path(args.png))
    if args.markdown:
        Path(args.markdown).write_text(markdown_document(results, out_dir, args.json, args.png))
    written = [p for p in (args.json if write_json else None, args.png, args.markdown) if p]
    if written:
        print("wrote " + ", ".join(map(str, written)), file=sys.stderr)


def plot_bars(results: list, path: Path) -> None:
    """fwd+bwd median per case and size, one bar per variant, one panel per dtype (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.8 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        rows, variants = result["results"], result["variants"]
        ax.set_title(f"{result['machine']['device']} {result['dtype']}", fontsize=10)
        if not rows:
            ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
            continue
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            ax.bar([k + i * width for k in range(len(rows))],
                   [r["variants"][v]["fwd+bwd"]["median"] * 1e3 for r in rows], width, label=v)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(rows))])
        ax.set_xticklabels([f"{r['case']}\n{r['size']}" for r in rows], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("fwd+bwd ms (median)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = results[0]["machine"]
    fig.suptitle(f"kdkernels fwd+bwd: {m.get('gpu') or m['cpu_model']}, torch {m['torch']}, {m['date'][:10]}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
