"""Fetch a public file once, check its sha256, and keep it in a cache folder.

:data:`DATASETS` names the public files the book uses (a tiny pretrained model, Llama 2's
tokenizer, the default training text); ``llama download NAME`` fetches one, and
:func:`find_data` is how the chapters and figures look for them. :func:`cached_download`
itself takes any ``http(s)://`` or ``file://`` URL and the sha256 the bytes must have. A partial or corrupt download never lands under the final name: the bytes go to
a temporary file in the same folder, are hashed, and only a file with the right hash is
renamed into place (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from llama._files import default_mode

__all__ = ["DATA_DIR_ENV", "cache_dir", "sha256_file", "cached_download", "DownloadError", "Dataset", "DATASETS",
           "dataset", "data_dirs", "find_data", "download"]

CACHE_ENV = "LLAMA_CACHE_DIR"
DATA_DIR_ENV = "LLAMA_DATA_DIR"


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


def _remove_stale_parts(directory: Path, filename: str) -> None:
    """Delete what killed downloads of ``filename`` left (``.FILENAME.XXXX.part``): a failed download
    removes its own, but a killed one cannot, and its megabytes stayed in the cache for good. A part
    still locked belongs to a download in progress, in another process, and is kept."""
    for part in directory.glob(f".{glob.escape(filename)}.*.part"):
        try:
            with open(part, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                part.unlink()
        except OSError:  # locked by a download in progress, or already gone
            continue


# --8<-- [start:cached_download]
def cached_download(url: str, sha256: str, filename: str | None = None,
                    directory: str | os.PathLike | None = None, timeout: float = 30.0,
                    max_time: float = 600.0) -> Path:
    """Return the path of ``url``'s file in the cache, downloading it first if needed.

    Args:
        url: ``https://``, ``http://`` or ``file://`` address.
        sha256: the hex digest the file must have; a cached file that does not match is
            downloaded again, a download that does not match is an error.
        filename: name in the cache (default: the last part of the URL).
        directory: the cache folder (default :func:`cache_dir`).
        timeout: seconds to wait for the server, at the start and for each piece of the file.
        max_time: seconds the whole download may take. ``timeout`` alone bounds each read, so a
            server that trickles a byte now and then would never time out.

    Raises:
        DownloadError: the download failed or took longer than ``max_time`` (the message names
            the URL and the reason).
        ValueError: the downloaded bytes do not have the expected sha256 (nothing is kept).
    """
    directory = Path(directory) if directory is not None else cache_dir()
    filename = filename or url.rstrip("/").rsplit("/", 1)[-1]
    target = directory / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(directory, filename)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    os.fchmod(fd, default_mode())  # mkstemp's 0600 would stay on the cached file
    fcntl.flock(fd, fcntl.LOCK_EX)  # this file is in use: another download of the same file leaves it alone
    try:
        h, deadline, received = hashlib.sha256(), time.monotonic() + max_time, 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    # read1 returns what has arrived (read waits for a whole block), so the
                    # deadline is checked between pieces of any size.
                    while block := response.read1(1 << 20):
                        h.update(block)
                        out.write(block)
                        received += len(block)
                        if time.monotonic() > deadline:
                            raise DownloadError(f"could not download {url}: only {received:,} bytes arrived in "
                                                f"{max_time:g} s (max_time); the server is too slow, try again later")
            except (urllib.error.URLError, OSError) as err:
                if isinstance(err, DownloadError):
                    raise
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


@dataclass(frozen=True)
class Dataset:
    """A public file the book uses: its name for ``llama download``, its file name, where it comes from."""

    name: str
    filename: str
    url: str
    sha256: str
    description: str


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("stories260K", "stories260K.bin",
            "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin",
            "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6",
            "Karpathy's 260K-parameter Llama trained on TinyStories, llama2.c .bin format (1.0 MB)"),
    Dataset("llama2-tokenizer", "llama2-tokenizer.model",
            "https://github.com/karpathy/llama2.c/raw/master/tokenizer.model",
            "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347",
            "Meta's Llama 2 SentencePiece model, 32,000 pieces, as redistributed in llama2.c (0.5 MB)"),
    Dataset("tinyshakespeare", "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "Tiny Shakespeare, the default training text (1.1 MB)"),
)}


def dataset(name: str) -> Dataset:
    """The entry of :data:`DATASETS` called ``name`` (or whose file is called ``name``).

    >>> dataset("stories260K.bin").name
    'stories260K'
    >>> dataset("gpt4")
    Traceback (most recent call last):
    ...
    ValueError: unknown data set 'gpt4': choose one of stories260K, llama2-tokenizer, tinyshakespeare (llama download --list)
    """
    for d in DATASETS.values():
        if name in (d.name, d.filename):
            return d
    raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)} (llama download --list)")


def data_dirs() -> list[Path]:
    """The folders :func:`find_data` searches, in order: ``$LLAMA_DATA_DIR`` (if set), the download
    cache (:func:`cache_dir`), and ``shared/data`` beside the folder of a source checkout."""
    dirs = [Path(os.environ[DATA_DIR_ENV])] if os.environ.get(DATA_DIR_ENV) else []
    dirs.append(cache_dir())
    checkout = Path(__file__).resolve().parents[2]  # the folder holding llama/, in a source checkout
    if (checkout / "pyproject.toml").is_file():
        dirs.append(checkout.parent / "shared" / "data")
    return dirs


# --8<-- [start:find_data]
def find_data(filename: str) -> Path | None:
    """The first copy of ``filename`` in :func:`data_dirs`, or ``None`` if there is none.

    A file of :data:`DATASETS` must have its published sha256; a copy that does not is an error
    rather than silently used.

    Raises:
        ValueError: a copy of a known file whose sha256 differs (the message says what to do).
    """
    known = next((d for d in DATASETS.values() if d.filename == filename), None)
    for folder in data_dirs():
        path = folder / filename
        if path.is_file():
            if known is not None and sha256_file(path) != known.sha256:
                raise ValueError(f"{path} is not the published {filename} (its sha256 differs): "
                                 f"remove it, then run `llama download {known.name}`")
            return path
    return None
# --8<-- [end:find_data]


def download(name: str, directory: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Make the data set ``name`` available: ``(path, downloaded)``.

    A copy already found by :func:`find_data` is used as it is (``downloaded`` is ``False``);
    otherwise the file is fetched into ``directory`` (default :func:`cache_dir`) and checked.

    Raises:
        ValueError: an unknown name, or a file whose sha256 is not the published one.
        DownloadError: the download failed; the message says how to supply the file by hand.
    """
    d = dataset(name)
    if directory is None and (found := find_data(d.filename)) is not None:
        return found, False
    try:
        return cached_download(d.url, d.sha256, filename=d.filename, directory=directory), True
    except DownloadError as err:
        target = Path(directory) if directory is not None else cache_dir()
        raise DownloadError(f"{err}; check the network, or fetch that URL some other way and save it "
                            f"as {target / d.filename} (or in ${DATA_DIR_ENV})") from None
