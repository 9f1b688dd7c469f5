"""The training chapter's numbers: the 120-second recipe, training throughput against transformers, bf16 vs float32.

Run from the repository root::

    python benchmarks/train.py quality      # the book's recipe: RECIPE_COMMAND, then its figures
    python benchmarks/train.py throughput   # tokens/s of a training step: ours vs LlamaForCausalLM
    python benchmarks/train.py precision    # float32 vs bfloat16 autocast, our model
    python benchmarks/train.py --quick throughput precision   # tiny sizes, to check the script runs

``quality`` runs exactly :data:`RECIPE_COMMAND` (the chapter shows it, and a test checks the
two are the same), with Tiny Shakespeare found as ``llama train`` finds it. It prints the final
validation figures and copies the run's ``log.jsonl`` and ``samples.txt`` to
``benchmarks/results/`` (the chapter's loss figure is drawn from that log).

``throughput`` trains the same model two ways: our :class:`llama.model.Transformer` and
transformers' ``LlamaForCausalLM`` (``sdpa`` attention), same config (the recipe's model),
same initial weights, same batch (8 x 256 tokens), the same loss function, the same AdamW
(:func:`llama.train.make_optimizer`, fused) and gradient clipping, the same thread count. Each
gets untimed warm-up steps; then timed rounds alternate between the two so that a burst of load
from another process hits both alike. A round is ``--steps`` optimizer steps; tokens/s is
tokens in the round over its wall time; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

#: The book's recipe: every other setting is ``llama train``'s default (see llama.train_config.TrainConfig).
RECIPE_ARGS = ["--out", "runs/shakespeare", "--max-time", "120", "--dtype", "bfloat16"]
RECIPE_COMMAND = shlex.join(["llama", "train", *RECIPE_ARGS])


def run_quality() -> dict:
    out = REPO / "runs" / "shakespeare"
    if out.exists():
        shutil.rmtree(out)
    argv = shlex.split(RECIPE_COMMAND)
    assert argv[:2] == ["llama", "train"]
    cmd = [sys.executable, "-m", "llama.cli", *argv[1:]]  # the console script, without relying on PATH
    print("$", RECIPE_COMMAND, flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    from llama.train_state import read_log

    log = read_log(out / "log.jsonl")
    final = log[-1]
    last_periodic = log[-2]
    figures = {
        "command": RECIPE_COMMAND,
        "val_bpb": final["val_bpb"],
        "val_loss_nats_per_token": final["val_loss"],
        "val_ppl": final["val_ppl"],
        "val_tokens": final["val_tokens"],
        "val_bytes": final["val_bytes"],
        "steps": final["step"],
        "train_tokens": final["tokens"],
        "training_loop_s": last_periodic["elapsed"],
        "command_wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "log.jsonl", RESULTS / "train-log.jsonl")
    shutil.copyfile(out / "samples.txt", RESULTS / "train-samples.txt")
    (RESULTS / "train-quality.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return figures


# ------------------------------------------------------------------------------- throughput
def _engines(config, compile_: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama import Transformer
    from llama.convert import llama_to_hf_state_dict

    torch.manual_seed(0)
    ours = Transformer(config)
    hf_config = LlamaConfig(**config.to_hf())
    hf_config._attn_implementation = "sdpa"
    hf = LlamaForCausalLM(hf_config)
    hf.load_state_dict(llama_to_hf_state_dict(ours.state_dict(), config), strict=False)
    fwd_ours = lambda x: ours(x)  # noqa: E731
    fwd_hf = lambda x: hf(input_ids=x, use_cache=False).logits  # noqa: E731
    if compile_:
        fwd_ours, fwd_hf = torch.compile(fwd_ours), torch.compile(fwd_hf)
    return {"llama (ours)": (ours, fwd_ours), "transformers LlamaForCausalLM": (hf, fwd_hf)}


def _step_fn(model, forward, batch, dtype):
    from llama.train import cross_entropy, make_optimizer

    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    x, y = batch

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = forward(x)
        loss = cross_entropy(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _race(steps_fns: dict, tokens_per_step: int, warmup: int, steps: int, rounds: int) -> dict:
    for fn in steps_fns.values():
        for _ in range(warmup):
            fn()
    rates = {name: [] for name in steps_fns}
    for _ in range(rounds):
        for name, fn in steps_fns.items():
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[name].append(tokens_per_step * steps / (time.perf_counter() - t))
    return {name: {"median_tok_s": statistics.median(r), "best_tok_s": max(r)} for name, r in rates.items()}


def throughput_config(quick: bool):
    from llama.train_config import TrainConfig, model_config

    if quick:
        return model_config(TrainConfig(out="-", model="tiny", max_steps=1, block_size=32), 256), 2, 32
    return model_config(TrainConfig(out="-", max_steps=1), 1024), 8, 256  # the recipe's model, 8 x 256


def run_throughput(quick: bool, compile_: bool, warmup: int, steps: int, rounds: int) -> dict:
    config, b, t = throughput_config(quick)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(config.vocab_size, (b, t + 1), generator=g)
    batch = (data[:, :-1], data[:, 1:])
    fns = {name: _step_fn(m, f, batch, "float32") for name, (m, f) in _engines(config, compile_).items()}
    res = _race(fns, b * t, warmup, steps, rounds)
    names = list(res)
    ratio = res[names[0]]["median_tok_s"] / res[names[1]]["median_tok_s"]
    report = {"config": {k: v for k, v in config.to_dict().items() if k != "rope_scaling"}, "batch": [b, t],
              "threads": torch.get_num_threads(), "compile": compile_, "results": res, "ratio_ours_over_hf": ratio}
    for name, r in res.items():
        print(f"{name:32s} {r['median_tok_s']:>9,.0f} tok/s (median of {rounds} rounds; best {r['best_tok_s']:,.0f})")
    print(f"ours / transformers: {ratio:.2f}x  ({b} x {t} tokens per step, AdamW, {torch.get_num_threads()} threads"
          f"{', torch.compile' if compile_ else ''})")
    return report


def run_precision(quick: bool, warmup: int, steps: int, rounds: int) -> dict:
    from llama import Transformer

    config, b, t = throughput_config(quick)
    data = torch.randint(config.vocab_size, (b, t + 1), generator=torch.Generator().manual_seed(0))
    fns = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = Transformer(config)
        fns[dtype] = _step_fn(model, model, (data[:, :-1], data[:, 1:]), dtype)
    res = _race(fns, b * t, warmup, steps, rounds)
    for name, r in res.items():
        print(f"{name:10s} {r['median_tok_s']:>9,.0f} tok/s (median of {rounds} rounds; best {r['best_tok_s']:,.0f})")
    print(f"bfloat16 / float32: {res['bfloat16']['median_tok_s'] / res['float32']['median_tok_s']:.2f}x")
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="+", choices=["quality", "throughput", "precision"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (throughput, precision)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (throughput)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    for what in args.what:
        if what == "quality":
            run_quality()
        elif what == "throughput":
            run_throughput(args.quick, args.compile, args.warmup, args.steps, args.rounds)
        else:
            run_precision(args.quick, args.warmup, args.steps, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
