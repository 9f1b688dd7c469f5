"""The code the book teaches is the code the model runs.

A session that uses the model the way a reader does (build one, with and without RoPE scaling,
run a forward pass, generate, save and load) is traced, and every function of ``llama/`` it
executes is located in the snippet sections of its module and in the chapters that include them:

* (a) every executed function is shown in some chapter: a function the model runs but the book
  never shows would make the chapters describe a different model;
* (b) every function shown by the chapters that build the model (attention, gqa, rope, norm,
  feed_forward, model) is executed: a function taught there but not run by the model would be a
  second, untested version of the code.

The exemptions are listed below, each with its reason.
"""

from __future__ import annotations

import ast
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import REPO, load_listings

import llama
from llama import ModelConfig, RopeScaling, Transformer
from llama.formats.load import load_model, save_model

PACKAGE = REPO / "llama"

# The chapters that build the model: what they show, the model must run.
MODEL_CHAPTERS = ["attention.md", "gqa.md", "rope.md", "norm.md", "feed_forward.md", "model.md"]

# (a) Executed, yet need not be shown in a chapter.
NOT_SHOWN_PREFIXES = {
    "_check": "input validation: raises a clear error on bad input, computes nothing of the model",
    "_validate": "input validation, as _check*",
}
NOT_SHOWN = {
    "model/config.py:ModelConfig.__post_init__": "fills the derived defaults and calls validate(); dataclass plumbing",
    "model/config.py:ModelConfig.validate": "input validation: checks that the sizes fit together",
    "model/config.py:RopeScaling.__post_init__": "input validation of the scaling factors",
    "formats/convert.py:check_layer_count": "input validation: the layers a file declares against the tensors it holds",
    "formats/load.py:check_before_building": "input validation: a file's tensors and this machine's memory against the "
                                             "config, before the model is built",
    # The __init__ that @dataclass generates is compiled from a string ("<string>"), not from a
    # file of llama/, so the trace never attributes it to the package: nothing to exempt.
}
NOT_SHOWN_MODULES = {
    "_files.py": "atomic file writing, plumbing shared by the writers of checkpoints",
    "__init__.py": "a package's lazy imports of its public names (so the CLI starts without torch)",
    "_exports.py": "the lazy imports themselves (PEP 562 plumbing)",
}

# (b) Shown by a model chapter, yet need not run in the model.
NOT_RUN_MODULES = {"model/reference.py": "the written-out versions the chapters teach next to what the model calls"}
NOT_RUN = {
    "model/transformer.py:count_parameters": "sizing arithmetic about the model, computed from the config alone",
    "model/attention.py:kv_cache_bytes": "sizing arithmetic about the model, computed from the config alone",
}


listings = load_listings()


@dataclass(frozen=True)
class Function:
    module: str  # path inside llama/, e.g. "model/attention.py"
    qualname: str
    first_line: int  # the def line, or the first decorator's line (what co_firstlineno holds)

    @property
    def key(self) -> str:
        return f"{self.module}:{self.qualname}"

    def __str__(self) -> str:
        return f"llama/{self.module}:{self.first_line} {self.qualname}"


def defined_functions(path: Path) -> list[Function]:
    """Every function and method of a module, nested ones included, with its qualified name."""
    found = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append(Function(path.relative_to(PACKAGE).as_posix(), prefix + child.name, first))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text("utf-8")), "")
    return found


def sections_containing(function: Function) -> list[str]:
    text = (PACKAGE / function.module).read_text("utf-8")
    return [
        f"llama/{function.module}:{name}"
        for name, (first, last) in listings.sections_of(text).items()
        if first <= function.first_line <= last
    ]


def included_sections(chapters) -> dict[str, list[str]]:
    """``"llama/x.py:section"`` -> the chapters (nav order) whose listings include it."""
    where: dict[str, list[str]] = {}
    for chapter in chapters:
        for line in chapter.source.read_text("utf-8").splitlines():
            m = listings.INCLUDE.match(line)
            if m:
                where.setdefault(f"{m['path']}:{m['section']}", []).append(chapter.path)
    return where


