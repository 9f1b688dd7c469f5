"""llama.data.pipeline: the split, tokenize-once arrays, window sampling, evaluation windows, byte counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llama.data import pipeline as data
from llama.data.pipeline import (
    TINY_SHAKESPEARE_SHA256,
    WindowSampler,
    eval_windows,
    prepare_tokens,
    resolve_text_path,
    split_bytes,
    token_byte_lengths,
)
from llama.tokenizers.bpe import BPETokenizer


# ------------------------------------------------------------------------------------ split
@pytest.mark.parametrize("n", [10, 11, 99, 1000, 1_115_394])
def test_split_keeps_the_last_tenth_of_the_bytes(n):
    blob = bytes(range(97, 123)) * (n // 26 + 1)
    blob = blob[:n]
    train, val = split_bytes(blob)
    assert train + val == blob
    assert len(val) == n // 10


def test_split_never_cuts_a_character():
    text = "é" * 50  # 100 bytes, all two-byte characters
    train, val = split_bytes(text.encode())
    assert train.decode() + val.decode() == text  # both halves decode
    blob = ("a" + "é" * 10).encode()  # 21 bytes: the raw cut (19) falls inside the last "é"
    train, val = split_bytes(blob)
    assert (train.decode(), val.decode()) == ("a" + "é" * 9, "é")


def test_tiny_shakespeare_split(shared_file):
    blob = shared_file("tinyshakespeare.txt").read_bytes()
    train, val = split_bytes(blob)
    assert (len(train), len(val)) == (1_003_855, 111_539)


# ----------------------------------------------------------------------------- tokenizing once
def test_prepare_tokens_round_trips_and_is_reused(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    tok = BPETokenizer.train(text.read_text(), 280)
    td = prepare_tokens(text, tok, "tok-v1", tmp_path / "d")
    assert isinstance(td.train, np.memmap) and td.train.dtype == np.uint16
    train_text, val_text = split_bytes(text.read_bytes())
    assert tok.decode(td.train.tolist()).encode() == train_text
    assert tok.decode(td.val.tolist()).encode() == val_text
    assert (td.train_bytes, td.val_bytes) == (len(train_text), len(val_text))
    mtime = (tmp_path / "d" / "train.npy").stat().st_mtime_ns
    prepare_tokens(text, tok, "tok-v1", tmp_path / "d")
    assert (tmp_path / "d" / "train.npy").stat().st_mtime_ns == mtime  # reused, not rewritten
    text.write_text("a different text, so the arrays must be rebuilt " * 40)
    td2 = prepare_tokens(text, tok, "tok-v1", tmp_path / "d")
    assert tok.decode(td2.val.tolist()).encode() == split_bytes(text.read_bytes())[1]


def test_empty_and_tiny_texts_are_clear_errors(tmp_path):
    tok = BPETokenizer([])
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        prepare_tokens(empty, tok, "x", tmp_path / "d")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello")
    with pytest.raises(ValueError, match="too small"):
        prepare_tokens(tiny, tok, "x", tmp_path / "d2")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe" * 50)
    with pytest.raises(ValueError, match="not UTF-8"):
        prepare_tokens(binary, tok, "x", tmp_path / "d3")


# ------------------------------------------------------------------------------------ sampler
def test_sampler_windows_are_slices_of_the_data():
    tokens = np.arange(1000, dtype=np.uint16)
    s = WindowSampler(tokens, block_size=16, batch_size=8, seed=3)
    for _ in range(20):
        x, y = s.next_batch()
        assert x.dtype == torch.int64 and x.shape == (8, 16)
        assert torch.equal(y, x + 1)  # consecutive ids: every window is a real slice
        assert int(y.max()) <= 999 and int(x.min()) >= 0


def test_sampler_reaches_both_ends():
    tokens = np.arange(20)
    s = WindowSampler(tokens, block_size=4, batch_size=64, seed=0)
    starts = torch.cat([s.next_batch()[0][:, 0] for _ in range(10)])
    assert int(starts.min()) == 0 and int(starts.max()) == 20 - 5  # the last full window


def test_ranks_split_the_global_batch():
    tokens = np.arange(5000)
    whole = WindowSampler(tokens, 8, batch_size=6, seed=11)
    parts = [WindowSampler(tokens, 8, batch_size=3, seed=11, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        x, _ = whole.next_batch()
        assert torch.equal(x, torch.cat([p.next_batch()[0] for p in parts]))


def test_sampler_state_restores_the_position():
    s = WindowSampler(np.arange(10_000), 8, 4, seed=5)
    s.next_batch()
    state = s.state().clone()
    expected = [s.next_batch()[0] for _ in range(3)]
    t = WindowSampler(np.arange(10_000), 8, 4, seed=999)
    t.set_state(state)
    assert all(torch.equal(a, t.next_batch()[0]) for a in expected)


def test_sampler_rejects_text_shorter_than_a_window():
    with pytest.raises(ValueError, match="block-size"):
        WindowSampler(np.arange(10), block_size=10, batch_size=1, seed=0)


# ------------------------------------------------------------------------------- eval windows
@pytest.mark.parametrize("n, block, limit", [(100, 7, None), (100, 10, None), (64, 64, None), (100, 7, 30), (5, 8, None)])
def test_eval_windows_predict_each_token_once(n, block, limit):
    tokens = np.arange(n)
    seen = []
    for first, x, y in eval_windows(tokens, block, limit):
        assert x.shape == y.shape and x.size(1) <= block
        assert torch.equal(y, x + 1) and int(y[0, 0]) == first
        seen += y.flatten().tolist()
    end = n - 1 if limit is None else min(limit, n - 1)
    assert seen == list(range(1, end + 1))


# ---------------------------------------------------------------------------------- byte counts
def test_bpe_byte_lengths_sum_to_the_text_length():
    text = "Wherefore art thou Romeo? Deny thy father, and refuse thy name; ünïcødé ✓\n" * 5
    tok = BPETokenizer.train(text, 290)
    ids = tok.encode(text)
    assert int(token_byte_lengths(tok)[ids].sum()) == len(text.encode())


def test_sentencepiece_byte_lengths(tmp_path):
    from llama.tokenizers.tokenizer import train_sentencepiece

    text = "\n".join(f"line {i}: the cat sat on the mat, naïvely" for i in range(200)) + "\n"
    tok = train_sentencepiece(text, vocab_size=300)
    ids = tok.encode(text)
    # the one dummy-prefix "▁" that encoding adds in front is counted: one byte more
    assert int(token_byte_lengths(tok)[ids].sum()) == len(text.encode()) + 1


# ---------------------------------------------------------------------------------- finding data
def test_data_dir_env_finds_tiny_shakespeare(monkeypatch, shared_file):
    path = shared_file("tinyshakespeare.txt")
    monkeypatch.setenv("LLAMA_DATA_DIR", str(path.parent))
    assert resolve_text_path(None) == path


def test_data_dir_copy_with_wrong_hash_is_rejected(monkeypatch, tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    monkeypatch.setenv("LLAMA_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="sha256"):
        resolve_text_path(None)


def only_the_cache(monkeypatch, tmp_path):
    """No $LLAMA_DATA_DIR, an empty cache, and no checkout's shared/data: Tiny Shakespeare is nowhere."""
    from llama.data import sources as download

    monkeypatch.delenv("LLAMA_DATA_DIR", raising=False)
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "data_dirs", lambda: [download.cache_dir()])


