"""The speed of a training step, for ``benchmarks/train.py throughput``, ``precision``, ``parts``,
``attention``, ``allocator`` and ``matmul`` (run them through that script, which prints and saves
their results).

FLOPs per token are :func:`llama.training.flops.flops_per_token` (6 x the weights that multiply, plus
causal attention, 6 L d (T + 1)); achieved FLOP/s is that times tokens/s; the peak is measured
here, the best of several ``torch.mm`` of two 2048 x 2048 matrices at the same thread count, in
float32 and in bfloat16; utilisation (MFU) is achieved over peak at the step's dtype. Peak memory
is the high-water mark of the resident set (Linux's ``VmHWM``, reset first) of a fresh process
while it builds the model and trains three steps, minus what it held just before.

``throughput`` trains the same model two ways: our :class:`llama.model.Transformer` and
transformers' ``LlamaForCausalLM`` (``sdpa`` attention), same config (the earlier AdamW
baseline's model: ``llama train``'s defaults, a 1,024-token vocabulary), same initial weights,
same batch (8 x 256 tokens), the same loss function, the same AdamW
(:func:`llama.training.loop.make_optimizer`, fused) and gradient clipping, the same thread count. Each
gets untimed warm-up steps; then timed rounds alternate between the two so that a burst of load
from another process hits both alike. A round is ``--steps`` optimizer steps; tokens/s is
tokens in the round over its wall time; the median over rounds is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def _engines(config, compile_: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama import Transformer
    from llama.formats.convert import llama_to_hf_state_dict

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


def _step_fn(model, forward, batch, dtype, parts: str = "book"):
    """One training step. ``parts``: ``"book"`` (llama.training.loss, llama.training.optim's AdamW and clipping:
    what ``llama train`` runs), ``"muon"`` (the same with Muon), or ``"torch"`` (F.cross_entropy,
    fused torch.optim.AdamW with the same groups, clip_grad_norm_)."""
    import torch.nn.functional as F

    from llama.training.loss import cross_entropy
    from llama.training.optim import clip_grad_norm, make_optimizer

    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), kind="muon" if parts == "muon" else "adamw")
    if parts == "torch":
        opt = torch.optim.AdamW([{k: v for k, v in g.items() if k in ("params", "weight_decay")} for g in opt.param_groups],
                                lr=1e-3, betas=(0.9, 0.95), fused=True)
    x, y = batch

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = forward(x)
        if parts == "torch":
            F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        else:
            cross_entropy(logits, y).backward()
            clip_grad_norm(model.parameters(), 1.0)
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
    from llama.training.config import TrainConfig, model_config

    if quick:
        return model_config(TrainConfig(out="-", model="tiny", max_steps=1, block_size=32), 256), 2, 32
    return model_config(TrainConfig(out="-", max_steps=1), 1024), 8, 256  # the recipe's model, 8 x 256


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of the fastest of ``repeats`` products of two ``n x n`` matrices (2 n^3 operations each)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def run_matmul(n: int = 1024, repeats: int = 5) -> dict:
    """The rate of an ``n x n`` product in float32 and in bfloat16 on this CPU (best of ``repeats``,
    at the thread count set), the machine, and what ``--dtype auto`` chooses here and why."""
    from machine import cpu_model

    from llama.training.precision import resolve_dtype

    rates = {name: matmul_peak(getattr(torch, name), n, repeats) / 1e9 for name in ("float32", "bfloat16")}
    dtype, why = resolve_dtype("auto")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    label = (f"{cpu_model()}, capability {torch.backends.cpu.get_cpu_capability()}"
             + (f", oneDNN held to {isa} (`ONEDNN_MAX_CPU_ISA`)" if isa else "")
             + f", {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    ratio = rates["bfloat16"] / rates["float32"]
    print(f"{label}\n{n} x {n} matmul: float32 {rates['float32']:.1f} GFLOP/s, bfloat16 {rates['bfloat16']:.1f} "
          f"GFLOP/s (bfloat16 {f'{ratio:.2f}x faster' if ratio >= 1 else f'{1 / ratio:.0f}x slower'})")
    print(f"--dtype auto: {dtype} ({why})")
    return {"label": label, "n": n, "repeats": repeats, **{f"{k}_gflop_s": v for k, v in rates.items()},
            "auto": dtype, "why": why}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


MEMORY_CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[1])
import train_speed as bench
from llama import Transformer

def status(field):  # kB, from the kernel's account of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

config, b, t = bench.throughput_config(sys.argv[3] == "1")
data = torch.randint(config.vocab_size, (b, t + 1))
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from here
torch.manual_seed(0)
model = Transformer(config)
step = bench._step_fn(model, model, (data[:, :-1], data[:, 1:]), sys.argv[4])
for _ in range(3):
    step()
print(before, status("VmHWM"))
"""


