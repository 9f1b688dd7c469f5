"""Every measured number the book states comes from a results file, shown through hooks/results.py.

The benchmarks write their measurements to ``benchmarks/results/`` (a JSON record, and a Markdown
table with the command and the machine line); a page shows a table with
``<!-- results: benchmarks/results/X.md -->`` and quotes one figure with
``<!-- result: benchmarks/results/X.json PATH FORMAT -->``. A figure typed by hand would be a
second copy, which the next run of the benchmark leaves behind. So this test collects the
measured numbers of every results file and fails where a page's text types one of them.

What counts as a measured number:

* in a results ``.md``: every number of a table's cells, except the first column (the row's
  label: a configuration, a run's name) and the columns of :data:`NOT_MEASURED` (counts that
  follow from a configuration, settings); and the decimals of the first line, outside the
  command and the machine line (a load average, a copy bandwidth; its integers are settings:
  128 new tokens, a 256 MiB copy). Fractions such as ``84/128`` (84 of the 128 asked for) are
  left out. Each is also taken rounded to fewer decimals, as prose rounds (``2.1808`` is quoted
  ``2.181`` or ``2.18``), while the rounding keeps three significant digits.
* in a results ``.json`` or ``.jsonl``: every non-integer number and its roundings that keep four
  significant digits (the ``.md`` has the shorter ones: rounding every stored number to three
  digits would match too much by chance), except in the machine record, in lists longer than
  :data:`LONGEST_LIST` (a figure's data: singular values) and in the training logs
  (``*-log.jsonl``, a loss curve the figures draw). Integers in JSON are mostly settings (the
  steps asked for, a vocabulary size); the measured ones (steps a timed run made, tokens) are in
  the ``.md`` tables.

What counts as typing one in a page: a number with at least three significant digits (``2.18``,
``16,599``), or a ratio with at least two (``0.87×``, ``1.3x``; matched only with ratios), in
the page's text or in a ``text`` block of printed output. An integer of three digits counts only
with its unit (``553 steps``, ``335 tok/s``, ``558 MB``), matched with the unit of the table's
cell or column: alone, ``128`` or ``256`` is as likely a size as a measurement. Left out: code
(fences of Python, consoles and shells, inline code), which runs or is an input, not a report;
math; HTML comments, which is where the results markers are; link targets; numbers of one or two
digits, which are everywhere in prose (two threads, 4 layers, 8 bits) and too short to identify
a measurement; and a ratio of 1, the row the others are compared with.

Dated history may keep its typed numbers: :data:`HISTORY` names each section, with why; and
:data:`COINCIDENCES` the numbers that equal a measurement by chance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import REPO

RESULTS = REPO / "benchmarks" / "results"
BOOK = REPO / "book"

#: Columns of results tables whose numbers are not measured: header -> why.
NOT_MEASURED = {
    "weights MB/token": "the bytes of weights a decode step reads, counted from the configuration",
    "trainable parameters": "counted from the configuration",
    "share of the model": "counted from the configuration",
    "gradients + AdamW state": "12 bytes per trainable parameter",
    "adapter (float32)": "4 bytes per trainable parameter",
    "steps": "the sweep's setting (--sweep-steps)",
    "flags besides `llama train`'s defaults": "the settings of each sweep run",
    "ranks": "a setting",
    "`--dtype auto`": "a choice, not a number",
    "requests": "serve.md: clients x the requests each sends, a setting",
    "tokens": "serve.md: the completion tokens of a level, requests x max_tokens unless a reply stops early: a count",
}
#: Longer lists in a results JSON are a figure's data, not numbers a page quotes.
LONGEST_LIST = 20
#: Sections kept as dated history, with their typed numbers: (page, heading) -> why.
HISTORY = {
    ("benchmarks.md", "### Earlier: llama2.c's `run.c` as the peer"):
        "the last decode table with run.c as the peer (2026-11-26), dated and with its machine, kept as history",
    ("benchmarks.md", "### Earlier: the run of 2026-11-26, with llama2.c's `run.c` as the peer"):
        "the whole printed output of benchmarks/quantize.py on 2026-11-26, dated, kept as history",
    ("quantization.md", "### When the kernel came in (2026-12-06)"):
        "the decode speed before and after the C++ kernel, measured the day it came in (dated, with its machine); "
        "benchmarks/results/decode.md and quantize-speed.md hold today's",
}
#: A typed number equal to a measurement by chance: (page, number) -> what it is.
COINCIDENCES = {
    ("parallelism.md", "2.11"): "PyTorch's version on the GPU that ran FSDP, not the recipe's 2.109 bits per byte",
    ("benchmarks.md", "2.36"): "MB/s of the tokenizer's table, not the 2.359 bits per byte of finetune.md",
    ("finetuning.md", "13.5"): "GB of Llama 2 7B's weights in bfloat16 (arithmetic), not sft.md's accuracy",
    ("quantization.md", "24.7"): "GB/s of weights read in the kernel table, not pipeline.md's sampled pass@1",
    ("quantization.md", "37.0"): "GB/s of weights read in the kernel table, not pipeline.md's accuracy after SFT",
    ("training.md", "98.2"): "the share of the peak learning rate that lr_at reaches (computed), not train-matmul.md's GFLOP/s",
}

# A ratio is written with its sign against the digits (1.26×, 0.87x); "16 × 128" is a product.
NUMBER = re.compile(r"(?<![\w.,/])(?P<digits>\d{1,3}(?:,\d{3})+|\d+)(?P<decimals>\.\d+)?"
                    r"(?P<ratio>[x×](?!\w|\s*\d))?(?!\w|\.\d|,\d{3}|/\d)"
                    r"(?P<unit>%|\s*(?:tok/s|tokens/s|GB/s|GFLOP/s|MB|KB|ms|s|seconds|steps)(?![\w/]))?")
#: The spellings of a unit, for 3-digit integers (a unit in a results table's header names its cells').
UNITS = {"tokens/s": "tok/s", "seconds": "s"}
HEADER_UNIT = re.compile(r"(?<![\w/])(tok/s|GB/s|GFLOP/s|MB|KB|ms|s|steps)(?![\w/])")
CODE_SPAN = re.compile(r"(`+).+?\1")
COMMENT = re.compile(r"<!--.*?-->", re.S)
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
CODE_FENCES = {"python", "py", "pycon", "console", "bash", "sh", "shell", "cpp", "c", "json", "yaml", "toml"}


def significant(text: str) -> int:
    """Significant digits of a number as written: ``2.18`` 3, ``0.005`` 1, ``16,599`` 5."""
    return len(text.replace(",", "").replace(".", "").lstrip("0"))


def roundings(text: str, keep: int = 3) -> set[str]:
    """``text`` (a number as written) and its roundings to fewer decimals that keep ``keep`` significant digits."""
    value = text.replace(",", "")
    out = {value}
    if "." in value:
        for places in range(len(value.split(".")[1]) - 1, 0, -1):
            shorter = f"{float(value):.{places}f}"
            if significant(shorter) >= keep:
                out.add(shorter)
    return out


def numbers_in(text: str, default_unit: str | None = None) -> list[tuple[str, str | None]]:
    """``(number without thousands separators, kind)`` for every number in ``text`` that could quote
    a measurement: kind ``"x"`` for a ratio, a unit for an integer of three digits (``553 steps``:
    alone, ``128`` or ``256`` is as likely a size), ``""`` otherwise. Fractions are left out
    (``84/128`` is 84 out of the 128 asked for)."""
    found = []
    for m in NUMBER.finditer(re.sub(r"\d+/\d+", " ", text)):
        number = (m["digits"] + (m["decimals"] or "")).replace(",", "")
        if m["ratio"]:
            kind = "x"
        elif "." not in number and significant(number) <= 3:
            unit = (m["unit"] or "").strip() or default_unit
            kind = UNITS.get(unit, unit)
        else:
            kind = ""
        found.append((number, kind))
    return found


def quotes_a_measurement(number: str, kind: str | None) -> bool:
    """Long enough to identify a measurement: 3 significant digits, 2 for a ratio; an integer below
    1,000 only with its unit."""
    if kind is None or (kind == "x" and float(number) == 1):  # 1.00x: the row the others are compared with
        return False
    return significant(number) >= (2 if kind == "x" else 3)


def md_measurements(path: Path) -> set[tuple[str, str | None]]:
    """The measured numbers a results ``.md`` shows, as written and rounded, each with its kind."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = set()
    # The first line's integers are the run's settings (128 new tokens, a 256 MiB copy); what it
    # measured there is a decimal (a load average, a bandwidth).
    for part in CODE_SPAN.sub("", lines[0]).split("; "):
        if not part.startswith("machine: "):
            found |= {(r, kind) for n, kind in numbers_in(part) if "." in n for r in roundings(n)}
    header = None
    for line in lines[1:]:
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(set(c) <= set("-: ") for c in cells):
            for name, cell in zip(header[1:], cells[1:]):
                if name not in NOT_MEASURED:
                    units = HEADER_UNIT.findall(name)
                    found |= {(r, kind) for n, kind in numbers_in(CODE_SPAN.sub("", cell), units[-1] if units else None)
                              for r in roundings(n)}
    return found


