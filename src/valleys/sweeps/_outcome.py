"""Running one configuration and classifying what happened: done, diverged or failed.

This is the part that runs inside a worker (a local process or a Ray task). It never raises:
every outcome, a crash included, comes back as an :class:`Outcome` for the parent to record.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from valleys.errors import ArgumentTypeError

__all__ = ["Diverged", "Outcome", "execute", "is_divergent"]

DONE, DIVERGED, FAILED, RUNNING = "done", "diverged", "failed", "running"
STATUSES = (DONE, DIVERGED, FAILED, RUNNING)


class Diverged(Exception):
    """Raised by a run whose training diverged; the sweep records it and goes on.

    Args:
        message: What diverged and when (stored in the ``error`` column).
        metrics: Partial metrics up to the divergence (e.g. the step it happened at).
    """

    def __init__(self, message: str = "", metrics: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce replays only ``args`` and would drop the metrics.
        return (type(self), (str(self), self.metrics))


@dataclass(frozen=True)
class Outcome:
    """What one run produced, as plain builtins (cheap to pickle back from a worker).

    Attributes:
        status: ``"done"``, ``"diverged"`` or ``"failed"``.
        metrics: JSON text of the metrics (``None`` when there are none).
        error: Traceback text of a failure, or the message of a divergence.
        started: Start time, seconds since the epoch.
        finished: End time, seconds since the epoch.
        wall_time: Seconds the run took (monotonic clock).
    """

    status: str
    metrics: str | None
    error: str | None
    started: float
    finished: float
    wall_time: float


def is_divergent(metrics: Mapping[str, Any]) -> bool:
    """Whether returned metrics say the run diverged.

    The rule: a truthy ``"diverged"`` key, or a non-finite (NaN or ±inf) number under the key
    ``"loss"`` or any key ending in ``"_loss"`` (``"train_loss"``, ``"final_loss"``, ...). Only
    top-level scalar values are checked; a loss curve (a list) is left alone.
    """
    if metrics.get("diverged"):
        return True
    return any(
        (key == "loss" or key.endswith("_loss")) and _is_nonfinite(value)
        for key, value in metrics.items()
    )


def _is_nonfinite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isfinite(
        value
    )


def _to_builtin(value: Any) -> Any:
    """JSON fallback for numpy and torch values (duck-typed: neither is imported here)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise ArgumentTypeError(f"metric value of type {type(value).__name__} is not JSON-serializable")


def _normalize(metrics: Any) -> dict[str, Any]:
    """Metrics as builtins: a JSON round trip that turns tensors and numpy scalars into floats."""
    if not isinstance(metrics, Mapping):
        raise ArgumentTypeError(f"fn must return a dict of metrics, got {type(metrics).__name__}")
    # allow_nan keeps NaN/inf losses (Python's json reads them back), which mark divergence.
    return json.loads(json.dumps(dict(metrics), default=_to_builtin))


def execute(fn: Callable[[dict[str, Any]], Mapping[str, Any]], config: dict[str, Any]) -> Outcome:
    """Run ``fn(config)`` and classify the result; never raises (bar ``KeyboardInterrupt``).

    Args:
        fn: The training function, ``fn(config) -> dict of metrics``.
        config: The configuration, passed unchanged.

    Returns:
        The run's :class:`Outcome`.
    """
    started, t0 = time.time(), time.perf_counter()
    metrics: dict[str, Any] | None = None
    error: str | None = None
    try:
        metrics = _normalize(fn(config))
        status = DIVERGED if is_divergent(metrics) else DONE
    except Diverged as exc:
        status, error = DIVERGED, str(exc) or "diverged"
        try:
            metrics = _normalize(exc.metrics)
        except Exception:  # partial metrics are best effort; the divergence is what counts
            metrics = None
    except Exception:
        status, error = FAILED, traceback.format_exc()
    wall_time = time.perf_counter() - t0
    return Outcome(
        status=status,
        metrics=None if metrics is None else json.dumps(metrics),
        error=error,
        started=started,
        finished=time.time(),
        wall_time=wall_time,
    )


def crashed(error: str, started: float) -> Outcome:
    """The outcome of a run whose worker died (no result came back): a failure."""
    now = time.time()
    return Outcome(FAILED, None, error, started, now, now - started)
