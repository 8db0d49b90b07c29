"""Turning result records into JSON-friendly dicts (one helper for every result type)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

__all__ = ["jsonable", "record_to_dict"]


def jsonable(x: Any) -> Any:
    """Tensors become (nested) lists of floats, tuples lists; NaN and ±inf become ``None``."""
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().double().tolist())
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def record_to_dict(record: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a dataclass record, JSON-friendly, without those named in ``drop``."""
    return {
        f.name: jsonable(getattr(record, f.name))
        for f in dataclasses.fields(record)
        if f.name not in drop
    }
