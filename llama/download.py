"""Fetch a public file once, check its sha256, and keep it in a cache folder.

Used for the default training text (Tiny Shakespeare). Nothing here is specific to it:
:func:`cached_download` takes any ``http(s)://`` or ``file://`` URL and the sha256 the bytes
must have. A partial or corrupt download never lands under the final name: the bytes go to
a temporary file in the same folder, are hashed, and only a file with the right hash is
renamed into place (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from llama._files import default_mode

__all__ = ["cache_dir", "sha256_file", "cached_download", "DownloadError"]

CACHE_ENV = "LLAMA_CACHE_DIR"


class DownloadError(FileNotFoundError):
    """The file is not in the cache and could not be downloaded (no network, bad URL, ...).

    A ``FileNotFoundError``, so the command line prints it as a one-line error.
    """


def cache_dir() -> Path:
    """Where downloads are kept: ``$LLAMA_CACHE_DIR``, else ``$XDG_CACHE_HOME/llama-from-scratch``,
    else ``~/.cache/llama-from-scratch``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llama-from-scratch"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "abc.txt"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_file(p)
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --8<-- [start:cached_download]
def cached_download(url: str, sha256: str, filename: str | None = None,
                    directory: str | os.PathLike | None = None, timeout: float = 30.0) -> Path:
    """Return the path of ``url``'s file in the cache, downloading it first if needed.

    Args:
        url: ``https://``, ``http://`` or ``file://`` address.
        sha256: the hex digest the file must have; a cached file that does not match is
            downloaded again, a download that does not match is an error.
        filename: name in the cache (default: the last part of the URL).
        directory: the cache folder (default :func:`cache_dir`).
        timeout: seconds to wait for the server.

    Raises:
        DownloadError: the download failed (the message names the URL and the reason).
        ValueError: the downloaded bytes do not have the expected sha256 (nothing is kept).
    """
    directory = Path(directory) if directory is not None else cache_dir()
    filename = filename or url.rstrip("/").rsplit("/", 1)[-1]
    target = directory / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    os.fchmod(fd, default_mode())  # mkstemp's 0600 would stay on the cached file
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while block := response.read(1 << 20):
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                raise DownloadError(f"could not download {url}: {reason}") from None
        if h.hexdigest() != sha256:
            raise ValueError(
                f"{url} downloaded with sha256 {h.hexdigest()}, expected {sha256}: "
                "the file changed or the transfer was corrupted; nothing was kept"
            )
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
# --8<-- [end:cached_download]
