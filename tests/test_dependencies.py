"""``pip install -e ".[book]"`` gives a reader every package the chapters, labs and figures import.

Every top-level import of the book's executed blocks (```pycon and ```python fences of
``book/*.md``, code cells of ``book/*.ipynb``) and of ``figures/*.py`` must be the project's own
package, the standard library, or a distribution declared in ``pyproject.toml``'s dependencies or
its ``book`` extra; the library ``llama/`` may use only the standard library and the dependencies.
"""

from __future__ import annotations

import ast
import doctest
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

OWN = {"llama"} | {p.stem for p in (REPO / "figures").glob("_*.py")}  # the package, and the figures' helpers
# Import names whose distribution is called something else.
DISTRIBUTION = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn", "google": "protobuf"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.MULTILINE | re.DOTALL)


def top_level_imports(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def markdown_code(text: str) -> str:
    """The Python a page's tests run: its pycon statements and python blocks, in page order."""
    parts = []
    for fence in FENCE.finditer(text):
        language = (fence["info"].split() or [""])[0].lower()
        body = textwrap.dedent(fence["body"])
        if language == "pycon" or (language in {"python", "py"} and body.lstrip().startswith(">>>")):
            parts += [example.source for example in doctest.DocTestParser().get_examples(body)]
        elif language in {"python", "py"} and "--8<--" not in body:
            parts.append(body)
    return "\n".join(parts)


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text("utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {distribution(r) for r in requirements}


def undeclared(imports: dict[str, set[str]], allowed: set[str]) -> dict[str, list[str]]:
    """``{import name: [files]}`` for every import that is neither own, standard library nor allowed."""
    missing = {}
    for name, files in sorted(imports.items()):
        if name in OWN or name in sys.stdlib_module_names:
            continue
        if DISTRIBUTION.get(name, name).lower().replace("_", "-") not in allowed:
            missing[name] = sorted(files)
    return missing


def imports_of(sources: dict[str, str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for where, code in sources.items():
        for name in top_level_imports(code):
            found.setdefault(name, set()).add(where)
    return found


def book_sources() -> dict[str, str]:
    sources = {f"book/{p.name}": markdown_code(p.read_text("utf-8")) for p in sorted((REPO / "book").glob("*.md"))}
    sources |= {f"book/{p.name}": notebook_code(p) for p in sorted((REPO / "book").glob("*.ipynb"))}
    sources |= {f"figures/{p.name}": p.read_text("utf-8") for p in sorted((REPO / "figures").glob("*.py"))}
    return sources


def test_the_book_extra_covers_every_import_of_the_chapters_labs_and_figures():
    imports = imports_of(book_sources())
    # The scan itself works: these are imported by the chapters and labs today.
    assert {"torch", "transformers", "matplotlib"} <= set(imports), sorted(imports)
    missing = undeclared(imports, declared("book"))
    assert not missing, ("imported by the book but not declared in pyproject.toml (add it to the `book` extra, "
                         f"or to DISTRIBUTION here if its distribution has another name): {missing}")


def test_the_library_needs_only_its_dependencies():
    imports = imports_of({f"llama/{p.relative_to(REPO / 'llama').as_posix()}": p.read_text("utf-8") for p in sorted((REPO / "llama").rglob("*.py"))})
    assert "torch" in imports
    missing = undeclared(imports, declared())
    assert not missing, f"llama/ imports packages that are not in pyproject.toml's dependencies: {missing}"


def test_the_check_catches_an_undeclared_import():
    imports = imports_of({"book/x.md": markdown_code("```pycon\n>>> import yaml, os\n>>> from scipy import linalg\n```\n")})
    assert undeclared(imports, {"pyyaml"}) == {"scipy": ["book/x.md"]}
