r"""Checkpoints in the three formats a reader meets, read into our names, written as Hugging Face or llama2.c.

=================  ==============================================  ===========================
format             files                                           tensor names and layout
=================  ==============================================  ===========================
Hugging Face       ``config.json`` + ``model.safetensors``          ``model.layers.N.self_attn.q_proj.weight``;
                   (or shards listed in                            ``wq``/``wk`` rows in the
                   ``model.safetensors.index.json``)               half-split RoPE order
Meta (original)    ``params.json`` + ``consolidated.NN.pth``        ours (``layers.N.attention.wq.weight``);
                   (one file per model-parallel rank)              interleaved RoPE order
llama2.c (legacy)  one ``.bin``: 7 int32 header, float32 tensors    by position in the file;
                                                                   interleaved RoPE order
=================  ==============================================  ===========================

Nothing here executes code from a file: safetensors holds only tensors, and ``.pth`` pickles are
opened with ``torch.load(weights_only=True)``, which refuses any object that is not a tensor,
a number, a string or a container of those.

:func:`llama.formats.load.load_model` and :func:`~llama.formats.load.save_model`
are thin wrappers around :func:`read_checkpoint` and :func:`save_hf`. This module reads and
writes names, shapes and bytes only; it never builds a model (the model module imports it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import torch

from llama._files import atomic_write, atomic_write_text, open_for_reading
from llama.formats.convert import check_layer_count, expected_shapes, hf_to_llama_state_dict, llama_to_hf_state_dict
from llama.formats.gguf import MAGIC as GGUF_MAGIC
from llama.formats.gguf import read_gguf
from llama.formats.llama2c import read_llama2c
from llama.model.config import ModelConfig, RopeScaling, _check_field

__all__ = [
    "detect_format",
    "read_hf",
    "read_meta",
    "read_checkpoint",
    "save_hf",
    "check_finite",
]

StateDict = dict[str, torch.Tensor]


# --8<-- [start:detect]
def detect_format(path: str | os.PathLike) -> str:
    """Which checkpoint format ``path`` holds: ``"hf"``, ``"meta"``, ``"gguf"`` or ``"llama2c"``.

    A directory with ``config.json`` is Hugging Face, one with ``params.json`` is Meta's; a
    file starting with ``GGUF`` is llama.cpp's; another file is a llama2.c export unless it is
    a zip archive (a PyTorch pickle: pass its folder).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a folder or file that matches none of the three formats.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        try:
            if (path / "config.json").is_file():
                return "hf"
            if (path / "params.json").is_file():
                return "meta"
        except PermissionError:
            raise ValueError(f"cannot read the folder {path}: permission denied; give your user read "
                             "access (chmod +rx) or copy it") from None
        raise ValueError(
            f"{path} is a folder with neither config.json (Hugging Face) nor params.json (Meta): "
            "unknown checkpoint format"
        )
    with open_for_reading(path) as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return "gguf"
    if path.suffix == ".gguf":
        raise ValueError(f"{path} is not a GGUF file: it does not start with the bytes 'GGUF' (truncated or renamed?)")
    if magic.startswith(b"PK"):
        raise ValueError(
            f"{path} is a PyTorch/zip archive, not a llama2.c .bin: pass the folder that holds it "
            "together with its config.json or params.json"
        )
    if path.suffix != ".bin":
        raise ValueError(
            f"unknown checkpoint format for {path}: expected a Hugging Face folder, a Meta folder, "
            "a GGUF file or a llama2.c .bin file"
        )
    return "llama2c"
# --8<-- [end:detect]


# ----------------------------------------------------------------------------- pickles, safely
def _check_readable(path: Path) -> None:
    # The readers below report a file they cannot parse as truncated (safetensors even as
    # missing): one they may not open is found out first.
    if not path.is_file():
        raise FileNotFoundError(f"missing checkpoint file {path}")
    open_for_reading(path).close()


def _check_floating(sd: StateDict, path: Path) -> StateDict:
    """Refuse integer and boolean tensors: loading would cast them to float without a word."""
    for name, t in sd.items():
        if not t.is_floating_point():
            raise ValueError(
                f"{path}: tensor {name} is {str(t.dtype).removeprefix('torch.')}, not floating point: "
                "weights must be float32, float16 or bfloat16 (a quantized or non-weight file?)"
            )
    return sd


def _pickle_refusal_reason(err: Exception) -> str:
    """What torch's refusal says about the file, without its advice to load with ``weights_only=False``."""
    paragraphs = [p.strip() for p in str(err).split("\n\n") if p.strip()]
    reasons = [p for p in paragraphs if "weights_only" not in p and "Weights only load failed" not in p]
    return f" Details: {reasons[0]}" if reasons else ""


