"""The whole post-training pipeline on one task: pre-training, SFT, DPO and RL, each a ``llama`` command, timed and scored.

Run from the repository root::

    python benchmarks/pipeline.py               # three seeds, about 15 minutes each on 2 cores
    python benchmarks/pipeline.py --seeds 1     # one seed
    python benchmarks/pipeline.py --save        # three seeds, then benchmarks/results/pipeline.{json,md}
    python benchmarks/pipeline.py --quick       # the tiny model, a few steps of each: check that the script runs

For each seed, in ``runs/pipeline/seed-N``:

1. :func:`llama.posttraining.tasks.write_corpus` writes :data:`PROBLEMS` training problems of
   :data:`TASK` with their answers, in plain text (none held out);
2. ``llama train`` pre-trains the book's model on it from scratch (:data:`TRAIN_ARGS`);
3. ``llama sft`` fine-tunes the result on the task's conversations (:data:`SFT_ARGS`): a chat model;
4. ``llama dpo`` takes DPO steps on pairs of its own replies, a right one preferred to a wrong one (:data:`DPO_ARGS`);
5. ``llama rl`` takes GRPO steps on groups of its own replies, from the DPO model (:data:`RL_ARGS`);
6. beside the pipeline, ``llama rl`` takes the same steps from the SFT model: what RL does without DPO.

After each stage the model is asked :data:`HELD_OUT` held-out problems, greedily and :data:`SAMPLES`
times at temperature 1 (the sampled pass@1 and pass@k): the base in plain text (what its corpus looks
like), the others as chat turns (``benchmarks/task_runs.py``'s ``score``). The sampled pass@1 is
what RL's mean reward estimates, on problems it never trained on. Each
stage's time is its command's wall time; the reward curve is the mean reward of each RL step's
replies, from ``llama rl``'s log. The medians over the seeds are checked against the targets: the
whole pipeline in :data:`TOTAL_SECONDS`, each stage in :data:`STAGE_SECONDS`, the chat format on at
least :data:`CHAT_FORMAT` of the held-out prompts after SFT, and RL's gain over SFT at least 15
points or half of SFT's error rate, whichever is smaller.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, machine_line  # noqa: E402
from task_runs import REPO, RESULTS, benchmark_parser, fresh_folder, llama, load_average, parse, rel, score  # noqa: E402

RUN = REPO / "runs" / "pipeline"

#: Three-digit addition, with the column sums written out in 30% of the demonstrations (the corpus
#: and SFT's replies; the others give the answer alone). The model learns both ways of answering and,
#: asked greedily, takes the commoner one, the answer alone, which it gets mostly wrong; with the
#: work written out it is mostly right. RL has a choice to reward. On sorting five words the SFT
#: model was already right on nearly every problem, its errors were confusions of similar words, and
#: RL did not halve them; on two-digit addition without work it was so rarely right that most groups
#: had one reward for every reply.
TASK, DIFFICULTY = "addition", {"digits": 3, "work": 30}
PROBLEMS = 80_000
HELD_OUT = 200
SAMPLES = 8  # replies sampled per held-out problem: pass@1 and pass@8
# The sum restated and three column sums (54 bytes at most), Answer: and four digits, <|eot_id|>, and room.
MAX_NEW_TOKENS = 80
#: The pipeline's four stages, then ``llama rl`` run from the SFT model too: what RL does without DPO before it.
PIPELINE = ("base", "sft", "dpo", "rl")
STAGES = (*PIPELINE, "rl_from_sft")
TOTAL_SECONDS, STAGE_SECONDS, CHAT_FORMAT = 15 * 60, 5 * 60, 0.99
# The recipe's settings with its old weight decay, 0.1: these runs read their problems about once,
# and their results were measured so (the recipe's 1.0 holds back a small text read many times).
TRAIN_ARGS = ["--recipe", "shakespeare", "--weight-decay", "0.1", "--tokenizer", "bytes",
              "--max-steps", "1500", "--max-time", "240",
              "--eval-every", "500", "--sample-tokens", "0", "--dtype", "float32", "--no-progress"]
SFT_ARGS = ["--block-size", "128", "--batch-size", "16", "--max-steps", "200", "--eval-every", "100",
            "--sample-tokens", "0", "--dtype", "float32", "--no-progress"]
DPO_ARGS = ["--max-steps", "40", "--problems-per-step", "8", "--group", "8", "--lr", "1e-5", "--beta", "0.1",
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--save-every", "10"]
RL_ARGS = ["--method", "grpo", "--max-steps", "150", "--problems-per-step", "8", "--group", "8", "--lr", "1e-4",
           "--kl-beta", "0", "--max-new-tokens", str(MAX_NEW_TOKENS), "--save-every", "50"]
QUICK = {"train": ["--model", "tiny", "--max-steps", "20", "--eval-every", "10"],
         "sft": ["--max-steps", "10", "--eval-every", "10", "--eval-tokens", "256"],
         "dpo": ["--max-steps", "2", "--problems-per-step", "2", "--group", "4", "--max-new-tokens", "16"],
         "rl": ["--max-steps", "2", "--problems-per-step", "2", "--group", "4", "--max-new-tokens", "16"]}
#: --quick's reward: the tiny model never answers right, so its DPO and RL steps reward even-length
#: replies instead (half of them), to check that every command runs. Its replies are random bytes,
#: mostly not UTF-8: DPO's pairs are text, and each such byte comes back from the text as the three
#: bytes of U+FFFD, so its replies get 16 tokens, whose text then fits the tiny model's 128.
QUICK_REWARD = "def even_length(reply, problem):\n    return float(len(reply) % 2 == 0)\n"


def commands(folder: Path, seed: int, quick: bool, threads: int | None = None) -> dict[str, list[str]]:
    """The stages' ``llama`` arguments for one seed, in ``folder`` (each given ``--threads``, if set)."""
    task = ["--task", TASK, "--task-args", ",".join(f"{knob}={level}" for knob, level in DIFFICULTY.items())]
    extra = {k: [*v, "--reward", rel(folder / "reward.py") + ":even_length"] if k in ("dpo", "rl") else v
             for k, v in QUICK.items()} if quick else {k: [] for k in QUICK}
    seeded = ["--seed", str(seed), *(["--threads", str(threads)] if threads else [])]
    rl = [*task, *RL_ARGS, *seeded, *extra["rl"]]
    return {"base": ["train", "--data", rel(folder / "corpus.txt"), "--out", rel(folder / "base"), *TRAIN_ARGS, *seeded,
                     *extra["train"]],
            "sft": ["sft", "--base", rel(folder / "base" / "model"), *task, "--data", rel(folder / "corpus.txt"),
                    "--out", rel(folder / "sft"), *SFT_ARGS, *seeded, *extra["sft"]],
            "dpo": ["dpo", "--base", rel(folder / "sft" / "model"), *task, "--out", rel(folder / "dpo"), *DPO_ARGS,
                    *seeded, *extra["dpo"]],
            "rl": ["rl", "--base", rel(folder / "dpo" / "model"), "--out", rel(folder / "rl"), *rl],
            "rl_from_sft": ["rl", "--base", rel(folder / "sft" / "model"), "--out", rel(folder / "rl_from_sft"), *rl]}


