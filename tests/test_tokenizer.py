"""``llama.tokenizers.tokenizer``: one loader for both kinds of tokenizer file, and the protocol both implement."""

from __future__ import annotations

import pytest

from llama.tokenizers.spm_vocab import BYTE, NORMAL, SPACE, USER_DEFINED
from llama.tokenizers.tokenizer import (
    BPETokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
    train_sentencepiece,
)


def test_load_tokenizer_dispatches_on_the_file(tmp_path):
    bpe = BPETokenizer.train("hello hello world", 258)
    bpe.save(tmp_path / "a.json")
    assert isinstance(load_tokenizer(tmp_path / "a.json"), BPETokenizer)
    train_sentencepiece("hello world\nhello there\n" * 20, vocab_size=275, model_path=tmp_path / "b.model")
    assert isinstance(load_tokenizer(tmp_path / "b.model"), SentencePieceTokenizer)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "c.model")
    (tmp_path / "d.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a BPE tokenizer file"):
        load_tokenizer(tmp_path / "d.json")


def test_train_sentencepiece_rejects_other_types():
    with pytest.raises(TypeError, match="pathlib.Path"):
        train_sentencepiece(b"bytes", vocab_size=300)


# ------------------------------------------------------------------------ the Tokenizer protocol
TEXT = "hello world, the cat sat on the mat; naïve café 😀\n\tindented  twice\n" * 10


def protocol_tokenizers(tmp_path) -> dict[str, Tokenizer]:
    """Every kind of tokenizer the library makes: trained BPE, the bytes-only BPE that training
    uses for ``--tokenizer bytes``, SentencePiece, and each as ``load_tokenizer`` reads it back."""
    bpe = BPETokenizer.train(TEXT, 300, special_tokens=["<|eot|>"])
    bpe.save(tmp_path / "bpe.json")
    spm = train_sentencepiece(TEXT, vocab_size=300, model_path=tmp_path / "spm.model")
    return {"bpe": bpe, "bytes": BPETokenizer([]), "sentencepiece": spm,
            "bpe loaded": load_tokenizer(tmp_path / "bpe.json"), "sentencepiece loaded": load_tokenizer(tmp_path / "spm.model")}


def test_every_tokenizer_satisfies_the_protocol(tmp_path):
    for name, tok in protocol_tokenizers(tmp_path).items():
        assert isinstance(tok, Tokenizer), name
        ids = tok.encode(TEXT)
        assert ids == tok.encode(TEXT, bos=False, eos=False), name
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids), name
        assert tok.decode(ids) == TEXT, name
        assert all(isinstance(tok.id_to_piece(i), str) for i in range(tok.vocab_size)), name
        assert all(isinstance(tok.id_to_bytes(i), bytes) for i in range(tok.vocab_size)), name
        for special in (tok.bos_id, tok.eos_id):
            assert special == -1 or 0 <= special < tok.vocab_size, name
        with pytest.raises(ValueError, match="out of range"):
            tok.id_to_bytes(tok.vocab_size)


def test_the_protocol_check_can_fail():
    class NoBytes:  # everything but id_to_bytes
        vocab_size, bos_id, eos_id = 3, -1, -1

        def encode(self, text, bos=False, eos=False):
            return []

        def decode(self, ids):
            return ""

        def id_to_piece(self, i):
            return ""

    assert not isinstance(NoBytes(), Tokenizer)
    NoBytes.id_to_bytes = lambda self, i: b""
    assert isinstance(NoBytes(), Tokenizer)


def test_bos_and_eos_where_the_tokenizer_has_them(tmp_path):
    toks = protocol_tokenizers(tmp_path)
    spm = toks["sentencepiece"]
    assert (spm.bos_id, spm.eos_id) == (1, 2)
    assert spm.encode("hello", bos=True, eos=True) == [1, *spm.encode("hello"), 2]
    bpe = toks["bpe"]
    assert (bpe.bos_id, bpe.eos_id) == (-1, -1)
    for flags in ({"bos": True}, {"eos": True}):
        with pytest.raises(ValueError, match="no bos/eos token"):
            bpe.encode("hello", **flags)


def test_bpe_pieces_and_bytes_are_what_the_vocabulary_holds(tmp_path):
    bpe = protocol_tokenizers(tmp_path)["bpe"]
    for i in range(bpe.vocab_size):  # what `llama tokenize encode` printed before the protocol
        assert bpe.id_to_bytes(i) == bpe.vocab[i]
        assert bpe.id_to_piece(i) == bpe.vocab[i].decode("utf-8", errors="backslashreplace")
    assert bpe.id_to_piece(0xC3) == "\\xc3"  # half a character, shown as an escape
    ids = bpe.encode(TEXT)
    assert b"".join(map(bpe.id_to_bytes, ids)) == TEXT.encode()


def test_sentencepiece_bytes_follow_the_piece_types(tmp_path):
    """id_to_bytes gives the byte counts that data.token_byte_lengths computed from the piece
    types before the protocol (that rule, written out again here)."""
    spm = protocol_tokenizers(tmp_path)["sentencepiece"]
    byte_pieces = 0
    for i, (kind, piece) in enumerate(zip(spm.types, spm.pieces)):
        if kind == BYTE:
            expected = bytes([int(piece[3:5], 16)])
            byte_pieces += 1
        elif kind in (NORMAL, USER_DEFINED):
            expected = piece.replace(SPACE, " ").encode()
        else:  # control pieces and <unk>
            expected = b""
        assert spm.id_to_bytes(i) == expected, (i, piece)
    assert byte_pieces == 256
    assert spm.id_to_piece(spm.bos_id) == "<s>" and spm.id_to_bytes(spm.bos_id) == b""
