"""``llama generate`` and ``llama convert``: the chapters' console blocks, help texts, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DECODER_CACHE, DECODER_GQA, REPO, run_console_blocks, unavailable

from llama import ModelConfig, Transformer, generate
from llama.cli.main import main
from llama.formats.load import load_model, save_model

CHAPTERS = ["generation.md", "checkpoints.md", "quantization.md", "gguf.md"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_chapter_console_blocks_run_as_shown(chapter, shared_file, tmp_path, monkeypatch, capsys):
    """Every command of the chapter's console blocks, with stories260K.bin in $LLAMA_DATA_DIR (so
    `llama download stories260K` finds it there and `stories260K` names it)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stories260K.bin").symlink_to(shared_file("stories260K.bin"))
    monkeypatch.setenv("LLAMA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    run_console_blocks((REPO / "book" / chapter).read_text(encoding="utf-8"), capsys)
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def test_a_model_name_before_its_download_names_the_command(tmp_path, monkeypatch, capsys):
    import llama.data.sources as dl

    monkeypatch.delenv("LLAMA_DATA_DIR", raising=False)
    monkeypatch.setattr(dl, "data_dirs", lambda: [tmp_path / "empty"])
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "stories260K"]) == 2
    assert capsys.readouterr().err == ("llama generate: error: stories260K is not downloaded yet: "
                                       "run `llama download stories260K`, or give a path\n")
    path = tiny_checkpoint(tmp_path)
    (tmp_path / "stories260K").symlink_to(path)  # a path of that name is a path
    assert main(["convert", "stories260K", str(tmp_path / "out"), "--to", "hf"]) == 0


def tiny_checkpoint(tmp_path, vocab_size: int = 64) -> Path:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=vocab_size, max_seq_len=64)).eval()
    save_model(model, tmp_path / "tiny")
    return tmp_path / "tiny"


def test_generate_prints_the_ids_the_library_generates(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    assert main(["generate", str(path), "--ids", "1", "7", "-n", "12"]) == 0
    printed = [int(x) for x in capsys.readouterr().out.split()]
    assert printed == generate(load_model(path), [1, 7], 12)
    assert main(["generate", str(path), "-n", "6", "--temperature", "1.0", "--min-p", "0.05", "--seed", "3"]) == 0
    a = capsys.readouterr().out
    assert main(["generate", str(path), "-n", "6", "--temperature", "1.0", "--min-p", "0.05", "--seed", "3"]) == 0
    assert capsys.readouterr().out == a
    first = printed[0]
    assert main(["generate", str(path), "--ids", "1", "7", "-n", "12", "--stop-id", str(first)]) == 0
    assert capsys.readouterr().out == "\n"


@pytest.mark.compile
def test_generate_compiled_prints_the_same_ids(tmp_path, capsys):
    # The model and cache length of tests/test_generation.py's compiled test: one compile for both.
    torch.manual_seed(0)
    save_model(Transformer(ModelConfig(**DECODER_GQA)), tmp_path / "model")
    path, n = str(tmp_path / "model"), str(DECODER_CACHE - 2)
    assert main(["generate", path, "--ids", "1", "7", "-n", n]) == 0
    eager = capsys.readouterr().out
    assert main(["generate", path, "--ids", "1", "7", "-n", n, "--compile"]) == 0
    assert capsys.readouterr().out == eager
    assert main(["generate", path, "--ids", "1", "-n", "96", "--compile"]) == 2  # 97 > max_seq_len 96
    assert "max_seq_len" in capsys.readouterr().err


def test_generate_with_a_tokenizer_prints_text(tmp_path, capsys):
    from llama.tokenizers.tokenizer import train_sentencepiece

    tok = train_sentencepiece("the cat sat on the mat\n" * 30, vocab_size=280, model_path=tmp_path / "tok.model")
    path = tiny_checkpoint(tmp_path, vocab_size=tok.vocab_size)
    assert main(["generate", str(path), "-t", str(tmp_path / "tok.model"), "--prompt", "the cat", "-n", "10"]) == 0
    out = capsys.readouterr().out
    ids = tok.encode("the cat", bos=True)
    assert out == tok.decode(ids + generate(load_model(path), ids, 10)) + "\n"
    assert out.startswith("the cat")


def test_generate_finds_the_tokenizer_saved_with_the_model(tmp_path, capsys):
    """`llama train` leaves OUT/model with its tokenizer.json beside the weights, and a GGUF file can
    store its tokenizer: --prompt uses either without --tokenizer."""
    from llama.tokenizers.bpe import BPETokenizer
    from llama.tokenizers.tokenizer import train_sentencepiece

    bpe = BPETokenizer.train("the cat sat on the mat\n" * 30, 264)
    path = tiny_checkpoint(tmp_path, vocab_size=bpe.vocab_size)
    bpe.save(path / "tokenizer.json")
    assert main(["generate", str(path), "--prompt", "the cat", "-n", "10"]) == 0
    ids = bpe.encode("the cat")
    assert capsys.readouterr().out == bpe.decode(ids + generate(load_model(path), ids, 10)) + "\n"

    sp = train_sentencepiece("the cat sat on the mat\n" * 30, vocab_size=280, model_path=tmp_path / "sp.model")
    other = tiny_checkpoint(tmp_path / "sp", vocab_size=sp.vocab_size)
    assert main(["convert", str(other), str(tmp_path / "m.gguf"), "--to", "gguf", "-t", str(tmp_path / "sp.model")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "m.gguf"), "--prompt", "the cat", "-n", "10"]) == 0
    ids = sp.encode("the cat", bos=True)
    assert capsys.readouterr().out == sp.decode(ids + generate(load_model(other), ids, 10)) + "\n"
    assert main(["convert", str(other), str(tmp_path / "bare.gguf"), "--to", "gguf"]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "bare.gguf"), "--prompt", "the cat"]) == 2
    assert "stores no tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("to", [["--to", "quantized", "--quantize", "int8"], ["--to", "hf"]], ids=["quantized", "hf"])
