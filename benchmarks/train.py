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
    python benchmarks/train.py attention    # fused attention, forward and backward, float32 vs bfloat16
    python benchmarks/train.py allocator    # the recipe's step with glibc's malloc as it starts, and reusing memory
    python benchmarks/train.py sweep --sweep-steps 300   # the recipe's variants at a fixed number of steps
    python benchmarks/train.py budget       # the recipe's weight decay, each run at its 120 seconds
    python benchmarks/train.py parallel     # DDP and FSDP on 1, 2 and 4 ranks: bytes per rank, step time
    python benchmarks/train.py --quick throughput precision parts   # tiny sizes, to check the script runs
    python benchmarks/train.py throughput --save    # also write results/train-throughput.{json,md}
    python benchmarks/train.py quality sweep --render   # rewrite results/train-*.md from the stored JSON

What the book shows are the results files: ``quality``, ``sweep`` and ``budget`` always write theirs
(``train-quality.json``, lines of ``train-sweep.jsonl`` and ``train-budget.jsonl``), the others with ``--save``
(``train-WHAT.json``; ``matmul`` keeps one row per machine or setting), and each writes
``train-WHAT.md`` from its JSON (benchmarks/train_report.py) with the command and the machine
line; ``--render`` rewrites that Markdown from the stored JSON without measuring. The speed
measurements themselves are in benchmarks/train_speed.py.

