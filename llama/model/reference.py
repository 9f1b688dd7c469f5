r"""Reference versions: the math written out, for reading and for tests, **not called by the model**.

The running model computes attention with PyTorch's fused
:func:`torch.nn.functional.scaled_dot_product_attention` (one kernel that never stores the
``[s, s]`` score matrix, and that reads grouped key/value heads in place). The chapters first
write the same computation out, step by step; those versions live here, and the tests check
that each equals what the model runs:

* :func:`attention` — $\operatorname{softmax}(QK^\top/\sqrt{d} + M)\,V$, equal to SDPA
  (``tests/test_attention.py``);
* :func:`repeat_kv` — grouped-query attention by copying key/value heads, equal to SDPA's
  ``enable_gqa=True`` (``tests/test_attention.py``);
* :func:`apply_rope_half_split` — Hugging Face's RoPE layout, equal to the model's
  :func:`llama.model.rope.apply_rope` after the weight permutation of :mod:`llama.model.rope`
  (``tests/test_rope.py``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention", "repeat_kv", "apply_rope_half_split"]


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

    >>> from llama.model.attention import causal_mask
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


# --8<-- [start:half_split]
def apply_rope_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Hugging Face's layout: feature $j$ is paired with feature $j + d/2$ (``rotate_half``).

    Same arguments and shapes as :func:`llama.model.rope.apply_rope`. It equals
    :func:`~llama.model.rope.apply_rope` applied to the features reordered by
    :func:`~llama.model.rope.interleaved_to_half_split`.

    >>> from llama.model.rope import apply_rope, rope_cache
    >>> x = torch.randn(1, 3, 2, 8)
    >>> cos, sin = rope_cache(8, 3)
    >>> order = [0, 2, 4, 6, 1, 3, 5, 7]                 # pairs' first members, then second members
    >>> torch.allclose(apply_rope_half_split(x[..., order], cos, sin), apply_rope(x, cos, sin)[..., order])
    True
    """
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x32 = x.float()
    x0, x1 = x32.chunk(2, dim=-1)
    return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).type_as(x)
# --8<-- [end:half_split]