def test_training_finds_tiny_shakespeare_wherever_llama_download_does(monkeypatch, tmp_path, shared_file, capsys):
    """`llama download tinyshakespeare` and the training data look in the same folders
    (llama.data.sources.data_dirs): here the checkout's shared/data, which training once skipped."""
    import shutil

    from llama.cli.main import main
    from llama.data import sources as download

    monkeypatch.delenv("LLAMA_DATA_DIR", raising=False)
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(tmp_path / "cache"))
    checkout_data = tmp_path / "shared" / "data"  # stands for shared/data beside a source checkout
    checkout_data.mkdir(parents=True)
    shutil.copyfile(shared_file("tinyshakespeare.txt"), checkout_data / "tinyshakespeare.txt")
    monkeypatch.setattr(download, "data_dirs", lambda: [download.cache_dir(), checkout_data])
    assert main(["download", "tinyshakespeare"]) == 0
    assert capsys.readouterr().out == f"already here, not downloaded: {checkout_data / 'tinyshakespeare.txt'}\n"
    assert resolve_text_path(None, download=False) == checkout_data / "tinyshakespeare.txt"
    assert not (tmp_path / "cache").exists()


def test_no_data_and_no_network_says_how_to_supply_it(monkeypatch, tmp_path):
    only_the_cache(monkeypatch, tmp_path)
    unreachable = (tmp_path / "no-such-file.txt").as_uri()  # stands in for the offline URL
    with pytest.raises(FileNotFoundError, match="--data PATH"):
        resolve_text_path(None, url=unreachable)
    with pytest.raises(FileNotFoundError, match="--data PATH"):
        resolve_text_path(None, download=False)


def test_download_fallback_fills_the_cache(monkeypatch, tmp_path, shared_file):
    src = shared_file("tinyshakespeare.txt")
    only_the_cache(monkeypatch, tmp_path)
    path = resolve_text_path(None, url=src.as_uri())
    assert path == tmp_path / "cache" / "tinyshakespeare.txt"
    assert data.sha256_file(path) == TINY_SHAKESPEARE_SHA256


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        resolve_text_path(tmp_path / "nope.txt")
