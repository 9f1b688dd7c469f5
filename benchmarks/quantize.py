"""Quantization's quality and speed: bits per byte, greedy agreement, compiled decode tok/s beside llama.cpp.

Run from the repository root::

    python benchmarks/quantize.py                 # both tables (trains the book's model for 120 s first)
    python benchmarks/quantize.py speed           # only the speed table
    python benchmarks/quantize.py quality         # only the quality table
    python benchmarks/quantize.py --quick         # tiny sizes, to check that the script works
    python benchmarks/quantize.py quality --save  # also write benchmarks/results/quantize-quality.{json,md}
    python benchmarks/quantize.py quality --render   # rewrite quantize-quality.md from the stored JSON

Quality:

- **bits per byte** of a Tiny Shakespeare model: the training chapter's earlier AdamW baseline
  (``llama train``'s defaults), run for the 893 steps it made in its 120 seconds on an idle
  machine (``llama train --max-steps 893 --dtype bfloat16``, trained here into a temporary folder,
  or ``--run DIR`` to use a finished run), evaluated on the whole validation split
  (:func:`llama.training.loop.evaluate`) in float32, then with int8 and int4 weights.
- **greedy agreement** on ``stories260K`` (found by :func:`llama.data.sources.find_data`): for each
  of 200 prompts (BOS and three random ids), 64 greedy tokens from the float32 model and from
  the quantized one; the table gives how many tokens come out equal before the first
  difference (median and mean) and the share of prompts whose 64 tokens are all equal.

Speed: batch 1, greedy, an 8-token prompt then 128 new tokens, with
:class:`llama.inference.exported.ExportedDecoder` (the model's own forward compiled ahead of time) in float32, int8
and int4 (both in groups of 32, the numbers of GGUF's ``Q8_0`` and ``Q4_0`` layouts; each with
float32 activations, and with activations rounded to int8 per group, "int8 x", the math of
llama.cpp's ``Q8_0`` and ``Q4_0`` products), beside
llama.cpp (``llama-cpp-python``, optional: ``pip install -e ".[peers]"``) on GGUF files of the
same random weights that ``llama convert --to gguf`` writes: ``F32``, ``Q8_0`` and ``Q4_0``, as in
``benchmarks/decode.py`` (whose helpers this script uses: the configs, the prompt, the bandwidth
measurement, writing the GGUF files and running llama.cpp). The timed calls alternate between
all engines; each cell is the median (best) of the repeats. ``MB`` is the bytes of weights one
decode step reads (every matrix, the head, the norms, one embedding row: integers plus float16
scales for the quantized formats) and ``bound`` the copy bandwidth over those bytes; llama.cpp's
rows use the bytes of our format of the same numbers.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from decode import (  # noqa: E402
    CONFIGS,
    NEW_TOKENS,
    PROMPT_LEN,
    LlamaCpp,
    copy_bandwidth,
    first_difference,
    llama_cpp_unavailable,
    llama_cpp_version,
    prompt_ids,
    run_engines,
    scaled_random_model,
    write_gguf_files,
)
from machine import machine, machine_line  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

from llama import ModelConfig, Transformer  # noqa: E402
from llama.formats.load import load_model  # noqa: E402
from llama.inference.exported import ExportedDecoder  # noqa: E402
from llama.inference.generation import generate_batch  # noqa: E402
from llama.quantization.weights import QuantizedLinear, quantize, set_int8_activations  # noqa: E402

#: The steps the earlier AdamW baseline (``llama train``'s defaults) made in 120 seconds on the book's
#: idle machine: counted in steps, a loaded machine trains the same model.
BASELINE_STEPS = 893
#: (bits, group size, activations rounded to int8: the math of llama.cpp's Q8_0 and Q4_0 products)
FORMATS = {"float32": None, "int8": (8, 32, False), "int4": (4, 32, False),
           "int8, int8 x": (8, 32, True), "int4, int8 x": (4, 32, True)}
#: llama.cpp's format of the same numbers as each of ours.
GGUF_OF = {"float32": "F32", "int8": "Q8_0", "int4": "Q4_0", "int8, int8 x": "Q8_0", "int4, int8 x": "Q4_0"}


def quantized(model: Transformer, fmt: str, group_size: int | None = None) -> Transformer:
    """A quantized copy of ``model`` (``float32``: a plain copy)."""
    model = copy.deepcopy(model)
    if FORMATS[fmt] is None:
        return model
    bits, default, int8_activations = FORMATS[fmt]
    return set_int8_activations(quantize(model, bits, group_size or default), int8_activations)


def bytes_per_token(model: Transformer) -> int:
    """Bytes of weights a decode step reads: every matrix in its stored form, norms, one embedding row."""
    total = model.config.dim * model.tok_embeddings.weight.element_size()  # one embedding row
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            total += module.qweight.numel() * module.qweight.element_size() + module.scales.numel() * 2
        elif isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif module.__class__.__name__ == "RMSNorm":
            total += module.weight.numel() * module.weight.element_size()
    return total


# ------------------------------------------------------------------------------------- quality
def _text_path(find_data) -> str | None:
    """Tiny Shakespeare from the data folder if it is there (``None``: ``llama train`` downloads it)."""
    path = find_data("tinyshakespeare.txt")
    return None if path is None else str(path)


def shakespeare_bpb(run: Path | None, quick: bool, threads: int) -> list[tuple[str, float]]:
    from llama.data.pipeline import load_tokens, token_byte_lengths
    from llama.data.sources import find_data
    from llama.tokenizers.tokenizer import load_tokenizer
    from llama.training.config import TrainConfig
    from llama.training.loop import evaluate, train

    with tempfile.TemporaryDirectory(prefix="quantize-bench-") as tmp:
        if run is None:
            run = Path(tmp) / "run"
            cfg = TrainConfig(out=str(run), data=_text_path(find_data), max_steps=20 if quick else BASELINE_STEPS,
                              dtype="bfloat16", sample_tokens=0, progress=False, threads=threads,
                              **({"model": "tiny", "block_size": 64} if quick else {}))
            print(f"training: llama train --out RUN --max-steps {cfg.max_steps} --dtype bfloat16"
                  f"{' --model tiny --block-size 64' if quick else ''}", flush=True)
            train(cfg)
        model = load_model(run / "model")
        tok_file = next(p for p in (run / "model").iterdir() if p.name.startswith("tokenizer"))
        tokenizer = load_tokenizer(tok_file)
        val = load_tokens(run / "data" / "val.npy")
        lengths = token_byte_lengths(tokenizer)
        block = min(256, model.config.max_seq_len)
        rows = []
        for label, scheme in [("float32", None), ("int8, one scale per row", (8, None, True)),
                              ("int8, groups of 32", (8, 32, True)), ("int4, groups of 32", (4, 32, True)),
                              ("int4, groups of 32, float head", (4, 32, False)),
                              ("int4, one scale per row", (4, None, True))]:
            m = model if scheme is None else quantize(copy.deepcopy(model), *scheme)
            with torch.inference_mode():
                rows.append((label, evaluate(m, val, block, lengths, max_tokens=4096 if quick else None)["bpb"]))
        return rows


def greedy_agreement(n_prompts: int, new_tokens: int) -> list[tuple[str, float, float, float]] | str:
    from llama.data.sources import find_data

    path = find_data("stories260K.bin")
    if path is None:
        return "stories260K.bin not found: run `llama download stories260K`"
    model = load_model(path)
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(3, model.config.vocab_size, (3,), generator=g).tolist() for _ in range(n_prompts)]
    ref = generate_batch(model, prompts, new_tokens)
    rows = []
    # For scale: the same weights rounded to bfloat16 (8 significant bits), computed in float32.
    # stories260K's hidden width (172) is not a multiple of 32: one scale per row for int8 and int4.
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    variants = {"weights rounded to bfloat16": rounded,
                "int8, one scale per row": quantize(copy.deepcopy(model), 8, None),
                "int4, one scale per row": quantize(copy.deepcopy(model), 4, None)}
    for label, variant in variants.items():
        out = generate_batch(variant, prompts, new_tokens)
        same = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), new_tokens) for x, y in zip(ref, out)]
        rows.append((label, statistics.median(same), statistics.mean(same),
                     sum(s == new_tokens for s in same) / n_prompts))
    return rows


def run_quality(args, command: str) -> dict:
    """Both quality measurements, as the record ``--save`` stores in ``results/quantize-quality.json``."""
    load = os.getloadavg()[0]
    rows = shakespeare_bpb(args.run, args.quick, args.threads)
    prompts = 20 if args.quick else 200
    agreement = greedy_agreement(prompts, 64)
    model = (f"the model of `llama train --max-steps {20 if args.quick else BASELINE_STEPS} --dtype bfloat16`"
             if args.run is None else "the model of the run given with --run")
    if not isinstance(agreement, str):
        agreement = [{"weights": label, "median": median, "mean": mean, "all_equal": share}
                     for label, median, mean, share in agreement]
    return {"command": command, "machine": machine(), "model": model, "prompts": prompts, "new_tokens": 64,
            "bpb": [{"weights": label, "bpb": bpb, "vs_float32": bpb - rows[0][1]} for label, bpb in rows],
            "agreement": agreement, "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2)}


def quality_markdown(record: dict) -> str:
    """The text of ``results/quantize-quality.md``: bits per byte by format, then greedy agreement."""
    tables = [report.table(["Tiny Shakespeare model, weights in", "validation bits per byte", "vs float32"],
                           [[r["weights"], f"{r['bpb']:.4f}", "" if i == 0 else f"{r['vs_float32']:+.4f}"]
                            for i, r in enumerate(record["bpb"])])]
    if isinstance(record["agreement"], str):
        tables.append(f"`stories260K` greedy agreement: skipped: {record['agreement']}")
    else:
        tables.append(report.table(
            [f"`stories260K`, {record['prompts']} prompts × {record['new_tokens']} greedy tokens",
             "equal tokens before the first difference: median", "mean", f"all {record['new_tokens']} equal"],
            [[r["weights"], f"{r['median']:.0f}", f"{r['mean']:.1f}", f"{r['all_equal']:.0%}"]
             for r in record["agreement"]]))
    notes = [f"load average {record['load_start']:.2f} at the start, {record['load_end']:.2f} at the end",
             f"{record['model']}, evaluated on the whole validation split in float32, then quantized"]
    return report.markdown(record["command"], record["machine"], notes, tables)


# --------------------------------------------------------------------------------------- speed
class _Products(torch.nn.Module):
    """One-row products through many layers, summed: the matrix-vector work of a decode step alone."""

    def __init__(self, layers: list[torch.nn.Module]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(layer(x).sum() for layer in self.layers)


def kernel_read_speeds(count: int = 40, rows: int = 2048, cols: int = 768, repeats: int = 10) -> dict[str, float]:
    """Bytes/s at which the compiled one-row product reads each format's weights (count matrices, > the cache).

    The profile of what limits the speed: if a format's kernel reads its bytes much slower than
    float32's, the integer-to-float work, not memory, is what bounds it.
    """
    from llama.model.linear import Linear

    torch.manual_seed(0)
    base = [Linear(cols, rows, bias=False) for _ in range(count)]
    stacks = {"float32": (_Products(base), 4.0),
              "int8": (_Products([QuantizedLinear.from_linear(m, 8, 32) for m in base]), 1 + 2 / 32),
              "int4": (_Products([QuantizedLinear.from_linear(m, 4, 32) for m in base]), 0.5 + 2 / 32)}
    x = torch.randn(1, 1, cols)
    out, times = {}, {}
    with torch.inference_mode():
        compiled = {k: torch.compile(m, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
                    for k, (m, _) in stacks.items()}
        for fn in compiled.values():
            fn(x)
        times = {k: [] for k in compiled}
        for _ in range(repeats):  # alternating, as everywhere here
            for k, fn in compiled.items():
                start = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - start)
    for k, (_, per_weight) in stacks.items():
        out[k] = count * rows * cols * per_weight / min(times[k])
    return out


def bench_speed(name: str, config: ModelConfig, repeats: int, threads: int, peer: str | None,
                bandwidth: float) -> list[str]:
    """Rows of the speed table for one config; ``peer`` is None or the reason llama.cpp is skipped."""
    model = scaled_random_model(config)
    prompt = prompt_ids(config.vocab_size)
    models = {fmt: quantized(model, fmt) for fmt in FORMATS}
    decoders, compile_s = {}, {}
    for fmt, m in models.items():  # each decoder compiles its step (or loads it from Inductor's cache folder)
        start = time.perf_counter()
        decoders[fmt] = ExportedDecoder(m, max_seq_len=PROMPT_LEN + NEW_TOKENS)
        decoders[fmt].generate(prompt, NEW_TOKENS)
        compile_s[fmt] = time.perf_counter() - start
    engines = {fmt: (lambda ids, d=d: d.generate(ids, NEW_TOKENS)) for fmt, d in decoders.items()}
    with tempfile.TemporaryDirectory(prefix="quantize-bench-") as folder:
        if peer is None:
            for fmt, path in write_gguf_files(model, Path(folder), dict.fromkeys(GGUF_OF.values())).items():
                llm = LlamaCpp(path, threads, PROMPT_LEN + NEW_TOKENS)
                engines[f"llama.cpp {fmt}"] = lambda ids, llm=llm: llm.generate(ids, NEW_TOKENS)
        ids, rates = run_engines(engines, prompt, repeats)
    med = {k: statistics.median(r) for k, r in rates.items()}
    lines = []
    for fmt in FORMATS:
        b = bytes_per_token(models[fmt])
        peer_key = f"llama.cpp {GGUF_OF[fmt]}"
        vs_peer = f"{med[fmt] / med[peer_key]:.2f}x" if peer_key in med else "-"
        lines.append(f"| {name} | {fmt} | {med[fmt]:.0f} ({max(rates[fmt]):.0f}) | {med[fmt] / med['float32']:.2f}x "
                     f"| {vs_peer} | {b / 1e6:.0f} | {bandwidth / b:.0f} | {med[fmt] * b / bandwidth:.0%} "
                     f"| {first_difference(ids[fmt], ids['float32'])}/{NEW_TOKENS} | {compile_s[fmt]:.0f} |")
    for fmt in ("float32", "int8", "int4"):
        key = f"llama.cpp {GGUF_OF[fmt]}"
        if key not in med:
            lines.append(f"| {name} | {key} | skipped: {peer} | - | - | - | - | - | - | - |")
            continue
        b = bytes_per_token(models[fmt])
        lines.append(f"| {name} | {key} | {med[key]:.0f} ({max(rates[key]):.0f}) | {med[key] / med['float32']:.2f}x "
                     f"| 1.00x | {b / 1e6:.0f} | {bandwidth / b:.0f} | {med[key] * b / bandwidth:.0%} "
                     f"| {first_difference(ids[key], ids['float32'])}/{NEW_TOKENS} | - |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # No `choices` here: argparse checks an empty list against them and refuses the default.
    parser.add_argument("tables", nargs="*", metavar="{quality,speed}", help="which tables (default both)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per engine and config (default 3)")
    parser.add_argument("--configs", nargs="+", default=["15M", "110M"], choices=list(CONFIGS))
    parser.add_argument("--run", type=Path, help="a finished `llama train` run folder to use instead of training")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: a smoke test")
    parser.add_argument("--save", action="store_true",
                        help="write the tables to benchmarks/results/quantize-speed.md and quantize-quality.{json,md} "
                        "(what the book shows)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite benchmarks/results/quantize-quality.md from its JSON")
    args = parser.parse_args(argv)
    if args.render:
        if args.tables != ["quality"]:
            parser.error("--render rewrites the quality table only: run `python benchmarks/quantize.py quality --render`")
        report.write("quantize-quality", quality_markdown(report.read(
            "quantize-quality", "python benchmarks/quantize.py quality --save")))
        return 0
    if args.quick and args.save:
        parser.error("--quick --save would write the tiny sizes' numbers to benchmarks/results/: drop --quick")
    tables = args.tables or ["quality", "speed"]
    if unknown := set(tables) - {"quality", "speed"}:
        parser.error(f"unknown table(s) {', '.join(sorted(unknown))}: choose quality and/or speed")
    if args.quick:
        args.configs, args.repeats = ["tiny"], 2
    torch.set_num_threads(args.threads)
    # Dynamo compiles the model's forward once per model: five formats per config exceed its default limit of 8.
    torch._dynamo.config.recompile_limit = 64
    command = f"python benchmarks/quantize.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
    print(f"command: {command}")
    print(machine_line())
    print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    if "quality" in tables:
        record = run_quality(args, command)
        print("\n" + quality_markdown(record), flush=True)
        if args.save:
            report.write("quantize-quality", quality_markdown(record), record)
    if "speed" in tables:
        bandwidth = copy_bandwidth()
        count = 4 if args.quick else 40
        reads = kernel_read_speeds(count=count)
        peer = llama_cpp_unavailable()
        head = [f"copy bandwidth (256 MiB, read + write): {bandwidth / 1e9:.1f} GB/s; compiled one-row products over "
                f"{count} matrices of 2048 x 768 (best of 10) read their weights at "
                + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in reads.items()),
                f"batch 1, greedy, {PROMPT_LEN}-token prompt + {NEW_TOKENS} new tokens, ExportedDecoder; int8 and int4 "
                f"in groups of 32; median (best) of {args.repeats}; llama.cpp: "
                + (f"skipped: {peer}" if peer else f"llama-cpp-python {llama_cpp_version()}")]
        print("\n".join(head) + "\n", flush=True)
        lines = ["| config | format | tok/s | vs float32 | vs llama.cpp, same numbers | weights MB/token | bound tok/s "
                 "| of bound | ids equal to float32's before the first difference | decoder built + first call s |", "| --- " * 10 + "|"]
        print("\n".join(lines))
        for name in args.configs:
            for line in bench_speed(name, CONFIGS[name], args.repeats, args.threads, peer, bandwidth):
                lines.append(line)
                print(line, flush=True)
        if args.save:
            path = REPO / "benchmarks" / "results" / "quantize-speed.md"
            path.write_text(f"`{command}`; {machine_line()}; {head[0]}; {head[1]}\n\n" + "\n".join(lines) + "\n")
            print(f"wrote {path}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (other processes share these cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
