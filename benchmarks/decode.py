"""Decode speed of ``llama.generate`` against transformers and llama2.c's ``run.c``, and the bandwidth bound.

Run from the repository root::

    python benchmarks/decode.py            # both configs, 2 threads, 5 repeats
    python benchmarks/decode.py --quick    # a small config, to check that the script works

The work: batch 1, float32, greedy, an 8-token prompt (BOS included) then 128 new tokens, on
identical random weights of a stories15M-like and a stories110M-like config, every engine with
the same thread count. Each engine gets one untimed warm-up call; then the timed calls of the
engines alternate, so a burst of load from another process hits all alike. The time of a call
covers the whole generation, the prefill included; tokens/s is 128 divided by it. Each cell is
the median (best) of the repeats. The columns:

- ours: ``llama.generate`` after :func:`llama.generation.prepare_for_decoding` (the same values,
  matrices stored column-major).
- ours, row-major weights: ``llama.generate`` on the model as built.
- ours, compiled: :class:`llama.generation.CompiledDecoder` on the model as built (the one-token
  step compiled by ``torch.compile``, the prefill eager). Its warm-up call compiles; its time is
  the last column (with a cold Inductor cache, ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``, the full
  compile time).
- transformers: ``LlamaForCausalLM.generate`` with our weights converted by
  :func:`llama.convert.llama_to_hf_state_dict`.
- run.c: karpathy's llama2.c, the plain-C peer, compiled here with gcc into a temporary folder
  from ``$LLAMA_DATA_DIR/llama2c/run.c`` (default ``../shared/data``) and run on the same weights
  written by :func:`llama.llama2c.save_llama2c`, with ``OMP_NUM_THREADS`` set to the thread
  count. run.c takes a text prompt: the prompt is the longest run of words of a fixed sentence
  that run.c's encoder turns into 8 ids, and those ids are every engine's prompt. run.c runs one
  position per prompt token and per new token but the last (``-n 135``) and times positions 2 to
  135 itself (the first pays the page faults of its freshly mapped weights); its tokens/s is 128
  over the time of all 135 positions at that rate. Skipped, with the reason, without gcc or the
  data folder.
- speed-up, compiled speed-up, compiled / run.c, ours / run.c: ratios of the medians.
- weights MB/token, bound tok/s, ... / bound: decoding one token reads every weight matrix once
  (the output head included; of the embedding only one row), so when the weights stream from
  memory no implementation can beat ``copy bandwidth / weight bytes`` tokens per second. The
  bandwidth is measured here by copying a 256 MiB tensor, counting the bytes read and the bytes
  written. Weights that partly fit in the last-level cache (the 15M configuration's layers) can
  be read faster, so a tight loop may exceed this bound there.
- same ids: ours (both layouts), compiled and transformers chose the same 128 ids. run.c same
  text: run.c printed exactly the bytes that its tokenizer's pieces give for our ids (it prints
  text, not ids).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llama import ModelConfig, Transformer
from llama.llama2c import save_llama2c
from llama.convert import llama_to_hf_state_dict
from llama.generation import CompiledDecoder, generate, prepare_for_decoding

CONFIGS = {
    # The two sizes of the issue: stories15M- and stories110M-like, shared embedding/output.
    "15M": ModelConfig(dim=288, n_layers=6, n_heads=6, vocab_size=32000, hidden_dim=768, max_seq_len=256,
                       tie_embeddings=True),
    "110M": ModelConfig(dim=768, n_layers=12, n_heads=12, vocab_size=32000, hidden_dim=2048, max_seq_len=1024,
                        tie_embeddings=True),
    # --quick: small enough to run in a second. Llama 2's vocabulary, so run.c can encode a prompt
    # with tokenizer.bin (its space piece is id 29871) and the smoke test covers that column too.
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


def hf_twin(model: Transformer):
    """transformers' LlamaForCausalLM with ``model``'s weights, set to never stop early."""
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
    missing, unexpected = hf.load_state_dict(llama_to_hf_state_dict(model.state_dict(), model.config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.generation_config.eos_token_id = None  # random weights: no token may end the run early
    hf.generation_config.pad_token_id = 0
    return hf

# ------------------------------------------------------------------------------ llama2.c's run.c
REPO = Path(__file__).resolve().parent.parent
#: The first words of a TinyStories-like text; the prompt is the longest run of them that run.c
#: encodes to exactly PROMPT_LEN tokens (BOS included), so every engine gets the same prompt ids.
PROMPT_WORDS = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun."
RUN_C_FLAGS = ["-Ofast", "-fopenmp", "-march=native"]  # llama2.c's own "make runfast" + OpenMP


class Llama2cTokenizer:
    """llama2.c's ``tokenizer.bin`` read the way ``run.c`` reads it, for its first ``vocab_size`` pieces.

    :meth:`encode` is run.c's encoder (BOS, a leading-space piece, code points or their bytes + 3,
    then greedy merges of the best-scoring adjacent pair), so the prompt ids given to the other
    engines are the ids run.c will run; :meth:`printed` is what run.c writes to stdout for a
    sequence of ids, so its output can be checked against ours.
    """

    def __init__(self, path: Path, vocab_size: int) -> None:
        data = path.read_bytes()
        self.pieces, self.scores, offset = [], [], 4  # after max_token_length
        for _ in range(vocab_size):
            if offset + 8 > len(data):
                raise ValueError(f"{path} has fewer than {vocab_size} pieces: not the model's tokenizer")
            score, length = struct.unpack_from("<fi", data, offset)
            self.scores.append(score)
            self.pieces.append(data[offset + 8: offset + 8 + length])
            offset += 8 + length
        self.ids = {piece: i for i, piece in reversed(list(enumerate(self.pieces)))}

    def encode(self, text: str) -> list[int]:
        """run.c's ``encode(tokenizer, text, bos=1, eos=0)``; raises ValueError where run.c would index out of range."""
        if b" " not in self.ids:
            raise ValueError(f"no ' ' piece among the first {len(self.pieces)}: run.c would read outside the "
                             "vocabulary for the leading space of a prompt")
        raw, chars = text.encode("utf-8"), []
        for byte in raw:  # a code point is a leading byte and up to 3 continuation bytes
            if (byte & 0xC0) != 0x80 or not chars or len(chars[-1]) == 4:
                chars.append(bytearray())
            chars[-1].append(byte)
        ids = [1, self.ids[b" "]] if text else [1]
        for char in map(bytes, chars):
            ids += [self.ids[char]] if char in self.ids else [b + 3 for b in char]
        if max(ids) >= len(self.pieces):
            raise ValueError(f"{text!r} needs byte pieces beyond the vocabulary of {len(self.pieces)}")
        while True:
            best = None  # (score, index, id); the leftmost pair wins a tie, as in run.c
            for i in range(len(ids) - 1):
                merged = self.ids.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if merged is not None and (best is None or self.scores[merged] > best[0]):
                    best = (self.scores[merged], i, merged)
            if best is None:
                return ids
            ids[best[1]: best[1] + 2] = [best[2]]

    def printed(self, ids: list[int]) -> bytes:
        """The bytes run.c prints for ``ids`` (BOS first): the pieces after BOS, unprintable bytes dropped."""
        out = []
        for prev, token in zip(ids, ids[1:]):
            if token == 1:
                break  # run.c stops at a BOS
            piece = self.pieces[token]
            if prev == 1 and piece.startswith(b" "):
                piece = piece[1:]
            byte = re.match(rb"<0x([0-9A-Fa-f]{1,2})", piece)
            if byte:
                piece = bytes([int(byte.group(1), 16)]).rstrip(b"\0")
            if len(piece) == 1 and not (0x20 <= piece[0] <= 0x7E or 0x09 <= piece[0] <= 0x0D):
                continue  # run.c's safe_printf: a lone byte is printed only if printable or a space
            out.append(piece)
        return b"".join(out) + b"\n"


