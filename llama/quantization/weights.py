r"""Weight-only quantization: int8 and int4 weights with float16 scales, and the layer that computes with them.

Decoding one token reads every weight once, so its speed is the memory bandwidth divided by the
bytes of the weights. Storing each weight as an 8-bit or 4-bit integer times a shared float
scale cuts those bytes by 4 or nearly 8 against float32; activations, norms and the embedding
stay in float.

The scheme (symmetric absmax, one scale per row and group of ``group_size`` inputs):

* ``scale = float16(max|w_group| / qmax)`` with ``qmax = 127`` (int8) or ``7`` (int4); the scale
  is rounded to float16 *first* and the weights are divided by that rounded value, so the
  stored pair (integers, float16 scales) is exactly what is used, with nothing kept on the side;
* ``q = round(w / scale)``, in ``[-qmax, qmax]``; ``w ≈ q * scale``, off by at most ``scale / 2``.

Layouts (``[out, in]`` weight of a :class:`~llama.model.linear.Linear`):

* ``bits=8``: ``qweight`` int8 ``[out, in]``;
* ``bits=4``: ``qweight`` uint8 ``[out, in // 2]``, two weights per byte stored as ``q + 8``
  (0..15). Within each group of ``group_size`` columns, byte ``j`` holds column ``j`` in its low
  nibble and column ``j + group_size / 2`` in its high nibble (GGUF's ``Q4_0`` pairs the columns
  of its 32-wide blocks the same way), so each half of a group multiplies a contiguous half of ``x``;
* ``scales`` float16 ``[out, in // group_size]``; ``group_size == in`` is one scale per output
  row (per channel). With ``bits=8, group_size=32`` a row is a run of 32-wide blocks of int8
  with one float16 scale each, the layout of GGUF's ``Q8_0``.

>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> w = torch.randn(4, 64)
>>> q, s = quantize_tensor(w, bits=8, group_size=32)
>>> q.dtype, tuple(q.shape), s.dtype, tuple(s.shape)
(torch.int8, (4, 64), torch.float16, (4, 2))
>>> bool(((dequantize_tensor(q, s, 8, 32) - w).abs() <= s.float().repeat_interleave(32, 1) / 2).all())
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llama._files import atomic_write, atomic_write_text, open_for_reading
from llama.model.config import ModelConfig
from llama.model.linear import Linear
from llama.quantization.kernel import kernel_loaded, kernel_ready, one_row_product, quantized_matmul, round_activations

__all__ = ["QuantizedLinear", "set_int8_activations", "quantize_tensor", "dequantize_tensor", "rounded_product", "quantize",
           "QUANTIZED_LAYERS", "KERNEL_ROWS", "save_quantized", "read_quantized", "is_quantized_checkpoint", "SCHEME_FILE"]

#: The JSON file of a quantized checkpoint folder (beside ``model.safetensors``).
SCHEME_FILE = "quantized.json"

#: The projections :func:`quantize` replaces (the output head is ``output``, chosen separately).
QUANTIZED_LAYERS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
_QMAX = {8: 127, 4: 7}
#: Up to this many rows (a decode step, a short prompt) the kernel beats dequantizing the whole
#: weight for ``F.linear``: it converts the integers again for each row, but never writes a float copy.
KERNEL_ROWS = 32


def _check_scheme(bits: int, group_size: int, in_features: int) -> None:
    if bits not in _QMAX:
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2 or in_features % group_size:
        raise ValueError(f"group_size={group_size!r} must be an even number that divides the {in_features} inputs "
                         f"of every layer; use one of 32, 64, 128 that does, or {in_features} (one scale per row)")


# --8<-- [start:quantize_tensor]
@torch.no_grad()
def quantize_tensor(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a ``[out, in]`` float weight to integers and float16 scales (symmetric absmax).

    Args:
        w: ``[out, in]`` floating-point weight, finite.
        bits: 8 (int8 ``[out, in]``) or 4 (uint8 ``[out, in // 2]``, two per byte).
        group_size: inputs sharing one scale; must divide ``in`` (``in``: one scale per row).

    Returns:
        ``(qweight, scales)``; ``scales`` is float16 ``[out, in // group_size]``.

    Raises:
        ValueError: ``w`` is not a finite 2-D float tensor, an unknown ``bits``, a ``group_size``
            that does not divide ``in``, or a weight too large for a float16 scale.
    """
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"expected a 2-D float weight [out, in], got {tuple(w.shape)} {w.dtype}")
    out_features, in_features = w.shape
    _check_scheme(bits, group_size, in_features)
    qmax = _QMAX[bits]
    groups = w.float().reshape(out_features, in_features // group_size, group_size)
    absmax = groups.abs().amax(-1)
    if not torch.isfinite(absmax).all():
        raise ValueError("the weight holds NaN or infinity: quantize a trained, finite model")
    scales = (absmax / qmax).half()  # rounded to float16 first: the stored scale is the one used
    if torch.isinf(scales).any():
        raise ValueError(f"a weight group's largest value {float(absmax.max()):.4g} is too large for a float16 "
                         "scale (max 65504 * qmax): such weights are not a trained model's")
    # An all-zero group (or one whose scale underflows float16) gets integers 0: divide by 1.
    safe = torch.where(scales == 0, torch.ones_like(scales), scales).float()
    # Rounding the scale to float16 can make |w / scale| exceed qmax by a hair (< 0.5 / qmax):
    # rounding to the nearest integer brings it back to qmax; clamping only guards that.
    q = torch.round(groups / safe[..., None]).clamp_(-qmax, qmax).reshape(out_features, in_features)
    if bits == 8:
        return q.to(torch.int8), scales
    nibbles = (q + 8).to(torch.uint8).view(out_features, -1, 2, group_size // 2)  # 1..15: no sign bits
    return (nibbles[:, :, 0] | (nibbles[:, :, 1] << 4)).reshape(out_features, in_features // 2), scales
# --8<-- [end:quantize_tensor]


# --8<-- [start:dequantize_tensor]
def unpack_int4(qweight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[out, in // 2]`` uint8 (two nibbles, ``q + 8``) → ``[out, in]`` signed values ``q`` as int8."""
    out_features = qweight.size(0)
    packed = qweight.view(out_features, -1, group_size // 2)
    low = (packed & 15).to(torch.int8) - 8  # the first half of each group
    high = (packed >> 4).to(torch.int8) - 8  # the second half
    return torch.cat([low, high], dim=-1).view(out_features, -1)


def dequantize_tensor(qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight ``q * scale`` (``[out, in]``) that a quantized pair stands for.

    Args:
        qweight: int8 ``[out, in]`` (``bits=8``) or uint8 ``[out, in // 2]`` (``bits=4``).
        scales: float16 ``[out, in // group_size]``.
        bits: 8 or 4.
        group_size: inputs per scale.
        dtype: the result's dtype.

    Returns:
        ``[out, in]`` tensor of ``dtype``.
    """
    q = unpack_int4(qweight, group_size) if bits == 4 else qweight
    out_features, in_features = q.shape
    w = q.to(dtype).view(out_features, in_features // group_size, group_size) * scales.to(dtype)[..., None]
    return w.view(out_features, in_features)
# --8<-- [end:dequantize_tensor]


# --8<-- [start:rounded_product]
def rounded_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                    group_size: int) -> torch.Tensor:
    """The kernel's ``int8_activations`` math written out: integer sums per group, scaled in float.

    ``y[m, o] = sum_g (scale[o, g] * d[m, g]) * sum_i q[o, g, i] * qx[m, g, i]``, the inner sums
    exact in int32; the kernel adds the same terms in another order.

    Args:
        x: float32 ``[rows, in]``.
        qweight: the layer's integers, int8 ``[out, in]`` or two int4 a byte ``[out, in // 2]``.
        scales: float16 ``[out, in // group_size]``.
        bits: 8 or 4.
        group_size: inputs per scale.

    Returns:
        float32 ``[rows, out]``.
    """
    qx, d = round_activations(x, group_size)
    q = unpack_int4(qweight, group_size) if bits == 4 else qweight
    out, n = q.shape
    sums = torch.einsum("ogi,mgi->mog", q.view(out, -1, group_size).int(), qx.view(len(x), -1, group_size).int())
    return (sums.float() * (scales.float()[None] * d[:, None, :])).sum(-1)
# --8<-- [end:rounded_product]


# --8<-- [start:layer]
class QuantizedLinear(nn.Module):
    """A bias-free linear layer whose weight is held as integers and float16 scales.

    For up to :data:`KERNEL_ROWS` float32 rows on the CPU (a decode step, a short prompt) it
    calls the C++ kernel of :mod:`llama.quantization.kernel`, which computes, per output ``o`` and
    group ``g``, ``sum_i q[o, g, i] * x[g, i]`` straight from ``qweight`` with vector
    instructions, then scales and sums the groups: each weight is read as 1 byte (int8) or half
    a byte (int4) and no float copy is ever made. ``torch.compile`` builds the kernel when it
    first traces such a layer (:class:`~llama.inference.compiled.CompiledDecoder` builds it before its
    first prompt); eager calls use it once it is built. Otherwise, and for more rows, the layer
    dequantizes the weight and calls ``F.linear``: the written-out reference; except for one row
    under ``torch.compile`` where the kernel cannot be built (no C++ compiler): there the same
    sums written in PyTorch (:func:`~llama.quantization.kernel.one_row_product`) are compiled by Inductor.

    ``int8_activations`` (default ``False``) switches every path to the math of GGUF's ``Q8_0``
    product: ``x`` rounded to int8 per group first (:func:`~llama.quantization.kernel.round_activations`),
    then integer products, which the kernel computes faster; the layer is then no longer exactly the
    dequantized float model. Set it on a model's layers with :func:`set_int8_activations`.

    Args:
        in_features: inputs of the layer (the weight is ``[out_features, in_features]``).
        out_features: outputs of the layer.
        bits: 8 or 4.
        group_size: inputs per scale; divides ``in_features``.

    Shape:
        ``x``: ``[..., in_features]`` → ``[..., out_features]``.
    """

    int8_activations = False

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int) -> None:
        super().__init__()
        _check_scheme(bits, group_size, in_features)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        packed = in_features if bits == 8 else in_features // 2
        self.register_buffer("qweight", torch.zeros(out_features, packed, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // group_size, dtype=torch.float16))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> "QuantizedLinear":
        """The quantized version of ``linear`` (which must have no bias)."""
        if linear.bias is not None:
            raise ValueError("QuantizedLinear has no bias; the model's projections have none")
        layer = cls(linear.in_features, linear.out_features, bits, group_size)
        layer.qweight, layer.scales = quantize_tensor(linear.weight, bits, group_size)
        return layer.to(linear.weight.device)

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) casts every float buffer: the float16 scales would be rounded
        # again. They follow the device only; their values stay exactly as stored.
        scales = self.scales
        super()._apply(fn, recurse)
        self.scales = scales.to(self.scales.device)
        return self

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float ``[out, in]`` weight this layer computes with."""
        return dequantize_tensor(self.qweight, self.scales, self.bits, self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.size(-1)
        compiling = torch.compiler.is_compiling()
        if (rows <= KERNEL_ROWS and x.dtype == torch.float32 and x.device.type == "cpu"
                and not (x.requires_grad and torch.is_grad_enabled())  # the kernel has no backward
                and (kernel_ready() if compiling else kernel_loaded())):  # built when torch.compile first traces
            out = quantized_matmul(x.reshape(rows, -1), self.qweight, self.scales, self.bits, self.group_size,
                                   self.int8_activations)
            return out.view(*x.shape[:-1], -1)
        if self.int8_activations:  # every other path rounds x the same way (no gradient through the rounding)
            q, d = round_activations(x.reshape(rows, -1), self.group_size)
            x = (q.view(rows, -1, self.group_size) * d[..., None]).to(x.dtype).view(x.shape)
        if compiling and rows == 1:  # no kernel here: the same sums in PyTorch, compiled by Inductor
            return one_row_product(x, self.qweight, self.scales, self.bits, self.group_size).view(*x.shape[:-1], -1)
        return F.linear(x, self.dequantized(x.dtype))  # the reference: dequantize, then multiply

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, " \
               f"group_size={self.group_size}"


def set_int8_activations(model: nn.Module, on: bool = True) -> nn.Module:
    """Round activations to int8 in every :class:`QuantizedLinear` of ``model`` (``on=False``: not); returns ``model``.

    Set it before a :class:`~llama.inference.compiled.CompiledDecoder` is made: a compiled step keeps the
    choice it was traced with.
    """
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            module.int8_activations = on
    return model
# --8<-- [end:layer]


# --8<-- [start:quantize]
@torch.no_grad()
def quantize(model: nn.Module, bits: int = 8, group_size: int | None = None, head: bool = True) -> nn.Module:
    """Replace the model's projections by :class:`QuantizedLinear` layers, **in place**; returns ``model``.

    Args:
        model: a :class:`~llama.model.transformer.Transformer` (any module whose projections are
            :class:`~llama.model.linear.Linear` layers named as in :data:`QUANTIZED_LAYERS`).
        bits: 8 or 4.
        group_size: inputs per scale, the same for every layer; ``None`` (default): one scale
            per output row (per channel). int4 needs groups (32) to keep its error small.
        head: quantize the output head too (``output``); the embedding always stays float.

    Returns:
        ``model``, whose ``quantization`` attribute records the scheme
        (``{"bits", "group_size", "head"}``; ``group_size`` ``None`` means per channel).

    Raises:
        ValueError: ``model`` is already quantized, a bad ``bits``, or a ``group_size`` that does
            not divide the inputs of every layer (the message names group sizes that do).
    """
    if getattr(model, "quantization", None):
        raise ValueError("the model is already quantized; quantize the float model (load it again)")
    names = QUANTIZED_LAYERS + (("output",) if head else ())
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if name in names and isinstance(child, Linear)]
    widths = sorted({child.in_features for _, _, child in targets})
    if group_size is not None and not (isinstance(group_size, int) and group_size >= 2 and group_size % 2 == 0
                                       and all(w % group_size == 0 for w in widths)):
        raise ValueError(_no_common_group(group_size, widths))
    for _, _, child in targets:  # check every layer before changing any
        _check_scheme(bits, group_size or child.in_features, child.in_features)
    for parent, name, child in targets:
        size = group_size or child.in_features
        setattr(parent, name, QuantizedLinear.from_linear(child, bits, size))
    model.quantization = {"bits": bits, "group_size": group_size, "head": head}
    return model
# --8<-- [end:quantize]


def _no_common_group(group_size: object, widths: list[int]) -> str:
    """Why ``group_size`` does not fit every layer of a model whose input widths are ``widths``, with
    the group sizes (up to 128) that do: a suggestion that works for one layer may fail on another."""
    fits = [g for g in range(min(128, widths[0]), 1, -1) if g % 2 == 0 and all(w % g == 0 for w in widths)]
    inputs = (f"the {widths[0]} inputs of every layer" if len(widths) == 1 else
              f"the inputs of every layer ({', '.join(map(str, widths[:-1]))} and {widths[-1]} here)")
    sizes = " or ".join(", ".join(map(str, fits[:3])).rsplit(", ", 1))
    use = (f"use {sizes}, which {'divides' if len(fits) == 1 else 'divide'} them all, or" if fits
           else "no even group size divides them all:")
    return (f"group_size={group_size!r} (--group-size) must be an even number that divides {inputs}: {use} "
            "leave --group-size out for one scale per row")


# --8<-- [start:save]
def save_quantized(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write a quantized model as ``quantized.json`` (config and scheme) + ``model.safetensors``.

    The tensors keep the model's own names: ``layers.0.attention.wq.qweight`` (int8 or packed
    uint8), ``...wq.scales`` (float16), and float tensors for the embedding and the norms.
    :func:`llama.formats.load.load_model` reads the folder back.

    Raises:
        ValueError: ``model`` is not quantized (use :func:`llama.formats.load.save_model`), or ``directory`` is a file.
        FileExistsError: the folder already holds a checkpoint (nothing is overwritten).
    """
    from safetensors.torch import save_file

    scheme = getattr(model, "quantization", None)
    if not scheme:
        raise ValueError("the model is not quantized: call llama.quantization.weights.quantize(model, bits) first, "
                         "or save a float model with save_model")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a folder; choose a folder to write the checkpoint into")
    for name in (SCHEME_FILE, "model.safetensors", "config.json"):
        if (directory / name).exists():
            raise FileExistsError(f"{directory / name} exists: it was left as it is; choose an empty or new folder")
    sd = model.state_dict()
    if model.config.tie_embeddings and "output.weight" in sd:  # a float head tied to the embedding: once
        del sd["output.weight"]
    sd = {name: t.detach().contiguous().clone() for name, t in sd.items()}
    meta = {"format": "llama-from-scratch quantized", "version": 1, "config": model.config.to_dict(),
            "quantization": scheme}
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"  # NaN and Infinity are not JSON
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / SCHEME_FILE, text)


def is_quantized_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_quantized`."""
    try:
        return Path(path).is_dir() and (Path(path) / SCHEME_FILE).is_file()
    except PermissionError:  # a folder the user may not read: the checkpoint reader names it as such
        return False


def read_quantized(directory: str | os.PathLike, max_seq_len: int | None = None
                   ) -> tuple[ModelConfig, dict, dict[str, torch.Tensor]]:
    """Read a folder written by :func:`save_quantized`: ``(config, scheme, state_dict)``.

    ``max_seq_len`` replaces the context length stored in ``quantized.json``. The tensors are
    not compared with the config here: :func:`llama.formats.load.load_model` does
    that, before it builds the model.

    Raises:
        FileNotFoundError: a file of the folder is missing.
        ValueError: unreadable JSON or safetensors, or a scheme this version does not know.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / SCHEME_FILE
    with open_for_reading(path) as f:
        try:
            meta = json.loads(f.read().decode("utf-8"))
            fields = dict(meta["config"], **({"max_seq_len": max_seq_len} if max_seq_len is not None else {}))
            scheme = meta["quantization"]
            bits, group_size, head = scheme["bits"], scheme["group_size"], scheme["head"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a quantized checkpoint's description (truncated?): {err!r}") from None
    try:
        config = ModelConfig.from_dict(fields)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    if bits not in _QMAX or not (group_size is None or isinstance(group_size, int)) or not isinstance(head, bool):
        raise ValueError(f"{path}: unknown quantization scheme {scheme}; expected bits 8 or 4, an integer "
                         "group_size or null, and a true/false head")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"missing model.safetensors in {directory}")
    try:
        sd = load_file(weights, device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"could not read {weights}: it is truncated or not a safetensors file ({err})") from None
    wanted = {"qweight": torch.int8 if bits == 8 else torch.uint8, "scales": torch.float16}
    for name, t in sd.items():
        dtype = wanted.get(name.rsplit(".", 1)[-1])
        if (dtype is not None and t.dtype != dtype) or (dtype is None and not t.is_floating_point()):
            raise ValueError(f"{weights}: tensor {name} is {t.dtype}, which the scheme {scheme} does not store there")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{weights}: tensor {name} holds NaN or infinity: the checkpoint is damaged")
    return config, scheme, sd


def quantized_layout(model: nn.Module, scheme: dict) -> nn.Module:
    """Give a float model empty :class:`QuantizedLinear` layers of ``scheme``, ready for ``load_state_dict``."""
    bits, group_size = scheme["bits"], scheme["group_size"]
    names = QUANTIZED_LAYERS + (("output",) if scheme["head"] else ())
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in names and isinstance(child, Linear):
                size = group_size or child.in_features
                setattr(parent, name, QuantizedLinear(child.in_features, child.out_features, bits, size))
    model.quantization = dict(scheme)
    return model
# --8<-- [end:save]
