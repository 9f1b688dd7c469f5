"""llama.data.sources: cached, sha256-checked downloads, tested on file:// URLs and a server on 127.0.0.1."""

from __future__ import annotations

import hashlib

import pytest
from helpers import local_http_server

from llama.data.sources import DownloadError, cache_dir, cached_download, sha256_file

PAYLOAD = b"To be, or not to be, that is the question.\n" * 100
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "hamlet.txt"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def server(source):
    """An HTTP server on 127.0.0.1 serving the source folder; yields its base URL and a request counter."""
    with local_http_server(source.parent) as served:
        yield served


def test_file_url_is_downloaded_once_and_then_read_from_the_cache(tmp_path, source):
    cache = tmp_path / "cache"
    path = cached_download(source.as_uri(), DIGEST, directory=cache)
    assert path == cache / "hamlet.txt" and path.read_bytes() == PAYLOAD
    source.unlink()  # the original is gone: the cached copy must be enough
    assert cached_download(source.as_uri(), DIGEST, directory=cache) == path


def test_http_download_from_a_local_server(tmp_path, server):
    base, hits = server
    path = cached_download(f"{base}/hamlet.txt", DIGEST, filename="h.txt", directory=tmp_path / "c")
    assert path.read_bytes() == PAYLOAD and hits == ["/hamlet.txt"]
    cached_download(f"{base}/hamlet.txt", DIGEST, filename="h.txt", directory=tmp_path / "c")
    assert hits == ["/hamlet.txt"]  # second call: no request


def test_wrong_checksum_keeps_nothing(tmp_path, source):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256"):
        cached_download(source.as_uri(), "0" * 64, directory=cache)
    assert list(cache.iterdir()) == []  # no partial or unverified file left behind


def test_corrupt_cached_file_is_fetched_again(tmp_path, source):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "hamlet.txt").write_bytes(b"truncated")
    path = cached_download(source.as_uri(), DIGEST, directory=cache)
    assert sha256_file(path) == DIGEST


def test_unreachable_url_is_a_clear_error(tmp_path, server):
    base, _ = server
    with pytest.raises(DownloadError, match="could not download .*missing.txt"):
        cached_download(f"{base}/missing.txt", DIGEST, directory=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="could not download"):  # DownloadError is one
        cached_download((tmp_path / "nowhere.txt").as_uri(), DIGEST, directory=tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LLAMA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "llama-from-scratch"
