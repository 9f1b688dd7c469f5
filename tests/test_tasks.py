"""Checkable tasks: seeded generators, the answer parser and graders, the held-out split, the corpus."""

from __future__ import annotations

import random
import re

import pytest

from llama.posttraining.tasks import (
    ANSWER_PREFIX,
    HELD_OUT_FRACTION,
    TASKS,
    WORDS,
    Grade,
    Problem,
    corpus,
    document,
    make_task,
    parse_answer,
    solution,
    write_corpus,
)

ALL = [make_task(name) for name in TASKS]


# --- generators ------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ALL, ids=repr)
def test_generators_are_deterministic_by_seed(task):
    assert task.train_problems(50, seed=3) == task.train_problems(50, seed=3)
    assert task.train_problems(50, seed=3) != task.train_problems(50, seed=4)
    assert task.held_out(20) == make_task(task.name).held_out(20)


@pytest.mark.parametrize("task", ALL, ids=repr)
def test_every_generated_answer_is_what_its_grader_accepts(task):
    for p in task.train_problems(200, seed=0) + task.held_out(50):
        assert task.grade(document(p).split("\n", 1)[1], p) == Grade(1.0, True, p.answer)


def test_the_answers_are_right():
    """Recomputed from the prompt's text alone, independently of the generators."""
    for p in make_task("addition", digits=5).train_problems(100, seed=1):
        a, b = p.prompt.removeprefix("What is ").removesuffix("?").split(" + ")
        assert len(a) == len(b) == 5 and int(p.answer) == int(a) + int(b)
    for p in make_task("multiplication", digits=3).train_problems(100, seed=1):
        a, b = p.prompt.removeprefix("What is ").removesuffix("?").split(" * ")
        assert int(p.answer) == int(a) * int(b)
    for p in make_task("count_letter", length=20).train_problems(100, seed=1):
        letter, text = p.prompt.removeprefix("How many times does the letter ").removesuffix("?").split(" appear in ")
        assert len(text) == 20 and int(p.answer) == text.count(letter)
    for p in make_task("reverse_words", words=6).train_problems(100, seed=1):
        words = p.prompt.removeprefix("Reverse the words: ").split()
        assert len(words) == 6 and p.answer.split() == words[::-1] and set(words) <= set(WORDS)
    for p in make_task("sort_words", words=6).train_problems(100, seed=1):
        assert p.answer.split() == sorted(p.prompt.removeprefix("Sort the words: ").split())


def test_difficulty_changes_the_problems():
    assert all(len(p.prompt.split(" + ")[1]) == len("12345?")
               for p in make_task("addition", digits=5).held_out(20))
    assert all(len(p.answer.split()) == 7 for p in make_task("sort_words", words=7).held_out(20))


def test_count_letter_answers_spread_over_several_counts():
    counts = {int(p.answer) for p in make_task("count_letter", length=12).train_problems(300, seed=0)}
    assert {0, 1, 2, 3, 4, 5} <= counts


# --- the answer format and the graders -----------------------------------------------------------

@pytest.mark.parametrize("reply, value", [
    ("Answer: 42", "42"),
    ("  Answer:   42  \n\n", "42"),                       # spaces and blank lines around
    ("2 + 40 is 42.\nAnswer: 42.", "42"),                  # reasoning before, one final period
    ("Answer: 41\nNo, wait.\nAnswer: 42", "42"),           # the last answer line counts
    ("Answer:42", "42"),
])
def test_parse_answer_tolerates(reply, value):
    assert parse_answer(reply) == value


@pytest.mark.parametrize("reply", [
    "42", "The answer is 42", "answer: 42", "Answer:", "Answer:   \n", "", "Final Answer 42",
])
def test_parse_answer_refuses(reply):
    assert parse_answer(reply) is None


@pytest.mark.parametrize("value, ok", [
    ("1311", True), ("1,311", True), ("+1311", True), ("01311", True),
    ("1311.0", False), ("13,11", False), ("1 311", False), ("about 1311", False), ("1311 or 1312", False),
    ("1.311", False), ("one thousand", False),
])
def test_integer_answers(value, ok):
    task = make_task("addition", digits=3)
    grade = task.grade(f"{ANSWER_PREFIX} {value}", Problem("What is 700 + 611?", "1311"))
    assert grade == (Grade(1.0, True, "1311") if ok else Grade(0.0, False, None))


def test_a_wrong_number_is_formatted_but_not_rewarded():
    task = make_task("addition")
    assert task.grade("Answer: 1312", Problem("What is 700 + 611?", "1311")) == Grade(0.0, True, "1312")
    assert task.grade("Answer: -1311", Problem("What is 700 + 611?", "1311")) == Grade(0.0, True, "-1311")


