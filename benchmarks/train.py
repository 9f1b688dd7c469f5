"""The training chapters' numbers: the 120-second recipe, training throughput against transformers
with its FLOP/s, utilisation and memory, bf16 vs float32, and the book's loss and optimizers
against PyTorch's.

Run from the repository root::

    python benchmarks/train.py quality --repeats 3   # the book's recipe, N times: median and spread
    python benchmarks/train.py throughput   # tokens/s of a training step: ours vs LlamaForCausalLM,
                                            # FLOPs per token, FLOP/s, matmul peak, MFU, peak memory
    python benchmarks/train.py precision    # float32 vs bfloat16 autocast, our model
    python benchmarks/train.py matmul       # a 1024 x 1024 product in float32 and bfloat16; what --dtype auto chooses
    python benchmarks/train.py parts        # the book's loss, AdamW, clipping vs PyTorch's; Muon vs AdamW
    python benchmarks/train.py sweep --sweep-steps 300   # the recipe's variants at a fixed number of steps
    python benchmarks/train.py parallel     # DDP and FSDP on 1, 2 and 4 ranks: bytes per rank, step time
    python benchmarks/train.py --quick throughput precision parts   # tiny sizes, to check the script runs

FLOPs per token are :func:`llama.training.flops.flops_per_token` (6 x the weights that multiply, plus
causal attention, 6 L d (T + 1)); achieved FLOP/s is that times tokens/s; the peak is measured
here, the best of several ``torch.mm`` of two 2048 x 2048 matrices at the same thread count, in
float32 and in bfloat16; utilisation (MFU) is achieved over peak at the step's dtype. Peak memory
is the high-water mark of the resident set (Linux's ``VmHWM``, reset first) of a fresh process
while it builds the model and trains three steps, minus what it held just before.

``quality`` runs exactly :data:`RECIPE_COMMAND` (the chapter shows it, and a test checks the
two are the same), with Tiny Shakespeare found as ``llama train`` finds it. It prints the final
validation figures and copies the run's ``log.jsonl`` and ``samples.txt`` to
``benchmarks/results/`` (the chapter's loss figure is drawn from that log).

``throughput`` trains the same model two ways: our :class:`llama.model.transformer.Transformer` and
transformers' ``LlamaForCausalLM`` (``sdpa`` attention), same config (the recipe's model),
same initial weights, same batch (8 x 256 tokens), the same loss function, the same AdamW
(:func:`llama.training.loop.make_optimizer`, fused) and gradient clipping, the same thread count. Each
gets untimed warm-up steps; then timed rounds alternate between the two so that a burst of load
from another process hits both alike. A round is ``--steps`` optimizer steps; tokens/s is
tokens in the round over its wall time; the median over rounds is reported.

``parallel`` runs ``llama train --parallel ddp|fsdp`` under ``torchrun`` (gloo) on 1, 2 and 4
ranks with the same global batch (8 windows of 128 tokens of Tiny Shakespeare, the book's model,
AdamW, float32, 1 thread per rank when ranks outnumber cores), ``--steps`` x 4 optimizer steps.
Per rank it reports the bytes of weights and optimizer state that rank held (measured from its
tensors by :func:`llama.training.fsdp.held_bytes`, saved in the checkpoint's ``state.json``) beside
:func:`llama.training.memory.bytes_per_rank`'s count, the peak resident memory of each rank's process
(VmHWM: Python, torch and the data included), and the mean time of a step (the training loop's
time over its steps, evaluation excluded).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, machine_line  # noqa: E402

#: The book's recipe: every other setting is ``llama train``'s default (see llama.training.config.TrainConfig).
#: Muon, a 2,048-token vocabulary, AdamW's rate of 8e-3 and 16 windows of 128 are the best of the
#: sweep (``sweep``).
#: Its precision is ``--dtype auto``'s choice (bfloat16 autocast where the CPU has it natively, as on
#: the book's machine), so that the same command is fast on a CPU that would emulate bfloat16.
RECIPE_ARGS = ["--recipe", "shakespeare", "--out", "runs/shakespeare"]
RECIPE_COMMAND = shlex.join(["llama", "train", *RECIPE_ARGS])


def run_quality(repeats: int = 1) -> dict:
    """Run the recipe ``repeats`` times; the last run's log and sample are kept for the figures."""
    runs = [_quality_once() for _ in range(repeats)]
    bpbs = [r["val_bpb"] for r in runs]
    summary = {**runs[-1], "repeats": repeats, "val_bpb_runs": bpbs, "val_bpb_median": statistics.median(bpbs),
               "val_bpb_spread": max(bpbs) - min(bpbs), "steps_runs": [r["steps"] for r in runs],
               "machine": machine()}
    (RESULTS / "train-quality.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"val bits per byte over {repeats} run(s): median {summary['val_bpb_median']:.4f}, "
          f"spread {summary['val_bpb_spread']:.4f} ({', '.join(f'{b:.4f}' for b in bpbs)}); "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    return summary


def _quality_once() -> dict:
    out = REPO / "runs" / "shakespeare"
    if out.exists():
        shutil.rmtree(out)
    argv = shlex.split(RECIPE_COMMAND)
    assert argv[:2] == ["llama", "train"]
    cmd = [sys.executable, "-m", "llama.cli.main", *argv[1:]]  # the console script, without relying on PATH
    print("$", RECIPE_COMMAND, flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    from llama.training.state import read_log

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
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "log.jsonl", RESULTS / "train-log.jsonl")
    shutil.copyfile(out / "samples.txt", RESULTS / "train-samples.txt")
    print(json.dumps(figures, indent=1))
    return figures


#: The sweep's variants of the recipe: name -> the ``llama train`` flags that differ from the defaults.
SWEEP = {
    "base": [],
    "muon": ["--optimizer", "muon"],
    "lr 8e-3": ["--lr", "0.008"],
    "muon lr 0.05": ["--optimizer", "muon", "--muon-lr", "0.05"],
    "vocab 2048": ["--vocab-size", "2048"],
    "vocab 512": ["--vocab-size", "512"],
    "16 x 128": ["--batch-size", "16", "--block-size", "128"],
    "muon, lr 8e-3": ["--optimizer", "muon", "--lr", "0.008"],
    "muon, vocab 2048": ["--optimizer", "muon", "--vocab-size", "2048"],
    "muon, vocab 4096": ["--optimizer", "muon", "--vocab-size", "4096"],
    "muon, vocab 2048, lr 8e-3": ["--optimizer", "muon", "--vocab-size", "2048", "--lr", "0.008"],
    "muon, vocab 2048, lr 8e-3, 16 x 128": ["--optimizer", "muon", "--vocab-size", "2048", "--lr", "0.008",
                                            "--batch-size", "16", "--block-size", "128"],
}


def run_sweep(steps: int, threads: int, names: list[str] | None) -> None:
    """Train each variant of :data:`SWEEP` for ``steps`` optimizer steps (so a busy machine changes
    the time they take, not their result), bfloat16, and append its final whole-validation bits
    per byte, with its training-loop time and the load, to ``results/train-sweep.jsonl``."""
    from llama.training.state import read_log

    for name in names or list(SWEEP):
        out = REPO / "runs" / "sweep" / name.replace(" ", "_").replace(",", "")
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "llama.cli.main", "train", "--out", str(out), "--dtype", "bfloat16", "--max-steps",
               str(steps), "--eval-every", str(steps), "--sample-tokens", "0", "--no-progress", "--threads",
               str(threads), *SWEEP[name]]
        load = os.getloadavg()[0]
        subprocess.run(cmd, cwd=REPO, check=True)
        final = read_log(out / "log.jsonl")[-1]
        record = {"name": name, "flags": SWEEP[name], "steps": steps, "val_bpb": final["val_bpb"],
                  "loop_s": final["elapsed"], "threads": threads, "load_start": round(load, 2),
                  "load_end": round(os.getloadavg()[0], 2)}
        print(json.dumps(record), flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(RESULTS / "train-sweep.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------- throughput
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
    from llama.training.precision import resolve_dtype

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")
    rates = {name: matmul_peak(getattr(torch, name), n, repeats) / 1e9 for name in ("float32", "bfloat16")}
    dtype, why = resolve_dtype("auto")
    print(f"{model}, capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    ratio = rates["bfloat16"] / rates["float32"]
    print(f"{n} x {n} matmul: float32 {rates['float32']:.1f} GFLOP/s, bfloat16 {rates['bfloat16']:.1f} GFLOP/s "
          f"(bfloat16 {f'{ratio:.2f}x faster' if ratio >= 1 else f'{1 / ratio:.0f}x slower'})")
    print(f"--dtype auto: {dtype} ({why})")
    return {"cpu": model, **{f"{k}_gflop_s": v for k, v in rates.items()}, "auto": dtype, "why": why}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


MEMORY_CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[1])
import train as bench
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


def report_flops(config, t: int, tok_s: dict, dtype: str) -> dict:
    """Print FLOPs per token, achieved FLOP/s, the measured matmul peak and MFU for each engine."""
    from llama.training.flops import flops_per_token, training_memory

    per_token = flops_per_token(config, t)
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"FLOPs per token: {per_token['total'] / 1e6:.2f} M (6 x {per_token['weights'] / 6e6:.3f} M matmul "
          f"weights + causal attention {per_token['attention'] / 1e6:.2f} M; forward 1/3, backward 2/3)")
    print(f"matmul peak (torch.mm 2048 x 2048, {torch.get_num_threads()} threads): float32 "
          f"{peaks['float32'] / 1e9:.1f} GFLOP/s, bfloat16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s")
    rows = {}
    for name, rate in tok_s.items():
        achieved = rate * per_token["total"]
        rows[name] = {"gflop_s": achieved / 1e9, "mfu": achieved / peaks[dtype]}
        print(f"{name:32s} {achieved / 1e9:7.1f} GFLOP/s achieved, MFU {100 * rows[name]['mfu']:.1f}% of the "
              f"{dtype} matmul peak")
    b = 8 if t == 256 else 2
    counted = training_memory(config, b, t, autocast=dtype == "bfloat16")
    print("memory counted (MB): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in counted.items())
          + f"; total {sum(counted.values()) / 1e6:.1f}")
    return {"flops_per_token": per_token, "matmul_peak_flop_s": peaks, "engines": rows,
            "memory_counted_bytes": counted}


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
    report.update(report_flops(config, t, {n: r["median_tok_s"] for n, r in res.items()}, "float32"))
    mem = peak_memory(quick, "float32")
    print(f"peak memory of our training step (float32; VmHWM of a fresh process): {mem['training_mb']:.0f} MB above "
          f"the {mem['rss_before_model_mb']:.0f} MB it held before building the model")
    report["peak_memory"] = mem
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
    report_flops(config, t, {"bfloat16 autocast": res["bfloat16"]["median_tok_s"]}, "bfloat16")
    mem = peak_memory(quick, "bfloat16")
    print(f"peak memory of our training step (bfloat16 autocast; VmHWM): {mem['training_mb']:.0f} MB above "
          f"the {mem['rss_before_model_mb']:.0f} MB it held before building the model")
    return res


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
    res = _race(fns, b * t, warmup, steps, rounds)
    labels = {"book": "book's loss + AdamW + clip", "torch": "F.cross_entropy + fused AdamW + clip_grad_norm_",
              "muon": "book's loss + Muon + clip"}
    for name, r in res.items():
        print(f"{labels[name]:48s} {r['median_tok_s']:>9,.0f} tok/s (median of {rounds} rounds; best {r['best_tok_s']:,.0f})")
    print(f"book / PyTorch: {res['book']['median_tok_s'] / res['torch']['median_tok_s']:.3f}x; "
          f"Muon / AdamW: {res['muon']['median_tok_s'] / res['book']['median_tok_s']:.3f}x")
    return res


PARALLEL_CHILD = """
import os, sys
from llama.cli.main import main
code = main(sys.argv[1:])
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
out = sys.argv[sys.argv.index("--out") + 1]
open(os.path.join(out, "rss-%s.txt" % os.environ.get("RANK", "0")), "w").write(str(hwm))
raise SystemExit(code)
"""


def run_parallel(quick: bool, steps: int) -> list[dict]:
    """DDP and FSDP on 1, 2 and 4 ranks: bytes held per rank (measured and counted), peak RSS, step time."""
    import tempfile

    from llama.data.sources import find_data
    from llama.model.config import ModelConfig
    from llama.training.memory import bytes_per_rank

    global_batch, block, n_steps = 8, 128, 4 * steps
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "child.py").write_text(PARALLEL_CHILD)
        text = find_data("tinyshakespeare.txt")
        if quick or text is None:
            text = tmp / "text.txt"
            text.write_text("to be or not to be that is the question whether tis nobler in the mind\n" * 3000)
        for strategy in ("ddp", "fsdp"):
            for ranks in (1, 2, 4):
                out = tmp / f"{strategy}-{ranks}"
                threads = max(1, (os.cpu_count() or 1) // ranks)
                flags = ["train", "--out", str(out), "--data", str(text), "--model", "tiny" if quick else "book",
                         "--tokenizer", "bytes", "--block-size", str(block), "--batch-size", str(global_batch // ranks),
                         "--max-steps", str(n_steps), "--eval-every", str(n_steps), "--eval-tokens", "256",
                         "--sample-tokens", "0", "--no-progress", "--threads", str(threads), "--parallel", strategy,
                         "--dtype", "float32"]
                launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                              "--standalone", "--nproc_per_node", str(ranks)]
                env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(threads)}
                done = subprocess.run([*launch, str(tmp / "child.py"), *flags], cwd=REPO, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{strategy} on {ranks} ranks failed:\n{done.stderr[-3000:]}")
                state = json.loads((out / "checkpoints" / f"step-{n_steps:07d}" / "state.json").read_text())
                config = ModelConfig.from_dict(state["model_config"])
                count = bytes_per_rank(config, ranks, strategy, global_batch // ranks, block)
                log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
                held = state["bytes_per_rank"]
                rows.append({"strategy": strategy, "ranks": ranks,
                             "held_mb": max(h["weights"] + h["optimizer"] for h in held) / 1e6,
                             "counted_mb": (count["weights"] + count["optimizer"]) / 1e6,
                             "peak_rss_mb": max(int((out / f"rss-{r}.txt").read_text()) for r in range(ranks)) / 1024,
                             "step_ms": 1000 * log[-1]["elapsed"] / n_steps})
    print(f"\nDDP and FSDP, global batch {global_batch} x {block} tokens, {n_steps} steps, gloo on this machine "
          f"({os.cpu_count()} cores)")
    print("| | ranks | weights + AdamW per rank, held (MB) | counted by llama.training.memory (MB) | peak RSS per rank (MB) | ms per step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['strategy']} | {r['ranks']} | {r['held_mb']:.3f} | {r['counted_mb']:.3f} | "
              f"{r['peak_rss_mb']:.0f} | {r['step_ms']:.0f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="+", choices=["quality", "throughput", "precision", "matmul", "parts", "sweep",
                                                        "parallel"])
    parser.add_argument("--sweep-steps", type=int, default=300, help="optimizer steps of each sweep run")
    parser.add_argument("--only", action="append", choices=list(SWEEP), help="sweep only these variants")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the recipe (quality): median and spread")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (throughput, precision)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (throughput)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"load average {os.getloadavg()[0]:.2f}")
    for what in args.what:
        if what == "quality":
            run_quality(args.repeats)
        elif what == "sweep":
            run_sweep(args.sweep_steps, args.threads, args.only)
        elif what == "parts":
            run_parts(args.quick, args.warmup, args.steps, args.rounds)
        elif what == "parallel":
            run_parallel(args.quick, args.steps)
        elif what == "matmul":
            run_matmul()
        elif what == "throughput":
            run_throughput(args.quick, args.compile, args.warmup, args.steps, args.rounds)
        else:
            run_precision(args.quick, args.warmup, args.steps, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
