"""The written-out cross-entropy (llama.training.loss) against PyTorch's ``F.cross_entropy``: value and
gradient, in float32 and from bfloat16 logits, where a naive formula overflows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama.training.loss import cross_entropy, log_sum_exp


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: logits in the hundreds, exp() alone would overflow
def test_cross_entropy_and_its_gradient_equal_pytorchs(reduction, scale):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 17, 97, generator=g) * scale).requires_grad_()
    targets = torch.randint(97, (3, 17), generator=g)
    ours = cross_entropy(logits, targets, reduction)
    (grad_ours,) = torch.autograd.grad(ours * 1.7, logits)  # a non-unit upstream gradient
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
    (grad_ref,) = torch.autograd.grad(ref * 1.7, logits)
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours) and torch.isfinite(grad_ours).all()
    assert (ours - ref).abs().item() <= 1e-6 * max(1.0, ref.abs().item())
    assert (grad_ours - grad_ref).abs().max().item() <= 1e-6


def test_bfloat16_logits_are_lost_in_float32_and_get_a_bfloat16_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 33, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(33, (2, 5), generator=g)
    ours = cross_entropy(logits, targets)
    ours.backward()
    ref = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    assert ours.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)


def test_log_sum_exp_where_the_naive_formula_overflows():
    x = torch.tensor([[1000.0, 999.0, -1000.0], [-1000.0, -1001.0, -2000.0]])
    assert torch.isinf(x.exp().sum(-1).log()[0]) and torch.isinf(x.exp().sum(-1).log()[1])  # the naive way fails
    assert torch.allclose(log_sum_exp(x), torch.logsumexp(x, -1), atol=1e-5, rtol=0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="reduction must be"):
        cross_entropy(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), "none")
    with pytest.raises(ValueError, match="disagree"):
        cross_entropy(torch.zeros(1, 2, 3), torch.zeros(2, 1, dtype=torch.long))
