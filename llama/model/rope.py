r"""Rotary position embeddings (RoPE).

Each pair of features $(x_{2j}, x_{2j+1})$ of a query or key at position $m$ is rotated by
the angle $m\,\theta_j$ with $\theta_j = \text{base}^{-2j/d}$. Because rotations compose,
the dot product of a rotated query at $m$ and a rotated key at $n$ depends only on $m - n$.

This module keeps the rotation as real ``cos``/``sin`` tables (no complex tensors, so it
compiles and exports) and uses Meta's *interleaved* pair layout, the layout of Meta's and
llama2.c's weights, in the model. Hugging Face's checkpoints use a *half-split* layout; the
permutation of ``wq``/``wk`` rows at the end of this module converts them once, when they are
loaded (:mod:`llama.formats.convert`), so the model never reorders activations. The half-split rotation
itself is in :mod:`llama.model.reference`.
"""

from __future__ import annotations

import math

import torch

from llama.model.config import RopeScaling

__all__ = [
    "rope_frequencies",
    "scale_frequencies",
    "rope_cache",
    "apply_rope",
    "interleaved_to_half_split",
    "half_split_to_interleaved",
]


# --8<-- [start:frequencies]
def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: RopeScaling | None = None) -> torch.Tensor:
    r"""Rotation speed of each feature pair, $\theta_j = \text{theta}^{-2j/d}$ for $j < d/2$.

    Args:
        head_dim: width $d$ of one attention head (even).
        theta: the base; 10,000 in Llama 2, 500,000 in Llama 3.
        scaling: Llama 3.1 frequency scaling, applied by :func:`scale_frequencies`.

    Returns:
        ``[head_dim // 2]`` float32 angular frequencies in radians per position.

    >>> rope_frequencies(8)
    tensor([1.0000, 0.1000, 0.0100, 0.0010])
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE (pairs of features are rotated), got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    freqs = 1.0 / (theta**exponents)
    if scaling is not None:
        freqs = scale_frequencies(freqs, scaling)
    return freqs
# --8<-- [end:frequencies]


# --8<-- [start:scaling]
def scale_frequencies(freqs: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    r"""Llama 3.1's context extension: slow down only the low frequencies.

    With wavelength $\lambda_j = 2\pi/\theta_j$ and original context $L$:

    * $\lambda_j < L/\mathrm{high\_freq\_factor}$ (fast rotations, local detail): kept;
    * $\lambda_j > L/\mathrm{low\_freq\_factor}$ (slow rotations, long range): $\theta_j/\text{factor}$;
    * in between: a linear blend of the two, in the variable $L/\lambda_j$.

    Args:
        freqs: ``[n]`` frequencies from :func:`rope_frequencies` without scaling.
        scaling: the four numbers of a ``rope_type: llama3`` config.

    Returns:
        ``[n]`` scaled frequencies.

    >>> f = rope_frequencies(64, 500000.0)
    >>> s = scale_frequencies(f, RopeScaling(factor=8.0))
    >>> bool(s[0] == f[0]), round(float(f[-1] / s[-1]), 3)   # fastest kept, slowest divided by 8
    (True, 8.0)
    """
    L = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / freqs
    # 0 for wavelengths longer than L/low (fully scaled), 1 for shorter than L/high (kept).
    smooth = (L / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smooth = smooth.clamp(0.0, 1.0)
    return (1 - smooth) * freqs / scaling.factor + smooth * freqs
# --8<-- [end:scaling]


# --8<-- [start:cache]
def rope_cache(
    head_dim: int, seq_len: int, theta: float = 10000.0, scaling: RopeScaling | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Tables of $\cos(m\theta_j)$ and $\sin(m\theta_j)$ for positions $m < \mathrm{seq\_len}$.

    Returns:
        ``(cos, sin)``, each ``[seq_len, head_dim // 2]`` float32.

    >>> cos, sin = rope_cache(head_dim=8, seq_len=16)
    >>> cos.shape, bool(torch.allclose(cos**2 + sin**2, torch.ones(16, 4)))
    (torch.Size([16, 4]), True)
    """
    freqs = rope_frequencies(head_dim, theta, scaling)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()
# --8<-- [end:cache]


# --8<-- [start:apply]
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Rotate feature pairs $(x_{2j}, x_{2j+1})$ (Meta's interleaved layout) by $m\theta_j$.

    $$\begin{pmatrix} x'_{2j} \\ x'_{2j+1} \end{pmatrix} =
      \begin{pmatrix} \cos m\theta_j & -\sin m\theta_j \\ \sin m\theta_j & \cos m\theta_j \end{pmatrix}
      \begin{pmatrix} x_{2j} \\ x_{2j+1} \end{pmatrix}$$

    computed for all pairs at once as $x' = x \odot c + \operatorname{swap}(x) \odot s$, where
    $\operatorname{swap}$ exchanges the two members of every pair, $c$ holds
    $\cos m\theta_j$ for both members and $s$ holds $-\sin m\theta_j$ for the first member
    and $+\sin m\theta_j$ for the second.

    Args:
        x: queries or keys, ``[b, s, n_h, h_d]``.
        cos: ``[s, h_d // 2]`` (same positions for every sequence) or ``[b, s, h_d // 2]``
            (a position per sequence, e.g. with left padding).
        sin: same shape as ``cos``.

    Returns:
        The rotated tensor, same shape and dtype as ``x``. The arithmetic is done in float32.

    >>> x = torch.randn(1, 3, 2, 8)
    >>> cos, sin = rope_cache(8, 3)
    >>> y = apply_rope(x, cos, sin)
    >>> bool(torch.allclose(y.norm(dim=-1), x.norm(dim=-1)))   # rotations keep lengths
    True
    """
    # [.., s, h_d/2] -> [.., s, 1, h_d]: one value per feature, broadcast over the heads.
    c = cos.repeat_interleave(2, dim=-1).unsqueeze(-2)
    s = torch.stack((-sin, sin), dim=-1).flatten(-2).unsqueeze(-2)
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
    # Two contiguous multiply-adds: several times faster than indexing every other feature.
    return (x32 * c + swapped * s).type_as(x)
# --8<-- [end:apply]


# --8<-- [start:permute]
def interleaved_to_half_split(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the output rows of a ``wq`` or ``wk`` weight from Meta's layout to Hugging Face's.

    Within each head, Meta's rows come as pairs ``(0, 1), (2, 3), ...``; Hugging Face wants
    all first members then all second members: ``0, 2, 4, ..., 1, 3, 5, ...``. With the rows
    reordered, half-split RoPE computes exactly what interleaved RoPE computed.

    Args:
        w: ``[n_heads * head_dim, in_features]``.
        n_heads: heads in this projection (``n_kv_heads`` for ``wk``).

    >>> w = torch.arange(8.0).unsqueeze(1)          # one head of width 8
    >>> interleaved_to_half_split(w, 1).flatten().tolist()
    [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
    """
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_split_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`interleaved_to_half_split`.

    >>> w = torch.randn(16, 3)
    >>> torch.equal(half_split_to_interleaved(interleaved_to_half_split(w, 2), 2), w)
    True
    """
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)
# --8<-- [end:permute]
