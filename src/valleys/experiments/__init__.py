"""Reproductions: one module per paper result, each a function of a preset.

Every experiment module defines ``NAME``, ``PRESETS`` (at least ``"quick"`` and ``"full"``) and
``run(out, *, preset="quick", seed=0, progress=True) -> dict`` (the summary it also writes to
``out/summary.json``). ``valleys reproduce NAME`` looks experiments up here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXPERIMENTS", "get_experiment"]

# name -> module path; modules are imported only when asked for.
EXPERIMENTS: dict[str, str] = {
    "linear-stability": "valleys.experiments.linear_stability",
    "input-smoothness": "valleys.experiments.input_smoothness",
    "multiscale": "valleys.experiments.multiscale",
    "edge-of-stability": "valleys.experiments.edge_of_stability",
    "meanfield-two-layer": "valleys.experiments.meanfield_two_layer",
    "meanfield-batchnorm": "valleys.experiments.meanfield_batchnorm",
    "meanfield-resnet": "valleys.experiments.meanfield_resnet",
    "quasistatic-games": "valleys.experiments.quasistatic_games",
    "sgd-vs-adam": "valleys.experiments.sgd_vs_adam",
}


def get_experiment(name: str) -> ModuleType:
    """The experiment module registered under ``name``."""
    if name not in EXPERIMENTS:
        known = ", ".join(sorted(EXPERIMENTS)) or "none yet"
        raise ValueError(f"unknown experiment {name!r}; available: {known}")
    return importlib.import_module(EXPERIMENTS[name])
