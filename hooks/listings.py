"""MkDocs hook: show library code in chapters as listings a reader can copy and run.

A chapter includes a snippet section of the library with a fence whose body is an include line:

    ```python title="llama/model/rope.py"
    --8<-- "llama/model/rope.py:frequencies"
    ```

Before Markdown runs, this hook replaces the include by the listing the reader sees:

* the section's code without its docstrings (they hold reference prose and raw TeX, which the API
  pages render; ``#`` comments stay) and without nested ``--8<--`` marker lines;
* above it, the import lines the code needs that the page has not shown yet: for every free name
  the code uses that its module binds by a top-level import, that import; for every name defined
  at the top level elsewhere in the module, ``from <module> import name``. So a reader who copies
  the chapter's blocks in page order into a fresh interpreter gets code that runs;
* a section that is not a run of whole top-level statements (a method lifted out of its class, a
  loop body) cannot run alone: it is shown dedented, titled "(excerpt)", and gets no imports.

A missing file or section fails the build, naming the page and the include.
``tests/test_listings.py`` runs every chapter the way a reader copies it.
"""

from __future__ import annotations

import ast
import re
import symtable
import textwrap
from pathlib import Path
from typing import NamedTuple

try:  # the tests import this module without MkDocs' plugin machinery being needed
    from mkdocs.exceptions import PluginError
except ImportError:  # pragma: no cover
    PluginError = RuntimeError  # type: ignore[misc,assignment]

ROOT = Path(__file__).resolve().parent.parent

# A section marker inside a module, as pymdownx.snippets spells it: `# --8<-- [start:name]`.
MARKER = re.compile(r"-{1,2}8<-{1,2}\s*\[(?P<kind>start|end):(?P<name>[-_0-9A-Za-z]+)\]")
# One include line inside a fence: `--8<-- "llama/model/rope.py:frequencies"`.
INCLUDE = re.compile(r'^(?P<indent>[ \t]*)-{1,2}8<-{1,2}[ \t]+"(?P<path>[^":]+):(?P<section>[-_0-9A-Za-z]+)"[ \t]*$')
# A fence whose body is nothing but include lines (possibly indented inside an admonition).
INCLUDE_FENCE = re.compile(
    r'^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n'
    r'(?P<body>(?:[ \t]*-{1,2}8<-{1,2}[ \t]+"[^\n]*\n)+)'
    r'(?P=indent)(?P=fence)[ \t]*$',
    re.MULTILINE,
)
ANY_INCLUDE = re.compile(r'^[ \t]*-{1,2}8<-{1,2}[ \t]+"', re.MULTILINE)
TITLE = re.compile(r'\btitle="(?P<title>[^"]*)"')
FUTURE = "__future__"


class ListingError(PluginError):
    """An include that names no existing file or section."""


class Listing(NamedTuple):
    code: str  # what the fence shows: imports, blank line, code
    is_excerpt: bool  # True: not runnable alone, shown for reading
    title: str
    binds: frozenset[str]  # names the listing imports or defines, so later listings do not repeat them


class _Module(NamedTuple):
    lines: list[str]
    tree: ast.Module
    imports: dict[str, tuple[int, ast.stmt, ast.alias]]  # bound name -> (order, statement, alias)
    defined: set[str]  # names bound at the top level other than by an import


def render_listing(path: str, section: str, shown_before: set[str] | frozenset[str] = frozenset(),
                   title: str | None = None, root: Path = ROOT) -> Listing:
    """The listing a chapter shows for ``--8<-- "path:section"``.

    ``shown_before``: names that earlier listings of the same page imported or defined.
    ``title``: the fence's title (default: ``path``). Raises ListingError for a missing file or section.
    """
    module = _read_module(root, path)
    first, last = _section_range(module.lines, path, section)  # 1-based, inclusive, without the markers
    body = [line for line in module.lines[first - 1 : last] if not MARKER.search(line)]
    code = _strip_docstrings(textwrap.dedent("\n".join(body)))
    title = title or path
    if not _whole_statements(module.tree, first, last):
        return Listing(code, True, f"{title} · {_excerpt_name(module.tree, first, last)} (excerpt)", frozenset())
    section_tree = ast.parse(code)
    defined_here = _top_level_bindings(section_tree)
    needed = sorted(_free_names(code) - defined_here - set(shown_before))
    import_lines = _import_lines(module, needed, _module_name(path))
    bound = defined_here | {name for name in needed if name in module.imports or name in module.defined}
    shown = "\n".join(import_lines) + "\n\n" + code if import_lines else code
    return Listing(shown, False, title, frozenset(bound))


