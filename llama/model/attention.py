"""Causal self-attention: multi-/grouped-query heads, RoPE, the causal mask and a KV cache.

The model computes attention with PyTorch's fused ``F.scaled_dot_product_attention``; the same
math written out step by step, and grouped-query attention by copying heads, are in
:mod:`llama.model.reference`, tested equal to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llama.model.config import ModelConfig
from llama.model.linear import Linear
from llama.model.rope import apply_rope

__all__ = ["causal_mask", "kv_cache_bytes", "KVCache", "Attention"]


# --8<-- [start:causal_mask]
def causal_mask(s_q: int, s_k: int | None = None, start_pos: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """Boolean mask that lets query ``i`` (at absolute position ``start_pos + i``) see keys ``<=`` it.

    Args:
        s_q: number of queries.
        s_k: number of keys (default ``start_pos + s_q``: every earlier position is cached).
        start_pos: absolute position of the first query.

    Returns:
        ``[s_q, s_k]`` bool, ``True`` where attending is allowed.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> causal_mask(1, start_pos=2).int()              # one new token after two cached ones
    tensor([[1, 1, 1]], dtype=torch.int32)
    """
    s_k = start_pos + s_q if s_k is None else s_k
    rows = torch.arange(start_pos, start_pos + s_q, device=device).unsqueeze(1)
    cols = torch.arange(s_k, device=device).unsqueeze(0)
    return cols <= rows
# --8<-- [end:causal_mask]


# --8<-- [start:kv_cache_bytes]
def kv_cache_bytes(config: ModelConfig, seq_len: int, batch_size: int = 1, bytes_per_value: int = 2) -> int:
    r"""Memory of a full KV cache: keys and values, every layer, every position.

    $$2 \times n_\text{layers} \times b \times s \times n_\text{kv} \times h_d \times \text{bytes}$$

    Only ``n_kv_heads`` enters, not ``n_heads``: grouped-query attention divides the cache by
    ``n_heads / n_kv_heads``.

    Args:
        config: model sizes.
        seq_len: positions cached per sequence.
        batch_size: sequences cached together.
        bytes_per_value: 2 for float16/bfloat16, 4 for float32.

    >>> kv_cache_bytes(ModelConfig.from_preset("llama2-7b"), seq_len=4096) / 2**30   # GiB, fp16
    2.0
    """
    return 2 * config.n_layers * batch_size * seq_len * config.n_kv_heads * config.head_dim * bytes_per_value
# --8<-- [end:kv_cache_bytes]


# --8<-- [start:kv_cache]
class KVCache(nn.Module):
    """Keys and values of every position seen so far, so each new token costs one position.

    The buffers are allocated once, for the longest sequence, and never change shape: a step
    writes its keys and values at the positions ``input_pos`` (a tensor, so a compiled step
    serves every position) and attends over the whole buffer. Positions not written yet hold
    zeros and are hidden by the causal mask: row ``p`` of :attr:`mask` lets position ``p`` see
    keys ``0 .. p`` only.

    Args:
        batch_size: sequences decoded together.
        max_seq_len: positions to keep.
        n_kv_heads: key/value heads (GQA keeps fewer than query heads: that is the saving).
        head_dim: width of a head.
        dtype: storage type of the cache.
        mask: ``causal_mask(max_seq_len)``, shared by the caches of all layers (built if ``None``).

    Shape:
        buffers ``k``, ``v``: ``[b, n_kv, max_seq_len, h_d]``; ``mask``: ``[max_seq_len, max_seq_len]``.
    """

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 mask: torch.Tensor | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        mask = causal_mask(max_seq_len, device=device) if mask is None else mask
        self.register_buffer("mask", mask, persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (``[b, n_kv, s, h_d]``) at positions ``input_pos`` (``[s]``).

        Returns:
            ``(keys, values, mask)``: the whole buffers ``[b, n_kv, max_seq_len, h_d]`` and the
            causal mask rows of these positions, ``[s, max_seq_len]``.
        """
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"a batch of {k.shape[0]} does not fit a KV cache made for {self.k.shape[0]} "
                             "sequences; call setup_cache with this batch size")
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v, self.mask[input_pos]

    def reset(self, rows: int | slice = slice(None)) -> None:
        """Zero the keys and values of sequences ``rows`` (all of them by default).

        A cache used again needs no reset while its values are finite: the mask gives the positions
        not written yet no weight. But a masked value still counts 0 times, and 0 × NaN is NaN, so a
        cache that a step filled with NaN or infinity (one whose logits were not finite) is reset
        before the next sequence uses it.
        """
        self.k[rows].zero_()
        self.v[rows].zero_()
# --8<-- [end:kv_cache]


# --8<-- [start:module]
class Attention(nn.Module):
    """Multi-head causal self-attention with grouped key/value heads and RoPE.

    ``n_kv_heads == n_heads`` is multi-head attention, ``n_kv_heads == 1`` multi-query
    attention, anything in between grouped-query attention: one mechanism.

    Args:
        config: sizes; uses ``dim``, ``n_heads``, ``n_kv_heads``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_pos: torch.Tensor, pad_keys: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from each position of ``x`` to itself and earlier positions.

        Args:
            x: ``[b, s, dim]``.
            cos: RoPE table rows for these positions, ``[s, h_d/2]`` or ``[b, s, h_d/2]``.
            sin: same shape as ``cos``.
            input_pos: ``[s]`` positions of ``x``'s tokens; with a cache, where their keys
                and values are written (passed to the cache's ``update`` as given: ``[b, s]``,
                a position per sequence, for a cache that takes them).
            pad_keys: optional bool ``[b, 1, s, s_k]``, ``False`` where a query must not see a
                key because it is padding (``s_k`` is the cache length, or ``s`` without one).

        Returns:
            ``[b, s, dim]``.
        """
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # [b, s, n, h_d] -> [b, n, s, h_d]: heads become a batch dimension for the matmuls.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.cache is not None:
            k, v, mask = self.cache.update(input_pos, k, v)  # the whole cache, and who may see what
        elif pad_keys is not None:
            mask = causal_mask(s, device=x.device)
        else:
            mask = None  # plain causal attention over x itself: the kernel needs no mask tensor
        if pad_keys is not None:
            mask = mask & pad_keys
        # --8<-- [start:sdpa]
        # One fused kernel for softmax(q k^T / sqrt(d) + mask) v; with enable_gqa each group of
        # n_heads / n_kv_heads query heads reads its key/value head in place, without copies.
        how = dict(attn_mask=mask, is_causal=mask is None and s > 1, enable_gqa=self.n_kv_heads != self.n_heads)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # Mixed precision on a CPU keeps attention in float32: there PyTorch's fused kernel
            # computes its backward pass much slower in bfloat16 than in float32 (`python
            # benchmarks/train.py attention`), and attention is a small share of a step's arithmetic.
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **how).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **how)
        # --8<-- [end:sdpa]
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))
# --8<-- [end:module]
