"""mkdocs hook: the repository's root pages (README, CONTRIBUTING, BENCHMARKS) as site pages.

mkdocs only builds files under ``docs/``. This hook adds README.md as the home page
(``index.md``), BENCHMARKS.md, and CONTRIBUTING.md when the file exists (with a nav entry at
the end). Their links are written for the repository root, so they are rewritten for the site:
``docs/x.md`` becomes ``x.md``, a link to another root page stays, and a link to a repository
file that is not a page (``Makefile``, ``src/...``) becomes the path in code, since the site
does not hold it. In every page, a fence opened as ```` ```python notest ```` (a block the
docs tests skip, see tests/test_docs.py) is opened as ```` ```python ````, the form the
Markdown fences of the site understand.

The API pages hold one line each, ``::: valleys.<package>``. The hook renders it from the
package's ``__all__`` as Python builds it (some packages extend ``__all__`` at import time, from
the curvature registry, which a static reading would miss): the names become the
``members`` option, and a public submodule in ``__all__`` without its own page
(``valleys.meanfield.batchnorm``) gets a section of its own.

It also sets aside the docstring-parsing warnings of ``KNOWN_DOCSTRING_DEFECTS`` (file, kind):
docstrings that the Google-style parser misreads, listed so that their owners can fix them.
Every other warning still fails ``mkdocs build --strict``; once a file is fixed, drop its line.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"README.md": "index.md", "BENCHMARKS.md": "BENCHMARKS.md",
         "CONTRIBUTING.md": "CONTRIBUTING.md"}
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
DIRECTIVE = re.compile(r"^::: (valleys(?:\.\w+)?)[ \t]*$", re.MULTILINE)
NOTEST = re.compile(r"^(\s*(?:`{3,}|~{3,}))[ \t]*(python3?|py)[ \t]+notest[ \t]*$", re.MULTILINE)
# A "Methods:" heading read as a Google "Methods" section, or an "Attributes:" entry that is
# not "name: description".
KNOWN_DOCSTRING_DEFECTS: tuple[tuple[str, str], ...] = ()


class _KnownDefects(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(path in message and kind in message
                       for path, kind in KNOWN_DOCSTRING_DEFECTS)


def _rewrite(text: str) -> str:
    def link(match: re.Match) -> str:
        bang, label, target = match.groups()
        if "://" in target or target.startswith(("#", "mailto:")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        suffix = f"#{anchor}" if anchor else ""
        if path in PAGES:
            return f"{bang}[{label}]({PAGES[path]}{suffix})"
        if path.startswith("docs/") and (ROOT / path).is_file():
            return f"{bang}[{label}]({path.removeprefix('docs/')}{suffix})"
        if path.startswith("docs/") and (ROOT / path / "README.md").is_file():
            return f"{bang}[{label}]({path.removeprefix('docs/').rstrip('/')}/README.md)"
        return f"{label} (`{path}`)"

    return LINK.sub(link, text)


def on_config(config):
    griffe = logging.getLogger("mkdocs.plugins.griffe")
    if not any(isinstance(f, _KnownDefects) for f in griffe.filters):
        griffe.addFilter(_KnownDefects())
    if (ROOT / "CONTRIBUTING.md").is_file():
        config.nav.append({"Contributing": "CONTRIBUTING.md"})
    return config


def on_files(files, config):
    for source, page in PAGES.items():
        path = ROOT / source
        if path.is_file():
            text = _rewrite(path.read_text(encoding="utf-8"))
            files.append(File.generated(config, page, content=text))
    return files


def _static_names(module) -> set[str]:
    """Names a module binds in its source (what griffe sees without importing it)."""
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _api_section(match: re.Match) -> str:
    name = match.group(1)
    module = importlib.import_module(name)
    names = list(getattr(module, "__all__", ()))
    members = [n for n in names if not inspect.ismodule(getattr(module, n, None))]
    static = _static_names(module)
    lines = [f"::: {name}", "    options:", "      members:"]
    lines += [f"        - {member}" for member in members if member in static]
    dynamic = [member for member in members if member not in static]
    if dynamic:  # bound at import time (the curvature registry): point to where they live
        lines.append("")
        for member in dynamic:
            home = ".".join(getattr(module, member).__module__.split(".")[:2])
            page = f"{home.removeprefix('valleys.')}.md" if home != name else ""
            lines.append(f"* `{name}.{member}` is [`{home}.{member}`]({page}#{home}.{member}), "
                         "added to the namespace by the curvature registry.")
    for sub in names:
        if sub in members or (Path(__file__).parent / f"{sub}.md").is_file():
            continue  # a submodule with its own page (valleys.data, ...) is not repeated
        lines += ["", f"::: {name}.{sub}", "    options:", "      heading_level: 3"]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("api/"):
        markdown = DIRECTIVE.sub(_api_section, markdown)
    return NOTEST.sub(r"\1\2", markdown)
