r"""GGUF, llama.cpp's single-file format: a model's weights, sizes and tokenizer, written and read back.

A GGUF file is four parts, one after the other (all integers little-endian):

=================  ===========================================================================
header             ``b"GGUF"``, version (uint32, 3), tensor count and key/value count (uint64)
metadata           key/value pairs: a string key, a type tag, a value (numbers, strings, arrays)
tensor infos       per tensor: name, number of dims, dims (innermost first), type, data offset
data               the tensors' bytes, each starting at a multiple of ``general.alignment`` (32)
=================  ===========================================================================

The ``llama`` architecture names our tensors ``token_embd``, ``blk.N.attn_q``, ... and wants the
rows of ``wq``/``wk`` in Meta's interleaved RoPE order, which is ours: llama.cpp's converter
permutes Hugging Face's half-split rows back to it, and we write our matrices as they are.

Writing and reading go through the ``gguf`` package (maintained by the llama.cpp project), so the
files are checked against code we did not write. This module reads and writes names, sizes and
bytes only; the tokenizer's pieces arrive as a :class:`GGUFVocab` built by
:mod:`llama.tokenizers.gguf_vocab`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from llama._files import atomic_write, open_for_reading
from llama.formats.convert import check_layer_count, expected_shapes
from llama.formats.gguf_quant import from_ggml_blocks, to_ggml_blocks
from llama.model.config import ModelConfig
from llama.quantization.weights import dequantize_tensor

__all__ = ["GGUF_NAMES", "GGUFVocab", "save_gguf", "read_gguf", "read_gguf_vocab", "gguf_layout", "check_gguf"]

StateDict = dict[str, torch.Tensor]
MAGIC = b"GGUF"

# --8<-- [start:names]
#: Our name → the name llama.cpp's ``llama`` architecture gives the tensor. ``{i}`` is the layer.
GGUF_NAMES: dict[str, str] = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "layers.{i}.attention_norm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.attention.wq.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.attention.wk.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.attention.wv.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.attention.wo.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.feed_forward.w1.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    "layers.{i}.feed_forward.w3.weight": "blk.{i}.ffn_up.weight",
}


def _names(n_layers: int) -> dict[str, str]:
    """Our names → GGUF's for every tensor, in llama.cpp's file order: embedding, layer by layer, head."""
    per_layer = {k: v for k, v in GGUF_NAMES.items() if "{i}" in k}
    names = {"tok_embeddings.weight": GGUF_NAMES["tok_embeddings.weight"]}
    for i in range(n_layers):
        names.update({k.format(i=i): v.format(i=i) for k, v in per_layer.items()})
    names.update({k: GGUF_NAMES[k] for k in ("norm.weight", "output.weight")})
    return names
# --8<-- [end:names]


@dataclasses.dataclass
class GGUFVocab:
    """A tokenizer as GGUF stores it (``tokenizer.ggml.*`` keys): SentencePiece (model ``"llama"``),
    or byte-level BPE (model ``"gpt2"``).

    Attributes:
        pieces: the pieces, by id (``"▁the"``, ``"<0x0A>"``, ...; for ``"gpt2"``, each token's bytes
            written with GPT-2's printable character per byte, ``"Ġthe"``).
        scores: one float per piece (SentencePiece's merge priority); empty for ``"gpt2"``.
        types: one int per piece: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        bos_id, eos_id, unk_id, pad_id: the special ids, ``-1`` for none.
        add_space_prefix: whether encoding puts ``▁`` before the text (SentencePiece's ``add_dummy_prefix``).
        model: ``"llama"`` (SentencePiece) or ``"gpt2"`` (byte-level BPE).
        merges: ``"gpt2"`` only: the merges in rank order, each ``"left right"`` in the pieces' spelling.
        pre: ``"gpt2"`` only: the name llama.cpp knows the pre-tokenizer by (``"gpt-2"``).
    """

    pieces: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int = -1
    eos_id: int = -1
    unk_id: int = -1
    pad_id: int = -1
    add_space_prefix: bool = True
    model: str = "llama"
    merges: list[str] = dataclasses.field(default_factory=list)
    pre: str = ""


# --8<-- [start:metadata]
def _metadata(config: ModelConfig) -> dict[str, int | float]:
    """The ``llama.*`` keys that give llama.cpp the model's sizes (``None`` in our config never reaches here)."""
    return {
        "llama.context_length": config.max_seq_len,
        "llama.embedding_length": config.dim,
        "llama.block_count": config.n_layers,
        "llama.feed_forward_length": config.hidden_dim,
        "llama.attention.head_count": config.n_heads,
        "llama.attention.head_count_kv": config.n_kv_heads,
        "llama.rope.dimension_count": config.head_dim,
        "llama.rope.freq_base": config.rope_theta,
        "llama.attention.layer_norm_rms_epsilon": config.norm_eps,
        "llama.vocab_size": config.vocab_size,
    }
# --8<-- [end:metadata]

#: The keys :func:`read_gguf` needs (``llama.vocab_size`` may be absent: the embedding tells it).
_SIZE_KEYS = ("llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
              "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
              "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon")


def _decimal(value: float) -> float:
    """A float32 from the file as the shortest decimal that rounds to it: 1e-5 comes back as 1e-5.

    llama.cpp reads these keys only as float32, and float32's nearest value to 1e-5 is
    9.99999974737875e-06; the model computes in float32 either way, and the config reads as written.
    """
    return float(str(np.float32(value)))


# --8<-- [start:save]
def save_gguf(state_dict: StateDict, config: ModelConfig, path: str | os.PathLike,
              dtype: torch.dtype = torch.float32, vocab: GGUFVocab | None = None, name: str = "llama") -> None:
    """Write a model as one GGUF file for llama.cpp's ``llama`` architecture.

    Matrices are written in ``dtype`` (float32 or float16); norm gains stay float32, as
    llama.cpp's own converter keeps every 1-D tensor. A quantized layer (``.qweight`` and
    ``.scales`` of a :class:`~llama.quantization.weights.QuantizedLinear`, int8 or int4 in groups of 32) is
    written as ``Q8_0`` or ``Q4_0`` blocks, bit for bit (:mod:`llama.formats.gguf_quant`). A tied head
    is not written: llama.cpp uses ``token_embd`` for the output when ``output.weight`` is absent. The file is written
    to a temporary name and moved into place when complete.

    Args:
        state_dict: our weights, ``[out, in]`` matrices, interleaved RoPE rows; quantized ones as
            ``qweight``/``scales`` pairs.
        config: the model's sizes.
        path: the ``.gguf`` file to write.
        dtype: ``torch.float32`` or ``torch.float16``.
        vocab: the tokenizer's pieces, scores and types, or ``None`` to write weights only.
        name: the model's name (``general.name``).

    Raises:
        ValueError: an unsupported dtype, RoPE scaling, a state dict that does not match the
            config, a quantized layer with groups other than 32 inputs (per-channel int8), or a
            vocabulary whose size differs from the model's.
    """
    import gguf

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"GGUF export writes float32 or float16, not {str(dtype).removeprefix('torch.')}: "
                         "pick one of the two")
    if config.rope_scaling is not None:
        raise ValueError("this model uses Llama 3.1 RoPE scaling, which llama.cpp reads from a rope_freqs "
                         "tensor this exporter does not write: export a model without rope_scaling")
    names = _names(config.n_layers)
    if config.tie_embeddings and "output.qweight" not in state_dict:  # a quantized head is its own tensor
        del names["output.weight"]
    given = {_base(k) + ".weight" for k in state_dict}
    missing, unexpected = sorted(set(names) - given), sorted(given - set(names) - {"output.weight"})
    if missing or unexpected:
        raise ValueError(f"state dict does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    shapes = expected_shapes(config)
    for ours in names:
        shape = _shape(state_dict, ours)
        if shape != shapes[ours]:
            raise ValueError(f"tensor {ours} has shape {shape} but the config implies {shapes[ours]}")
    if vocab is not None and len(vocab.pieces) != config.vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab.pieces)} pieces but the model {config.vocab_size} token ids: "
                         "they do not belong together")
    # Quantized layers become block bytes first: one that has no block type fails before any writing.
    blocks = {ours: to_ggml_blocks(state_dict[f"{_base(ours)}.qweight"], state_dict[f"{_base(ours)}.scales"], ours)
              for ours in names if f"{_base(ours)}.qweight" in state_dict}
    kinds = {kind for _, kind in blocks.values()}

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch="llama")  # writes general.architecture = "llama"
        writer.add_name(name)
        file_type = f"MOSTLY_{kinds.pop()}" if kinds else "ALL_F32" if dtype == torch.float32 else "MOSTLY_F16"
        writer.add_file_type(gguf.LlamaFileType[file_type])
        if blocks:
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in _metadata(config).items():
            if isinstance(value, float):
                writer.add_float32(key, value)
            else:
                writer.add_uint32(key, value)
        if vocab is not None:
            _add_vocab(writer, vocab)
        for ours, theirs in names.items():
            if ours in blocks:  # ggml's block bytes; the writer derives the [in, out] dims from them
                data, kind = blocks[ours]
                writer.add_tensor(theirs, data, raw_dtype=gguf.GGMLQuantizationType[kind])
                continue
            w = state_dict[ours].detach().to("cpu")
            w = w.float() if w.dim() == 1 else w.to(dtype)  # norms stay float32, as llama.cpp keeps them
            # numpy's [out, in] becomes GGUF's dims [in, out]: the writer lists the innermost first.
            writer.add_tensor(theirs, w.contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write)
