"""The book builds with `mkdocs build --strict`, and its build machinery does what it claims.

The real build runs once per test run (fixture ``built_site`` in tests/conftest.py, the same
``make site`` that CI publishes); the browser tests in tests/browser/ reuse its output. The other
tests here build tiny throwaway sites with the project's own settings and hooks, to prove that a
mistake fails the build instead of shipping a broken page. How long the build takes is measured by
benchmarks/site_build.py, not asserted here: a slow or busy machine must not turn a correct book red.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import REPO, load_module

# Lines that contain "WARNING" but are no MkDocs warning: the notebook kernel's note that it
# talks to its client over local TCP, and pip's notes about the local package index.
HARMLESS = [re.compile(r"\[IPKernelApp\] WARNING \| Kernel is running over TCP")]


def test_strict_build_passes_without_warnings(built_site):
    assert built_site.returncode == 0, f"{shlex.join(built_site.command)} failed:\n{built_site.output[-6000:]}"
    warnings = [
        line for line in built_site.output.splitlines()
        if "WARNING" in line and not any(p.search(line) for p in HARMLESS)
    ]
    assert warnings == [], "the build printed warnings:\n" + "\n".join(warnings)
    assert (built_site.site_dir / "index.html").is_file()


def test_math_and_figures_are_in_the_site(site_dir):
    assert (site_dir / "assets/vendor/mathjax/tex-mml-chtml.js").is_file(), "MathJax not vendored"
    assert list((site_dir / "figures").glob("*.svg")), "no figure was drawn"


def test_site_makes_no_outside_reference_to_fonts_or_cdns(site_dir):
    # Static half of the browser tests' "no request leaves 127.0.0.1": catches it without a browser.
    banned = re.compile(r"(?:src|href)=\"https?://(?:fonts\.googleapis|fonts\.gstatic|cdn|cdnjs|unpkg|api\.github)")
    offenders = [str(p.relative_to(site_dir)) for p in site_dir.rglob("*.html") if banned.search(p.read_text("utf-8"))]
    assert offenders == []


def _prose(html: str) -> str:
    """A page's text outside code: ``<pre>`` blocks (listings, the API pages' source views) removed."""
    return re.sub(r"<pre\b.*?</pre>", "", html, flags=re.S)


def test_no_page_shows_a_raw_sphinx_role(site_dir):
    """Docstrings say :func:`x`; the API pages must show a link (or code), never the role itself."""
    role = re.compile(r":(?:func|class|meth|data|attr|mod|obj|exc|const):(?:<code>|`)")
    offenders = {str(p.relative_to(site_dir)): role.findall(_prose(p.read_text("utf-8")))
                 for p in site_dir.rglob("*.html")}
    assert {page: found for page, found in offenders.items() if found} == {}
    # :class:`~llama.model.attention.KVCache` in the transformer's docstring, on the same page
    assert 'href="#llama.model.attention.KVCache"' in _prose((site_dir / "api/model/index.html").read_text("utf-8"))
    # :class:`~llama.model.config.ModelConfig` in llama.training's docstrings, on the model's page
    training = _prose((site_dir / "api/training/index.html").read_text("utf-8"))
    assert 'href="../model/#llama.model.config.ModelConfig"' in training


def test_sphinx_roles_become_links_resolved_where_the_docstring_is():
    import griffe

    hook = load_module("_crossrefs", REPO / "hooks" / "griffe_crossrefs.py")
    pkg = griffe.load("llama", search_paths=[str(REPO)])
    forward = pkg["model.transformer.Transformer.forward"]
    assert hook.link_roles(":meth:`setup_cache`", forward, pkg) == "[`setup_cache`][llama.model.transformer.Transformer.setup_cache]"
    assert (hook.link_roles("see :class:`~llama.model.attention.KVCache`.", forward, pkg)
            == "see [`KVCache`][llama.model.attention.KVCache].")
    # imported into the module: the link goes where the object is defined
    assert hook.link_roles(":class:`ModelConfig`", pkg["model.transformer"], pkg) == "[`ModelConfig`][llama.model.config.ModelConfig]"
    # not shown in the reference (private, or no docstring): code, without the role
    assert hook.link_roles(":func:`_word_splitter`", pkg["tokenizers.spm"], pkg) == "`_word_splitter`"
    assert hook.link_roles(":func:`no_such_thing`", pkg["tokenizers.spm"], pkg) == "`no_such_thing`"


# --- throwaway builds with the project's settings ----------------------------------------------


def build(config_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_dir / "mkdocs.yml")],
        cwd=config_dir, capture_output=True, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def write_snippet_site(tmp_path: Path, section: str) -> Path:
    config = {
        "site_name": "snippet check",
        "docs_dir": "docs",
        "hooks": [str(REPO / "hooks/listings.py")],
        "markdown_extensions": ["pymdownx.superfences"],
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/mod.py").write_text(
        "import math\n\n\n# --8<-- [start:twice]\ndef twice(x):\n"
        "    r\"\"\"Twice $x$: \\\\cdot 2.\"\"\"\n    return 2 * math.floor(x)\n# --8<-- [end:twice]\n"
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/index.md").write_text(f'# Page\n\n```python\n--8<-- "pkg/mod.py:{section}"\n```\n')
    return tmp_path


def test_listings_hook_expands_the_includes(mkdocs_yml):
    assert "hooks/listings.py" in mkdocs_yml["hooks"]
    # Two expansions of the same include would disagree; the hook is the only one.
    assert not any("pymdownx.snippets" in str(ext) for ext in mkdocs_yml["markdown_extensions"])


@pytest.mark.site
def test_snippet_section_is_included_with_its_imports(tmp_path):
    result = build(write_snippet_site(tmp_path, "twice"))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "site/index.html").read_text()
    code = re.sub(r"<[^>]+>", "", html)  # the listing's text, without Pygments' spans
    assert "import math\n\ndef twice(x):\n    return 2 * math.floor(x)" in code
    assert "--8&lt;--" not in html and "[start:" not in html
    assert "cdot" not in html, "the docstring (raw TeX) must not be shown in the listing"


@pytest.mark.site
def test_wrong_snippet_section_fails_the_build(tmp_path):
    result = build(write_snippet_site(tmp_path, "twcie"))
    assert result.returncode != 0
    assert 'index.md: --8<-- "pkg/mod.py:twcie": pkg/mod.py has no section "twcie"' in result.stderr


def write_figure_site(tmp_path: Path, figure_body: str, page: str) -> Path:
    config = {
        "site_name": "figure check",
        "docs_dir": "docs",
        "hooks": [str(REPO / "hooks/figures.py")],
        "validation": {"links": {"not_found": "warn"}},
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures/demo.py").write_text(textwrap.dedent(figure_body))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/index.md").write_text(page)
    return tmp_path


LINE_FIGURE = """
    import matplotlib.pyplot as plt

    def line():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        return fig

    FIGURES = {"line.svg": line}
