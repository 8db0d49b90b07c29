"""Reproductions: one folder per paper result, one driver for all of them.

Each reproduction is a folder ``experiments/<name>/`` holding ``measure.py`` (the science),
``figures.py`` (the pictures) and ``report.py`` (the prose); see
:mod:`valleys.experiments.protocol` for what each defines. A new folder is found by itself:
adding a reproduction means writing those three files. ``valleys reproduce NAME`` and
:func:`run` drive them.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from valleys.errors import ArgumentValueError
from valleys.experiments.driver import run
from valleys.experiments.protocol import Claim, ClaimSpec, Experiment, Figure, judge_seeds, spread

__all__ = [
    "EXPERIMENTS",
    "Claim",
    "ClaimSpec",
    "Experiment",
    "Figure",
    "judge_seeds",
    "load_experiment",
    "run",
    "spread",
]

_HERE = Path(__file__).resolve().parent

#: name -> package folder; the modules are imported only when an experiment is loaded.
EXPERIMENTS: dict[str, str] = {
    folder.name.replace("_", "-"): folder.name
    for folder in sorted(_HERE.iterdir())
    if folder.is_dir() and (folder / "measure.py").exists()
}

def load_experiment(name: str) -> Experiment:
    """The reproduction registered under ``name`` (its three modules, checked)."""
    if name not in EXPERIMENTS:
        known = ", ".join(sorted(EXPERIMENTS)) or "none yet"
        raise ArgumentValueError(f"unknown experiment {name!r}; available: {known}")
    package = f"valleys.experiments.{EXPERIMENTS[name]}"
    measure = importlib.import_module(f"{package}.measure")
    figures = importlib.import_module(f"{package}.figures")
    report = importlib.import_module(f"{package}.report")
    if measure.NAME != name:
        raise RuntimeError(f"{package}.measure.NAME is {measure.NAME!r}, not {name!r}")
    missing = {"quick", "full"} - set(measure.PRESETS)
    if missing:
        raise RuntimeError(f"{name}: PRESETS lacks {sorted(missing)}")
    title = (measure.__doc__ or "").strip().splitlines()[0].rstrip(".") if measure.__doc__ else ""
    return Experiment(
        name=name,
        paper=measure.PAPER,
        presets=measure.PRESETS,
        claim_specs=tuple(measure.CLAIMS),
        measure=measure.measure,
        claims=measure.claims,
        figures=figures.figures,
        table=report.table,
        report=report.report,
        summary=getattr(measure, "summary", None),
        seeds=getattr(measure, "SEEDS", {}),
        title=title,
        code_version=hashlib.sha256(Path(measure.__file__).read_bytes()).hexdigest()[:16],
    )