# --8<-- [end:save]


def _base(name: str) -> str:
    """``layers.0.attention.wq`` for its ``.weight``, ``.qweight`` or ``.scales``."""
    return name.rsplit(".", 1)[0]


def _shape(sd: StateDict, ours: str) -> tuple[int, ...]:
    """The ``[out, in]`` shape of a weight, float or quantized (int4 packs two inputs per byte)."""
    if ours in sd:
        return tuple(sd[ours].shape)
    q = sd[f"{_base(ours)}.qweight"]
    return (q.shape[0], q.shape[1] * (1 if q.dtype == torch.int8 else 2))


def _add_vocab(writer, vocab: GGUFVocab) -> None:
    """The ``tokenizer.ggml.*`` keys of a SentencePiece (``"llama"``) or byte-level BPE (``"gpt2"``) tokenizer."""
    bpe = vocab.model == "gpt2"
    if len(vocab.pieces) != len(vocab.types) or (not bpe and len(vocab.scores) != len(vocab.pieces)):
        raise ValueError("a GGUFVocab needs one type (and, for SentencePiece, one score) per piece")
    writer.add_tokenizer_model(vocab.model)
    if bpe:  # llama.cpp refuses a pre-tokenizer name it does not know
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.pieces)
    if bpe:
        writer.add_token_merges(vocab.merges)
    else:
        writer.add_token_scores([float(s) for s in vocab.scores])
    writer.add_token_types([int(t) for t in vocab.types])
    for key, token_id in (("bos", vocab.bos_id), ("eos", vocab.eos_id), ("unknown", vocab.unk_id),
                          ("padding", vocab.pad_id)):
        if token_id >= 0:
            writer.add_uint32(f"tokenizer.ggml.{key}_token_id", token_id)
    writer.add_add_bos_token(vocab.bos_id >= 0 and not bpe)  # Llama models are trained with <s> first; BPE ones without
    writer.add_add_eos_token(False)
    if not bpe:
        writer.add_add_space_prefix(vocab.add_space_prefix)