def peak_memory(quick: bool, dtype: str) -> dict:
    """Peak resident memory of a fresh process (Linux) while it builds our model and trains 3 steps:
    the kernel's high-water mark (VmHWM, reset just before the model is built) minus the resident
    set at that moment (VmRSS: Python, torch and the data)."""
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(REPO / "benchmarks"), str(torch.get_num_threads()),
                          "1" if quick else "0", dtype], cwd=REPO, capture_output=True, text=True, check=True)
    before, peak = map(int, out.stdout.split())
    return {"rss_before_model_mb": before / 1024, "peak_rss_mb": peak / 1024, "training_mb": (peak - before) / 1024}


def report_flops(config, t: int, rates: dict[str, tuple[float, str]], autocast: bool) -> dict:
    """FLOPs per token, the measured matmul peaks, and for each ``name: (tokens/s, dtype)`` the
    achieved FLOP/s and MFU against the peak of its dtype; the memory ``training_memory`` counts."""
    from llama.training.flops import flops_per_token, training_memory

    per_token = flops_per_token(config, t)
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    engines = {name: {"gflop_s": rate * per_token["total"] / 1e9, "mfu": rate * per_token["total"] / peaks[dtype]}
               for name, (rate, dtype) in rates.items()}
    counted = training_memory(config, 8 if t == 256 else 2, t, autocast=autocast)
    return {"flops_per_token": per_token, "matmul_peak_flop_s": peaks, "engines": engines,
            "memory_counted_bytes": counted}


def _race_record(config, b: int, t: int, res: dict, rounds: int, steps: int) -> dict:
    return {"config": {k: v for k, v in config.to_dict().items() if k != "rope_scaling"}, "batch": [b, t],
            "threads": torch.get_num_threads(), "rounds": rounds, "steps": steps, "results": res}


def run_throughput(quick: bool, compile_: bool, warmup: int, steps: int, rounds: int) -> dict:
    config, b, t = throughput_config(quick)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(config.vocab_size, (b, t + 1), generator=g)
    batch = (data[:, :-1], data[:, 1:])
    fns = {name: _step_fn(m, f, batch, "float32") for name, (m, f) in _engines(config, compile_).items()}
    res = _race(fns, b * t, warmup, steps, rounds)
    names = list(res)
    record = {**_race_record(config, b, t, res, rounds, steps), "compile": compile_,
              "ratio_ours_over_hf": res[names[0]]["median_tok_s"] / res[names[1]]["median_tok_s"]}
    record.update(report_flops(config, t, {n: (r["median_tok_s"], "float32") for n, r in res.items()}, False))
    record["peak_memory"] = peak_memory(quick, "float32")
    return record


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
    record = {**_race_record(config, b, t, res, rounds, steps),
              "ratio_bf16_over_f32": res["bfloat16"]["median_tok_s"] / res["float32"]["median_tok_s"]}
    record.update(report_flops(config, t, {n: (r["median_tok_s"], n) for n, r in res.items()}, True))
    record["peak_memory"] = peak_memory(quick, "bfloat16")
    return record


def run_parts(quick: bool, warmup: int, steps: int, rounds: int) -> dict:
    """The step ``llama train`` runs (the book's loss, AdamW and clipping) against the same step with
    PyTorch's (F.cross_entropy, fused AdamW, clip_grad_norm_), and with Muon; bfloat16 autocast."""
    from llama import Transformer

    config, b, t = throughput_config(quick)
    data = torch.randint(config.vocab_size, (b, t + 1), generator=torch.Generator().manual_seed(0))
    fns = {}
    for parts in ("book", "torch", "muon"):
        torch.manual_seed(0)
        model = Transformer(config)
        fns[parts] = _step_fn(model, model, (data[:, :-1], data[:, 1:]), "bfloat16", parts)
    return _race_record(config, b, t, _race(fns, b * t, warmup, steps, rounds), rounds, steps)




