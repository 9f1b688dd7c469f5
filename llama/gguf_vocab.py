r"""A SentencePiece tokenizer into a GGUF file's ``tokenizer.ggml.*`` keys, and back out as a tokenizer.

GGUF stores a SentencePiece (``"llama"``) vocabulary as three parallel arrays, the pieces, their
scores and their types (SentencePiece's own type numbers), plus the special ids and whether
encoding adds a leading ``▁``. That is everything a BPE ``.model`` with identity normalization
needs to encode and decode, so :func:`tokenizer_from_gguf` can rebuild an equivalent ``.model``
and hand it to :class:`llama.spm.SentencePieceTokenizer`. What GGUF does not store is the rest of
the normalizer: a model that strips repeated spaces (``remove_extra_whitespaces``) would encode
differently in llama.cpp, so it is refused at export.

Byte-level BPE tokenizers (this package's ``.json`` ones, GPT-2 and Llama 3 style) are stored by
GGUF differently (``tokenizer.ggml.model = "gpt2"`` with a merges list and a named pre-tokenizer
that llama.cpp must know); they are not exported here.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from llama._files import open_for_reading
from llama.gguf import GGUFVocab, read_gguf_vocab
from llama.spm import SentencePieceTokenizer
from llama.spm_vocab import CONTROL

__all__ = ["vocab_from_sentencepiece", "tokenizer_from_gguf", "sentencepiece_model_bytes"]


# --8<-- [start:from_spm]
def vocab_from_sentencepiece(path: str | os.PathLike) -> GGUFVocab:
    """The pieces, scores, types and special ids of a SentencePiece BPE ``.model``, for :func:`~llama.gguf.save_gguf`.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a BPE ``.json`` tokenizer (GGUF's SentencePiece type is the one written), a
            file that is not a SentencePiece BPE model, or one whose normalization GGUF cannot record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    with open_for_reading(path) as f:
        head = f.read(1)
    if head == b"{":
        raise ValueError(f"{path} is a byte-level BPE tokenizer (.json); GGUF export writes SentencePiece "
                         "tokenizers (tokenizer.ggml.model 'llama'): pass a SentencePiece .model, or no --tokenizer")
    tok = SentencePieceTokenizer(path)
    if tok.proto.remove_extra_whitespaces:
        raise ValueError(f"{path} removes repeated spaces before encoding (remove_extra_whitespaces), which GGUF "
                         "does not record: llama.cpp would encode differently; retrain with "
                         "remove_extra_whitespaces=False (as Llama 2 was)")
    pad = tok.piece_to_id(tok.proto.pad_piece)
    return GGUFVocab(pieces=list(tok.pieces), scores=list(tok.scores), types=list(tok.types),
                     bos_id=tok.bos_id, eos_id=tok.eos_id, unk_id=tok.unk_id,
                     pad_id=pad if tok.types[pad] == CONTROL else -1, add_space_prefix=tok.proto.add_dummy_prefix)
# --8<-- [end:from_spm]


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are sent as 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: int | float | str | bytes) -> bytes:
    """One protobuf field: varint (int, bool), fixed32 float, or length-delimited text/bytes."""
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, int):
        return _varint(number << 3 | 0) + _varint(value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


# --8<-- [start:to_spm]
def sentencepiece_model_bytes(vocab: GGUFVocab) -> bytes:
    """A SentencePiece ``ModelProto`` (the bytes of a ``.model``) equivalent to a GGUF vocabulary.

    Field numbers are those of ``sentencepiece_model.proto``: pieces 1 (piece 1, score 2, type 3),
    trainer_spec 2 (model_type 3 = BPE, vocab_size 4, byte_fallback 35, the special pieces 45-47),
    normalizer_spec 3 (name 1 ``"identity"``, add_dummy_prefix 3, remove_extra_whitespaces 4).
    """
    def piece_at(i: int, default: str) -> str:
        return vocab.pieces[i] if 0 <= i < len(vocab.pieces) else default

    out = bytearray()
    for piece, score, kind in zip(vocab.pieces, vocab.scores, vocab.types):
        out += _field(1, _field(1, piece) + _field(2, float(score)) + _field(3, int(kind)))
    trainer = (_field(3, 2) + _field(4, len(vocab.pieces)) + _field(35, int(6 in vocab.types))
               + _field(45, piece_at(vocab.unk_id, "<unk>")) + _field(46, piece_at(vocab.bos_id, "<s>"))
               + _field(47, piece_at(vocab.eos_id, "</s>")))
    normalizer = _field(1, "identity") + _field(3, int(vocab.add_space_prefix)) + _field(4, 0)
    return bytes(out + _field(2, trainer) + _field(3, normalizer))
# --8<-- [end:to_spm]


def tokenizer_from_gguf(path: str | os.PathLike) -> SentencePieceTokenizer:
    """The SentencePiece tokenizer stored in a GGUF file, ready to encode and decode.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a GGUF file, no tokenizer in it, or a tokenizer other than SentencePiece.
    """
    vocab = read_gguf_vocab(path)
    if vocab is None:
        raise ValueError(f"{path} stores no tokenizer (no tokenizer.ggml.model key): pass --tokenizer when exporting")
    return SentencePieceTokenizer.from_bytes(sentencepiece_model_bytes(vocab))
