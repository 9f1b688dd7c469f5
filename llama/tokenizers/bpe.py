r"""Byte-level byte-pair encoding (BPE), trained and applied by hand.

A :class:`BPETokenizer` starts from the 256 possible byte values and learns *merges*: each
merge glues the most frequent adjacent pair of tokens into a new token. Text is first cut
into chunks by a regular expression (the *pre-tokenizer*, :mod:`llama.tokenizers.pretokenize`), so
that no token ever spans, say, the end of one word and the start of the next. Special
tokens such as ``<|endoftext|>`` are cut out before that and are never split or merged.

Examples:
    >>> tok = BPETokenizer.train("low lower lowest", vocab_size=260)
    >>> [tok.vocab[i] for i in range(256, 260)]
    [b'ow', b'low', b'lowe', b' lowe']
    >>> tok.decode(tok.encode("lowest low"))
    'lowest low'
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex

from llama._files import atomic_write_text, open_for_reading
from llama.tokenizers.pretokenize import GPT2_PATTERN, LLAMA3_PATTERN, pre_tokenize  # noqa: F401 (the patterns, as before)

__all__ = ["MAX_VOCAB_BYTES", "BPETokenizer", "is_bpe_file"]

_FORMAT = "llama-bpe"
_VERSION = 1

#: The most bytes all tokens of a vocabulary may hold together: 64 MiB. Llama 3's 128,256 tokens
#: hold under 1 MB. A merge joins two tokens, so merges that each join the last token with
#: itself double its length: 34 of them in a small file made a token of 16 GB.
MAX_VOCAB_BYTES = 64 * 2**20

class _Greater:
    """Wraps a pair of byte strings so that a *min*-heap pops the lexicographically greatest."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[bytes, bytes]) -> None:
        self.key = key

    def __lt__(self, other: _Greater) -> bool:
        return self.key > other.key


