"""The code passes ruff's checks, as configured in pyproject.toml's ``[tool.ruff]`` (the rules, and
why each ignored one is ignored). It takes under a second, so ``make check`` runs it too."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from helpers import REPO, unavailable

#: What is linted: everything ruff finds in the checkout (the library, its tests, the benchmarks,
#: hooks and figures, the labs), with the exclusions pyproject.toml gives.
LINTED = ["."]


def test_ruff_finds_nothing():
    if importlib.util.find_spec("ruff") is None:  # skipped for a reader without it, a failure in CI
        unavailable("ruff is not installed", "`make install` installs it from requirements-dev.txt")
    # --no-cache: a test leaves no .ruff_cache behind in the checkout.
    found = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *LINTED],
                           cwd=REPO, capture_output=True, text=True)
    assert found.returncode == 0, f"ruff check reports (fix them, or `ruff check --fix` for the fixable ones):\n" \
                                  f"{found.stdout}{found.stderr}"
