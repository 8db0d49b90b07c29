"""Grids of configurations and the stable identity of each run."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from valleys.errors import ArgumentTypeError

__all__ = ["canonical_json", "grid", "run_id"]


def grid(**axes: Any) -> list[dict[str, Any]]:
    """Cartesian product of the axes, one dict per point, in a deterministic order.

    Axes keep their keyword order and the last axis varies fastest (``itertools.product``), so
    ``grid(eta=[0.1, 1.0], seed=[0, 1])`` gives ``(0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)``. A
    scalar (a string included) is an axis with a single value. No axes give ``[{}]``, the one
    empty configuration; an axis with no values gives ``[]``.

    Args:
        **axes: Axis name to the values it takes (any iterable) or to one fixed value.

    Returns:
        The configurations, each a fresh dict.
    """
    names = list(axes)
    values = [_axis_values(axes[name]) for name in names]
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*values)]


def _axis_values(values: Any) -> list[Any]:
    # Strings and mappings are iterable but are meant as single values, never as axes.
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        return [values]
    return list(values)


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a configuration: sorted keys, no spaces, no NaN.

    Two configurations get the same text exactly when they are equal as JSON. Note that
    ``1`` and ``1.0`` differ (``"1"`` vs ``"1.0"``) and that tuples read as lists.

    Raises:
        TypeError: If the configuration is not a mapping with string keys and JSON values.
    """
    if not isinstance(config, Mapping):
        raise ArgumentTypeError(f"a config must be a mapping (dict), got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError(
            f"a config must be JSON-serializable with string keys and finite numbers: {exc}"
        ) from exc


def run_id(config: Mapping[str, Any], sweep: str) -> str:
    """A stable id for one run: a hash of the sweep name and the config's canonical JSON.

    The same config in the same sweep always gets the same id (across processes, machines and
    Python versions), which is what lets a restarted sweep find its finished runs.

    Args:
        config: The run's configuration (see :func:`canonical_json`).
        sweep: The sweep's name; the same config in another sweep is another run.

    Returns:
        16 hex digits (64 bits of SHA-256).
    """
    payload = json.dumps([sweep, canonical_json(config)], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
