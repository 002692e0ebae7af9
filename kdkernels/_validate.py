"""Input checks shared by every op: errors name the argument, the expected and the received value.

The errors are the same in eager code and under ``torch.compile`` (``fullgraph=True`` included):
``argument_errors`` wraps every public op so that Dynamo, which turns an exception escaping the
compiled function into ``torch._dynamo.exc.Unsupported``, instead compiles a graph that raises the
check's own ``ValueError`` / ``TypeError`` with its message when it runs. Checks of tensor values
(weights >= 0, DKD labels in range) run in the graph (``require_in_graph``): the same ValueError on
CPU; on CUDA a RuntimeError from ``torch._assert_async`` (no host synchronisation). Messages
format shapes with ``dims`` (Dynamo cannot put a symbolic shape into a string).
"""
from __future__ import annotations

import functools
import math
import os

import torch

REDUCTIONS = ("none", "mean", "sum")
MODES = ("softmax", "sigmoid")
CLASS_REDUCTIONS = ("sum", "mean")
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# Debug switch: check tensor values that need the data (weight finite and >= 0) on CUDA too, at the
# cost of a host synchronisation per call. CPU tensors are always checked (the CPU kernel checks
# while it reads the weights; the reference backend checks with one small reduction).
CHECK_VALUES_ON_CUDA = os.environ.get("KDKERNELS_CHECK_VALUES", "0") == "1"


# ----------------------------------------------------------------------------- errors under torch.compile
# The exception types a deferred error keeps (a subclass is raised as the first of these it derives from).
DEFERRED_ERROR_TYPES = (ValueError, TypeError, IndexError, NotImplementedError, RuntimeError)
_ERROR_BY_NAME = {e.__name__: e for e in DEFERRED_ERROR_TYPES}


@torch.library.custom_op("kdkernels_checks::raise_argument_error", mutates_args=())
def _raise_argument_error(like: torch.Tensor, kind: str, message: str) -> torch.Tensor:
    """Raises `kind`(message) when the compiled graph runs; `like` only places the op on a device."""
    raise _ERROR_BY_NAME[kind](message)


@_raise_argument_error.register_fake
def _raise_argument_error_fake(like, kind, message):
    return like.new_empty(())


@torch.library.custom_op("kdkernels_checks::require", mutates_args=())
def _require(ok: torch.Tensor, kind: str, message: str) -> None:
    """Raises `kind`(message) when the graph runs and the boolean `ok` is False (reads one value)."""
    if not bool(ok):
        raise _ERROR_BY_NAME[kind](message)


@_require.register_fake
def _require_fake(ok, kind, message):
    return None


def require_in_graph(ok: torch.Tensor, kind: str, message: str) -> None:
    """A check of tensor values inside a traced graph. CPU: the exception named `kind` (one of
    DEFERRED_ERROR_TYPES, e.g. "ValueError") with `message` when the graph runs, as eager code raises. CUDA: torch._assert_async (a RuntimeError with the message, raised
    asynchronously; reading the value would synchronise the host on every call)."""
    if ok.device.type == "cuda":
        torch._assert_async(ok, message)
    else:
        _require(ok, kind, message)


if hasattr(torch.fx.node, "has_side_effect"):  # never dead-code eliminated, even if unused
    for _op in (torch.ops.kdkernels_checks.raise_argument_error, torch.ops.kdkernels_checks.require):
        torch.fx.node.has_side_effect(_op.default)


class _Nesting:
    """How many argument_errors-wrapped ops are being traced (plain state: Dynamo tracks it)."""

    def __init__(self):
        self.depth = 0


_NESTING = _Nesting()


def _first_tensor(args, kwargs) -> torch.Tensor:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.detach()
    return torch.empty(())


def _kind(exc: BaseException) -> str:
    """The name of the first of DEFERRED_ERROR_TYPES that `exc` is an instance of (literal names:
    Dynamo in torch 2.11 cannot make a constant of a class's __name__)."""
    if isinstance(exc, ValueError):
        return "ValueError"
    if isinstance(exc, TypeError):
        return "TypeError"
    if isinstance(exc, IndexError):
        return "IndexError"
    if isinstance(exc, NotImplementedError):
        return "NotImplementedError"
    return "RuntimeError"


def _message(exc: BaseException) -> str:
    return exc.args[0] if exc.args else ""


