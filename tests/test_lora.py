"""LoRA adapters: exact at initialisation, exact merge and unmerge, and interchangeable with Hugging
Face PEFT on transformers' Llama in both directions (the same logits within 1e-5 in float32)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_model, require_module
from safetensors.torch import load_file, save_file

from llama import ModelConfig
from llama.formats.convert import llama_to_hf_state_dict
from llama.training.lora import (
    TARGETS,
    LoRAConfig,
    LoRALinear,
    add_lora,
    load_adapter,
    lora_modules,
    lora_state_dict,
    merge,
    merge_into_base,
    save_adapter,
    trainable_parameters,
    unmerge,
)

BASE = dict(dim=32, n_layers=2, n_heads=4, vocab_size=61, hidden_dim=48, max_seq_len=32)
CONFIGS = {"mha": ModelConfig(**BASE), "gqa": ModelConfig(**{**BASE, "n_kv_heads": 2})}
TOKENS = torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(3))


def adapted(name: str, rank: int = 4, alpha: float = 8.0, seed: int = 0) -> torch.nn.Module:
    """A random model with adapters on all seven targets whose B is random too (B = 0 would hide a
    wrong permutation or a wrong scale)."""
    model = add_lora(random_model(CONFIGS[name]), LoRAConfig(rank=rank, alpha=alpha))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)
    return model.eval()


def hf_twin(transformers, model) -> torch.nn.Module:
    """transformers' LlamaForCausalLM with the base weights of ``model`` (without its adapters)."""
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
    base = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    hf.load_state_dict(llama_to_hf_state_dict(base, model.config))
    return hf


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_at_initialisation_the_model_is_the_base_exactly():
    base = random_model(CONFIGS["gqa"])
    with torch.no_grad():
        before = base(TOKENS)
        model = add_lora(base, LoRAConfig(rank=4))
        after = model(TOKENS)
    assert len(lora_modules(model)) == 2 * len(TARGETS)
    assert torch.equal(before, after)


def test_only_adapters_are_trainable_and_counted():
    model = add_lora(random_model(CONFIGS["gqa"]), LoRAConfig(rank=2, targets=("wq", "wv")))
    trainable, total = trainable_parameters(model)
    d, kv = 32, 2 * 8
    assert trainable == 2 * (2 * (d + d) + 2 * (d + kv))  # per layer: A [2, in] + B [out, 2], on wq and wv
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(lora_state_dict(model))
    assert total == sum(p.numel() for p in random_model(CONFIGS["gqa"]).parameters()) + trainable


def test_merge_then_unmerge_restores_the_base_bit_for_bit():
    model = adapted("gqa")
    base = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        separate = model(TOKENS)
        merge(model)
        merged = model(TOKENS)
    assert max_diff(separate, merged) <= 1e-5
    assert any(not torch.equal(base[k], v) for k, v in model.state_dict().items() if k in base)  # merging changed them
    unmerge(model)
    for k, v in model.state_dict().items():
        if k in base:
            assert v.numpy().tobytes() == base[k].numpy().tobytes(), k
    with torch.no_grad():
        assert torch.equal(model(TOKENS), separate)


def test_merge_into_base_leaves_a_plain_model_computing_the_same():
    model = adapted("gqa")
    keys = {k for k in model.state_dict() if ".lora_" not in k}
    with torch.no_grad():
        separate = model(TOKENS)
        merge_into_base(model)
        assert max_diff(model(TOKENS), separate) <= 1e-5
    assert set(model.state_dict()) == keys and not any(isinstance(m, LoRALinear) for m in model.modules())


def test_subtracting_the_update_would_not_restore_the_base():
    """Why unmerge keeps a copy: (W + D) - D differs from W in some bits."""
    m = lora_modules(adapted("mha"))["layers.0.attention.wq"]
    w = m.weight.detach().clone()
    assert not torch.equal((w + m.delta()) - m.delta(), w)