def json_measurements(value, key: str = "") -> set[tuple[str, str]]:
    """The non-integer numbers of a results JSON value, and their roundings that keep 4 significant
    digits (shorter ones are too many: a figure rounded to 3 digits is found in the ``.md``)."""
    if key == "machine":
        return set()
    if isinstance(value, dict):
        return set().union(*(json_measurements(v, k) for k, v in value.items()))
    if isinstance(value, list):
        return set() if len(value) > LONGEST_LIST else set().union(*(json_measurements(v, key) for v in value))
    if isinstance(value, float) and not value.is_integer():
        return {(r, "x" if key.startswith("ratio") else "") for r in roundings(f"{value:.6f}", keep=4)}
    return set()


def measured_numbers() -> dict[str, set[tuple[str, str | None]]]:
    """results file name -> the measured numbers it holds, with their kinds."""
    out = {}
    for path in sorted(RESULTS.iterdir()):
        if path.suffix == ".md":
            out[path.name] = md_measurements(path)
        elif path.suffix in (".json", ".jsonl") and not path.name.endswith("-log.jsonl"):
            text = path.read_text(encoding="utf-8")
            value = json.loads(text) if path.suffix == ".json" else [json.loads(s) for s in text.splitlines() if s]
            out[path.name] = json_measurements(value)
    return out


