"""A model from a file and back: :func:`load_model` reads a checkpoint in any format this package
knows into a :class:`~llama.model.transformer.Transformer`, :func:`save_model` writes one as a
Hugging Face folder.

The model itself (the ``llama.model`` package) knows nothing of files: the formats depend on the model,
never the other way round.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from llama.formats.checkpoint import read_checkpoint, save_hf
from llama.formats.convert import check_layer_count
from llama.formats.gguf_quant import quantization_scheme
from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.quantization.weights import is_quantized_checkpoint, quantized_layout, read_quantized

__all__ = ["load_model", "save_model", "check_before_building"]


# --8<-- [start:pretrained]
def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
               max_seq_len: int | None = None) -> Transformer:
    """Load a checkpoint in any of the formats :mod:`llama.formats.checkpoint` reads, ready for ``eval``.

    Args:
        path: a Hugging Face folder (``config.json`` + safetensors), a Meta folder
            (``params.json`` + ``consolidated.NN.pth``), a llama2.c ``.bin`` file, a GGUF file or a
            quantized folder (:func:`llama.quantization.weights.save_quantized`); the format is detected.
        dtype: the dtype of the returned model's weights.
        max_seq_len: override the context length (Meta checkpoints do not store one).

    Returns:
        The model, in ``eval`` mode.

    Raises:
        FileNotFoundError: the path or a file it needs is missing.
        ValueError: an unknown format, a truncated or unreadable file, a pickle that is not
            plain weights, or tensors whose shapes contradict the config.
    """
    if is_quantized_checkpoint(path):  # written by llama.quantization.weights.save_quantized
        config, scheme, sd = read_quantized(path, max_seq_len)
    else:
        config, sd = read_checkpoint(path, max_seq_len)
        scheme = quantization_scheme(sd)  # a GGUF file's Q8_0/Q4_0 layers, or None
    if max_seq_len is not None:
        config = dataclasses.replace(config, max_seq_len=max_seq_len)
    # The config came from a file: its sizes are compared with the tensors before they size anything.
    check_before_building(config, {k: tuple(v.shape) for k, v in sd.items()}, path, scheme, dtype)
    model = Transformer(config).to(dtype)
    if scheme is not None:
        quantized_layout(model, scheme)  # empty integer layers, filled from sd just below
    # strict=False only because a tied head is absent from sd; anything else missing is an error.
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (config.tie_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    return model.eval()


def save_model(model: Transformer, directory: str | os.PathLike) -> None:
    """Write ``model`` in Hugging Face's layout (``config.json`` + ``model.safetensors``).

    ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads the result.

    Args:
        model: the model to save (float weights; a quantized model is saved with
            :func:`llama.quantization.weights.save_quantized`).
        directory: the folder to write (created if missing).
    """
    save_hf(model.state_dict(), model.config, directory)
# --8<-- [end:pretrained]


def check_before_building(config: ModelConfig, shapes: dict[str, tuple[int, ...]], where: str | os.PathLike,
                         scheme: dict | None = None, dtype: torch.dtype = torch.float32) -> None:
    """Compare the tensors a file holds with the model its config describes, and that model with this
    machine's memory, before the model is built.

    A config is data from a file. Building the model first, then loading the tensors into it,
    let a ``quantized.json`` or a sharded checkpoint's ``state.json`` that declares a width of
    40,960 make a model of 13-20 GB before any tensor was looked at. The comparison is made with
    the model built on the ``meta`` device, which has every name, shape and dtype (quantized layers
    too) and allocates nothing.

    Args:
        config: the sizes the file declares.
        shapes: the shape of every tensor the file holds, by our names (a tied head left out).
        where: the file or folder, for the messages.
        scheme: the quantization scheme of the file's integer layers, or ``None``.
        dtype: the dtype the model's float tensors will have.

    Raises:
        ValueError: a tensor missing, unexpected or of another shape than the config implies, or
            a model (with its RoPE tables) larger than this machine's memory.
    """
    check_layer_count(config, len(shapes), str(where))  # before a module is made for every declared layer
    with torch.device("meta"):
        skeleton = Transformer(config)
        if scheme is not None:
            try:  # a group size edited in quantized.json: the file is named, not the --group-size flag alone
                quantized_layout(skeleton, scheme)
            except ValueError as err:
                raise ValueError(f"{where}: its quantization scheme does not fit the model: {err}; the "
                                 "checkpoint was changed: quantize the float model again") from None
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    if config.tie_embeddings:  # the embedding's own tensor, whether a file repeats it or not
        expected.pop("output.weight", None)
        shapes = {name: shape for name, shape in shapes.items() if name != "output.weight"}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}: the "
                         "tensors are not those of the model its config describes")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"{where}: tensor {name} has shape {tuple(shapes[name])} but the config implies {shape}")
    tensors = {id(t): t for t in (*skeleton.parameters(), *skeleton.buffers())}.values()
    need = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size()) for t in tensors)
    rope = 2 * skeleton.rope_cos.numel() * dtype.itemsize
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the tensors' check above still holds
        return
    if need > available:
        raise ValueError(f"{where}: the model it describes needs {need / 1e9:,.1f} GB of memory ({rope / 1e9:,.1f} GB "
                         f"of them for the RoPE tables of max_seq_len={config.max_seq_len}), more than the "
                         f"{available / 1e9:,.1f} GB of this machine; a shorter --max-seq-len makes the tables smaller")