def run_attention(quick: bool, warmup: int, rounds: int) -> dict:
    """PyTorch's fused attention (``F.scaled_dot_product_attention``, causal), forward and backward
    timed apart, in float32 and in bfloat16, on the attention of the recipe's windows (16 x 128) and
    of the baseline's (8 x 256), the book model's heads: why the model keeps attention in float32
    under CPU autocast (llama/model/attention.py). Median of ``rounds``, the dtypes alternating."""
    import torch.nn.functional as F

    config, _, _ = throughput_config(quick)
    shapes = [(2, 32)] if quick else [(16, 128), (8, 256)]
    rows = []
    for b, t in shapes:
        times = {dtype: {"forward": [], "backward": []} for dtype in ("float32", "bfloat16")}
        qkv = {dtype: [torch.randn(b, config.n_heads, t, config.head_dim, dtype=getattr(torch, dtype),
                                   requires_grad=True) for _ in range(3)] for dtype in times}
        for r in range(warmup + rounds):
            for dtype, ts in times.items():
                start = time.perf_counter()
                out = F.scaled_dot_product_attention(*qkv[dtype], is_causal=True)
                middle = time.perf_counter()
                out.backward(torch.ones_like(out))
                if r >= warmup:
                    ts["forward"].append(middle - start)
                    ts["backward"].append(time.perf_counter() - middle)
        for dtype, ts in times.items():
            rows.append({"batch": [b, t], "dtype": dtype, **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in ts.items()}})
    return {"config": {k: getattr(config, k) for k in ("dim", "n_layers", "n_heads", "head_dim")},
            "threads": torch.get_num_threads(), "rounds": rounds, "rows": rows}


ALLOCATOR_CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[1])
import train_speed as bench
from llama import Transformer
from llama.training.allocator import reuse_freed_memory

config, b, t = bench.recipe_config(sys.argv[3] == "1")
taken = reuse_freed_memory() if sys.argv[4] == "1" else False
data = torch.randint(config.vocab_size, (b, t + 1), generator=torch.Generator().manual_seed(0))
torch.manual_seed(0)
model = Transformer(config)
step = bench._step_fn(model, model, (data[:, :-1], data[:, 1:]), "bfloat16", "muon")
for _ in range(3):
    step()
steps = int(sys.argv[5])
faults, cpu, wall = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"taken": taken, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
                  "cpu_ms": 1e3 * (time.process_time() - cpu) / steps, "wall_ms": 1e3 * (time.perf_counter() - wall) / steps}))
"""


def recipe_config(quick: bool):
    """``(model config, windows, tokens per window)`` of the book's recipe (``--recipe shakespeare``)."""
    from llama.training.config import RECIPES, TrainConfig, model_config

    if quick:
        return throughput_config(True)
    cfg = TrainConfig(out="-", **RECIPES["shakespeare"])
    return model_config(cfg, cfg.vocab_size), cfg.batch_size, cfg.block_size


def run_allocator(quick: bool, steps: int, rounds: int) -> dict:
    """The recipe's training step (bfloat16 autocast, Muon) in fresh processes, with glibc's
    allocator as it starts and after :func:`llama.training.allocator.reuse_freed_memory` (what
    ``llama train`` calls): page faults, CPU time and wall time per step, medians of ``rounds``
    processes of each, the two alternating."""
    config, b, t = recipe_config(quick)
    runs = {"glibc's defaults": [], "reuse_freed_memory()": []}
    for _ in range(rounds):
        for reuse, name in enumerate(runs):
            out = subprocess.run([sys.executable, "-c", ALLOCATOR_CHILD, str(REPO / "benchmarks"),
                                  str(torch.get_num_threads()), "1" if quick else "0", str(reuse), str(steps)],
                                 cwd=REPO, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout))
    rows = [{"allocator": name, "taken": all(r["taken"] for r in rs) if i else None,
             **{k: statistics.median(r[k] for r in rs) for k in ("faults", "cpu_ms", "wall_ms")}}
            for i, (name, rs) in enumerate(runs.items())]
    return {"config": {k: getattr(config, k) for k in ("dim", "n_layers", "vocab_size")}, "batch": [b, t],
            "threads": torch.get_num_threads(), "rounds": rounds, "steps": steps, "rows": rows}
