r"""A tokenizer into a GGUF file's ``tokenizer.ggml.*`` keys, and back out as a tokenizer.

GGUF stores a SentencePiece (``"llama"``) vocabulary as three parallel arrays, the pieces, their
scores and their types (SentencePiece's own type numbers), plus the special ids and whether
encoding adds a leading ``▁``. That is everything a BPE ``.model`` with identity normalization
needs to encode and decode, so :func:`tokenizer_from_gguf` can rebuild an equivalent ``.model``
and hand it to :class:`llama.tokenizers.spm.SentencePieceTokenizer`. What GGUF does not store is the rest of
the normalizer: a model that strips repeated spaces (``remove_extra_whitespaces``) would encode
differently in llama.cpp, so it is refused at export.

Byte-level BPE tokenizers (this package's ``.json`` ones, the book's own model's) are stored the
way llama.cpp stores GPT-2's (``tokenizer.ggml.model = "gpt2"``): each token's bytes spelled with
one printable character per byte (:func:`byte_chars`), the merges in rank order, and the name of
the pre-tokenizer, ``"gpt-2"``, whose pattern llama.cpp runs as :data:`llama.tokenizers.bpe.GPT2_PATTERN`
does. Merging by rank, leftmost first, within each chunk is what both encoders do, so llama.cpp
encodes text to the ids :class:`~llama.tokenizers.bpe.BPETokenizer` gives. Llama 3's pattern is refused:
llama.cpp pairs it with a whole-word lookup that this encoder does not make.
"""

from __future__ import annotations

import os
from pathlib import Path

from llama.formats.gguf import GGUFVocab, read_gguf_vocab
from llama.tokenizers.bpe import GPT2_PATTERN, BPETokenizer, is_bpe_file
from llama.tokenizers.protobuf import encode_field
from llama.tokenizers.spm import SentencePieceTokenizer
from llama.tokenizers.spm_vocab import CONTROL

__all__ = ["vocab_from_sentencepiece", "vocab_from_bpe", "vocab_from_tokenizer", "byte_chars", "tokenizer_from_gguf",
           "sentencepiece_model_bytes"]


# --8<-- [start:from_spm]
def vocab_from_sentencepiece(path: str | os.PathLike) -> GGUFVocab:
    """The pieces, scores, types and special ids of a SentencePiece BPE ``.model``, for :func:`~llama.formats.gguf.save_gguf`.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a BPE ``.json`` tokenizer (GGUF's SentencePiece type is the one written), a
            file that is not a SentencePiece BPE model, or one whose normalization GGUF cannot record.
    """
    path = Path(path)
    if is_bpe_file(path):
        raise ValueError(f"{path} is a byte-level BPE tokenizer (.json), not SentencePiece: read it with "
                         "vocab_from_tokenizer, which takes either")
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


# --8<-- [start:from_bpe]
def byte_chars() -> list[str]:
    """GPT-2's printable spelling of the 256 byte values, which GGUF's ``"gpt2"`` tokens use: a byte
    that is a visible Latin-1 character stands for itself, every other byte (space, control bytes)
    for the next unused character from U+0100 on, so that a space is ``"Ġ"`` and a newline ``"Ċ"``.

    >>> chars = byte_chars()
    >>> chars[ord("a")], chars[ord(" ")], chars[ord("\\n")], len(set(chars))
    ('a', 'Ġ', 'Ċ', 256)
    """
    visible = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return [chr(b) if b in visible else chr(next(others)) for b in range(256)]


