"""SwiGLU against its formula and against transformers' LlamaMLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llama.model.feed_forward import FeedForward


def test_matches_the_formula():
    torch.manual_seed(0)
    ff = FeedForward(8, 24)
    x = torch.randn(3, 8)
    gate = x @ ff.w1.weight.T
    expected = (gate * torch.sigmoid(gate) * (x @ ff.w3.weight.T)) @ ff.w2.weight.T
    assert torch.allclose(ff(x), expected, atol=1e-6)
    assert not torch.allclose(ff(x), ff.w2(F.relu(ff.w1(x)) * ff.w3(x)))  # the gate is SiLU, not ReLU


def test_matches_transformers_llama_mlp(transformers):
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2)
    theirs, ours = LlamaMLP(cfg), FeedForward(16, 40)
    ours.load_state_dict({"w1.weight": theirs.gate_proj.weight, "w2.weight": theirs.down_proj.weight,
                          "w3.weight": theirs.up_proj.weight})
    x = torch.randn(2, 5, 16)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