def page_text(page: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of what a page's reader reads as prose or printed output: no code, math,
    HTML comments, link targets, or sections of :data:`HISTORY`."""
    text = COMMENT.sub(lambda m: "\n" * m[0].count("\n"), page.read_text(encoding="utf-8"))
    text = MATH.sub(lambda m: "\n" * m[0].count("\n"), text)
    out, fence, history_level = [], None, None
    for number, line in enumerate(text.splitlines(), 1):
        heading = re.match(r"(#+) ", line)
        if heading and fence is None:
            level = len(heading[1])
            if history_level is not None and level <= history_level:
                history_level = None
            if (page.name, line.strip()) in HISTORY:
                history_level = level
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = (stripped[3:].split() or [""])[0] if fence is None else None
            continue
        if history_level is not None or (fence is not None and fence in CODE_FENCES):
            continue
        out.append((number, LINK_TARGET.sub("]", CODE_SPAN.sub("", line))))
    return out


def typed_measurements(book: Path = BOOK) -> list[str]:
    """``page:line: NUMBER (in FILES)`` for every measured number a page of ``book`` types."""
    measured = measured_numbers()
    found = []
    for page in sorted(book.glob("*.md")):
        for line_number, line in page_text(page):
            for number, kind in numbers_in(line):
                if not quotes_a_measurement(number, kind) or (page.name, number) in COINCIDENCES:
                    continue
                sources = [name for name, values in measured.items() if (number, kind) in values]
                if sources:
                    shown = number + {"x": "×", "": ""}.get(kind, f" {kind}")
                    found.append(f"book/{page.name}:{line_number}: {shown} (in {', '.join(sources)})")
    return found


def test_no_page_types_a_measured_number():
    found = typed_measurements()
    assert found == [], (
        "these numbers are measurements that a results file holds: show the file "
        "(<!-- results: benchmarks/results/X.md -->) or quote the figure from its JSON "
        "(<!-- result: benchmarks/results/X.json PATH FORMAT -->) instead of typing it:\n" + "\n".join(found))


def test_the_check_finds_a_typed_measurement(tmp_path):
    """A figure of a results file typed in a page, rounded as prose rounds, is found; the same
    number in code, a comment or a history section is not."""
    quality = json.loads((RESULTS / "train-quality.json").read_text())
    median = f"{quality['val_bpb_median']:.3f}"
    book = tmp_path / "book"
    book.mkdir()
    (book / "benchmarks.md").write_text(
        f"# B\n\nThe recipe reached {median} bits per byte.\n\n```pycon\n>>> {median}\n```\n\n"
        f"<!-- result: x {median} -->\n\n### Earlier: llama2.c's `run.c` as the peer\n\n{median}\n")
    assert typed_measurements(book) == [f"book/benchmarks.md:3: {median} (in train-quality.json, train-quality.md)"]


def test_rounding_significance_and_kinds():
    assert roundings("2.1808") == {"2.1808", "2.181", "2.18"}
    assert roundings("0.0322") == {"0.0322"}
    assert [significant(s) for s in ("2.18", "0.005", "16,599", "553")] == [3, 1, 5, 3]
    assert numbers_in("16,599 tokens/s, 0.87× and 1.3x, 84/128 ids, torch 2.13.0, 553 steps, 120 seconds, 16 × 128") == [
        ("16599", ""), ("0.87", "x"), ("1.3", "x"), ("553", "steps"), ("120", "s"), ("16", None), ("128", None)]
    assert numbers_in("| 335 (337) |", "tok/s") == [("335", "tok/s"), ("337", "tok/s")]
    assert [quotes_a_measurement(*k) for k in [("2.18", ""), ("0.87", "x"), ("1.00", "x"), ("128", None), ("553", "steps"), ("0.005", "")]] == [
        True, True, False, False, True, False]
