"""Validation and serialization helpers shared by the stability modules (private)."""

from __future__ import annotations

import math

import torch

from valleys._checks import is_integral, is_real, positive_real
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.objective import Objective


def check_lr(lr: object) -> float:
    """A finite, strictly positive learning rate as a float."""
    return positive_real(lr, "lr", hint="the stability of SGD is only defined for a step size "
                                        "η > 0")


def check_n(n: object) -> int:
    """A sample count ``n >= 1`` as an int."""
    if not is_integral(n) or isinstance(n, bool) or n < 1:
        raise ArgumentValueError(
            f"n (the number of training samples) must be an integer >= 1, got {n!r}")
    return int(n)


def check_batch_size(batch_size: object, n: int) -> int:
    """A batch size ``1 <= B <= n`` as an int (batches are drawn without replacement)."""
    if not is_integral(batch_size) or isinstance(batch_size, bool):
        raise ArgumentValueError(f"batch_size must be an integer in [1, n={n}], got {batch_size!r}")
    if batch_size < 1:
        raise ArgumentValueError(f"batch_size must be at least 1, got {batch_size}")
    if batch_size > n:
        raise ArgumentValueError(
            f"batch_size={batch_size} exceeds the number of samples n={n}; mini-batches are "
            f"drawn without replacement, so use batch_size <= n (batch_size={n} is full-batch GD)"
        )
    return int(batch_size)


def check_finite(value: object, name: str, *, nonnegative: bool = False) -> float:
    """A finite real (optionally ``>= 0``) as a float."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not is_real(value) or isinstance(value, bool):
        raise ArgumentValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentValueError(f"{name} must be finite, got {value!r}")
    if nonnegative and value < 0:
        raise ArgumentValueError(
            f"{name} must be non-negative, got {value!r} (the non-uniformity is sqrt(λ_max(Σ)) "
            "with Σ positive semi-definite)"
        )
    return value


def check_objective(obj: object, caller: str) -> Objective:
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"{caller} needs a valleys.Objective, got {type(obj).__name__}; build one with "
            "valleys.Objective(model, loss, (X, Y))"
        )
    return obj


def default_tol(dtype: torch.dtype) -> float:
    """Default tolerance on ``λ_max`` of a matrix close to the identity, by precision."""
    return 1e-7 if dtype == torch.float64 else 1e-4

