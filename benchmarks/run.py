"""Speed and memory of eager reference vs torch.compile(reference) vs kdkernels, in one run.

    python -m benchmarks.run --device cpu [--quick] [--dtype float32] [--out benchmarks/out]
                             [--markdown benchmarks/RESULTS.md] [--threads N] [--cases a,b]

For every case and size of ``benchmarks.cases`` it times the training forward ("fwd": grad mode
on, student requires grad) and forward + ``loss.backward()`` ("fwd+bwd", student.grad reset to
None before each call, outside the timed region) of the three variants. Repetitions are
interleaved round-robin (the variant order rotates every round) so that machine noise hits all
three alike; each repetition times a batch of calls sized to last ≥ ``target`` seconds and records
the mean per call. Reported: median and p20/p80 over repetitions, speedups eager/kdkernels and
compiled/kdkernels, the peak extra memory of one fwd + bwd (see ``benchmarks.memory`` for the
method) and, for confidence_masked_mse, the achieved bandwidth against this machine's measured
copy bandwidth (``dst.copy_(src)`` on 256 MB, bandwidth = 2 × bytes / time).

Writes ``bench_<device>_<dtype>.json`` (all raw numbers + machine info) and ``.png`` under --out,
prints markdown tables, and with --markdown writes them with a header naming machine and date.
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
from .cases import CASES, MODES, STEPS, VARIANTS

MB = 1e6


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
    if len(xs) == 1:
        return xs[0]
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
        return 9
    return 5


def time_variants(case, inp, device, *, quick: bool, reps: int | None, target: float) -> dict:
    """Warm up, then time fwd and fwd+bwd of all variants interleaved. Returns per-variant stats."""
    fns = {v: case.fn(v) for v in VARIANTS}
    warm: dict = {}
    checks: dict = {}
    for v, fn in fns.items():
        inp.reset()
        t0 = time.perf_counter()
        loss = STEPS["fwd+bwd"](fn, inp)
        _sync(device)
        first = time.perf_counter() - t0
        checks[v] = (float(loss.detach().double()), inp.student.grad.detach().clone())
        for _ in range(1 if v != "compiled" else 2):   # compiled: make sure nothing recompiles
            inp.reset()
            STEPS["fwd+bwd"](fn, inp)
        STEPS["fwd"](fn, inp)
        inp.reset()
        warm[v] = {"first_call_s": first}
    # correctness: every variant against eager (a wrong fast kernel is not a speedup)
    ref_loss, ref_grad = checks["eager"]
    for v in VARIANTS:
        loss_v, grad_v = checks[v]
        scale = ref_grad.abs().max().item() or 1.0
        warm[v]["loss"] = loss_v
        warm[v]["loss_rel_err"] = abs(loss_v - ref_loss) / max(abs(ref_loss), 1e-30)
        warm[v]["grad_max_err_rel"] = (grad_v.double() - ref_grad.double()).abs().max().item() / scale
    del checks, ref_grad

    out = {v: {"warmup": warm[v]} for v in VARIANTS}
    for mode in MODES:
        step = STEPS[mode]
        calls = {v: (lambda f=fns[v]: step(f, inp)) for v in VARIANTS}
        # calibrate: calls per repetition so one repetition lasts ~target seconds
        single = {v: _time_batch(calls[v], inp.reset, 1, device) for v in VARIANTS}
        inner = {v: max(1, min(2000, round(target / max(single[v], 1e-7)))) for v in VARIANTS}
        n_reps = reps or _reps_for(max(single.values()), quick)
        samples: dict = {v: [] for v in VARIANTS}
        gc.collect()
        gc.disable()
        try:
            for r in range(n_reps):
                order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
                for v in order:
                    samples[v].append(_time_batch(calls[v], inp.reset, inner[v], device))
        finally:
            gc.enable()
            inp.reset()
        for v in VARIANTS:
            out[v][mode] = dict(_stats(samples[v]), calls_per_sample=inner[v], reps=n_reps)
    return out


def copy_bandwidth(device, *, quick: bool) -> dict:
    """Median time of dst.copy_(src) on a 256 MB float32 tensor; bandwidth = 2 × bytes / time."""
    n = 64 * 1024 * 1024
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = [_time_batch(lambda: dst.copy_(src), lambda: None, 1, device) for _ in range(5 if quick else 15)]
    st = _stats(samples)
    nbytes = n * 4
    del src, dst
    return {"bytes": nbytes, "time": st, "bandwidth_Bps": 2 * nbytes / st["median"],
            "bandwidth_p20_p80_Bps": [2 * nbytes / st["p80"], 2 * nbytes / st["p20"]]}


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
    if x is None:
        return "–"
    x *= 1e3
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _ratio(a, b) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def _mb(x) -> str:
    return "–" if x is None else (f"{x / MB:.1f}" if x < 100 * MB else f"{x / MB:.0f}")


def markdown(result: dict) -> str:
    m = result["machine"]
    bi = m["kdkernels_build_info"]
    bw = result["copy_bandwidth"]
    lines = []
    lines.append("### Time (ms, median over interleaved repetitions; p20/p80 and raw samples in the JSON)\n")
    lines.append("| case | size | fwd eager | fwd compiled | fwd kdkernels | fwd+bwd eager | fwd+bwd compiled "
                 "| fwd+bwd kdkernels | fwd+bwd eager/kd | fwd+bwd compiled/kd | fwd eager/kd | fwd compiled/kd |")
    lines.append("|---|---|" + "---:|" * 10)
    for row in result["results"]:
        t = {v: {mode: row["variants"][v][mode]["median"] for mode in MODES} for v in VARIANTS}
        sp = row["speedup"]
        lines.append(
            f"| {row['case']} | {row['size']} | " + " | ".join(_ms(t[v]["fwd"]) for v in VARIANTS) + " | "
            + " | ".join(_ms(t[v]["fwd+bwd"]) for v in VARIANTS)
            + f" | {sp['fwd+bwd']['eager/kdkernels']:.2f}× | {sp['fwd+bwd']['compiled/kdkernels']:.2f}×"
            + f" | {sp['fwd']['eager/kdkernels']:.2f}× | {sp['fwd']['compiled/kdkernels']:.2f}× |")
    if any(row.get("memory") for row in result["results"]):
        lines.append("\n### Peak extra memory of one fwd+bwd (MB, and × the input bytes = student + teacher)\n")
        lines.append(f"Method: {result['memory_method']}\n")
        lines.append("| case | size | input MB | eager | compiled | kdkernels | eager × | compiled × | kdkernels × |")
        lines.append("|---|---|" + "---:|" * 7)
        for row in result["results"]:
            mem = row.get("memory") or {}
            vals = [mem.get(v, {}).get("peak_extra_bytes") for v in VARIANTS]
            mult = ["–" if x is None else f"{x / row['input_bytes']:.2f}" for x in vals]
            lines.append(f"| {row['case']} | {row['size']} | {_mb(row['input_bytes'])} | "
                         + " | ".join(_mb(x) for x in vals) + " | " + " | ".join(mult) + " |")
    lines.append(f"\n### Roofline: confidence_masked_mse fwd+bwd vs copy bandwidth\n")
    lines.append(f"Copy bandwidth (`dst.copy_(src)`, 256 MB fp32, {m['torch_threads']} threads, "
                 f"2 × bytes / median time): **{bw['bandwidth_Bps'] / 1e9:.1f} GB/s** "
                 f"(p80–p20 time: {bw['bandwidth_p20_p80_Bps'][0] / 1e9:.1f}–"
                 f"{bw['bandwidth_p20_p80_Bps'][1] / 1e9:.1f} GB/s). Bytes moved by an ideal fused "
                 "fwd+bwd = read student + read teacher + write grad (3 × one tensor) + the confidence.\n")
    lines.append("| size | bytes moved (MB) | eager GB/s | compiled GB/s | kdkernels GB/s | kdkernels % of copy BW |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for rf in result["roofline"]:
        lines.append(f"| {rf['size']} | {_mb(rf['bytes_moved'])} | "
                     + " | ".join(f"{rf['achieved_Bps'][v] / 1e9:.1f}" for v in VARIANTS)
                     + f" | {100 * rf['fraction_of_copy_bw']['kdkernels']:.0f}% |")
    lines.append("")
    return "\n".join(lines)


def markdown_header(result: dict) -> str:
    m = result["machine"]
    bi = m["kdkernels_build_info"]
    la0, la1 = m["loadavg_start"], m.get("loadavg_end", ("?",) * 3)
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
        f"- Device {m['device']}, dtype {result['dtype']}; load average at start "
        f"{la0[0]:.2f}, at end {la1[0] if isinstance(la1[0], str) else f'{la1[0]:.2f}'}",
        "- Variants: eager = `kdkernels.reference.<op>`; compiled = `torch.compile(kdkernels.reference.<op>)` "
        "(static shapes, compiled and warmed up before timing); kdkernels = `kdkernels.<op>` (backend auto).",
        "- fwd = training forward (grad mode, student requires grad; the fused kernels write the "
        "gradient here); fwd+bwd = forward + `loss.backward()` into a fresh `student.grad`. "
        "Repetitions interleaved round-robin across the three variants.",
        "",
    ])


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["case"] for r in result["results"]))
    cols = 2 if len(names) > 1 else 1
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        rs = [r for r in result["results"] if r["case"] == name]
        x = [r["numel"] for r in rs]
        for v in VARIANTS:
            st = [r["variants"][v]["fwd+bwd"] for r in rs]
            y = [s["median"] * 1e3 for s in st]
            ax.plot(x, y, marker="o", label=v)
            ax.fill_between(x, [s["p20"] * 1e3 for s in st], [s["p80"] * 1e3 for s in st], alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("student elements")
        ax.set_ylabel("fwd+bwd time (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    m = result["machine"]
    fig.suptitle(f"kdkernels fwd+bwd, {m['device']} {result['dtype']} — {m['cpu_model']} "
                 f"({m['torch_threads']} threads), torch {m['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke test)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    ap.add_argument("--out", default="benchmarks/out", help="folder for the JSON and the PNG")
    ap.add_argument("--markdown", default=None, metavar="PATH", help="also write the tables to PATH")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per variant (default: by size)")
    ap.add_argument("--target", type=float, default=None,
                    help="seconds per repetition (calls are batched up to it; default 0.05, quick 0.01)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    target = args.target or (0.01 if args.quick else 0.05)
    cases = CASES
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            ap.error(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in CASES]}")
        cases = tuple(c for c in CASES if c.name in wanted)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    result = {"machine": machine_info(device), "dtype": args.dtype, "quick": args.quick,
              "variants": list(VARIANTS), "modes": list(MODES), "results": []}
    result["copy_bandwidth"] = copy_bandwidth(device, quick=args.quick)

    work = [(c, s) for c in cases for s in c.sizes_for(args.quick)]
    bar = tqdm(work, desc="timing", unit="size", file=sys.stderr)
    for case, size in bar:
        bar.set_postfix_str(f"{case.name} {size.label}")
        inp = case.setup(size, dtype, device)
        timings = time_variants(case, inp, device, quick=args.quick, reps=args.reps, target=target)
        row = {"case": case.name, "op": case.op, "kwargs": {k: v for k, v in case.kwargs.items()},
               "size": size.label, "shape": list(size.shape), "numel": size.numel,
               "realistic": size.realistic, "input_bytes": inp.input_bytes,
               "tensor_bytes": inp.tensor_bytes, "extra_bytes": inp.extra_bytes,
               "variants": timings, "speedup": {}}
        for mode in MODES:
            kd = timings["kdkernels"][mode]["median"]
            row["speedup"][mode] = {f"{v}/kdkernels": timings[v][mode]["median"] / kd
                                    for v in ("eager", "compiled")}
        for v in VARIANTS:
            w = timings[v]["warmup"]
            tol = 1e-3 if dtype in (torch.float32, torch.float64) else 3e-2
            if w["loss_rel_err"] > tol or w["grad_max_err_rel"] > tol:
                tqdm.write(f"WARNING: {case.name} {size.label} {v}: loss rel err {w['loss_rel_err']:.2e}, "
                           f"grad max err {w['grad_max_err_rel']:.2e} vs eager", file=sys.stderr)
        result["results"].append(row)
        del inp
        gc.collect()

    # memory: after the timing so that torch.compile's on-disk cache is warm for the children
    if not args.no_memory:
        if device.type == "cuda":
            result["memory_method"] = ("torch.cuda.max_memory_allocated() − memory_allocated() around one "
                                       "warmed-up fwd+bwd (includes the student gradient)")
            for row in tqdm(result["results"], desc="memory", unit="size", file=sys.stderr):
                case = next(c for c in cases if c.name == row["case"])
                size = next(s for s in case.sizes if s.label == row["size"])
                row["memory"] = {v: M.measure(case, size, v, dtype, device) for v in VARIANTS}
        else:
            reset_ok = M.hwm_reset_supported()
            result["memory_method"] = (
                "peak RSS (VmHWM) − RSS before one warmed-up fwd+bwd, in a child process per case with "
                "glibc's mmap threshold at 64 KiB and VmHWM reset via /proc/self/clear_refs "
                "(includes the student gradient)" if reset_ok else
                "peak RSS (VmHWM) − RSS after setup, one child per variant, no warm-up "
                "(VmHWM not resettable on this kernel; compiled unavailable)")
            rows = result["results"]
            # one child per case (progress per case); the --quick run uses a single child
            groups = [rows] if args.quick else [[r for r in rows if r["case"] == c.name] for c in cases]
            for group in tqdm(groups, desc="memory", unit="child", file=sys.stderr):
                items = [(r["case"], r["size"], v) for r in group for v in VARIANTS]
                mem = M.measure_cpu(items, dtype=args.dtype, threads=torch.get_num_threads(),
                                    reset_ok=reset_ok)
                for r in group:
                    r["memory"] = {v: mem[(r["case"], r["size"], v)] for v in VARIANTS}

    result["roofline"] = []
    bw = result["copy_bandwidth"]["bandwidth_Bps"]
    for row in result["results"]:
        if row["op"] != "confidence_masked_mse":
            continue
        moved = 3 * row["tensor_bytes"] + row["extra_bytes"]
        achieved = {v: moved / row["variants"][v]["fwd+bwd"]["median"] for v in VARIANTS}
        result["roofline"].append({"size": row["size"], "realistic": row["realistic"], "bytes_moved": moved,
                                   "achieved_Bps": achieved,
                                   "fraction_of_copy_bw": {v: a / bw for v, a in achieved.items()}})

    result["machine"]["loadavg_end"] = os.getloadavg()
    result["wall_time_s"] = time.perf_counter() - t_start
    stem = f"bench_{device.type}_{args.dtype}"
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    json_path.write_text(json.dumps(result, indent=1))
    plot(result, png_path)
    table = markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(markdown_header(result) + "\n" + table
                                       + f"\nPlot: `{png_path}`; raw numbers: `{json_path}`.\n")
    print(f"wrote {json_path} and {png_path}" + (f" and {args.markdown}" if args.markdown else "")
          + f" in {result['wall_time_s']:.0f} s", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