def run_seed(seed: int, task, quick: bool, threads: int | None = None) -> dict:
    """The four stages for one seed, each scored on the held-out problems after it."""
    from llama.posttraining.tasks import write_corpus
    from llama.training.state import read_log

    folder = fresh_folder(RUN / f"seed-{seed}", quick)
    write_corpus(folder / "corpus.txt", [task], 2_000 if quick else PROBLEMS, seed=seed)
    if quick:
        (folder / "reward.py").write_text(QUICK_REWARD)
    problems = task.held_out(20 if quick else HELD_OUT)
    samples = 2 if quick else SAMPLES
    argv = commands(folder, seed, quick, threads)
    walls, scores = {}, {}
    for stage in STAGES:
        walls[stage] = round(llama(argv[stage]), 1)
        scores[stage] = score(folder / stage / "model", task, problems, chat=stage != "base",
                              max_new_tokens=MAX_NEW_TOKENS, samples=samples)
        print(f"seed {seed} | {stage} | {walls[stage]:.0f} s | held-out accuracy {100 * scores[stage]['accuracy']:.1f}%, "
              f"sampled pass@1 {100 * scores[stage]['pass_at_1']:.1f}%", flush=True)
    curves = {stage: [round(r["reward"], 4) for r in read_log(folder / out / "log.jsonl") if not r.get("final")]
              for stage, out in (("rl", "rl"), ("rl_from_sft", "rl_from_sft"))}
    dpo = [r for r in read_log(folder / "dpo" / "log.jsonl") if not r.get("final")]
    return {"seed": seed, "wall_s": walls, "scores": scores, "held_out": len(problems), "samples": samples,
            "reward_curve": curves["rl"], "reward_curve_from_sft": curves["rl_from_sft"],
            "dpo_steps": [{k: round(r[k], 4) for k in ("loss", "accuracy", "margin", "pairs")} for r in dpo],
            "commands": {k: "llama " + shlex.join(v) for k, v in argv.items()}}