def find_run_c() -> tuple[Path, Path] | str:
    """``(run.c, tokenizer.bin)`` from the data folder (``$LLAMA_DATA_DIR``, else ``../shared/data``), or why not."""
    data = Path(os.environ.get("LLAMA_DATA_DIR", REPO.parent / "shared" / "data")) / "llama2c"
    source, tokenizer = data / "run.c", data / "tokenizer.bin"
    for path in (source, tokenizer):
        if not path.is_file():
            return f"{path} not found (set LLAMA_DATA_DIR to the folder that holds llama2c/)"
    if shutil.which("gcc") is None:
        return "gcc not found: run.c cannot be compiled"
    return source, tokenizer


class RunC:
    """llama2.c's ``run.c``, compiled into ``folder``, decoding a model saved there with :func:`save_llama2c`."""

    def __init__(self, source: Path, tokenizer: Path, folder: Path, threads: int) -> None:
        self.tokenizer_path, self.folder, self.binary = tokenizer, folder, folder / "run"
        subprocess.run(["gcc", *RUN_C_FLAGS, str(source), "-lm", "-o", str(self.binary)],
                       check=True, capture_output=True)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # the same thread count as torch's

    def load(self, model: Transformer) -> Llama2cTokenizer:
        """Write ``model`` as ``model.bin``; return the tokenizer cut to its vocabulary."""
        save_llama2c(model.state_dict(), model.config, self.folder / "model.bin")
        return Llama2cTokenizer(self.tokenizer_path, model.config.vocab_size)

    def generate(self, text: str, steps: int) -> tuple[bytes, float]:
        """Greedy decoding of ``steps`` positions after ``text``: (stdout, positions/s as run.c reports it)."""
        proc = subprocess.run([str(self.binary), str(self.folder / "model.bin"), "-z", str(self.tokenizer_path),
                               "-t", "0", "-n", str(steps), "-i", text], env=self.env, capture_output=True, check=True)
        rate = re.search(rb"achieved tok/s: ([0-9.]+|inf)", proc.stderr)
        if rate is None:
            raise RuntimeError(f"run.c printed no 'achieved tok/s': {proc.stderr.decode(errors='replace')[-200:]}")
        return proc.stdout, float(rate.group(1))


