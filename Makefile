# Two commands cover everything (see README.md): `make serve` and `make test`; `make check` is the
# quick subset to run while editing. All install what they need first, once: the install is redone
# only when a requirements file changes.

SHELL := bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
HOST_PYTHON ?= python3
PIP = $(PYTHON) -m pip
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.package-lock.json

# Material prints an end-of-life banner on every run that is not a warning of ours.
export NO_MKDOCS_2_WARNING := 1

.PHONY: help install serve test check site screenshot clean

help:
	@echo "make serve       install if needed, then serve the book at http://127.0.0.1:8000/llama-from-scratch/"
	@echo "make test        install if needed, then run the whole test suite (includes the strict build)"
	@echo "make check       the unit tests and the book's examples, without the slow tiers (under a minute)"
	@echo "make site        build the book into site/ with --strict (what the tests and CI publish)"
	@echo "make screenshot  refresh .github/book-screenshot.png (the README picture) from the browser tests"

install: $(STAMP) $(NPM_STAMP)

# torch goes first, on its own, through constraints.txt: installed later as a dependency, an
# unpinned torch resolves to the newest release and, on Linux, to gigabytes of CUDA wheels.
$(STAMP): constraints.txt requirements-dev.txt pyproject.toml
	test -x $(PYTHON) || $(HOST_PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -r requirements-dev.txt
	$(PIP) install -c constraints.txt -e .
	touch $@

# MathJax, served by the book itself (hooks/vendor_assets.py); npm ci installs exactly the lock.
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

serve: install
	$(PYTHON) -m mkdocs serve --dev-addr 127.0.0.1:8000

# The one definition of the site build. tests/conftest.py runs `make site SKIP_INSTALL=1` and
# .github/workflows/pages.yml runs `make site`; tests/test_site_build.py checks both.
site: $(if $(SKIP_INSTALL),,install)
	$(PYTHON) -m mkdocs build --strict

# The suite runs on pytest-xdist, one worker per core (`-n auto`, counted by conftest.py as the
# cores the tests may run on: 2 on a 2-core machine): a worker runs one test at a time and most
# tests keep a core busy, so more workers than cores would only add torch imports and Chromiums.
# `--dist loadscope` hands out whole test files (or classes): the examples of a book page share one
# namespace in page order, so a page must run in one worker; a module fixture is then set up once,
# and the browser tests share one Chromium. (`loadgroup` would allow finer units, but with this
# pytest it no longer groups anything: pytest-dev/pytest-xdist#1386.) Every test also passes
# alone: `pytest tests/test_x.py::test_y` runs in one process.
# pytest's own exit status is kept, including 5 ("no tests ran"), which fails the target.
XDIST := -n auto --dist loadscope
test: install
	$(PYTHON) -m pytest $(XDIST)

# The slow tiers, the markers declared in pyproject.toml (tests/test_tiers.py checks that every
# declared tier is left out here): what remains runs in well under a minute.
SLOW_TIERS := site browser labs compile ddp slow
empty :=
space := $(empty) $(empty)
# On pytest-xdist too: it costs a second collection and torch import (96 s of CPU in all against
# 81 s in one process), which the second core more than pays for.
check: install
	$(PYTHON) -m pytest $(XDIST) -m "not ($(subst $(space), or ,$(SLOW_TIERS)))"

screenshot: install
	$(PYTHON) -m pytest tests/browser -k "test_page and index"
	cp test-artifacts/screenshots/index-desktop.png .github/book-screenshot.png

clean:
	rm -rf site .cache test-artifacts