def summary(runs: list[dict]) -> dict:
    """Medians over the seeds, and each target met or not."""
    median = {stage: {"accuracy": statistics.median(r["scores"][stage]["accuracy"] for r in runs),
                      "pass_at_1": statistics.median(r["scores"][stage]["pass_at_1"] for r in runs),
                      "work_rate": statistics.median(r["scores"][stage]["work_rate"] for r in runs),
                      "wall_s": statistics.median(r["wall_s"][stage] for r in runs)} for stage in STAGES}
    chat = statistics.median(r["scores"]["sft"]["chat_format_rate"] for r in runs)
    total = statistics.median(sum(r["wall_s"][stage] for stage in PIPELINE) for r in runs)
    sft, rl, dpo = (median[s]["accuracy"] for s in ("sft", "rl", "dpo"))
    wanted = min(0.15, (1 - sft) / 2)
    return {"median": median, "sft_chat_format_rate": chat, "total_wall_s": total, "rl_gain": rl - sft,
            "rl_gain_wanted": wanted, "dpo_change": dpo - sft, "rl_over_dpo": rl - dpo,
            "rl_from_sft_gain": median["rl_from_sft"]["accuracy"] - sft,
            "rl_sampled_gain": median["rl"]["pass_at_1"] - median["sft"]["pass_at_1"],
            "met": {"total": total <= TOTAL_SECONDS, "each_stage": all(m["wall_s"] <= STAGE_SECONDS for m in median.values()),
                    "chat_format": chat >= CHAT_FORMAT, "rl_gain": rl - sft >= wanted}}