def argument_errors(outputs: int = 1):
    """Decorator of a public op: its argument errors are the same exceptions under torch.compile.

    Eager (and inside another wrapped op): the op runs as written. While Dynamo traces the
    outermost wrapped op, an error of DEFERRED_ERROR_TYPES raised by its checks is caught and the
    op's result is replaced by ``kdkernels_checks::raise_argument_error`` (`outputs` placeholders),
    so the compiled graph raises that exception type with the same message when it runs, with
    ``fullgraph=True`` too, and on every backend. (Without this, Dynamo raises
    ``torch._dynamo.exc.Unsupported: Observed exception``, which ``except ValueError`` misses.)"""
    def wrap(fn):
        @functools.wraps(fn)
        def op(*args, **kwargs):
            if _NESTING.depth or not torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            _NESTING.depth += 1
            try:
                return fn(*args, **kwargs)
            except DEFERRED_ERROR_TYPES as exc:  # (no closure over exc: Dynamo cannot trace DELETE_DEREF)
                out = _raise_argument_error(_first_tensor(args, kwargs), _kind(exc), _message(exc))
                return out if outputs == 1 else (out,) * outputs
            finally:
                _NESTING.depth -= 1
        return op
    return wrap


def dims(shape) -> str:
    """A shape as text, "(2, 3)": like str(tuple(shape)), also for symbolic sizes under torch.compile."""
    parts = [f"{int(d)}" for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


# ----------------------------------------------------------------------------- checks
def tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float64, float32, float16 or bfloat16, got {x.dtype}")
    return x


def same_layout(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, "
                         f"got {dims(a.shape)} and {dims(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")
    same_device(a, b, name_a, name_b)


def same_device(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} must be on {name_a}'s device {a.device}, got {b.device}")


def choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _finite(value) -> bool:
    # comparisons, not math.isfinite: under torch.compile a hyperparameter that changes between
    # calls becomes a SymFloat, which Dynamo compares (and guards on) but cannot pass to isfinite.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and -math.inf < value < math.inf)


def positive(value, name: str) -> float:
    if not _finite(value) or not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative(value, name: str) -> float:
    if not _finite(value) or not value >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def number(value, name: str) -> float:
    if not _finite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def logits_pair(student_logits, teacher_logits):
    """(…, K) logits → (R, K) views; K ≥ 1."""
    tensor(student_logits, "student_logits")
    tensor(teacher_logits, "teacher_logits")
    same_layout(student_logits, teacher_logits, "student_logits", "teacher_logits")
    if student_logits.dim() < 1 or student_logits.shape[-1] < 1:
        raise ValueError("student_logits must have shape (..., K) with K >= 1 classes, "
                         f"got {dims(student_logits.shape)}")
    k = student_logits.shape[-1]
    return student_logits.reshape(-1, k), teacher_logits.reshape(-1, k)


def row_weight(weight, rows: int, ref: torch.Tensor):
    """None or a tensor of one non-negative value per row (any leading shape) → (R,) or None."""
    if weight is None:
        return None
    tensor(weight, "weight")
    same_device(ref, weight, "student_logits", "weight")
    if weight.numel() != rows:
        raise ValueError(f"weight must hold one value per row of the logits ({int(rows)}), "
                         f"got shape {dims(weight.shape)}")
    return weight.detach().reshape(rows)


def plain_eager(*tensors) -> bool:
    """True outside any tracing (compile, make_fx, fake or functional tensors)."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and all(type(t) is torch.Tensor for t in tensors))


def check_weight_values(weight, op: str, backend: str) -> None:
    """weight must be finite and >= 0. The cpu kernel checks while it reads the weights; other
    backends go through check_values (CUDA only with KDKERNELS_CHECK_VALUES=1; an in-graph assert
    under torch.compile)."""
    if backend != "cpu":
        check_values(weight, "weight", op)


def fake_row_loss_checks(op: str, student, teacher, weight) -> None:
    """Shape rules of the row-loss schemas, for their fake (meta) kernels."""
    torch._check(student.dim() == 2, lambda: f"{op}: student_logits must be (R, K)")
    torch._check(student.shape == teacher.shape, lambda: f"{op}: student/teacher shapes differ")
    if weight is not None:
        torch._check(weight.shape == student.shape[:1], lambda: f"{op}: weight must be (R,)")


def fake_loss_and_grad(student, none_shape, reduction: str, compute_grad: bool):
    """The (loss, grad_student) outputs every fused loss op returns, as empty tensors."""
    loss = student.new_empty(none_shape if reduction == "none" else ())
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
    return loss, grad


def feature_pair(student, teacher, confidence):
    """(N, C, H, W) features and an (N, H, W) or (N, 1, H, W) confidence → confidence as (N, H, W)."""
    tensor(student, "student")
    tensor(teacher, "teacher")
    tensor(confidence, "confidence")
    if student.dim() != 4:
        raise ValueError(f"student must have shape (N, C, H, W), got {dims(student.shape)}")
    same_layout(student, teacher, "student", "teacher")
    same_device(student, confidence, "student", "confidence")
    return spatial_map(confidence, "confidence", student).detach()


def spatial_map(x: torch.Tensor, name: str, student: torch.Tensor) -> torch.Tensor:
    """An (N, H, W) or (N, 1, H, W) per-pixel map of the (N, C, H, W) student → (N, H, W)."""
    n, _, h, w = student.shape
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if tuple(x.shape) != (n, h, w):
        raise ValueError(f"{name} must have shape (N, H, W) = {dims((n, h, w))} or (N, 1, H, W), "
                         f"got {dims(x.shape)}")
    return x


def autocast_pair(a: torch.Tensor, b: torch.Tensor):
    """Under autocast, promote a mixed-precision pair to the wider dtype (bf16 + fp32 → fp32)."""
    if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype != b.dtype
            and torch.is_autocast_enabled(a.device.type)):
        dtype = torch.promote_types(a.dtype, b.dtype)
        return a.to(dtype), b.to(dtype)
    return a, b


def features(x, name: str) -> torch.Tensor:
    """A float (N, C, H, W) feature map."""
    tensor(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {dims(x.shape)}")
    return x


def feature_tensors(student, teacher) -> None:
    """Student and teacher (N, C, H, W) features of the same shape, dtype and device."""
    features(student, "student")
    tensor(teacher, "teacher")
    same_layout(student, teacher, "student", "teacher")


def pearson_sizes(student) -> None:
    n, c, h, w = student.shape
    if c < 1:
        raise ValueError(f"student must have at least one channel, got shape {dims(student.shape)}")
    if n * h * w < 2:
        raise ValueError("student must hold at least 2 values per channel (N·H·W >= 2) for the "
                         f"unbiased standard deviation, got shape {dims(student.shape)}")


def separable_weights(student, teacher, spatial_weight, channel_weight):
    """(N, C, H, W) features, (N, H, W) or (N, 1, H, W) spatial weight, None or (N, C) channel
    weight → the weights as (N, H, W), (N, C) or None, detached."""
    feature_tensors(student, teacher)
    tensor(spatial_weight, "spatial_weight")
    same_device(student, spatial_weight, "student", "spatial_weight")
    n, c = student.shape[:2]
    spatial_weight = spatial_map(spatial_weight, "spatial_weight", student)
    if channel_weight is not None:
        tensor(channel_weight, "channel_weight")
        same_device(student, channel_weight, "student", "channel_weight")
        if tuple(channel_weight.shape) != (n, c):
            raise ValueError(f"channel_weight must have shape (N, C) = {dims((n, c))}, "
                             f"got {dims(channel_weight.shape)}")
        channel_weight = channel_weight.detach()
    return spatial_weight.detach(), channel_weight


def check_values(x, name: str, op: str) -> None:
    """x must be finite and >= 0, checked on every device (a small reduction, no kernel check):
    an in-graph assert under tracing; on CUDA only with KDKERNELS_CHECK_VALUES=1 (host sync)."""
    if x is None or x.numel() == 0:
        return
    if x.device.type == "cuda" and not CHECK_VALUES_ON_CUDA:
        return
    message = f"kdkernels.{op}: {name} must be finite and >= 0"
    ok = ((x >= 0) & torch.isfinite(x)).all()
    if not plain_eager(x):
        require_in_graph(ok, "ValueError", message)
    elif not bool(ok):
        bad = x[~((x >= 0) & torch.isfinite(x))]
        raise ValueError(f"{message}, got {bad[0].item()} ({bad.numel()} bad values)")


def dkd_inputs(student_logits, teacher_logits, labels):
    """(…, K) logits with K >= 2 and integer labels of the leading shape in [0, K) → (B, K), (B, K), (B,)."""
    s, t = logits_pair(student_logits, teacher_logits)
    if s.shape[1] < 2:
        raise ValueError(f"student_logits must have K >= 2 classes for decoupled KD, got {int(s.shape[1])}")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16,
                                                                     torch.uint8, torch.int8):
        raise TypeError("labels must be an integer torch.Tensor of class indices, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    same_device(student_logits, labels, "student_logits", "labels")
    if labels.numel() != s.shape[0]:
        raise ValueError(f"labels must hold one class index per row of the logits ({int(s.shape[0])}), "
                         f"got shape {dims(labels.shape)}")
    labels = labels.reshape(-1).long()
    if labels.numel() and labels.device.type == "cpu" and plain_eager(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= s.shape[1]:
            raise ValueError(f"labels must be in [0, {int(s.shape[1])}), got {lo if lo < 0 else hi}")
    elif labels.numel():
        require_in_graph(((labels >= 0) & (labels < s.shape[1])).all(), "ValueError",
                         f"kdkernels.decoupled_kd: labels must be in [0, {int(s.shape[1])})")
    return s, t, labels
