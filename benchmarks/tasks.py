"""What the book's small model learns of each checkable task: held-out greedy accuracy after a short run.

Run from the repository root::

    python benchmarks/tasks.py            # eight training runs of at most two minutes each (about 20 minutes on 2 cores)
    python benchmarks/tasks.py --save     # the same, then benchmarks/results/tasks.{json,md}
    python benchmarks/tasks.py --quick    # the tiny model, a few steps, two runs: check that the script runs

For each task at two difficulties (:data:`RUNS`):

1. :func:`llama.posttraining.tasks.write_corpus` writes :data:`PROBLEMS` training problems with
   their answers (``What is 41 + 7?`` then ``Answer: 48``, a blank line between) to
   ``runs/tasks/<run>/corpus.txt``; none of them is held out;
2. ``llama train`` trains the book's model on that text from scratch (:data:`TRAIN_ARGS`: one token
   per byte, the book's recipe otherwise, :data:`STEPS` steps or two minutes, whichever comes first);
3. :func:`llama.posttraining.evaluate.evaluate_task` scores the trained model on the task's first
   :data:`HELD_OUT` held-out problems: greedy accuracy and format compliance, and the sampled
   pass@1 and pass@8 at temperature 1 over the first :data:`SAMPLED` of them.

The table gives, per run, the steps made and their time, the final validation bits per byte (of
held-in problems: how well the text of the task is modelled), and the held-out scores.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, machine_line  # noqa: E402
from task_runs import REPO, RESULTS, benchmark_parser, fresh_folder, llama, load_average, parse, rel  # noqa: E402

RUN = REPO / "runs" / "tasks"

#: (task, difficulty): each task at an easy and a harder setting.
RUNS = [("addition", {"digits": 2}), ("addition", {"digits": 4}),
        ("count_letter", {"length": 6}), ("count_letter", {"length": 16}),
        ("reverse_words", {"words": 3}), ("reverse_words", {"words": 6}),
        ("sort_words", {"words": 3}), ("sort_words", {"words": 6})]
PROBLEMS = 40_000  # about 1.3 MB of text: one pass of the run's steps sees most of it once
STEPS = 600
SECONDS = 115.0
HELD_OUT, SAMPLED, K = 200, 50, 8
# The book's recipe (Muon, 16 windows of 128 tokens), with one token per byte: a digit is then a
# token, as a reader counts it. float32 written out, one evaluation in the middle, no sample. Its
# earlier weight decay, 0.1: these runs read their problems about once, and their results were
# measured so (the recipe's 1.0 holds back a small text read many times).
TRAIN_ARGS = ["--recipe", "shakespeare", "--weight-decay", "0.1", "--tokenizer", "bytes", "--max-steps", str(STEPS),
              "--max-time", str(SECONDS), "--eval-every", str(STEPS // 2), "--sample-tokens", "0", "--dtype", "float32",
              "--no-progress"]
QUICK_ARGS = ["--model", "tiny", "--max-steps", "20", "--eval-every", "10"]


def run_name(task: str, difficulty: dict) -> str:
    (knob, level), = difficulty.items()
    return f"{task}-{knob}{level}"


def train(corpus: Path, out: Path, quick: bool) -> tuple[list[str], float]:
    """``llama train`` on ``corpus`` into ``out``, in a fresh process: (its arguments, wall seconds)."""
    argv = ["train", "--data", rel(corpus), "--out", rel(out), *TRAIN_ARGS, *(QUICK_ARGS if quick else [])]
    return argv, llama(argv)


def score(out: Path, task, quick: bool) -> dict:
    """Load the run's model and tokenizer and evaluate them on the task's held-out problems."""
    from llama.formats.load import load_model
    from llama.posttraining.evaluate import evaluate_task
    from llama.posttraining.tasks import ANSWER_PREFIX
    from llama.tokenizers.tokenizer import saved_tokenizer
    from llama.training.state import read_log

    model, tokenizer = load_model(out / "model").eval(), saved_tokenizer(out / "model")
    held, sampled = (20, 5) if quick else (HELD_OUT, SAMPLED)
    problems = task.held_out(held)
    # Room for the answer line and the blank line after it, and a few tokens of slack.
    longest = max(len(tokenizer.encode(f"{ANSWER_PREFIX} {p.answer}\n\n")) for p in problems) + 4
    greedy = evaluate_task(model, tokenizer, task, problems, max_new_tokens=longest, batch_size=50)
    drawn = evaluate_task(model, tokenizer, task, problems[:sampled], max_new_tokens=longest, samples=K,
                          ks=(1, K), temperature=1.0, seed=0, batch_size=64)
    final = read_log(out / "log.jsonl")[-1]
    return {"steps": final["step"], "train_s": round(final["elapsed"], 1), "val_bpb": round(final["val_bpb"], 4),
            "held_out": greedy.problems, "accuracy": greedy.accuracy, "format_rate": greedy.format_rate,
            "sampled_problems": drawn.problems, "pass_at_1": drawn.pass_at[1], f"pass_at_{K}": drawn.pass_at[K],
            "examples": [{"prompt": p.prompt, "answer": p.answer, "reply": r}
                         for p, r in list(zip(problems, greedy.greedy_replies))[:3]]}


def table(rows: list[dict]) -> list[str]:
    lines = [f"| task | difficulty | steps | training s | val bits per byte | held-out greedy accuracy | format | "
             f"sampled pass@1 | sampled pass@{K} |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['difficulty']} | {r['steps']} | {r['train_s']} | {r['val_bpb']:.3f} | "
                     f"{100 * r['accuracy']:.1f}% of {r['held_out']} | {100 * r['format_rate']:.0f}% | "
                     f"{100 * r['pass_at_1']:.1f}% | {100 * r[f'pass_at_{K}']:.1f}% |")
    return lines


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, "tasks", "tiny model, 20 steps, two runs")
    args = parse(parser, argv)
    import torch

    from llama.posttraining.tasks import make_task, write_corpus

    print(machine_line(), flush=True)
    load_start = load_average("start")
    rows, commands = [], []
    for task_name, difficulty in RUNS[::4] if args.quick else RUNS:
        task, name = make_task(task_name, **difficulty), run_name(task_name, difficulty)
        folder = fresh_folder(RUN / name, args.quick)
        corpus = write_corpus(folder / "corpus.txt", [task], 2_000 if args.quick else PROBLEMS, seed=0)
        argv, wall = train(corpus, folder / "run", args.quick)
        commands.append("llama " + shlex.join(argv))
        row = {"task": task_name, "difficulty": ", ".join(f"{k} {v}" for k, v in difficulty.items()),
               "wall_s": round(wall, 1), **score(folder / "run", task, args.quick)}
        rows.append(row)
        print(table([row])[-1], flush=True)
    load_end = load_average("end")
    print("\n".join(table(rows)))
    if args.save:
        command = "python benchmarks/tasks.py --save"
        info = machine()
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "tasks.json").write_text(json.dumps(
            {"command": command, "machine": info, "threads": torch.get_num_threads(), "problems": PROBLEMS,
             "train": commands, "load_average": [round(load_start, 2), round(load_end, 2)], "rows": rows},
            indent=1) + "\n")
        (RESULTS / "tasks.md").write_text(
            f"`{command}`; {machine_line(info)}; load average {load_start:.2f} at the start, {load_end:.2f} at the end; "
            f"each run: `llama train --data CORPUS {shlex.join(TRAIN_ARGS)}` on {PROBLEMS:,} training problems, then "
            f"greedy replies to {HELD_OUT} held-out problems and {K} replies sampled at temperature 1 to the first "
            f"{SAMPLED} of them\n\n" + "\n".join(table(rows)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
