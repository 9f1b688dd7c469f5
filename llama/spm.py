r"""A SentencePiece BPE tokenizer written by hand: model file reader, encoder and decoder.

SentencePiece stores a model as a protocol-buffer message (``ModelProto``): a list of
*pieces* (string, score, type), a ``TrainerSpec`` with the options it was trained with and a
``NormalizerSpec`` that says how raw text is cleaned before it is cut into pieces. This
module reads that file with a short hand-written protobuf wire-format parser and reproduces what
the ``sentencepiece`` library does for BPE models such as Llama 2's:

1. *normalize*: optionally drop extra spaces, add a dummy ``▁`` at the start and write every
   space as ``▁`` (U+2581);
2. *merge*: start from single characters and repeatedly merge the adjacent pair whose merged
   string is a piece with the highest score (leftmost first on ties);
3. *fall back*: a character that is not a piece becomes its UTF-8 bytes as ``<0xNN>``
   pieces (or ``<unk>`` when the model has no byte pieces).

Examples:
    >>> import io, sentencepiece
    >>> buf = io.BytesIO()
    >>> sentencepiece.SentencePieceTrainer.train(
    ...     sentence_iterator=iter(["hello world", "hello there"] * 50), model_writer=buf,
    ...     model_type="bpe", vocab_size=280, byte_fallback=True,
    ...     normalization_rule_name="identity", minloglevel=2)
    >>> tok = SentencePieceTokenizer.from_bytes(buf.getvalue())
    >>> tok.encode_as_pieces("hello Wörld")
    ['▁hello', '▁', '<0x57>', '<0xC3>', '<0xB6>', 'r', 'ld']
    >>> tok.decode(tok.encode("hello Wörld"))
    'hello Wörld'
"""

from __future__ import annotations

import heapq
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from llama.bpe import _check_utf8

__all__ = ["SentencePieceTokenizer", "ModelProto", "read_model_proto", "SPACE"]

SPACE = "\u2581"  # "▁", LOWER ONE EIGHTH BLOCK: how SentencePiece writes a space

# Piece types (ModelProto.SentencePiece.Type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


# --8<-- [start:wire]
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a base-128 varint at ``pos``: 7 bits per byte, low bits first, high bit = more."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes):
    """Yield ``(field number, value)`` for each field of a serialized protobuf message.

    A field starts with a varint key ``number << 3 | wire_type``. Wire type 0 is a varint,
    1 is 8 fixed bytes, 2 is a length-prefixed byte string (strings, bytes and nested
    messages alike), 5 is 4 fixed bytes. Values of wire types 1, 2 and 5 come out as bytes.
    """
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type in (1, 2, 5):
            if wire_type == 2:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire_type == 1 else 4
            if pos + size > len(buf):
                raise ValueError(f"field {number} runs past the end of the data")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire_type} (field {number})")
        yield number, value
# --8<-- [end:wire]


