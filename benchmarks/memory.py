"""Peak extra memory of one forward + backward, per (case, size, variant).

What is measured: the highest memory in use during ``loss = f(inputs); loss.backward()`` minus the
memory in use just before it, with the inputs (student, teacher, confidence/weight) already built
and the variant already warmed up (for torch.compile: compiled). The extra therefore includes the
student's gradient (one student-sized tensor, which every variant must produce) and the autograd
graph's saved tensors, intermediates and workspaces.

CUDA: ``torch.cuda.reset_peak_memory_stats()``, then ``max_memory_allocated() − memory_allocated()``
(the caching allocator's own accounting, in the benchmark process).

CPU: PyTorch has no allocator statistics for CPU tensors (tracemalloc does not see them), and the
process RSS high-water mark cannot be reset from Python in general, so the measurements run in
short child processes (``python -m benchmarks.memory``; run.py uses one per case, and a single
one for --quick), each of which
  1. sets glibc malloc's mmap threshold to 64 KiB (``mallopt(M_MMAP_THRESHOLD)``): every tensor
     buffer is then its own mmap, returned to the OS when freed, so the RSS after a warm-up or
     after a previous size is not inflated by free-but-retained heap that the measured run could
     silently reuse;
  2. builds the inputs, warms the variant up (fwd + bwd: twice per size for torch.compile, which
     compiles each new shape; once per process for the others, whose first call initialises
     lazily), frees the loss and the gradient;
  3. reads VmRSS from /proc/self/status, resets the high-water mark by writing "5" to
     /proc/self/clear_refs (Linux ≥ 4.0) and checks that VmHWM dropped to VmRSS;
  4. runs fwd + bwd once and reads VmHWM (peak RSS): extra = VmHWM − VmRSS(before).
kdkernels keeps freed large CPU output buffers for reuse (``kdkernels.cpu_buffer_cache_info``);
that cache is emptied before step 3, so the measured call pays for its own gradient buffer.
If the high-water mark cannot be reset (older kernel, no /proc), each (case, size, variant) runs
in its own child without warm-up (the value then includes first-call initialisation, a few MB);
torch.compile's would include compilation, so it is reported as unavailable. RSS counts touched
pages only, in KiB: a buffer allocated but never written costs nothing, as on the machine itself.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from .cases import CASES_BY_NAME, STEPS

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
REPO_ROOT = Path(__file__).resolve().parents[1]


def _status_kib(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"{key} not found in {_STATUS}")
    return int(m.group(1))


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def hwm_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; True if the kernel honoured it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return hwm_bytes() <= rss_bytes() + (1 << 20)


def set_malloc_mmap_threshold(nbytes: int = 64 * 1024) -> bool:
    """Make glibc serve every allocation ≥ nbytes with its own mmap (freed straight to the OS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, nbytes) == 1
        libc.mallopt(_M_TRIM_THRESHOLD, nbytes)
        return ok
    except (OSError, AttributeError):
        return False


def _fwd_bwd(fn, inp):
    inp.reset()
    return STEPS["fwd+bwd"](fn, inp)


def measure(case, size, variant: str, dtype, device, *, warmup: int = 1, reset_ok: bool = True) -> dict:
    """Peak extra bytes of one fwd + bwd (see the module docstring), after `warmup` untimed calls
    (torch.compile gets at least 2: it compiles every new shape). Runs in the calling process."""
    device = torch.device(device)
    inp = case.setup(size, dtype, device)
    fn = case.fn(variant)
    for _ in range(max(warmup, 2) if variant == "compiled" and warmup else warmup):
        loss = _fwd_bwd(fn, inp)
        del loss
    inp.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss = _fwd_bwd(fn, inp)
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - base
        method = "torch.cuda.max_memory_allocated"
    else:
        from kdkernels import release_cpu_buffers
        release_cpu_buffers()   # kdkernels' freed gradient buffers: the measured call must map its own
        base = rss_bytes()
        if reset_ok and not reset_hwm():
            raise RuntimeError("VmHWM could not be reset")
        before = hwm_bytes()
        loss = _fwd_bwd(fn, inp)
        peak = hwm_bytes()
        if reset_ok or peak > before:
            extra = max(0, peak - base)
        else:  # the setup's own peak was higher: the run's peak is hidden below it
            extra = None
        method = "VmHWM-VmRSS" + ("" if reset_ok else " (no reset)")
    out = {"peak_extra_bytes": extra, "input_bytes": inp.input_bytes, "method": method,
           "loss": float(loss.detach().float())}
    del loss
    inp.reset()
    return out


def _child_main(spec: dict) -> list:
    """Entry point of the child process: measure every requested (case, size label, variant)."""
    mallopt_ok = set_malloc_mmap_threshold()
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    reset_ok = spec["reset_ok"]
    results = []
    warmed = set()   # eager/kdkernels need one warm-up per process (lazy init), not one per size
    for case_name, label, variant in spec["items"]:
        case = CASES_BY_NAME[case_name]
        size = next(s for s in case.sizes if s.label == label)
        if variant == "compiled" and not reset_ok:
            r = {"peak_extra_bytes": None, "method": "unavailable: VmHWM cannot be reset, "
                 "the measurement would include compilation"}
        else:
            first = (case_name, variant) not in warmed
            warmed.add((case_name, variant))
            warmup = 0 if not reset_ok else (2 if variant == "compiled" else int(first))
            r = measure(case, size, variant, dtype, "cpu", warmup=warmup, reset_ok=reset_ok)
        r["mallopt_mmap_threshold"] = mallopt_ok
        results.append([case_name, label, variant, r])
        gc.collect()
    return results


def hwm_reset_supported() -> bool:
    """Whether this kernel lets a process reset its RSS high-water mark (checked in a child)."""
    code = ("import sys\nfrom benchmarks.memory import reset_hwm\nb = bytearray(64 << 20)\n"
            "for i in range(0, len(b), 4096): b[i] = 1\n"   # touch the pages: RSS and VmHWM rise
            "del b\nsys.exit(0 if reset_hwm() else 1)")
    try:
        return subprocess.run([sys.executable, "-c", code], env=_child_env(), timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)   # same as the mallopt call, for early allocations
    env["MALLOC_TRIM_THRESHOLD_"] = str(64 * 1024)
    return env


def measure_cpu(items, *, dtype="float32", threads=None, reset_ok: bool = True,
                timeout: float = 900) -> dict:
    """{(case, size label, variant): result} for items [(case name, size label, variant), ...].

    With a resettable high-water mark all items share one child process (measured one after the
    other, inputs freed in between); otherwise every item gets its own child.
    """
    threads = threads or torch.get_num_threads()
    base_spec = {"dtype": dtype, "threads": threads, "reset_ok": reset_ok}
    groups = [list(items)] if reset_ok else [[it] for it in items]
    results: dict = {}
    for group in groups:
        spec = dict(base_spec, items=[list(it) for it in group])
        proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", json.dumps(spec)],
                              env=_child_env(), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for {group} failed (rc {proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
        for case_name, label, variant, r in json.loads(lines[-1]):
            results[(case_name, label, variant)] = r
    return results


if __name__ == "__main__":
    print(json.dumps(_child_main(json.loads(sys.argv[1]))), flush=True)