def render_fence(info: str, includes: list[tuple[str, str]], shown: set[str], root: Path = ROOT) -> tuple[str, str, bool]:
    """Expand one include fence: ``(info string, code, is_excerpt)``; adds what it binds to ``shown``."""
    title_match = TITLE.search(info)
    title = title_match["title"] if title_match else None
    parts, excerpt, shown_title = [], False, None
    for path, section in includes:
        listing = render_listing(path, section, shown, title, root)
        parts.append(listing.code)
        excerpt = excerpt or listing.is_excerpt
        shown_title = shown_title or listing.title
        shown |= listing.binds
    new_title = f'title="{shown_title}"'
    info = TITLE.sub(lambda _: new_title, info) if title_match else f"{info.rstrip()} {new_title}"
    return info, "\n\n".join(parts), excerpt


def expand_page(markdown: str, root: Path = ROOT, page: str = "page") -> str:
    """Replace every include fence of a page by its listing, in page order."""
    shown: set[str] = set()

    def expand(match: re.Match) -> str:
        indent = match["indent"]
        includes = []
        for line in match["body"].splitlines():
            m = INCLUDE.match(line)
            if m is None:
                raise ListingError(f'{page}: "{line.strip()}" is not an include of the form --8<-- "path/file.py:section"')
            includes.append((m["path"], m["section"]))
        try:
            info, code, _ = render_fence(match["info"], includes, shown, root)
        except ListingError as err:
            raise ListingError(f"{page}: {err}") from None
        body = textwrap.indent(code, indent, lambda line: bool(line.strip()))
        return f"{indent}{match['fence']}{info}\n{body}\n{indent}{match['fence']}"

    expanded = INCLUDE_FENCE.sub(expand, markdown)
    left = ANY_INCLUDE.search(expanded)
    if left:
        line = expanded.count("\n", 0, left.start()) + 1
        raise ListingError(
            f"{page}, line {line}: an include must be the only content of its ```python fence "
            f"(found {expanded[left.start():].splitlines()[0].strip()!r})"
        )
    return expanded


def on_page_markdown(markdown, page, config, files):
    return expand_page(markdown, Path(config.config_file_path).parent, page.file.src_uri)


# --- reading a module ------------------------------------------------------------------------------


_cache: dict[Path, tuple[float, _Module]] = {}


def _read_module(root: Path, path: str) -> _Module:
    file = root / path
    if not file.is_file():
        raise ListingError(f'--8<-- "{path}:...": there is no file {path} (paths are relative to the repository root)')
    stamp = file.stat().st_mtime
    if file in _cache and _cache[file][0] == stamp:
        return _cache[file][1]
    text = file.read_text("utf-8")
    tree = ast.parse(text, str(file))
    imports: dict[str, tuple[int, ast.stmt, ast.alias]] = {}
    defined: set[str] = set()
    for order, node in enumerate(_top_level_statements(tree)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.module == FUTURE:
                continue
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                imports.setdefault(name, (order, node, alias))
        else:
            defined |= _statement_bindings(node)
    module = _Module(text.splitlines(), tree, imports, defined)
    _cache[file] = (stamp, module)
    return module


def _top_level_statements(tree: ast.Module):
    """Module-level statements, looking into top-level ``if``/``try`` blocks (they bind module names too)."""
    for node in tree.body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, getattr(node, "finalbody", []),
                          *(h.body for h in getattr(node, "handlers", []))):
                yield from _top_level_statements(ast.Module(body=block, type_ignores=[]))