def test_a_converted_folder_keeps_the_tokenizer_and_generate_finds_it(tmp_path, capsys, to):
    """`llama convert` takes the tokenizer saved beside the weights into the folder it writes, and
    `llama generate --prompt` reads it there, from a quantized folder as from any other."""
    from llama.tokenizers.bpe import BPETokenizer

    bpe = BPETokenizer.train("the cat sat on the mat\n" * 30, 264)
    path = tiny_checkpoint(tmp_path, vocab_size=bpe.vocab_size)
    bpe.save(path / "tokenizer.json")
    assert main(["convert", str(path), str(tmp_path / "out"), *to]) == 0
    assert capsys.readouterr().out.rstrip().endswith(", with tokenizer.json")
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()
    assert main(["generate", str(tmp_path / "out"), "--prompt", "the cat", "-n", "6"]) == 0
    ids = bpe.encode("the cat")
    expected = bpe.decode(ids + generate(load_model(tmp_path / "out"), ids, 6)) + "\n"
    assert capsys.readouterr().out == expected


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
    assert capsys.readouterr().err == (f"llama generate: error: --prompt needs a tokenizer to turn text into ids, "
                                       f"and {path} holds no tokenizer.json or tokenizer.model: pass --tokenizer "
                                       "FILE, or give the prompt as --ids\n")
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
                       ("convert", ["--to", "Hugging Face", "GGUF", "--tokenizer", "examples:"])):
        proc = subprocess.run([exe, sub, "--help"], capture_output=True, text=True, check=True)
        assert all(w in proc.stdout for w in words), proc.stdout
    top = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "generate" in top and "convert" in top


def test_generate_checks_flags_before_loading_and_prints_nothing_on_error(tmp_path, capsys):
    missing = str(tmp_path / "missing.bin")  # every error below comes before the checkpoint is looked for
    for flags, message in ((["-n", "-1"], "--max-new-tokens must be 0 or more, got -1"),
                           (["--ids", "1", "-3"], "--ids takes token ids, which are 0 or more; got -3"),
                           (["--stop-id", "-1"], "--stop-id takes token ids, which are 0 or more; got -1"),
                           (["--max-seq-len", "0"], "--max-seq-len must be a number of positions from 1 to 1,048,576 (2**20), got 0"),
                           (["--temperature", "nan"], "temperature must be >= 0 and finite, got nan"),
                           (["--temperature", "1", "--min-p", "nan"], "min_p must be in [0, 1], got nan")):
        assert main(["generate", missing, *flags]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"llama generate: error: {message}") and err.count("\n") == 1


