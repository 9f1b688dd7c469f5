r"""Our int8 and int4 layers as GGUF's ``Q8_0`` and ``Q4_0`` blocks, and back, bit for bit.

ggml stores a quantized row as blocks of 32 weights, each block its own float16 scale ``d``:

===========  =====================  ==================================================================
type         bytes per 32 weights   block
===========  =====================  ==================================================================
``Q8_0``     34                     ``d`` (float16), then 32 int8 ``q``; weight = ``q * d``
``Q4_0``     18                     ``d`` (float16), then 16 bytes: byte ``j`` holds weight ``j`` in
                                    its low nibble and weight ``j + 16`` in its high one, each as
                                    ``q + 8``; weight = ``(nibble - 8) * d``
===========  =====================  ==================================================================

:mod:`llama.quantization.weights` with ``group_size=32`` stores the same numbers: integers and one float16
scale per 32 inputs of a row, in the same order: int8 is ``Q8_0`` with each row's scales moved
in front of their blocks, and int4 is ``Q4_0`` likewise (its nibbles pair columns ``j`` and
``j + 16`` of a group, as ours do). Other
group sizes, and per-channel int8 (one scale per row), have no ggml block type and are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from llama.quantization.weights import QUANTIZED_LAYERS

__all__ = ["BLOCK", "to_ggml_blocks", "from_ggml_blocks", "quantization_scheme"]

BLOCK = 32  # weights per ggml block, for Q8_0 and Q4_0 alike


# --8<-- [start:to_blocks]
def to_ggml_blocks(qweight: torch.Tensor, scales: torch.Tensor, name: str) -> tuple[np.ndarray, str]:
    """A :class:`~llama.quantization.weights.QuantizedLinear`'s buffers as ggml block bytes: ``(uint8 [out, bytes per row], type)``.

    Args:
        qweight: int8 ``[out, in]`` (int8) or uint8 ``[out, in // 2]`` (int4, nibbles j and j + 16 of each group).
        scales: float16 ``[out, in // 32]``.
        name: the tensor's name, for the error message.

    Returns:
        The bytes and ``"Q8_0"`` or ``"Q4_0"``.

    Raises:
        ValueError: the layer's groups are not 32 inputs wide (per-channel int8 included).
    """
    bits = 8 if qweight.dtype == torch.int8 else 4
    out, in_features = qweight.shape[0], qweight.shape[1] * (1 if bits == 8 else 2)
    if scales.dtype != torch.float16 or tuple(scales.shape) != (out, in_features // BLOCK):
        group = in_features // scales.shape[1] if scales.shape[1] else in_features
        what = "one scale per row (per channel)" if group == in_features else f"groups of {group} inputs"
        raise ValueError(f"{name}: int{bits} with {what} has no GGUF block type: Q8_0 and Q4_0 have one "
                         f"float16 scale per {BLOCK} inputs; quantize with group_size={BLOCK}")
    groups = in_features // BLOCK
    d = scales.contiguous().view(torch.uint8).reshape(out, groups, 2)  # each float16 as its 2 bytes
    if bits == 8:
        body = qweight.view(torch.uint8).reshape(out, groups, BLOCK)
        kind = "Q8_0"
    else:
        body = qweight.reshape(out, groups, BLOCK // 2)  # already Q4_0's nibbles: j and j + 16, each q + 8
        kind = "Q4_0"
    return torch.cat([d, body], dim=-1).reshape(out, -1).numpy(), kind
# --8<-- [end:to_blocks]


# --8<-- [start:from_blocks]
def from_ggml_blocks(data: np.ndarray, kind: str, out: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q8_0``/``Q4_0`` bytes of an ``[out, in]`` weight as our ``(qweight, scales)`` (the inverse of :func:`to_ggml_blocks`)."""
    groups = in_features // BLOCK
    blocks = torch.from_numpy(np.array(data, dtype=np.uint8)).reshape(out, groups, -1)
    scales = blocks[..., :2].contiguous().view(torch.float16).reshape(out, groups)
    if kind == "Q8_0":
        return blocks[..., 2:].contiguous().view(torch.int8).reshape(out, in_features), scales
    return blocks[..., 2:].reshape(out, in_features // 2), scales  # Q4_0's bytes are ours
# --8<-- [end:from_blocks]


# --8<-- [start:scheme]
def quantization_scheme(sd: dict[str, torch.Tensor]) -> dict | None:
    """The ``quantize(model, **scheme)`` arguments a state dict with ``.qweight``/``.scales`` pairs needs, or ``None``.

    Raises:
        ValueError: the quantized layers mix int8 and int4 or group sizes, or quantize only some
            of the projections (:func:`llama.quantization.weights.quantize` does all of them, the head optionally).
    """
    layers = {k.removesuffix(".qweight"): v for k, v in sd.items() if k.endswith(".qweight")}
    if not layers:
        return None
    bits = {8 if q.dtype == torch.int8 else 4 for q in layers.values()}
    groups = {q.shape[1] * (1 if q.dtype == torch.int8 else 2) // sd[f"{name}.scales"].shape[1]
              for name, q in layers.items()}
    if len(bits) > 1 or len(groups) > 1:
        raise ValueError(f"the quantized layers mix schemes (bits {sorted(bits)}, groups {sorted(groups)}): "
                         "this model quantizes every projection the same way")
    n_layers = 1 + max(int(name.split(".")[1]) for name in sd if name.startswith("layers."))
    part = {p: "attention" if p in ("wq", "wk", "wv", "wo") else "feed_forward" for p in QUANTIZED_LAYERS}
    expected = {f"layers.{i}.{part[p]}.{p}" for i in range(n_layers) for p in QUANTIZED_LAYERS}
    if missing := sorted(expected - set(layers)):
        raise ValueError(f"only some projections are quantized ({missing[:3]} are not): this model quantizes "
                         "all of wq wk wv wo w1 w2 w3 or none")
    return {"bits": bits.pop(), "group_size": groups.pop(), "head": "output" in layers}
# --8<-- [end:scheme]
