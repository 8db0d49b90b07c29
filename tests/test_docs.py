"""Docs that run: every ```python block of README.md, CONTRIBUTING.md and docs/**/*.md is a test.

The blocks are found the way ``pytest --markdown-docs`` (pytest-markdown-docs) finds them: a
CommonMark parse, fences whose info string starts with ``python``, ``py`` or ``python3``, and
``notest`` in the info string to skip one (``python notest``: multi-process or GPU examples;
they must still parse). Each block runs on its own, in a fresh namespace and an empty working
folder, so a block that uses a name it did not define fails here. ``pytest --markdown-docs
README.md docs`` runs the same blocks with the plugin.
"""

from __future__ import annotations

import ast
import math
import warnings
from pathlib import Path

import pytest
import torch
from markdown_it import MarkdownIt

import valleys
from valleys import stability

ROOT = Path(__file__).resolve().parents[1]
PYTHON = {"python", "py", "python3"}
# Fences that may not run here, and why; keep this short.
MAX_SKIPPED = 2


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def fences(path: Path) -> list[tuple[int, list[str], str]]:
    """``(line, info words, code)`` of every python fence of a markdown file."""
    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    found = []
    for token in tokens:
        if token.type != "fence" or token.map is None:
            continue
        info = token.info.strip().strip("{}").split()
        if info and info[0].lstrip(".") in PYTHON:
            found.append((token.map[0] + 1, info[1:], token.content))
    return found


def _blocks(skipped: bool) -> list:
    params = []
    for path in markdown_files():
        for line, options, code in fences(path):
            if ("notest" in options) == skipped:
                name = f"{path.relative_to(ROOT)}:{line}"
                params.append(pytest.param(name, code, id=name))
    return params


RUNNABLE = _blocks(skipped=False)
SKIPPED = _blocks(skipped=True)


def test_the_docs_have_runnable_blocks_and_few_skipped_ones():
    assert len(RUNNABLE) >= 8, "README.md lost its examples?"
    assert len(SKIPPED) <= MAX_SKIPPED, f"too many `python notest` fences: {SKIPPED}"


@pytest.mark.parametrize(("where", "code"), RUNNABLE + SKIPPED)
def test_block_parses(where, code):
    ast.parse(code, filename=where)


@pytest.mark.parametrize(("where", "code"), RUNNABLE)
def test_block_runs(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block may write files (figures)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = {"__name__": "__main__"}
    try:
        exec(compile(code, where, "exec"), namespace)
    finally:
        plt.close("all")


def _not_a_minimum() -> valleys.Objective:
    """A tanh net at initialization: its Hessian has negative curvature."""
    torch.manual_seed(0)
    X = torch.randn(64, 10, dtype=torch.float64)
    y = X @ torch.randn(10, 1, dtype=torch.float64)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return valleys.Objective(net.double(), "mse", (X, y))


def test_max_stable_lr_says_why_it_returns_zero():
    obj = _not_a_minimum()
    record = stability.max_stable_lr_analysis(obj, batch_size=8)
    assert record.lr == 0.0 and record.note is not None
    with pytest.warns(RuntimeWarning, match="not a minimum") as caught:
        lr = stability.max_stable_lr(obj, batch_size=8)
    assert lr == 0.0 and isinstance(lr, float)
    assert record.note in str(caught[0].message)
    assert "max_stable_lr returned 0" in str(caught[0].message)


def test_max_stable_lr_says_why_without_positive_curvature():
    # L(w) = −½ mean_i (x_i·w)² has H ⪯ 0: no positive curvature; inf for GD, 0 for SGD.
    g = torch.Generator().manual_seed(1)
    X = torch.randn(16, 3, dtype=torch.float64, generator=g)

    def loss(outputs, targets):
        return -0.5 * (outputs - targets).square().sum(1)

    model = torch.nn.Linear(3, 1, bias=False).double()
    obj = valleys.Objective(model, loss, (X, torch.zeros(16, 1, dtype=torch.float64)))
    with pytest.warns(RuntimeWarning, match="no positive curvature"):
        assert stability.max_stable_lr(obj, batch_size=4) == 0.0
    with pytest.warns(RuntimeWarning, match="no positive curvature"):
        assert stability.max_stable_lr(obj, batch_size=16) == math.inf


def test_max_stable_lr_is_silent_at_a_minimum():
    torch.manual_seed(0)
    X = torch.randn(32, 4, dtype=torch.float64)
    y = X @ torch.randn(4, 1, dtype=torch.float64)
    model = torch.nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, y).solution.T)
    obj = valleys.Objective(model, "mse", (X, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        lr = stability.max_stable_lr(obj, batch_size=4)
    assert lr == stability.max_stable_lr_analysis(obj, batch_size=4).lr > 0
