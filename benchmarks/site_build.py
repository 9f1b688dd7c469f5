"""Time of the book's strict build, ``mkdocs build --strict``: cold (empty caches) and warm.

Run from the repository root::

    python benchmarks/site_build.py              # one cold build, then 2 warm ones
    python benchmarks/site_build.py --warm 5

The build runs in a temporary copy of the files git tracks (plus a link to ``node_modules/``), so
that the cold build starts from an empty ``.cache/`` without touching this checkout's: the figures
(``.cache/figures/``) are drawn and the five labs executed (``.cache/labs/``), as on a fresh clone.
The warm builds then reuse that copy's caches, as a second ``make site`` does. Caches outside the
repository are not emptied (matplotlib's font list in ``~/.cache/matplotlib``, Python's bytecode),
so a fresh machine's very first build is a few seconds slower still.

The tests never time the build: a loaded or slow machine would turn a correct book red.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402


def tracked_copy(into: Path) -> Path:
    """The files git tracks, copied into ``into/repo``, with ``node_modules`` linked (MathJax)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    root = into / "repo"
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if not source.is_file():  # deleted in the working tree but not yet in the index
            continue
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    if not (REPO / "node_modules").is_dir():
        sys.exit("node_modules/ is missing: run `make install` first (npm ci installs MathJax)")
    (root / "node_modules").symlink_to((REPO / "node_modules").resolve(), target_is_directory=True)
    return root


def timed_build(root: Path) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(root / "site")],
        cwd=root, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=2, help="warm builds after the cold one (default 2)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="site-build-") as tmp:
        root = tracked_copy(Path(tmp))
        for i in range(1 + args.warm):
            kind = "cold" if i == 0 else "warm"
            seconds, code, output = timed_build(root)
            if code != 0:
                print(output[-4000:], file=sys.stderr)
                print(f"the {kind} build failed (exit {code})", file=sys.stderr)
                return 1
            rows.append((kind, seconds))
            print(f"{kind} build: {seconds:.1f} s", file=sys.stderr)

    print(f"\nmkdocs build --strict; {machine_line()}\n")
    print("| build | seconds |")
    print("|---|---|")
    for kind, seconds in rows:
        print(f"| {kind} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