``quality`` runs exactly :data:`RECIPE_COMMAND` (the chapter shows it, and a test checks the
two are the same), with Tiny Shakespeare found as ``llama train`` finds it. It prints the final
validation figures and copies the run's ``log.jsonl`` and ``samples.txt`` to
``benchmarks/results/`` (the chapter's loss figure is drawn from that log).

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

from llama.training.allocator import reuse_freed_memory

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import train_report  # noqa: E402
from machine import machine, machine_line  # noqa: E402
from train_speed import run_allocator, run_attention, run_matmul, run_parts, run_precision, run_throughput  # noqa: E402

#: The book's recipe: every other setting is ``llama train``'s default (see llama.training.config.TrainConfig).
#: Muon, a 2,048-token vocabulary, AdamW's rate of 8e-3 and 16 windows of 128 are the best of the
#: sweep (``sweep``).
#: Its precision is ``--dtype auto``'s choice (bfloat16 autocast where the CPU has it natively, as on
#: the book's machine), so that the same command is fast on a CPU that would emulate bfloat16.
RECIPE_ARGS = ["--recipe", "shakespeare", "--out", "runs/shakespeare"]
RECIPE_COMMAND = shlex.join(["llama", "train", *RECIPE_ARGS])


def run_quality(repeats: int = 1, command: str | None = None) -> dict:
    """Run the recipe ``repeats`` times; the last run's log and sample are kept for the figures.
    Writes ``results/train-quality.json`` and the ``.md`` the chapter shows."""
    runs = [_quality_once() for _ in range(repeats)]
    bpbs = [r["val_bpb"] for r in runs]
    summary = {**runs[-1], "repeats": repeats, "val_bpb_runs": bpbs, "val_bpb_median": statistics.median(bpbs),
               "val_bpb_spread": max(bpbs) - min(bpbs), "steps_runs": [r["steps"] for r in runs],
               "machine": machine(),
               "benchmark_command": command or f"python benchmarks/train.py quality --repeats {repeats}"}
    (RESULTS / "train-quality.json").write_text(json.dumps(summary, indent=1) + "\n")
    render("quality")
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


def _train_variant(folder: str, name: str, args: list[str]) -> tuple[list[dict], float]:
    """``llama train --out runs/FOLDER/NAME ARGS`` in an emptied folder, without a sample or a
    progress bar: its log, and the load average when it started."""
    from llama.training.state import read_log

    out = REPO / "runs" / folder / name.replace(" ", "_").replace(",", "")
    if out.exists():
        shutil.rmtree(out)
    load = os.getloadavg()[0]
    subprocess.run([sys.executable, "-m", "llama.cli.main", "train", "--out", str(out), "--sample-tokens", "0",
                    "--no-progress", *args], cwd=REPO, check=True)
    return read_log(out / "log.jsonl"), load


def _append_run(what: str, record: dict, load_start: float) -> None:
    """Print ``record`` with the load and the machine, append it to ``results/train-WHAT.jsonl``
    and rewrite ``results/train-WHAT.md`` from all its lines."""
    record = {**record, "load_start": round(load_start, 2), "load_end": round(os.getloadavg()[0], 2),
              "machine": machine()}
    print(json.dumps(record), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"train-{what}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    render(what)


def run_sweep(steps: int, threads: int, names: list[str] | None) -> None:
    """Train each variant of :data:`SWEEP` for ``steps`` optimizer steps (so a busy machine changes
    the time they take, not their result), bfloat16, and append its final whole-validation bits
    per byte, with its training-loop time, the load and the machine, to ``results/train-sweep.jsonl``,
    and rewrite ``results/train-sweep.md`` from all its lines."""
    for name in names or list(SWEEP):
        log, load = _train_variant("sweep", name, ["--dtype", "bfloat16", "--max-steps", str(steps), "--eval-every",
                                                   str(steps), "--threads", str(threads), *SWEEP[name]])
        _append_run("sweep", {"name": name, "flags": SWEEP[name], "steps": steps, "val_bpb": log[-1]["val_bpb"],
                              "loop_s": log[-1]["elapsed"], "threads": threads}, load)


#: The recipe's variants at its own budget (``budget``): name -> flags given beside ``--recipe shakespeare``.
#: Once the step got faster (attention in float32 under CPU autocast, Muon's products batched, freed
#: memory reused), the recipe's run read the training text three times or more and overfitted;
#: these runs chose its weight decay.
BUDGET = {
    "weight decay 0.1": ["--weight-decay", "0.1"],
    "weight decay 0.3": ["--weight-decay", "0.3"],
    "weight decay 1.0": ["--weight-decay", "1.0"],
    "weight decay 2.0": ["--weight-decay", "2.0"],
}


def run_budget(names: list[str] | None) -> None:
    """Run ``llama train --recipe shakespeare`` with each variant's flags, one after another, at the
    recipe's time budget and thread count, and append its steps and final whole-validation bits per
    byte, with the load and the machine, to ``results/train-budget.jsonl`` (rewriting ``.md``)."""
    for name in names or list(BUDGET):
        log, load = _train_variant("budget", name, ["--recipe", "shakespeare", *BUDGET[name]])
        _append_run("budget", {"name": name, "flags": BUDGET[name], "steps": log[-1]["step"],
                               "val_bpb": log[-1]["val_bpb"], "train_loss": log[-2]["train_loss"],
                               "loop_s": log[-1]["elapsed"], "threads": torch.get_num_threads()}, load)


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
    return {"global_batch": global_batch, "block": block, "steps": n_steps, "cores": os.cpu_count(), "rows": rows}


#: What ``--save`` measures and how each record becomes its results file (train_report.py).
MEASURE = {
    "throughput": lambda a: run_throughput(a.quick, a.compile, a.warmup, a.steps, a.rounds),
    "precision": lambda a: run_precision(a.quick, a.warmup, a.steps, a.rounds),
    "parts": lambda a: run_parts(a.quick, a.warmup, a.steps, a.rounds),
    "attention": lambda a: run_attention(a.quick, a.warmup, a.rounds),
    "allocator": lambda a: run_allocator(a.quick, a.steps, a.rounds),
    "matmul": lambda a: run_matmul(),
    "parallel": lambda a: run_parallel(a.quick, a.steps),
}
RENDER = {"throughput": train_report.throughput, "precision": train_report.precision, "parts": train_report.parts,
          "attention": train_report.attention, "allocator": train_report.allocator,
          "matmul": train_report.matmul, "parallel": train_report.parallel}


def rendered(what: str) -> str:
    """The text of ``results/train-WHAT.md``, from what ``results/`` stores, measuring nothing."""
    name = f"train-{what}"
    if what == "quality":
        return train_report.quality(report.read(name, "python benchmarks/train.py quality --repeats 3"),
                                    report.read("train-log", "python benchmarks/train.py quality --repeats 3"))
    if what == "sweep":
        return train_report.sweep(report.read(name, "python benchmarks/train.py sweep"))
    if what == "budget":
        return train_report.budget(report.read(name, "python benchmarks/train.py budget"))
    return RENDER[what](report.read(name, f"python benchmarks/train.py {what} --save"))


def render(what: str) -> None:
    """Rewrite ``results/train-WHAT.md`` from what ``results/`` stores."""
    report.write(f"train-{what}", rendered(what))


def save(what: str, record: dict) -> None:
    """Store ``record`` as ``results/train-WHAT.json`` (matmul: replace or add its row) and render it."""
    if what == "matmul":
        path = RESULTS / "train-matmul.json"
        rows = json.loads(path.read_text()) if path.is_file() else []
        record = [*(r for r in rows if r["label"] != record["label"]), record]
    (RESULTS / f"train-{what}.json").write_text(json.dumps(record, indent=1) + "\n")
    render(what)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="+", choices=["quality", "throughput", "precision", "matmul", "parts",
                                                        "attention", "allocator", "sweep", "budget", "parallel"])
    parser.add_argument("--sweep-steps", type=int, default=300, help="optimizer steps of each sweep run")
    parser.add_argument("--only", action="append", choices=[*SWEEP, *BUDGET],
                        help="sweep (or budget) only these variants")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the recipe (quality): median and spread")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (throughput, precision)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (throughput)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--save", action="store_true", help="write results/train-WHAT.json and .md, what the book "
                        "shows (quality and sweep always write theirs)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite results/train-WHAT.md from the stored JSON")
    args = parser.parse_args(argv)
    if args.render:
        for what in args.what:
            render(what)
        return 0
    if args.quick and (args.save or {"quality", "sweep", "budget"} & set(args.what)):
        parser.error("--quick with --save, quality, sweep or budget would write the tiny sizes' numbers to "
                     "benchmarks/results/: drop --quick")
    command = "python benchmarks/train.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as `llama train` does: the steps raced here are the ones it runs
    print(machine_line())
    print(f"load average {os.getloadavg()[0]:.2f}")
    for what in args.what:
        if what == "quality":
            run_quality(args.repeats, command)
        elif what == "sweep":
            run_sweep(args.sweep_steps, args.threads, [n for n in args.only or SWEEP if n in SWEEP])
        elif what == "budget":
            run_budget([n for n in args.only or BUDGET if n in BUDGET])
        else:
            load = os.getloadavg()[0]
            record = {"command": command, "machine": machine(), **MEASURE[what](args), "load_start": round(load, 2),
                      "load_end": round(os.getloadavg()[0], 2)}
            print(RENDER[what]([record] if what == "matmul" else record))
            if args.save:
                save(what, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
