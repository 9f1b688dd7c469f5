"""Tasks whose answers can be checked: problems generated from a seed, a fixed answer format, a grader, and a held-out split.

A task makes problems (a prompt and its one right answer) from a seeded random generator, so it
needs no download and has no end. Every reply ends with a line ``Answer: <value>``; the grader
reads the value from the last such line (as GSM8K's graders read the number after ``####``),
normalises it the way the task allows (``1,311`` is ``1311``; ``cat, dog`` is ``cat dog``) and
compares it with the right answer: reward 1.0 or 0.0, and a flag that says whether the reply
kept the format at all.

Which problems are held out is decided by the problem itself: a hash of its prompt. The training
stream skips every held-out prompt, so no evaluation problem is ever trained on, whatever the
seeds and however long training runs.

>>> task = make_task("addition", digits=3)
>>> problem = task.held_out(1)[0]
>>> problem.prompt
'What is 417 + 201?'
>>> task.grade("7 + 1 = 8, then 1 + 0 = 1, then 4 + 2 = 6.\\nAnswer: 618.", problem)
Grade(reward=1.0, formatted=True, answer='618')
>>> task.is_held_out(problem), any(task.is_held_out(p) for p in task.train_problems(1000, seed=0))
(True, False)
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llama._files import atomic_write_text

__all__ = [
    "ANSWER_PREFIX", "HELD_OUT_FRACTION", "HELD_OUT_SEED", "WORDS", "TASKS", "WORK", "Problem", "Grade", "Task",
    "make_task", "parse_answer", "document", "solution", "corpus", "write_corpus",
]

# --8<-- [start:format]
#: Every reply ends with a line that starts with this; the grader reads what follows it.
ANSWER_PREFIX = "Answer:"
_ANSWER_LINE = re.compile(r"^[ \t]*Answer:[ \t]*(?P<value>.*?)[ \t]*$", re.MULTILINE)


def parse_answer(reply: str) -> str | None:
    """The value of the last ``Answer:`` line of ``reply``, or ``None`` if it has none.

    Tolerated: text before it (reasoning), spaces around the value, one final period, blank lines
    after it. Refused (``None``): no line that starts with ``Answer:``, or an empty value. Whether
    the value itself is well formed (a number, a list of words) is the task's to say.

    Args:
        reply: the model's reply, decoded to text.

    Returns:
        The value, stripped, or ``None``.

    Raises:
        TypeError: ``reply`` is not a string (token ids must be decoded first).

    >>> parse_answer("7 + 5 carries a one.\\nAnswer: 12.\\n")
    '12'
    >>> parse_answer("The answer is 12") is None, parse_answer("Answer:") is None
    (True, True)
    """
    if not isinstance(reply, str):
        raise TypeError(f"a reply must be a str, got {type(reply).__name__}: decode the model's token ids "
                        "with its tokenizer first (tokenizer.decode(ids))")
    values = [m["value"] for m in _ANSWER_LINE.finditer(reply)]
    value = values[-1].removesuffix(".").strip() if values else ""
    return value or None
# --8<-- [end:format]


# --8<-- [start:normalise]
_INTEGER = re.compile(r"[+-]?(\d+|\d{1,3}(,\d{3})+)")
_WORD_LIST = re.compile(r"[A-Za-z]+((?:[ \t]*,[ \t]*|[ \t]+)[A-Za-z]+)*")


def _integer(value: str) -> str | None:
    """``"1,311"``, ``"+1311"`` and ``"1311"`` are ``"1311"``; ``"13.1"``, ``"1 311"`` or ``"about 1311"`` are not numbers."""
    return str(int(value.replace(",", ""))) if _INTEGER.fullmatch(value) else None


def _words(value: str) -> str | None:
    """Words separated by spaces or commas, as one space-separated string; anything else is ``None``."""
    return " ".join(re.findall(r"[A-Za-z]+", value)) if _WORD_LIST.fullmatch(value) else None
# --8<-- [end:normalise]


@dataclass(frozen=True)
class Problem:
    """One problem of a task.

    Attributes:
        prompt: the question, one line of text.
        answer: the right answer, normalised (what :meth:`Task.grade` compares with).
        work: what a worked demonstration writes before its ``Answer:`` line (the column sums of
            an addition, say), or ``""`` for the answer alone. Training text and SFT replies
            show it (:func:`document`); the grader never reads it.
    """

    prompt: str
    answer: str
    work: str = ""


@dataclass(frozen=True)
class Grade:
    """What the grader made of one reply.

    Attributes:
        reward: 1.0 when the answer is right, else 0.0.
        formatted: the reply ends its answer the way the task asks (an ``Answer:`` line whose
            value is well formed), right or wrong.
        answer: the normalised value read from the reply, or ``None``.
    """

    reward: float
    formatted: bool
    answer: str | None


# --8<-- [start:generators]
#: Short, common English words in lowercase: the vocabulary of the word tasks.
WORDS = tuple("""apple bird blue boat bread cake cat chair cloud cold corn cup desk dog door duck egg fish
    flag frog game gift girl goat gold hand hat hill home horse house iron jam key king lamp leaf lion
    milk moon nest note oak owl pen pig plum rain ring road rock rose salt sand ship shoe silk snow star
    stone sun tree wave wind wolf""".split())


def _number(rng: random.Random, digits: int) -> int:
    """A number with exactly ``digits`` digits (one digit: 0 to 9)."""
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)


def _addition(rng: random.Random, digits: int) -> tuple[str, str]:
    a, b = _number(rng, digits), _number(rng, digits)
    return f"What is {a} + {b}?", str(a + b)


def _multiplication(rng: random.Random, digits: int) -> tuple[str, str]:
    a, b = _number(rng, digits), _number(rng, digits)
    return f"What is {a} * {b}?", str(a * b)


def _count_letter(rng: random.Random, length: int) -> tuple[str, str]:
    # A quarter of the letters are the one asked about, so counts spread over 0 .. length.
    letter = rng.choice(string.ascii_lowercase)
    others = string.ascii_lowercase.replace(letter, "")
    text = "".join(letter if rng.random() < 0.25 else rng.choice(others) for _ in range(length))
    return f"How many times does the letter {letter} appear in {text}?", str(text.count(letter))


def _reverse_words(rng: random.Random, words: int) -> tuple[str, str]:
    chosen = rng.sample(WORDS, words)
    return f"Reverse the words: {' '.join(chosen)}", " ".join(reversed(chosen))


def _sort_words(rng: random.Random, words: int) -> tuple[str, str]:
    chosen = rng.sample(WORDS, words)
    return f"Sort the words: {' '.join(chosen)}", " ".join(sorted(chosen))


#: name -> (generator, how its answers are normalised, its difficulty knob, the knob's default and largest value).
TASKS: dict[str, tuple[Callable[..., tuple[str, str]], Callable[[str], str | None], str, int, int]] = {
    "addition": (_addition, _integer, "digits", 3, 30),
    "multiplication": (_multiplication, _integer, "digits", 2, 30),
    "count_letter": (_count_letter, _integer, "length", 8, 200),
    "reverse_words": (_reverse_words, _words, "words", 4, len(WORDS)),
    "sort_words": (_sort_words, _words, "words", 4, len(WORDS)),
}
# --8<-- [end:generators]


# --8<-- [start:work]
def _addition_work(prompt: str) -> str:
    """The sum restated, then its column sums, right to left, each with the carry it takes in:
    ``What is 417 + 205?`` -> ``417 + 205: 7 + 5 = 12, 1 + 0 + 1 = 2, 4 + 2 = 6.``

    Restated, the digits each column reads stand at the same distance from it wherever the
    question is, in plain text or after a chat template's header."""
    a, b = re.findall(r"\d+", prompt)
    width = max(len(a), len(b))
    a, b, carry, sums = a.zfill(width), b.zfill(width), 0, []
    for x, y in zip(map(int, reversed(a)), map(int, reversed(b))):
        total = x + y + carry
        sums.append(f"{x} + {y}{' + 1' if carry else ''} = {total}")
        carry = total // 10
    return f"{a} + {b}: " + ", ".join(sums) + "."


