"""``llama generate`` and ``llama convert``: the chapters' console blocks, help texts, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_console_blocks, unavailable

from llama import ModelConfig, Transformer, generate
from llama.cli import main

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = ["generation.md", "checkpoints.md"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_chapter_console_blocks_run_as_shown(chapter, shared_file, tmp_path, monkeypatch, capsys):
    """Every command of the chapter's console blocks, run from a checkout next to ``../shared/data``."""
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "stories260K.bin").symlink_to(shared_file("stories260K.bin"))
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    run_console_blocks((REPO / "book" / chapter).read_text(encoding="utf-8"), capsys)


def tiny_checkpoint(tmp_path, vocab_size: int = 64) -> Path:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=vocab_size, max_seq_len=64)).eval()
    model.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_generate_prints_the_ids_the_library_generates(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    assert main(["generate", str(path), "--ids", "1", "7", "-n", "12"]) == 0
    printed = [int(x) for x in capsys.readouterr().out.split()]
    assert printed == generate(Transformer.from_pretrained(path), [1, 7], 12)
    assert main(["generate", str(path), "-n", "6", "--temperature", "1.0", "--min-p", "0.05", "--seed", "3"]) == 0
    a = capsys.readouterr().out
    assert main(["generate", str(path), "-n", "6", "--temperature", "1.0", "--min-p", "0.05", "--seed", "3"]) == 0
    assert capsys.readouterr().out == a
    first = printed[0]
    assert main(["generate", str(path), "--ids", "1", "7", "-n", "12", "--stop-id", str(first)]) == 0
    assert capsys.readouterr().out == "\n"


@pytest.mark.compile
def test_generate_compiled_prints_the_same_ids(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    assert main(["generate", str(path), "--ids", "1", "7", "-n", "12"]) == 0
    eager = capsys.readouterr().out
    assert main(["generate", str(path), "--ids", "1", "7", "-n", "12", "--compile"]) == 0
    assert capsys.readouterr().out == eager
    assert main(["generate", str(path), "--ids", "1", "-n", "64", "--compile"]) == 2  # 65 > max_seq_len 64
    assert "max_seq_len" in capsys.readouterr().err


def test_generate_with_a_tokenizer_prints_text(tmp_path, capsys):
    from llama.tokenizer import train_sentencepiece

    tok = train_sentencepiece("the cat sat on the mat\n" * 30, vocab_size=280, model_path=tmp_path / "tok.model")
    path = tiny_checkpoint(tmp_path, vocab_size=tok.vocab_size)
    assert main(["generate", str(path), "-t", str(tmp_path / "tok.model"), "--prompt", "the cat", "-n", "10"]) == 0
    out = capsys.readouterr().out
    ids = tok.encode("the cat", bos=True)
    assert out == tok.decode(ids + generate(Transformer.from_pretrained(path), ids, 10)) + "\n"
    assert out.startswith("the cat")


def test_convert_writes_a_folder_transformers_loads(tmp_path, capsys, transformers):
    path = tiny_checkpoint(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "out"), "--to", "hf", "--dtype", "bfloat16"]) == 0
    assert "wrote" in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert hf.dtype == torch.bfloat16


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "missing.bin")]) == 2
    err = capsys.readouterr().err
    assert err == f"llama generate: error: no checkpoint at {tmp_path / 'missing.bin'}\n"
    path = tiny_checkpoint(tmp_path)
    assert main(["generate", str(path), "--prompt", "hello"]) == 2
    assert "--prompt needs --tokenizer" in capsys.readouterr().err
    # Sampling settings are checked before the checkpoint is even looked for.
    assert main(["generate", str(tmp_path / "missing.bin"), "--temperature", "1", "--top-p", "1.5"]) == 2
    assert capsys.readouterr().err == ("llama generate: error: top_p must be in (0, 1], got 1.5; "
                                       "use None to disable it\n")
    assert main(["generate", str(path), "--ids", "1", "-n", "64"]) == 2
    assert "ask for at most 63 new tokens" in capsys.readouterr().err
    assert main(["generate", str(path), "--ids", "1", "999", "-n", "5"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["convert", str(tmp_path / "notes.txt"), str(tmp_path / "o"), "--to", "hf"]) == 2
    assert "unknown checkpoint format" in capsys.readouterr().err


@pytest.mark.slow  # two fresh interpreters
def test_console_script_help_reads_well():
    exe = shutil.which("llama", path=str(Path(sys.executable).parent))
    if exe is None:
        unavailable("the llama console script is not installed next to this interpreter", "`pip install -e .` installs it")
    for sub, words in (("generate", ["--tokenizer", "--ids", "--temperature", "--top-p", "--min-p", "--seed",
                                      "examples:"]),
                       ("convert", ["--to", "Hugging Face", "example:"])):
        proc = subprocess.run([exe, sub, "--help"], capture_output=True, text=True, check=True)
        assert all(w in proc.stdout for w in words), proc.stdout
    top = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "generate" in top and "convert" in top
