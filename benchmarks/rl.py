"""GRPO on a model that has only read a task's text: held-out accuracy before and after, and the reward at each step.

Run from the repository root::

    python benchmarks/rl.py            # about two minutes of training, then the RL steps (minutes on 2 cores)
    python benchmarks/rl.py --save     # the same, then benchmarks/results/rl.{json,md}
    python benchmarks/rl.py --quick    # the tiny model, a few steps of each: check that the script runs

1. :func:`llama.posttraining.tasks.write_corpus` writes :data:`PROBLEMS` training problems of
   :data:`TASK` with their answers to ``runs/rl/corpus.txt``;
2. ``llama train`` trains the book's model on that text from scratch (:data:`TRAIN_ARGS`, at most
   :data:`TRAIN_SECONDS` seconds): the model learns the format and some of the task;
3. :func:`llama.posttraining.evaluate.evaluate_task` scores it on :data:`HELD_OUT` held-out problems
   (greedy accuracy);
4. :data:`STEPS` steps of :func:`llama.posttraining.rl.rl_step` (GRPO): each samples a group of
   :data:`GROUP` replies at temperature 1 to each of :data:`PROBLEMS_PER_STEP` training problems
   with :func:`llama.posttraining.rl.rollout`, rewards them with the task's grader, and takes one
   AdamW step; the mean reward of each step's replies is the reward curve;
5. the same held-out problems are scored again.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, machine_line  # noqa: E402
from task_runs import REPO, RESULTS, benchmark_parser, fresh_folder, llama, load_average, parse, rel  # noqa: E402

RUN = REPO / "runs" / "rl"

TASK, DIFFICULTY = "addition", {"digits": 2}
PROBLEMS = 40_000
TRAIN_SECONDS = 110.0
# The recipe's settings with its old weight decay, 0.1: these runs read their problems about once,
# and their results were measured so (the recipe's 1.0 holds back a small text read many times).
TRAIN_ARGS = ["--recipe", "shakespeare", "--weight-decay", "0.1", "--tokenizer", "bytes",
              "--max-steps", "600", "--max-time", str(TRAIN_SECONDS),
              "--eval-every", "300", "--sample-tokens", "0", "--dtype", "float32", "--no-progress"]
QUICK_ARGS = ["--model", "tiny", "--max-steps", "20", "--eval-every", "10"]
HELD_OUT = 200
STEPS, PROBLEMS_PER_STEP, GROUP = 30, 8, 8
LR, CLIP_EPS, KL_BETA = 1e-4, 0.2, 0.0


def train(corpus: Path, out: Path, quick: bool) -> tuple[list[str], float]:
    """``llama train`` on ``corpus`` into ``out``, in a fresh process: (its arguments, wall seconds)."""
    argv = ["train", "--data", rel(corpus), "--out", rel(out), *TRAIN_ARGS, *(QUICK_ARGS if quick else [])]
    return argv, llama(argv)


def run_rl(out: Path, task, quick: bool) -> dict:
    """Score the trained model, take the GRPO steps, score it again."""
    import torch

    from llama.formats.load import load_model
    from llama.posttraining.evaluate import evaluate_task
    from llama.posttraining.rl import rl_step, rollout
    from llama.posttraining.tasks import ANSWER_PREFIX
    from llama.tokenizers.tokenizer import saved_tokenizer

    model, tokenizer = load_model(out / "model"), saved_tokenizer(out / "model")
    held, steps = (20, 2) if quick else (HELD_OUT, STEPS)
    problems = task.held_out(held)
    # Room for the answer line and the blank line after it, and a few tokens of slack.
    longest = max(len(tokenizer.encode(f"{ANSWER_PREFIX} {p.answer}\n\n")) for p in problems) + 4
    before = evaluate_task(model.eval(), tokenizer, task, problems, max_new_tokens=longest, batch_size=50)
    print(f"held-out greedy accuracy before: {before.accuracy:.3f}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    stream, curve = task.train(seed=1), []
    start = time.perf_counter()
    for step in range(steps):
        batch = rollout(model, tokenizer, task, [next(stream) for _ in range(PROBLEMS_PER_STEP)], GROUP, longest,
                        temperature=1.0, seed=step)
        stats = rl_step(model, batch, optimizer, method="grpo", clip_eps=CLIP_EPS)
        curve.append({"step": step + 1, **{k: round(v, 4) for k, v in stats.items()}})
        print(f"step {step + 1:3d} | reward {stats['reward']:.3f} | flat groups {stats['flat_groups']}", flush=True)
    rl_seconds = time.perf_counter() - start
    after = evaluate_task(model.eval(), tokenizer, task, problems, max_new_tokens=longest, batch_size=50)
    print(f"held-out greedy accuracy after: {after.accuracy:.3f}", flush=True)
    return {"held_out": held, "accuracy_before": before.accuracy, "accuracy_after": after.accuracy,
            "format_before": before.format_rate, "format_after": after.format_rate, "rl_steps": steps,
            "rl_s": round(rl_seconds, 1), "curve": curve}


def table(result: dict) -> list[str]:
    lines = ["| | held-out greedy accuracy | format |", "| --- | ---: | ---: |",
             f"| before RL | {100 * result['accuracy_before']:.1f}% of {result['held_out']} | "
             f"{100 * result['format_before']:.0f}% |",
             f"| after {result['rl_steps']} GRPO steps | {100 * result['accuracy_after']:.1f}% of "
             f"{result['held_out']} | "
             f"{100 * result['format_after']:.0f}% |", "", "| step | mean reward | groups with one reward |",
             "| ---: | ---: | ---: |"]
    lines += [f"| {c['step']} | {c['reward']:.3f} | {c['flat_groups']} of {PROBLEMS_PER_STEP} |"
              for c in result["curve"]]
    return lines


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, "rl", "tiny model, a few steps")
    args = parse(parser, argv)
    import torch

    from llama.posttraining.tasks import make_task, write_corpus

    print(machine_line(), flush=True)
    load_start = load_average("start")
    torch.manual_seed(0)
    task = make_task(TASK, **DIFFICULTY)
    run = fresh_folder(RUN, args.quick)
    corpus = write_corpus(run / "corpus.txt", [task], 2_000 if args.quick else PROBLEMS, seed=0)
    train_argv, wall = train(corpus, run / "run", args.quick)
    result = {"task": repr(task), "train_wall_s": round(wall, 1), **run_rl(run / "run", task, args.quick)}
    load_end = load_average("end")
    print("\n".join(table(result)))
    if args.save:
        command = "python benchmarks/rl.py --save"
        info = machine()
        RESULTS.mkdir(parents=True, exist_ok=True)
        settings = {"problems": PROBLEMS, "steps": STEPS, "problems_per_step": PROBLEMS_PER_STEP, "group": GROUP,
                    "lr": LR, "clip_eps": CLIP_EPS, "kl_beta": KL_BETA}
        (RESULTS / "rl.json").write_text(json.dumps(
            {"command": command, "machine": info, "threads": torch.get_num_threads(),
             "train": "llama " + shlex.join(train_argv), "load_average": [round(load_start, 2), round(load_end, 2)],
             "settings": settings, **result}, indent=1) + "\n")
        (RESULTS / "rl.md").write_text(
            f"`{command}`; {machine_line(info)}; load average {load_start:.2f} at the start, "
            f"{load_end:.2f} at the end; "
            f"`llama train --data CORPUS {shlex.join(TRAIN_ARGS)}` on {PROBLEMS:,} training problems of {task!r}, then "
            f"{STEPS} GRPO steps, each on {PROBLEMS_PER_STEP} training problems with groups of {GROUP} replies sampled "
            f"at temperature 1 (AdamW, lr {LR}, clip {CLIP_EPS}, no KL term)\n\n" + "\n".join(table(result)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