def test_adapter_saved_alone_loads_exactly(tmp_path):
    model = adapted("gqa")
    save_adapter(model, tmp_path / "adapter", base="some/base")
    size = sum(f.stat().st_size for f in (tmp_path / "adapter").iterdir())
    assert size < 20_000  # the adapters, not the base weights
    other = load_adapter(random_model(CONFIGS["gqa"]), tmp_path / "adapter").eval()
    for k, v in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(other)[k], v), k
    with torch.no_grad():
        assert torch.equal(other(TOKENS), model(TOKENS))


@pytest.mark.parametrize("name", CONFIGS)
def test_our_adapter_in_peft_gives_our_logits(name, tmp_path, transformers):
    peft = require_module("peft")
    model = adapted(name)
    save_adapter(model, tmp_path / "adapter")
    hf = hf_twin(transformers, model)
    with torch.no_grad():
        base_logits = hf(TOKENS).logits
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(TOKENS).logits
        ours = model(TOKENS)
    assert max_diff(ours, theirs) <= 1e-5, f"{name}: max |Δlogit| = {max_diff(ours, theirs):.3g}"
    assert max_diff(base_logits, theirs) > 1e-2  # the adapter changes the logits: the comparison means something


@pytest.mark.parametrize("name", CONFIGS)
def test_peft_adapter_in_ours_gives_peft_logits(name, tmp_path, transformers):
    peft = require_module("peft")
    base = random_model(CONFIGS[name])
    hf = hf_twin(transformers, base)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # init_lora_weights=False: PEFT's B random too, not zero.
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=3, lora_alpha=5, target_modules=targets,
                                                    init_lora_weights=False)).eval()
    theirs.save_pretrained(tmp_path / "peft")
    model = load_adapter(base, tmp_path / "peft").eval()
    assert len(lora_modules(model)) == 2 * len(TARGETS)
    with torch.no_grad():
        diff = max_diff(model(TOKENS), theirs(TOKENS).logits)
    assert diff <= 1e-5, f"{name}: max |Δlogit| = {diff:.3g}"


def test_without_the_rope_permutation_of_b_the_logits_differ(tmp_path, transformers):
    """The permutation of q/k's B is needed: a saved B left in our row order gives other logits."""
    peft = require_module("peft")
    model = adapted("gqa")
    save_adapter(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    for name, m in lora_modules(model).items():
        if name.endswith(("wq", "wk")):
            i = name.split(".")[1]
            proj = "q_proj" if name.endswith("wq") else "k_proj"
            tensors[f"base_model.model.model.layers.{i}.self_attn.{proj}.lora_B.weight"] = m.lora_B.detach().clone()
    save_file(tensors, path)
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(hf_twin(transformers, model), tmp_path / "adapter").eval()(TOKENS).logits
        assert max_diff(model(TOKENS), theirs) > 1e-3


def test_saved_layout_is_peft_s(tmp_path):
    save_adapter(adapted("mha", rank=2, alpha=3.0), tmp_path / "a", base="base-folder")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["base_model_name_or_path"]) == ("LORA", 2, 3.0, "base-folder")
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    keys = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (32, 2)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="targets must be some of"):
        LoRAConfig(targets=("q_proj",))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(adapted("mha"), LoRAConfig())
    with pytest.raises(ValueError, match="no LoRA adapters to save"):
        save_adapter(random_model(CONFIGS["mha"]), tmp_path / "none")
    model = adapted("mha")
    with pytest.raises(ValueError, match="unmerge"):
        save_adapter(merge(model), tmp_path / "merged")
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        load_adapter(random_model(CONFIGS["mha"]), tmp_path)
    save_adapter(unmerge(model), tmp_path / "a")
    with pytest.raises(ValueError, match="another base model"):  # 2 layers saved, 1 asked for
        load_adapter(random_model(ModelConfig(**{**BASE, "n_layers": 1})), tmp_path / "a")
    with pytest.raises(ValueError, match="does not fit this model"):
        load_adapter(random_model(ModelConfig(**{**BASE, "dim": 64})), tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(random_model(CONFIGS["mha"]), tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_model.safetensors").write_text("my notes")
    with pytest.raises(ValueError, match="is not an adapter"):
        save_adapter(unmerge(model), tmp_path / "b")
    assert (tmp_path / "b" / "adapter_model.safetensors").read_text() == "my notes"
