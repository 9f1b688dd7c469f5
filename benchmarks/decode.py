"""Decode speed of ``llama.generate`` against transformers and llama.cpp on the same weights, and the bandwidth bound.

Run from the repository root::

    python benchmarks/decode.py            # both configs, 2 threads, median of 3
    python benchmarks/decode.py --save     # the same, and write benchmarks/results/decode.{json,md}
    python benchmarks/decode.py --quick    # a small config, to check that the script works

The work: batch 1, greedy, an 8-token prompt (BOS included) then 128 new tokens, on identical
random weights of a stories15M-like and a stories110M-like config, every engine with the same
thread count. Each engine gets one untimed warm-up call; then the timed calls of the engines
alternate, so a burst of load from another process hits all alike. The time of a call covers the
whole generation, the prefill included; tokens/s is 128 divided by it. Each cell is the median
(best) of the repeats. The columns:

- eager: ``llama.generate`` after :func:`llama.inference.generation.prepare_for_decoding` (what ``llama
  generate`` runs without ``--compile``).
- compiled: :class:`llama.inference.compiled.CompiledDecoder` on the model as built (the one-token step
  compiled by ``torch.compile``, the prefill eager). Its warm-up call compiles; its time is the
  last column (with a cold Inductor cache, ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``, the full
  compile time).
- exported: :class:`llama.inference.exported.ExportedDecoder`, the same step compiled ahead of time by
  AOTInductor and called without ``torch.compile``'s Python entry. Building it compiles the step
  once per shape and machine (``exported decoder built in s``, the last column; "from cache" where
  Inductor's cache folder already held the library, which then only loads).
- int8: the exported decoder on :func:`llama.quantization.weights.quantize` ``(model, 8, 32)``: int8 weights in
  groups of 32 with a float16 scale each, the numbers of llama.cpp's ``Q8_0`` blocks, times
  float32 activations (the quantized model is exactly the dequantized float model).
- int8, int8 x: the same int8 model after :func:`llama.quantization.weights.set_int8_activations`: each
  activation row rounded to int8 per group of 32 and integer products, the math of llama.cpp's
  ``Q8_0`` product.
- transformers: ``LlamaForCausalLM.generate`` with our weights converted by
  :func:`llama.formats.convert.llama_to_hf_state_dict`.
- llama.cpp F32 and Q8_0: llama.cpp through ``llama-cpp-python`` (``pip install -e ".[peers]"``;
  it compiles llama.cpp, several minutes), ``Llama.generate`` with ``top_k=1`` (greedy), batch 1,
  ``n_threads`` = the thread count, on GGUF files that the project's own ``llama convert --to
  gguf`` writes from the same weights (saved as a Hugging Face folder first; Q8_0 from ``llama
  convert --to quantized --quantize int8 --group-size 32``). llama.cpp needs a vocabulary in the
  file: Llama 2's ``tokenizer.model`` (``llama download llama2-tokenizer``), whose encoding of a
  fixed sentence, cut to 8 ids, is every engine's prompt. Without the package or the tokenizer
  these columns are skipped, with the reason, and the prompt is 8 seeded random ids.
- ratios of the medians; ``bound``: decoding one token reads every weight matrix once (the
  output head included; of the embedding only one row), so when the weights stream from memory no
  implementation can beat ``copy bandwidth / weight bytes`` tokens per second. The bandwidth is
  measured here by copying a 256 MiB tensor, counting the bytes read and the bytes written.
  Weights that partly fit in the last-level cache (the 15M configuration's layers) can be read
  faster, so a tight loop may exceed this bound there.
- same ids: eager, exported, transformers and llama.cpp F32 chose the same 128 ids as compiled. Q8_0 against
  int8 and against int8, int8 x: how many of the 128 ids agree before the first difference (ggml's Q8_0 product also
  rounds the activations to 8 bits, so the two need not agree to the end).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from llama import ModelConfig, Transformer
from llama.formats.convert import llama_to_hf_state_dict
from llama.formats.load import save_model
from llama.inference.compiled import CompiledDecoder
from llama.inference.exported import ExportedDecoder
from llama.inference.generation import generate, prepare_for_decoding
from llama.quantization.weights import quantize, set_int8_activations

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, machine_line  # noqa: E402

CONFIGS = {
    # The two sizes of the issue: stories15M- and stories110M-like, shared embedding/output.
    "15M": ModelConfig(dim=288, n_layers=6, n_heads=6, vocab_size=32000, hidden_dim=768, max_seq_len=256,
                       tie_embeddings=True),
    "110M": ModelConfig(dim=768, n_layers=12, n_heads=12, vocab_size=32000, hidden_dim=2048, max_seq_len=1024,
                        tie_embeddings=True),
    # --quick: small enough to run in a second. Llama 2's vocabulary, so the llama.cpp columns can
    # store its tokenizer in the GGUF files and the smoke test covers them too.
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, hidden_dim=128,
                        max_seq_len=256, tie_embeddings=True),
}
PROMPT_LEN, NEW_TOKENS = 8, 128


def copy_bandwidth(mib: int = 256, repeats: int = 10) -> float:
    """Best bytes/s of ``dst.copy_(src)`` for a ``mib`` MiB tensor, counting bytes read + written."""
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def read_bandwidths(rows: int = 2048, cols: int = 768, count: int = 40, repeats: int = 5) -> dict[str, float]:
    """Bytes/s at which matrix-vector products read weights too large for the cache.

    ``count`` distinct ``[rows, cols]`` float32 matrices (250 MB by default), one product each,
    in the ``nn.Linear`` layout and transposed in memory; and a plain ``sum`` of a 256 MiB tensor,
    the reading speed a matrix-vector product could hope for.
    """
    row_major = [torch.randn(rows, cols) for _ in range(count)]
    col_major = [w.t().contiguous().t() for w in row_major]
    x = torch.randn(1, cols)
    total = count * rows * cols * 4
    flat = torch.ones(256 * 2**20 // 4)
    out = {}
    for name, mats in (("row-major", row_major), ("column-major", col_major)):
        [torch.nn.functional.linear(x, w) for w in mats]  # warm-up
        out[name] = total / min(_timed(lambda: [torch.nn.functional.linear(x, w) for w in mats])
                                for _ in range(repeats))
    flat.sum()
    out["sum"] = flat.numel() * 4 / min(_timed(flat.sum) for _ in range(repeats))
    return out


def weight_bytes_per_token(config: ModelConfig, bytes_per_value: int = 4) -> int:
    """Bytes of weights one decode step reads: every matrix and norm, the head, one embedding row."""
    d, kv, h = config.dim, config.n_kv_heads * config.head_dim, config.hidden_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * h + 2 * d
    head = config.vocab_size * d  # read in full whether or not it is shared with the embedding
    return bytes_per_value * (config.n_layers * per_layer + d + head + d)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _built(make):
    """``make()`` and the seconds it took."""
    start = time.perf_counter()
    made = make()
    return made, time.perf_counter() - start


def hf_twin(model: Transformer):
    """transformers' LlamaForCausalLM with ``model``'s weights, set to never stop early."""
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
    missing, unexpected = hf.load_state_dict(llama_to_hf_state_dict(model.state_dict(), model.config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.generation_config.eos_token_id = None  # random weights: no token may end the run early
    hf.generation_config.pad_token_id = 0
    return hf


def scaled_random_model(config: ModelConfig) -> Transformer:
    """Seeded random weights whose blocks matter: every engine of both benchmarks decodes this model.

    At init scale the blocks barely move the residual stream and the shared head answers the last
    token with itself: every engine would print "was was was ...", and agreeing on that proves
    little. Ten times larger matrices make the ids depend on every layer.
    """
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        for key, weight in model.named_parameters():
            if key.startswith("layers.") and weight.ndim == 2:
                weight.mul_(10)
    return model


# ------------------------------------------------------------------------------------ llama.cpp
REPO = Path(__file__).resolve().parent.parent
#: The first words of a TinyStories-like text; Llama 2's tokenizer turns them into more than
#: PROMPT_LEN ids, of which every engine gets the first PROMPT_LEN (BOS included).
PROMPT_TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun."
#: GGUF files llama.cpp runs, by the name of its column: the ``llama convert`` flags that make each.
GGUF_FORMATS = {"F32": None, "Q8_0": ("int8", 32), "Q4_0": ("int4", 32)}


def llama_cpp_version() -> str | None:
    """llama-cpp-python's version, or None where it is not installed (an optional peer)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.__version__


