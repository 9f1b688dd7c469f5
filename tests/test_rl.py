"""REINFORCE and GRPO: the loss and its gradient against TRL's GRPOTrainer code on the same tensors,
the advantages against TRL's formula, REINFORCE's gradient against the policy-gradient formula by
hand, a step that changes nothing when every reward is equal, rollouts from the batched decoder,
and bad input."""

from __future__ import annotations

import collections
import itertools
import types

import pytest
import torch
from helpers import require_module

from llama.inference.generation import generate
from llama.inference.sampling import Sampling
from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.posttraining.dpo import frozen_copy, token_logps
from llama.posttraining.rl import (
    Rollout,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    informative_groups,
    k3_kl,
    masked_mean,
    reinforce_loss,
    rl_step,
    rollout,
)
from llama.posttraining.tasks import Problem, make_task
from llama.tokenizers.bpe import BPETokenizer

BYTES = BPETokenizer([])


def tiny_model(seed: int = 0, max_seq_len: int = 64) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=max_seq_len))


def random_group_batch(n: int, group: int, length: int, dtype: torch.dtype, seed: int = 0):
    """Old, new and reference per-token log-probabilities, a mask of replies of random lengths, 0/1 rewards."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n * group, length, generator=g, dtype=dtype) * 3
    new = old + torch.randn(n * group, length, generator=g, dtype=dtype) * 0.3  # ratios well outside 1 +- 0.2
    ref = old + torch.randn(n * group, length, generator=g, dtype=dtype) * 0.3
    mask = torch.arange(length)[None] < torch.randint(1, length + 1, (n * group, 1), generator=g)
    rewards = torch.randint(0, 2, (n, group), generator=g).to(dtype)
    return old, new, ref, mask, rewards


# --- against TRL -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trl_grpo():
    """TRL's ``GRPOTrainer._compute_loss``, its own code, on per-token log-probabilities we give it.

    As for DPO, TRL computes the loss inside the trainer, from the log-probabilities its
    ``_get_per_token_logps_and_entropies`` returns: the trainer is made without ``__init__``, with
    the attributes the loss reads, and that one method replaced by one returning our tensor.
    ``loss_type="grpo"`` averages per sequence, ``"bnpo"`` per token.
    """
    trl = require_module("trl")

    def compute(logps, old, ref, advantages, mask, clip_eps, beta, loss_type):
        b, length = mask.shape
        model = types.SimpleNamespace(training=True)
        trainer = trl.GRPOTrainer.__new__(trl.GRPOTrainer)
        trainer.__dict__.update(
            model=model, loss_type=loss_type, beta=beta, epsilon_low=clip_eps, epsilon_high=clip_eps,
            importance_sampling_level="token", top_entropy_quantile=1.0, off_policy_mask_threshold=None,
            use_vllm=False, vllm_importance_sampling_correction=False, aux_loss_enabled=False,
            _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1,
            args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
            accelerator=types.SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x),
            _metrics={"train": collections.defaultdict(list)},
            _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(old), None))
        inputs = dict(prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
                      completion_ids=torch.zeros(b, length, dtype=torch.long), completion_mask=mask.long(),
                      advantages=advantages, old_per_token_logps=old, ref_per_token_logps=ref)
        return trainer._compute_loss(model, inputs)

    return compute


@pytest.mark.slow  # importing TRL takes seconds
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_grpo_loss_and_gradient_equal_trls(trl_grpo, dtype, tolerance):
    old, new, ref, mask, rewards = random_group_batch(3, 4, 10, dtype)
    advantages = group_advantages(rewards).flatten()
    clipped = ((new - old).exp() - 1).abs()[mask] > 0.2
    assert clipped.any() and not clipped.all()  # both sides of the clip are exercised
    worst = 0.0
    for (level, loss_type), beta in itertools.product([("sequence", "grpo"), ("token", "bnpo")], [0.0, 0.04]):
        logps = new.clone().requires_grad_()
        ours = grpo_loss(logps, old, advantages, mask, 0.2, beta, ref, level)
        theirs = trl_grpo(logps, old, ref, advantages, mask, 0.2, beta, loss_type)
        ours_grad, = torch.autograd.grad(ours, logps)
        theirs_grad, = torch.autograd.grad(theirs, logps)
        worst = max(worst, abs(ours.item() - theirs.item()), (ours_grad - theirs_grad).abs().max().item())
    assert worst <= tolerance


def test_advantages_equal_trls_formula():
    """TRL: (r - group mean) / (nanstd(group) + 1e-4), nanstd the unbiased std (trl.trainer.utils)."""
    nanstd = require_module("trl.trainer.utils").nanstd
    rewards = torch.rand(5, 8, generator=torch.Generator().manual_seed(0))
    flat = rewards.flatten()
    theirs = (flat - rewards.mean(1).repeat_interleave(8)) / (nanstd(rewards, dim=1).repeat_interleave(8) + 1e-4)
    assert (group_advantages(rewards).flatten() - theirs).abs().max().item() <= 1e-6


# --- the policy gradient by hand ---------------------------------------------------------------------

def test_reinforce_gradient_is_the_policy_gradient_formula():
    """A policy of free logits ``z[t]`` per position: d log softmax(z)_y / dz = onehot(y) - softmax(z), so
    the REINFORCE gradient is -(1/N) sum_i A_i sum_t mask_it (onehot(y_it) - p_t)."""
    g = torch.Generator().manual_seed(0)
    n, length, vocab = 6, 5, 7
    z = torch.randn(length, vocab, generator=g, dtype=torch.float64, requires_grad=True)
    ys = torch.randint(0, vocab, (n, length), generator=g)
    mask = torch.arange(length)[None] < torch.tensor([[5], [3], [1], [4], [5], [2]])
    advantages = torch.randn(n, generator=g, dtype=torch.float64)
    logps = z.log_softmax(-1).expand(n, -1, -1).gather(-1, ys[..., None]).squeeze(-1)
    reinforce_loss(logps, advantages, mask).backward()
    p = z.detach().softmax(-1)
    by_hand = torch.zeros(length, vocab, dtype=torch.float64)
    for i, t in itertools.product(range(n), range(length)):
        if mask[i, t]:
            by_hand[t] -= advantages[i] * (torch.nn.functional.one_hot(ys[i, t], vocab) - p[t]) / n
    assert (z.grad - by_hand).abs().max().item() <= 1e-15


def test_reinforce_over_every_outcome_is_the_gradient_of_the_expected_reward():
    """Weighted by their probabilities, the REINFORCE terms of all outcomes sum to grad E[r] exactly."""
    z = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    expected, = torch.autograd.grad((z.softmax(-1) * r).sum(), z)
    logps = z.log_softmax(-1)[:, None]                       # every outcome, a one-token reply each
    weights = z.softmax(-1).detach()
    estimate, = torch.autograd.grad(len(r) * reinforce_loss(logps, weights * r, torch.ones(4, 1, dtype=torch.bool)), z)
    assert (-estimate - expected).abs().max().item() <= 1e-15


def test_clip_and_kl_pieces():
    ratio = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5])
    assert clipped_surrogate(ratio, torch.tensor(1.0), 0.2).tolist() == pytest.approx([0.5, 0.9, 1.0, 1.1, 1.2])
    assert clipped_surrogate(ratio, torch.tensor(-1.0), 0.2).tolist() == pytest.approx([-0.8, -0.9, -1.0, -1.1, -1.5])
    # k3 is never negative, and its mean under pi is KL(pi || ref)
    pi, ref = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    assert (k3_kl(pi.log(), ref.log()) >= 0).all()
    kl = (pi * (pi / ref).log()).sum().item()
    assert (pi * k3_kl(pi.log(), ref.log())).sum().item() == pytest.approx(kl, abs=1e-15)
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    assert masked_mean(x, mask, "token").item() == pytest.approx(8 / 5)   # every token weighs the same
    assert masked_mean(x, mask, "sequence").item() == pytest.approx(2.5)  # every reply weighs the same


# --- rollouts and steps ------------------------------------------------------------------------------

def test_rollout_samples_groups_with_the_batched_decoder_and_scores_their_tokens():
    model = tiny_model().eval()
    task = make_task("addition", digits=1)
    problems = task.train_problems(2, seed=0)
    batch = rollout(model, BYTES, task, problems, group_size=3, max_new_tokens=8, seed=0, reward=lambda r, p: len(r))
    assert batch.tokens.shape[0] == 6 and batch.rewards.shape == (2, 3) and len(batch.replies) == 6
    assert batch.rewards.flatten().tolist() == [float(len(r)) for r in batch.replies]
    for row in range(6):
        prompt = BYTES.encode(problems[row // 3].prompt + "\n")
        ids = batch.tokens[row][batch.completion_mask[row]].tolist()
        assert batch.tokens[row, :len(prompt)].tolist() == prompt and not batch.completion_mask[row, :len(prompt)].any()
        assert BYTES.decode(ids).startswith(batch.replies[row])
    with torch.no_grad():
        assert torch.equal(batch.old_logps, token_logps(model, batch.tokens))
    greedy = rollout(model, BYTES, task, problems[:1], group_size=2, max_new_tokens=8, temperature=0.0)
    alone = generate(model, BYTES.encode(problems[0].prompt + "\n"), 8, Sampling())
    assert greedy.tokens[0][greedy.completion_mask[0]].tolist() == alone[:int(greedy.completion_mask[0].sum())]


def test_rollout_keeps_the_stop_strings_tokens_and_cuts_the_text():
    fake = types.SimpleNamespace(decode=BYTES.decode)
    from llama.posttraining.rl import _cut
    assert _cut(fake, list(b"Answer: 4\n\nWhat"), ["\n\n"]) == ("Answer: 4", list(b"Answer: 4\n\n"))
    assert _cut(fake, list(b"Answer: 4"), ["\n\n"]) == ("Answer: 4", list(b"Answer: 4"))


def test_equal_rewards_give_zero_advantages_and_a_step_that_changes_nothing():
    assert torch.equal(group_advantages(torch.full((3, 4), 0.7)), torch.zeros(3, 4))
    model = tiny_model()
    task = make_task("addition", digits=1)
    batch = rollout(model, BYTES, task, task.train_problems(2, seed=0), group_size=4, max_new_tokens=6, seed=0)
    assert batch.rewards.eq(0).all()  # an untrained model: every reply wrong
    before = [p.detach().clone() for p in model.parameters()]
    for method in ("grpo", "reinforce"):
        stats = rl_step(model, batch, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0), method=method)
        assert stats["flat_groups"] == 2 and stats["loss"] == 0.0
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), method
    # the KL term alone still moves the policy once it has left the reference
    reference = frozen_copy(model)
    with torch.no_grad():
        model.output.weight.add_(0.1 * torch.randn_like(model.output.weight))
    moved = model.output.weight.detach().clone()
    stats = rl_step(model, batch, torch.optim.SGD(model.parameters(), lr=0.1), kl_beta=0.1, reference=reference)
    assert stats["kl"] > 0 and not torch.equal(model.output.weight, moved)


def test_informative_groups_keep_the_groups_whose_rewards_differ_and_what_they_teach():
    model = tiny_model()
    task = make_task("addition", digits=1)
    problems = task.train_problems(4, seed=0)
    # Rewards that vary with the reply's bytes, except for problems 0 and 2, whose replies all get 1.
    batch = rollout(model, BYTES, task, problems, group_size=3, max_new_tokens=8, seed=0,
                    reward=lambda reply, p: 1.0 if p in (problems[0], problems[2]) else float(sum(map(ord, reply)) % 7))
    assert batch.rewards[[1, 3]].std(1).gt(0).all()  # they do vary within the other two groups
    kept = informative_groups(batch, limit=8)
    assert kept.problems == [problems[1], problems[3]] and kept.replies == batch.replies[3:6] + batch.replies[9:12]
    rows = [3, 4, 5, 9, 10, 11]
    width = kept.tokens.size(1)
    assert width == max(int(row.nonzero().max()) + 1 for row in batch.completion_mask[rows])
    assert torch.equal(kept.tokens, batch.tokens[rows, :width]) and torch.equal(kept.rewards, batch.rewards[[1, 3]])
    assert not batch.completion_mask[rows, width:].any()  # only padding was cut
    assert torch.equal(kept.old_logps, batch.old_logps[rows, :width - 1])
    assert informative_groups(batch, limit=1).problems == [problems[1]]
    # The groups left out have advantage 0: averaged per token, the gradient on the kept groups is the
    # whole batch's, scaled by the share of the reply tokens they hold.
    def gradient(b: Rollout) -> torch.Tensor:
        m = tiny_model()
        advantages = group_advantages(b.rewards).flatten()
        grpo_loss(token_logps(m, b.tokens), b.old_logps, advantages, b.completion_mask[:, 1:], level="token").backward()
        return m.output.weight.grad

    share = int(kept.completion_mask.sum()) / int(batch.completion_mask.sum())
    whole, part = gradient(batch), gradient(kept)
    assert part.abs().max() > 1e-3 and torch.allclose(whole, part * share, rtol=1e-4, atol=1e-7)
    flat = rollout(model, BYTES, task, problems[:2], group_size=2, max_new_tokens=4, seed=0, reward=lambda r, p: 0.0)
    assert informative_groups(flat, limit=1).problems == problems[:1]  # none differ: the first groups


@pytest.mark.slow  # a few dozen steps of a small model
def test_grpo_steps_raise_the_reward():
    """The reward is the number of ASCII characters in the reply (about half of the bytes of an
    untrained model): GRPO should learn to write more of them."""
    model = tiny_model(seed=1)
    task, problems = make_task("addition", digits=1), [Problem("x", "0")] * 4
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rewards = []
    for step in range(30):
        batch = rollout(model, BYTES, task, problems, group_size=8, max_new_tokens=4, seed=step,
                        reward=lambda reply, problem: float(sum(c.isascii() for c in reply)), stop=())
        rewards.append(rl_step(model, batch, optimizer)["reward"])
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.5, rewards


# --- bad input ---------------------------------------------------------------------------------------

def test_a_group_of_one_is_refused():
    with pytest.raises(ValueError, match=r"^a group needs at least 2 replies, got group_size=1"):
        group_advantages(torch.zeros(4, 1))
    task = make_task("addition", digits=1)
    with pytest.raises(ValueError, match=r"^a group needs at least 2 replies, got group_size=1"):
        rollout(tiny_model(), BYTES, task, task.train_problems(1, seed=0), group_size=1, max_new_tokens=4)


def test_replies_that_outgrow_the_context_are_refused():
    task = make_task("addition", digits=1)
    problem = Problem("What is 1 + 2?", "3")
    with pytest.raises(ValueError, match=r"^replies to 'What is 1 \+ 2\?' could outgrow the context: 15 prompt tokens "
                                         r"\+ max_new_tokens=20 > max_seq_len=32; ask for at most 17 new tokens$"):
        rollout(tiny_model(max_seq_len=32), BYTES, task, [problem], group_size=2, max_new_tokens=20)


def test_a_reward_function_that_raises_names_the_task_and_the_reply():
    task = make_task("addition", digits=1)

    def broken(reply, problem):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ValueError, match=r"^the reward of a reply to addition\(digits=1\)'s problem 'What is 1 \+ 2\?' "
                                         r"failed with ZeroDivisionError: division by zero; the reply was '.*'$"):
        rollout(tiny_model(), BYTES, task, [Problem("What is 1 + 2?", "3")], group_size=2, max_new_tokens=4,
                reward=broken)


def test_bad_step_settings_are_refused():
    old, new, _, mask, rewards = random_group_batch(1, 2, 3, torch.float32)
    batch = Rollout([Problem("p", "1")], ["a", "b"], torch.zeros(2, 4, dtype=torch.long),
                    torch.ones(2, 4, dtype=torch.bool), rewards, old)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="^method must be 'grpo' or 'reinforce'"):
        rl_step(model, batch, optimizer, method="ppo")
    with pytest.raises(ValueError, match="^kl_beta=0.1 needs a reference model"):
        rl_step(model, batch, optimizer, kl_beta=0.1)
    with pytest.raises(ValueError, match="^level must be 'token' or 'sequence'"):
        grpo_loss(new, old, torch.zeros(2), mask, level="tokens")
