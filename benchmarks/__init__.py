"""Benchmark harness for kdkernels: eager reference vs torch.compile(reference) vs the fused ops.

    python -m benchmarks.run --device cpu [--quick] [--markdown benchmarks/RESULTS.md]
    pytest benchmarks/test_bench.py --benchmark-only

The cases (ops, argument sets, sizes, the three variants) live in ``benchmarks.cases`` only, so the
timing run, the memory run and the pytest-benchmark suite cannot drift apart.
"""
