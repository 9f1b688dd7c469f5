"""Training data: find the text, split it, tokenize it once into a memory-mapped array, sample windows.

The pipeline of :mod:`llama.training.loop`:

1. :func:`resolve_text_path` finds the text file (``--data``, or Tiny Shakespeare wherever
   ``llama download`` finds it, else from its public URL).
2. :func:`split_bytes` keeps the last 10% of the *bytes* for validation.
3. :func:`tokenize_to_file` encodes each part once and stores the ids as a ``.npy`` array;
   :func:`load_tokens` maps it back into memory without reading it (``mmap``).
4. :class:`WindowSampler` draws random training windows from a seeded generator whose state
   is saved in checkpoints, so a resumed run sees the same batches.
5. :func:`token_byte_lengths` says how many bytes of text each token stands for, which
   turns a loss in nats per token into bits per byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llama._files import atomic_write, atomic_write_text
from llama.data.sources import DATA_DIR_ENV, DATASETS, cache_dir, cached_download, find_data, sha256_file
from llama.tokenizers.tokenizer import Tokenizer

__all__ = [
    "DATA_DIR_ENV",
    "TINY_SHAKESPEARE_URL",
    "TINY_SHAKESPEARE_SHA256",
    "resolve_text_path",
    "read_text",
    "split_bytes",
    "tokenize_to_file",
    "load_tokens",
    "TokenData",
    "prepare_tokens",
    "WindowSampler",
    "eval_windows",
    "token_byte_lengths",
]

TINY_SHAKESPEARE = DATASETS["tinyshakespeare"].filename
TINY_SHAKESPEARE_URL = DATASETS["tinyshakespeare"].url
TINY_SHAKESPEARE_SHA256 = DATASETS["tinyshakespeare"].sha256
VAL_FRACTION = 0.1


def resolve_text_path(data: str | os.PathLike | None, download: bool = True,
                      url: str = TINY_SHAKESPEARE_URL) -> Path:
    """The text file to train on.

    ``data`` given: that file, which must exist. ``data`` is ``None``: Tiny Shakespeare, found
    by :func:`llama.data.sources.find_data` in the folders ``llama download`` searches
    (:func:`llama.data.sources.data_dirs`: ``$LLAMA_DATA_DIR``, the download cache, ``shared/data``
    beside a source checkout), else downloaded from ``url`` into the cache. Either copy must have
    the published sha256.

    Raises:
        FileNotFoundError: ``data`` does not exist, or Tiny Shakespeare is nowhere and cannot be
            downloaded (the message says how to supply ``--data``).
        ValueError: a copy of Tiny Shakespeare whose sha256 is wrong.
    """
    if data is not None:
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"no training text at {path}: pass --data with a UTF-8 text file")
        return path
    try:
        found = find_data(TINY_SHAKESPEARE)  # one lookup for every command: `llama download`'s
    except ValueError as err:
        raise ValueError(f"{err}, or pass your own text with --data") from None
    if found is not None:
        return found
    if not download:
        raise FileNotFoundError(_no_data_message("downloading is switched off"))
    try:
        return cached_download(url, DATASETS["tinyshakespeare"].sha256, filename=TINY_SHAKESPEARE)
    except FileNotFoundError as err:
        raise FileNotFoundError(_no_data_message(str(err))) from None


def _no_data_message(reason: str) -> str:
    return (f"Tiny Shakespeare (the default training text) is not available ({reason}). "
            f"Pass --data PATH with any UTF-8 text file, set {DATA_DIR_ENV} to a folder that holds "
            f"{TINY_SHAKESPEARE}, or put it in {cache_dir()} (`llama download tinyshakespeare` fetches it "
            f"from {TINY_SHAKESPEARE_URL})")


def read_text(path: str | os.PathLike) -> bytes:
    """The bytes of a UTF-8 text file; an empty or non-UTF-8 file is an error."""
    data = Path(path).read_bytes()
    if not data.strip():
        raise ValueError(f"{path} is empty: give a text file to train on")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start} is invalid); convert it to UTF-8") from None
    return data


# --8<-- [start:split]
def split_bytes(data: bytes, val_fraction: float = VAL_FRACTION) -> tuple[bytes, bytes]:
    """Split text into (train, validation): validation is the last ``val_fraction`` of the bytes.

    The cut is at ``len(data) - floor(val_fraction * len(data))``, moved forward to the next
    character boundary if it falls inside a multi-byte UTF-8 character. Splitting the *bytes*
    (not the tokens) makes the validation text the same whatever the tokenizer.

    >>> split_bytes(b"0123456789" * 2)
    (b'012345678901234567', b'89')
    >>> split_bytes("aaaaaaaaé".encode())             # 10 bytes; the cut would split "é"
    (b'aaaaaaaa\\xc3\\xa9', b'')
    """
    cut = len(data) - int(val_fraction * len(data))
    while cut < len(data) and (data[cut] & 0b1100_0000) == 0b1000_0000:  # a continuation byte
        cut += 1
    return data[:cut], data[cut:]
# --8<-- [end:split]


# --8<-- [start:tokenize]
def tokenize_to_file(tokenizer: Tokenizer, text: str, path: str | os.PathLike) -> np.ndarray:
    """Encode ``text`` once and store the ids as a ``.npy`` file (written atomically).

    The ids are ``uint16`` when the vocabulary fits (half the disk and memory of
    ``int32``), else ``uint32``. Returns the array as written.
    """
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    ids = np.asarray(tokenizer.encode(text), dtype=dtype)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a bare name
            np.save(f, ids, allow_pickle=False)

    atomic_write(path, write)
    return ids


def load_tokens(path: str | os.PathLike) -> np.ndarray:
    """Map a ``.npy`` file of token ids into memory: pages are read only when a window touches them."""
    return np.load(path, mmap_mode="r", allow_pickle=False)
# --8<-- [end:tokenize]


@dataclass
class TokenData:
    """The tokenized splits of one text with one tokenizer.

    Attributes:
        train: training token ids (memory-mapped).
        val: validation token ids (memory-mapped).
        text_sha256: sha256 of the text they came from.
        train_bytes: UTF-8 bytes of the training text.
        val_bytes: UTF-8 bytes of the validation text.
    """

    train: np.ndarray
    val: np.ndarray
    text_sha256: str
    train_bytes: int
    val_bytes: int


def _checked_ids(path: Path, vocab_size: int) -> np.ndarray:
    """The ids of a reused ``.npy``, all below ``vocab_size``: an id beyond the vocabulary (the file
    changed by hand, or by another tool) stopped training with an embedding's ``IndexError``."""
    tokens = load_tokens(path)
    if tokens.size and (tokens.dtype.kind not in "iu" or int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        bad = tokens.max() if tokens.dtype.kind in "iu" and tokens.min() >= 0 else tokens.min()
        raise ValueError(f"{path} holds the id {bad}, outside the tokenizer's vocabulary of {vocab_size} ids "
                         f"(or is not ids): it was changed; delete {path.parent} and the text is tokenized again")
    return tokens


def prepare_tokens(text_path: str | os.PathLike, tokenizer: Tokenizer, tokenizer_sha256: str,
                   directory: str | os.PathLike) -> TokenData:
    """Tokenize ``text_path`` into ``directory/{train,val}.npy`` unless already done.

    ``directory/meta.json`` records the sha256 of the text and of the tokenizer file; the
    arrays are reused only when both match, so changing either re-tokenizes.
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    text_sha = sha256_file(text_path)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (meta.get("text_sha256"), meta.get("tokenizer_sha256")) == (text_sha, tokenizer_sha256) \
                and (directory / "train.npy").is_file() and (directory / "val.npy").is_file():
            train, val = (_checked_ids(directory / f"{part}.npy", tokenizer.vocab_size) for part in ("train", "val"))
            return TokenData(train, val, text_sha, meta["train_bytes"], meta["val_bytes"])
    data = read_text(text_path)
    train_text, val_text = split_bytes(data)
    if not val_text:
        raise ValueError(f"{text_path} is too small ({len(data)} bytes) to keep 10% for validation; "
                         "use a longer text")
    tokenize_to_file(tokenizer, train_text.decode("utf-8"), directory / "train.npy")
    tokenize_to_file(tokenizer, val_text.decode("utf-8"), directory / "val.npy")
    meta = {"text": str(text_path), "text_sha256": text_sha, "tokenizer_sha256": tokenizer_sha256,
            "train_bytes": len(train_text), "val_bytes": len(val_text)}
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return TokenData(load_tokens(directory / "train.npy"), load_tokens(directory / "val.npy"),
                     text_sha, len(train_text), len(val_text))


# --8<-- [start:sampler]
class WindowSampler:
    """Random training windows of ``block_size + 1`` consecutive tokens.

    Each call draws the start offsets of a *global* batch (``batch_size * world_size`` windows)
    from one seeded ``torch.Generator``; rank ``r`` of ``world_size`` keeps windows
    ``r * batch_size ... (r + 1) * batch_size - 1``. Every rank draws the same numbers, so
    ``N`` ranks with ``batch_size = B / N`` train on exactly the windows a single process with
    ``batch_size = B`` sees. The generator state is all there is to the sampler's position:
    :meth:`state` / :meth:`set_state` save and restore it.

    Args:
        tokens: 1-D array of token ids (a memory map is fine).
        block_size: tokens the model sees; windows hold one more, the last target.
        batch_size: windows per rank.
        seed: seed of the generator.
        rank: this process's index among ``world_size``.

    >>> s = WindowSampler(np.arange(100), block_size=4, batch_size=2, seed=0)
    >>> x, y = s.next_batch()
    >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())   # targets are inputs shifted by one
    (torch.Size([2, 4]), True)
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(
                f"the training text has {len(tokens)} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}: use a longer text or a smaller --block-size"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, both ``[batch_size, block_size]`` int64."""
        n_starts = len(self.tokens) - self.block_size  # last start leaves room for the target
        starts = torch.randint(n_starts, (self.batch_size * self.world_size,), generator=self.generator)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].numpy()
        windows = np.stack([self.tokens[s : s + self.block_size + 1] for s in mine]).astype(np.int64)
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]

    def state(self) -> torch.Tensor:
        """The generator state (a ``uint8`` tensor): where the sampler is in its sequence."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
# --8<-- [end:sampler]


# --8<-- [start:eval_windows]
def eval_windows(tokens: np.ndarray, block_size: int, max_tokens: int | None = None
                 ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Cut validation tokens into consecutive, non-overlapping windows.

    Window ``i`` predicts tokens ``i * block_size + 1 ... (i + 1) * block_size`` from the tokens
    just before each; the last window may be shorter. Together the windows predict every token
    of ``tokens[1 : max_tokens + 1]`` exactly once (all but the first with ``max_tokens=None``).

    Yields:
        ``(first_target_index, inputs [1, n], targets [1, n])``.

    >>> [(i, x.tolist(), y.tolist()) for i, x, y in eval_windows(np.arange(6), 2)]
    [(1, [[0, 1]], [[1, 2]]), (3, [[2, 3]], [[3, 4]]), (5, [[4]], [[5]])]
    """
    end = len(tokens) - 1 if max_tokens is None else min(max_tokens, len(tokens) - 1)
    for start in range(0, end, block_size):
        n = min(block_size, end - start)
        window = torch.from_numpy(np.asarray(tokens[start : start + n + 1], dtype=np.int64))
        yield start + 1, window[None, :-1], window[None, 1:]
# --8<-- [end:eval_windows]


# --8<-- [start:byte_lengths]
def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """How many UTF-8 bytes of text each token id stands for (``int64[vocab_size]``).

    The lengths of ``tokenizer.id_to_bytes(i)`` (see :class:`~llama.tokenizers.tokenizer.Tokenizer`):

    * Byte-level BPE (:class:`~llama.tokenizers.bpe.BPETokenizer`): the length of the token's bytes. The
      sum over a token sequence is exactly the length of the text it decodes to.
    * SentencePiece: a byte piece ``<0xNN>`` is one byte, a control piece (``<s>``, ``</s>``)
      or ``<unk>`` none, a normal piece its UTF-8 length with ``▁`` counted as the space it decodes to. The
      one ``▁`` that encoding adds in front of a text ("dummy prefix") is counted too, so a
      text's sum is its length plus one.

    >>> from llama.tokenizers.bpe import BPETokenizer
    >>> tok = BPETokenizer.train("hello hello hello", 260)
    >>> ids = tok.encode("hello hello")
    >>> int(token_byte_lengths(tok)[ids].sum()), len("hello hello".encode())
    (11, 11)
    """
    return np.array([len(tokenizer.id_to_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)
# --8<-- [end:byte_lengths]
