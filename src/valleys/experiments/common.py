"""Small helpers every reproduction uses: preset lookup, torch threads, markdown tables."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from valleys.errors import ArgumentValueError

__all__ = ["format_cell", "format_spread", "markdown_table", "resolve_preset", "torch_threads"]

P = TypeVar("P")


def resolve_preset(presets: Mapping[str, P], preset: str | P, preset_type: type) -> tuple[str, P]:
    """``(name, preset)`` for a preset name, or ``("custom", preset)`` for a preset object."""
    if isinstance(preset, preset_type):
        return "custom", preset
    if preset not in presets:
        raise ArgumentValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    return preset, presets[preset]


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` (``None``: leave it), then restore."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def format_cell(value: Any, digits: int = 4) -> str:
    """A table cell: numbers to ``digits`` significant digits, booleans as yes/no, None as –."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "−inf"
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_cell(v, digits) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_cell(v, digits)}" for k, v in value.items())
    return str(value)


def format_spread(values: Sequence[float | None] | Mapping[str, Any], digits: int = 4) -> str:
    """``mean [min, max]`` of the finite values, or of a ``{"mean", "min", "max"}`` dict (see
    :func:`~valleys.experiments.protocol.spread`); one value alone when they coincide, ``–``
    when there is none."""
    if isinstance(values, Mapping):
        mean, low, high = values.get("mean"), values.get("min"), values.get("max")
        if mean is None:
            return "–"
    else:
        finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not finite:
            return "–"
        mean, low, high = sum(finite) / len(finite), min(finite), max(finite)
    if low is None or low == high:
        return format_cell(mean, digits)
    return (f"{format_cell(mean, digits)} [{format_cell(low, digits)}, "
            f"{format_cell(high, digits)}]")


def markdown_table(
    rows: Iterable[Mapping[str, Any]] | Any, columns: Sequence[str], *, digits: int = 4
) -> str:
    """A markdown table of ``columns`` from dict rows or a pandas DataFrame (missing cells: –)."""
    if hasattr(rows, "to_dict"):  # a DataFrame
        rows = rows.to_dict("records")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(format_cell(row.get(c), digits) for c in columns) + " |" for row in rows
    ]
    return "\n".join(lines)
