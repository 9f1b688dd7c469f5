"""Parity with Hugging Face transformers' Llama: the same weights must give the same logits."""

from __future__ import annotations

import pytest
import torch
from helpers import random_model

from llama import ModelConfig, RopeScaling, Transformer
from llama.formats.convert import HF_NAMES, hf_to_llama_state_dict, llama_to_hf_state_dict

BASE = dict(dim=64, n_layers=2, n_heads=4, vocab_size=101, hidden_dim=96, max_seq_len=64)
CONFIGS = {
    "mha": ModelConfig(**BASE),
    "gqa": ModelConfig(**{**BASE, "n_kv_heads": 2}),
    "mqa": ModelConfig(**{**BASE, "n_kv_heads": 1}),
    "tied": ModelConfig(**{**BASE, "n_kv_heads": 2, "tie_embeddings": True}),
    # A short original context puts several frequency bands in the blended region, so the
    # scaling visibly changes the logits within a 40-token test sequence.
    "llama3.1-scaling": ModelConfig(**{**BASE, "n_kv_heads": 2, "rope_theta": 500000.0,
                                       "rope_scaling": RopeScaling(8.0, 1.0, 4.0, 16)}),
    "odd-layers": ModelConfig(**{**BASE, "n_layers": 3, "n_heads": 8, "n_kv_heads": 2, "norm_eps": 1e-6}),
}


def hf_twin(transformers, model: Transformer) -> torch.nn.Module:
    """transformers' LlamaForCausalLM carrying the same weights as ``model``."""
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
    missing, unexpected = hf.load_state_dict(llama_to_hf_state_dict(model.state_dict(), model.config), strict=False)
    assert not unexpected
    assert missing == (["lm_head.weight"] if model.config.tie_embeddings else [])
    return hf


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(name, transformers):
    model = random_model(CONFIGS[name])
    hf = hf_twin(transformers, model)
    tokens = torch.randint(0, model.config.vocab_size, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5, f"{name}: max |Δlogit| = {diff:.3g}"
    # The comparison is meaningful only if the logits are not trivially small.
    assert theirs.std() > 0.1


def test_rope_scaling_changes_logits():
    """Guard against a parity test that passes because scaling does nothing at these lengths."""
    scaled = random_model(CONFIGS["llama3.1-scaling"])
    plain = random_model(ModelConfig(**{**BASE, "n_kv_heads": 2, "rope_theta": 500000.0}))
    plain.load_state_dict(scaled.state_dict())
    tokens = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (scaled(tokens) - plain(tokens)).abs().max() > 1e-3


def test_unpermuted_weights_break_parity(transformers):
    """The wq/wk permutation is needed: loading our rows unchanged into HF gives other logits."""
    model = random_model(CONFIGS["gqa"])
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
    renamed = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if parts[0] == "layers":  # layers.3.x -> the table's layers.{i}.x, then fill in 3
            renamed[HF_NAMES[".".join(["layers", "{i}", *parts[2:]])].format(i=parts[1])] = tensor
        else:
            renamed[HF_NAMES[name]] = tensor
    hf.load_state_dict(renamed)
    tokens = torch.randint(0, 101, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["gqa", "tied"])
def test_state_dict_round_trip_is_exact(name, transformers):
    model = random_model(CONFIGS[name])
    hf = hf_twin(transformers, model)
    hf_sd = {k: v for k, v in hf.state_dict().items() if not (name == "tied" and k == "lm_head.weight")}
    back = llama_to_hf_state_dict(hf_to_llama_state_dict(hf_sd, model.config), model.config)
    assert back.keys() == hf_sd.keys()
    for k in hf_sd:
        assert torch.equal(back[k], hf_sd[k]), k
    ours = hf_to_llama_state_dict(hf_sd, model.config)
    for k, v in model.state_dict().items():
        assert torch.equal(ours[k], v), k


def test_load_into_our_model_from_hf_weights(transformers):
    torch.manual_seed(5)
    config = CONFIGS["odd-layers"]
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf())).eval()
    model = Transformer(config).eval()
    model.load_state_dict(hf_to_llama_state_dict(hf.state_dict(), config))
    tokens = torch.randint(0, 101, (2, 30), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5


def test_conversion_errors_name_the_problem():
    config = CONFIGS["gqa"]
    sd = random_model(config).state_dict()
    with pytest.raises(ValueError, match="missing .*layers.1.attention.wq.weight"):
        llama_to_hf_state_dict({k: v for k, v in sd.items() if k != "layers.1.attention.wq.weight"}, config)
    bad = dict(sd)
    bad["layers.0.attention.wk.weight"] = torch.zeros(64, 64)
    with pytest.raises(ValueError, match=r"layers.0.attention.wk.weight has shape \(64, 64\) but the config implies \(32, 64\)"):
        llama_to_hf_state_dict(bad, config)
    hf_sd = llama_to_hf_state_dict(sd, config)
    hf_sd["model.layers.7.mlp.gate_proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected .*model.layers.7"):
        hf_to_llama_state_dict(hf_sd, config)


def test_config_round_trips_through_transformers(transformers):
    for config in CONFIGS.values():
        hf_config = transformers.LlamaConfig(**config.to_hf())
        # transformers 5 stores rope settings as `rope_parameters`; read its own serialisation back.
        assert ModelConfig.from_hf(hf_config.to_dict()) == config


def test_from_hf_defaults_are_transformers_defaults(transformers):
    defaults = transformers.LlamaConfig().to_dict()
    ours = ModelConfig.from_hf({})
    assert ours.dim == defaults["hidden_size"]
    assert ours.n_layers == defaults["num_hidden_layers"]
    assert ours.hidden_dim == defaults["intermediate_size"]
    assert ours.norm_eps == defaults["rms_norm_eps"]
    assert ours.max_seq_len == defaults["max_position_embeddings"]
    assert ours.tie_embeddings == defaults["tie_word_embeddings"]
    assert ours.rope_theta == defaults["rope_parameters"]["rope_theta"]


def test_from_hf_reads_published_llama31_config():
    # The fields as Meta published them in Llama 3.1 8B's config.json (transformers 4 form).
    published = {
        "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    }
    assert ModelConfig.from_hf(published) == ModelConfig.from_preset("llama3.1-8b")


@pytest.mark.parametrize("field,value,message", [
    ("hidden_act", "gelu", "SwiGLU"),
    ("attention_bias", True, "no bias"),
    ("head_dim", 32, "head_dim=32 differs"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "'yarn' is not supported"),
])
def test_from_hf_refuses_what_the_model_lacks(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf({"hidden_size": 64, "num_attention_heads": 4, field: value})