def table(result: dict) -> list[str]:
    """The results as Markdown: accuracy and time by stage, then the targets."""
    runs, s = result["runs"], result["summary"]
    names = {"base": "base (pre-trained), asked in plain text", "sft": "after `llama sft`, as a chat turn",
             "dpo": "after `llama dpo`", "rl": "after `llama rl`",
             "rl_from_sft": "beside them: `llama rl` from the SFT model, without DPO"}
    seeds = ", ".join(str(r["seed"]) for r in runs)
    k = runs[0]["samples"]
    lines = [f"| stage | command's wall s (median) | held-out accuracy (median) | each seed ({seeds}) | "
             f"in the chat format | showing work | sampled pass@1 (median) | each seed | sampled pass@{k} (median) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for stage in STAGES:
        chat = statistics.median(r["scores"][stage]["chat_format_rate"] or 0 for r in runs)
        lines.append(f"| {names[stage]} | {s['median'][stage]['wall_s']:.0f} | {100 * s['median'][stage]['accuracy']:.1f}% "
                     f"of {runs[0]['held_out']} | "
                     + ", ".join(f"{100 * r['scores'][stage]['accuracy']:.1f}%" for r in runs)
                     + f" | {'-' if stage == 'base' else f'{100 * chat:.1f}%'} | {100 * s['median'][stage]['work_rate']:.1f}% "
                     f"| {100 * s['median'][stage]['pass_at_1']:.1f}% | "
                     + ", ".join(f"{100 * r['scores'][stage]['pass_at_1']:.1f}%" for r in runs)
                     + f" | {100 * statistics.median(r['scores'][stage]['pass_at_k'] for r in runs):.1f}% |")
    met = {True: "yes", False: "**no**"}
    lines += ["", "| target | measured (median) | met |", "| --- | ---: | --- |",
              f"| the whole pipeline in {TOTAL_SECONDS // 60} minutes | {s['total_wall_s'] / 60:.1f} min | "
              f"{met[s['met']['total']]} |",
              f"| each stage in {STAGE_SECONDS // 60} minutes | longest {max(m['wall_s'] for m in s['median'].values()) / 60:.1f} "
              f"min | {met[s['met']['each_stage']]} |",
              f"| after SFT, {100 * CHAT_FORMAT:.0f}% of replies in the chat format | {100 * s['sft_chat_format_rate']:.1f}% | "
              f"{met[s['met']['chat_format']]} |",
              f"| RL over SFT: +15 points, or half the error rate if smaller (+{100 * s['rl_gain_wanted']:.1f}) | "
              f"{100 * s['rl_gain']:+.1f} points | {met[s['met']['rl_gain']]} |",
              f"| DPO over SFT (measured, no target) | {100 * s['dpo_change']:+.1f} points | - |",
              f"| RL over DPO, the model it starts from (measured, no target) | {100 * s['rl_over_dpo']:+.1f} points | - |",
              f"| RL from the SFT model, without DPO, over SFT (measured, no target) | "
              f"{100 * s['rl_from_sft_gain']:+.1f} points | - |",
              f"| RL over SFT in sampled pass@1 (measured, no target) | {100 * s['rl_sampled_gain']:+.1f} points | - |"]
    return lines


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, "pipeline", "tiny model, a few steps")
    parser.add_argument("--seeds", type=int, default=3, help="runs of the whole pipeline, seeds 0, 1, ... (default 3)")
    parser.add_argument("--threads", type=int, help="threads of every stage (default: PyTorch's, one per core); on a "
                        "machine shared with other work, 1 keeps two threads from waiting on each other")
    args = parse(parser, argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    import torch

    from llama.posttraining.tasks import make_task

    if args.threads:
        torch.set_num_threads(args.threads)  # the scoring, in this process; the machine line then says it
    print(machine_line(), flush=True)
    load_start = load_average("start")
    task = make_task(TASK, **DIFFICULTY)
    runs = [run_seed(seed, task, args.quick, args.threads) for seed in range(args.seeds)]
    load_end = os.getloadavg()[0]
    result = {"task": repr(task), "runs": runs, "summary": summary(runs)}
    print(f"load average {load_end:.2f} at the end")
    print("\n".join(table(result)))
    if args.save:
        command, info = "python benchmarks/pipeline.py --save", machine()
        RESULTS.mkdir(parents=True, exist_ok=True)
        saved = {"command": command, "machine": info, "threads": torch.get_num_threads(),
                 "load_average": [round(load_start, 2), round(load_end, 2)], **result}
        (RESULTS / "pipeline.json").write_text(json.dumps(saved, indent=1) + "\n")
        (RESULTS / "pipeline.md").write_text(results_markdown(saved))
    return 0


def results_markdown(saved: dict) -> str:
    """``pipeline.md`` from ``pipeline.json``: the command, the machine and the load, then the tables."""
    first = saved["runs"][0]["commands"]
    return (f"`{saved['command']}`; {machine_line(saved['machine'])}; load average {saved['load_average'][0]:.2f} at "
            f"the start, {saved['load_average'][1]:.2f} at the end; {saved['task']}, {len(saved['runs'])} seeds, each: "
            + "; then ".join(f"`{first[s]}`" for s in PIPELINE) + f"; and beside them `{first['rl_from_sft']}`; "
            f"greedy replies to {saved['runs'][0]['held_out']} "
            f"held-out problems of at most {MAX_NEW_TOKENS} tokens after each stage, and {saved['runs'][0]['samples']} "
            "replies to each sampled at temperature 1 (pass@k by the unbiased estimator)\n\n" + "\n".join(table(saved)) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
