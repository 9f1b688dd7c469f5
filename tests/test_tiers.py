"""The test tiers and the optional tools: `make check` leaves out exactly the slow tiers, `make test`
and CI run everything, and a missing tool is a skip for a reader but a failure in CI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import helpers
import pytest
from helpers import REPO


def declared_tiers() -> set[str]:
    import tomllib  # Python 3.11+; the markers are plain "name: description" strings

    markers = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["pytest"]["ini_options"]["markers"]
    return {marker.split(":", 1)[0].strip() for marker in markers}


def pytest_arguments(target: str) -> list[list[str]]:
    """The arguments of each pytest that ``make -n TARGET`` would run (a made-up PYTHON: nothing is installed)."""
    proc = subprocess.run(["make", "--no-print-directory", "-n", target, "PYTHON=/some/python", "SKIP_INSTALL=1"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    return [c[3:] for c in commands if c[:3] == ["/some/python", "-m", "pytest"]]


def test_the_readme_counts_the_make_commands_it_lists():
    """README's first section is headed by the number of `make` commands its block shows, and each
    is a target of the Makefile."""
    readme = (REPO / "README.md").read_text("utf-8")
    heading, block = re.search(r"^## (\w+) commands\n.*?```bash\n(.*?)```", readme, re.S | re.M).groups()
    targets = [line.split()[1] for line in block.splitlines() if line.startswith("make ")]
    numbers = {"One": 1, "Two": 2, "Three": 3, "Four": 4}
    assert numbers.get(heading) == len(targets), f"'## {heading} commands' heads {len(targets)}: {targets}"
    makefile = (REPO / "Makefile").read_text("utf-8")
    assert all(re.search(rf"^{t}:", makefile, re.M) for t in targets)


def test_make_test_runs_every_tier_on_every_core():
    # No -m, -k or path: every test; on pytest-xdist, one worker per core, a test file to a worker.
    assert pytest_arguments("test") == [["-n", "auto", "--dist", "loadscope"]]


def test_the_readme_says_what_make_test_and_make_check_run():
    readme = " ".join((REPO / "README.md").read_text("utf-8").split())  # its lines joined
    [test] = pytest_arguments("test")
    assert f"`make test` runs `python -m pytest {shlex.join(test)}`" in readme
    [check] = pytest_arguments("check")
    assert f"`make check` is `pytest {shlex.join(check)}`".replace("'", '"') in readme  # shlex quotes with


@pytest.mark.slow  # a fresh interpreter collects a page
def test_make_test_runs_the_examples_of_a_page_in_one_worker():
    """The examples of a page share one namespace in page order: handed to two workers, those of
    one would miss the names the other defined (NameError). `make test`'s --dist hands out units
    that pytest-xdist's own scope function draws from the test ids: a page's ids make one unit."""
    from xdist.scheduler.loadscope import LoadScopeScheduling

    [arguments] = pytest_arguments("test")
    assert arguments[arguments.index("--dist") + 1] == "loadscope"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "book/norm.md"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = [line for line in proc.stdout.splitlines() if line.startswith("book/norm.md::")]
    assert len(ids) > 10  # the page's examples, one test each
    assert {LoadScopeScheduling._split_scope(None, nodeid) for nodeid in ids} == {"book/norm.md"}


def test_auto_is_one_worker_per_core_the_tests_may_run_on(monkeypatch):
    # pytest-xdist's own count, psutil's, is of the machine's cores, also of those a container or
    # taskset keeps the tests off; conftest.py counts the cores this process may run on.
    count = helpers.load_book_collection().pytest_xdist_auto_num_workers
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert count(config=None) == 3
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "7")
    assert count(config=None) is None  # pytest-xdist then reads the variable itself


def test_make_check_leaves_out_every_declared_tier_and_nothing_else():
    [arguments] = pytest_arguments("check")
    expression = arguments[arguments.index("-m") + 1]
    match = re.fullmatch(r"not \((\w+(?: or \w+)*)\)", expression)
    assert match, expression
    assert set(match[1].split(" or ")) == declared_tiers()
    # no -k, no paths: every test file, examples included; on pytest-xdist, as `make test`
    assert arguments == [*pytest_arguments("test")[0], "-m", expression]


@pytest.mark.slow  # a fresh interpreter collects the suite
def test_tiers_reach_the_tests_that_need_them():
    """Collected as `make check` selects: nothing that builds the site, drives a browser or compiles is left."""
    [arguments] = pytest_arguments("check")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *arguments,
         "tests/test_site_build.py", "tests/test_generation.py", "tests/browser", "book/generation.md"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kept = [line for line in proc.stdout.splitlines() if "::" in line]
    assert kept, "the quick tier kept no test at all"
    assert not [t for t in kept if "tests/browser" in t], "browser tests are in the browser tier"
    assert not [t for t in kept if "compiled_decoder_gives" in t], "torch.compile tests are in the compile tier"
    assert not [t for t in kept if re.search(r"test_site_build.py::test_(strict_build|lab_|figure_hook)", t)]
    # the book's compiling example (generation.md, CompiledDecoder) is out, the page's other examples in
    generation = (REPO / "book/generation.md").read_text("utf-8")
    line = generation[: generation.index("CompiledDecoder(small")].count("\n") + 1
    examples = [int(m[1]) for t in kept if (m := re.search(r"generation\.md::sybil:book,line:(\d+)", t))]
    assert examples and line not in examples


def test_ci_requires_every_optional_tool_and_runs_make_test(tmp_path):
    # .ci/run with stand-ins for make and chromium on PATH: what would it run, with which settings?
    record = tmp_path / "make-was-called-with"
    (tmp_path / "make").write_text(f'#!/bin/sh\necho "$* LLAMA_REQUIRE_ALL=$LLAMA_REQUIRE_ALL" > {shlex.quote(str(record))}\n')
    (tmp_path / "chromium").write_text("#!/bin/sh\n")
    for tool in ("make", "chromium"):
        (tmp_path / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    env.pop(helpers.REQUIRE_ALL, None)
    proc = subprocess.run(["bash", str(REPO / ".ci/run")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert record.read_text().split() == ["test", f"{helpers.REQUIRE_ALL}=1"]


@pytest.fixture
def reader(monkeypatch):
    monkeypatch.delenv(helpers.REQUIRE_ALL, raising=False)


@pytest.fixture
def ci(monkeypatch):
    monkeypatch.setenv(helpers.REQUIRE_ALL, "1")


def test_a_missing_tool_is_a_skip_with_its_reason_for_a_reader(reader):
    with pytest.raises(pytest.skip.Exception, match=r"frobnicate is not installed \(.*make install"):
        helpers.require_module("frobnicate")
    with pytest.raises(pytest.skip.Exception, match="nothing.bin not found in"):
        helpers.require_shared_file("nothing.bin")


def test_a_missing_tool_is_a_failure_in_ci(ci):
    with pytest.raises(pytest.fail.Exception, match=f"frobnicate is not installed, and {helpers.REQUIRE_ALL}=1"):
        helpers.require_module("frobnicate")
    with pytest.raises(pytest.fail.Exception, match="nothing.bin not found"):
        helpers.require_shared_file("nothing.bin")


def test_no_compiler_skips_the_compile_tests(reader, monkeypatch):
    from torch._inductor import config

    # Inductor's own search list decides: with only a compiler that does not exist, there is none.
    # (config.patch, not monkeypatch: undoing a setattr on torch's config class deletes the option.)
    with config.patch({"cpp.cxx": (None, "no-such-c++-compiler")}):
        assert helpers.cpp_compiler() is None
        with pytest.raises(pytest.skip.Exception, match="no C\\+\\+ compiler found for torch.compile"):
            helpers.require_cpp_compiler()
        monkeypatch.setenv(helpers.REQUIRE_ALL, "1")
        with pytest.raises(pytest.fail.Exception, match="no C\\+\\+ compiler"):
            helpers.require_cpp_compiler()
    assert helpers.cpp_compiler() == helpers.cpp_compiler()  # the option is still there afterwards
