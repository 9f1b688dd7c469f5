r"""The SentencePiece model file: what it stores, how it is read, and the vocabulary it defines.

SentencePiece stores a model as a protocol-buffer message (``ModelProto``): a list of
*pieces* (string, score, type), a ``TrainerSpec`` with the options it was trained with and a
``NormalizerSpec`` that says how raw text is cleaned before it is cut into pieces.
:func:`read_model_proto` reads the fields that encoding and decoding depend on, with the wire
reader of :mod:`llama.tokenizers.protobuf`. :class:`SentencePieceVocab` checks that a model is one this
project implements (BPE, identity normalization) and answers the questions about single ids:
which piece, which bytes of text, which id is ``<s>``. The tokenizer built on it, which turns
text into ids and back, is :class:`llama.tokenizers.spm.SentencePieceTokenizer`.

Examples:
    >>> import io, sentencepiece
    >>> buf = io.BytesIO()
    >>> sentencepiece.SentencePieceTrainer.train(
    ...     sentence_iterator=iter(["hello world", "hello there"] * 50), model_writer=buf,
    ...     model_type="bpe", vocab_size=280, byte_fallback=True,
    ...     normalization_rule_name="identity", minloglevel=2)
    >>> proto = read_model_proto(buf.getvalue())
    >>> proto.model_type, len(proto.pieces), proto.pieces[1].piece, proto.add_dummy_prefix
    ('bpe', 280, '<s>', True)
    >>> vocab = SentencePieceVocab.from_bytes(buf.getvalue())
    >>> vocab.bos_id, vocab.id_to_piece(3 + ord("W")), vocab.id_to_bytes(3 + ord("W"))
    (1, '<0x57>', b'W')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from llama.tokenizers.protobuf import as_float32, as_int32, as_text, iter_fields

__all__ = ["SentencePieceVocab", "ModelProto", "Piece", "read_model_proto", "SPACE",
           "NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE"]

SPACE = "\u2581"  # "▁", LOWER ONE EIGHTH BLOCK: how SentencePiece writes a space

# Piece types (ModelProto.SentencePiece.Type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

_V = TypeVar("_V", bound="SentencePieceVocab")


@dataclass
class Piece:
    """One entry of the vocabulary."""

    piece: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class ModelProto:
    """The parts of a SentencePiece ``ModelProto`` that encoding and decoding depend on.

    Defaults are those of ``sentencepiece_model.proto``.
    """

    pieces: list[Piece] = field(default_factory=list)
    # TrainerSpec
    model_type: str = "unigram"
    vocab_size: int = 8000
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    split_digits: bool = False
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    pad_piece: str = "<pad>"
    unk_surface: str = " \u2047 "
    # NormalizerSpec
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    # denormalizer_spec (used by decode, if it has rules)
    denormalizer_charsmap: bytes = b""
    # which of the three parts were present in the file
    has_pieces: bool = False
    has_trainer_spec: bool = False
    has_normalizer_spec: bool = False


# --8<-- [start:read_model]
def read_model_proto(data: bytes) -> ModelProto:
    """Parse a serialized SentencePiece ``ModelProto``.

    Field numbers follow ``sentencepiece_model.proto``: ``pieces = 1``, ``trainer_spec = 2``,
    ``normalizer_spec = 3``, ``denormalizer_spec = 5``; inside a piece, ``piece = 1``,
    ``score = 2`` (float32), ``type = 3``. Unknown fields are skipped, as protobuf does.

    Raises:
        ValueError: If ``data`` is not a well-formed model.
    """
    m = ModelProto()
    for number, value in iter_fields(data):
        if number == 1:  # repeated SentencePiece pieces
            m.has_pieces = True
            p = Piece("")
            for n, v in iter_fields(value):
                if n == 1:
                    p.piece = as_text(v)
                elif n == 2:
                    p.score = as_float32(v)
                elif n == 3:
                    p.type = v
            m.pieces.append(p)
        elif number == 2:  # TrainerSpec
            m.has_trainer_spec = True
            for n, v in iter_fields(value):
                if n == 3:
                    m.model_type = _MODEL_TYPES.get(v, f"unknown ({v})")
                elif n == 4:
                    m.vocab_size = as_int32(v)
                elif n == 35:
                    m.byte_fallback = bool(v)
                elif n == 24:
                    m.treat_whitespace_as_suffix = bool(v)
                elif n == 25:
                    m.split_digits = bool(v)
                elif n in (44, 45, 46, 47, 48):
                    name = {44: "unk_surface", 45: "unk_piece", 46: "bos_piece",
                            47: "eos_piece", 48: "pad_piece"}[n]
                    setattr(m, name, as_text(v))
        elif number == 3:  # NormalizerSpec
            m.has_normalizer_spec = True
            for n, v in iter_fields(value):
                if n == 1:
                    m.normalizer_name = as_text(v)
                elif n == 2:
                    m.precompiled_charsmap = v
                elif n == 3:
                    m.add_dummy_prefix = bool(v)
                elif n == 4:
                    m.remove_extra_whitespaces = bool(v)
                elif n == 5:
                    m.escape_whitespaces = bool(v)
        elif number == 5:  # denormalizer_spec
            for n, v in iter_fields(value):
                if n == 2:
                    m.denormalizer_charsmap = v
    return m
# --8<-- [end:read_model]


class SentencePieceVocab:
    """The vocabulary of a SentencePiece BPE ``.model`` file, checked and indexed.

    Args:
        model_path: Path of a SentencePiece model file (e.g. Llama 2's ``tokenizer.model``).

    Raises:
        FileNotFoundError: If ``model_path`` does not exist.
        ValueError: If the file is not a SentencePiece model, or uses a feature this project
            does not implement (a Unigram model, a precompiled normalization rule such as
            ``nmt_nfkc``, whitespace as suffix).
    """

    def __init__(self, model_path: str | os.PathLike) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        self._setup(path.read_bytes(), str(path))

    @classmethod
    def from_bytes(cls: type[_V], data: bytes) -> _V:
        """Build it from the bytes of a ``.model`` file (raises as the constructor does)."""
        self = cls.__new__(cls)
        self._setup(bytes(data), "<bytes>")
        return self

    def _setup(self, data: bytes, where: str) -> None:
        """Read, check and index the model; ``where`` names it in error messages."""
        try:
            proto = read_model_proto(data)
        except ValueError as err:  # UnicodeDecodeError included
            raise ValueError(f"{where} is not a SentencePiece model file ({err})") from None
        if not (proto.has_pieces and proto.has_trainer_spec and proto.has_normalizer_spec):
            raise ValueError(
                f"{where} is not a SentencePiece model file (pieces, trainer_spec or normalizer_spec "
                "is missing; a truncated download looks like this)"
            )
        if any(not p.piece for p in proto.pieces):
            raise ValueError(f"{where} is not a SentencePiece model file (it has an empty piece)")
        if proto.model_type != "bpe":
            raise ValueError(
                f"{where} is a {proto.model_type} model; this tokenizer implements BPE models "
                "(train with model_type='bpe')"
            )
        if proto.precompiled_charsmap or proto.denormalizer_charsmap:
            raise ValueError(
                f"{where} uses the precompiled normalization rule {proto.normalizer_name!r}, "
                "which this tokenizer does not implement; train with "
                "normalization_rule_name='identity' (as Llama 2 was)"
            )
        if proto.treat_whitespace_as_suffix:
            raise ValueError(f"{where} treats whitespace as a suffix, which this tokenizer does not implement")
        self.proto = proto
        self.pieces = [p.piece for p in proto.pieces]
        self.scores = [p.score for p in proto.pieces]
        self.types = [p.type for p in proto.pieces]
        # Pieces that the merge loop may produce, and "reserved" ones that it never produces.
        self._normal: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._unk_id = -1
        self._byte_id: dict[int, int] = {}   # byte value -> id of its <0xNN> piece
        self._id_byte: dict[int, int] = {}   # id -> byte value
        self._user_defined: set[str] = set()
        for i, p in enumerate(proto.pieces):
            table = self._normal if p.type in (NORMAL, USER_DEFINED, UNUSED) else self._reserved
            if p.piece in table:
                raise ValueError(f"{where}: piece {p.piece!r} is defined twice")
            table[p.piece] = i
            if p.type == USER_DEFINED:
                self._user_defined.add(p.piece)
            elif p.type == UNKNOWN:
                self._unk_id = i
            elif p.type == BYTE:
                m = re.fullmatch(r"<0x([0-9A-F]{2})>", p.piece)
                if m is None:
                    raise ValueError(f"{where}: byte piece {p.piece!r} is not of the form <0xNN>")
                self._byte_id[int(m.group(1), 16)] = i
                self._id_byte[i] = int(m.group(1), 16)
        if self._unk_id < 0:
            raise ValueError(f"{where} has no <unk> piece")

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the model."""
        return len(self.pieces)

    def piece_to_id(self, piece: str) -> int:
        """The id of ``piece``, or the ``<unk>`` id if it is not in the vocabulary."""
        i = self._reserved.get(piece)
        if i is None:
            i = self._normal.get(piece, self._unk_id)
        return i

    def _special_id(self, piece: str) -> int:
        i = self.piece_to_id(piece)
        return i if self.types[i] == CONTROL else -1

    @property
    def bos_id(self) -> int:
        """Id of the beginning-of-sequence piece (``<s>``), or -1 if the model has none."""
        return self._special_id(self.proto.bos_piece)

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence piece (``</s>``), or -1 if the model has none."""
        return self._special_id(self.proto.eos_piece)

    @property
    def unk_id(self) -> int:
        """Id of the unknown piece (``<unk>``)."""
        return self._unk_id

    def id_to_piece(self, i: int) -> str:
        """The piece string of id ``i``.

        Raises:
            ValueError: If ``i`` is not in ``range(vocab_size)``.
        """
        self._check_id(i)
        return self.pieces[i]

    # --8<-- [start:id_to_bytes]
    def id_to_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes of text that id ``i`` stands for, for counting bits per byte.

        A byte piece ``<0xNN>`` is its one byte; a normal or user-defined piece is its text,
        ``▁`` counted as the space it decodes to (the dummy-prefix ``▁`` at the start of a text
        included, although decoding drops it); a control piece (``<s>``, ``</s>``) stands for
        no text, nor do ``<unk>`` and unused pieces, which byte-fallback encoding never
        produces.

        Raises:
            ValueError: If ``i`` is not in ``range(vocab_size)``.
        """
        self._check_id(i)
        if i in self._id_byte:
            return bytes([self._id_byte[i]])
        if self.types[i] in (NORMAL, USER_DEFINED):
            return self.pieces[i].replace(SPACE, " ").encode("utf-8")
        return b""
    # --8<-- [end:id_to_bytes]

    def _check_id(self, i: int) -> None:
        if not (isinstance(i, int) and 0 <= i < len(self.pieces)):
            raise ValueError(f"token id {i!r} is out of range for a vocabulary of {len(self.pieces)}")
