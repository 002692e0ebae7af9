"""Code shape of the trainer package: no function longer than MAX_LINES (long ones are split into
short, named steps), and the step bench picks its backend only through kdkernels.available_backends."""
import ast
from pathlib import Path

import pytest

TRAIN = Path(__file__).resolve().parents[1] / "kdkernels" / "train"
MAX_LINES = 80


def _functions():
    for path in sorted(TRAIN.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.name, node


@pytest.mark.parametrize("name", ["trainer.py:train", "data.py:__init__", "synthetic.py:make_synthetic_coco",
                                  "step_bench.py:run_step_bench"])
def test_split_functions_exist(name):
    file, func = name.split(":")
    assert any(f == file and n.name == func for f, n in _functions()), name


def test_no_function_is_longer_than_the_limit():
    long = [f"{file}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for file, n in _functions()
            if n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, long


def test_step_bench_has_no_inline_backend_choice():
    src = (TRAIN / "step_bench.py").read_text()
    assert "available_backends(" in src
    assert "compiled_backends" not in src and "build_info()" not in src
