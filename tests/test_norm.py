"""RMSNorm against its formula, against torch.nn.RMSNorm, and in half precision."""

from __future__ import annotations

import torch

from llama.model.norm import RMSNorm


def test_matches_the_formula_in_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x64 = x.double()
    expected = x64 / torch.sqrt((x64**2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    assert torch.allclose(norm(x).double(), expected, atol=1e-6)


def test_matches_torch_rmsnorm():
    torch.manual_seed(1)
    x = torch.randn(4, 32)
    ours, theirs = RMSNorm(32, eps=1e-5), torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        theirs.weight.copy_(ours.weight)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_equals_layernorm_without_gain_when_the_mean_is_zero():
    torch.manual_seed(2)
    x = torch.randn(8, 64)
    x = x - x.mean(-1, keepdim=True)
    ln = torch.nn.functional.layer_norm(x, (64,), eps=1e-5)
    assert torch.allclose(RMSNorm(64, eps=1e-5)(x), ln, atol=1e-5)


def test_half_precision_input_keeps_dtype_and_float32_accuracy():
    torch.manual_seed(3)
    x = (torch.randn(16, 256) * 30).bfloat16()
    norm = RMSNorm(256).bfloat16()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    reference = x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-5)
    # Only the final rounding to bf16 remains (relative error 2^-8 at most).
    assert ((y.double() - reference).abs() / reference.abs().clamp(min=1e-3)).max() < 2**-8


def test_eps_guards_zero_vectors():
    assert torch.equal(RMSNorm(4)(torch.zeros(1, 4)), torch.zeros(1, 4))