def test_generate_refuses_stop_ids_outside_the_vocabulary(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)  # vocab 64
    assert main(["generate", str(path), "--stop-id", "64", "-n", "5"]) == 2
    assert capsys.readouterr() == ("", "llama generate: error: stop id 64 is outside the model's vocabulary "
                                   "[0, 64), so it can never be produced; use an id of this model's tokenizer "
                                   "(e.g. its EOS)\n")


def test_the_prompt_is_not_echoed_when_generation_cannot_start(tmp_path, capsys):
    from llama.tokenizers.tokenizer import train_sentencepiece

    tok = train_sentencepiece("the cat sat on the mat\n" * 30, vocab_size=280, model_path=tmp_path / "tok.model")
    path = tiny_checkpoint(tmp_path, vocab_size=tok.vocab_size)
    assert main(["generate", str(path), "-t", str(tmp_path / "tok.model"), "--prompt", "the cat", "-n", "64"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "new tokens exceed max_seq_len=64" in err


def test_an_unknown_flag_is_reported_with_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["generate", "model.bin", "--temprature", "0.8"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: llama generate [-h]")
    assert err.endswith("llama generate: error: unrecognized arguments: --temprature 0.8\n")


def as_from_a_shell() -> None:
    """Ctrl-C as a shell leaves it to a program it starts: delivered, with the default action.

    A child inherits its parent's blocked signals and ignored ones; a test runner's worker, or a
    library a test loaded before, may have left SIGINT either way, and then ``llama`` would never
    see the Ctrl-C these tests send.
    """
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_llama(*args: str, **kwargs) -> subprocess.Popen:
    """``python -m llama.cli.main``: this checkout's code, whatever is installed, started as from a shell."""
    return subprocess.Popen([sys.executable, "-m", "llama.cli.main", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=as_from_a_shell, **kwargs)


def generating(tmp_path) -> subprocess.Popen:
    """A ``llama generate`` caught in the middle: it has printed, and cannot have finished.

    2000 sampled ids of a 1000-token vocabulary print about 8 KB; with the pipe shrunk to 4 KB
    and nobody reading, the writer blocks before its last token, however fast it runs.
    """
    import fcntl

    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=1000, max_seq_len=2048)).eval()
    save_model(model, tmp_path / "model")
    proc = run_llama("generate", str(tmp_path / "model"), "-n", "2000", "--temperature", "1", "--seed", "0")
    fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    assert proc.stdout.read(1)  # generating: the first token is out
    return proc


@pytest.mark.slow
def test_ctrl_c_during_generate_exits_130_without_a_traceback(tmp_path):
    import signal

    proc = generating(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # reading on, as a terminal does
    assert (proc.returncode, err) == (130, b"")


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_generate_quietly(tmp_path):
    proc = generating(tmp_path)
    proc.stdout.close()  # as `| head -c 1` does
    assert (proc.wait(timeout=120), proc.stderr.read()) == (141, b"")


@pytest.mark.slow
def test_compile_without_a_cxx_compiler_says_what_is_missing_before_generating(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDUCTOR_INSTALL_GXX"}
    env["CXX"] = str(tmp_path / "no-such-g++")
    proc = run_llama("generate", str(tiny_checkpoint(tmp_path)), "-n", "5", "--compile", env=env)
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, out) == (2, b"")
    assert err.decode() == (f"llama generate: error: torch.compile needs a C++ compiler and found none "
                            f"(CXX={tmp_path / 'no-such-g++'} is not a working compiler): install one "
                            "(e.g. apt-get install g++) or set CXX to its path; or run without --compile\n")


def test_the_cli_starts_without_importing_torch():
    code = ("import sys, llama.cli.main\n"
            "try:\n    llama.cli.main.main(['generate', '--help'])\nexcept SystemExit:\n    pass\n"
            "llama.cli.main.build_parser()\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.endswith("[]\n")  # --help answers at once: torch takes seconds to import
