"""Argument checks and shared argument types for :mod:`valleys.data` (private).

The ``_check_*`` helpers validate user arguments with messages that name the offending
argument; :func:`_split_sizes` turns a test fraction into train/test sizes.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from valleys._checks import is_integral, is_real
from valleys.errors import ArgumentTypeError, ArgumentValueError

Device = torch.device | str | None
PathLike = str | os.PathLike


def _check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    # bool is an Integral; reject it because `n_train=True` is certainly a mistake.
    if isinstance(value, bool) or not is_integral(value):
        raise ArgumentTypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ArgumentValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_seed(seed: Any) -> int:
    return _check_int(seed, "seed", minimum=0)


def _check_real(value: Any, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not is_real(value):
        raise ArgumentTypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ArgumentValueError(f"{name} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ArgumentValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_fraction(value: Any, name: str = "test_fraction") -> float:
    value = _check_real(value, name)
    if not 0.0 < value < 1.0:
        raise ArgumentValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def _check_float_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentTypeError(
            f"dtype must be a floating torch dtype such as torch.float32 or torch.float64, "
            f"got {dtype!r}"
        )
    return dtype


def _split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    n_test = round(n * test_fraction)
    n_train = n - n_test
    if n_test < 1 or n_train < 1:
        raise ArgumentValueError(
            f"test_fraction={test_fraction} of {n} samples leaves {n_train} training and "
            f"{n_test} test samples; both splits need at least one sample"
        )
    return n_train, n_test
