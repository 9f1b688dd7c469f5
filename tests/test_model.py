"""The assembled model: shapes, the KV cache, left padding, parameter counts, errors."""

from __future__ import annotations

import pytest
import torch

from llama import ModelConfig, Transformer, count_parameters, generate

SMALL = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, hidden_dim=64, max_seq_len=32)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Transformer(SMALL).eval()


def test_cached_decoding_equals_full_forward(model):
    tokens = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        model.setup_cache(batch_size=2)
        steps = [model(tokens[:, :5], input_pos=torch.arange(5))]  # prefill 5, then one token at a time
        steps += [model(tokens[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(5, 9)]
        steps.append(model(tokens[:, 9:], input_pos=torch.arange(9, 12)))  # a 3-token chunk after a cached prefix
        model.clear_cache()
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_input_pos_without_cache_only_shifts_positions(model):
    tokens = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(tokens), model(tokens, input_pos=torch.arange(3, 9))
    # RoPE scores depend only on relative position, so shifting every token equally changes nothing.
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_left_padded_batch_equals_each_sequence_alone(model, cached):
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, 50, (n,), generator=gen) for n in (7, 3, 5)]
    width = max(len(s) for s in seqs)
    tokens = torch.zeros(3, width, dtype=torch.long)
    pad_mask = torch.zeros(3, width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, width - len(s):] = s
        pad_mask[i, width - len(s):] = True
    with torch.no_grad():
        if cached:  # the mask covers the whole cache: real after the prompts
            model.setup_cache(batch_size=3, max_seq_len=width + 4)
            pad_mask = torch.cat([pad_mask, torch.ones(3, 4, dtype=torch.bool)], dim=1)
        batched = model(tokens, pad_mask=pad_mask)
        if cached:  # one more decode step through the cache
            nxt = torch.randint(1, 50, (3, 1), generator=gen)
            step = model(nxt, input_pos=torch.tensor([width]), pad_mask=pad_mask)
            model.clear_cache()
        for i, s in enumerate(seqs):
            alone = model(s[None])
            assert torch.allclose(batched[i, width - len(s):], alone[0], atol=1e-5)
            if cached:
                alone_next = model(torch.cat([s, nxt[i]])[None])[0, -1]
                assert torch.allclose(step[i, 0], alone_next, atol=1e-5)
    assert torch.isfinite(batched).all()  # padding rows stay finite too


def test_pad_mask_shape_is_checked(model):
    with pytest.raises(ValueError, match=r"pad_mask must be a bool tensor of shape \[batch, keys\]"):
        model(torch.ones(2, 4, dtype=torch.long), pad_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"pad_mask must be a bool tensor of shape \[batch, keys\]"):
        model(torch.ones(2, 4, dtype=torch.long), pad_mask=torch.ones(2, 4, dtype=torch.long))


def test_errors_name_the_fix(model):
    # Ids are checked where users hand them in (generation, the CLI, training data), not in
    # forward, which must not wait for the device to read them.
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [1, 50], 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [-1], 1)
    with pytest.raises(IndexError):
        model(torch.tensor([[1, 50]]))  # still no silent answer: the embedding lookup refuses it
    with pytest.raises(ValueError, match="do not fit max_seq_len=32"):
        model(torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[batch, seq\]"):
        model(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's 32"):
        model.setup_cache(1, max_seq_len=64)


def test_tied_embeddings_share_one_tensor():
    m = Transformer(ModelConfig(**{**SMALL.to_dict(), "tie_embeddings": True}))
    assert m.output.weight is m.tok_embeddings.weight
    assert m.num_parameters() == count_parameters(m.config)


@pytest.mark.parametrize("preset,published", [("llama2-7b", 6_738_415_616), ("llama3.2-1b", 1_235_814_400),
                                              ("llama3.1-8b", 8_030_261_248)])
def test_parameter_count_of_real_models_on_the_meta_device(preset, published):
    cfg = ModelConfig.from_preset(preset)
    with torch.device("meta"):
        m = Transformer(cfg)
    assert m.num_parameters() == count_parameters(cfg) == published


def test_parameter_count_matches_transformers(transformers):
    for cfg in (SMALL, ModelConfig.from_preset("stories260K")):
        with torch.device("meta"):
            hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_hf()))
        assert sum(p.numel() for p in hf.parameters()) == count_parameters(cfg)


def test_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(dim=256, n_layers=8, n_heads=4, vocab_size=64))
    assert abs(m.layers[0].attention.wq.weight.std().item() - 0.02) < 2e-3
    assert abs(m.layers[0].attention.wo.weight.std().item() - 0.02 / 4) < 1e-3
    assert torch.equal(m.norm.weight, torch.ones(256))
