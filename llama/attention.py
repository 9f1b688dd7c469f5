"""Causal self-attention: the math written out, multi-/grouped-query heads, and a KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llama.config import ModelConfig
from llama.rope import apply_rope_half_split, pairs_first

__all__ = ["attention", "causal_mask", "repeat_kv", "kv_cache_bytes", "KVCache", "Attention"]


# --8<-- [start:attention]
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Scaled dot-product attention, written out: $\operatorname{softmax}(QK^\top/\sqrt{d} + M)\,V$.

    Args:
        q: queries ``[b, n_h, s_q, h_d]``.
        k: keys ``[b, n_h, s_k, h_d]``.
        v: values ``[b, n_h, s_k, h_d]``.
        mask: boolean ``[s_q, s_k]`` (or broadcastable to ``[b, n_h, s_q, s_k]``); ``True`` means
            "may attend". ``None`` attends everywhere.

    Returns:
        ``[b, n_h, s_q, h_d]``, each query's weighted average of the values.

    >>> q = k = v = torch.randn(1, 1, 3, 4)
    >>> out = attention(q, k, v, causal_mask(3))
    >>> torch.allclose(out[0, 0, 0], v[0, 0, 0])   # the first token can only see itself
    True
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).type_as(q)
    return weights @ v
# --8<-- [end:attention]


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


# --8<-- [start:repeat_kv]
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Share each key/value head with ``n_rep`` query heads by repeating it.

    It works on the ``[b, s, heads, h_d]`` layout that the projections produce, before
    heads are moved in front of the sequence for the matmuls.

    Args:
        x: ``[b, s, n_kv, h_d]``.
        n_rep: ``n_heads // n_kv_heads``.

    Returns:
        ``[b, s, n_kv * n_rep, h_d]`` where heads ``g * n_rep ... (g + 1) * n_rep - 1`` are copies
        of key/value head ``g``.

    >>> x = torch.arange(2.0).reshape(1, 1, 2, 1)     # two kv heads holding 0 and 1
    >>> repeat_kv(x, 3).flatten().tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    if n_rep == 1:
        return x
    b, s, n_kv, h_d = x.shape
    return x[:, :, :, None, :].expand(b, s, n_kv, n_rep, h_d).reshape(b, s, n_kv * n_rep, h_d)
# --8<-- [end:repeat_kv]


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

    The buffers are allocated once for the longest sequence and written in place; a step
    at ``start_pos`` with ``s`` new tokens writes positions ``start_pos .. start_pos + s - 1``
    and returns all positions up to the last one written.

    Args:
        batch_size: sequences decoded together.
        max_seq_len: positions to keep.
        n_kv_heads: key/value heads (GQA keeps fewer than query heads: that is the saving).
        head_dim: width of a head.
        dtype: storage type of the cache.

    Shape:
        buffers ``k``, ``v``: ``[b, n_kv, max_seq_len, h_d]``.
    """

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (``[b, n_kv, s, h_d]``) at ``start_pos`` and return the filled prefix.

        Returns:
            ``(keys, values)``, each ``[b, n_kv, start_pos + s, h_d]`` (views, no copy).
        """
        b, _, s, _ = k.shape
        end = start_pos + s
        if end > self.k.size(2):
            raise ValueError(
                f"the KV cache holds {self.k.size(2)} positions but positions up to {end} were asked for; "
                "create the cache with a larger max_seq_len"
            )
        if b > self.k.size(0):
            raise ValueError(f"batch of {b} does not fit a KV cache made for {self.k.size(0)} sequences")
        self.k[:b, :, start_pos:end] = k
        self.v[:b, :, start_pos:end] = v
        return self.k[:b, :, :end], self.v[:b, :, :end]
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
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """Attend from each position of ``x`` to itself and earlier positions.

        Args:
            x: ``[b, s, dim]``.
            cos: RoPE table rows for these positions, ``[s, h_d/2]`` or ``[b, s, h_d/2]``.
            sin: same shape as ``cos``.
            mask: boolean, broadcastable to ``[b, n_h, s, s_k]``, ``True`` = may attend; ``None``
                means plain causal attention over the keys (see :class:`~llama.model.Transformer`).
            start_pos: position of ``x[:, 0]``; with a cache, where to write the new keys.

        Returns:
            ``[b, s, dim]``.
        """
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        # Meta's weights put the two members of each rotated pair side by side. Reordering the
        # features of q and k alike changes no score q.k, so list every pair's first member, then
        # every second member, and rotate the two contiguous halves: the same numbers as
        # apply_rope followed by the reordering (the RoPE chapter checks it), several times faster
        # than rotating stride-2 pairs, and float32 then adds in transformers' order, bit for bit.
        q = apply_rope_half_split(pairs_first(q), cos, sin)
        k = apply_rope_half_split(pairs_first(k), cos, sin)
        # [b, s, n, h_d] -> [b, n, s, h_d]: heads become a batch dimension for the matmuls.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.cache is not None:
            k, v = self.cache.update(start_pos, k, v)
        # A single new query may see every cached key, so it needs no mask at all; several
        # queries with no explicit mask are causal over the last s keys.
        is_causal = mask is None and s > 1
        if is_causal and k.size(2) != s:
            mask = causal_mask(s, k.size(2), k.size(2) - s, device=x.device)
            is_causal = False
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))
# --8<-- [end:module]
