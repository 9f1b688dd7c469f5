"""Weight names between this package (Meta's names) and Hugging Face transformers' Llama.

Everything that differs between the two is in this file: the table of names below, and the
reordering of ``wq``/``wk`` rows that turns Meta's interleaved RoPE layout into Hugging
Face's half-split one (:func:`llama.model.rope.interleaved_to_half_split`).
"""

from __future__ import annotations

import re

import torch

from llama.model.config import ModelConfig
from llama.model.rope import half_split_to_interleaved, interleaved_to_half_split

__all__ = ["HF_NAMES", "hf_to_llama_state_dict", "llama_to_hf_state_dict", "expected_shapes", "check_layer_count"]

# --8<-- [start:names]
#: Our name → Hugging Face's name. ``{i}`` stands for the layer index.
HF_NAMES: dict[str, str] = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.attention.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attention.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attention.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "layers.{i}.feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
}

# Buffers some older Hugging Face checkpoints carry; they are recomputed from the config.
_HF_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|model\.rotary_emb\.inv_freq")


def _names(n_layers: int, table: dict[str, str]) -> dict[str, str]:
    """Expand the ``{i}`` patterns of ``table`` for every layer."""
    out = {}
    for ours, theirs in table.items():
        if "{i}" in ours:
            for i in range(n_layers):
                out[ours.format(i=i)] = theirs.format(i=i)
        else:
            out[ours] = theirs
    return out
# --8<-- [end:names]


# --8<-- [start:shapes]
def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a :class:`~llama.model.transformer.Transformer` with this config, by our names.

    >>> expected_shapes(ModelConfig(dim=8, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=5))["layers.0.attention.wk.weight"]
    (4, 8)
    """
    d, h, kv = config.dim, config.hidden_dim, config.n_kv_heads * config.head_dim
    per_layer = {
        "attention_norm.weight": (d,), "ffn_norm.weight": (d,),
        "attention.wq.weight": (d, d), "attention.wk.weight": (kv, d),
        "attention.wv.weight": (kv, d), "attention.wo.weight": (d, d),
        "feed_forward.w1.weight": (h, d), "feed_forward.w2.weight": (d, h), "feed_forward.w3.weight": (h, d),
    }
    shapes = {"tok_embeddings.weight": (config.vocab_size, d), "norm.weight": (d,),
              "output.weight": (config.vocab_size, d)}
    for i in range(config.n_layers):
        shapes.update({f"layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def _check_shapes(sd: dict[str, torch.Tensor], config: ModelConfig, where: str) -> None:
    for name, shape in expected_shapes(config).items():
        if tuple(sd[name].shape) != shape:
            raise ValueError(
                f"{where}: tensor {name} has shape {tuple(sd[name].shape)} but the config implies {shape}; "
                "the checkpoint and its config disagree"
            )
# --8<-- [end:shapes]


def check_layer_count(config: ModelConfig, tensors: int, where: str) -> None:
    """Refuse a config with more layers than ``tensors``, the number of tensors a file holds, can make.

    Each layer has nine weights (two norms, four attention projections, three feed-forward
    ones) and the model two more (embedding, final norm): a file that declares 2e7 layers but
    holds 20 tensors is refused here, before a table of names is made for every declared layer
    (which took a minute, then ran out of memory).

    >>> check_layer_count(ModelConfig(dim=8, n_layers=3, n_heads=2, vocab_size=5), 11, "model.gguf")
    Traceback (most recent call last):
    ...
    ValueError: model.gguf declares 3 layers, which have at least 29 tensors, but it holds 11: its sizes and its tensors disagree
    """
    least = 9 * config.n_layers + 2
    if tensors < least:
        raise ValueError(f"{where} declares {config.n_layers} layers, which have at least {least} tensors, but it "
                         f"holds {tensors}: its sizes and its tensors disagree")


# --8<-- [start:to_hf]
def llama_to_hf_state_dict(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename our weights to Hugging Face's and reorder ``wq``/``wk`` rows for half-split RoPE.

    With tied embeddings the head is omitted (transformers ties ``lm_head`` to the embedding).

    Raises:
        ValueError: a tensor is missing, unexpected, or has a shape the config contradicts.
    """
    names = _names(config.n_layers, HF_NAMES)
    missing = sorted(set(names) - set(sd) - ({"output.weight"} if config.tie_embeddings else set()))
    unexpected = sorted(set(sd) - set(names))
    if missing or unexpected:
        raise ValueError(f"state dict does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_embeddings:
        sd = {**sd, "output.weight": sd["tok_embeddings.weight"]}
    _check_shapes(sd, config, "llama_to_hf_state_dict")
    out = {}
    for ours, theirs in names.items():
        w = sd[ours]
        if ours.endswith("attention.wq.weight"):
            w = interleaved_to_half_split(w, config.n_heads)
        elif ours.endswith("attention.wk.weight"):
            w = interleaved_to_half_split(w, config.n_kv_heads)
        out[theirs] = w
    if config.tie_embeddings:
        del out["lm_head.weight"]
    return out
# --8<-- [end:to_hf]


# --8<-- [start:from_hf]
def hf_to_llama_state_dict(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`llama_to_hf_state_dict`: Hugging Face names and layout to ours.

    A missing ``lm_head.weight`` is taken from the embedding when the config ties them.

    Raises:
        ValueError: a tensor is missing, unexpected, or has a shape the config contradicts.
    """
    names = _names(config.n_layers, HF_NAMES)
    theirs_to_ours = {theirs: ours for ours, theirs in names.items()}
    sd = {k: v for k, v in sd.items() if not _HF_IGNORED.fullmatch(k)}
    if config.tie_embeddings and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing = sorted(set(theirs_to_ours) - set(sd))
    unexpected = sorted(set(sd) - set(theirs_to_ours))
    if missing or unexpected:
        raise ValueError(
            f"Hugging Face state dict does not match the config ({config.n_layers} layers): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    out = {theirs_to_ours[theirs]: w for theirs, w in sd.items()}
    _check_shapes(out, config, "hf_to_llama_state_dict")
    for ours, w in out.items():
        if ours.endswith("attention.wq.weight"):
            out[ours] = half_split_to_interleaved(w, config.n_heads)
        elif ours.endswith("attention.wk.weight"):
            out[ours] = half_split_to_interleaved(w, config.n_kv_heads)
    return out
# --8<-- [end:from_hf]