"""


@pytest.mark.site
def test_figure_hook_draws_figures(tmp_path):
    result = build(write_figure_site(tmp_path, LINE_FIGURE, "# Page\n\n![a line](figures/line.svg)\n"))
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "site/figures/line.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "<dc:date>" not in svg, "the SVG should carry no timestamp"
    assert 'src="figures/line.svg"' in (tmp_path / "site/index.html").read_text()


@pytest.mark.site
def test_figure_that_raises_fails_the_build(tmp_path):
    broken = LINE_FIGURE.replace("ax.plot([0, 1], [0, 1])", "raise RuntimeError('shape mismatch')")
    result = build(write_figure_site(tmp_path, broken, "# Page\n\n![a line](figures/line.svg)\n"))
    assert result.returncode != 0 and "shape mismatch" in result.stderr


@pytest.mark.site
def test_reference_to_a_missing_figure_fails_the_build(tmp_path):
    result = build(write_figure_site(tmp_path, LINE_FIGURE, "# Page\n\n![a line](figures/lnie.svg)\n"))
    assert result.returncode != 0 and "figures/lnie.svg" in result.stderr


# --- one build command, used everywhere -----------------------------------------------------------


def make_dry_run(*args: str) -> list[list[str]]:
    """The commands ``make -n ARGS`` would run, each split like a shell would."""
    proc = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def test_make_site_runs_the_strict_build_with_the_makefiles_python():
    python = "/some/python"
    commands = make_dry_run("site", "SKIP_INSTALL=1", f"PYTHON={python}")
    builds = [c for c in commands if c[1:4] == ["-m", "mkdocs", "build"]]
    assert len(builds) == 1, commands
    assert builds[0][0] == python and "--strict" in builds[0]


@pytest.mark.site
def test_a_warning_fails_make_site(tmp_path):
    # The Makefile's own recipe on a one-page book without `strict: true` in its configuration: the
    # build fails on the broken link only if `make site` itself makes warnings fatal.
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump({
        "site_name": "strict check", "docs_dir": "docs", "validation": {"links": {"not_found": "warn"}},
    }))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/index.md").write_text("# Home\n\n[a page that is not there](nowhere.md)\n")
    command = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "site", "SKIP_INSTALL=1", f"PYTHON={sys.executable}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "nowhere.md" in result.stderr
    # and without the broken link the same command builds: the failure above was the warning
    (tmp_path / "docs/index.md").write_text("# Home\n")
    assert subprocess.run(command, cwd=tmp_path, capture_output=True, text=True).returncode == 0


def test_tests_inspect_what_make_site_built(built_site, mkdocs_yml):
    # make echoes each command it runs: the session's build was the Makefile's strict build ...
    echoed = [shlex.split(line) for line in built_site.output.splitlines() if " -m mkdocs build" in line]
    assert len(echoed) == 1 and echoed[0][0] == sys.executable and "--strict" in echoed[0], built_site.output[-3000:]
    # ... into the folder mkdocs.yml names, which the workflow publishes (below)
    assert built_site.site_dir == REPO / mkdocs_yml["site_dir"]


def workflow() -> dict:
    return yaml.safe_load((REPO / ".github/workflows/pages.yml").read_text())


def test_workflow_runs_on_push_to_main():
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    triggers = workflow().get(True) or workflow().get("on")
    assert triggers["push"]["branches"] == ["main"]


def test_workflow_tests_then_publishes_the_same_build(mkdocs_yml):
    jobs = workflow()["jobs"].values()
    publishing = [job for job in jobs if any(s.get("uses", "").startswith("actions/upload-pages-artifact") for s in job["steps"])]
    assert len(publishing) == 1
    steps = publishing[0]["steps"]
    commands = [shlex.split(line) for step in steps for line in step.get("run", "").splitlines() if line.strip()]
    # In the job that publishes: first the tests (.ci/run), then `make site`, then the upload of
    # the folder that build writes; the site is never built another way.
    assert [".ci/run"] in commands and ["make", "site"] in commands
    assert commands.index([".ci/run"]) < commands.index(["make", "site"])
    assert not any("mkdocs" in word for command in commands for word in command), "build the site only through `make site`"
    kinds = ["tests" if "run" in s and ".ci/run" in s["run"] else "build" if "run" in s and "make site" in s["run"]
             else "upload" if s.get("uses", "").startswith("actions/upload-pages-artifact") else None for s in steps]
    assert [k for k in kinds if k] == ["tests", "build", "upload"]
    upload = steps[kinds.index("upload")]
    assert upload["with"]["path"] == mkdocs_yml["site_dir"]


def write_notebook_site(tmp_path: Path, code: str, link: str = "index.md#home") -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    config = {
        "site_name": "lab check",
        "docs_dir": "docs",
        "theme": {"name": "material", "font": False},  # the default theme loads highlight.js from a CDN
        "hooks": [str(REPO / "hooks/notebooks.py")],
        "plugins": [{"mkdocs-jupyter": {"include": ["*.ipynb"], "execute": True, "allow_errors": False}}],
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/index.md").write_text("# Home\n\n[The lab](lab.ipynb)\n")
    notebook = new_notebook(
        cells=[new_markdown_cell(f"# Lab\n\nSome math: $x^2$, and [a link]({link})."), new_code_cell(code)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(notebook, tmp_path / "docs/lab.ipynb")
    return tmp_path


# One build for what a working lab must show (each build starts a kernel: seconds).
@pytest.mark.site
@pytest.mark.labs
def test_lab_is_executed_its_links_point_to_pages_and_mathjax2_is_gone(tmp_path):
    result = build(write_notebook_site(tmp_path, "print(6 * 7)", link="index.md#home"))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "site/lab/index.html").read_text()
    assert "42" in html, "the lab's output is missing: was it executed?"
    assert "MathJax.Hub" not in html and "mathjax/2." not in html
    assert 'href="../#home"' in html


@pytest.mark.site
@pytest.mark.labs
def test_lab_that_raises_fails_the_build(tmp_path):
    result = build(write_notebook_site(tmp_path, "raise ValueError('lab is broken')"))
    assert result.returncode != 0 and "lab is broken" in result.stderr


@pytest.mark.site
@pytest.mark.labs
def test_lab_link_to_a_missing_page_fails_the_build(tmp_path):
    result = build(write_notebook_site(tmp_path, "1", link="nowhere.md"))
    assert result.returncode != 0 and "nowhere.md" in result.stderr
