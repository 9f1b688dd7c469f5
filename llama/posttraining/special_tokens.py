r"""New special tokens for a trained tokenizer and model: ids appended, nothing retrained.

A chat format needs tokens that no text can produce (where a turn starts and ends); a
pre-trained tokenizer has none of them. Both of the book's tokenizers can take new tokens at the
end of their vocabulary without changing the id of any existing one:

* :class:`~llama.tokenizers.bpe.BPETokenizer` keeps *special tokens* after its merges: they are
  cut out of the text before pre-tokenization, so a merge never splits them;
* :class:`~llama.tokenizers.spm.SentencePieceTokenizer` has *user-defined* pieces, which
  SentencePiece itself (its ``user_defined_symbols``) matches whole before any merge. They are
  written into a new ``.model`` file (:func:`write_model_proto`) that the ``sentencepiece``
  library reads too.

The model then needs a row of its embedding and of its output head for each new id
(:func:`resize_vocab`). Each new row is the *mean* of the existing ones: with the output row at
the mean, the new token's logit is the mean of the old logits, which is never above their
log-sum-exp minus $\log V$, so the new token starts less likely than an average one and the
model's predictions of old tokens barely move (the chapter measures it against random rows).

>>> from llama.tokenizers.bpe import BPETokenizer
>>> tok = add_special_tokens(BPETokenizer.train("hello hello world", 260), ["<|eot_id|>"])
>>> tok.vocab_size, tok.encode("hi<|eot_id|>")
(261, [104, 105, 260])
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from llama._files import atomic_write_bytes
from llama.model.linear import Linear
from llama.model.transformer import Transformer
from llama.tokenizers.bpe import BPETokenizer
from llama.tokenizers.spm import SentencePieceTokenizer
from llama.tokenizers.spm_vocab import USER_DEFINED, ModelProto

__all__ = ["add_special_tokens", "special_token_ids", "save_tokenizer", "write_model_proto", "resize_vocab"]


# --8<-- [start:add]
def add_special_tokens(tokenizer, tokens: Sequence[str]):
    """A copy of ``tokenizer`` with ``tokens`` appended as special tokens (those it lacks).

    Existing ids keep their meaning; the new tokens get the next ids, in order. Text is encoded as
    before, except that a new token's string is now one id, never split.

    Args:
        tokenizer: a :class:`~llama.tokenizers.bpe.BPETokenizer` or a
            :class:`~llama.tokenizers.spm.SentencePieceTokenizer`.
        tokens: the strings to add, e.g. ``["<|start_header_id|>", "<|eot_id|>"]``.

    Returns:
        A new tokenizer of the same kind. A SentencePiece one also stops adding the dummy ``▁``
        at the start of a text: in a chat every text follows a special token, and a ``▁`` before
        the first one would be a token that carries nothing.

    Raises:
        ValueError: a token is empty, or a SentencePiece tokenizer has it as an ordinary piece.
        TypeError: ``tokenizer`` is of another kind.
    """
    if any(not isinstance(t, str) or not t for t in tokens):
        raise ValueError(f"special tokens must be non-empty strings, got {list(tokens)!r}")
    if isinstance(tokenizer, BPETokenizer):
        new = [t for t in dict.fromkeys(tokens) if t not in tokenizer.special_tokens]
        tok = BPETokenizer(tokenizer.merge_ids, [*tokenizer.special_tokens, *new], tokenizer.pattern)
        tok._source = tokenizer._source
        return tok
    if isinstance(tokenizer, SentencePieceTokenizer):
        proto = tokenizer.proto
        have = {p.piece: p.type for p in proto.pieces}
        clash = [t for t in tokens if t in have and have[t] != USER_DEFINED]
        if clash:
            raise ValueError(f"{clash[0]!r} is already an ordinary piece of this SentencePiece model, so "
                             "text could spell it: choose special tokens the vocabulary does not have")
        pieces = list(proto.pieces) + [type(proto.pieces[0])(t, 0.0, USER_DEFINED)
                                       for t in dict.fromkeys(tokens) if t not in have]
        new_proto = replace(proto, pieces=pieces, vocab_size=len(pieces), add_dummy_prefix=False)
        return SentencePieceTokenizer.from_bytes(write_model_proto(new_proto))
    raise TypeError(f"add_special_tokens takes a BPETokenizer or a SentencePieceTokenizer, "
                    f"got {type(tokenizer).__name__}")
# --8<-- [end:add]


def special_token_ids(tokenizer, tokens: Sequence[str]) -> dict[str, int]:
    """The id of each of ``tokens`` in ``tokenizer``, where each is a special (never split) token.

    Raises:
        ValueError: one or more of ``tokens`` is not a special token of ``tokenizer``; the message
            names them and the fix.
    """
    if isinstance(tokenizer, BPETokenizer):
        found = {t: tokenizer.special_tokens[t] for t in tokens if t in tokenizer.special_tokens}
    elif isinstance(tokenizer, SentencePieceTokenizer):
        found = {t: i for t in tokens if tokenizer.types[i := tokenizer.piece_to_id(t)] == USER_DEFINED
                 and tokenizer.pieces[i] == t}
    else:
        found = {}
    missing = [t for t in tokens if t not in found]
    if missing:
        raise ValueError(f"the tokenizer has no special token {', '.join(missing)}: it was not prepared for "
                         "chat; add them with llama.posttraining.special_tokens.add_special_tokens (and the "
                         "model's rows with resize_vocab), then fine-tune")
    return found


def save_tokenizer(tokenizer, path: str | os.PathLike) -> Path:
    """Write ``tokenizer`` to ``path`` (atomically), in the file format :func:`~llama.tokenizers.tokenizer.load_tokenizer`
    reads: a BPE JSON file, or a SentencePiece ``.model``. Returns the path."""
    path = Path(path)
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(path)
    elif isinstance(tokenizer, SentencePieceTokenizer):
        atomic_write_bytes(path, write_model_proto(tokenizer.proto))
    else:
        raise TypeError(f"save_tokenizer takes a BPETokenizer or a SentencePieceTokenizer, got {type(tokenizer).__name__}")
    return path


# --8<-- [start:write_proto]
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32s are sent as 64-bit two's complement
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: int | float | str | bytes) -> bytes:
    """One field: a varint for ints and bools, 4 bytes for a float, a length and bytes otherwise."""
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, int):
        return _varint(number << 3 | 0) + _varint(int(value))
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def write_model_proto(proto: ModelProto) -> bytes:
    """Serialize a :class:`~llama.tokenizers.spm_vocab.ModelProto` as a SentencePiece ``.model``.

    The inverse of :func:`~llama.tokenizers.spm_vocab.read_model_proto` for what it reads: the
    pieces (``piece = 1``, ``score = 2``, ``type = 3``), the ``TrainerSpec`` fields that encoding
    and decoding use, and the ``NormalizerSpec`` flags, with the field numbers of
    ``sentencepiece_model.proto``. The ``sentencepiece`` library loads the result.
    """
    model_types = {"unigram": 1, "bpe": 2, "word": 3, "char": 4}
    pieces = b"".join(_field(1, _field(1, p.piece) + _field(2, float(p.score)) + _field(3, p.type))
                      for p in proto.pieces)
    trainer = (_field(3, model_types[proto.model_type]) + _field(4, len(proto.pieces))
               + _field(24, proto.treat_whitespace_as_suffix) + _field(25, proto.split_digits)
               + _field(35, proto.byte_fallback) + _field(44, proto.unk_surface) + _field(45, proto.unk_piece)
               + _field(46, proto.bos_piece) + _field(47, proto.eos_piece) + _field(48, proto.pad_piece))
    normalizer = (_field(1, proto.normalizer_name) + _field(3, proto.add_dummy_prefix)
                  + _field(4, proto.remove_extra_whitespaces) + _field(5, proto.escape_whitespaces))
    return pieces + _field(2, trainer) + _field(3, normalizer)
# --8<-- [end:write_proto]


# --8<-- [start:resize]
@torch.no_grad()
def resize_vocab(model: Transformer, vocab_size: int, init: str = "mean",
                 generator: torch.Generator | None = None) -> Transformer:
    """Give ``model`` rows for ids ``config.vocab_size .. vocab_size - 1``, in place.

    Args:
        model: a float model (quantize after, not before).
        vocab_size: the new vocabulary size, at least the old one.
        init: ``"mean"``: each new embedding and output row is the mean of the old rows, so a new
            token enters as an average token and its logit is the mean of the old logits;
            ``"random"``: normal with the standard deviation of the old rows' entries (what the
            chapter compares against).
        generator: random numbers for ``init="random"``.

    Returns:
        ``model``, with ``config.vocab_size`` updated. A tied head stays tied to the embedding.

    Raises:
        ValueError: ``vocab_size`` is smaller than the model's, ``init`` is unknown, or the model
            holds integer weights.
    """
    old, dim = model.config.vocab_size, model.config.dim
    if not isinstance(vocab_size, int) or vocab_size < old:
        raise ValueError(f"vocab_size must be at least the model's {old}, got {vocab_size!r}: rows are added, never removed")
    if init not in ("mean", "random"):
        raise ValueError(f"init must be 'mean' or 'random', got {init!r}")
    if not isinstance(model.output, nn.Linear) or not model.output.weight.is_floating_point():
        raise ValueError("this model holds integer weights: add the rows to the float model, then quantize it")
    tied = model.output.weight is model.tok_embeddings.weight

    def grown(weight: torch.Tensor) -> torch.Tensor:
        if init == "mean":
            rows = weight.mean(0, keepdim=True).expand(vocab_size - old, dim)
        else:
            rows = torch.randn(vocab_size - old, dim, generator=generator, dtype=torch.float32).to(weight) * weight.std()
        return torch.cat([weight, rows])

    emb = nn.Embedding(vocab_size, dim, dtype=model.tok_embeddings.weight.dtype, device=model.tok_embeddings.weight.device)
    emb.weight.copy_(grown(model.tok_embeddings.weight))
    model.tok_embeddings = emb
    if tied:
        model.output = Linear(dim, vocab_size, bias=False, device="meta")
        model.output.weight = emb.weight
    else:
        head = grown(model.output.weight)
        model.output = Linear(dim, vocab_size, bias=False, dtype=head.dtype, device=head.device)
        model.output.weight.copy_(head)
    model.config = replace(model.config, vocab_size=vocab_size)
    return model
# --8<-- [end:resize]