def _statement_bindings(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        targets = [node.target]
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        targets = [item.optional_vars for item in node.items if item.optional_vars is not None]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _top_level_bindings(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in _top_level_statements(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        else:
            names |= _statement_bindings(node)
    return names


def _section_range(lines: list[str], path: str, section: str) -> tuple[int, int]:
    start = end = None
    for number, line in enumerate(lines, 1):
        m = MARKER.search(line)
        if m and m["name"] == section:
            if m["kind"] == "start" and start is None:
                start = number
            elif m["kind"] == "end" and start is not None:
                end = number
                break
    if start is None:
        known = sorted({m["name"] for line in lines if (m := MARKER.search(line)) and m["kind"] == "start"})
        raise ListingError(f'--8<-- "{path}:{section}": {path} has no section "{section}" (its sections: {", ".join(known)})')
    if end is None:
        raise ListingError(f'--8<-- "{path}:{section}": the section starts on line {start} of {path} but has no [end:{section}]')
    return start + 1, end - 1


def sections_of(text: str) -> dict[str, tuple[int, int]]:
    """Every snippet section of a module's text: name -> (first, last) line, 1-based, markers excluded."""
    starts: dict[str, int] = {}
    found: dict[str, tuple[int, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = MARKER.search(line)
        if m and m["kind"] == "start":
            starts.setdefault(m["name"], number)
        elif m and m["name"] in starts and m["name"] not in found:
            found[m["name"]] = (starts[m["name"]] + 1, number - 1)
    return found


def _statement_span(node: ast.stmt) -> tuple[int, int]:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)]), node.end_lineno


def _whole_statements(tree: ast.Module, first: int, last: int) -> bool:
    """True if lines first..last hold whole top-level statements only (no statement is cut)."""
    for node in tree.body:
        start, end = _statement_span(node)
        overlaps = start <= last and end >= first
        if overlaps and not (first <= start and end <= last):
            return False
    return True


def _excerpt_name(tree: ast.Module, first: int, last: int) -> str:
    """``Transformer.forward`` for a method lifted out of its class; ``part of train`` for a loop body."""
    shown: list[str] = []
    enclosing = ""

    def visit(node, prefix: str) -> None:
        nonlocal enclosing
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if first <= child.lineno <= last:
                    shown.append(name)
                    continue
                if child.lineno < first and child.end_lineno >= last:
                    enclosing = name
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return ", ".join(shown) if shown else f"part of {enclosing or 'the module'}"


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


# --- what the listing shows ------------------------------------------------------------------------


def _strip_docstrings(code: str) -> str:
    """Remove the docstrings of functions and classes (and the blank lines after them)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:  # a fragment that does not parse is shown as it is
        return code
    lines = code.splitlines()
    drop: set[int] = set()
    replace: dict[int, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        doc = node.body[0]
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            continue
        span = range(doc.lineno - 1, doc.end_lineno)
        if len(node.body) == 1:  # the body was only the docstring: keep a body
            replace[doc.lineno - 1] = " " * doc.col_offset + "..."
            drop |= set(span[1:])
            continue
        drop |= set(span)
        after = doc.end_lineno
        while after < len(lines) and not lines[after].strip():
            drop.add(after)
            after += 1
    out = [replace.get(i, line) for i, line in enumerate(lines) if i not in drop or i in replace]
    return "\n".join(out).strip("\n")


def _free_names(code: str) -> set[str]:
    """Names the code reads from the module's global scope (annotations, defaults, bases included)."""
    free: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if symbol.is_referenced() and symbol.is_global():
                free.add(symbol.get_name())
        for child in table.get_children():
            visit(child)

    visit(symtable.symtable(code, "<listing>", "exec"))
    return free


def _import_lines(module: _Module, names: list[str], module_name: str) -> list[str]:
    """The module's own import statements for ``names`` (only those names), then the module's own names."""
    by_statement: dict[int, tuple[ast.stmt, list[ast.alias]]] = {}
    own: list[str] = []
    for name in names:
        if name in module.imports:
            order, statement, alias = module.imports[name]
            by_statement.setdefault(order, (statement, []))[1].append(alias)
        elif name in module.defined:
            own.append(name)
        # anything else is a builtin, or a name the module never binds (an error the tests report)
    lines = []
    for order in sorted(by_statement):
        statement, aliases = by_statement[order]
        aliases.sort(key=lambda a: [a.name for a in statement.names].index(a.name))
        kept = (ast.ImportFrom(module=statement.module, names=aliases, level=statement.level)
                if isinstance(statement, ast.ImportFrom) else ast.Import(names=aliases))
        lines.append(ast.unparse(kept))
    if own:
        lines.append(f"from {module_name} import {', '.join(own)}")
    return lines
