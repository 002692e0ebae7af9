"""Probe every loss op on every backend that runs on a device against kdkernels.reference (float64).

    python -m benchmarks.gpu_probe --device cuda [--quick] [--budget S] [--json PATH]
    python -m benchmarks.gpu_probe --device cpu --quick        # the same checks on the CPU backends

The inputs are the ones that break kernels rather than the friendly ones of a benchmark:

  - odd K (number of classes, or feature channels): 7 and 81;
  - layouts: contiguous; ``offset`` (a view starting at element 1 of a larger buffer, so the data
    pointer is misaligned for any vector load); ``strided`` (every other class / channel / pixel);
    ``transposed`` (logits stored column-major); ``channels_last`` (features); ``empty`` (0 rows,
    0 pixels). The storage around a view is filled with NaN, so a kernel that reads past its view
    shows up as a NaN;
  - float32 and bfloat16 (``--dtypes``); reductions mean and none (random upstream gradient);
  - the forward value and the student's gradient.

The backends are ``kdkernels.available_backends(device)`` (fastest first, "reference" last). The
reference runs on the CPU in float64 on the same (already rounded) input values. Error =
‖out − ref‖ / ‖ref‖ (absolute where ‖ref‖ = 0); a case passes when the output has the input's
dtype, device and shape, no NaN/inf, and error ≤ TOL[dtype]. One line per case, a summary line last.
Exit status: 0 all passed, 1 a case failed, 3 the --budget ran out before every case ran.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import kdkernels
from kdkernels import reference

# ‖out − ref‖ / ‖ref‖ allowed per input dtype (fp32 lands far under; bf16 rounds at ~4e-3).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
LOGIT_LAYOUTS = ("contiguous", "offset", "strided", "transposed", "empty")
FEATURE_LAYOUTS = ("contiguous", "offset", "strided", "channels_last", "empty")
PAIR_LAYOUTS = FEATURE_LAYOUTS[:-1]   # PKD needs N·H·W >= 2: no empty case
EXIT_FAIL, EXIT_INCOMPLETE = 1, 3


@dataclass(frozen=True)
class Op:
    name: str
    fn: str                    # attribute of kdkernels and kdkernels.reference
    kind: str                  # "logits" (R, K) + weight (R,) | "features" (N, C, H, W) + confidence (N, H, W)
                               # | "separable" features + spatial (N, H, W) and channel (N, C) weights | "pair" features only
                               # | "labels" (R, K) logits + (R,) class indices
    kwargs: dict = field(default_factory=dict)

    @property
    def layouts(self) -> tuple[str, ...]:
        return {"logits": LOGIT_LAYOUTS, "labels": LOGIT_LAYOUTS, "pair": PAIR_LAYOUTS}.get(self.kind, FEATURE_LAYOUTS)


OPS = (
    Op("confidence_masked_mse", "confidence_masked_mse", "features", dict(threshold=0.3, power=2.0)),
    Op("soft_label_kl[sigmoid]", "soft_label_kl", "logits", dict(mode="sigmoid", temperature=2.0)),
    Op("soft_label_kl[softmax]", "soft_label_kl", "logits", dict(mode="softmax", temperature=2.0)),
    Op("adl[sigmoid]", "adaptive_distillation_loss", "logits", dict(mode="sigmoid", temperature=2.0)),
    Op("adl[softmax]", "adaptive_distillation_loss", "logits", dict(mode="softmax", temperature=1.5)),
    Op("separable_weighted_mse", "separable_weighted_mse", "separable"),
    Op("pearson_feature_loss", "pearson_feature_loss", "pair"),
    Op("decoupled_kd", "decoupled_kd", "labels", dict(alpha=1.0, beta=8.0, temperature=2.0)),
)
OPS_BY_NAME = {op.name: op for op in OPS}


# --- inputs -------------------------------------------------------------------------------------
def place(values: torch.Tensor, layout: str, device) -> torch.Tensor:
    """`values` (already in its dtype) on `device` in `layout`; storage outside the view is NaN (-1 for
    integer values)."""
    device = torch.device(device)
    fill = math.nan if values.is_floating_point() else -1   # never read: a read shows as NaN / a bad label
    if layout in ("contiguous", "empty"):
        return values.to(device).contiguous()
    if layout == "channels_last":
        if values.dim() != 4:
            return values.to(device).contiguous()
        return values.to(device).contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        if values.dim() != 2:
            return values.to(device).contiguous()
        return values.t().contiguous().to(device).t()
    if layout == "offset":
        buf = torch.full((values.numel() + 1,), fill, dtype=values.dtype, device=device)
        view = buf[1:].view(values.shape)
    elif layout == "strided":   # every other element of dim 1 (channels, classes) or of a 1-D tensor
        dim = 1 if values.dim() > 1 else 0
        shape = list(values.shape)
        shape[dim] *= 2
        buf = torch.full(shape, fill, dtype=values.dtype, device=device)
        view = buf[(slice(None),) * dim + (slice(None, None, 2),)]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    view.copy_(values)
    return view


def make_inputs(op: Op, layout: str, k: int, dtype, device, *, quick: bool, gen: torch.Generator):
    """(student, teacher, positional extras, keyword extras) for one case, on `device` in `layout`."""
    def randn(shape, scale=1.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    empty = layout == "empty"
    if op.kind in ("logits", "labels"):
        rows = 0 if empty else (37 if quick else 1000)
        s, t = randn((rows, k), 2.5), randn((rows, k), 2.5)
        if op.kind == "labels":   # class indices, in the same layout (strided, offset) as the logits
            y = torch.randint(0, k, (rows,), generator=gen)
            return place(s, layout, device), place(t, layout, device), (place(y, layout, device),), {}
        w = torch.rand(rows, generator=gen, dtype=torch.float64).to(torch.float32)
        return place(s, layout, device), place(t, layout, device), (), dict(weight=place(w, layout, device))
    n, h, w_ = (2, 5, 3) if quick else (2, 13, 11)
    h = 0 if empty else h
    s, t = randn((n, k, h, w_)), randn((n, k, h, w_))
    if op.kind == "pair":
        return place(s, layout, device), place(t, layout, device), (), {}
    conf = torch.rand((n, h, w_), generator=gen, dtype=torch.float64).to(torch.float32)
    # the (N, H, W) confidence: "strided" takes every other row (dim 1 = H), channels_last n/a
    conf = place(conf, layout, device)
    if op.kind == "separable":
        channel = place(torch.rand((n, k), generator=gen, dtype=torch.float64).to(torch.float32), layout, device)
        return place(s, layout, device), place(t, layout, device), (conf, channel), {}
    return place(s, layout, device), place(t, layout, device), (conf,), {}


def describe(x: torch.Tensor) -> str:
    return f"{tuple(x.shape)} stride {x.stride()} offset {x.storage_offset()}"


# --- comparison ---------------------------------------------------------------------------------
def compare(out, ref, dtype, device=None) -> tuple[float, str | None]:
    """(error, problem) of one output against its float64 reference: problem is None when it passes.

    Checks dtype (== `dtype`), device (when given), shape, finiteness (where the reference is
    finite), then error = ‖out − ref‖ / ‖ref‖ (absolute when ‖ref‖ = 0) ≤ TOL[dtype]."""
    if out is None:
        return math.inf, "no output"
    if out.dtype != dtype:
        return math.inf, f"dtype {out.dtype}, expected {dtype}"
    if device is not None and out.device.type != torch.device(device).type:
        return math.inf, f"on {out.device}, expected {device}"
    if tuple(out.shape) != tuple(ref.shape):
        return math.inf, f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    bad = ~torch.isfinite(o) & torch.isfinite(r)
    if bad.any():
        return math.nan, f"{int(bad.sum())} non-finite value(s) where the reference is finite"
    if o.numel() == 0:
        return 0.0, None
    diff, norm = (o - r).norm().item(), r.norm().item()
    err = diff / norm if norm > 0 else diff
    return err, (None if err <= TOL[dtype] else f"error {err:.2e} > {TOL[dtype]:.0e}")


def loss_and_grad(fn, student, teacher, extra, kwargs, reduction, upstream):
    """loss = fn(student', ...) and d(Σ loss · upstream)/d student', student' a fresh leaf copy of the view."""
    s = student.detach().requires_grad_(True)   # same storage, offset and strides as `student`
    loss = fn(s, teacher, *extra, reduction=reduction, **kwargs)
    up = upstream(loss.shape).to(device=loss.device, dtype=loss.dtype)
    (loss * up).sum().backward()
    grad = s.grad if s.grad is not None else torch.zeros_like(s)
    return loss.detach(), grad, up


def run_case(op: Op, backend: str, layout: str, k: int, dtype, reduction: str, device, *,
             quick: bool, seed: int = 0) -> dict:
    """One case: the backend's loss and gradient against the float64 CPU reference."""
    gen = torch.Generator().manual_seed(seed)
    row = dict(op=op.name, backend=backend, layout=layout, k=k, dtype=str(dtype).replace("torch.", ""),
               reduction=reduction, loss_err=math.nan, grad_err=math.nan, problem=None)
    try:
        s, t, extra, kw = make_inputs(op, layout, k, dtype, device, quick=quick, gen=gen)
        row["student"] = describe(s)
        up_gen = torch.Generator().manual_seed(seed + 1)
        ups = {}

        def upstream(shape):   # the same upstream values (rounded to the loss dtype) for both runs
            if "u" not in ups:
                ups["u"] = torch.randn(shape, generator=up_gen, dtype=torch.float64) + 1.5
            return ups["u"]

        with kdkernels.use_backend(backend):
            loss, grad, up = loss_and_grad(getattr(kdkernels, op.fn), s, t, extra, dict(op.kwargs, **kw),
                                           reduction, upstream)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        cpu64 = {key: v.detach().cpu().double() for key, v in kw.items()}
        ref_loss, ref_grad, _ = loss_and_grad(
            getattr(reference, op.fn), s.cpu().double(), t.cpu().double(),
            tuple(e.cpu().double() if e.is_floating_point() else e.cpu() for e in extra),
            dict(op.kwargs, **cpu64), reduction,
            lambda shape: up.cpu().double().reshape(shape))
        row["loss_err"], loss_problem = compare(loss, ref_loss, dtype, device)
        row["grad_err"], grad_problem = compare(grad, ref_grad, dtype, device)
        problems = [f"{what}: {p}" for what, p in (("loss", loss_problem), ("grad", grad_problem)) if p]
        row["problem"] = "; ".join(problems) or None
    except Exception as exc:  # noqa: BLE001 - a raising kernel is a failed case, reported, not fatal
        row["problem"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return row


# --- the sweep ----------------------------------------------------------------------------------
def cases(device, *, ops=OPS, dtypes=(torch.float32, torch.bfloat16), ks=(7, 81),
          reductions=("mean", "none"), backends=None):
    """(op, backend, layout, k, dtype, reduction) in the order they run, so that a --budget cut
    loses the least: the fused backends (fastest first) dtype by dtype, then "reference"."""
    backends = backends or kdkernels.available_backends(device)
    order = [(b, d) for d in dtypes for b in backends if b != "reference"]
    order += [(b, d) for d in dtypes for b in backends if b == "reference"]
    for (backend, dtype), op in itertools.product(order, ops):
        for layout, k, reduction in itertools.product(op.layouts, ks, reductions):
            yield op, backend, layout, k, dtype, reduction


def fmt_err(x: float) -> str:
    return f"{x:.1e}" if math.isfinite(x) else str(x)


def format_row(row: dict) -> str:
    status = "FAIL" if row["problem"] else "ok"
    line = (f"{row['op']:<24} {row['backend']:<9} {row['layout']:<13} {row['k']:>3} {row['dtype']:<8} "
            f"{row['reduction']:<4} {fmt_err(row['loss_err']):>8} {fmt_err(row['grad_err']):>8}  {status}")
    return line + (f"  {row['problem']}" if row["problem"] else "")


HEADER = (f"{'op':<24} {'backend':<9} {'layout':<13} {'K':>3} {'dtype':<8} {'red':<4} "
          f"{'loss err':>8} {'grad err':>8}  status")


def probe(device, *, quick: bool = False, budget: float | None = None, out=None, **sweep) -> dict:
    """Run the sweep, print the table (to `out`, default stdout); returns {"rows": [...],
    "failed": n, "not_run": n, ...}."""
    out = out or sys.stdout
    t0 = time.perf_counter()
    todo = list(cases(device, **sweep))
    print(f"probe on {device}: backends {sweep.get('backends') or kdkernels.available_backends(device)}, "
          f"{len(todo)} cases, tolerance ‖out − ref‖/‖ref‖ ≤ "
          + ", ".join(f"{str(d).replace('torch.', '')} {t:.0e}" for d, t in TOL.items()), file=out)
    print(HEADER, file=out, flush=True)
    rows, not_run = [], 0
    for i, (op, backend, layout, k, dtype, reduction) in enumerate(todo):
        if budget is not None and time.perf_counter() - t0 > budget:
            not_run = len(todo) - i
            break
        rows.append(run_case(op, backend, layout, k, dtype, reduction, device, quick=quick, seed=i))
        print(format_row(rows[-1]), file=out, flush=True)
    failed = [r for r in rows if r["problem"]]
    summary = (f"probe: {len(rows)} cases run, {len(rows) - len(failed)} passed, {len(failed)} failed"
               + (f", {not_run} not run (budget of {budget:.0f} s spent)" if not_run else "")
               + f" in {time.perf_counter() - t0:.0f} s")
    for r in failed:
        print("FAILED: " + format_row(r) + f"  [student {r.get('student', '?')}]", file=out)
    print(summary, file=out, flush=True)
    return {"device": str(device), "rows": rows, "failed": len(failed), "not_run": not_run, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--quick", action="store_true", help="small shapes, K = 7 only")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default float32,bfloat16)")
    ap.add_argument("--ops", default=None, help=f"comma-separated subset of {list(OPS_BY_NAME)}")
    ap.add_argument("--backends", default=None, help="comma-separated (default: available_backends(device))")
    ap.add_argument("--budget", type=float, default=None, metavar="S", help="start no new case after S seconds")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every row to PATH")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    sweep = dict(dtypes=tuple(getattr(torch, d) for d in args.dtypes.split(",")),
                 ks=(7,) if args.quick else (7, 81))
    if args.ops:
        sweep["ops"] = tuple(OPS_BY_NAME[name] for name in args.ops.split(","))
    if args.backends:
        sweep["backends"] = args.backends.split(",")
    result = probe(device, quick=args.quick, budget=args.budget, **sweep)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if result["failed"]:
        return EXIT_FAIL
    return EXIT_INCOMPLETE if result["not_run"] else 0


if __name__ == "__main__":
    sys.exit(main())