@pytest.mark.parametrize("value, answer", [
    ("cat dog owl", "cat dog owl"), ("cat, dog, owl", "cat dog owl"), ("cat,dog , owl", "cat dog owl"),
    ("cat  dog\towl", "cat dog owl"),
    ("cat dog", "cat dog"),                  # well formed, wrong: fewer words
    ("Cat dog owl", "Cat dog owl"),          # well formed, wrong: case counts
])
def test_word_answers(value, answer):
    task = make_task("sort_words", words=3)
    grade = task.grade(f"Answer: {value}", Problem("Sort the words: owl cat dog", "cat dog owl"))
    assert grade == Grade(float(answer == "cat dog owl"), True, answer)


@pytest.mark.parametrize("value", ["cat dog 3", "cat-dog owl", "cat, , dog", ", cat dog", "cat dog owl!"])
def test_word_answers_refused(value):
    task = make_task("reverse_words", words=3)
    assert task.grade(f"Answer: {value}", Problem("Reverse the words: owl dog cat", "cat dog owl")) == Grade(0.0, False, None)


def test_the_parsers_take_linear_time_on_long_garbage():
    """Nested repetition in a regular expression can backtrack for ever on a reply that almost matches."""
    import time

    start = time.perf_counter()
    for task in (make_task("sort_words"), make_task("addition")):
        task.grade("Answer: " + "ab " * 3000 + "1", Problem("p", "x"))
        task.grade("Answer: " + "1," * 3000 + "1x", Problem("p", "x"))
    assert time.perf_counter() - start < 2.0  # backtracking would take minutes


def test_grader_refuses_what_is_not_a_reply_or_a_problem():
    task = make_task("addition")
    problem = task.held_out(1)[0]
    with pytest.raises(TypeError, match=r"^a reply must be a str, got list: decode the model's token ids"):
        task.grade([1, 2, 3], problem)
    with pytest.raises(TypeError, match=r"^a reply must be a str, got NoneType"):
        task.grade(None, problem)
    with pytest.raises(TypeError, match=r"^problem must be a Problem .*got str$"):
        task.grade("Answer: 3", "What is 1 + 2?")


# --- the split -------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", [make_task("addition", digits=2), make_task("count_letter", length=3),
                                  make_task("sort_words", words=2), make_task("multiplication", digits=1)], ids=repr)
def test_train_never_yields_a_held_out_problem(task):
    """Small problem spaces, where a training stream meets every problem many times over."""
    held = {p.prompt for p in task.held_out(4)}
    train = {p.prompt for seed in range(3) for p in task.train_problems(3000, seed=seed)}
    assert held and not held & train
    assert not any(task.is_held_out(prompt) for prompt in train)


def test_the_split_covers_the_whole_space_of_a_small_task():
    """One-digit addition has 100 problems: the stream finds all the training ones, and the two
    sides together are the whole space."""
    task = make_task("addition", digits=1)
    everything = {f"What is {a} + {b}?" for a in range(10) for b in range(10)}
    train = {p.prompt for p in task.train_problems(5000, seed=0)}
    held = {p for p in everything if task.is_held_out(p)}
    assert train | held == everything and not train & held
    assert sorted(p.prompt for p in task.held_out(len(held))) == sorted(held)
    with pytest.raises(ValueError, match=rf"^addition\(digits=1\) has too few distinct problems to hold out {len(held) + 1} "
                                         rf"\(found {len(held)}\): ask for fewer, or raise digits$"):
        task.held_out(len(held) + 1)


def test_the_held_out_share_is_the_fraction():
    rng = random.Random(0)
    task = make_task("addition", digits=6)
    share = sum(task.is_held_out(task.sample(rng)) for _ in range(20000)) / 20000
    assert abs(share - HELD_OUT_FRACTION) < 0.01


def test_held_out_problems_are_distinct_and_a_prefix_of_a_longer_set():
    task = make_task("reverse_words", words=3)
    fifty = task.held_out(50)
    assert len({p.prompt for p in fifty}) == 50 and task.held_out(20) == fifty[:20]


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, knobs, message", [
    ("adition", {}, "unknown task 'adition'; choose one of addition, multiplication, count_letter, reverse_words, sort_words"),
    ("addition", {"words": 3}, "addition has one difficulty setting, digits=..., not words"),
    ("addition", {"digits": 0}, "addition: digits must be an integer from 1 to 30, got 0"),
    ("sort_words", {"words": 1}, f"sort_words: words must be an integer from 2 to {len(WORDS)}, got 1"),
    ("count_letter", {"length": 2.5}, "count_letter: length must be an integer from 1 to 200, got 2.5"),
    ("reverse_words", {"words": True}, f"reverse_words: words must be an integer from 2 to {len(WORDS)}, got True"),
    ("addition", {"work": 101}, "addition: work is the percent of demonstrations that show their work, an integer "
                                "from 0 to 100, got 101"),
    ("sort_words", {"work": 30}, "sort_words has no work to show: work=... is for addition"),
])
def test_make_task_refuses(name, knobs, message):
    with pytest.raises(ValueError) as err:
        make_task(name, **knobs)
    assert str(err.value) == message and "\n" not in message


