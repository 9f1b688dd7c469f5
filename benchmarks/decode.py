"""Decode speed of ``llama.generate`` against transformers' ``generate``, and the memory-bandwidth bound.

Batch 1, float32, greedy, an 8-token prompt then 128 new tokens, on identical random weights
(our model's weights converted with :func:`llama.convert.llama_to_hf_state_dict`), with the same
thread count for both. "ours" is ``llama.generate`` after :func:`llama.generation.prepare_for_decoding`
(the same values, matrices stored column-major); "ours, row-major weights" is the model as built;
"ours, compiled" is :class:`llama.generation.CompiledDecoder` on the model as built (the one-token
step compiled by ``torch.compile``, the prefill eager). Each engine gets one untimed warm-up call
(for the compiled one it includes the compilation, whose time is printed: with a cold Inductor
cache, i.e. ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``, it is the full compile time); then the timed
calls of the engines alternate, so a burst of load from another process hits both alike. The time of a call
covers the whole ``generate`` (the 8-token prefill included, for both); tokens/s is 128 divided
by it. The median and the best of the repeats are printed.

The bound: decoding one token reads every weight matrix once (the output head included; of the
embedding only one row), so no implementation can beat ``copy bandwidth / weight bytes`` tokens
per second. The bandwidth is measured here by copying a 256 MiB tensor, counting the bytes read
and the bytes written.

Run from the repository root::

    python benchmarks/decode.py            # both configs, 2 threads, 5 repeats
    python benchmarks/decode.py --quick    # a small config, to check that the script works
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch

from llama import ModelConfig, Transformer
from llama.convert import llama_to_hf_state_dict
from llama.generation import CompiledDecoder, generate, prepare_for_decoding

CONFIGS = {
    # The two sizes of the issue: stories15M- and stories110M-like, shared embedding/output.
    "15M": ModelConfig(dim=288, n_layers=6, n_heads=6, vocab_size=32000, hidden_dim=768, max_seq_len=256,
                       tie_embeddings=True),
    "110M": ModelConfig(dim=768, n_layers=12, n_heads=12, vocab_size=32000, hidden_dim=2048, max_seq_len=1024,
                        tie_embeddings=True),
    # --quick: small enough to run in a second (used by the tests).
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, hidden_dim=128,
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


def hf_twin(model: Transformer):
    """transformers' LlamaForCausalLM with ``model``'s weights, set to never stop early."""
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
    missing, unexpected = hf.load_state_dict(llama_to_hf_state_dict(model.state_dict(), model.config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.generation_config.eos_token_id = None  # random weights: no token may end the run early
    hf.generation_config.pad_token_id = 0
    return hf


def bench_config(name: str, config: ModelConfig, repeats: int) -> dict:
    torch.manual_seed(0)
    model = Transformer(config).eval()
    hf = hf_twin(model)
    laid_out = prepare_for_decoding(copy.deepcopy(model))  # same values, column-major matrices
    prompt = torch.randint(1, config.vocab_size, (PROMPT_LEN,), generator=torch.Generator().manual_seed(1)).tolist()
    input_ids = torch.tensor([prompt])
    attention_mask = torch.ones_like(input_ids)

    def ours():
        return generate(laid_out, prompt, NEW_TOKENS)

    def ours_default_layout():
        return generate(model, prompt, NEW_TOKENS)

    def theirs():
        with torch.inference_mode():
            out = hf.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                              max_new_tokens=NEW_TOKENS, min_new_tokens=0)
        return out[0, PROMPT_LEN:].tolist()

    decoder = CompiledDecoder(model, max_seq_len=PROMPT_LEN + NEW_TOKENS)

    def ours_compiled():
        return decoder.generate(prompt, NEW_TOKENS)

    engines = {"ours": ours, "ours_row_major": ours_default_layout, "ours_compiled": ours_compiled, "theirs": theirs}
    compile_s = _timed(ours_compiled)  # the first call compiles the decode step
    ids = {key: fn() for key, fn in engines.items()}  # warm-up, not timed; also the agreement check
    times = {key: [] for key in engines}
    for _ in range(repeats):  # interleaved, so load from other processes hits every engine alike
        for key, fn in engines.items():
            times[key].append(_timed(fn))
    return {
        "name": name,
        **{key: [NEW_TOKENS / t for t in ts] for key, ts in times.items()},
        "same_ids": ids["ours"] == ids["theirs"] == ids["ours_row_major"] == ids["ours_compiled"],
        "compile_s": compile_s,
        "bytes": weight_bytes_per_token(config),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both engines (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per engine and config (default 5)")
    parser.add_argument("--configs", nargs="+", default=["15M", "110M"], choices=list(CONFIGS),
                        help="which configs to run (default: 15M 110M)")
    parser.add_argument("--quick", action="store_true", help="tiny config, 2 repeats: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.repeats = ["tiny"], 2
    torch.set_num_threads(args.threads)
    import transformers

    print(f"command: python benchmarks/decode.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    cold = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1"
    print(f"Inductor caches {'disabled: compile times are cold' if cold else 'enabled: a rerun compiles from cache'}")
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth (256 MiB, read + write): {bandwidth / 1e9:.1f} GB/s")
    reads = read_bandwidths()
    print("weights read by F.linear(1 x 768 vector, 2048 x 768 matrix), 40 matrices: "
          f"{reads['row-major'] / 1e9:.1f} GB/s row-major, {reads['column-major'] / 1e9:.1f} GB/s column-major; "
          f"torch.sum over 256 MiB reads {reads['sum'] / 1e9:.1f} GB/s")
    print(f"batch 1, float32, greedy, {PROMPT_LEN}-token prompt + {NEW_TOKENS} new tokens; "
          f"tok/s = {NEW_TOKENS} / time of the whole generate call; median (best) of {args.repeats}")
    print()
    header = ("| config | ours tok/s | ours, row-major weights | ours, compiled | transformers tok/s "
              "| speed-up (median) | compiled speed-up | weights MB/token | bound tok/s | ours / bound "
              "| compiled / bound | same ids | first compiled call s |")
    print(header)
    print("| --- " * (header.count("|") - 1) + "|")
    for name in args.configs:
        r = bench_config(name, CONFIGS[name], args.repeats)
        ours_med, theirs_med = statistics.median(r["ours"]), statistics.median(r["theirs"])
        row_med, comp_med = statistics.median(r["ours_row_major"]), statistics.median(r["ours_compiled"])
        bound = bandwidth / r["bytes"]
        print(f"| {name} | {ours_med:.0f} ({max(r['ours']):.0f}) | {row_med:.0f} ({max(r['ours_row_major']):.0f}) "
              f"| {comp_med:.0f} ({max(r['ours_compiled']):.0f}) | {theirs_med:.0f} ({max(r['theirs']):.0f}) "
              f"| {ours_med / theirs_med:.2f}x | {comp_med / theirs_med:.2f}x | {r['bytes'] / 1e6:.0f} | {bound:.0f} "
              f"| {ours_med / bound:.0%} | {comp_med / bound:.0%} | {'yes' if r['same_ids'] else 'NO'} "
              f"| {r['compile_s']:.1f} |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (other processes share these cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