# --8<-- [start:merge_word]
def _merge_word(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids``, scanning left to right."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
# --8<-- [end:merge_word]


def _split_specials(text: str, specials: Sequence[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` at special tokens: a list of ``(part, is_special)``, longest special first."""
    if not specials:
        return [(text, False)] if text else []
    alternation = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    parts = regex.split(f"({alternation})", text)
    # regex.split with one capturing group alternates: text, special, text, special, ...
    return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


class BPETokenizer:
    """A byte-level BPE tokenizer: 256 byte tokens, then merges, then special tokens.

    Ids ``0..255`` are the raw bytes, id ``256 + k`` is the ``k``-th merge, and the special
    tokens come last, in the order they were given.

    Args:
        merges: The learned merges in training order, as pairs of token ids; merge ``k``
            creates token ``256 + k`` and may only use ids below that.
        special_tokens: Strings that are always one token each and never split.
        pattern: The pre-tokenizer regular expression (``regex`` module syntax).

    Raises:
        ValueError: If a merge refers to a token that does not exist yet, or a special
            token is empty or repeated.
    """

    def __init__(
        self,
        merges: Iterable[tuple[int, int]],
        special_tokens: Iterable[str] = (),
        pattern: str = GPT2_PATTERN,
    ) -> None:
        self.pattern = pattern
        self._compiled = regex.compile(pattern)
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.merges: list[tuple[bytes, bytes]] = []
        self._ranks: dict[tuple[int, int], int] = {}
        total = 256
        for a, b in merges:
            new_id = len(self.vocab)
            for t in (a, b):
                if not (isinstance(t, int) and 0 <= t < new_id):
                    raise ValueError(f"merge {new_id - 256} uses token {t!r}, which does not exist yet")
            if (a, b) in self._ranks:
                raise ValueError(f"merge {new_id - 256} repeats the pair ({a}, {b})")
            total += len(self.vocab[a]) + len(self.vocab[b])  # counted before the bytes are made
            if total > MAX_VOCAB_BYTES:
                raise ValueError(f"merge {new_id - 256} makes the tokens hold more than {MAX_VOCAB_BYTES:,} bytes "
                                 f"together (a token of {len(self.vocab[a]) + len(self.vocab[b]):,}): these merges "
                                 "were not learned from text")
            self._ranks[(a, b)] = new_id
            self.merges.append((self.vocab[a], self.vocab[b]))
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        self.special_tokens: dict[str, int] = {}
        for s in special_tokens:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
            if s in self.special_tokens:
                raise ValueError(f"special token {s!r} is given twice")
            self.special_tokens[s] = len(self.vocab)
            self.vocab[len(self.vocab)] = s.encode("utf-8")
        self._special_ids = {i: s for s, i in self.special_tokens.items()}
        self._cache: dict[str, list[int]] = {}
        self._source = ""  # "FILE: " in messages about a tokenizer read from FILE (see load)

    @property
    def merge_ids(self) -> list[tuple[int, int]]:
        """The merges as pairs of token ids, in training order (what the constructor takes)."""
        return [pair for pair, _ in sorted(self._ranks.items(), key=lambda kv: kv[1])]

    @property
    def vocab_size(self) -> int:
        """Number of tokens: ``256 + len(merges) + len(special_tokens)``."""
        return len(self.vocab)

    @property
    def bos_id(self) -> int:
        """-1: no beginning-of-sequence token (GPT-2 puts a special token between documents)."""
        return -1

    @property
    def eos_id(self) -> int:
        """-1: no end-of-sequence token either (see :attr:`bos_id`)."""
        return -1

    # ----------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = (),
        pattern: str = GPT2_PATTERN,
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        The frequency of a pair is the number of places where the two tokens stand next to
        each other inside a pre-tokenized chunk (so ``"aaa"`` counts the pair ``(a, a)``
        twice). The most frequent pair is merged next; among equally frequent pairs the one
        whose ``(left bytes, right bytes)`` is lexicographically greatest wins, which makes
        training deterministic. Pair counts are updated incrementally: a merge only
        revisits the chunks that contain the merged pair.

        Args:
            text: The training corpus.
            vocab_size: Size of the final vocabulary, at least ``256 + len(special_tokens)``.
            special_tokens: Strings that become single tokens; they are cut out of the
                corpus before counting, so no merge ever crosses them.
            pattern: The pre-tokenizer regular expression.

        Returns:
            The trained tokenizer.

        Raises:
            ValueError: If ``vocab_size`` is too small, or the corpus runs out of pairs to
                merge before reaching ``vocab_size`` (use more text or a smaller size).
        """
        specials = list(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise ValueError(
                f"vocab_size={vocab_size!r} is too small: a byte-level BPE needs 256 byte "
                f"tokens plus {len(specials)} special token(s), so at least {256 + len(specials)}"
            )
        num_merges = vocab_size - 256 - len(specials)
        compiled = regex.compile(pattern)
        # --8<-- [start:train]
        # 1. Pre-tokenize and count identical chunks once: " the" may occur 5,000 times,
        #    but it is stored (and later re-merged) only once, with its frequency.
        chunks: Counter[str] = Counter()
        for part, is_special in _split_specials(text, specials):
            if not is_special:
                chunks.update(pre_tokenize(compiled, part))
        words = [list(chunk.encode("utf-8")) for chunk in chunks]
        freqs = list(chunks.values())

        # 2. Count every adjacent pair, and remember which chunks contain it.
        counts: defaultdict[tuple[int, int], int] = defaultdict(int)
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for w, (ids, f) in enumerate(zip(words, freqs)):
            for pair in zip(ids, ids[1:]):
                counts[pair] += f
                where[pair].add(w)

        # 3. A max-heap of (count, pair bytes); entries go stale and are checked when popped.
        vocab = {i: bytes([i]) for i in range(256)}

        def entry(pair: tuple[int, int]) -> tuple:
            return (-counts[pair], _Greater((vocab[pair[0]], vocab[pair[1]])), pair)

        heap = [entry(pair) for pair in counts]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < num_merges:
            if not heap:
                raise ValueError(
                    f"the corpus has no pairs left after {len(merges)} merges; give more text "
                    f"or ask for vocab_size <= {256 + len(merges) + len(specials)}"
                )
            neg_count, _, pair = heapq.heappop(heap)
            count = counts.get(pair, 0)
            if count != -neg_count:  # stale: the pair's count changed since this push
                if 0 < count < -neg_count:
                    heapq.heappush(heap, entry(pair))  # re-file it under its lower count
                continue
            new_id = 256 + len(merges)
            merges.append(pair)
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]

            # 4. Re-merge only the chunks that contain the pair, adjusting counts by the
            #    difference between the chunk's old and new pairs (times its frequency).
            before: dict[tuple[int, int], int] = {}
            for w in where.pop(pair):
                old, f = words[w], freqs[w]
                new = _merge_word(old, pair, new_id)
                words[w] = new
                new_pairs = Counter(zip(new, new[1:]))
                delta = new_pairs.copy()
                delta.subtract(Counter(zip(old, old[1:])))
                for p, d in delta.items():
                    if d == 0:
                        continue
                    before.setdefault(p, counts.get(p, 0))
                    counts[p] += d * f
                    if counts[p] == 0:
                        del counts[p]
                    if p in new_pairs:  # keep "which chunks contain p" exact
                        where[p].add(w)
                    else:
                        where[p].discard(w)
            where.pop(pair, None)
            for p, old_count in before.items():
                if counts.get(p, 0) > old_count:  # increases need a fresh heap entry
                    heapq.heappush(heap, entry(p))
        # --8<-- [end:train]
        return cls(merges, specials, pattern)

    # ----------------------------------------------------------------- encoding
    # --8<-- [start:encode_chunk]
    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply the merges to one pre-tokenized chunk, lowest rank first (a heap)."""
        ids = list(chunk.encode("utf-8"))
        n = len(ids)
        nxt = list(range(1, n + 1))  # doubly linked list over the surviving tokens
        prv = list(range(-1, n - 1))
        heap = []  # (rank, left position, left id, right id)

        def push(left: int) -> None:
            right = nxt[left]
            if left >= 0 and right < n:
                rank = self._ranks.get((ids[left], ids[right]))
                if rank is not None:
                    heapq.heappush(heap, (rank, left, ids[left], ids[right]))

        for i in range(n - 1):
            push(i)
        while heap:
            rank, left, a, b = heapq.heappop(heap)
            right = nxt[left]
            if ids[left] != a or right >= n or ids[right] != b:
                continue  # stale: one side was merged into something else meanwhile
            ids[left] = rank  # the new token's id equals its rank
            ids[right] = -1
            nxt[left] = nxt[right]
            if nxt[right] < n:
                prv[nxt[right]] = left
            push(prv[left])
            push(left)
        return [t for t in ids if t >= 0]
    # --8<-- [end:encode_chunk]

    def encode(self, text: str, bos: bool = False, eos: bool = False, *, allow_special: bool = True) -> list[int]:
        """Turn text into token ids.

        Args:
            text: Any string that can be written as UTF-8.
            bos: Must be false (no such token, see :attr:`bos_id`); it is here so that every
                tokenizer is called alike.
            eos: Must be false, likewise.
            allow_special: If true, special-token strings in ``text`` become their single
                special id; if false they are encoded as ordinary text (use this for
                untrusted input, so that a user cannot inject ``<|endoftext|>``).

        Returns:
            The token ids.

        Raises:
            ValueError: If ``text`` contains a lone surrogate (not valid Unicode), or ``bos``
                or ``eos`` is true.
        """
        if bos or eos:
            raise ValueError("a byte-level BPE tokenizer has no bos/eos token: encode without bos/eos, "
                             "or mark document boundaries with a special token of your own")
        _check_utf8(text)
        specials = list(self.special_tokens) if allow_special else []
        out: list[int] = []
        for part, is_special in _split_specials(text, specials):
            if is_special:
                out.append(self.special_tokens[part])
                continue
            for chunk in pre_tokenize(self._compiled, part, self._source):
                ids = self._cache.get(chunk)
                if ids is None:
                    ids = self._encode_chunk(chunk)
                    if len(self._cache) < 100_000:
                        self._cache[chunk] = ids
                out.extend(ids)
        return out

    def clear_cache(self) -> None:
        """Forget the encodings of chunks seen so far (they are cached: words repeat a lot)."""
        self._cache.clear()

    def decode(self, ids: Iterable[int]) -> str:
        """Turn token ids back into text; bytes that are not valid UTF-8 become ``"\ufffd"``.

        Raises:
            ValueError: If an id is not in ``range(vocab_size)``.
        """
        return b"".join(map(self.id_to_bytes, ids)).decode("utf-8", errors="replace")

    def id_to_bytes(self, i: int) -> bytes:
        """The bytes of token ``i`` (for a special token, its string as UTF-8).

        Raises:
            ValueError: If ``i`` is not in ``range(vocab_size)``.
        """
        piece = self.vocab.get(i) if isinstance(i, int) else None
        if piece is None:
            raise ValueError(f"token id {i!r} is out of range for a vocabulary of {self.vocab_size}")
        return piece

    def id_to_piece(self, i: int) -> str:
        """Token ``i`` for display: its bytes as text, ``\\xNN`` for bytes that are not UTF-8 alone.

        Raises:
            ValueError: If ``i`` is not in ``range(vocab_size)``.
        """
        return self.id_to_bytes(i).decode("utf-8", errors="backslashreplace")

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON (merges as id pairs; atomic: temp file, then rename)."""
        doc = {
            "format": _FORMAT,
            "version": _VERSION,
            "pattern": self.pattern,
            "merges": [list(pair) for pair in self.merge_ids],
            "special_tokens": list(self.special_tokens),
        }
        atomic_write_text(Path(path), json.dumps(doc, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is not a BPE tokenizer written by :meth:`save`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no BPE tokenizer file at {path}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a BPE tokenizer file (not JSON: {err})") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a BPE tokenizer file (no \"format\": \"{_FORMAT}\")")
        if doc.get("version") != _VERSION:
            raise ValueError(f"{path} has version {doc.get('version')!r}; this code reads version {_VERSION}")
        merges, specials, pattern = doc.get("merges"), doc.get("special_tokens"), doc.get("pattern")
        if not (isinstance(merges, list) and all(isinstance(m, list) and len(m) == 2 for m in merges)):
            raise ValueError(f"{path}: \"merges\" must be a list of [left id, right id] pairs")
        if not (isinstance(specials, list) and isinstance(pattern, str)):
            raise ValueError(f"{path}: \"special_tokens\" must be a list and \"pattern\" a string")
        try:
            tok = cls([tuple(m) for m in merges], specials, pattern)
        except (ValueError, regex.error) as err:
            raise ValueError(f"{path} is corrupt: {err}") from None
        tok._source = f"{path}: "
        return tok


def is_bpe_file(path: str | os.PathLike) -> bool:
    """Whether a tokenizer file is byte-level BPE as :meth:`BPETokenizer.save` writes it, told by
    its first byte whatever its name: a JSON object opens with ``{``, a SentencePiece ``.model``
    (a protocol buffer, whose first byte is a field's tag) never does.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file may not be read (no permission).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    with open_for_reading(path) as f:
        return f.read(1) == b"{"


def _check_utf8(text: str) -> None:
    """Refuse what cannot be encoded as UTF-8 (lone surrogates), naming the fix."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    if text.isascii():  # the common case, checked without encoding a copy
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text is not valid Unicode ({err.reason} at index {err.start}); "
            "remove lone surrogates, e.g. with s.encode('utf-8', 'replace').decode()"
        ) from None
