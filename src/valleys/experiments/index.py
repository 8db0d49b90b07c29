"""The index of a results folder: one table of every reproduction's claims and verdicts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from valleys.errors import ArgumentValueError
from valleys.experiments.common import format_cell, format_spread, markdown_table
from valleys.experiments.output import OutputFolder
from valleys.experiments.protocol import VERDICTS

__all__ = ["write_index"]


def _measured(measured: dict) -> str:
    parts = []
    for key, value in measured.items():
        if isinstance(value, dict) and "mean" in value:
            parts.append(f"{key} {format_spread(value, 3)}")
        else:
            parts.append(f"{key} {format_cell(value, 3)}")
    return "; ".join(parts)


def write_index(root: str | Path, *, title: str = "Results of the full presets") -> Path:
    """Write ``root/README.md``: for each ``root/<name>/summary.json``, one row per claim with
    the paper's statement, the criterion, the measured values (mean [min, max] over seeds), the
    verdict and a link to the report. Returns the path written."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ArgumentValueError(
            f"{str(root)!r} is a file, not a folder; give the folder that holds "
            "the reproductions' output folders (e.g. results)")
    summaries = sorted(root.glob("*/summary.json"))
    if not summaries:
        raise ArgumentValueError(
            f"no */summary.json under {str(root)!r}; run `valleys reproduce NAME "
            f"--out {root}/NAME` first")
    runs, claims = [], []
    for path in summaries:
        summary = json.loads(path.read_text(encoding="utf-8"))
        name = summary["name"]
        link = f"[{name}]({path.parent.name}/report.md)"
        meta = summary.get("metadata", {})
        counts = Counter(c["verdict"] for c in summary["claims"])
        runs.append({"reproduction": link, "preset": summary.get("preset"),
                     "seeds": ",".join(str(s) for s in summary.get("seeds", [])),
                     "device": summary.get("device"),
                     "measuring time, all seeds (s)": meta.get("measure_s"),
                     "verdicts": ", ".join(f"{v}: {counts[v]}" for v in VERDICTS if counts[v])})
        for claim in summary["claims"]:
            claims.append({"reproduction": link, "claim": f"`{claim['id']}`: {claim['claim']}",
                           "criterion": claim["criterion"],
                           "measured": _measured(claim["measured"]),
                           "verdict": f"**{claim['verdict']}**"})
    text = "\n".join([
        f"# {title}", "",
        "Each folder holds what `valleys reproduce NAME --preset full --out docs/results/NAME` "
        "wrote: `report.md`, `summary.json`, `results.csv` and the figures. Every verdict is "
        "computed from a criterion fixed in code before the run; measured values are the mean "
        "[min, max] over seeds. Regenerate this page with `valleys results docs/results`.", "",
        "## Runs", "", markdown_table(runs, list(runs[0])), "",
        "## Claims", "", markdown_table(claims, list(claims[0])), "",
    ])
    return OutputFolder(root).write_text("README.md", text)