def peer_tokenizer() -> Path | str:
    """Llama 2's ``tokenizer.model`` (the vocabulary of the configs here), or why it is missing."""
    from llama.data.sources import find_data

    found = find_data("llama2-tokenizer.model")
    return found if found is not None else "llama2-tokenizer.model not found: run `llama download llama2-tokenizer`"


def llama_cpp_unavailable() -> str | None:
    """Why the llama.cpp columns cannot run here, or None."""
    if llama_cpp_version() is None:
        return 'llama-cpp-python is not installed: pip install -e ".[peers]" (it compiles llama.cpp, several minutes)'
    tokenizer = peer_tokenizer()
    return tokenizer if isinstance(tokenizer, str) else None


def prompt_ids(vocab_size: int) -> list[int]:
    """The first PROMPT_LEN ids of Llama 2's encoding of PROMPT_TEXT (BOS first); seeded random ids without it."""
    tokenizer = peer_tokenizer()
    if isinstance(tokenizer, Path) and vocab_size == 32000:
        from llama.tokenizers.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer).encode(PROMPT_TEXT, bos=True)[:PROMPT_LEN]
    generator = torch.Generator().manual_seed(1)
    return [1] + torch.randint(3, vocab_size, (PROMPT_LEN - 1,), generator=generator).tolist()


