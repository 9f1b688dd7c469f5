"""Griffe extension (loaded by mkdocstrings): Sphinx roles in docstrings become links.

The package's docstrings name other objects as Sphinx does, ``:func:`add_lora```,
``:class:`~llama.model.transformer.Transformer```, which a reader of the source (or ``help()``) reads well
and Markdown would show raw. Before mkdocstrings renders a docstring, each role becomes an
autorefs link to the object's entry in the API reference, ``[`add_lora`][llama.training.lora.add_lora]``.

A name is looked up as Python would from where the docstring is: the class it belongs to (for a
method), its module (what the module defines or imports), then the package's top level; a dotted
name is followed member by member. Only objects the reference shows get a link: public ones with
a docstring (mkdocstrings leaves the others out, and a link to them would dangle). Any other name
is shown as code, without the role. ``~`` shows the last part only, as in Sphinx.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|obj|exc|const):`(?P<tilde>~?)(?P<name>[\w.]+)(?:\(\))?`")


def _follow(obj: griffe.Object | griffe.Alias, parts: list[str]):
    for part in parts:
        try:
            obj = obj.members[part]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


def _final(obj):
    try:
        return obj.final_target if isinstance(obj, griffe.Alias) else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def resolve(name: str, scope: griffe.Object, package: griffe.Module) -> griffe.Object | None:
    """The object ``name`` means in a docstring of ``scope``, or None."""
    parts = name.split(".")
    if parts[0] == package.name:
        return _final(_follow(package, parts[1:]))
    places = []
    here = scope
    while here is not None:  # the object itself (a class's methods), its parents, the module
        if here.kind in (griffe.Kind.CLASS, griffe.Kind.MODULE):
            places.append(here)
        here = here.parent
    places.append(package)
    for place in places:
        found = _follow(place, parts)
        if found is not None:
            return _final(found)
    return None


def shown(obj) -> bool:
    """Whether the API reference shows ``obj`` (so a link to it has a target)."""
    if obj is None or any(part.startswith("_") for part in obj.path.split(".")):
        return False
    return obj.kind is griffe.Kind.MODULE or obj.docstring is not None


def link_roles(text: str, scope: griffe.Object, package: griffe.Module) -> str:
    """``text`` with every Sphinx role a link (or, when the reference does not show it, code)."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        label = name.rsplit(".", 1)[-1] if match["tilde"] else name
        if match.group(0).endswith("()`"):
            label += "()"
        target = resolve(name, scope, package)
        return f"[`{label}`][{target.path}]" if shown(target) else f"`{label}`"

    return ROLE.sub(replace, text)


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = link_roles(obj.docstring.value, obj, pkg)
