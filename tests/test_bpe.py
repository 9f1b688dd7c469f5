"""Byte-level BPE: exact merges against a naive trainer written here, round trips, files."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from llama.tokenizers.bpe import GPT2_PATTERN, LLAMA3_PATTERN, BPETokenizer


# ---------------------------------------------------------------- an independent reference
def naive_train(text: str, num_merges: int, pattern: str, specials=()) -> list[tuple[bytes, bytes]]:
    """The textbook algorithm: recount every pair from scratch before each merge."""
    parts = [text]
    for s in specials:
        parts = [q for p in parts for q in p.split(s)]
    chunks = Counter(c for p in parts for c in regex.findall(pattern, p))
    ids = {c: list(c.encode("utf-8")) for c in chunks}  # token ids, to tell equal bytes apart
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for c, seq in ids.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += chunks[c]
        best = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        new = 256 + k
        vocab[new] = vocab[best[0]] + vocab[best[1]]
        merges.append((vocab[best[0]], vocab[best[1]]))
        for c, seq in ids.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            ids[c] = out
    return merges


def naive_encode(tok: BPETokenizer, text: str) -> list[int]:
    """Repeatedly merge the adjacent pair that was learned first, in each chunk."""
    ranks = {(a, b): 256 + k for k, (a, b) in enumerate(tok.merges)}
    by_bytes = {v: k for k, v in reversed(tok.vocab.items())}
    out = []
    for chunk in regex.findall(tok.pattern, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        out.extend(by_bytes[p] for p in parts)
    return out


CORPUS = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox doesn't.\n"
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.\n"
    "1234 12345 123456 -- numbers! Ünïcödé wörds, 東京と京都, emoji 😀😀 👍🏽.\n"
    "    indented   text\twith\ttabs\n\n\n"
) * 7


# ---------------------------------------------------------------- merges, exactly
def test_classic_example_by_hand():
    # "aaabdaaabac": (a,a) occurs 4 times (overlapping), so it is merged first; then
    # (aa, a) and (a, b) tie at 2 and (b"aa", b"a") > (b"a", b"b"); then (aaa, b); then
    # four pairs tie at 1 and (b"d", b"aaab") is the greatest.
    tok = BPETokenizer.train("aaabdaaabac", 260, pattern=r".+")
    assert tok.merges == [(b"a", b"a"), (b"aa", b"a"), (b"aaa", b"b"), (b"d", b"aaab")]
    # the training text itself ends as X d X a c -> X (d X) a c
    assert tok.encode("aaabdaaabac") == [258, 259, 97, 99]


def test_ties_pick_the_greatest_bytes():
    # " low", " lower", " lowest" after "low": (l,o) and (o,w) both occur 3 times.
    tok = BPETokenizer.train("low lower lowest", 260)
    assert tok.merges[:2] == [(b"o", b"w"), (b"l", b"ow")]


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, LLAMA3_PATTERN])
def test_merges_equal_the_naive_trainer(pattern):
    specials = ["<|endoftext|>", "<|eot|>"]
    text = CORPUS.replace("\n\n", "<|endoftext|>").replace("dog.", "dog<|eot|>")
    tok = BPETokenizer.train(text, 256 + 120 + len(specials), special_tokens=specials, pattern=pattern)
    assert tok.merges == naive_train(text, 120, pattern, specials)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab c\n", min_size=20, max_size=80), st.integers(1, 12))
def test_merges_equal_the_naive_trainer_on_random_text(text, n):
    # a tiny alphabet makes ties and overlapping pairs ("aaa") common
    try:
        expected = naive_train(text, n, GPT2_PATTERN)
    except ValueError:  # max() of nothing: the corpus ran out of pairs
        with pytest.raises(ValueError, match="no pairs left"):
            BPETokenizer.train(text, 256 + n)
        return
    assert BPETokenizer.train(text, 256 + n).merges == expected


def test_pre_tokenizer_patterns():
    text = "Hello world123456 (it's) I'LL  go\n\n"
    assert regex.findall(GPT2_PATTERN, text) == [
        "Hello", " world", "123456", " (", "it", "'s", ")", " I", "'", "LL", " ", " go", "\n\n"]
    assert regex.findall(LLAMA3_PATTERN, text) == [
        "Hello", " world", "123", "456", " (", "it", "'s", ")", " I", "'LL", " ", " go", "\n\n"]


# ---------------------------------------------------------------- encode / decode
@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(CORPUS, 330, special_tokens=["<|endoftext|>"])


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert ids == naive_encode(tok, text) or "<|endoftext|>" in text


def test_encode_uses_merges(tok):
    ids = tok.encode("the sea shells")
    assert len(ids) < len("the sea shells")
    assert ids == naive_encode(tok, "the sea shells")


def test_special_tokens(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    assert eot == tok.vocab_size - 1
    ids = tok.encode("the fox<|endoftext|>the dog")
    assert ids.count(eot) == 1
    assert tok.decode(ids) == "the fox<|endoftext|>the dog"
    # as plain text (untrusted input), the special string is just bytes
    plain = tok.encode("the fox<|endoftext|>the dog", allow_special=False)
    assert eot not in plain and tok.decode(plain) == "the fox<|endoftext|>the dog"


def test_special_tokens_are_never_merged_across():
    text = "ab<|s|>ab<|s|>ab<|s|>ba<|s|>" * 10
    tok = BPETokenizer.train(text, 256 + 2 + 1, special_tokens=["<|s|>"])  # (a,b), (b,a)
    for left, right in tok.merges:
        assert b"<" not in left + right and b"|" not in left + right
    assert tok.encode("ab<|s|>") == [256, tok.special_tokens["<|s|>"]]


def test_decode_invalid_utf8_and_bad_ids(tok):
    assert tok.decode([0xE2, 0x96]) == "\ufffd"
    for bad in (-1, tok.vocab_size, 3.0):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([104, bad])
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode("a\ud800")


# ---------------------------------------------------------------- training errors
def test_vocab_too_small():
    with pytest.raises(ValueError, match="at least 258"):
        BPETokenizer.train("abc", 257, special_tokens=["<a>", "<b>"])
    assert BPETokenizer.train("abc", 256).vocab_size == 256


def test_corpus_runs_out_of_pairs():
    with pytest.raises(ValueError, match=r"no pairs left after 2 merges.*vocab_size <= 258"):
        BPETokenizer.train("abc", 300)


# ---------------------------------------------------------------- files
def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "d" / "bpe.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["bpe.json"]  # no temp file left
    again = BPETokenizer.load(path)
    assert again.merges == tok.merges and again.vocab == tok.vocab
    assert again.special_tokens == tok.special_tokens and again.pattern == tok.pattern
    assert again.encode(CORPUS) == tok.encode(CORPUS)


def test_load_bad_files(tok, tmp_path):
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        BPETokenizer.load(bad)
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="format"):
        BPETokenizer.load(bad)
    path = tmp_path / "ok.json"
    tok.save(path)
    doc = json.loads(path.read_text())
    doc["merges"][0] = [0, 999]  # refers to a token that does not exist yet
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="corrupt.*does not exist yet"):
        BPETokenizer.load(bad)
    doc["merges"] = "x"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="merges"):
        BPETokenizer.load(bad)
