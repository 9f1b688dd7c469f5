"""Tokenizers (part II): byte-level BPE and SentencePiece, written by hand, and one loader for both.

Modules, in the order the book meets them: :mod:`~llama.tokenizers.pretokenize`,
:mod:`~llama.tokenizers.bpe`, :mod:`~llama.tokenizers.protobuf`, :mod:`~llama.tokenizers.spm_vocab`,
:mod:`~llama.tokenizers.spm`, :mod:`~llama.tokenizers.tokenizer`, :mod:`~llama.tokenizers.gguf_vocab`.
Every public name of these modules can be imported from the package itself
(``from llama.tokenizers import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "GPT2_PATTERN": "pretokenize", "LLAMA3_PATTERN": "pretokenize", "pre_tokenize": "pretokenize",
    "MAX_VOCAB_BYTES": "bpe", "BPETokenizer": "bpe", "is_bpe_file": "bpe",
    "read_varint": "protobuf", "iter_fields": "protobuf", "as_int32": "protobuf", "as_float32": "protobuf",
    "as_text": "protobuf", "encode_varint": "protobuf", "encode_field": "protobuf",
    "SentencePieceVocab": "spm_vocab", "ModelProto": "spm_vocab", "Piece": "spm_vocab",
    "read_model_proto": "spm_vocab", "SPACE": "spm_vocab",
    "SentencePieceTokenizer": "spm",
    "Tokenizer": "tokenizer", "train_sentencepiece": "tokenizer", "load_tokenizer": "tokenizer",
    "saved_tokenizer": "tokenizer", "tokenizer_file": "tokenizer", "LLAMA2_TRAINER_OPTIONS": "tokenizer",
    "vocab_from_sentencepiece": "gguf_vocab", "vocab_from_bpe": "gguf_vocab",
    "vocab_from_tokenizer": "gguf_vocab", "byte_chars": "gguf_vocab", "tokenizer_from_gguf": "gguf_vocab",
    "sentencepiece_model_bytes": "gguf_vocab",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.tokenizers.pretokenize import GPT2_PATTERN, LLAMA3_PATTERN, pre_tokenize
    from llama.tokenizers.bpe import BPETokenizer, MAX_VOCAB_BYTES, is_bpe_file
    from llama.tokenizers.protobuf import (
        as_float32, as_int32, as_text, encode_field, encode_varint, iter_fields, read_varint,
    )
    from llama.tokenizers.spm_vocab import ModelProto, Piece, SPACE, SentencePieceVocab, read_model_proto
    from llama.tokenizers.spm import SentencePieceTokenizer
    from llama.tokenizers.tokenizer import (
        LLAMA2_TRAINER_OPTIONS, Tokenizer, load_tokenizer, saved_tokenizer, tokenizer_file,
        train_sentencepiece,
    )
    from llama.tokenizers.gguf_vocab import (
        byte_chars, sentencepiece_model_bytes, tokenizer_from_gguf, vocab_from_bpe, vocab_from_sentencepiece,
        vocab_from_tokenizer,
    )
