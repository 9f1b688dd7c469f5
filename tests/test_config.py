"""ModelConfig: validation messages, presets, serialisation."""

from __future__ import annotations

import pytest

from llama import PRESETS, ModelConfig, RopeScaling


@pytest.mark.parametrize("kwargs,message", [
    (dict(dim=100, n_heads=8), r"dim \(100\) must be divisible by n_heads \(8\).*e\.g\. 10"),
    (dict(dim=64, n_heads=8, n_kv_heads=3), r"n_heads \(8\) must be divisible by n_kv_heads \(3\).*n_kv_heads=2"),
    (dict(dim=72, n_heads=8), "head_dim = dim / n_heads = 9 is odd"),
    (dict(dim=64, n_heads=8, vocab_size=0), "vocab_size must be a positive integer"),
    (dict(dim=64, n_heads=8, n_layers=2.5), "n_layers must be a positive integer"),
    (dict(dim=64, n_heads=8, rope_theta=-1.0), "rope_theta must be a finite number above 1"),
    (dict(dim=64, n_heads=8, norm_eps=0.0), "norm_eps must be a finite number between 0 and 1"),
])
def test_invalid_configs_explain_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_defaults_fill_kv_heads_and_hidden_dim():
    cfg = ModelConfig(dim=4096, n_heads=32)
    assert cfg.n_kv_heads == 32 and cfg.hidden_dim == 11008 and cfg.head_dim == 128


@pytest.mark.parametrize("dim,multiple_of,multiplier,published", [
    (4096, 256, None, 11008),   # Llama 2 7B
    (5120, 256, None, 13824),   # Llama 2 13B
    (8192, 4096, 1.3, 28672),   # Llama 2 70B
    (4096, 1024, 1.3, 14336),   # Llama 3 8B
    (2048, 256, 1.5, 8192),     # Llama 3.2 1B
])
def test_hidden_dim_rule_reproduces_published_sizes(dim, multiple_of, multiplier, published):
    cfg = ModelConfig(dim=dim, n_heads=dim // 128, multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
    assert cfg.hidden_dim == published


def test_dict_round_trip_and_unknown_keys():
    for cfg in PRESETS.values():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['n_embd'\]"):
        ModelConfig.from_dict({"n_embd": 128})


def test_presets():
    assert ModelConfig.from_preset("stories260K", max_seq_len=64).max_seq_len == 64
    assert PRESETS["stories260K"].max_seq_len == 512  # overrides do not leak into the table
    assert isinstance(PRESETS["llama3.2-1b"].rope_scaling, RopeScaling)
    with pytest.raises(ValueError, match="unknown preset 'gpt2'; choose one of: stories260K"):
        ModelConfig.from_preset("gpt2")


def test_from_hf_reads_transformers5_rope_parameters():
    hf = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96,
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}}
    cfg = ModelConfig.from_hf(hf)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling == RopeScaling(factor=32.0)
    plain = ModelConfig.from_hf({**hf, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert plain.rope_theta == 1e6 and plain.rope_scaling is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(dim="64"), "dim must be an integer, got '64': write 64 without quotes"),
    (dict(norm_eps="1e-5"), "norm_eps must be a number, got '1e-5'"),
    (dict(rope_theta="10000"), "rope_theta must be a number, got '10000'"),
    (dict(tie_embeddings="false"), "tie_embeddings must be true or false, got 'false'"),
    (dict(rope_scaling=dict(factor="8")), "rope_scaling.factor must be a number, got '8'"),
])
def test_fields_of_the_wrong_type_are_refused_not_converted(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"dim": 64, "n_heads": 8, **kwargs})


def test_from_hf_checks_types_before_sizes():
    """A string size would otherwise be compared with numbers and blamed on head_dim."""
    hf = {"hidden_size": "64", "num_attention_heads": 4, "head_dim": 16, "num_hidden_layers": 2}
    with pytest.raises(ValueError, match="^hidden_size must be an integer, got '64': write 64 without quotes$"):
        ModelConfig.from_hf(hf)
    with pytest.raises(ValueError, match="tie_word_embeddings must be true or false, got 'false'"):
        ModelConfig.from_hf({"tie_word_embeddings": "false"})
    with pytest.raises(ValueError, match="must hold a JSON object of fields, not a list"):
        ModelConfig.from_hf([1, 2])