#: name -> the worked steps of a problem, from its prompt: the tasks whose demonstrations can show work.
WORK: dict[str, Callable[[str], str]] = {"addition": _addition_work}
# --8<-- [end:work]

# --8<-- [start:split]
#: The share of each task's problems that is held out for evaluation.
HELD_OUT_FRACTION = 0.1
#: The seed of the held-out set: fixed, so every evaluation of a task scores the same problems.
HELD_OUT_SEED = 0


def _bucket(prompt: str) -> float:
    """A number in [0, 1) fixed by the prompt's text alone (the first 8 bytes of its BLAKE2b hash)."""
    return int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "big") / 2**64
# --8<-- [end:split]


class Task:
    """A task at one difficulty: its problems, their split, and the grader of replies.

    Made by :func:`make_task`; ``str(task)`` is its name with the difficulty, e.g. ``addition(digits=3)``.
    """

    def __init__(self, name: str, knob: str, level: int, work: int = 0) -> None:
        self.name, self.knob, self.level, self.work = name, knob, level, work
        self._make, self._normalise = TASKS[name][0], TASKS[name][1]

    def __repr__(self) -> str:
        return f"{self.name}({self.knob}={self.level}{f', work={self.work}' if self.work else ''})"

    # --8<-- [start:task]
    def sample(self, rng: random.Random) -> Problem:
        """One problem from ``rng``, held out or not; ``work`` percent of them show their work.

        Which ones is a function of the prompt's text (its hash, as for the held-out split), so
        the random stream, and with it every problem, is the same whatever ``work`` is.
        """
        prompt, answer = self._make(rng, self.level)
        shown = self.work and _bucket("work:" + prompt) < self.work / 100
        return Problem(prompt, answer, WORK[self.name](prompt) if shown else "")

    def is_held_out(self, problem: Problem | str) -> bool:
        """Whether a problem (or a prompt) belongs to the held-out split: a function of its text alone."""
        prompt = problem.prompt if isinstance(problem, Problem) else problem
        return _bucket(prompt) < HELD_OUT_FRACTION

    def held_out(self, n: int) -> list[Problem]:
        """The first ``n`` distinct held-out problems of the stream seeded with :data:`HELD_OUT_SEED`.

        Raises:
            ValueError: the task at this difficulty has fewer than about ``n`` held-out problems.
        """
        _check_count(n)
        rng, found = random.Random(HELD_OUT_SEED), {}
        for _ in range(int(100 * n / HELD_OUT_FRACTION) + 1000):
            problem = self.sample(rng)
            if self.is_held_out(problem):
                found.setdefault(problem.prompt, problem)
                if len(found) == n:
                    return list(found.values())
        raise ValueError(f"{self} has too few distinct problems to hold out {n} (found {len(found)}): "
                         f"ask for fewer, or raise {self.knob}")

    def train(self, seed: int) -> Iterator[Problem]:
        """An endless stream of training problems from ``seed``, never one of the held-out split."""
        rng = random.Random(seed)
        while True:
            problem = self.sample(rng)
            if not self.is_held_out(problem):
                yield problem
    # --8<-- [end:task]

    def train_problems(self, n: int, seed: int) -> list[Problem]:
        """The first ``n`` problems of :meth:`train` (repeats possible when the task has few problems)."""
        _check_count(n)
        return list(itertools.islice(self.train(seed), n))

    # --8<-- [start:grade]
    def grade(self, reply: str, problem: Problem) -> Grade:
        """Grade one reply to ``problem``: read its ``Answer:`` value, normalise it, compare.

        Args:
            reply: the model's reply, decoded to text.
            problem: the problem it answers.

        Returns:
            The reward, whether the reply kept the format, and the value read.

        Raises:
            TypeError: ``reply`` is not a string, or ``problem`` not a :class:`Problem`.
        """
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be a Problem (from task.held_out or task.train), got "
                            f"{type(problem).__name__}")
        value = parse_answer(reply)
        answer = None if value is None else self._normalise(value)
        return Grade(float(answer == problem.answer), answer is not None, answer)
    # --8<-- [end:grade]