def write_gguf_files(model: Transformer, folder: Path, formats) -> dict[str, Path]:
    """``model`` as GGUF files, one per format, written by the project's own ``llama convert``."""
    from llama.cli.main import main as llama

    def convert(*argv: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # its "wrote ..." lines; errors go to stderr
            status = llama(["convert", *argv])
        if status != 0:
            raise RuntimeError(f"llama convert {' '.join(argv)} failed")

    save_model(model, folder / "hf")
    tokenizer = str(peer_tokenizer())
    paths = {}
    for fmt in formats:
        source = folder / "hf"
        if GGUF_FORMATS[fmt] is not None:
            bits, group = GGUF_FORMATS[fmt]
            source = folder / fmt
            convert(str(folder / "hf"), str(source), "--to", "quantized", "--quantize", bits,
                    "--group-size", str(group))
        paths[fmt] = folder / f"{fmt}.gguf"
        convert(str(source), str(paths[fmt]), "--to", "gguf", "--tokenizer", tokenizer)
    return paths


class LlamaCpp:
    """llama.cpp (through llama-cpp-python) decoding one GGUF file greedily, batch 1."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)

    def generate(self, prompt: list[int], new_tokens: int) -> list[int]:
        """``new_tokens`` greedy ids after ``prompt``, from an empty cache (the prefill included)."""
        out = []
        # top_k=1 is argmax; repeat_penalty=1 turns llama-cpp-python's default penalty off.
        for token in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            out.append(token)
            if len(out) == new_tokens:
                return out
        return out


def first_difference(a: list[int], b: list[int]) -> int:
    """How many ids agree before the first difference."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@torch.no_grad()
def divergence(model: Transformer, prompt: list[int], ours: list[int], theirs: list[int]) -> dict | None:
    """None if ``theirs`` equals ``ours``; else where it first differs and how near a tie it was.

    Greedy decoding picks the largest logit, so two correct engines whose sums round differently
    part ways where two logits are nearly equal. ``gap`` is how much ``model`` preferred our token
    at that position, ``std`` the spread of its logits there: a gap of a thousandth of the spread
    is rounding, a gap of the spread would be a bug.
    """
    n = first_difference(ours, theirs)
    if n == len(ours) == len(theirs):
        return None
    if n == min(len(ours), len(theirs)):
        return {"position": n, "gap": None, "std": None}  # one stopped early
    logits = model(torch.tensor([prompt + ours[:n]]))[0, -1].double()
    return {"position": n, "gap": float(logits[ours[n]] - logits[theirs[n]]), "std": float(logits.std())}


def agreement_cell(d: dict | None) -> str:
    """``128/128``, or ``84/128, gap 0.06% of σ``: ids equal before the first difference, and the tie there."""
    if d is None:
        return f"{NEW_TOKENS}/{NEW_TOKENS}"
    gap = "" if d["gap"] is None else f", gap {d['gap'] / d['std']:.2%} of σ"
    return f"{d['position']}/{NEW_TOKENS}{gap}"


def run_engines(engines: dict, prompt: list[int], repeats: int) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """One untimed call of each engine (its ids), then ``repeats`` rounds of alternating timed calls (tok/s)."""
    ids = {key: fn(prompt) for key, fn in engines.items()}
    rates = {key: [] for key in engines}
    for _ in range(repeats):  # interleaved, so load from other processes hits every engine alike
        for key, fn in engines.items():
            rates[key].append(NEW_TOKENS / _timed(lambda: fn(prompt)))
    return ids, rates


def profile_steps(key: str, decoder, prompt: list[int]) -> None:
    """torch.profiler's operators for one generation of ``decoder`` (a compiled or exported one), and each
    token's time split four ways: our quantized kernel, the rest of the compiled graph, the entry around the
    graph (for ``torch.compile``: Dynamo's cache lookup, the wrappers, the decoder's context managers; for the
    exported step nothing is measured apart from its library call), and the rest (Python loop, sampling,
    prefill)."""
    in_step = [0.0]
    step = decoder._step

    def timed_step(*args):
        start = time.perf_counter()
        out = step(*args)
        in_step[0] += time.perf_counter() - start
        return out

    decoder._step = timed_step  # an instance attribute, removed again below
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            wall = _timed(lambda: decoder.generate(prompt, NEW_TOKENS)) * 1e6
    finally:
        del decoder._step
    averages = prof.key_averages()
    print(f"\n{key}: one generation ({NEW_TOKENS} tokens), profiled\n"
          + averages.table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    us = {name: sum(e.cpu_time_total for e in averages if e.key.startswith(name))
          for name in ("llama::quantized_matmul", "## Call CompiledFxGraph")}
    kernel, steps = us["llama::quantized_matmul"], in_step[0] * 1e6
    graph = us["## Call CompiledFxGraph"] or steps  # the exported step: its one call is the graph
    parts = {"quantized kernel": kernel, "rest of the graph": graph - kernel, "entry around the graph": steps - graph,
             "the rest": wall - steps}
    print(f"{key}: per token {wall / NEW_TOKENS:.0f} us: "
          + "; ".join(f"{name} {t / NEW_TOKENS:.0f} us" for name, t in parts.items()), flush=True)


def bench_config(name: str, config: ModelConfig, repeats: int, threads: int, peer: str | None, profile=False) -> dict:
    """Time every engine on one config; ``peer`` is None, or the reason the llama.cpp columns are skipped."""
    model = scaled_random_model(config)
    hf = hf_twin(model)
    laid_out = prepare_for_decoding(copy.deepcopy(model))  # same values, column-major matrices
    prompt = prompt_ids(config.vocab_size)

    def transformers_generate(ids):
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                              max_new_tokens=NEW_TOKENS, min_new_tokens=0)
        return out[0, len(ids):].tolist()

    length = PROMPT_LEN + NEW_TOKENS
    compiled = CompiledDecoder(model, max_seq_len=length)
    compile_s = _timed(lambda: compiled.generate(prompt, NEW_TOKENS))  # the first call compiles the step
    exported, export_s = _built(lambda: ExportedDecoder(model, max_seq_len=length))
    int8 = ExportedDecoder(quantize(copy.deepcopy(model), 8, 32), max_seq_len=length)
    int8x = ExportedDecoder(set_int8_activations(quantize(copy.deepcopy(model), 8, 32)), max_seq_len=length)
    engines = {"eager": lambda ids: generate(laid_out, ids, NEW_TOKENS),
               "compiled": lambda ids: compiled.generate(ids, NEW_TOKENS),
               "exported": lambda ids: exported.generate(ids, NEW_TOKENS),
               "int8": lambda ids: int8.generate(ids, NEW_TOKENS),
               "int8, int8 x": lambda ids: int8x.generate(ids, NEW_TOKENS),
               "transformers": transformers_generate}
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as folder:
        if peer is None:
            for fmt, path in write_gguf_files(model, Path(folder), ["F32", "Q8_0"]).items():
                llm = LlamaCpp(path, threads, PROMPT_LEN + NEW_TOKENS)
                engines[f"llama.cpp {fmt}"] = lambda ids, llm=llm: llm.generate(ids, NEW_TOKENS)
        ids, rates = run_engines(engines, prompt, repeats)
    if profile:
        for key, decoder in (("compiled", compiled), ("exported", exported), ("int8", int8), ("int8, int8 x", int8x)):
            profile_steps(key, decoder, prompt)
    exact = copy.deepcopy(model).double()  # judges a disagreement: how close to a tie were our logits?
    agreement = {k: divergence(exact, prompt, ids["compiled"], ids[k])
                 for k in ("eager", "exported", "transformers", "llama.cpp F32") if k in ids}
    if "llama.cpp Q8_0" in ids:
        agreement["llama.cpp Q8_0 vs int8"] = divergence(int8.model, prompt, ids["int8"], ids["llama.cpp Q8_0"])
        agreement["llama.cpp Q8_0 vs int8, int8 x"] = divergence(int8x.model, prompt, ids["int8, int8 x"],
                                                                 ids["llama.cpp Q8_0"])
    return {
        "config": name,
        "prompt": prompt,
        "tok_s": rates,
        "median": {k: statistics.median(v) for k, v in rates.items()},
        # None where an engine chose the compiled decoder's 128 ids (Q8_0: int8's), else where it
        # first chose another and by how much our logits preferred ours there.
        "agreement": agreement,
        "compile_s": compile_s,
        # the exported decoder's build: export, then compile (or load from Inductor's cache folder)
        "export_s": export_s, "export_cached": exported.loaded_from_cache,
        "weight_bytes_per_token": weight_bytes_per_token(config),
    }


COLUMNS = ["eager", "compiled", "exported", "int8", "int8, int8 x", "transformers", "llama.cpp F32", "llama.cpp Q8_0"]


def table(results: list[dict], bandwidth: float) -> list[str]:
    """The Markdown table of :func:`bench_config`'s results: medians (best) and the ratios the book quotes."""
    lines = ["| config | " + " | ".join(f"{c} tok/s" for c in COLUMNS)
             + " | exported / compiled | exported / transformers | compiled / llama.cpp F32 "
             "| exported / llama.cpp F32 | int8 / llama.cpp Q8_0 | int8 / exported "
             "| int8, int8 x / llama.cpp Q8_0 | int8, int8 x / exported "
             "| weights MB/token | bound tok/s | exported / bound | same ids as compiled | Q8_0 ids = int8's "
             "| Q8_0 ids = int8, int8 x's | first compiled call s | exported decoder built in s |"]
    lines.append("| --- " * (lines[0].count("|") - 1) + "|")

    def ratio(r, a, b):
        return f"{r['median'][a] / r['median'][b]:.2f}x" if a in r["median"] and b in r["median"] else "-"

    for r in results:
        cells = [f"{r['median'][c]:.0f} ({max(r['tok_s'][c]):.0f})" if c in r["median"] else "skipped"
                 for c in COLUMNS]
        bound = bandwidth / r["weight_bytes_per_token"]
        f32 = {k: d for k, d in r["agreement"].items() if "Q8_0" not in k}
        same = "yes" if not any(f32.values()) else "; ".join(f"{k} {agreement_cell(d)}" for k, d in f32.items() if d)
        q8 = r["agreement"].get("llama.cpp Q8_0 vs int8", "-")
        q8x = r["agreement"].get("llama.cpp Q8_0 vs int8, int8 x", "-")
        lines.append(f"| {r['config']} | " + " | ".join(cells)
                     + f" | {ratio(r, 'exported', 'compiled')} | {ratio(r, 'exported', 'transformers')} "
                     f"| {ratio(r, 'compiled', 'llama.cpp F32')} | {ratio(r, 'exported', 'llama.cpp F32')} "
                     f"| {ratio(r, 'int8', 'llama.cpp Q8_0')} | {ratio(r, 'int8', 'exported')} "
                     f"| {ratio(r, 'int8, int8 x', 'llama.cpp Q8_0')} | {ratio(r, 'int8, int8 x', 'exported')} "
                     f"| {r['weight_bytes_per_token'] / 1e6:.0f} | {bound:.0f} | {r['median']['exported'] / bound:.0%} "
                     f"| {same} | {q8 if q8 == '-' else agreement_cell(q8)} "
                     f"| {q8x if q8x == '-' else agreement_cell(q8x)} "
                     f"| {r['compile_s']:.1f} | {r['export_s']:.1f}{' (from cache)' if r['export_cached'] else ''} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of every engine: torch's and llama.cpp's n_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per engine and config (default 3)")
    parser.add_argument("--configs", nargs="+", default=["15M", "110M"], choices=list(CONFIGS),
                        help="which configs to run (default: 15M 110M)")
    parser.add_argument("--quick", action="store_true", help="tiny config, 2 repeats: a smoke test")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's table of one generation")
    parser.add_argument("--save", action="store_true",
                        help="write the results to benchmarks/results/decode.json and decode.md (what the book shows)")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.repeats = ["tiny"], 2
    torch.set_num_threads(args.threads)
    import transformers

    command = f"python benchmarks/decode.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
    info = machine()
    print(f"command: {command}")
    print(machine_line(info))
    peer = llama_cpp_unavailable()
    versions = f"transformers {transformers.__version__}, llama-cpp-python {llama_cpp_version() or '-'}"
    print(f"{versions}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"llama.cpp: {'skipped: ' + peer if peer else 'llama-cpp-python ' + llama_cpp_version()}")
    cold = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1"
    print(f"Inductor caches {'disabled: compile times are cold' if cold else 'enabled: a rerun compiles from cache'}")
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth (256 MiB, read + write): {bandwidth / 1e9:.1f} GB/s")
    reads = read_bandwidths()
    print("weights read by F.linear(1 x 768 vector, 2048 x 768 matrix), 40 matrices: "
          f"{reads['row-major'] / 1e9:.1f} GB/s row-major, {reads['column-major'] / 1e9:.1f} GB/s column-major; "
          f"torch.sum over 256 MiB reads {reads['sum'] / 1e9:.1f} GB/s")
    print(f"batch 1, greedy, {PROMPT_LEN}-token prompt + {NEW_TOKENS} new tokens; "
          f"tok/s = {NEW_TOKENS} / time of the whole generate call; median (best) of {args.repeats}\n", flush=True)
    results = []
    for name in args.configs:
        results.append(bench_config(name, CONFIGS[name], args.repeats, args.threads, peer, args.profile))
        print(f"{name} done", flush=True)
    lines = table(results, bandwidth)
    print("\n" + "\n".join(lines) + "\n")
    for r in results:
        for engine, d in r["agreement"].items():
            against = engine.split(" vs ")[1] if "Q8_0" in engine else "the compiled decoder"
            print(f"{r['config']}: {engine}: " + ("the same 128 greedy ids as " + against if d is None else
                  f"the same ids as {against} for {d['position']} of {NEW_TOKENS}, then another"
                  + ("" if d["gap"] is None else f", where our logits preferred ours by {d['gap']:.2g} "
                     f"({d['gap'] / d['std']:.2%} of their standard deviation)")))
    load_end = os.getloadavg()[0]
    print(f"\nload average at end {load_end:.2f} (other processes share these cores)")
    if args.save:
        out = REPO / "benchmarks" / "results"
        record = {"command": command, "machine": info, "versions": versions, "bandwidth_bytes_s": bandwidth,
                  "reads_bytes_s": reads, "load_average_at_end": load_end, "repeats": args.repeats,
                  "results": results}
        (out / "decode.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "decode.md").write_text(f"`{command}`; {machine_line(info)}; {versions}; copy bandwidth "
                                       f"{bandwidth / 1e9:.1f} GB/s\n\n" + "\n".join(lines) + "\n")
        print(f"wrote {out / 'decode.json'} and decode.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
