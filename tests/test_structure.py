"""The package's shape: imports go one way, with no cycle, and modules stay small enough to read.

The order, from the bottom: the model's pieces; the model with the formats that read and write
its weights; tokenizers, sampling and generation, data and training; the command line on top. A module may
import only from its own layer or below, so a reader can follow the book chapter by chapter
without meeting code that depends on a later chapter.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llama"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")

LAYERS = [
    {"_files", "config", "norm", "rope", "linear", "quant_kernel", "quantize", "attention", "feed_forward", "reference", "convert"},
    {"checkpoint", "gguf", "gguf_quant", "llama2c", "model", "lora"},
    {"protobuf", "spm_vocab", "spm", "pretokenize", "bpe", "tokenizer", "gguf_vocab", "sampling", "generation", "download", "data",
     "distributed", "fsdp", "dcp_checkpoint", "train_config", "run_folder", "train_state", "loss", "precision", "optim",
     "flops", "memory", "finetune", "train"},
    {"cli", "cli_convert", "cli_train", "cli_finetune"},
]
MAX_LINES = 450  # "about 400": a module past this does more than one job


def llama_imports(module: str) -> set[str]:
    """The modules of ``llama`` that ``module`` imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                found.add(f"relative import in {module}")
            elif node.module.startswith("llama."):
                found.add(node.module.split(".")[1])
            elif node.module == "llama":
                found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("llama."))
    return found - {module}


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def test_every_module_has_a_layer():
    assert [m for m in MODULES if not any(m in layer for layer in LAYERS)] == []


@pytest.mark.parametrize("module", MODULES)
def test_imports_go_down_the_layers(module):
    upward = sorted(m for m in llama_imports(module) if m not in MODULES or layer_of(m) > layer_of(module))
    assert upward == [], f"llama/{module}.py imports from a later layer (or relatively): {upward}"


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


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_small(module):
    lines = len((PACKAGE / f"{module}.py").read_text().splitlines())
    assert lines <= MAX_LINES, f"llama/{module}.py has {lines} lines: split it along a real seam"