def _check_count(n: object) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of problems must be a positive integer, got {n!r}")


# --8<-- [start:make_task]
def make_task(name: str, work: int = 0, **difficulty: int) -> Task:
    """The task called ``name`` (a key of :data:`TASKS`) at a difficulty, e.g. ``make_task("addition", digits=4)``.

    Args:
        name: ``addition``, ``multiplication``, ``count_letter``, ``reverse_words`` or ``sort_words``.
        work: the percent of its problems whose demonstrations show their work (:attr:`Problem.work`),
            0 to 100; only the tasks of :data:`WORK` have work to show.
        **difficulty: the task's one knob (``digits``, ``length`` or ``words``); its default otherwise.

    Raises:
        ValueError: an unknown task or knob, or a knob or ``work`` out of range; the message lists what is allowed.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    if not isinstance(work, int) or isinstance(work, bool) or not 0 <= work <= 100:
        raise ValueError(f"{name}: work is the percent of demonstrations that show their work, an integer from "
                         f"0 to 100, got {work!r}")
    if work and name not in WORK:
        raise ValueError(f"{name} has no work to show: work=... is for {', '.join(WORK)}")
    _, _, knob, default, largest = TASKS[name]
    if set(difficulty) - {knob}:
        raise ValueError(f"{name} has one difficulty setting, {knob}=..., not {', '.join(sorted(difficulty))}")
    level = difficulty.get(knob, default)
    smallest = 2 if knob == "words" else 1
    if not isinstance(level, int) or isinstance(level, bool) or not smallest <= level <= largest:
        raise ValueError(f"{name}: {knob} must be an integer from {smallest} to {largest}, got {level!r}")
    return Task(name, knob, level, work)
# --8<-- [end:make_task]


# --8<-- [start:corpus]
def document(problem: Problem) -> str:
    """A problem and its answer as training text: the prompt, its work if it shows any, then
    ``Answer: <answer>``, each on its own line."""
    return f"{problem.prompt}\n{solution(problem)}\n"


def solution(problem: Problem) -> str:
    """What a demonstration answers: the work, if the problem shows it, on the line before ``Answer: <answer>``."""
    work = f"{problem.work}\n" if problem.work else ""
    return f"{work}{ANSWER_PREFIX} {problem.answer}"


def corpus(tasks: Sequence[Task], n: int, seed: int) -> str:
    """``n`` training problems with their answers, from ``tasks`` taken at random, one blank line between.

    No held-out problem is among them (each task's :meth:`Task.train` stream).

    Args:
        tasks: the tasks to draw from, each problem's task chosen at random.
        n: how many problems.
        seed: seeds the choice of tasks and each task's stream.

    Returns:
        The text, each problem as :func:`document` writes it.

    Raises:
        ValueError: ``n`` is not a positive integer, or ``tasks`` holds something that is not a task.
    """
    _check_count(n)
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ValueError("tasks must be a non-empty list of tasks made by make_task")
    rng = random.Random(seed)
    streams = [t.train(rng.randrange(2**32)) for t in tasks]
    return "\n".join(document(next(rng.choice(streams))) for _ in range(n))


def write_corpus(path: str | Path, tasks: Sequence[Task], n: int, seed: int) -> Path:
    """Write :func:`corpus` to ``path`` (UTF-8, atomically), e.g. for ``llama train --data PATH``; returns the path."""
    atomic_write_text(path, corpus(tasks, n, seed))
    return Path(path)
# --8<-- [end:corpus]
