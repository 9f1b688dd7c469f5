"""What the post-training benchmarks share: running ``llama`` in a fresh process and timing it, and
scoring a model on a task's held-out problems, asked in plain text or as a chat turn.

``benchmarks/tasks.py``, ``sft.py``, ``rl.py`` and ``pipeline.py`` import it as their neighbour.
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
RESULTS = REPO / "benchmarks" / "results"


def benchmark_parser(doc: str, name: str, quick: str) -> argparse.ArgumentParser:
    """The parser of a post-training benchmark: its docstring's first line, ``--quick`` (which does
    ``quick``) and ``--save`` (``benchmarks/results/NAME.{json,md}``); a script adds its own flags."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{quick}: check that the script runs (in folders "
                        "named *-quick, which leave a measured run's folders as they are)")
    parser.add_argument("--save", action="store_true", help=f"write benchmarks/results/{name}.json and {name}.md")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser``'s arguments; ``--quick`` with ``--save`` is refused: a quick run measures nothing worth keeping."""
    args = parser.parse_args(argv)
    if args.quick and args.save:
        parser.error("--quick measures nothing worth keeping: run without it to --save")
    return args


def load_average(when: str) -> float:
    """The 1-minute load average, printed: other processes on these cores slow every stage."""
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} at the {when}", flush=True)
    return load


def fresh_folder(path: Path, quick: bool) -> Path:
    """``path``, emptied for a new run; for ``--quick``, its sibling ``<name>-quick`` instead, so that
    checking that a script runs never deletes the models of a measured run."""
    if quick:
        path = path.with_name(path.name + "-quick")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def llama(argv: list[str]) -> float:
    """``llama ARGV`` in a fresh process, from the repository root; its wall seconds.

    Raises:
        SystemExit: the command failed (its stderr is shown).
    """
    print("$ llama", shlex.join(argv), flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llama.cli", *argv], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"llama {shlex.join(argv)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def rel(path: Path) -> str:
    """``path`` as the commands are printed: relative to the repository root."""
    return str(path.relative_to(REPO))


def shows_work(reply: str) -> bool:
    """Whether a reply has an ``Answer:`` line and writes something (its work) before it."""
    from llama.posttraining.tasks import ANSWER_PREFIX, parse_answer

    return parse_answer(reply) is not None and not reply.lstrip().startswith(ANSWER_PREFIX)


def work_rate(replies) -> float:
    """The share of ``replies`` that :func:`shows_work`."""
    return sum(map(shows_work, replies)) / len(replies)


def score(folder: Path, task, problems, chat: bool, max_new_tokens: int, samples: int = 0) -> dict:
    """Greedy replies of the model in ``folder`` to ``problems``, as chat turns (``chat``) or in plain text,
    and with ``samples``, that many replies to each sampled at temperature 1.

    A reply is *in the chat format* when it ends with ``<|eot_id|>`` within ``max_new_tokens`` and
    holds a well-formed ``Answer:`` line; the accuracy is the grader's (:meth:`llama.posttraining.tasks.Task.grade`).
    The sampled replies give the pass@1 and pass@``samples`` of
    :func:`~llama.posttraining.evaluate.evaluate_task`: what RL's rewards are an estimate of, where
    greedy decoding takes each step's likeliest token.

    Returns:
        ``asked``, ``accuracy``, ``format_rate`` (an ``Answer:`` line), ``chat_format_rate`` (``None``
        in plain text), ``work_rate`` (greedy replies that write something before their ``Answer:``
        line: :func:`shows_work`), the first three replies, and with ``samples``, ``pass_at_1`` and ``pass_at_k``.
    """
    from llama.formats.load import load_model
    from llama.posttraining.chat import CHAT_TOKENS, EOT, ChatFormat
    from llama.posttraining.evaluate import evaluate_task
    from llama.posttraining.sft import chat_replies
    from llama.posttraining.special_tokens import add_special_tokens, resize_vocab
    from llama.tokenizers.tokenizer import saved_tokenizer

    model, tokenizer = load_model(folder).eval(), saved_tokenizer(folder)
    drawn = {}
    if not chat:
        result = evaluate_task(model, tokenizer, task, problems, max_new_tokens=max_new_tokens, batch_size=50,
                               samples=samples, ks=(1, samples) if samples else (1,))
        if samples:
            drawn = {"pass_at_1": result.pass_at[1], "pass_at_k": result.pass_at[samples]}
        return {"asked": "plain text", "accuracy": result.accuracy, "format_rate": result.format_rate,
                "chat_format_rate": None, "work_rate": work_rate(result.greedy_replies),
                "examples": list(result.greedy_replies[:3]), **drawn}
    tokenizer = add_special_tokens(tokenizer, CHAT_TOKENS)  # a base has no chat tokens: give it their rows
    if tokenizer.vocab_size > model.config.vocab_size:
        resize_vocab(model, tokenizer.vocab_size)
    chat_format = ChatFormat(tokenizer)
    replies = chat_replies(model, chat_format, [p.prompt for p in problems], max_new_tokens, batch_size=50)
    grades = [task.grade(text, p) for (text, _), p in zip(replies, problems)]
    if samples:
        result = evaluate_task(model, tokenizer, task, problems, max_new_tokens=max_new_tokens, samples=samples,
                               ks=(1, samples), batch_size=64, format_prompt=chat_format.prompt, stop=(EOT,))
        drawn = {"pass_at_1": result.pass_at[1], "pass_at_k": result.pass_at[samples]}
    n = len(problems)
    return {"asked": "chat turn", "accuracy": sum(g.reward for g in grades) / n,
            "format_rate": sum(g.formatted for g in grades) / n,
            "chat_format_rate": sum(g.formatted and ended for g, (_, ended) in zip(grades, replies)) / n,
            "work_rate": work_rate([text for text, _ in replies]), "examples": [text for text, _ in replies[:3]], **drawn}
