"""DPO: the loss against TRL's own DPOTrainer code on the same log-probabilities, the masked
sequence log-probabilities, the metrics, a step that learns a preference, pairs from sampled
replies, and bad input."""

from __future__ import annotations

import collections
import math
import types

import pytest
import torch
from helpers import require_module

from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.posttraining.dpo import (
    Pair,
    dpo_loss,
    dpo_step,
    frozen_copy,
    neg_log_sigmoid,
    pair_batch,
    preference_pairs,
    reward_of,
    sequence_logps,
    token_logps,
)
from llama.posttraining.tasks import Problem, make_task
from llama.tokenizers.bpe import BPETokenizer

BYTES = BPETokenizer([])


def tiny_model(seed: int = 0, max_seq_len: int = 64) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=max_seq_len))


def random_batch(n: int, s: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    """Random logits for ``2n`` sequences, random ids, and a mask of a random span of each (the reply)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * n, s, vocab, generator=g, dtype=dtype) * 3
    tokens = torch.randint(0, vocab, (2 * n, s), generator=g)
    mask = torch.zeros(2 * n, s, dtype=torch.bool)
    for i in range(2 * n):
        start = int(torch.randint(1, s - 1, (1,), generator=g))
        mask[i, start:int(torch.randint(start + 1, s + 1, (1,), generator=g))] = True
    return logits, tokens, mask


# --- against TRL -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trl_dpo():
    """TRL's ``DPOTrainer._compute_loss``, its own code, on per-token log-probabilities we give it.

    TRL 1.x has no free-standing DPO loss function: the loss is computed inside the trainer's
    ``_compute_loss`` from the model's per-token ``log_probs``. So the trainer is made without its
    ``__init__`` (which wants a Hugging Face model, a data set and an accelerator), with the
    attributes ``_compute_loss`` reads for the standard loss ("sigmoid", reverse KL, reference
    log-probabilities given with the inputs), and a stand-in model that returns our numbers.
    """
    trl = require_module("trl")

    def compute(per_token, completion_mask, ref_chosen, ref_rejected, beta):
        b, s = completion_mask.shape
        zeros = torch.zeros(b, s - 1, dtype=per_token.dtype)

        def model(**kwargs):
            return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                         is_top1=zeros.bool())

        model.training = True
        trainer = trl.DPOTrainer.__new__(trl.DPOTrainer)
        trainer.__dict__.update(
            model=model, beta=beta, loss_types=["sigmoid"], loss_weights=[1.0], f_divergence_type="reverse_kl",
            ld_alpha=None, precompute_ref_logps=True, use_weighting=False, aux_loss_enabled=False,
            accelerator=types.SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x),
            _metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
        inputs = dict(input_ids=torch.zeros(b, s, dtype=torch.long), attention_mask=torch.ones(b, s, dtype=torch.long),
                      completion_mask=completion_mask.long(), ref_chosen_logps=ref_chosen,
                      ref_rejected_logps=ref_rejected)
        loss = trainer._compute_loss(model, inputs, False)
        return loss, {name: values[-1] for name, values in trainer._metrics["train"].items()}

    return compute


@pytest.mark.slow  # importing TRL takes seconds
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_loss_and_metrics_equal_trls(trl_dpo, dtype, tolerance):
    """Our sequence log-probabilities (masked sums of our log-softmax) and loss, against TRL's loss
    and metrics computed from the per-token log-probabilities of ``torch.log_softmax``, zero
    outside the reply (what TRL's model returns for label -100)."""
    n = 16
    logits, tokens, mask = random_batch(n, 12, 50, dtype)
    ours = sequence_logps(lambda x: logits[:, :x.size(1)], tokens, mask)
    per_token = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None]).squeeze(-1) * mask[:, 1:]
    g = torch.Generator().manual_seed(1)
    ref = ours + torch.randn(2 * n, generator=g, dtype=dtype) * 5
    for beta in (0.01, 0.1, 0.5, 2.0):
        out = dpo_loss(ours[:n], ours[n:], ref[:n], ref[n:], beta)
        loss, metrics = trl_dpo(per_token, mask, ref[:n], ref[n:], beta)
        assert abs(out.loss.item() - loss.item()) <= tolerance * max(1.0, loss.item()), beta
        assert out.accuracy == pytest.approx(metrics["rewards/accuracies"], abs=1e-12)
        assert out.margin == pytest.approx(metrics["rewards/margins"], abs=tolerance * 10)
        assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=tolerance * 10)
        assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=tolerance * 10)
        assert 0 < out.accuracy < 1  # both kinds of pairs are in the batch


# --- the pieces --------------------------------------------------------------------------------------

def test_sequence_logps_count_the_reply_only_and_padding_changes_nothing():
    model = tiny_model().eval()
    prompt, reply = [5, 6, 7, 8], [9, 10, 11]
    tokens = torch.tensor([prompt + reply])
    mask = torch.tensor([[False] * 4 + [True] * 3])
    with torch.no_grad():
        logits = model(tokens)[0].double().log_softmax(-1)
        by_hand = sum(logits[i - 1, tokens[0, i]].item() for i in range(4, 7))
        got = sequence_logps(model, tokens, mask).item()
        padded_mask = torch.cat([mask, torch.zeros(1, 2, dtype=torch.bool)], 1)
        padded = sequence_logps(model, torch.tensor([prompt + reply + [0, 0]]), padded_mask)
    assert got == pytest.approx(by_hand, abs=1e-5)
    assert padded.item() == pytest.approx(got, abs=1e-5)


def test_neg_log_sigmoid_is_stable_and_right():
    x = torch.tensor([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0], dtype=torch.float64)
    assert torch.isfinite(neg_log_sigmoid(x)).all()
    assert torch.allclose(neg_log_sigmoid(x), -torch.nn.functional.logsigmoid(x), rtol=0, atol=1e-15)
    assert neg_log_sigmoid(torch.tensor(0.0)).item() == pytest.approx(math.log(2))