# --8<-- [start:files]
def _torch_load_weights(path: Path) -> StateDict:
    """``torch.load`` that accepts only a flat ``{name: tensor}`` dict and never runs pickled code."""
    _check_readable(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True stops at the first object that is not plain data (a class, a
        # function such as os.system): the payload is never called. torch's message suggests
        # weights_only=False, which would run it: only the reason is passed on.
        raise ValueError(
            f"{path} is not plain weights: it pickles objects that loading would have to execute, so it "
            f"was refused. Only tensors and containers of them are read.{_pickle_refusal_reason(err)}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"could not read {path}: it is truncated or not a PyTorch checkpoint ({err})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = f"a dict with keys {sorted(obj)[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path} holds {what}, not a dict of weight names to tensors; save model.state_dict() instead"
        )
    return _check_floating(obj, path)


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_readable(path)
    try:
        sd = load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"could not read {path}: it is truncated or not a safetensors file ({err})") from None
    return _check_floating(sd, path)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path.name} in {path.parent}")
    with open_for_reading(path) as f:
        data = f.read()
    try:
        obj = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON (truncated?): {err}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not an object of fields ({{...}}): "
                         "is it the right file?")
    return obj
# --8<-- [end:files]


# -------------------------------------------------------------------------------- Hugging Face
# --8<-- [start:read_hf]
def read_hf(directory: str | os.PathLike, max_seq_len: int | None = None) -> tuple[ModelConfig, StateDict]:
    """Read a Hugging Face Llama folder: ``config.json`` and one or many safetensors files.

    Sharded checkpoints list, in ``model.safetensors.index.json``, which file holds each
    tensor (``"weight_map"``); every listed shard is read and the dicts are merged. Older
    folders with only ``pytorch_model.bin`` are read with ``weights_only=True``.
    ``max_seq_len`` replaces ``max_position_embeddings`` before the config is checked.

    Returns:
        The config and the weights, renamed to ours with ``wq``/``wk`` rows back in
        interleaved order (:func:`llama.formats.convert.hf_to_llama_state_dict`).
    """
    directory = Path(directory)
    hf_config = _read_json(directory / "config.json")
    if max_seq_len is not None:
        hf_config = {**hf_config, "max_position_embeddings": max_seq_len}
    try:
        config = ModelConfig.from_hf(hf_config)
    except ValueError as err:
        raise ValueError(f"{directory / 'config.json'}: {err}") from None
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        hf_sd = _read_safetensors(single)
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' telling which shard holds each tensor")
        hf_sd = {}
        for shard in sorted(set(_shard_paths(weight_map, index))):
            hf_sd.update(_read_safetensors(shard))
    elif (directory / "pytorch_model.bin").is_file():
        hf_sd = _torch_load_weights(directory / "pytorch_model.bin")
    else:
        raise FileNotFoundError(
            f"{directory} has config.json but no weights: expected model.safetensors, "
            "model.safetensors.index.json with its shards, or pytorch_model.bin"
        )
    check_layer_count(config, len(hf_sd), directory)  # before a name is made for every declared layer
    return config, hf_to_llama_state_dict(hf_sd, config)
# --8<-- [end:read_hf]


def _shard_paths(weight_map: dict, index: Path) -> list[Path]:
    """The files ``weight_map`` names, each checked to lie inside the checkpoint's folder.

    The index is data from whoever made the checkpoint: an absolute path, ``..`` or a link out of
    the folder would make us read any file (``/etc/passwd``, another model) as weights. The one
    link allowed out is the Hugging Face cache's, from ``snapshots/REV/`` into the same
    repository's ``blobs/``, where it stores every file.
    """
    folder = index.parent.resolve()
    allowed = [folder]
    if folder.parent.name == "snapshots":
        allowed.append(folder.parent.parent / "blobs")
    paths = []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise ValueError(f"{index}: weight_map[{tensor!r}] is {shard!r}, not a file name; "
                             "each value must name a .safetensors file in the folder")
        lexical = Path(shard)
        resolved = (index.parent / lexical).resolve()
        named_inside = not lexical.is_absolute() and ".." not in lexical.parts
        if not named_inside or not any(resolved.is_relative_to(root) for root in allowed):
            raise ValueError(f"{index}: weight_map[{tensor!r}] names {shard!r}, which is not a file in "
                             f"{index.parent}; shards must sit next to the index, so it was not read")
        paths.append(index.parent / lexical)
    return paths


# ---------------------------------------------------------------------------------------- Meta
#: ``params.json`` keys understood by :func:`read_meta` (anything else is an error, not ignored).
_META_KEYS = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
              "norm_eps", "rope_theta", "use_scaled_rope", "rope_scaling_factor", "max_seq_len"}


