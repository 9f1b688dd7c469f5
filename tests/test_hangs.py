"""Inputs that used to make a command wait for minutes or forever, silently: each now ends, within a
bound these tests set, in one line that names the file, flag or variable and what to do."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from llama import ModelConfig
from llama.cli.main import main

# Each waits (a timeout, a trickling server, a rendezvous that never comes): seconds by design.
pytestmark = pytest.mark.slow


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``, which must return (or raise) within ``seconds``; a hang fails the test instead of stalling it.

    The call runs in a daemon thread: one that hangs is left behind (the test has failed already).
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test below
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s (a hang)")
    outcome["seconds"] = time.monotonic() - start
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def one_line(capsys, argv: list[str], seconds: float = 60) -> str:
    """``llama ARGV`` must end within ``seconds`` with exit code 2 and one line on stderr; returns it."""
    assert within(seconds, lambda: main(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------- the suggestion of a divisor
@pytest.mark.parametrize("dim,n_heads,suggested", [(1999999998, 7, 6), (2**61 - 1, 10**9, 1), (100, 8, 10)])
def test_an_impossible_head_count_is_answered_at_once(dim, n_heads, suggested):
    # The suggestion looped over every number up to dim: minutes for --dim 1999999998.
    with pytest.raises(ValueError, match=rf"dim \({dim}\) must be divisible by n_heads \({n_heads}\).*e\.g\. {suggested}$"):
        within(10, lambda: ModelConfig(dim=dim, n_heads=n_heads, n_layers=1, vocab_size=10))


def test_train_with_a_huge_dim_is_refused_at_once(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 200)
    err = one_line(capsys, ["train", "--data", str(text), "--out", str(tmp_path / "run"), "--model", "tiny",
                            "--tokenizer", "bytes", "--max-steps", "1", "--dim", "1999999998", "--n-heads", "7"])
    assert "dim (1999999998) must be divisible by n_heads (7)" in err
    assert not (tmp_path / "run").exists()


def test_a_text_file_renamed_bin_is_refused_at_once(tmp_path, capsys):
    # Its first 28 bytes read as a llama2.c header of absurd sizes ("This" is dim 1936287828).
    path = tmp_path / "notes.bin"
    path.write_text("This is a plain text file, and not a model at all.\n" * 50)
    err = one_line(capsys, ["generate", str(path), "-n", "3"])
    assert str(path) in err and "llama2.c" in err


# ------------------------------------------------------------------ WORLD_SIZE without torchrun
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", [True, False])
def test_world_size_left_in_the_environment_without_torchrun(tmp_path, capsys, monkeypatch, address):
    # One process told it is rank 0 of 2: the other never comes. It waited forever, silently.
    import llama.training.distributed

    monkeypatch.setattr(llama.training.distributed, "RENDEZVOUS_TIMEOUT", 2.0, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"):
        monkeypatch.delenv(name, raising=False)
    if address:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 200)
    err = one_line(capsys, ["train", "--data", str(text), "--out", str(tmp_path / "run"), "--model", "tiny",
                            "--tokenizer", "bytes", "--max-steps", "1"])
    assert "WORLD_SIZE=2 and RANK=0 are set" in err and "torchrun --nproc_per_node 2" in err
    assert "unset WORLD_SIZE and RANK" in err
    assert ("did not all meet at 127.0.0.1:" in err) if address else ("but not MASTER_ADDR and MASTER_PORT" in err)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- a trickling download
@contextlib.contextmanager
def trickling_server(body: bytes, every: float):
    """An HTTP server on 127.0.0.1 that sends ``body`` one byte per ``every`` seconds; yields its URL."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(every)
            except OSError:  # the client gave up: what the test wants
                pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_download_that_trickles_ends_at_its_deadline(tmp_path):
    # Each byte comes well within the per-read timeout (1 s), so only a deadline on the whole
    # download stops it: 1,000 bytes at 0.1 s each would take 100 s.
    import hashlib

    from llama.data.sources import DownloadError, cached_download

    body = bytes(range(250)) * 4
    with trickling_server(body, every=0.1) as url:
        with pytest.raises(DownloadError, match=r"could not download .*file\.bin: only \d+ bytes arrived in 2 s"):
            within(30, lambda: cached_download(url, hashlib.sha256(body).hexdigest(), directory=tmp_path / "cache",
                                               timeout=1.0, max_time=2.0))
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file kept


# ------------------------------------------------------------------ a pattern that backtracks
def test_a_tokenizer_whose_pattern_backtracks_is_stopped(tmp_path, capsys):
    # (a|aa)+$ tries every way to split a run of "a": 2**n for n letters not followed by the end.
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"format": "llama-bpe", "version": 1, "pattern": r"(?:a|aa)+$|\s+|.",
                                "merges": [], "special_tokens": []}))
    err = one_line(capsys, ["tokenize", "encode", "-t", str(path), "a" * 60 + "!"])
    assert f"{path}: the pre-tokenizer pattern" in err and "backtracks" in err and "--pattern" in err


def test_training_with_a_pattern_that_backtracks_is_stopped():
    from llama.tokenizers.bpe import BPETokenizer

    with pytest.raises(ValueError, match="the pre-tokenizer pattern .* backtracks"):
        within(60, lambda: BPETokenizer.train("a" * 60 + "!", 300, pattern=r"(?:a|aa)+$|\s+|."))
