"""The layers of docs/architecture.md hold: no module imports from a higher layer.

The table is read from docs/architecture.md (between ``<!-- layers:begin -->`` and
``<!-- layers:end -->``), so the page and the rule cannot drift apart. Imports are found with
``ast`` anywhere in a module (top level, inside functions, under ``TYPE_CHECKING``); a module's
unit is its top-level module or package (``valleys.linalg._lanczos`` -> ``linalg``), and
``from valleys import name`` counts as an import of the unit that defines ``name``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "valleys"
DOC = ROOT / "docs" / "architecture.md"


def layer_table(text: str) -> dict[str, tuple[int, str]]:
    """``unit -> (layer number, layer name)`` from the doc's table."""
    match = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", text, re.DOTALL)
    assert match, "docs/architecture.md lost its layer table markers"
    table: dict[str, tuple[int, str]] = {}
    for row in match.group(1).strip().splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        for unit in re.findall(r"`([\w.]+)`", cells[2]):
            assert unit not in table, f"{unit} is in two layers"
            table[unit] = (int(cells[0]), cells[1])
    return table


def unit_of(module: str) -> str:
    """``valleys.linalg._lanczos`` -> ``linalg``; ``valleys`` -> ``valleys``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "valleys"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def units_in_tree() -> set[str]:
    units = {"valleys"}
    for path in SRC.iterdir():
        if path.suffix == ".py" and path.name != "__init__.py":
            units.add(path.stem)
        elif path.is_dir() and (path / "__init__.py").exists():
            units.add(path.name)
    return units


def reexports() -> dict[str, str]:
    """Names of ``valleys/__init__.py`` -> the unit they come from."""
    names = {}
    for node in ast.walk(ast.parse((SRC / "__init__.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("valleys"):
            for alias in node.names:
                names[alias.asname or alias.name] = unit_of(node.module) if node.module != (
                    "valleys") else alias.name
    return names


def imports_of(source: str, module: str, is_package: bool,
               names: dict[str, str]) -> set[tuple[str, int]]:
    """``(unit, line)`` of every import of valleys code in the source of ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base == "valleys":
                for alias in node.names:
                    if (SRC / f"{alias.name}.py").exists() or (SRC / alias.name).is_dir():
                        targets.append(f"valleys.{alias.name}")
                    else:  # a curated name: the unit that defines it
                        targets.append(f"valleys.{names.get(alias.name, '__init__')}")
            else:
                targets = [base]
        for target in targets:
            if target == "valleys" or target.startswith("valleys."):
                unit = "valleys" if target == "valleys.__init__" else unit_of(target)
                found.add((unit, node.lineno))
    return found


def imported_units(path: Path, names: dict[str, str]) -> set[tuple[str, int]]:
    return imports_of(path.read_text(encoding="utf-8"), module_name(path),
                      path.name == "__init__.py", names)


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


TABLE = layer_table(DOC.read_text(encoding="utf-8"))
NAMES = reexports()


def test_every_unit_has_a_layer_and_every_row_exists():
    tree = units_in_tree()
    missing = sorted(tree - set(TABLE))
    assert not missing, (f"add {missing} to the layer table of docs/architecture.md (which "
                         "layer may they import from, and who imports them?)")
    stale = sorted(set(TABLE) - tree)
    assert not stale, f"docs/architecture.md lists {stale}, which src/valleys no longer has"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_from_a_higher_layer(path):
    own = unit_of(module_name(path))
    if own not in TABLE:
        pytest.skip(f"{own} has no layer (reported by the test above)")
    level, name = TABLE[own]
    bad = []
    for unit, line in sorted(imported_units(path, NAMES)):
        if unit == own or unit not in TABLE:
            continue
        if TABLE[unit][0] > level:
            bad.append(f"line {line}: imports {unit} (layer {TABLE[unit][0]} "
                       f"{TABLE[unit][1]}) from layer {level} {name}")
    assert not bad, f"src/valleys/{path.relative_to(SRC)}:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation():
    """An import from a higher layer, a lazy one, a relative one and a curated name."""
    code = ("def f():\n    from valleys.stability import is_stable\n"
            "from valleys import Objective\nimport valleys.train.loop\n"
            "from ..sweeps import grid\nfrom . import _lanczos\n")
    units = {u for u, _ in imports_of(code, "valleys.linalg._probe", False, NAMES)}
    assert units == {"stability", "objective", "train", "sweeps", "linalg"}
    higher = {u for u in units if TABLE[u][0] > TABLE["linalg"][0]}
    assert higher == {"stability", "train", "sweeps"}