def _int32(value: int) -> int:
    """A protobuf int32 is sent as a 64-bit two's-complement varint: -1 is 2**64 - 1."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: bytes | int) -> str:
    if not isinstance(value, bytes):
        raise ValueError("expected a string field")
    return value.decode("utf-8")


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
    for number, value in _fields(data):
        if number == 1:  # repeated SentencePiece pieces
            m.has_pieces = True
            p = Piece("")
            for n, v in _fields(value):
                if n == 1:
                    p.piece = _text(v)
                elif n == 2:
                    p.score = struct.unpack("<f", v)[0]
                elif n == 3:
                    p.type = v
            m.pieces.append(p)
        elif number == 2:  # TrainerSpec
            m.has_trainer_spec = True
            for n, v in _fields(value):
                if n == 3:
                    m.model_type = _MODEL_TYPES.get(v, f"unknown ({v})")
                elif n == 4:
                    m.vocab_size = _int32(v)
                elif n == 35:
                    m.byte_fallback = bool(v)
                elif n == 24:
                    m.treat_whitespace_as_suffix = bool(v)
                elif n == 25:
                    m.split_digits = bool(v)
                elif n in (44, 45, 46, 47, 48):
                    name = {44: "unk_surface", 45: "unk_piece", 46: "bos_piece",
                            47: "eos_piece", 48: "pad_piece"}[n]
                    setattr(m, name, _text(v))
        elif number == 3:  # NormalizerSpec
            m.has_normalizer_spec = True
            for n, v in _fields(value):
                if n == 1:
                    m.normalizer_name = _text(v)
                elif n == 2:
                    m.precompiled_charsmap = v
                elif n == 3:
                    m.add_dummy_prefix = bool(v)
                elif n == 4:
                    m.remove_extra_whitespaces = bool(v)
                elif n == 5:
                    m.escape_whitespaces = bool(v)
        elif number == 5:  # denormalizer_spec
            for n, v in _fields(value):
                if n == 2:
                    m.denormalizer_charsmap = v
    return m
# --8<-- [end:read_model]


class SentencePieceTokenizer:
    """Encode and decode text exactly like ``sentencepiece`` does with a BPE ``.model``.

    Args:
        model_path: Path of a SentencePiece model file (e.g. Llama 2's ``tokenizer.model``).

    Raises:
        FileNotFoundError: If ``model_path`` does not exist.
        ValueError: If the file is not a SentencePiece model, or uses a feature this reader
            does not implement (a Unigram model, a precompiled normalization rule such as
            ``nmt_nfkc``, whitespace as suffix).
    """

    def __init__(self, model_path: str | os.PathLike) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        self._setup(path.read_bytes(), str(path))

    @classmethod
    def from_bytes(cls, data: bytes) -> SentencePieceTokenizer:
        """Build a tokenizer from the bytes of a ``.model`` file."""
        self = cls.__new__(cls)
        self._setup(bytes(data), "<bytes>")
        return self

    def _setup(self, data: bytes, where: str) -> None:
        try:
            proto = read_model_proto(data)
        except (ValueError, UnicodeDecodeError, struct.error) as err:
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
        user_defined = []
        for i, p in enumerate(proto.pieces):
            table = self._normal if p.type in (NORMAL, USER_DEFINED, UNUSED) else self._reserved
            if p.piece in table:
                raise ValueError(f"{where}: piece {p.piece!r} is defined twice")
            table[p.piece] = i
            if p.type == USER_DEFINED:
                user_defined.append(p.piece)
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
        self._byte_fallback = proto.byte_fallback
        self._user_defined = set(user_defined)
        self._user_lengths = sorted({len(s) for s in user_defined}, reverse=True)
        self._cache: dict[str, list[int]] = {}
        self._words = _word_splitter(self._normal)
        self._neg_score = {p: -self.scores[i] for p, i in self._normal.items()}  # min-heap key
        self._unused_pieces = {p for p, i in self._normal.items() if self.types[i] == UNUSED}

    # ----------------------------------------------------------------- lookups
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
        """The piece string of id ``i``."""
        self._check_id(i)
        return self.pieces[i]

    def _check_id(self, i: int) -> None:
        if not (isinstance(i, int) and 0 <= i < len(self.pieces)):
            raise ValueError(f"token id {i!r} is out of range for a vocabulary of {len(self.pieces)}")

    # ----------------------------------------------------------------- normalize
    def _prefix(self, text: str, pos: int) -> int:
        """Length of the symbol starting at ``pos``: a user-defined piece, else one character."""
        for n in self._user_lengths:
            if text[pos : pos + n] in self._user_defined:
                return n
        return 1

    # --8<-- [start:normalize]
    def normalize(self, text: str) -> str:
        """Apply the model's ``NormalizerSpec`` (identity rule) to ``text``.

        Examples:
            >>> tok = SentencePieceTokenizer.from_bytes(_tiny_model())
            >>> tok.normalize("Hello  world")
            '▁Hello▁▁world'
        """
        p = self.proto
        ws = SPACE if p.escape_whitespaces else " "
        if not self._user_defined:  # fast path: one symbol per character
            if p.remove_extra_whitespaces:
                text = re.sub(" {2,}", " ", text.lstrip(" "))
            if not text:
                return ""
            out = (ws if p.add_dummy_prefix else "") + (text.replace(" ", ws) if p.escape_whitespaces else text)
            return out.rstrip(ws) if p.remove_extra_whitespaces else out
        # General path, symbol by symbol: user-defined pieces are copied unchanged.
        pos, n = 0, len(text)
        if p.remove_extra_whitespaces:
            while pos < n and text[pos] == " " and self._prefix(text, pos) == 1:
                pos += 1
        if pos == n:
            return ""
        out = [ws] if p.add_dummy_prefix else []
        prev_space = p.remove_extra_whitespaces
        while pos < n:
            size = self._prefix(text, pos)
            sym = text[pos : pos + size]
            if prev_space:
                sym = sym.lstrip(" ")
            if sym:
                out.append(sym.replace(" ", ws) if p.escape_whitespaces else sym)
                prev_space = p.remove_extra_whitespaces and sym.endswith(" ")
            pos += size
        result = "".join(out)
        return result.rstrip(ws) if p.remove_extra_whitespaces else result
    # --8<-- [end:normalize]

    # ----------------------------------------------------------------- encode
    # --8<-- [start:merge]
    def _merge(self, text: str) -> list[str]:
        """Split normalized ``text`` into pieces by score-ordered BPE merges (a heap)."""
        if self._user_defined:
            symbols, frozen, pos = [], [], 0
            while pos < len(text):
                size = self._prefix(text, pos)
                symbols.append(text[pos : pos + size])
                frozen.append(size > 1 or text[pos] in self._user_defined)
                pos += size
        else:
            symbols, frozen = list(text), None
        n = len(symbols)
        nxt = list(range(1, n + 1))  # linked list over surviving symbols; n means "end"
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, str]] = []  # (-score, left, right, merged)
        neg_score, unused_pieces = self._neg_score, self._unused_pieces
        unused: dict[str, tuple[str, str]] = {}  # merged UNUSED piece -> its two parts

        def push(left: int, right: int) -> None:
            if left < 0 or right >= n or (frozen and (frozen[left] or frozen[right])):
                return
            merged = symbols[left] + symbols[right]
            score = neg_score.get(merged)
            if score is not None:
                heapq.heappush(heap, (score, left, right, merged))
                if merged in unused_pieces:  # remember how to split it again
                    unused[merged] = (symbols[left], symbols[right])

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            a, b = symbols[left], symbols[right]
            if not a or not b or nxt[left] != right or len(a) + len(b) != len(merged):
                continue  # stale: a side was merged into something else since the push
            symbols[left], symbols[right] = merged, ""
            nxt[left] = nxt[right]
            if nxt[right] < n:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])

        out: list[str] = []

        def resegment(piece: str) -> None:  # UNUSED pieces are split back into their parts
            i = self._normal.get(piece)
            if i is not None and self.types[i] == UNUSED and piece in unused:
                resegment(unused[piece][0])
                resegment(unused[piece][1])
            else:
                out.append(piece)

        i = 0 if n else n
        while i < n:
            resegment(symbols[i])
            i = nxt[i]
        return out
    # --8<-- [end:merge]

    # --8<-- [start:to_ids]
    def _to_ids(self, pieces: list[str]) -> list[int]:
        """Map pieces to ids; an unknown piece becomes its UTF-8 bytes, or ``<unk>``."""
        ids = []
        for piece in pieces:
            i = self.piece_to_id(piece)
            if i == self._unk_id and self._byte_fallback:
                ids.extend(self._byte_id.get(b, self._unk_id) for b in piece.encode("utf-8"))
            else:
                ids.append(i)
        return ids
    # --8<-- [end:to_ids]

    # --8<-- [start:encode_normalized]
    def _encode_normalized(self, normalized: str) -> list[int]:
        """Encode normalized text word by word (see :func:`_word_splitter`), with a cache."""
        ids: list[int] = []
        cache = self._cache
        for word in self._words(normalized):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._to_ids(self._merge(word))
                if len(cache) < 200_000:
                    cache[word] = word_ids
            ids.extend(word_ids)
        return ids
    # --8<-- [end:encode_normalized]

    # --8<-- [start:encode]
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Encode ``text`` to ids, as ``SentencePieceProcessor.encode`` does.

        Args:
            text: Any valid Unicode string.
            bos: Prepend the beginning-of-sequence id.
            eos: Append the end-of-sequence id.

        Returns:
            The token ids.

        Raises:
            ValueError: If ``text`` contains a lone surrogate, or ``bos``/``eos`` is asked
                for but the model has no such piece.
        """
        _check_utf8(text)
        ids = self._encode_normalized(self.normalize(text))
        if not self._byte_fallback:  # a run of unknown characters becomes one <unk>
            ids = [t for k, t in enumerate(ids) if t != self._unk_id or k == 0 or ids[k - 1] != t]
        if bos:
            ids.insert(0, self._required(self.bos_id, "bos"))
        if eos:
            ids.append(self._required(self.eos_id, "eos"))
        return ids
    # --8<-- [end:encode]

    def _required(self, i: int, name: str) -> int:
        if i < 0:
            raise ValueError(f"this model has no {name} piece")
        return i

    def clear_cache(self) -> None:
        """Forget the encodings of words seen so far (they are cached: words repeat a lot)."""
        self._cache.clear()

    def encode_as_pieces(self, text: str) -> list[str]:
        """Encode ``text`` and return the piece strings instead of ids."""
        return [self.pieces[i] for i in self.encode(text)]

    # ----------------------------------------------------------------- decode
    # --8<-- [start:decode]
    def decode(self, ids: Iterable[int]) -> str:
        """Turn ids back into text, as ``SentencePieceProcessor.decode`` does.

        ``▁`` becomes a space, except that the first one of the text is dropped (it is the
        dummy prefix); runs of byte pieces are joined and decoded as UTF-8, one U+FFFD per
        invalid byte; control pieces (``<s>``, ``</s>``) are invisible; ``<unk>`` shows as
        ``" ⁇ "``.

        Raises:
            ValueError: If an id is not in ``range(vocab_size)``.
        """
        ids = list(ids)
        for i in ids:
            self._check_id(i)
        p = self.proto
        strip_first = p.add_dummy_prefix or p.remove_extra_whitespaces
        out: list[str] = []
        pending = bytearray()  # consecutive byte pieces
        at_start, stripped, has_text = True, False, False
        for i in ids:
            if i in self._id_byte:
                pending.append(self._id_byte[i])
                continue
            if pending:
                out.append(_decode_bytes(pending))
                has_text = has_text or bool(out[-1])
                pending.clear()
            if stripped or has_text:
                at_start = False
            kind, piece, stripped = self.types[i], self.pieces[i], False
            if kind == CONTROL:
                text = ""
            elif kind == UNKNOWN:
                text = p.unk_surface
            else:
                if at_start and strip_first and piece.startswith(SPACE):
                    piece = piece[1:]
                    stripped = not p.remove_extra_whitespaces
                text = piece.replace(SPACE, " ")
            out.append(text)
            has_text = has_text or bool(text)
        if pending:
            out.append(_decode_bytes(pending))
        return "".join(out)
    # --8<-- [end:decode]


# --8<-- [start:word_splitter]
def _word_splitter(pieces: Iterable[str]):
    """Return a function that cuts normalized text where no merge can ever cross.

    A merge produces a piece of the vocabulary, so a cut between two characters is safe
    when no piece contains them side by side. Two kinds of cuts are cheap to find and
    cover almost every boundary:

    * around a character that occurs in no piece of two or more characters (Llama 2:
      ``\\n``, tabs, emoji, ...);
    * before a run of ``▁`` that follows another character, provided no piece has a ``▁``
      right after a character other than ``▁`` (true for Llama 2: pieces are ``▁word``
      or all ``▁``).

    Cut pieces are then encoded independently (and cached), with the same result as
    encoding the whole text at once, because the heap would never merge across a cut.
    """
    pieces = list(pieces)
    joinable = {c for p in pieces if len(p) > 1 for c in p}
    cut_before_space = not any(
        p[k] == SPACE and p[k - 1] != SPACE for p in pieces for k in range(1, len(p))
    )
    if not joinable:
        return list
    inner = "".join(re.escape(c) for c in sorted(joinable - {SPACE}))
    if cut_before_space and SPACE in joinable:
        alternatives = [f"{SPACE}+[{inner}]*" if inner else f"{SPACE}+"]
    else:
        inner = "".join(re.escape(c) for c in sorted(joinable))
        alternatives = []
    if inner:
        alternatives.append(f"[{inner}]+")
    alternatives.append("(?s:.)")
    return re.compile("|".join(alternatives)).findall
# --8<-- [end:word_splitter]


def _decode_bytes(data: bytes | bytearray) -> str:
    """Decode UTF-8 like SentencePiece: each byte that does not start a valid character
    becomes one U+FFFD (Python's ``errors='replace'`` may use one for several bytes)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out, pos, n = [], 0, len(data)
    while pos < n:
        lead = data[pos]
        size = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 0
        try:
            if size == 0 or pos + size > n:
                raise UnicodeDecodeError("utf-8", b"", 0, 1, "invalid")
            out.append(bytes(data[pos : pos + size]).decode("utf-8"))
            pos += size
        except UnicodeDecodeError:
            out.append("\ufffd")
            pos += 1
    return "".join(out)


def _tiny_model() -> bytes:
    """A small model trained in memory, for the docstring examples."""
    import io

    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["Hello world", "hello there, world"] * 20), model_writer=buf,
        model_type="bpe", vocab_size=270, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2,
    )
    return buf.getvalue()