def run_c_prompt(tokenizer: Llama2cTokenizer, length: int) -> tuple[str, list[int]]:
    """The longest run of :data:`PROMPT_WORDS` that run.c encodes to ``length`` ids, and the ids."""
    words = PROMPT_WORDS.split(" ")
    for n in range(len(words), 0, -1):
        text = " ".join(words[:n])
        ids = tokenizer.encode(text)
        if len(ids) == length:
            return text, ids
    raise ValueError(f"no run of the prompt words encodes to {length} tokens with this vocabulary")


def engines_prompt(run_c: RunC | str, model) -> tuple[RunC | str, Llama2cTokenizer | None, str | None, list[int]]:
    """``(run_c, tokenizer, text, prompt ids)`` every engine decodes from: run.c encodes a text, and
    the others get the ids it makes of it; without run.c (or when no text fits), seeded random ids.
    ``run_c`` comes back as the reason it is skipped when the model's vocabulary cannot make the prompt."""
    if isinstance(run_c, RunC):
        try:
            tokenizer = run_c.load(model)
            text, prompt = run_c_prompt(tokenizer, PROMPT_LEN)
            return run_c, tokenizer, text, prompt
        except ValueError as err:
            run_c = f"skipped for this config: {err}"
    generator = torch.Generator().manual_seed(1)
    return run_c, None, None, torch.randint(1, model.config.vocab_size, (PROMPT_LEN,), generator=generator).tolist()