def vocab_from_bpe(tok: BPETokenizer, name: str = "the tokenizer") -> GGUFVocab:
    """A byte-level BPE as GGUF's ``"gpt2"`` vocabulary: its tokens spelled with :func:`byte_chars`,
    its merges in rank order, GPT-2's pre-tokenizer by name, and its special tokens as
    user-defined (never split, as :meth:`~llama.tokenizers.bpe.BPETokenizer.encode` treats them).

    ``<|endoftext|>``, if it is one of them, is the BOS and EOS id, as in GPT-2. A tokenizer without
    it (the book's has no special token) names neither: llama.cpp then takes id 11 for both, its
    default for such vocabularies, which is the byte 0x0B (never in Tiny Shakespeare), and since
    ``add_bos_token`` is false it never puts it in front of a prompt, as ``llama generate`` does not.

    Raises:
        ValueError: a pre-tokenizer other than GPT-2's, or two tokens with the same bytes (GGUF
            names tokens by their text, so llama.cpp could not tell them apart).
    """
    if tok.pattern != GPT2_PATTERN:
        raise ValueError(f"{name} splits text with another pattern than GPT-2's; llama.cpp runs GPT-2's ('gpt-2') "
                         "as this package does, but Llama 3's with whole-word lookups this encoder does not make: "
                         "export a tokenizer trained with --pattern gpt2 (the default)")
    chars = byte_chars()
    spell = lambda piece: "".join(chars[b] for b in piece)  # noqa: E731
    n_merged = 256 + len(tok.merges)
    pieces = [spell(tok.vocab[i]) for i in range(n_merged)] + list(tok.special_tokens)
    first: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        if first.setdefault(piece, i) != i:
            raise ValueError(f"{name} has two tokens with the same text {tok.id_to_piece(i)!r} (ids {first[piece]} and "
                             f"{i}): GGUF names tokens by their text, so llama.cpp could not tell them apart")
    end = tok.special_tokens.get("<|endoftext|>", -1)  # GPT-2's BOS and EOS, where there is one
    return GGUFVocab(pieces=pieces, scores=[], types=[1] * n_merged + [4] * len(tok.special_tokens), bos_id=end,
                     eos_id=end, model="gpt2", merges=[f"{spell(a)} {spell(b)}" for a, b in tok.merges], pre="gpt-2")
# --8<-- [end:from_bpe]


def vocab_from_tokenizer(path: str | os.PathLike) -> GGUFVocab:
    """The GGUF vocabulary of a tokenizer file: a byte-level BPE ``.json`` (:func:`vocab_from_bpe`)
    or a SentencePiece ``.model`` (:func:`vocab_from_sentencepiece`).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a file neither reads, or a tokenizer that GGUF cannot hold as it encodes.
    """
    path = Path(path)
    if is_bpe_file(path):
        return vocab_from_bpe(BPETokenizer.load(path), str(path))
    return vocab_from_sentencepiece(path)


def _bpe_from_vocab(vocab: GGUFVocab, path: str | os.PathLike) -> BPETokenizer:
    """The :class:`~llama.tokenizers.bpe.BPETokenizer` of a ``"gpt2"`` vocabulary laid out as :func:`vocab_from_bpe`
    writes one: the 256 bytes in order, then one token per merge, then the special tokens."""
    if vocab.pre != "gpt-2":
        raise ValueError(f"{path} stores a byte-level BPE with the pre-tokenizer {vocab.pre!r}; only GPT-2's "
                         "('gpt-2') is read here: pass the tokenizer file with --tokenizer")
    ids = {piece: i for i, piece in enumerate(vocab.pieces)}
    merges = [tuple(m.split(" ")) for m in vocab.merges]
    if (vocab.pieces[:256] != byte_chars() or len(vocab.pieces) < 256 + len(merges)
            or any(len(m) != 2 or m[0] + m[1] != vocab.pieces[256 + k] for k, m in enumerate(merges))):
        raise ValueError(f"{path} stores a byte-level BPE whose ids are not laid out as this package's (the 256 bytes "
                         "in order, then one token per merge): pass the tokenizer file with --tokenizer")
    return BPETokenizer([(ids[a], ids[b]) for a, b in merges], vocab.pieces[256 + len(merges):], GPT2_PATTERN)


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
        out += encode_field(1, encode_field(1, piece) + encode_field(2, float(score)) + encode_field(3, int(kind)))
    trainer = (encode_field(3, 2) + encode_field(4, len(vocab.pieces)) + encode_field(35, int(6 in vocab.types))
               + encode_field(45, piece_at(vocab.unk_id, "<unk>")) + encode_field(46, piece_at(vocab.bos_id, "<s>"))
               + encode_field(47, piece_at(vocab.eos_id, "</s>")))
    normalizer = encode_field(1, "identity") + encode_field(3, int(vocab.add_space_prefix)) + encode_field(4, 0)
    return bytes(out + encode_field(2, trainer) + encode_field(3, normalizer))
# --8<-- [end:to_spm]


def tokenizer_from_gguf(path: str | os.PathLike) -> SentencePieceTokenizer | BPETokenizer:
    """The tokenizer stored in a GGUF file, ready to encode and decode: SentencePiece, or byte-level BPE.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a GGUF file, no tokenizer in it, or one that this package cannot rebuild.
    """
    vocab = read_gguf_vocab(path)
    if vocab is None:
        raise ValueError(f"{path} stores no tokenizer (no tokenizer.ggml.model key): pass --tokenizer when exporting")
    if vocab.model == "gpt2":
        return _bpe_from_vocab(vocab, path)
    return SentencePieceTokenizer.from_bytes(sentencepiece_model_bytes(vocab))
