"""The output contract every reproduction follows.

A reproduction writes into one folder: figures as PNG and SVG, ``summary.json`` with the
headline numbers, the tidy results table (``results.csv`` and a markdown copy inside the
report) and ``report.md`` that puts them together with the paper's claim, what was measured
and whether they agree. Files are written atomically (a temporary file, then a rename), so an
interrupted run never leaves a half-written summary.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from valleys._records import jsonable
from valleys.errors import ArgumentValueError

__all__ = ["OutputFolder"]


class OutputFolder:
    """A reproduction's output folder (created if needed)."""

    def __init__(self, path: str | Path, *, check_figures: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.check_figures = check_figures

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        target = self.file(name)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.path, suffix=".tmp", delete=False, encoding="utf-8"
        ) as handle:
            handle.write(text)
        os.replace(handle.name, target)
        return target

    def write_json(self, name: str, payload: Any) -> Path:
        return self.write_text(name, json.dumps(jsonable(payload), indent=2) + "\n")

    def write_table(self, name: str, frame) -> Path:
        """Write a pandas DataFrame as CSV (the results table)."""
        return self.write_text(name, frame.to_csv(index=False))

    def save_figure(self, fig, stem: str, *, dpi: int = 150) -> list[Path]:
        """Save a matplotlib figure as ``stem.png`` and ``stem.svg`` and close it.

        With ``check_figures`` (the driver's folders) a figure with unlabelled axes, a legend
        over data or non-positive values on a log axis is refused with a ``ValueError``
        (:func:`~valleys.experiments.plotting.figure_problems`).
        """
        import matplotlib.pyplot as plt

        if self.check_figures:
            from valleys.experiments.plotting import figure_problems

            problems = figure_problems(fig)
            if problems:
                plt.close(fig)
                raise ArgumentValueError(
                    f"figure {stem!r} is not fit to publish: " + "; ".join(problems))

        paths = []
        for suffix in ("png", "svg"):
            target = self.file(f"{stem}.{suffix}")
            tmp = target.with_name(f".{target.name}.tmp")
            fig.savefig(tmp, dpi=dpi, format=suffix, bbox_inches="tight")
            os.replace(tmp, target)
            paths.append(target)
        plt.close(fig)
        return paths

