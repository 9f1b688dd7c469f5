"""The linear layer of every projection: ``nn.Linear``, plus a faster one-row product when compiled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear"]


# --8<-- [start:linear]
class Linear(nn.Linear):
    """``nn.Linear`` (same weights, same state-dict keys), whose one-row product compiles well.

    Decoding one token multiplies a single row ``x`` by every weight matrix, so the time goes
    into reading the weights. Under ``torch.compile``, a one-row input is computed as the sum
    of products ``(W * x).sum(-1)``: Inductor turns that into one vectorised, multithreaded
    loop that streams each weight row once (and fuses it with the norms and activations around
    it), which on a CPU reads weights faster than the BLAS matrix-vector call behind
    ``F.linear``. Eagerly the same expression would build a temporary as large as ``W``, so
    eager calls, and every call with more than one row, use ``F.linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.numel() == x.size(-1):  # one row: shapes are static here
            out = (self.weight * x.reshape(1, -1)).sum(-1)
            if self.bias is not None:
                out = out + self.bias
            return out.view(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)
# --8<-- [end:linear]
