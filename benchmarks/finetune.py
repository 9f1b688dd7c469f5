"""The fine-tuning chapter's table: LoRA at a few ranks against a full fine-tune of the same length.

Run from the repository root::

    python benchmarks/finetune.py              # a few minutes on a 2-core CPU
    python benchmarks/finetune.py --quick      # tiny lengths, to check the script runs
    python benchmarks/finetune.py --data-only  # step 1 alone: the chapter's two texts, then stop
    python benchmarks/finetune.py --render     # rewrite results/finetune.md from results/finetune.json

1. Tiny Shakespeare is split by speaker: every speech of ROMEO and JULIET goes to ``lovers.txt``,
   everything else to ``rest.txt``.
2. ``llama train`` pre-trains the book's model on ``rest.txt`` for 300 steps (:data:`PRETRAIN_ARGS`):
   the base has never seen the lovers speak.
3. ``llama finetune`` adapts that base to ``lovers.txt`` (its first 90% trains, its last 10%
   validates, as for any run), once per line of :data:`RUNS`: LoRA adapters of a few ranks on
   all seven projections, and every weight (``--lora-rank 0``), each for the same number of
   steps, in a fresh process whose peak resident memory is read at its end.

It writes the measurements, the samples and the singular values of the full fine-tune's weight
changes to ``benchmarks/results/finetune.json``, from which the chapter's figure is drawn, and
the table the chapter shows (validation bits per byte before and after, trainable parameters and
their share, the optimizer's state, peak memory, time), with the command and the machine line, to
``benchmarks/results/finetune.md``; ``--render`` rewrites that table from the stored JSON.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from machine import machine, machine_line  # noqa: E402

from llama.formats.load import load_model  # noqa: E402

RUN = REPO / "runs" / "finetune"
SPEAKERS = ("ROMEO", "JULIET")
# Lengths in steps, not seconds, one thread, and float32 written out (--dtype auto would be
# bfloat16 autocast on a CPU that has it natively): on a machine shared with other jobs the times
# change, the results do not.
PRETRAIN_ARGS = ["--data", "runs/finetune/rest.txt", "--out", "runs/finetune/base", "--max-steps", "300",
                 "--threads", "1", "--dtype", "float32"]
STEPS = 50
#: (name, flags of `llama finetune`): the same data, steps and learning rate for every run.
#: The learning rate is FINETUNE_DEFAULTS' except on the line that says otherwise.
RUNS = [("LoRA r=1", ["--lora-rank", "1"]), ("LoRA r=4", ["--lora-rank", "4"]),
        ("LoRA r=16", ["--lora-rank", "16"]), ("LoRA r=4, lr 5e-3", ["--lora-rank", "4", "--lr", "5e-3"]),
        ("full fine-tune", ["--lora-rank", "0"])]
FINETUNE_ARGS = ["--base", "runs/finetune/base/model", "--data", "runs/finetune/lovers.txt", "--max-steps", str(STEPS),
                 "--eval-every", "10", "--sample-tokens", "0", "--threads", "1", "--dtype", "float32", "--no-progress"]
PROMPT = "ROMEO:\n"

# A fresh interpreter per run, so that its peak resident memory is its own.
_CHILD = """
import json, resource, sys
from llama.cli.main import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def split_speakers(text: str, speakers: tuple[str, ...]) -> tuple[str, str]:
    """``(speeches of speakers, every other speech)``: Tiny Shakespeare's speeches are paragraphs
    that start with ``NAME:`` on a line of their own."""
    theirs, rest = [], []
    for speech in text.split("\n\n"):
        (theirs if speech.split("\n", 1)[0].rstrip(":") in speakers else rest).append(speech)
    return "\n\n".join(theirs) + "\n", "\n\n".join(rest) + "\n"


