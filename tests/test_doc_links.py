"""Every reference in the docs resolves inside the repository.

Scanned: README.md, CONTRIBUTING.md, docs/**/*.md, and the text that the
reproductions' report templates (``src/valleys/experiments/*/report.py``) write into
``docs/results/*/report.md``. Three kinds of breakage fail:

* a relative link or image (``[text](path)``, ``![alt](path)``) whose file does not exist or
  lies outside the repository, or a repository path in a code span (`` `docs/x.md` ``,
  `` `DESIGN.md` ``) that does not exist;
* a path outside the repository: ``/work/...``, ``/home/...``, ``../shared``, ``shared/...``
  (the maintainers' private notes, which a reader of the repository cannot open);
* a footnote-like marker (``[NF]``, ``[^1]``) with no definition (``[NF]: ...``) in the file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]

# Paths a reader of the repository cannot open.
OUTSIDE = re.compile(
    r"(?<![\w.~:/-])/(?:work|home|root|mnt|Users)/"  # absolute paths of some machine
    r"|(?:\.\./)+shared\b"                              # ../shared, ../../shared
    r"|(?<![\w./-])shared/(?:DESIGN|reference|hooks)\b"  # the private design notes
)
# Footnote-like markers: [^label] or an all-capitals tag such as [NF], outside code.
MARKER = re.compile(r"\[(\^[\w-]+|[A-Z]{1,5})\](?![(\[:])")
DEFINITION = re.compile(r"^\s{0,3}\[(\^?[\w-]+)\]:", re.MULTILINE)
# Code spans that name a file of the repository: a top-level folder or file, or CAPS.md.
TOP_LEVEL = ("src/", "tests/", "docs/", "benchmarks/", ".ci/")
ROOT_FILE = re.compile(r"^[A-Z][A-Z_]*\.md$|^(Makefile|pyproject\.toml|mkdocs\.yml|LICENSE)$")
SCHEMES = ("http://", "https://", "mailto:", "#")


def markdown_files() -> list[Path]:
    files = [ROOT / name for name in ("README.md", "CONTRIBUTING.md")]
    files += sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def report_templates() -> list[Path]:
    return sorted((ROOT / "src" / "valleys" / "experiments").glob("*/report.py"))


def _inline(tokens):
    for token in tokens:
        if token.type == "inline":
            yield token


def markdown_problems(text: str, where: Path) -> list[str]:
    """Broken references of one markdown text, located in the folder ``where``."""
    problems = []
    md = MarkdownIt("commonmark")
    tokens = md.parse(text)
    for match in OUTSIDE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        problems.append(f"line {line}: path outside the repository {match.group(0)!r}")
    defined = set(DEFINITION.findall(text))
    for token in _inline(tokens):
        prose = "".join(child.content for child in token.children or ()
                        if child.type == "text")
        for marker in MARKER.findall(prose):
            if marker not in defined:
                problems.append(f"line {token.map[0] + 1}: undefined marker [{marker}]")
        for child in token.children or ():
            target = None
            if child.type == "link_open":
                target = child.attrGet("href")
            elif child.type == "image":
                target = child.attrGet("src")
            if target:
                problem = _link_problem(str(target), where)
                if problem:
                    problems.append(f"line {token.map[0] + 1}: {problem}")
            if child.type == "code_inline":
                problem = _code_path_problem(child.content, where)
                if problem:
                    problems.append(f"line {token.map[0] + 1}: {problem}")
    return problems


def _link_problem(target: str, where: Path) -> str | None:
    if target.startswith(SCHEMES) or "://" in target:
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None
    resolved = (where / path).resolve()
    if not resolved.is_relative_to(ROOT):
        return f"link {target!r} leaves the repository"
    if not resolved.exists():
        return f"link {target!r} does not exist"
    return None


def _code_path_problem(span: str, where: Path) -> str | None:
    span = span.strip()
    if " " in span or any(ch in span for ch in "*$<>{}|=(),"):
        return None
    if span.startswith(TOP_LEVEL):
        base = span.split("::", 1)[0]
        return None if (ROOT / base).exists() else f"path `{span}` does not exist"
    if ROOT_FILE.match(span):
        exists = (ROOT / span).exists() or (where / span).exists()
        return None if exists else f"file `{span}` is not in the repository"
    return None


def template_problems(source: str) -> list[str]:
    """Outside paths and undefined markers in the strings a report template writes."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text, line = node.value, node.lineno
            for match in OUTSIDE.finditer(text):
                problems.append(f"line {line}: path outside the repository {match.group(0)!r}")
            for marker in MARKER.findall(text):
                problems.append(f"line {line}: undefined marker [{marker}] in report text")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_references_resolve(path):
    problems = markdown_problems(path.read_text(encoding="utf-8"), path.parent)
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


# Templates with a known broken reference (strict xfail: a fixed one fails until removed here).
KNOWN: dict[str, str] = {}


def _template_params():
    params = []
    for path in report_templates():
        name = path.parent.name
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN[name])] if name in KNOWN else []
        params.append(pytest.param(path, id=name, marks=marks))
    return params


@pytest.mark.parametrize("path", _template_params())
def test_report_templates_cite_nothing_outside_the_repository(path):
    problems = template_problems(path.read_text(encoding="utf-8"))
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


# -- the checker itself ------------------------------------------------------------------------
def test_the_checker_catches_each_kind_of_breakage():
    docs = ROOT / "docs"
    cases = {
        "see [the sketch](DESIGN.md)": "does not exist",
        "see `DESIGN.md`": "not in the repository",
        "sketched in `shared/DESIGN.md`": "outside the repository",
        "digest: /work/shared/reference/implicit-bias.md": "outside the repository",
        "[up](../../outside.md)": "leaves the repository",
        "not in our digest ([NF]); derived": "undefined marker [NF]",
        "a claim[^1] without a note": "undefined marker [^1]",
        "![figure](missing.png)": "does not exist",
        "`tests/test_nothing_here.py`": "does not exist",
    }
    for text, expected in cases.items():
        problems = markdown_problems(text + "\n", docs)
        assert any(expected in p for p in problems), (text, problems)
    fine = ("[arch](architecture.md), `docs/reliability.md`, mean [min, max], x[i]\n"
            "[NF]: not found in the digest\n\n[NF] is defined, `report.md`, "
            "[web](https://example.org/x.md)\n\n```\n/work/in/a/fence/is/still/checked\n```\n")
    assert [p for p in markdown_problems(fine, docs) if "/work/" not in p] == []
    assert template_problems('x = "digest ([NF]) at shared/reference/a.md"')
    assert not template_problems('x = f"mean [min, max] over {n} seeds"')
