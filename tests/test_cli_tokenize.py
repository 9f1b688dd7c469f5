"""``llama tokenize``: train, encode and decode from the command line."""

from __future__ import annotations

import pytest
from helpers import REPO, run_console_blocks

from llama.cli.main import main
from llama.formats.load import save_model
from llama.tokenizers.tokenizer import BPETokenizer, SentencePieceTokenizer

TEXT = "hello world\nthe cat sat on the mat\nhello there, world\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_bpe_train_encode_decode(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "270", "-o", str(out), "--special", "<|eot|>"]) == 0
    assert "270 tokens" in capsys.readouterr().out
    tok = BPETokenizer.load(out)
    assert tok.special_tokens == {"<|eot|>": 269}

    assert main(["tokenize", "encode", "-t", str(out), "hello<|eot|>"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = tok.encode("hello<|eot|>")
    assert lines[0] == "ids: " + " ".join(map(str, ids))
    assert lines[1].startswith("pieces: ") and "'<|eot|>'" in lines[1]

    assert main(["tokenize", "decode", "-t", str(out), *map(str, ids)]) == 0
    assert capsys.readouterr().out == "hello<|eot|>\n"


def test_sentencepiece_train_encode_decode(corpus, tmp_path, capsys):
    out = tmp_path / "tok.model"
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "280", "-o", str(out), "--method", "sentencepiece"]) == 0
    tok = SentencePieceTokenizer(out)
    assert main(["tokenize", "encode", "-t", str(out), "--bos", "hello world"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = tok.encode("hello world", bos=True)
    assert lines[-2] == "ids: " + " ".join(map(str, ids))
    assert lines[-1] == "pieces: " + " ".join(repr(tok.id_to_piece(i)) for i in ids)
    assert main(["tokenize", "decode", "-t", str(out), *map(str, ids)]) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_errors_are_one_line(corpus, tmp_path, capsys):
    assert main(["tokenize", "train", str(tmp_path / "none.txt"), "--vocab-size", "300", "-o", str(tmp_path / "x.json")]) == 2
    assert "no training text" in capsys.readouterr().err
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "100", "-o", str(tmp_path / "x.json")]) == 2
    assert "too small" in capsys.readouterr().err
    assert main(["tokenize", "encode", "-t", str(tmp_path / "none.model"), "x"]) == 2
    assert "no tokenizer file" in capsys.readouterr().err
    assert main(["tokenize", "encode", "-t", str(corpus), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llama tokenize: error:") and "not a SentencePiece model" in err and err.count("\n") == 1
    out = tmp_path / "tok.json"
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "260", "-o", str(out)]) == 0
    assert main(["tokenize", "decode", "-t", str(out), "5", "9999"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_the_chapter_console_block_runs_as_shown(tmp_path, monkeypatch, capsys):
    """Run every command of book/tokenizer.md's console blocks and compare the output."""
    chapter = (REPO / "book" / "tokenizer.md").read_text(encoding="utf-8")
    corpus = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "llama").glob("*.py")))
    (tmp_path / "corpus.txt").write_text(corpus, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    run_console_blocks(chapter, capsys)


def test_bos_and_eos_need_a_tokenizer_that_has_them(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "270", "-o", str(out)]) == 0
    capsys.readouterr()
    for flag in ("--bos", "--eos"):
        assert main(["tokenize", "encode", "-t", str(out), flag, "hello"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"llama tokenize: error: {flag} needs a tokenizer with <s> and </s>") and err.count("\n") == 1


def test_generate_prepends_bos_only_where_the_tokenizer_has_one(tmp_path, monkeypatch, capsys):
    """``llama generate --prompt``: Llama's <s> first with SentencePiece, the bare text with BPE."""
    from llama import ModelConfig, Transformer
    from llama.inference import generation
    from llama.tokenizers.tokenizer import train_sentencepiece

    prompts = []

    def record_prompt(model, prompt, *args, **kwargs):  # stands in for the decoding loop
        prompts.append(list(prompt))
        return iter([])

    monkeypatch.setattr(generation, "generate_stream", record_prompt)
    bpe = BPETokenizer.train(TEXT, 270)
    bpe.save(tmp_path / "tok.json")
    spm = train_sentencepiece(TEXT, vocab_size=280, model_path=tmp_path / "tok.model")
    for tok, name, bos in ((bpe, "tok.json", []), (spm, "tok.model", [spm.bos_id])):
        model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=64))
        save_model(model, tmp_path / f"model-{name}")
        prompts.clear()
        assert main(["generate", str(tmp_path / f"model-{name}"), "-t", str(tmp_path / name), "--prompt", "the cat"]) == 0
        assert prompts == [bos + tok.encode("the cat")]
        assert capsys.readouterr().out == "the cat\n"
    assert spm.bos_id == 1


def test_train_output_never_replaces_a_file_that_is_not_a_tokenizer(corpus, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "260", "-o", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == f"llama tokenize: error: {folder} is a folder: it was left as it is; give the path of a file to write\n"
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    for victim in (corpus, tmp_path / "notes.json"):  # the training text itself, or any other file
        if not victim.exists():
            victim.write_text('{"my": "data"}')
        before = victim.read_bytes()
        for method in ("bpe", "sentencepiece"):
            assert main(["tokenize", "train", str(corpus), "--vocab-size", "280", "-o", str(victim), "--method", method]) == 2
            err = capsys.readouterr().err
            assert err == f"llama tokenize: error: {victim} exists and is not a tokenizer file: it was left as it is; " \
                          "choose another output file, or delete this one first if you mean to replace it\n"
            assert victim.read_bytes() == before
    out = tmp_path / "tok.model"  # a tokenizer is ours: training again replaces it
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "280", "-o", str(out), "--method", "sentencepiece"]) == 0
    assert main(["tokenize", "train", str(corpus), "--vocab-size", "270", "-o", str(out)]) == 0
    assert BPETokenizer.load(out).vocab_size == 270
