"""Quantization's quality and speed: bits per byte, greedy agreement, compiled decode tok/s beside run.c.

Run from the repository root::

    python benchmarks/quantize.py                 # both tables (trains the book's model for 120 s first)
    python benchmarks/quantize.py speed           # only the speed table
    python benchmarks/quantize.py quality         # only the quality table
    python benchmarks/quantize.py --quick         # tiny sizes, to check that the script works

Quality:

- **bits per byte** of the book's Tiny Shakespeare model: the training chapter's recipe, run for
  the 893 steps it reaches in its 120 seconds on an idle machine
  (``llama train --max-steps 893 --dtype bfloat16``, trained here into a temporary folder, or
  ``--run DIR`` to use a finished run), evaluated on the whole validation split
  (:func:`llama.train.evaluate`) in float32, then with int8 and int4 weights.
- **greedy agreement** on ``stories260K`` (found by :func:`llama.download.find_data`): for each
  of 200 prompts (BOS and three random ids), 64 greedy tokens from the float32 model and from
  the quantized one; the table gives how many tokens come out equal before the first
  difference (median and mean) and the share of prompts whose 64 tokens are all equal.

Speed: batch 1, greedy, an 8-token prompt then 128 new tokens, with
:class:`llama.generation.CompiledDecoder` (the model's own forward compiled) in float32, int8
(one scale per row) and int4 (groups of 32), and llama2.c's ``run.c`` in float32 on the same
random weights, as in ``benchmarks/decode.py`` (whose helpers this script uses: the configs, the
bandwidth measurement, compiling and running ``run.c``). The decoders' timed calls alternate
with run.c's; each cell is the median (best) of the repeats. ``MB`` is the bytes of weights one
decode step reads (every matrix, the head, the norms, one embedding row: integers plus float16
scales for the quantized formats) and ``bound`` the copy bandwidth over those bytes.
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
from decode import CONFIGS, NEW_TOKENS, PROMPT_LEN, RunC, copy_bandwidth, engines_prompt, find_run_c  # noqa: E402

from llama import ModelConfig, Transformer  # noqa: E402
from llama.generation import CompiledDecoder, generate_batch  # noqa: E402
from llama.quantize import QuantizedLinear, quantize  # noqa: E402

#: The steps the training chapter's 120-second recipe reached on the book's idle machine
#: (benchmarks/results/train-log.jsonl): counted in steps, a loaded machine trains the same model.
RECIPE_STEPS = 893
FORMATS = {"float32": None, "int8": (8, None), "int4": (4, 32)}


def quantized(model: Transformer, fmt: str, group_size: int | None = None) -> Transformer:
    """A quantized copy of ``model`` (``float32``: a plain copy)."""
    model = copy.deepcopy(model)
    if FORMATS[fmt] is None:
        return model
    bits, default = FORMATS[fmt]
    return quantize(model, bits, group_size or default)


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
    from llama.data import load_tokens, token_byte_lengths
    from llama.download import find_data
    from llama.tokenizer import load_tokenizer
    from llama.train import evaluate, train
    from llama.train_config import TrainConfig

    with tempfile.TemporaryDirectory(prefix="quantize-bench-") as tmp:
        if run is None:
            run = Path(tmp) / "run"
            cfg = TrainConfig(out=str(run), data=_text_path(find_data), max_steps=20 if quick else RECIPE_STEPS,
                              dtype="bfloat16", sample_tokens=0, progress=False, threads=threads,
                              **({"model": "tiny", "block_size": 64} if quick else {}))
            print(f"training: llama train --out RUN --max-steps {cfg.max_steps} --dtype bfloat16"
                  f"{' --model tiny --block-size 64' if quick else ''}", flush=True)
            train(cfg)
        model = Transformer.from_pretrained(run / "model")
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
    from llama.download import find_data

    path = find_data("stories260K.bin")
    if path is None:
        return "stories260K.bin not found: run `llama download stories260K`"
    model = Transformer.from_pretrained(path)
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
    from llama.linear import Linear

    torch.manual_seed(0)
    base = [Linear(cols, rows, bias=False) for _ in range(count)]
    stacks = {"float32": (_Products(base), 4.0),
              "int8": (_Products([QuantizedLinear.from_linear(m, 8, cols) for m in base]), 1 + 2 / cols),
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


def bench_speed(name: str, config: ModelConfig, repeats: int, run_c: RunC | str, bandwidth: float) -> list[str]:
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():  # as in decode.py: larger matrices, so the ids depend on every layer
        for key, weight in model.named_parameters():
            if key.startswith("layers.") and weight.ndim == 2:
                weight.mul_(10)
    run_c, _, text, prompt = engines_prompt(run_c, model)
    models = {fmt: quantized(model, fmt) for fmt in FORMATS}
    decoders = {fmt: CompiledDecoder(m, max_seq_len=PROMPT_LEN + NEW_TOKENS) for fmt, m in models.items()}
    compile_s, ids = {}, {}
    for fmt, d in decoders.items():
        start = time.perf_counter()
        ids[fmt] = d.generate(prompt, NEW_TOKENS)  # compiles
        compile_s[fmt] = time.perf_counter() - start
    steps = PROMPT_LEN + NEW_TOKENS - 1
    if isinstance(run_c, RunC):
        run_c.generate(text, steps)  # warm-up
    rates = {fmt: [] for fmt in FORMATS}
    c_rates = []
    for _ in range(repeats):
        for fmt, d in decoders.items():
            start = time.perf_counter()
            d.generate(prompt, NEW_TOKENS)
            rates[fmt].append(NEW_TOKENS / (time.perf_counter() - start))
        if isinstance(run_c, RunC):
            c_rates.append(NEW_TOKENS * run_c.generate(text, steps)[1] / steps)
    med = {fmt: statistics.median(r) for fmt, r in rates.items()}
    c_med = statistics.median(c_rates) if c_rates else None
    lines = []
    for fmt in FORMATS:
        b = bytes_per_token(models[fmt])
        same = next((i for i, (a, c) in enumerate(zip(ids[fmt], ids["float32"])) if a != c), NEW_TOKENS)
        vs_c = f"{med[fmt] / c_med:.2f}x" if c_med else "skipped"
        lines.append(f"| {name} | {fmt} | {med[fmt]:.0f} ({max(rates[fmt]):.0f}) | {med[fmt] / med['float32']:.2f}x "
                     f"| {vs_c} | {b / 1e6:.0f} | {bandwidth / b:.0f} | {med[fmt] * b / bandwidth:.0%} "
                     f"| {same}/{NEW_TOKENS} | {compile_s[fmt]:.0f} |")
    c_cell = f"{c_med:.0f} ({max(c_rates):.0f})" if c_rates else f"skipped: {run_c}"
    b32 = bytes_per_token(models["float32"])
    lines.append(f"| {name} | run.c float32 | {c_cell} | " + (f"{c_med / med['float32']:.2f}x | 1.00x "
                 f"| {b32 / 1e6:.0f} | {bandwidth / b32:.0f} | {c_med * b32 / bandwidth:.0%} | - | - |" if c_med else
                 "- | - | - | - | - | - | - |"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # No `choices` here: argparse checks an empty list against them and refuses the default.
    parser.add_argument("tables", nargs="*", metavar="{quality,speed}", help="which tables (default both)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per engine and config (default 5)")
    parser.add_argument("--configs", nargs="+", default=["15M", "110M"], choices=list(CONFIGS))
    parser.add_argument("--run", type=Path, help="a finished `llama train` run folder to use instead of training")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: a smoke test")
    args = parser.parse_args(argv)
    tables = args.tables or ["quality", "speed"]
    if unknown := set(tables) - {"quality", "speed"}:
        parser.error(f"unknown table(s) {', '.join(sorted(unknown))}: choose quality and/or speed")
    if args.quick:
        args.configs, args.repeats = ["tiny"], 2
    torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/quantize.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {os.cpu_count()} cores, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    if "quality" in tables:
        rows = shakespeare_bpb(args.run, args.quick, args.threads)
        print("\n| Tiny Shakespeare model | validation bits per byte | vs float32 |\n| --- | --- | --- |")
        for label, bpb in rows:
            print(f"| {label} | {bpb:.4f} | {bpb - rows[0][1]:+.4f} |")
        agreement = greedy_agreement(20 if args.quick else 200, 64)
        if isinstance(agreement, str):
            print(f"\nstories260K greedy agreement: skipped: {agreement}")
        else:
            print(f"\n| stories260K, {20 if args.quick else 200} prompts x 64 greedy tokens | equal tokens before the "
                  "first difference: median | mean | all 64 equal |\n| --- | --- | --- | --- |")
            for label, median, mean, share in agreement:
                print(f"| {label} | {median:.0f} | {mean:.1f} | {share:.0%} |")
        print(flush=True)
    if "speed" in tables:
        bandwidth = copy_bandwidth()
        print(f"copy bandwidth (256 MiB, read + write): {bandwidth / 1e9:.1f} GB/s")
        count = 4 if args.quick else 40
        reads = kernel_read_speeds(count=count)
        print(f"compiled one-row products over {count} matrices of 2048 x 768 (best of 10), weights read at: "
              + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in reads.items()))
        print(f"batch 1, greedy, {PROMPT_LEN}-token prompt + {NEW_TOKENS} new tokens, CompiledDecoder; int8: one "
              f"scale per row, int4: groups of 32; median (best) of {args.repeats}\n")
        with tempfile.TemporaryDirectory(prefix="quantize-bench-") as folder:
            run_c = find_run_c()
            if isinstance(run_c, tuple):
                run_c = RunC(*run_c, Path(folder), args.threads)
            print("| config | format | tok/s | vs float32 | vs run.c | weights MB/token | bound tok/s | of bound "
                  "| ids equal to float32's before the first difference | first call s |")
            print("| --- " * 10 + "|")
            for name in args.configs:
                for line in bench_speed(name, CONFIGS[name], args.repeats, run_c, bandwidth):
                    print(line, flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (other processes share these cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
