"""Training records to TensorBoard (optional: ``pip install valleys[tensorboard]``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from valleys._checks import is_real
from valleys.errors import ArgumentValueError

__all__ = ["write_tensorboard"]


def _summary_writer() -> Any:  # torch.utils.tensorboard.SummaryWriter, imported lazily
    try:  # tensorboard is an optional dependency (valleys[tensorboard])
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch raises ImportError when tensorboard is missing
        raise ImportError(
            "writing TensorBoard logs needs the optional 'tensorboard' package: "
            "pip install 'valleys[tensorboard]' (or pip install tensorboard)"
        ) from error
    return SummaryWriter


def write_tensorboard(
    records: Iterable[Mapping[str, Any]], log_dir: str, *, tag_prefix: str = ""
) -> str:
    """Write each numeric entry of each record as a scalar at ``global_step = record["step"]``.

    Args:
        records: training records (``TrainResult.records`` or ``DataFrame.to_dict("records")``);
            each needs a ``"step"``. Booleans, strings and non-finite numbers are skipped.
        log_dir: the TensorBoard run directory.
        tag_prefix: prepended to every tag, e.g. ``"gd_lr0.01/"``.

    Returns:
        ``log_dir``.
    """
    SummaryWriter = _summary_writer()
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for record in records:
            if "step" not in record:
                raise ArgumentValueError("every record needs a 'step' entry")
            step = int(record["step"])
            for key, value in record.items():
                if key == "step" or isinstance(value, bool):
                    continue
                if is_real(value) and math.isfinite(float(value)):
                    writer.add_scalar(f"{tag_prefix}{key}", float(value), step)
    finally:
        writer.close()
    return str(log_dir)