@pytest.mark.parametrize("n", [0, -3, 2.0, None])
def test_counts_must_be_positive_integers(n):
    task = make_task("addition")
    for call in (task.held_out, lambda n: task.train_problems(n, seed=0), lambda n: corpus([task], n, seed=0)):
        with pytest.raises(ValueError, match=r"^the number of problems must be a positive integer, got "):
            call(n)


def test_corpus_refuses_what_is_not_a_task():
    with pytest.raises(ValueError, match="^tasks must be a non-empty list of tasks made by make_task$"):
        corpus([], 3, seed=0)
    with pytest.raises(ValueError, match="^tasks must be a non-empty list of tasks made by make_task$"):
        corpus(["addition"], 3, seed=0)


# --- the corpus ------------------------------------------------------------------------------------

def test_corpus_is_documents_of_training_problems_from_every_task(tmp_path):
    tasks = [make_task("addition", digits=2), make_task("sort_words", words=3)]
    text = corpus(tasks, 400, seed=5)
    assert text == corpus(tasks, 400, seed=5) != corpus(tasks, 400, seed=6)
    documents = text.split("\n\n")
    assert len(documents) == 400
    for d in documents:
        prompt, answer = d.rstrip("\n").split("\n")
        assert answer.startswith(ANSWER_PREFIX + " ")
        task = tasks[0] if prompt.startswith("What is") else tasks[1]
        assert not task.is_held_out(prompt)
        assert task.grade(answer, Problem(prompt, answer.removeprefix("Answer: "))).reward == 1.0
    assert sum(d.startswith("What is") for d in documents) in range(150, 250)  # both tasks, mixed
    path = write_corpus(tmp_path / "tasks.txt", tasks, 400, seed=5)
    assert path.read_text("utf-8") == text


# --- worked demonstrations -------------------------------------------------------------------------

_COLUMN = re.compile(r"(\d) \+ (\d)( \+ 1)? = (\d+)")


@pytest.mark.parametrize("digits", [1, 3, 7])
def test_the_work_of_an_addition_is_its_column_sums_and_reads_back_as_the_answer(digits):
    for p in make_task("addition", digits=digits, work=100).train_problems(300, seed=digits):
        a, b = re.findall(r"\d+", p.prompt)
        columns = _COLUMN.findall(p.work)
        assert p.work == f"{a} + {b}: " + ", ".join(m.group(0) for m in _COLUMN.finditer(p.work)) + "."
        assert len(columns) == max(len(a), len(b))
        carry, written = 0, ""
        for (x, y, carried, total), da, db in zip(columns, reversed(a.zfill(9)), reversed(b.zfill(9))):
            assert (x, y, bool(carried)) == (da, db, bool(carry)) and int(total) == int(x) + int(y) + carry
            carry, written = int(total) // 10, total[-1] + written
        assert str(int(str(carry) + written)) == p.answer


def test_work_shows_on_its_share_of_problems_and_leaves_the_problems_as_they_were():
    plain, worked = (make_task("addition", digits=3, work=w).train_problems(4000, seed=1) for w in (0, 30))
    assert [(p.prompt, p.answer) for p in plain] == [(p.prompt, p.answer) for p in worked]
    assert not any(p.work for p in plain) and 0.27 < sum(bool(p.work) for p in worked) / 4000 < 0.33
    held = [make_task("addition", digits=3, work=w).held_out(50) for w in (0, 30)]
    assert [p.prompt for p in held[0]] == [p.prompt for p in held[1]]
    shown = next(p for p in worked if p.work)
    assert document(shown) == f"{shown.prompt}\n{shown.work}\n{ANSWER_PREFIX} {shown.answer}\n"
    assert solution(shown) == f"{shown.work}\n{ANSWER_PREFIX} {shown.answer}"
    assert make_task("addition", digits=3, work=30).grade(solution(shown), shown) == Grade(1.0, True, shown.answer)
    assert repr(make_task("addition", digits=3, work=30)) == "addition(digits=3, work=30)"
