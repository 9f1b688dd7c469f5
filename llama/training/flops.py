"""Where a training step's time and memory go, counted from the model's sizes alone: floating-point
operations per token (the $6N$ rule and the attention term) and the bytes of weights, gradients,
optimizer state and saved activations.

``benchmarks/train.py`` divides the measured tokens per second by these counts to get the
achieved FLOP/s and the model FLOPs utilisation.
"""

from __future__ import annotations

from llama.model.config import ModelConfig

__all__ = ["matmul_params", "flops_per_token", "training_memory"]


# --8<-- [start:flops]
def matmul_params(config: ModelConfig) -> int:
    """Weights that multiply a vector for every token: the blocks' projections and the output
    head. The embedding is a table lookup (no arithmetic) and the norm gains are negligible."""
    d, kv = config.dim, config.n_kv_heads * config.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * config.hidden_dim  # wq, wo; wk, wv; w1, w2, w3
    return config.n_layers * per_layer + d * config.vocab_size


def flops_per_token(config: ModelConfig, seq_len: int) -> dict[str, float]:
    r"""Floating-point operations of one training step, per token of the batch.

    A weight matrix of $N$ entries costs $2N$ operations per token forward (a multiply and an
    add each) and $4N$ backward (the gradient of its input and of itself): $6N$ in all.
    Attention adds the products $QK^\top$ and $AV$, $2 \cdot 2 \cdot d$ per pair of positions
    and layer forward; causal attention looks at $(T + 1)/2$ positions on average, so
    $6 \cdot L \cdot d \cdot (T + 1)$ per token for the step (PaLM's appendix counts the whole
    $T \times T$ square, twice this).

    Args:
        config: the model.
        seq_len: tokens per training window $T$.

    Returns:
        ``{"forward", "backward", "total"}``: operations per token; ``"weights"`` and
        ``"attention"``: the two terms of the total.
    """
    weights = 6 * matmul_params(config)
    attention = 6 * config.n_layers * config.n_heads * config.head_dim * (seq_len + 1)
    total = weights + attention
    return {"weights": weights, "attention": attention, "forward": total / 3, "backward": 2 * total / 3,
            "total": total}
# --8<-- [end:flops]


# --8<-- [start:memory]
def training_memory(config: ModelConfig, batch_size: int, seq_len: int, optimizer: str = "adamw",
                    autocast: bool = True) -> dict[str, int]:
    """Bytes a training step holds at its peak (the end of the forward pass), by what holds them.

    Weights, gradients and optimizer state are float32: 4 bytes each, and AdamW keeps two
    moments per weight, Muon one momentum per matrix of the blocks. The activations are the
    tensors the forward pass saves for the backward pass, counted per token and layer: the
    inputs of the two norms and of the seven projections, the queries, keys, values and attention
    output, and the feed-forward's three hidden-width tensors; in bfloat16 (2 bytes) under
    autocast, plus the float32 logits and their softmax. A count, not a measurement: the
    allocator's caching and the temporaries of each kernel come on top.

    Raises:
        ValueError: ``optimizer`` is neither ``"adamw"`` nor ``"muon"``.
    """
    if optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be adamw or muon, got {optimizer!r}")
    from llama.model.transformer import count_parameters

    n = count_parameters(config)
    hidden = config.n_layers * (2 * config.dim * config.dim + 2 * config.dim * config.n_kv_heads * config.head_dim
                                + 3 * config.dim * config.hidden_dim)
    state = 2 * n if optimizer == "adamw" else hidden + 2 * (n - hidden)
    d, kv, h = config.dim, config.n_kv_heads * config.head_dim, config.hidden_dim
    per_token_layer = 2 * d + 4 * d + 2 * d + 2 * kv + 3 * h  # norm in/out x2, q, attn out, wo in; k, v; w1, w3, silu*w3
    act_bytes = 2 if autocast else 4
    tokens = batch_size * seq_len
    return {"weights": 4 * n, "gradients": 4 * n, "optimizer": 4 * state,
            "activations": act_bytes * tokens * config.n_layers * per_token_layer,
            "logits": 2 * 4 * tokens * config.vocab_size}
# --8<-- [end:memory]
