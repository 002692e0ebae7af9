"""Input checks shared by every op: errors name the argument, the expected and the received value."""
from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")
MODES = ("softmax", "sigmoid")
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float64, float32, float16 or bfloat16, got {x.dtype}")
    return x


def same_layout(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
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


def positive(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def non_negative(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def number(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def logits_pair(student_logits, teacher_logits):
    """(…, K) logits → (R, K) views; K ≥ 1."""
    tensor(student_logits, "student_logits")
    tensor(teacher_logits, "teacher_logits")
    same_layout(student_logits, teacher_logits, "student_logits", "teacher_logits")
    if student_logits.dim() < 1 or student_logits.shape[-1] < 1:
        raise ValueError("student_logits must have shape (..., K) with K >= 1 classes, "
                         f"got {tuple(student_logits.shape)}")
    k = student_logits.shape[-1]
    return student_logits.reshape(-1, k), teacher_logits.reshape(-1, k)


def row_weight(weight, rows: int, ref: torch.Tensor):
    """None or a tensor of one non-negative value per row (any leading shape) → (R,) or None."""
    if weight is None:
        return None
    tensor(weight, "weight")
    same_device(ref, weight, "student_logits", "weight")
    if weight.numel() != rows:
        raise ValueError(f"weight must hold one value per row of the logits ({rows}), "
                         f"got shape {tuple(weight.shape)}")
    weight = weight.detach().reshape(rows)
    if not torch.compiler.is_compiling() and rows and bool((weight < 0).any()):
        raise ValueError(f"weight must be >= 0, got a minimum of {weight.min().item()}")
    return weight


def feature_pair(student, teacher, confidence):
    """(N, C, H, W) features and an (N, H, W) or (N, 1, H, W) confidence → confidence as (N, H, W)."""
    tensor(student, "student")
    tensor(teacher, "teacher")
    tensor(confidence, "confidence")
    if student.dim() != 4:
        raise ValueError(f"student must have shape (N, C, H, W), got {tuple(student.shape)}")
    same_layout(student, teacher, "student", "teacher")
    same_device(student, confidence, "student", "confidence")
    n, _, h, w = student.shape
    if confidence.dim() == 4 and confidence.shape[1] == 1:
        confidence = confidence[:, 0]
    if tuple(confidence.shape) != (n, h, w):
        raise ValueError(f"confidence must have shape (N, H, W) = {(n, h, w)} or (N, 1, H, W), "
                         f"got {tuple(confidence.shape)}")
    return confidence.detach()


def autocast_pair(a: torch.Tensor, b: torch.Tensor):
    """Under autocast, promote a mixed-precision pair to the wider dtype (bf16 + fp32 → fp32)."""
    if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype != b.dtype
            and torch.is_autocast_enabled(a.device.type)):
        dtype = torch.promote_types(a.dtype, b.dtype)
        return a.to(dtype), b.to(dtype)
    return a, b
