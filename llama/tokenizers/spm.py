r"""A SentencePiece BPE tokenizer written by hand: normalizer, encoder and decoder.

It reproduces, id for id, what the ``sentencepiece`` library does for BPE models such as
Llama 2's, from the vocabulary that :mod:`llama.tokenizers.spm_vocab` reads out of the ``.model`` file:

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
import re
from collections.abc import Iterable

from llama.tokenizers.bpe import _check_utf8
from llama.tokenizers.spm_vocab import CONTROL, SPACE, UNKNOWN, UNUSED, SentencePieceVocab

__all__ = ["SentencePieceTokenizer"]


class SentencePieceTokenizer(SentencePieceVocab):
    """Encode and decode text exactly like ``sentencepiece`` does with a BPE ``.model``.

    The file is read and checked by :class:`~llama.tokenizers.spm_vocab.SentencePieceVocab`, which also
    gives the lookups of single ids (``piece_to_id``, ``id_to_piece``, ``id_to_bytes``,
    ``bos_id``, ``eos_id``, ``vocab_size``).

    Args and errors are those of :class:`~llama.tokenizers.spm_vocab.SentencePieceVocab`.
    """

    def _setup(self, data: bytes, where: str) -> None:
        super()._setup(data, where)
        self._byte_fallback = self.proto.byte_fallback
        self._user_lengths = sorted({len(s) for s in self._user_defined}, reverse=True)
        self._cache: dict[str, list[int]] = {}
        self._words = _word_splitter(self._normal)
        self._neg_score = {p: -self.scores[i] for p, i in self._normal.items()}  # min-heap key
        self._unused_pieces = {p for p, i in self._normal.items() if self.types[i] == UNUSED}

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