def reader_session(folder: Path) -> None:
    """What a reader of the book does with the model."""
    torch.manual_seed(0)
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, max_seq_len=64)
    model = Transformer(config).eval()
    Transformer(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, max_seq_len=64,
                            rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=32)))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))
    llama.generate(model, [1, 2, 3], 5)
    save_model(model, folder)
    load_model(folder)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> list[Function]:
    """The functions of llama/ that the reader's session runs."""
    codes = set()

    def profile(frame, event, arg):
        if event == "call":
            codes.add(frame.f_code)

    sys.setprofile(profile)
    try:
        reader_session(tmp_path_factory.mktemp("checkpoint"))
    finally:
        sys.setprofile(None)
    functions = {
        Function(Path(code.co_filename).resolve().relative_to(PACKAGE).as_posix(), code.co_qualname, code.co_firstlineno)
        for code in codes
        if PACKAGE in Path(code.co_filename).resolve().parents
        and not code.co_name.startswith("<")  # module bodies, comprehensions and lambdas belong to their function
        # A class body runs once, when the session happens to import its module first: not a function.
        and code.co_flags & inspect.CO_OPTIMIZED
    }
    assert functions, "the trace saw no function of llama/: is the package imported from elsewhere?"
    return sorted(functions, key=str)


def exempt_from_showing(function: Function) -> bool:
    name = function.qualname.rsplit(".", 1)[-1]
    return (
        function.key in NOT_SHOWN
        or Path(function.module).name in NOT_SHOWN_MODULES
        or any(name.startswith(prefix) for prefix in NOT_SHOWN_PREFIXES)
    )


def test_every_executed_function_is_shown_in_a_chapter(executed, book_chapters):
    shown = included_sections(book_chapters)
    missing = []
    for function in executed:
        if exempt_from_showing(function):
            continue
        sections = sections_containing(function)
        if not sections:
            missing.append(f"  {function}: in no snippet section")
        elif not any(s in shown for s in sections):
            missing.append(f"  {function}: in section {', '.join(sections)}, which no chapter includes")
    assert missing == [], (
        "the model runs functions that no chapter shows (mark a section around each and include it, "
        "or exempt it at the top of this file with a reason):\n" + "\n".join(missing)
    )


def test_every_function_the_model_chapters_show_is_executed(executed, book_chapters):
    chapters = [c for c in book_chapters if c.path in MODEL_CHAPTERS]
    assert sorted(c.path for c in chapters) == sorted(MODEL_CHAPTERS), "a model chapter is missing from the nav"
    ran = {f.key for f in executed}
    not_run = []
    for section, pages in sorted(included_sections(chapters).items()):
        path, name = section.split(":")
        module = path.removeprefix("llama/")
        if module in NOT_RUN_MODULES:
            continue
        first, last = listings.sections_of((REPO / path).read_text("utf-8"))[name]
        for function in defined_functions(REPO / path):
            if first <= function.first_line <= last and function.key not in ran and function.key not in NOT_RUN:
                not_run.append(f"  {function}: shown in {', '.join(pages)} ({section}), never run by the model")
    assert not_run == [], (
        "the model chapters teach functions the model does not run (make the model call them, or move "
        "them to llama/model/reference.py):\n" + "\n".join(not_run)
    )


def test_traced_functions_are_found_in_the_source(executed):
    # Sections are matched by the def line; co_firstlineno and the AST must agree on it (decorators!).
    defined = {(f.module, f.qualname, f.first_line) for path in PACKAGE.rglob("*.py") for f in defined_functions(path)}
    unmatched = [str(f) for f in executed if (f.module, f.qualname, f.first_line) not in defined]
    assert unmatched == [], "traced functions whose def line the source parser places elsewhere:\n" + "\n".join(unmatched)
