"""Lazy re-exports for the sub-packages (PEP 562).

``from llama.model import Transformer`` works although ``llama/model/__init__.py`` imports none of
its modules: a name is looked up in the module that defines it on first use. Importing a package
then costs nothing, so ``llama --help`` answers without loading torch, and no package has to import
its modules in an order that avoids a cycle.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package that re-exports its modules' names.

    Args:
        package: the package's ``__name__``, e.g. ``"llama.model"``.
        exports: public name -> the module of ``package`` that defines it, e.g. ``{"Transformer": "transformer"}``.

    Returns:
        The two functions, to assign at the package's top level.
    """

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups find it directly
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