# --8<-- [start:read_meta]
def read_meta(directory: str | os.PathLike, max_seq_len: int | None = None) -> tuple[ModelConfig, StateDict]:
    """Read Meta's original layout: ``params.json`` and ``consolidated.00.pth``, ``.01``, ...

    The tensor names are already ours. Several ``consolidated`` files are the slices of a
    model-parallel run: each tensor is either repeated in every file (the norms) or cut along
    one dimension, which we find by comparing a slice's shape with the full shape the config
    implies, and glue back with ``torch.cat``.

    ``params.json`` gives no ``hidden_dim``: it is recomputed from ``multiple_of`` and
    ``ffn_dim_multiplier`` by Meta's rule. ``vocab_size: -1`` (Llama 2) means "the tokenizer's
    size" and is read from the embedding. ``use_scaled_rope`` switches on Llama 3.1 RoPE
    scaling with factor ``rope_scaling_factor`` (8 when absent, the value Meta's code fixes;
    Llama 3.2 1B/3B need 32). The context length is not stored: ``max_seq_len`` sets it (default 2048).
    """
    directory = Path(directory)
    params = _read_json(directory / "params.json")
    unknown = sorted(set(params) - _META_KEYS)
    if unknown:
        raise ValueError(f"params.json has keys this model does not support: {unknown} (known: {sorted(_META_KEYS)})")
    fields = _meta_fields(params, directory / "params.json")  # checked before gigabytes of weights are read
    shard_paths = sorted(directory.glob("consolidated.*.pth"))
    if not shard_paths:
        raise FileNotFoundError(f"{directory} has params.json but no consolidated.NN.pth weight files")
    shards = [_torch_load_weights(p) for p in shard_paths]
    for shard in shards:
        shard.pop("rope.freqs", None)  # Llama 1/2 stored the RoPE frequencies; we recompute them
    if "tok_embeddings.weight" not in shards[0]:
        raise ValueError(f"{shard_paths[0]} has no tok_embeddings.weight: not a Meta Llama checkpoint")

    if fields["vocab_size"] <= 0:
        fields["vocab_size"] = shards[0]["tok_embeddings.weight"].shape[0]
    if max_seq_len:
        fields["max_seq_len"] = max_seq_len
    try:
        config = ModelConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{directory / 'params.json'}: {err}") from None
    # A model whose head is not stored, or stored equal to the embedding, shares the two.
    if "output.weight" not in shards[0] or torch.equal(shards[0]["output.weight"], shards[0]["tok_embeddings.weight"]):
        config = dataclasses.replace(config, tie_embeddings=True)
        for shard in shards:
            shard.pop("output.weight", None)
    check_layer_count(config, len(shards[0]), directory)
    full_shapes = expected_shapes(config)
    if config.tie_embeddings:
        del full_shapes["output.weight"]
    return config, _merge_meta_shards(shards, full_shapes, shard_paths)
# --8<-- [end:read_meta]


