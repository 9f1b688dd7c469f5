"""RMSNorm: normalise by the root mean square, with a learned per-feature gain."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm"]


# --8<-- [start:rmsnorm]
class RMSNorm(nn.Module):
    r"""Root-mean-square layer normalisation.

    $$\operatorname{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}} \odot g$$

    Unlike LayerNorm there is no mean subtraction and no bias. The statistics are computed
    in float32 even when ``x`` is half precision (squares of bf16 values lose too many bits),
    and the result is cast back before the gain is applied.

    Args:
        dim: size of the last dimension of the input.
        eps: added under the square root so an all-zero vector does not divide by zero.

    Shape:
        ``x``: ``[..., dim]`` → same shape. The dtype follows PyTorch's promotion of ``x``
        and ``weight``: a model cast as a whole (``model.bfloat16()``) keeps bf16 throughout.

    >>> norm = RMSNorm(4)
    >>> x = torch.tensor([[3.0, -3.0, 3.0, -3.0]])
    >>> norm(x)
    tensor([[ 1.0000, -1.0000,  1.0000, -1.0000]], grad_fn=<MulBackward0>)
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight
# --8<-- [end:rmsnorm]
