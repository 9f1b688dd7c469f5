"""The pieces of sharded training that run in one process: activation checkpointing, what a rank
holds, and a sharded checkpoint refused where it is not one (tests/test_train_fsdp.py runs ranks)."""

from __future__ import annotations

import pytest
import torch

from llama.formats.load import save_model
from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.training.fsdp import checkpoint_activations, local_bytes
from llama.training.loss import cross_entropy
from llama.training.optim import make_optimizer
from llama.training.sharded import is_sharded_checkpoint, read_sharded

CONFIG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, max_seq_len=16)


def gradients(model: Transformer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    cross_entropy(model(x[:, :-1]), x[:, 1:]).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_recomputed_activations_give_the_same_gradients_and_names():
    torch.manual_seed(0)
    kept = Transformer(CONFIG)
    recomputed = Transformer(CONFIG)
    recomputed.load_state_dict(kept.state_dict())
    checkpoint_activations(recomputed)
    assert list(recomputed.state_dict()) == list(kept.state_dict())  # checkpoints do not change
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    a, b = gradients(kept, x), gradients(recomputed, x)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the saved tensors of a block are recomputed: the backward pass runs each block's forward again
    calls = []
    recomputed.layers[0].attention.register_forward_hook(lambda *_: calls.append(1))
    recomputed.zero_grad()
    gradients(recomputed, x)
    assert len(calls) == 2


def test_one_process_holds_everything():
    model = Transformer(CONFIG)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    cross_entropy(model(torch.tensor([[1, 2, 3]])), torch.tensor([[2, 3, 4]])).backward()
    optimizer.step()
    n = sum(p.numel() for p in model.parameters())
    assert local_bytes(model, optimizer) == {"weights": 4 * n, "optimizer": 8 * n}  # AdamW: two moments


def test_a_folder_that_is_not_a_sharded_checkpoint_is_refused(tmp_path):
    save_model(Transformer(CONFIG), tmp_path / "hf")
    assert not is_sharded_checkpoint(tmp_path / "hf")
    with pytest.raises(ValueError, match="is not a sharded checkpoint .* give a checkpoints/step-NNNNNNN folder"):
        read_sharded(tmp_path / "hf")


def test_flags_that_do_not_go_with_fsdp_are_refused():
    from llama.training.config import TrainConfig

    with pytest.raises(ValueError, match="^compile is not supported with parallel fsdp here; drop one of them"):
        TrainConfig(out="run", max_steps=1, parallel="fsdp", compile=True)
    with pytest.raises(ValueError, match="use parallel ddp, not fsdp"):
        TrainConfig(out="run", max_steps=1, parallel="fsdp", base="model", lora_rank=4)
    with pytest.raises(ValueError, match="^parallel must be ddp or fsdp, got 'zero'"):
        TrainConfig(out="run", max_steps=1, parallel="zero")
