"""The written-out optimizers (llama.training.optim) against PyTorch's own, step by step on random
gradients: AdamW against ``torch.optim.AdamW`` (for-each and fused), Muon against
``torch.optim.Muon``, clipping against ``clip_grad_norm_``; and Muon's state through a checkpoint."""

from __future__ import annotations

import pytest
import torch

from llama.model.transformer import Transformer
from llama.training.config import TrainConfig, model_config
from llama.training.optim import AdamW, Muon, clip_grad_norm, make_optimizer, newton_schulz

STEPS = 60


def twins(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ours = [torch.randn(*s, generator=g).requires_grad_() for s in shapes]
    return ours, [p.detach().clone().requires_grad_() for p in ours]


def feed(ours, theirs, g):
    for p, q in zip(ours, theirs):
        grad = torch.randn(p.shape, generator=g) * (1 + 10 * torch.rand((), generator=g))
        p.grad, q.grad = grad.clone(), grad.clone()


def biggest_gap(a, b):
    """The largest difference, relative to the value where it is above 1 (float32 keeps 7 digits)."""
    return max(((x - y).abs() / y.abs().clamp(min=1)).max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_equals_pytorchs_over_many_steps(fused):
    ours, theirs = twins([(12, 7), (7,), (5, 3)])

    def groups(ps):  # two groups, one not decayed, with a changing learning rate
        return [{"params": ps[::2], "weight_decay": 0.1}, {"params": ps[1:2], "weight_decay": 0.0}]

    opt = AdamW(groups(ours), lr=3e-3, betas=(0.9, 0.95))
    ref = torch.optim.AdamW(groups(theirs), lr=3e-3, betas=(0.9, 0.95), fused=fused)
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        feed(ours, theirs, g)
        for group in opt.param_groups + ref.param_groups:
            group["lr"] = 3e-3 * (1 + step % 5) / 5
        opt.step()
        ref.step()
    assert biggest_gap(ours, theirs) <= 1e-6
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert biggest_gap([opt.state[p][key] for p in ours], [ref.state[q][key] for q in theirs]) <= 1e-6
    assert biggest_gap(ours, [p.detach() for p in twins([(12, 7), (7,), (5, 3)])[0]]) > 1e-2  # they moved


def test_muon_equals_pytorchs_over_many_steps(monkeypatch):
    # torch.optim.Muon orthogonalises in bfloat16 on every machine; ours does where that is fast
    # (tests/test_precision.py checks which): compare the two in the same precision.
    monkeypatch.setattr("llama.training.optim.fast_dtype", lambda device: torch.bfloat16)
    # Matrices of one shape are orthogonalised as one batch (three 10 x 10, two 16 x 8), a lone one alone.
    ours, theirs = twins([(16, 8), (8, 24), (10, 10), (10, 10), (16, 8), (10, 10)])
    opt = Muon([{"params": ours, "muon": True}], lr=0.02, weight_decay=0.1)
    ref = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1)
    g = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        feed(ours, theirs, g)
        opt.step()
        ref.step()
    assert biggest_gap(ours, theirs) <= 1e-6
    assert biggest_gap([opt.state[p]["momentum_buffer"] for p in ours],
                       [ref.state[q]["momentum_buffer"] for q in theirs]) <= 1e-6


def test_newton_schulz_brings_singular_values_near_one():
    g = torch.randn(64, 32, generator=torch.Generator().manual_seed(3)) @ torch.diag(torch.logspace(0, 1, 32))
    s = torch.linalg.svdvals(newton_schulz(g).float())
    assert s.min() > 0.5 and s.max() < 1.3  # from singular values spread over a decade


@pytest.mark.parametrize("shape", [(24, 10), (10, 24)])
def test_newton_schulz_of_a_batch_orthogonalises_each_matrix_on_its_own(shape):
    g = torch.randn(3, *shape, generator=torch.Generator().manual_seed(3))
    g[1] *= 100  # scaled by the whole batch's norm, the other two would come out far from orthogonal
    batched = newton_schulz(g, dtype=torch.float32)
    for one, alone in zip(batched, (newton_schulz(m, dtype=torch.float32) for m in g)):
        assert (one - alone).abs().max() <= 1e-5


def test_clip_grad_norm_equals_pytorchs():
    g = torch.Generator().manual_seed(4)
    for max_norm in (0.5, 1e3):  # clipped, and left alone
        ours, theirs = twins([(9, 4), (4,)], seed=5)
        feed(ours, theirs, g)
        total = clip_grad_norm(ours, max_norm)
        ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        assert abs(total.item() - ref.item()) <= 1e-6 * ref.item()
        assert biggest_gap([p.grad for p in ours], [q.grad for q in theirs]) <= 1e-6


def test_muon_groups_take_the_blocks_matrices_and_scale_their_rate_and_decay():
    model = Transformer(model_config(TrainConfig(out="x", model="tiny", max_steps=1), 50))
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), kind="muon", muon_lr=0.02)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden, decay, no_decay = opt.param_groups
    assert hidden["muon"] and not decay["muon"] and not no_decay["muon"]
    assert all(names[id(p)].startswith("layers.") and p.dim() == 2 for p in hidden["params"])
    assert sorted(names[id(p)] for p in decay["params"]) == ["output.weight", "tok_embeddings.weight"]
    assert hidden["lr_ratio"] == pytest.approx(20) and hidden["lr"] * hidden["weight_decay"] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), kind="sgd")
