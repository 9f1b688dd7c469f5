"""The package's shape: sub-packages that follow the book's parts, imports that go one way, no
cycle, and modules small enough to read.

The order of the sub-packages, from the bottom: the model (part I); quantization, which the
formats need for integer weights; the formats that read and write model files; tokenizers and
inference (part II); data and training (parts III and IV); the command line on top. A module may
import from its own package or from one below, so a reader can follow the book part by part
without meeting code that depends on a later one.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llama"
MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
                 if p.name not in ("__init__.py", "__main__.py"))
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))

#: Bottom to top. ``_files`` and ``_exports`` are private helpers every package may use.
LAYERS = ["_files", "_exports", "model", "quantization", "formats", "tokenizers", "inference", "data", "training",
          "posttraining", "serving", "cli"]
MAX_LINES = 450  # "about 400": a module past this does more than one job


def path_of(module: str) -> Path:
    return PACKAGE.joinpath(*module.split(".")).with_suffix(".py")


def top(module: str) -> str:
    """The sub-package of a module (``model.transformer`` -> ``model``), or a top-level module's name."""
    return module.split(".")[0]


def llama_imports(module: str) -> set[str]:
    """The ``llama`` modules and packages that ``module`` imports, at any depth of its code, as
    dotted names below ``llama`` (``model.transformer``; ``model`` for the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path_of(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                found.add(f"relative import in {module}")
            elif node.module.startswith("llama."):
                found.add(node.module.removeprefix("llama."))
            elif node.module == "llama":
                found.add("llama")
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("llama.") for a in node.names if a.name.startswith("llama."))
    return found - {module}


def test_every_package_and_top_level_module_has_a_layer():
    assert sorted({top(m) for m in MODULES} - set(LAYERS)) == []
    assert set(SUBPACKAGES) <= set(LAYERS)


@pytest.mark.parametrize("module", MODULES)
def test_imports_go_down_the_layers(module):
    upward = sorted(m for m in llama_imports(module) if top(m) not in LAYERS
                    or LAYERS.index(top(m)) > LAYERS.index(top(module)))
    assert upward == [], f"llama/{module.replace('.', '/')}.py imports from a later part (or relatively): {upward}"


@pytest.mark.parametrize("module", MODULES)
def test_the_library_imports_modules_not_package_re_exports(module):
    """Inside the library, ``from llama.model.transformer import Transformer``, never ``from llama.model
    import Transformer``: the re-exports are for readers, and importing through them would hide a
    cycle between two modules of one package until the first call."""
    through_packages = sorted(m for m in llama_imports(module) if m in SUBPACKAGES or m == "llama")
    assert through_packages == [], f"llama/{module.replace('.', '/')}.py imports {through_packages} as packages"


def test_no_import_cycle():
    graph = {m: llama_imports(m) & set(MODULES) for m in MODULES}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return path + [d]
            if d not in state and (cycle := visit(d, path + [d])):
                return cycle
        state[m] = "done"
        return None

    cycles = [c for m in MODULES if m not in state and (c := visit(m, [m]))]
    assert cycles == []


def defined_at_top_level(module: str) -> set[str]:
    names = set()
    for node in ast.parse(path_of(module).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_a_package_re_exports_what_its_modules_export(package):
    """``from llama.<package> import Name`` works for every public name of its modules (a reader's
    import line stays short), each name resolves to the object its module defines, and the
    ``TYPE_CHECKING`` imports the API pages read list the same names."""
    pkg = importlib.import_module(f"llama.{package}")
    if package == "cli":  # subcommands: nothing to re-export
        return
    modules = [m for m in MODULES if top(m) == package]
    defined = {}
    for m in modules:
        mod = importlib.import_module(f"llama.{m}")
        own = defined_at_top_level(m)  # a name the module imports from another is exported where defined
        for name in getattr(mod, "__all__", []):
            if name in own and name not in {n.split(".")[-1] for n in modules}:
                defined.setdefault(name, mod)
    assert sorted(pkg.__all__) == sorted(defined)
    for name, mod in defined.items():
        assert getattr(pkg, name) is getattr(mod, name)
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    checked = {a.name for node in ast.walk(tree) if isinstance(node, ast.If)
               for sub in ast.walk(node) if isinstance(sub, ast.ImportFrom) for a in sub.names}
    assert checked == set(defined)


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_small(module):
    lines = len(path_of(module).read_text().splitlines())
    assert lines <= MAX_LINES, f"llama/{module.replace('.', '/')}.py has {lines} lines: split it along a real seam"