def write_data(folder: Path) -> tuple[Path, Path]:
    """Step 1: ``folder/lovers.txt`` and ``folder/rest.txt`` from Tiny Shakespeare (found as
    ``llama download`` finds it); returns their paths."""
    from llama.data.sources import find_data

    source = find_data("tinyshakespeare.txt")
    if source is None:
        raise SystemExit("tinyshakespeare.txt not found: run `llama download tinyshakespeare`")
    lovers, rest = split_speakers(source.read_text(encoding="utf-8"), SPEAKERS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lovers.txt").write_text(lovers, encoding="utf-8")
    (folder / "rest.txt").write_text(rest, encoding="utf-8")
    return folder / "lovers.txt", folder / "rest.txt"


def llama(*argv: str) -> tuple[float, int, str]:
    """Run ``llama ARGV`` in a fresh process: (wall seconds, peak resident KB, its stdout)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, *argv], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"llama {shlex.join(argv)} failed:\n{done.stderr}")
    peak = int(done.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return wall, peak, done.stdout


def sample(model, tokenizer, n: int) -> str:
    from llama.inference.generation import generate
    from llama.inference.sampling import Sampling

    ids = generate(model.eval(), tokenizer.encode(PROMPT), n, Sampling(temperature=0.8, seed=0))
    return tokenizer.decode(ids)


def singular_values(base, tuned) -> dict[str, list[float]]:
    """For each projection, the singular values of the full fine-tune's change ``W' - W``, each
    divided by the largest, averaged over the layers."""
    import torch

    from llama.training.lora import TARGETS

    before, after = base.state_dict(), tuned.state_dict()
    out = {}
    for target, parent in TARGETS.items():
        spectra = []
        for i in range(base.config.n_layers):
            key = f"layers.{i}.{parent}.{target}.weight"
            s = torch.linalg.svdvals((after[key] - before[key]).double())
            spectra.append(s / s[0])
        out[target] = [round(float(v), 5) for v in torch.stack(spectra).mean(0)]
    return out


def results_markdown(result: dict) -> str:
    """The text of ``results/finetune.md``: one row per run, after the base model's."""
    rows = [["base, before fine-tuning", f"{result['before_val_bpb']:.3f}", "", "", "", "", "", ""]]
    for r in result["rows"]:
        full = r["share"] == 1
        # The adapter's tensors in float32 (the file adds a header); a full fine-tune saves the whole model.
        size = f"({4 * r['trainable'] / 1e6:.1f} MB model)" if full else f"{4 * r['trainable'] / 1e3:.0f} KB"
        name = {"full fine-tune": "full fine-tune (`--lora-rank 0`)"}.get(r["run"], r["run"].replace(
            "lr 5e-3", "`--lr 5e-3`"))
        rows.append([name, f"{r['val_bpb']:.3f}", report.number(r["trainable"]), f"{100 * r['share']:.2f}%" if r["share"] < 0.1 else f"{100 * r['share']:.3g}%",
                     f"{r['optimizer_bytes'] / 1e6:.{2 if r['optimizer_bytes'] < 1e7 else 1}f} MB", size, f"{r['peak_rss_mb']} MB", f"{r['train_s']:.1f} s"])
    header = [f"run ({STEPS} steps of 8 × 256 tokens)", "validation bits per byte", "trainable parameters",
              "share of the model", "gradients + AdamW state", "adapter (float32)", "peak memory of the process",
              "training time"]
    notes = [f"`{result['pretrain']}`, then `{result['finetune']}` with each run's flags",
             f"load average {result['load_average_end']:.2f} at the end",
             f"validation: the last 10% of the lovers' text, {report.number(result['val_tokens'])} tokens, "
             f"{report.number(result['val_bytes'])} bytes"]
    return report.markdown(result.get("command", "python benchmarks/finetune.py"), result.get("machine"), notes,
                           [report.table(header, rows)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny lengths: check that the script runs")
    parser.add_argument("--data-only", action="store_true",
                        help="only write runs/finetune/lovers.txt and rest.txt under the current folder (the "
                        "fine-tuning chapter's data, which its commands read), then stop")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite benchmarks/results/finetune.md from finetune.json")
    args = parser.parse_args(argv)
    if args.render:
        report.write("finetune", results_markdown(report.read("finetune", "python benchmarks/finetune.py")))
        return 0
    if args.data_only:
        for path in write_data(Path("runs") / "finetune"):
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
        return 0
    import numpy as np
    import torch

    from llama.data.pipeline import token_byte_lengths
    from llama.tokenizers.tokenizer import load_tokenizer
    from llama.training.loop import evaluate
    from llama.training.lora import load_adapter, trainable_parameters
    from llama.training.state import read_log

    print(f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    if RUN.exists():
        shutil.rmtree(RUN)
    write_data(RUN)
    pretrain = [*PRETRAIN_ARGS, *(["--max-steps", "3", "--model", "tiny"] if args.quick else [])]
    print("$ llama train", shlex.join(pretrain), flush=True)
    llama("train", *pretrain, "--no-progress")
    base_dir = RUN / "base" / "model"
    tokenizer = load_tokenizer(base_dir / "tokenizer.json")
    rows, samples = [], {}
    for name, flags in RUNS:
        out = RUN / name.replace(", ", "-").replace(" ", "-").replace("=", "")
        argv = ["finetune", *FINETUNE_ARGS, "--out", str(out.relative_to(REPO)), *flags, *(["--max-steps", "2"] if args.quick else [])]
        print("$ llama", shlex.join(argv), flush=True)
        wall, peak, _ = llama(*argv)
        final = read_log(out / "log.jsonl")[-1]
        model = load_model(base_dir)
        full = flags[1] == "0"
        model = load_model(out / "model") if full else load_adapter(model, out / "adapter")
        trainable = sum(p.numel() for p in model.parameters()) if full else trainable_parameters(model)[0]
        total = sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n)
        rows.append({"run": name, "val_bpb": round(final["val_bpb"], 4), "trainable": trainable,
                     "share": trainable / total, "optimizer_bytes": 12 * trainable,  # gradient + AdamW's 2 moments, float32
                     "peak_rss_mb": round(peak / 1024), "train_s": round(final["elapsed"], 1), "wall_s": round(wall, 1),
                     "adapter_bytes": sum(f.stat().st_size for f in (out / "adapter").iterdir()) if (out / "adapter").is_dir() else None})
        samples[name] = sample(model, tokenizer, 200 if not args.quick else 10)
    base = load_model(base_dir)
    val = np.load(RUN / "LoRA-r1" / "data" / "val.npy")
    before = evaluate(base.eval(), val, 256, token_byte_lengths(tokenizer))
    samples["base"] = sample(base, tokenizer, 200 if not args.quick else 10)
    spectra = singular_values(load_model(base_dir), load_model(RUN / "full-fine-tune" / "model"))
    result = {"pretrain": "llama train " + shlex.join(PRETRAIN_ARGS), "finetune": "llama finetune " + shlex.join(FINETUNE_ARGS),
              "runs": {name: flags for name, flags in RUNS}, "before_val_bpb": round(before["bpb"], 4),
              "val_tokens": before["tokens"], "val_bytes": before["bytes"], "rows": rows, "samples": samples,
              "singular_values": spectra, "threads": torch.get_num_threads(), "machine": machine(),
              "load_average_end": round(os.getloadavg()[0], 2)}
    result["command"] = "python benchmarks/finetune.py"
    print(machine_line())
    print(results_markdown(result))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if not args.quick:
        report.write("finetune", results_markdown(result), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
