"""Attention: the explicit math equals PyTorch's fused kernel; GQA, masks and the cache behave."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama import ModelConfig
from llama.model.attention import Attention, KVCache, causal_mask, kv_cache_bytes
from llama.model.reference import attention, repeat_kv
from llama.model.rope import apply_rope, rope_cache


def test_explicit_attention_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    ours = attention(q, k, v, causal_mask(7))
    assert torch.allclose(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_causal_mask_with_offset_matches_the_bottom_rows_of_the_full_mask():
    full = causal_mask(6)
    assert torch.equal(causal_mask(2, 6, start_pos=4), full[4:])
    assert causal_mask(1, start_pos=5).all()


def test_future_tokens_do_not_change_earlier_outputs():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    out = attention(q, k, v, causal_mask(5))
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:, :] += 10
    v2[..., 3:, :] -= 10
    out2 = attention(q, k2, v2, causal_mask(5))
    assert torch.allclose(out[..., :3, :], out2[..., :3, :])
    assert not torch.allclose(out[..., 3:, :], out2[..., 3:, :])


def test_repeat_kv_groups_consecutive_query_heads():
    x = torch.randn(2, 5, 3, 4)
    y = repeat_kv(x, 4)
    assert y.shape == (2, 5, 12, 4)
    for h in range(12):
        assert torch.equal(y[:, :, h], x[:, :, h // 4])
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_module_equals_explicit_math(n_kv_heads):
    torch.manual_seed(2)
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=10, max_seq_len=16)
    attn = Attention(cfg)
    x = torch.randn(2, 9, 32)
    cos, sin = rope_cache(cfg.head_dim, 9)

    q = apply_rope(attn.wq(x).view(2, 9, 4, 8), cos, sin)
    k = apply_rope(attn.wk(x).view(2, 9, n_kv_heads, 8), cos, sin)
    v = attn.wv(x).view(2, 9, n_kv_heads, 8)
    rep = 4 // n_kv_heads
    q, k, v = q.transpose(1, 2), repeat_kv(k, rep).transpose(1, 2), repeat_kv(v, rep).transpose(1, 2)
    expected = attn.wo(attention(q, k, v, causal_mask(9)).transpose(1, 2).reshape(2, 9, 32))
    assert torch.allclose(attn(x, cos, sin, torch.arange(9)), expected, atol=1e-6)


def test_cache_writes_at_tensor_positions_and_returns_the_whole_buffer():
    cache = KVCache(batch_size=2, max_seq_len=8, n_kv_heads=1, head_dim=2)
    k1, v1 = torch.ones(2, 1, 3, 2), 2 * torch.ones(2, 1, 3, 2)
    k, v, mask = cache.update(torch.arange(3), k1, v1)
    assert k.shape == (2, 1, 8, 2) and mask.shape == (3, 8)
    assert torch.equal(mask, causal_mask(3, 8))  # position p sees keys 0..p, never the unwritten rest
    k, v, mask = cache.update(torch.tensor([3]), 3 * torch.ones(2, 1, 1, 2), 4 * torch.ones(2, 1, 1, 2))
    assert k[0, 0, :, 0].tolist() == [1, 1, 1, 3, 0, 0, 0, 0] and v[0, 0, :, 0].tolist() == [2, 2, 2, 4, 0, 0, 0, 0]
    assert mask.int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    with pytest.raises((IndexError, RuntimeError), match="out of (range|bounds)"):
        cache.update(torch.arange(7, 10), k1, v1)  # past the end: refused by the indexing itself
    with pytest.raises(ValueError, match="does not fit"):
        cache.update(torch.arange(1), torch.ones(3, 1, 1, 2), torch.ones(3, 1, 1, 2))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_fused_attention_equals_the_reference_with_and_without_a_cache(n_kv_heads):
    """The model's SDPA call (grouped heads read in place) equals the written-out reference."""
    torch.manual_seed(5)
    q = torch.randn(2, 4, 6, 8)
    k, v = torch.randn(2, n_kv_heads, 6, 8), torch.randn(2, n_kv_heads, 6, 8)
    rep = 4 // n_kv_heads
    expected = attention(q, repeat_kv(k.transpose(1, 2), rep).transpose(1, 2),
                         repeat_kv(v.transpose(1, 2), rep).transpose(1, 2), causal_mask(6))
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)
    assert (fused - expected).abs().max() <= 1e-6
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(6), enable_gqa=rep > 1)
    assert (masked - expected).abs().max() <= 1e-6


def test_kv_cache_bytes_counts_keys_and_values():
    cfg = ModelConfig(dim=64, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=10)
    cache = KVCache(batch_size=2, max_seq_len=16, n_kv_heads=2, head_dim=8)
    per_layer = cache.k.numel() * 4 + cache.v.numel() * 4
    assert kv_cache_bytes(cfg, seq_len=16, batch_size=2, bytes_per_value=4) == 3 * per_layer
    mha = ModelConfig(dim=64, n_layers=3, n_heads=8, vocab_size=10)
    assert kv_cache_bytes(mha, 16) == 4 * kv_cache_bytes(cfg, 16)
