"""Continuous batching under load: aggregate tokens/s and time to first token of ``llama serve`` at 1, 4 and 16 concurrent clients.

Run from the repository root::

    python benchmarks/serve.py            # the stories15M-like model, 16 slots (about a minute on 2 cores)
    python benchmarks/serve.py --save     # the same, then benchmarks/results/serve.{json,md}
    python benchmarks/serve.py --quick    # a tiny model, a few requests: check that the script runs

The model is ``benchmarks/decode.py``'s stories15M-like configuration with its seeded weights
(:func:`decode.scaled_random_model`), saved with Llama 2's tokenizer (``llama download
llama2-tokenizer``), and served by ``llama serve --slots 16`` on 127.0.0.1 at a free port: the load
never leaves this machine. At each level, ``C`` clients (asyncio tasks of this process, each with
its own connection) send :data:`REQUESTS` ``[C]`` requests one after another: a streamed completion
of a prompt of their own, ``max_tokens`` :data:`NEW_TOKENS`, greedy. One untimed request warms the
server up first.

- aggregate tokens/s: the completion tokens of every request of the level (the server's own
  ``usage`` count), divided by the level's wall time;
- time to first token (TTFT): from sending a request to receiving its first chunk of text; its
  median (p50) and 99th percentile (p99, nearest rank) over the level's requests.

The goal of the issue: at 16 clients, at least 3x the aggregate throughput of one client. Decoding
is memory-bound, so a step of 16 rows costs little more than a step of one. The server is stopped
by SIGTERM at the end (killed if it does not stop), also when a level fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, machine_line  # noqa: E402

LEVELS = [1, 4, 16]
#: Requests each client sends, one after another, at each level: every level lasts long enough
#: to time, and has enough first tokens for a percentile.
REQUESTS = {1: 8, 4: 4, 16: 3}
NEW_TOKENS = 64
SLOTS = 16
QUICK = {"levels": [1, 4], "requests": {1: 2, 4: 1}, "new_tokens": 8}


def write_model(folder: Path, quick: bool) -> None:
    """The served checkpoint: stories15M-like seeded weights and Llama 2's tokenizer (or, ``quick``, a tiny
    model and a byte tokenizer, which need no download)."""
    from llama.formats.load import save_model
    from llama.model.config import ModelConfig

    if quick:
        import decode

        from llama.tokenizers.bpe import BPETokenizer

        save_model(decode.scaled_random_model(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=256,
                                                          max_seq_len=128)), folder)
        BPETokenizer([]).save(folder / "tokenizer.json")
        return
    import decode

    from llama.data.sources import find_data

    tokenizer = find_data("llama2-tokenizer.model")
    if tokenizer is None:
        raise SystemExit("llama2-tokenizer.model not found: run `llama download llama2-tokenizer` (or use --quick)")
    save_model(decode.scaled_random_model(decode.CONFIGS["15M"]), folder)
    shutil.copy(tokenizer, folder / "tokenizer.model")


def start_server(folder: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``llama serve FOLDER`` on 127.0.0.1 and a free port; returns the process and its URL."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llama.cli", "serve", str(folder), "--host", "127.0.0.1",
                                 "--port", "0", "--slots", str(SLOTS), "--queue", str(4 * SLOTS)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 300
    while not (found := re.search(r"http://127\.0\.0\.1:\d+/", log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"llama serve did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc, found.group(0)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def one_request(http, prompt: str, new_tokens: int) -> tuple[float, int]:
    """``(time to first token in s, completion tokens)`` of one streamed greedy completion."""
    body = {"model": "model", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", "v1/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"the server answered {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - start), tokens


async def level(url: str, clients: int, requests: int, new_tokens: int) -> dict:
    """``clients`` concurrent clients of ``requests`` requests each; the level's numbers."""
    import httpx

    async def client(k: int) -> list[tuple[float, int]]:
        # A connection of its own per client, as separate programs would have.
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            return [await one_request(http, f"Once upon a time, client {k} told story {r}.", new_tokens)
                    for r in range(requests)]

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*[client(k) for k in range(clients)]) for r in rs]
    wall = time.perf_counter() - start
    ttfts = sorted(t for t, _ in results)
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1), "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
            "ttft_p99_ms": round(1000 * ttfts[max(0, math.ceil(0.99 * len(ttfts)) - 1)], 1)}


def table(rows: list[dict]) -> list[str]:
    base = rows[0]["tokens_per_s"]
    lines = ["| concurrent clients | requests | tokens | aggregate tokens/s | vs 1 client | TTFT p50 (ms) | TTFT p99 (ms) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['tokens_per_s']:,.1f} | "
                     f"{r['tokens_per_s'] / base:.2f}x | {r['ttft_p50_ms']:,.1f} | {r['ttft_p99_ms']:,.1f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, a few requests: check that the script runs")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/serve.json and serve.md")
    args = parser.parse_args(argv)
    if args.quick and args.save:
        parser.error("--quick measures nothing worth keeping: run without it to --save")
    levels = QUICK["levels"] if args.quick else LEVELS
    requests = QUICK["requests"] if args.quick else REQUESTS
    new_tokens = QUICK["new_tokens"] if args.quick else NEW_TOKENS
    print(machine_line(), flush=True)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_model(folder, args.quick)
        proc, url = start_server(folder, Path(tmp) / "stderr.txt")
        try:
            asyncio.run(level(url, 1, 1, new_tokens))  # warm-up: first calls of every kernel
            rows = []
            for clients in levels:
                rows.append(asyncio.run(level(url, clients, requests[clients], new_tokens)))
                r = rows[-1]
                print(f"{clients:>2} clients: {r['tokens_per_s']:8.1f} tokens/s, TTFT p50 {r['ttft_p50_ms']:.1f} ms, "
                      f"p99 {r['ttft_p99_ms']:.1f} ms ({r['requests']} requests, {r['wall_s']:.1f} s)", flush=True)
        finally:
            stop_server(proc)
        if proc.returncode != 0:
            raise SystemExit(f"llama serve exited with {proc.returncode}:\n{(Path(tmp) / 'stderr.txt').read_text()}")
    load_end = os.getloadavg()[0]
    print("\n".join(table(rows)))
    if args.save:
        import torch

        command, info = "python benchmarks/serve.py --save", machine()
        config = "stories15M-like (dim 288, 6 layers, 6 heads, vocabulary 32,000, context 256)"
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "serve.json").write_text(json.dumps(
            {"command": command, "machine": info, "threads": torch.get_num_threads(), "model": config,
             "slots": SLOTS, "new_tokens": new_tokens, "load_average": [round(load_start, 2), round(load_end, 2)],
             "rows": rows}, indent=1) + "\n")
        (RESULTS / "serve.md").write_text(
            f"`{command}`; {machine_line(info)}; load average {load_start:.2f} at the start, {load_end:.2f} at the "
            f"end; `llama serve --slots {SLOTS}` on the {config} model; each request a streamed greedy completion "
            f"of {new_tokens} tokens\n\n" + "\n".join(table(rows)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
