"""The book builds with `mkdocs build --strict`, quickly, and its build machinery does what it claims.

The real build runs once per session (fixture ``built_site`` in tests/conftest.py, the same
``make site`` that CI publishes); the browser tests in tests/browser/ reuse its output. The other
tests here build tiny throwaway sites with the project's own settings and hooks, to prove that a
mistake fails the build instead of shipping a broken page.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BUILD_SECONDS_MAX = 30

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


def test_build_is_fast(built_site):
    assert built_site.returncode == 0
    assert built_site.seconds < BUILD_SECONDS_MAX, f"the build took {built_site.seconds:.1f} s"


def test_math_and_figures_are_in_the_site(site_dir):
    assert (site_dir / "assets/vendor/mathjax/tex-mml-chtml.js").is_file(), "MathJax not vendored"
    assert list((site_dir / "figures").glob("*.svg")), "no figure was drawn"


def test_site_makes_no_outside_reference_to_fonts_or_cdns(site_dir):
    # Static half of the browser tests' "no request leaves 127.0.0.1": catches it without a browser.
    banned = re.compile(r"(?:src|href)=\"https?://(?:fonts\.googleapis|fonts\.gstatic|cdn|cdnjs|unpkg|api\.github)")
    offenders = [str(p.relative_to(site_dir)) for p in site_dir.rglob("*.html") if banned.search(p.read_text("utf-8"))]
    assert offenders == []


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


def test_snippet_section_is_included_with_its_imports(tmp_path):
    result = build(write_snippet_site(tmp_path, "twice"))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "site/index.html").read_text()
    code = re.sub(r"<[^>]+>", "", html)  # the listing's text, without Pygments' spans
    assert "import math\n\ndef twice(x):\n    return 2 * math.floor(x)" in code
    assert "--8&lt;--" not in html and "[start:" not in html
    assert "cdot" not in html, "the docstring (raw TeX) must not be shown in the listing"


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


def test_figure_hook_draws_figures(tmp_path):
    result = build(write_figure_site(tmp_path, LINE_FIGURE, "# Page\n\n![a line](figures/line.svg)\n"))
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "site/figures/line.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "<dc:date>" not in svg, "the SVG should carry no timestamp"
    assert 'src="figures/line.svg"' in (tmp_path / "site/index.html").read_text()


def test_figure_that_raises_fails_the_build(tmp_path):
    broken = LINE_FIGURE.replace("ax.plot([0, 1], [0, 1])", "raise RuntimeError('shape mismatch')")
    result = build(write_figure_site(tmp_path, broken, "# Page\n\n![a line](figures/line.svg)\n"))
    assert result.returncode != 0 and "shape mismatch" in result.stderr


def test_reference_to_a_missing_figure_fails_the_build(tmp_path):
    result = build(write_figure_site(tmp_path, LINE_FIGURE, "# Page\n\n![a line](figures/lnie.svg)\n"))
    assert result.returncode != 0 and "figures/lnie.svg" in result.stderr


# --- one build command, used everywhere -----------------------------------------------------------


def makefile_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}:", line))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_site_is_the_strict_build():
    assert makefile_recipe("site") == ["$(PYTHON) -m mkdocs build --strict"]


def test_tests_build_with_make_site(built_site):
    assert built_site.command[1:3] == ["--no-print-directory", "site"]


def workflow() -> dict:
    return yaml.safe_load((REPO / ".github/workflows/pages.yml").read_text())


def workflow_commands() -> list[str]:
    return [
        line.strip()
        for job in workflow()["jobs"].values()
        for step in job["steps"]
        for line in step.get("run", "").splitlines()
        if line.strip()
    ]


def test_workflow_runs_on_push_to_main():
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    triggers = workflow().get(True) or workflow().get("on")
    assert triggers["push"]["branches"] == ["main"]


def test_workflow_tests_then_publishes_the_same_build():
    commands = workflow_commands()
    # .ci/run is the test entry point shared with any other CI: it runs `make test`.
    assert re.search(r"^make test$", (REPO / ".ci/run").read_text(), re.MULTILINE)
    assert ".ci/run" in commands and "make site" in commands
    assert commands.index(".ci/run") < commands.index("make site")
    assert not any("mkdocs" in c for c in commands), "build the site only through `make site`"
    uploads = [
        step for job in workflow()["jobs"].values() for step in job["steps"]
        if step.get("uses", "").startswith("actions/upload-pages-artifact")
    ]
    assert [step["with"]["path"] for step in uploads] == ["site"]


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


def test_lab_is_executed_and_cleaned_of_mathjax2(tmp_path):
    result = build(write_notebook_site(tmp_path, "print(6 * 7)"))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "site/lab/index.html").read_text()
    assert "42" in html, "the lab's output is missing: was it executed?"
    assert "MathJax.Hub" not in html and "mathjax/2." not in html


def test_lab_that_raises_fails_the_build(tmp_path):
    result = build(write_notebook_site(tmp_path, "raise ValueError('lab is broken')"))
    assert result.returncode != 0 and "lab is broken" in result.stderr


def test_lab_links_to_chapters_become_page_urls(tmp_path):
    result = build(write_notebook_site(tmp_path, "1", link="index.md#home"))
    assert result.returncode == 0, result.stderr
    assert 'href="../#home"' in (tmp_path / "site/lab/index.html").read_text()


def test_lab_link_to_a_missing_page_fails_the_build(tmp_path):
    result = build(write_notebook_site(tmp_path, "1", link="nowhere.md"))
    assert result.returncode != 0 and "nowhere.md" in result.stderr
