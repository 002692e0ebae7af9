"""pytest-benchmark suite over the cases of benchmarks/cases.py at their small (--quick) sizes.

    pytest benchmarks/test_bench.py --benchmark-only [--benchmark-group-by=param:case]

Parametrised over case × size × variant (eager, compiled, kdkernels) × mode (fwd, fwd+bwd). The
cases, inputs and variants are imported from benchmarks.cases, so this suite and
``python -m benchmarks.run`` cannot drift apart. No timing assertions: it measures, it does not judge.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.cases import CASES, MODES, STEPS, VARIANTS

PARAMS = [pytest.param(case, size, id=f"{case.name}-{size.label.replace(' ', '')}")
          for case in CASES for size in case.sizes_for(quick=True)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,size", PARAMS)
def test_loss(benchmark, case, size, variant, mode):
    inp = case.setup(size, torch.float32, "cpu")
    fn = case.fn(variant)
    step = STEPS[mode]
    for _ in range(2):  # warm-up (torch.compile compiles here, outside the measurement)
        inp.reset()
        step(fn, inp)
    benchmark.group = f"{case.name} {size.label} {mode}"
    benchmark.extra_info.update(case=case.name, size=size.label, variant=variant, mode=mode)
    loss = benchmark.pedantic(step, args=(fn, inp), setup=inp.reset, rounds=20, warmup_rounds=1)
    assert torch.isfinite(loss.detach()).all()
    if mode == "fwd+bwd":
        assert inp.student.grad is not None