# ------------------------------------------------------------------------------------- reading
def check_gguf(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless the file at ``path`` starts with GGUF's magic bytes."""
    with open_for_reading(path) as f:
        if f.read(4) != MAGIC:
            raise ValueError(f"{path} is not a GGUF file: it does not start with the bytes 'GGUF'")


def _open(path: Path):
    """``gguf.GGUFReader(path)``, with a damaged or foreign file turned into one clear error."""
    import gguf

    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    check_gguf(path)
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as err:
        # The reader indexes a memory map: a cut file fails as an index or a value past its end.
        raise ValueError(f"could not read {path}: it is truncated or damaged ({type(err).__name__}: {err})") from None


def _field(reader, key: str, path: Path, required: bool = True):
    field = reader.get_field(key)
    if field is None:
        if required:
            raise ValueError(f"{path} has no metadata key {key!r}, which a llama model needs: is it a complete export?")
        return None
    return field.contents()


# --8<-- [start:read]
def read_gguf(path: str | os.PathLike, max_seq_len: int | None = None) -> tuple[ModelConfig, StateDict]:
    """Read a GGUF file of the ``llama`` architecture into our config and our weight names.

    ``max_seq_len`` replaces the file's ``llama.context_length``.

    Returns:
        ``(config, state_dict)``: float32 or float16 tensors as stored (norms float32), a head
        absent from the file meaning a head tied to the embedding. A ``Q8_0``/``Q4_0`` projection
        comes back as ``<name>.qweight`` and ``<name>.scales`` (:mod:`llama.formats.gguf_quant`), an
        embedding stored so as the float32 numbers it stands for.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a GGUF file, a truncated one, another architecture than ``llama``, a
            missing size, a tensor type other than F32/F16/Q8_0/Q4_0, or tensors that do not match the sizes.
    """
    path = Path(path)
    reader = _open(path)
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise ValueError(f"{path} holds a {arch!r} model; only the 'llama' architecture is read here "
                         "(its tensors and RoPE layout are the ones this model has)")
    if _field(reader, "llama.rope.scaling.type", path, required=False) not in (None, "none"):
        raise ValueError(f"{path} uses RoPE scaling, which this reader does not support")
    meta = {key: _field(reader, key, path) for key in _SIZE_KEYS}
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path} has no token_embd.weight tensor: not a complete llama model")
    vocab_size = _field(reader, "llama.vocab_size", path, required=False) or int(tensors["token_embd.weight"].shape[1])
    try:
        config = ModelConfig(
            dim=meta["llama.embedding_length"], n_layers=meta["llama.block_count"],
            n_heads=meta["llama.attention.head_count"], n_kv_heads=meta["llama.attention.head_count_kv"],
            vocab_size=vocab_size, hidden_dim=meta["llama.feed_forward_length"],
            max_seq_len=max_seq_len or meta["llama.context_length"], rope_theta=_decimal(meta["llama.rope.freq_base"]),
            norm_eps=_decimal(meta["llama.attention.layer_norm_rms_epsilon"]),
            tie_embeddings="output.weight" not in tensors)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: its metadata does not describe a valid model: {err}") from None
    if meta["llama.rope.dimension_count"] != config.head_dim:
        raise ValueError(f"{path}: llama.rope.dimension_count is {meta['llama.rope.dimension_count']}, but this "
                         f"model rotates whole heads of {config.head_dim} features (partial RoPE is not supported)")
    check_layer_count(config, len(tensors), path)  # before a name is made for every declared layer
    names = _names(config.n_layers)
    if config.tie_embeddings:
        del names["output.weight"]
    theirs_to_ours = {theirs: ours for ours, theirs in names.items()}
    missing, unexpected = sorted(set(theirs_to_ours) - set(tensors)), sorted(set(tensors) - set(theirs_to_ours))
    if missing or unexpected:
        raise ValueError(f"{path} does not match its metadata ({config.n_layers} layers): missing tensors "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    shapes = expected_shapes(config)
    sd = {}
    for theirs, ours in theirs_to_ours.items():
        shape = tuple(reversed([int(d) for d in tensors[theirs].shape]))  # GGUF lists dims innermost first
        if shape != shapes[ours]:
            raise ValueError(f"{path}: tensor {theirs} has shape {shape} but the metadata implies {shapes[ours]}")
        sd.update(_to_torch(tensors[theirs], ours, shape, path))
    return config, sd
# --8<-- [end:read]


def _to_torch(tensor, ours: str, shape: tuple[int, ...], path: Path) -> StateDict:
    """One tensor of the reader as our tensors: ``{name: weight}``, or a projection's ``qweight`` and ``scales``."""
    import gguf

    kind = gguf.GGMLQuantizationType(tensor.tensor_type)
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return {ours: torch.from_numpy(np.array(tensor.data)).reshape(shape)}  # a copy: the reader's view is read-only
    if kind.name not in ("Q8_0", "Q4_0") or len(shape) != 2:
        raise ValueError(f"{path}: tensor {tensor.name} is stored as {kind.name}, which this reader does not "
                         "support: it reads F32, F16, Q8_0 and Q4_0 tensors (convert the file with llama.cpp's "
                         "llama-quantize to one of them first)")
    qweight, scales = from_ggml_blocks(tensor.data, kind.name, *shape)
    if ours == "tok_embeddings.weight":  # our embedding is float: q * d, exactly the numbers llama.cpp uses
        return {ours: dequantize_tensor(qweight, scales, 8 if kind.name == "Q8_0" else 4, 32)}
    return {f"{_base(ours)}.qweight": qweight, f"{_base(ours)}.scales": scales}


def read_gguf_vocab(path: str | os.PathLike) -> GGUFVocab | None:
    """The vocabulary stored in a GGUF file, or ``None`` if it stores none.

    Raises:
        ValueError: the file is not GGUF, or stores a tokenizer other than ``"llama"`` (SentencePiece)
            or ``"gpt2"`` (byte-level BPE).
    """
    path = Path(path)
    reader = _open(path)
    model = _field(reader, "tokenizer.ggml.model", path, required=False)
    if model is None:
        return None
    if model not in ("llama", "gpt2"):
        raise ValueError(f"{path} stores a {model!r} tokenizer; only SentencePiece ('llama') and byte-level BPE "
                         "('gpt2') are read here")

    def special(key: str) -> int:
        found = _field(reader, f"tokenizer.ggml.{key}_token_id", path, required=False)
        return -1 if found is None else int(found)

    space = _field(reader, "tokenizer.ggml.add_space_prefix", path, required=False)
    bpe = model == "gpt2"
    return GGUFVocab(pieces=_field(reader, "tokenizer.ggml.tokens", path),
                     scores=[] if bpe else _field(reader, "tokenizer.ggml.scores", path),
                     types=_field(reader, "tokenizer.ggml.token_type", path),
                     bos_id=special("bos"), eos_id=special("eos"), unk_id=special("unknown"),
                     pad_id=special("padding"), add_space_prefix=not bpe if space is None else bool(space), model=model,
                     merges=_field(reader, "tokenizer.ggml.merges", path) if bpe else [],
                     pre=_field(reader, "tokenizer.ggml.pre", path, required=False) or "" if bpe else "")


# --8<-- [start:layout]
def gguf_layout(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """Where each part of a GGUF file lies: ``[(part, start byte, end byte), ...]`` in file order.

    The parts are ``"header"``, ``"metadata"``, ``"tensor infos"``, ``"padding"`` (up to the
    alignment), then one entry per tensor (its name; the padding after it is counted in it).
    """
    path = Path(path)
    reader = _open(path)
    infos = [t.field for t in reader.tensors]
    kv_start = 24  # magic (4) + version (4) + tensor count (8) + key/value count (8)
    info_start = infos[0].offset if infos else reader.data_offset
    info_end = infos[-1].offset + sum(int(p.nbytes) for p in infos[-1].parts) if infos else info_start
    parts = [("header", 0, kv_start), ("metadata", kv_start, info_start), ("tensor infos", info_start, info_end),
             ("padding", info_end, reader.data_offset)]
    starts = [t.data_offset for t in reader.tensors] + [path.stat().st_size]
    parts += [(t.name, start, end) for t, start, end in zip(reader.tensors, starts, starts[1:])]
    return parts
# --8<-- [end:layout]