def _meta_fields(params: dict, path: Path) -> dict:
    """The ``ModelConfig`` arguments in a ``params.json``, each of the type it must have."""
    missing = [key for key in ("dim", "n_layers", "n_heads") if key not in params]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: every Meta params.json gives the model's "
                         "dim, n_layers and n_heads; add them or check that this is the right file")
    try:
        def get(key: str, kind: str, default=None):
            return _check_field(params, key, kind, default, null=True)

        scaling = None
        if get("use_scaled_rope", "bool", False):
            scaling = RopeScaling(factor=float(get("rope_scaling_factor", "number", 8.0)))
        return dict(
            dim=get("dim", "int"), n_layers=get("n_layers", "int"), n_heads=get("n_heads", "int"),
            n_kv_heads=get("n_kv_heads", "int"), vocab_size=get("vocab_size", "int", -1),
            multiple_of=get("multiple_of", "int", 256), ffn_dim_multiplier=get("ffn_dim_multiplier", "number"),
            norm_eps=get("norm_eps", "number", 1e-5), rope_theta=float(get("rope_theta", "number", 10000.0)),
            max_seq_len=get("max_seq_len", "int", 2048), rope_scaling=scaling,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _merge_meta_shards(shards: list[StateDict], full_shapes: dict[str, tuple[int, ...]],
                       paths: list[Path]) -> StateDict:
    names = set(shards[0])
    missing, unexpected = sorted(set(full_shapes) - names), sorted(names - set(full_shapes))
    if missing or unexpected:
        raise ValueError(
            f"{paths[0]} does not match params.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for shard, path in zip(shards[1:], paths[1:]):
        if set(shard) != names:
            differ = sorted(set(shard) ^ names)
            raise ValueError(f"{path.name} and {paths[0].name} hold different tensors ({differ[:5]}): every "
                             "consolidated.NN.pth of one model holds the same names; is one from another model?")
    merged = {}
    for name, shape in full_shapes.items():
        parts = [shard[name] for shard in shards]
        if tuple(parts[0].shape) == shape:
            # Repeated in every shard (the norms), so every copy must be the same: a differing one
            # means shards of different models (or a damaged file), and keeping the first would hide it.
            for part, path in zip(parts[1:], paths[1:]):
                if part.shape != parts[0].shape or not torch.equal(part, parts[0]):
                    raise ValueError(
                        f"tensor {name} should be repeated identically in every consolidated.NN.pth, but "
                        f"{path.name} differs from {paths[0].name}: the files are not shards of one model"
                    )
            merged[name] = parts[0]
            continue
        # The one dimension along which the slices add up to the full size.
        dims = [d for d in range(len(shape))
                if sum(p.shape[d] for p in parts) == shape[d]
                and all(p.shape[:d] + p.shape[d + 1:] == shape[:d] + shape[d + 1:] for p in parts)]
        if len(parts) == 1 or not dims:
            raise ValueError(
                f"tensor {name} has shape {tuple(parts[0].shape)} in {paths[0].name} but params.json implies "
                f"{shape}: the checkpoint and its params.json disagree"
            )
        merged[name] = torch.cat(parts, dim=dims[0])
    return merged


# ------------------------------------------------------------------------------ load and save
# --8<-- [start:load]
def read_checkpoint(path: str | os.PathLike, max_seq_len: int | None = None) -> tuple[ModelConfig, StateDict]:
    """Detect the format of ``path`` and read it into our config and our weight names.

    Args:
        path: a Hugging Face folder, a Meta folder, a GGUF file or a llama2.c ``.bin`` file.
        max_seq_len: the context length for Meta checkpoints, which do not store one; for a
            Hugging Face folder or a GGUF file, it replaces the one stored.

    Returns:
        ``(config, state_dict)``; a tied output head is left out of the state dict.

    Raises:
        FileNotFoundError: the path or a file it needs is missing.
        ValueError: an unknown format, a truncated or unreadable file, a pickle that is not
            plain weights, a config field of the wrong type, tensors whose shapes contradict
            the config, integer tensors, or weights holding NaN or infinity.
    """
    fmt = detect_format(path)
    if fmt == "hf":
        config, sd = read_hf(path, max_seq_len)
    elif fmt == "meta":
        config, sd = read_meta(path, max_seq_len)
    elif fmt == "gguf":
        config, sd = read_gguf(path, max_seq_len)
    else:
        config, sd = read_llama2c(path)
    if config.tie_embeddings:
        sd = {k: v for k, v in sd.items() if k != "output.weight"}
    for name, shape in expected_shapes(config).items():
        if name in sd and tuple(sd[name].shape) != shape:
            raise ValueError(f"{path}: tensor {name} has shape {tuple(sd[name].shape)} but the config implies {shape}")
    check_finite(sd, path)
    return config, sd


def check_finite(sd: StateDict, path: str | os.PathLike, fix: str = "the checkpoint is damaged, or saved from "
                 "a run that diverged; load an earlier checkpoint") -> None:
    """Refuse weights holding NaN or infinity: such a model loads and runs, and prints nonsense.

    One float64 sum per tensor, with no temporary as large as the tensor: a NaN or an infinity
    anywhere makes the sum non-finite, and finite float32 weights cannot overflow a float64 sum.
    ``fix`` ends the message (what to do); ``llama convert`` checks what it is about to write.
    """
    for name, t in sd.items():
        if t.is_floating_point() and not torch.isfinite(t.sum(dtype=torch.float64)):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{path}: tensor {name} holds NaN or infinity in {bad} of its {t.numel()} values: {fix}")
# --8<-- [end:load]


# --8<-- [start:save_hf]
def save_hf(state_dict: StateDict, config: ModelConfig, directory: str | os.PathLike) -> None:
    """Write a model's weights and config as a Hugging Face folder: ``config.json`` + ``model.safetensors``.

    The weights are renamed and ``wq``/``wk`` rows reordered for half-split RoPE by
    :func:`llama.formats.convert.llama_to_hf_state_dict`; a tied output head is left out, as
    transformers expects. Each file is written atomically.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a folder; choose a folder to write the checkpoint into")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise ValueError(f"cannot make the folder {directory}: permission denied; choose a place your user "
                         "may write to") from None
    hf_sd = llama_to_hf_state_dict(state_dict, config)
    # safetensors stores each tensor once, contiguous, and refuses tensors that share memory.
    hf_sd = {name: w.detach().contiguous().clone() for name, w in hf_sd.items()}
    dtype = next(iter(hf_sd.values())).dtype
    hf_config = {**config.to_hf(), "dtype": str(dtype).removeprefix("torch.")}
    text = json.dumps(hf_config, indent=2, allow_nan=False) + "\n"  # NaN is not JSON: refused before any write
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(hf_sd, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / "config.json", text)
# --8<-- [end:save_hf]
