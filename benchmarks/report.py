"""The results files the book shows: a benchmark's measurements as Markdown, written from its JSON.

A page shows ``benchmarks/results/<name>.md`` with a line ``<!-- results: benchmarks/results/<name>.md -->``
(hooks/results.py), so the numbers are typed by no one. Each file starts with one line that says
how it was made: the command in backticks, the machine it ran on (:func:`machine.machine_line`)
and whatever else the run needs to be read (load, sizes), separated by semicolons; then its
tables. The JSON beside it keeps the unrounded values, and ``--render`` rewrites the Markdown from
it without measuring again, so a change of wording never needs a rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

from machine import machine_line

RESULTS = Path(__file__).resolve().parent / "results"

#: What a results file says where the run recorded no machine (results from before the machine line).
NO_MACHINE = "machine: not recorded (the run predates the machine line; run the command again to record it)"


def machine_text(info: dict | None) -> str:
    """The machine line of ``info`` (a :func:`machine.machine` dict), or :data:`NO_MACHINE` where it is missing."""
    return machine_line(info) if info else NO_MACHINE


def table(header: list[str], rows: list[list], right: int = 1) -> str:
    """A Markdown table; columns from index ``right`` on are right-aligned (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under a header of {len(header)}: {row}")
    rule = ["---" if i < right else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, rule, *cells])


def markdown(command: str, machine: dict | None, notes: list[str], tables: list[str]) -> str:
    """The text of a results file: the line of command, machine and ``notes``, then the ``tables``."""
    first = "; ".join([f"`{command}`", machine_text(machine), *notes])
    return first + "\n\n" + "\n\n".join(tables) + "\n"


def write(name: str, text: str, record: dict | list | None = None) -> Path:
    """Write ``results/<name>.md`` (and ``results/<name>.json`` from ``record``, if given); returns the .md path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if record is not None:
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    path = RESULTS / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    return path


def read(name: str, command: str) -> dict | list:
    """``results/<name>.json`` (``.jsonl``: a list of its lines), or an error that says which command writes it."""
    for path in (RESULTS / f"{name}.json", RESULTS / f"{name}.jsonl"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line]
    raise SystemExit(f"benchmarks/results/{name}.json not found: run `{command}` first (--render only rewrites "
                     f"the Markdown from a stored run)")


def number(value: float, decimals: int = 0) -> str:
    """``value`` with thousands separators: ``16,599``, ``2.1713``."""
    return f"{value:,.{decimals}f}"