def bench_config(name: str, config: ModelConfig, repeats: int, run_c: RunC | str) -> dict:
    """Time every engine on one config; ``run_c`` is the compiled peer, or the reason it is skipped."""
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        # At init scale the blocks barely move the residual stream and the shared head answers the
        # last token with itself: every engine would print "was was was ...", and agreeing on that
        # proves little. Ten times larger matrices make the ids depend on every layer.
        for key, weight in model.named_parameters():
            if key.startswith("layers.") and weight.ndim == 2:
                weight.mul_(10)
    hf = hf_twin(model)
    laid_out = prepare_for_decoding(copy.deepcopy(model))  # same values, column-major matrices
    run_c, tokenizer, text, prompt = engines_prompt(run_c, model)
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
    # run.c runs one position per step, the prompt's included; the last new token needs none.
    steps = PROMPT_LEN + NEW_TOKENS - 1
    compile_s = _timed(ours_compiled)  # the first call compiles the decode step
    ids = {key: fn() for key, fn in engines.items()}  # warm-up, not timed; also the agreement check
    times = {key: [] for key in engines}
    run_c_rates, run_c_same = [], None
    if isinstance(run_c, RunC):
        printed, _ = run_c.generate(text, steps)  # warm-up: the page cache, the OpenMP threads
        run_c_same = printed == tokenizer.printed(prompt + ids["ours"])
    for _ in range(repeats):  # interleaved, so load from other processes hits every engine alike
        for key, fn in engines.items():
            times[key].append(_timed(fn))
        if isinstance(run_c, RunC):
            # run.c times its positions 2..steps (the first one pays the page faults of its weights);
            # at that rate all `steps` positions, prefill included, are the whole call, as for the others.
            run_c_rates.append(NEW_TOKENS * run_c.generate(text, steps)[1] / steps)
    return {
        "name": name,
        **{key: [NEW_TOKENS / t for t in ts] for key, ts in times.items()},
        "run_c": run_c_rates,
        "run_c_skipped": None if isinstance(run_c, RunC) else run_c,
        "run_c_same": run_c_same,
        "prompt_text": text,
        "same_ids": ids["ours"] == ids["theirs"] == ids["ours_row_major"] == ids["ours_compiled"],
        "compile_s": compile_s,
        "bytes": weight_bytes_per_token(config),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of every engine: torch threads and run.c's OMP_NUM_THREADS (default 2)")
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
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as folder:
        run_c = find_run_c()
        if isinstance(run_c, tuple):
            try:
                run_c = RunC(*run_c, Path(folder), args.threads)
            except subprocess.CalledProcessError as err:
                run_c = f"gcc failed to compile run.c: {err.stderr.decode(errors='replace').strip()[-300:]}"
        if isinstance(run_c, RunC):
            gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
            print(f"run.c: llama2.c's run.c, {gcc} {' '.join(RUN_C_FLAGS)}, OMP_NUM_THREADS={args.threads}, "
                  f"-t 0 -n {PROMPT_LEN + NEW_TOKENS - 1} (one position per prompt token and per new token but "
                  f"the last); its tok/s = {NEW_TOKENS} x (its own positions/s, timed from the 2nd position) / "
                  f"{PROMPT_LEN + NEW_TOKENS - 1}")
        else:
            print(f"run.c: skipped: {run_c}")
        print()
        header = ("| config | ours tok/s | ours, row-major weights | ours, compiled | transformers tok/s | run.c tok/s "
                  "| speed-up (median) | compiled speed-up | compiled / run.c | ours / run.c | weights MB/token "
                  "| bound tok/s | ours / bound | compiled / bound | run.c / bound | same ids | run.c same text "
                  "| first compiled call s |")
        print(header)
        print("| --- " * (header.count("|") - 1) + "|")
        notes = []
        for name in args.configs:
            r = bench_config(name, CONFIGS[name], args.repeats, run_c)
            ours_med, theirs_med = statistics.median(r["ours"]), statistics.median(r["theirs"])
            row_med, comp_med = statistics.median(r["ours_row_major"]), statistics.median(r["ours_compiled"])
            bound = bandwidth / r["bytes"]
            if r["run_c"]:
                c_med = statistics.median(r["run_c"])
                c_cells = (f"{c_med:.0f} ({max(r['run_c']):.0f})", f"{comp_med / c_med:.2f}x",
                           f"{ours_med / c_med:.2f}x", f"{c_med / bound:.0%}", "yes" if r["run_c_same"] else "NO")
                notes.append(f"{name}: prompt {r['prompt_text']!r}, {PROMPT_LEN} ids with BOS for every engine")
            else:
                c_cells = ("skipped",) * 4 + ("-",)
                notes.append(f"{name}: run.c {r['run_c_skipped']}")
            print(f"| {name} | {ours_med:.0f} ({max(r['ours']):.0f}) | {row_med:.0f} ({max(r['ours_row_major']):.0f}) "
                  f"| {comp_med:.0f} ({max(r['ours_compiled']):.0f}) | {theirs_med:.0f} ({max(r['theirs']):.0f}) "
                  f"| {c_cells[0]} | {ours_med / theirs_med:.2f}x | {comp_med / theirs_med:.2f}x | {c_cells[1]} "
                  f"| {c_cells[2]} | {r['bytes'] / 1e6:.0f} | {bound:.0f} | {ours_med / bound:.0%} "
                  f"| {comp_med / bound:.0%} | {c_cells[3]} | {'yes' if r['same_ids'] else 'NO'} | {c_cells[4]} "
                  f"| {r['compile_s']:.1f} |", flush=True)
    print()
    for note in notes:
        print(note)
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (other processes share these cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
