"""``llama.tokenizer``: one loader for both kinds of tokenizer file."""

from __future__ import annotations

import pytest

from llama.tokenizer import BPETokenizer, SentencePieceTokenizer, load_tokenizer, train_sentencepiece


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
