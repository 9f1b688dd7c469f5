"""Output that was wrong without a word: broken characters in streamed text, a llama2.c file whose
header lies, a BPE pattern that drops what it does not match, and merges that were never learned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model

import llama.inference.generation
from llama import ModelConfig
from llama.cli.main import main
from llama.formats.llama2c import save_llama2c
from llama.formats.load import save_model
from llama.tokenizers.bpe import BPETokenizer


# ------------------------------------------------------------------------- streaming characters
def test_generate_streams_whole_characters(tmp_path, capsys, monkeypatch):
    # Byte-level BPE without merges: each byte of "é€" is a token of its own, so most tokens end
    # inside a character. Printing the new part of each decode printed "é€ab��ab�".
    tokenizer = tmp_path / "bytes.json"
    BPETokenizer([]).save(tokenizer)
    save_model(random_model(ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=256, max_seq_len=64)), tmp_path / "m")
    new = list("é€abé€abé".encode()) + [0xE2]  # and a last character whose bytes never all come
    monkeypatch.setattr(llama.inference.generation, "generate_stream", lambda model, prompt, n, sampling: iter(new))
    assert main(["generate", str(tmp_path / "m"), "-t", str(tokenizer), "-p", "x", "-n", str(len(new))]) == 0
    assert capsys.readouterr().out == "xé€abé€abé\ufffd\n"


# -------------------------------------------------------------------- a llama2.c header that lies
def test_a_llama2c_header_that_lies_but_keeps_the_file_size(tmp_path, capsys):
    # 4 heads of 8 and 32 positions, told as 2 heads of 16 and 16 positions: every tensor keeps
    # its size and place, the RoPE tables too (32 x 4 = 16 x 8 numbers), so the file size agrees.
    config = ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=50, hidden_dim=64, max_seq_len=32,
                         tie_embeddings=True)
    path = tmp_path / "model.bin"
    save_llama2c(random_model(config).state_dict(), config, path)
    header = np.fromfile(path, dtype="<i4", count=7)
    assert list(header) == [32, 64, 1, 4, 4, 50, 32]
    data = path.read_bytes()
    path.write_bytes(np.asarray([32, 64, 1, 2, 2, 50, 16], dtype="<i4").tobytes() + data[28:])
    assert main(["generate", str(path), "-n", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "disagrees with the RoPE tables stored in the file" in err


def test_the_published_stories260K_passes_the_rope_check(shared_file):
    from llama.formats.llama2c import read_llama2c

    assert read_llama2c(shared_file("stories260K.bin"))[0].max_seq_len == 512


# ------------------------------------------------------------------- a pattern that drops text
def bpe_file(path: Path, pattern: str, merges: list | None = None) -> Path:
    path.write_text(json.dumps({"format": "llama-bpe", "version": 1, "pattern": pattern,
                                "merges": merges or [], "special_tokens": []}))
    return path


def test_a_pattern_that_does_not_cover_the_text_is_refused(tmp_path, capsys):
    # \p{Ll}+ matches lower-case letters only: "Hello, World" was encoded as "elloorld".
    path = bpe_file(tmp_path / "tokenizer.json", r"\p{Ll}+")
    assert main(["tokenize", "encode", "-t", str(path), "Hello, World"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: the pre-tokenizer pattern" in err
    assert "does not match every character: it leaves out 'H' at position 0" in err


def test_training_with_a_pattern_that_does_not_cover_the_text_is_refused():
    # Training then reported bits per byte over part of the bytes.
    with pytest.raises(ValueError, match="leaves out ',' at position 5"):
        BPETokenizer.train("hello, world " * 20, 260, pattern=r"\p{L}+|\s+")


# ------------------------------------------------------------------------------- a merge bomb
def test_a_merge_bomb_is_refused_before_it_fills_memory(tmp_path, capsys):
    # Each merge joins the newest token with itself, doubling it: 34 such merges made a token of
    # 16 GB. 28 are enough to pass the ceiling (their tokens would hold 512 MB) and stay in memory.
    merges = [[97, 97]] + [[256 + k, 256 + k] for k in range(27)]
    path = bpe_file(tmp_path / "tokenizer.json", r"\s+|\S+", merges)
    assert main(["tokenize", "encode", "-t", str(path), "aaaa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} is corrupt: merge" in err
    assert "makes the tokens hold more than 67,108,864 bytes together" in err
