"""RoPE: the properties the chapter claims, and agreement with transformers' frequency code."""

from __future__ import annotations

import math

import pytest
import torch

from llama import ModelConfig, RopeScaling
from llama.model.reference import apply_rope_half_split
from llama.model.rope import (
    apply_rope,
    half_split_to_interleaved,
    interleaved_to_half_split,
    rope_cache,
    rope_frequencies,
    scale_frequencies,
)


def test_frequencies_follow_the_formula():
    d, theta = 16, 10000.0
    expected = torch.tensor([theta ** (-2 * j / d) for j in range(d // 2)], dtype=torch.float32)
    assert torch.allclose(rope_frequencies(d, theta), expected, rtol=1e-6)


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(7)


def test_dot_product_depends_only_on_relative_position():
    torch.manual_seed(0)
    d = 32
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)
    cos, sin = rope_cache(d, 64)

    def rotated_dot(m, n):
        qm = apply_rope(q, cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k, cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum().item()

    for offset in (0, 3, 17):
        values = [rotated_dot(m + offset, m) for m in (0, 5, 20, 40)]
        assert max(values) - min(values) < 1e-4, values
    assert abs(rotated_dot(10, 0) - rotated_dot(0, 0)) > 1e-3  # and it does depend on m - n


def test_apply_rope_is_a_rotation_of_each_pair():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 3, 8)
    cos, sin = rope_cache(8, 5)
    y = apply_rope(x, cos, sin)
    # Position 0 is the identity; every pair keeps its length; the angle advances by m*theta_j.
    assert torch.equal(y[:, 0], x[:, 0])
    pairs_x, pairs_y = x.unflatten(-1, (4, 2)), y.unflatten(-1, (4, 2))
    assert torch.allclose(pairs_x.norm(dim=-1), pairs_y.norm(dim=-1), atol=1e-5)
    angle = lambda p: torch.atan2(p[..., 1], p[..., 0])  # noqa: E731
    turned = torch.remainder(angle(pairs_y) - angle(pairs_x), 2 * math.pi)
    freqs = rope_frequencies(8)
    for m in range(5):
        want = torch.remainder(m * freqs, 2 * math.pi).expand_as(turned[:, m])
        diff = torch.remainder(turned[:, m] - want + math.pi, 2 * math.pi) - math.pi
        assert diff.abs().max() < 1e-4


def test_half_split_equals_interleaved_after_permuting_features():
    torch.manual_seed(2)
    n_heads, h_d = 3, 8
    x = torch.randn(2, 6, n_heads, h_d)
    cos, sin = rope_cache(h_d, 6)
    # Permuting the rows of wq (output features) is permuting the features of q.
    w = torch.eye(n_heads * h_d)
    perm = interleaved_to_half_split(w, n_heads)
    x_half = (x.reshape(2, 6, -1) @ perm.T).reshape(2, 6, n_heads, h_d)
    y_interleaved = apply_rope(x, cos, sin)
    y_half = apply_rope_half_split(x_half, cos, sin)
    assert torch.allclose((y_interleaved.reshape(2, 6, -1) @ perm.T).reshape_as(y_half), y_half, atol=1e-6)
    assert not torch.allclose(apply_rope_half_split(x, cos, sin), y_interleaved, atol=1e-3)


def test_permutations_are_inverse():
    w = torch.randn(4 * 16, 5)
    assert torch.equal(half_split_to_interleaved(interleaved_to_half_split(w, 4), 4), w)
    assert not torch.equal(interleaved_to_half_split(w, 4), w)


def test_per_sequence_positions_broadcast():
    torch.manual_seed(3)
    x = torch.randn(2, 4, 2, 8)
    cos, sin = rope_cache(8, 10)
    positions = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    y = apply_rope(x, cos[positions], sin[positions])
    assert torch.allclose(y[1:], apply_rope(x[1:], cos[5:9], sin[5:9]))


def meta_llama3_scaling(freqs, factor, low, high, old_len):
    """Meta's published per-frequency rule, written as a plain loop (independent of the library)."""
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old_len / high:
            out.append(f)
        elif wavelen > old_len / low:
            out.append(f / factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out)


@pytest.mark.parametrize("preset", ["llama3.1-8b", "llama3.2-1b"])
def test_llama3_scaling_matches_the_reference_rule(preset):
    cfg = ModelConfig.from_preset(preset)
    s = cfg.rope_scaling
    plain = rope_frequencies(cfg.head_dim, cfg.rope_theta)
    ours = scale_frequencies(plain, s)
    ref = meta_llama3_scaling(plain, s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings)
    assert torch.allclose(ours, ref, rtol=1e-6)
    assert ours[0] == plain[0] and torch.isclose(ours[-1], plain[-1] / s.factor)


def test_llama3_scaling_matches_transformers(transformers):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for preset in ("llama3.1-8b", "llama3.2-1b"):
        cfg = ModelConfig.from_preset(preset)
        hf_cfg = transformers.LlamaConfig(**cfg.to_hf())
        inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
        ours = rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        assert torch.allclose(ours, inv_freq.float(), rtol=1e-6), preset


def test_scaling_factor_8_and_32_differ():
    """Llama 3.2 1B/3B use factor 32; hard-coding 8 (a published bug) changes the long wavelengths."""
    plain = rope_frequencies(64, 500000.0)
    f8, f32 = scale_frequencies(plain, RopeScaling(factor=8.0)), scale_frequencies(plain, RopeScaling(factor=32.0))
    assert torch.isclose(f8[-1] / f32[-1], torch.tensor(4.0))


def test_bad_scaling_is_refused():
    with pytest.raises(ValueError, match="low_freq_factor < high_freq_factor"):
        RopeScaling(factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        RopeScaling(factor=0.5)