def test_gradient_is_sigma_of_minus_the_margin():
    """d loss / d pi_c = -beta sigma(-beta m) for one pair: the weight DPO gives a pair it ranks wrongly."""
    pc = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    beta, zero = 0.5, torch.zeros(1, dtype=torch.float64)
    dpo_loss(pc, torch.tensor([-2.0], dtype=torch.float64), zero, zero, beta).loss.backward()
    margin = -3.0 - -2.0
    assert pc.grad.item() == pytest.approx(-beta / (1 + math.exp(beta * margin)), abs=1e-15)


def test_dpo_step_learns_the_preference_and_the_reference_stays():
    policy = tiny_model()
    reference = frozen_copy(policy)
    before = [p.clone() for p in reference.parameters()]
    pairs = [Pair("What is 2 + 2?", "Answer: 4", "Answer: 5"), Pair("What is 3 + 3?", "Answer: 6", "Answer: 7")]
    batch = pair_batch(BYTES, pairs, max_seq_len=64)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    first = dpo_step(policy, reference, batch, optimizer, beta=0.1)
    assert first.loss.item() == pytest.approx(math.log(2), abs=1e-6) and first.margin == 0.0
    for _ in range(20):
        last = dpo_step(policy, reference, batch, optimizer, beta=0.1)
    assert last.loss.item() < 0.6 and last.accuracy == 1.0 and last.margin > 0
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters()))


def test_pair_batch_layout():
    batch = pair_batch(BYTES, [Pair("ab", "c", "dd"), Pair("e", "ff", "g")], max_seq_len=16)
    # chosen rows, then rejected; prompt "ab\n", right padded with 0
    assert batch.tokens.tolist()[0] == [97, 98, 10, 99, 0] and batch.completion_mask.tolist()[0] == [0, 0, 0, 1, 0]
    assert batch.tokens.tolist()[2] == [97, 98, 10, 100, 100]
    assert batch.completion_mask.sum(1).tolist() == [1, 2, 2, 1]


def test_preference_pairs_pair_a_right_reply_with_a_wrong_one_and_count_the_rest():
    model = tiny_model().eval()
    task = make_task("addition", digits=1)
    problems = task.train_problems(8, seed=0)

    def lucky(reply, problem):  # right for some replies of each problem, wrong for others
        return float(len(reply) % 2) if problem.prompt != problems[0].prompt else 1.0

    pairs, skipped = preference_pairs(model, BYTES, task, problems, k=8, max_new_tokens=6, reward=lucky)
    assert skipped >= 1 and len(pairs) + skipped == len(problems)
    for pair in pairs:
        problem = next(p for p in problems if p.prompt == pair.prompt)
        assert lucky(pair.chosen, problem) > lucky(pair.rejected, problem)
    pairs, skipped = preference_pairs(model, BYTES, task, problems, k=4, max_new_tokens=6)
    assert (pairs, skipped) == ([], len(problems))  # an untrained model is never right: nothing to prefer


# --- bad input ---------------------------------------------------------------------------------------

def test_identical_replies_are_refused():
    with pytest.raises(ValueError, match=r"^pair 1 \(prompt 'q'\) has the same chosen and rejected reply"):
        pair_batch(BYTES, [Pair("p", "a", "b"), Pair("q", "same", "same")], max_seq_len=64)


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), True, "0.1"])
def test_beta_must_be_positive(beta):
    zero = torch.zeros(2)
    with pytest.raises(ValueError, match="^beta must be a positive number"):
        dpo_loss(zero, zero, zero, zero, beta)


def test_dpo_step_refuses_beta_before_computing():
    policy = tiny_model()
    batch = pair_batch(BYTES, [Pair("p", "a", "b")], max_seq_len=64)
    with pytest.raises(ValueError, match="^beta must be a positive number"):
        dpo_step(policy, policy, batch, torch.optim.SGD(policy.parameters(), lr=0.1), beta=0.0)


def test_pairs_that_outgrow_the_context_are_refused():
    with pytest.raises(ValueError, match=r"^pair 0: 2 prompt tokens \+ 20 tokens of the rejected reply exceed "
                                         r"max_seq_len=16"):
        pair_batch(BYTES, [Pair("p", "a", "x" * 20)], max_seq_len=16)


def test_empty_reply_and_no_pairs_are_refused():
    with pytest.raises(ValueError, match="empty chosen reply"):
        pair_batch(BYTES, [Pair("p", "", "b")], max_seq_len=16)
    with pytest.raises(ValueError, match="^no pairs to batch"):
        pair_batch(BYTES, [], max_seq_len=16)


def test_a_reward_function_that_raises_names_the_task_and_the_reply():
    task, problem = make_task("addition", digits=1), Problem("What is 1 + 2?", "3")

    def broken(reply, problem):
        raise KeyError("oops")

    with pytest.raises(ValueError, match=r"^the reward of a reply to addition\(digits=1\)'s problem 'What is 1 \+ 2\?' "
                                         r"failed with KeyError: 'oops'; the reply was 'Answer: 3'$"):
        reward_of(task, problem, "Answer: 3", broken)
    with pytest.raises(ValueError, match="is nan, not a finite number"):
        reward_of(task, problem, "Answer: 3", lambda r, p: float("nan"))
    assert reward_of(task, problem, "Answer: 3") == 1.0


def test_token_logps_refuses_a_flat_batch():
    with pytest.raises(ValueError, match=r"^tokens must be a \[b, s\] tensor"):
        token_logps(tiny_model(), torch.tensor([1, 2, 3]))
