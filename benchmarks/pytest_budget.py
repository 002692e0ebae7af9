"""pytest plugin for time-boxed runs (benchmarks/gpu_check.sh): tests that would start after a
deadline are skipped, so the run ends by itself with its summary line (pass/fail counts) instead
of being killed half-way with none.

    python -m pytest -p benchmarks.pytest_budget --gpu-check-deadline EPOCH_SECONDS ...

The deadline is absolute (``time.time()``), so pytest-xdist workers share it. The terminal summary
gets one more line, ``gpu_check budget: N tests not run (deadline passed)``.
"""
from __future__ import annotations

import time

import pytest

REASON = "gpu_check: time budget spent"
_not_run = 0


def pytest_addoption(parser):
    parser.addoption("--gpu-check-deadline", type=float, default=None, metavar="EPOCH_S",
                     help="skip every test that would start after this time.time() (benchmarks/gpu_check.sh)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    deadline = item.config.getoption("--gpu-check-deadline")
    if deadline is not None and time.time() > deadline:
        pytest.skip(REASON)


def pytest_runtest_logreport(report):
    """Counts the budget skips (also those reported by xdist workers to the controller)."""
    global _not_run
    if report.skipped and report.when == "setup" and REASON in str(report.longrepr):
        _not_run += 1


def pytest_terminal_summary(terminalreporter):
    if terminalreporter.config.getoption("--gpu-check-deadline") is not None:
        terminalreporter.write_line(f"gpu_check budget: {_not_run} tests not run (deadline passed)")
