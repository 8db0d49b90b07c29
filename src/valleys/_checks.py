"""Argument checks shared by every public entry point (one wording for one mistake)."""

from __future__ import annotations

import math
import numbers

__all__ = ["positive_real"]


def positive_real(value: object, name: str, *, hint: str = "") -> float:
    """``value`` as a float if it is a finite real number > 0 of any numeric type (Python,
    numpy or a 0-d tensor's ``.item()``); bools, strings, NaN, ±inf and values <= 0 raise a
    ``ValueError`` that names the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}"
                         + (f"; {hint}" if hint else ""))
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}"
                         + (f"; {hint}" if hint else ""))
    return float(value)
