"""Argument checks shared by every public entry point (one wording for one mistake)."""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import TypeGuard

import torch

from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = [
    "available_device",
    "finite_real",
    "integer",
    "is_integral",
    "is_real",
    "positive_real",
    "relative_tolerance",
    "seed_value",
    "writable_folder",
]


def is_integral(value: object) -> TypeGuard[int]:
    """``isinstance(value, numbers.Integral)`` (Python and numpy integers, and bools), written
    as a type guard: type checkers do not know that ``int`` is a ``numbers.Integral`` and would
    call the code after a failed ``isinstance`` check unreachable."""
    return isinstance(value, numbers.Integral)


def is_real(value: object) -> TypeGuard[float]:
    """``isinstance(value, numbers.Real)`` as a type guard (see :func:`is_integral`)."""
    return isinstance(value, numbers.Real)


def positive_real(value: object, name: str, *, hint: str = "") -> float:
    """``value`` as a float if it is a finite real number > 0 of any numeric type (Python,
    numpy or a 0-d tensor's ``.item()``); bools, strings, NaN, ±inf and values <= 0 raise a
    ``ValueError`` that names the argument."""
    if isinstance(value, bool) or not is_real(value):
        raise ArgumentValueError(f"{name} must be a positive finite number, got {value!r}"
                                 + (f"; {hint}" if hint else ""))
    if not math.isfinite(value) or value <= 0:
        raise ArgumentValueError(f"{name} must be a positive finite number, got {value!r}"
                                 + (f"; {hint}" if hint else ""))
    return float(value)


def finite_real(value: object, name: str, *, hint: str = "") -> float:
    """``value`` as a float if it is a finite real number of any numeric type (Python or numpy);
    bools, strings, ``None``, NaN and ±inf raise a ``ValueError`` that names the argument.
    Range checks are left to the caller."""
    if (isinstance(value, bool) or not is_real(value)
            or not math.isfinite(value)):
        raise ArgumentValueError(f"{name} must be a finite real number, got {value!r}"
                                 + (f"; {hint}" if hint else ""))
    return float(value)


def integer(value: object, name: str, *, minimum: int | None = None, hint: str = "") -> int:
    """``value`` as an int if it is an integer of any type (Python or numpy) that is at least
    ``minimum``; bools, floats (even ``2.0``), strings and ``None`` raise a ``ValueError`` that
    names the argument."""
    if (isinstance(value, bool) or not is_integral(value)
            or (minimum is not None and value < minimum)):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ArgumentValueError(f"{name} must be an integer{bound}, got {value!r}"
                                 + (f"; {hint}" if hint else ""))
    return int(value)


def relative_tolerance(value: object, name: str = "tol") -> float:
    """A relative tolerance: a finite real number in ``(0, 1)`` (not a bool), as a float."""
    if (not is_real(value) or isinstance(value, bool) or not math.isfinite(value)
            or not 0 < value < 1):
        raise ArgumentValueError(
            f"{name} must be a number in (0, 1), a relative tolerance such as 1e-6, got "
            f"{value!r}")
    return float(value)


def seed_value(value: object, name: str = "seed") -> int:
    """A random seed: an integer of any type (Python or numpy), not a bool, that a
    ``torch.Generator`` takes (``-2**63 <= seed < 2**64``); else ``TypeError`` (the wording of
    :func:`valleys.eigsh`) or, out of range, ``ValueError``."""
    if isinstance(value, bool) or not is_integral(value):
        raise ArgumentTypeError(f"{name} must be an int, got {value!r}")
    if not -(2**63) <= value < 2**64:
        raise ArgumentValueError(
            f"{name} must lie in [-2**63, 2**64) (what torch.Generator accepts), "
            f"got {value!r}")
    return int(value)


def writable_folder(out: str | Path, what: str = "output folder", *,
                    hint: str = "choose another folder") -> Path:
    """Create ``out`` (and its parents) and make sure files can be written there; a path under
    a file or without write permission raises a ``ValueError`` ending in ``hint``."""
    if not isinstance(out, str | os.PathLike):
        raise ArgumentTypeError(f"{what} must be a path (a str or pathlib.Path), got {out!r}")
    path = Path(out).expanduser()
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise ArgumentValueError(
                f"{what} {str(out)!r}: {str(parent)!r} is a file, not a folder; "
                f"{hint}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ArgumentValueError(f"{what} {str(out)!r} cannot be written ({error.strerror}); "
                                 f"{hint}") from None
    return path


def available_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, refused unless tensors can live there now."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ArgumentValueError(
            f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentValueError(f"device {str(device)!r}: CUDA is not available here (torch "
                                     f"{torch.__version__}); use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ArgumentValueError(
                f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA "
                "device(s) here")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentValueError(f"device {str(device)!r}: MPS is not available here; use cpu")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ArgumentValueError(f"device {str(device)!r}: valleys runs on cpu, cuda or mps")
    return resolved
