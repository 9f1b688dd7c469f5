"""The SwiGLU feed-forward layer of each transformer block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llama.model.linear import Linear

__all__ = ["FeedForward"]


# --8<-- [start:feed_forward]
class FeedForward(nn.Module):
    r"""SwiGLU: $\;W_2\,\big(\operatorname{SiLU}(W_1 x) \odot W_3 x\big)$.

    ``w1`` is the gate, ``w3`` the value it gates, ``w2`` projects back to the model width.
    (Hugging Face calls them ``gate_proj``, ``up_proj`` and ``down_proj``.)

    Args:
        dim: model width.
        hidden_dim: inner width; Llama picks it with :func:`llama.model.config.llama_hidden_dim`.

    Shape:
        ``x``: ``[..., dim]`` → ``[..., dim]``.

    >>> ff = FeedForward(dim=8, hidden_dim=32)
    >>> ff(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = Linear(dim, hidden_dim, bias=False)
        self.w2 = Linear(hidden_dim, dim, bias=False)
        self.w3 = Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
# --8<-- [end:feed_forward]
