r"""Tokenizers: what every tokenizer offers, the hand-written ones, the production trainer, one loader.

* :class:`Tokenizer`: the protocol that the rest of the library relies on, and nothing more.
* :class:`~llama.tokenizers.bpe.BPETokenizer`: byte-level BPE (GPT-2 / Llama 3 style), trained by hand.
* :class:`~llama.tokenizers.spm.SentencePieceTokenizer`: reads a SentencePiece BPE ``.model`` (Llama 2)
  and encodes/decodes it by hand, id for id like the ``sentencepiece`` library.
* :func:`train_sentencepiece`: trains such a ``.model`` with the ``sentencepiece`` library,
  with Llama 2's settings.
* :func:`load_tokenizer`: opens either kind of file; :func:`saved_tokenizer` finds the one saved
  with a checkpoint.

Examples:
    >>> tok = train_sentencepiece("the cat sat on the mat\n" * 30, vocab_size=280)
    >>> tok.encode_as_pieces("the cat")
    ['▁the', '▁cat']
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from llama._files import atomic_write_bytes
from llama.tokenizers.bpe import BPETokenizer, is_bpe_file
from llama.tokenizers.pretokenize import GPT2_PATTERN, LLAMA3_PATTERN
from llama.tokenizers.spm import SentencePieceTokenizer

__all__ = [
    "Tokenizer",
    "BPETokenizer",
    "SentencePieceTokenizer",
    "GPT2_PATTERN",
    "LLAMA3_PATTERN",
    "train_sentencepiece",
    "load_tokenizer",
    "saved_tokenizer",
    "tokenizer_file",
    "LLAMA2_TRAINER_OPTIONS",
]


# --8<-- [start:protocol]
@runtime_checkable
class Tokenizer(Protocol):
    """What the command line, the data pipeline and training need from a tokenizer.

    :class:`~llama.tokenizers.bpe.BPETokenizer` and :class:`~llama.tokenizers.spm.SentencePieceTokenizer` both
    provide it (``isinstance(tok, Tokenizer)`` checks that the members exist, not their
    signatures), so code written against it works with either and never asks which one it has.
    """

    @property
    def vocab_size(self) -> int:
        """Number of token ids: every id is in ``range(vocab_size)``."""

    @property
    def bos_id(self) -> int:
        """Id of the beginning-of-sequence token, or -1 if there is none."""

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token, or -1 if there is none."""

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, with ``bos_id`` in front / ``eos_id`` at the end if asked.

        Raises:
            ValueError: If ``bos`` or ``eos`` is asked for but the tokenizer has no such token.
        """

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``."""

    def id_to_piece(self, i: int) -> str:
        """Token ``i`` as a readable string, for display."""

    def id_to_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes of text that token ``i`` stands for (to measure bits per byte)."""
# --8<-- [end:protocol]


# --8<-- [start:llama2_options]
#: The trainer options stored in Llama 2's ``tokenizer.model`` (its ``TrainerSpec``) that
#: shape the vocabulary, minus corpus-size settings. ``train_sentencepiece`` uses these.
LLAMA2_TRAINER_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,           # unknown characters -> <0xNN> byte pieces, never <unk>
    split_digits=True,            # every digit is its own piece
    allow_whitespace_only_pieces=True,  # pieces like "▁▁▁▁" for indentation
    character_coverage=0.99995,   # rarer characters are left to byte fallback
    normalization_rule_name="identity",  # no NFKC: text is kept as written
    add_dummy_prefix=True,        # "Hello" is encoded as "▁Hello"
    remove_extra_whitespaces=False,  # keep runs of spaces
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
)
# --8<-- [end:llama2_options]


def train_sentencepiece(
    text_or_path: str | os.PathLike,
    vocab_size: int,
    model_path: str | os.PathLike | None = None,
    **options: object,
) -> SentencePieceTokenizer:
    """Train a SentencePiece BPE model with the ``sentencepiece`` library (Llama 2's settings).

    Args:
        text_or_path: The corpus: a ``str`` is the text itself; a ``pathlib.Path`` (or any
            other ``os.PathLike``) names a UTF-8 text file. Each line is one sentence.
        vocab_size: Number of pieces, including ``<unk>``, ``<s>``, ``</s>`` and the 256
            byte pieces.
        model_path: Where to write the ``.model`` file (atomically); ``None`` keeps it in
            memory only.
        **options: Overrides of :data:`LLAMA2_TRAINER_OPTIONS` or any other
            ``SentencePieceTrainer`` option (e.g. ``user_defined_symbols=["<tab>"]``).

    Returns:
        The hand-written tokenizer, loaded from the trained model.

    Raises:
        FileNotFoundError: If ``text_or_path`` is a path that does not exist.
        ValueError: If the corpus is empty or the library rejects the settings (for example
            a ``vocab_size`` too large for the corpus, or too small for the byte pieces).
    """
    import sentencepiece

    if isinstance(text_or_path, os.PathLike):
        path = Path(text_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no corpus file at {path}")
        text = path.read_text(encoding="utf-8")
    elif isinstance(text_or_path, str):
        text = text_or_path
    else:
        raise TypeError("text_or_path must be a str (the text) or a pathlib.Path (a file)")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the corpus is empty: give some text to train on")
    settings = dict(LLAMA2_TRAINER_OPTIONS)
    settings.update(options)
    settings.setdefault("max_sentence_length", max(4192, max(len(line.encode()) for line in lines)))
    settings.setdefault("num_threads", min(4, os.cpu_count() or 1))
    settings.setdefault("minloglevel", 2)  # only errors
    buf = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, **settings
        )
    except RuntimeError as err:
        raise ValueError(f"sentencepiece could not train this model: {str(err).strip()}") from None
    data = buf.getvalue()
    if model_path is not None:
        atomic_write_bytes(Path(model_path), data)
    return SentencePieceTokenizer.from_bytes(data)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Open a tokenizer file: a BPE JSON file from :meth:`BPETokenizer.save`, else a ``.model``
    (:func:`llama.tokenizers.bpe.is_bpe_file` tells them apart).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is neither kind of tokenizer, or may not be read.
    """
    return BPETokenizer.load(path) if is_bpe_file(path) else SentencePieceTokenizer(Path(path))


def tokenizer_file(folder: str | os.PathLike) -> Path | None:
    """The tokenizer file inside a checkpoint folder, ``tokenizer.json`` or ``tokenizer.model`` (as
    ``llama train`` leaves it in ``OUT/model``), or ``None``."""
    found = [Path(folder) / name for name in ("tokenizer.json", "tokenizer.model") if (Path(folder) / name).is_file()]
    return found[0] if found else None


def copy_saved_tokenizer(source: str | os.PathLike, destination: str | os.PathLike) -> Path | None:
    """Copy the tokenizer saved in the checkpoint folder ``source`` (:func:`tokenizer_file`) into the
    folder ``destination``, so a checkpoint converted from it keeps its tokenizer; returns the copy,
    or ``None`` when ``source`` has none (or ``destination`` already holds a file of that name)."""
    found = tokenizer_file(source) if Path(source).is_dir() else None
    if found is None or (Path(destination) / found.name).exists():
        return None
    return Path(shutil.copyfile(found, Path(destination) / found.name))


def saved_tokenizer(checkpoint: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved with a checkpoint: ``tokenizer.json`` or ``tokenizer.model`` inside its
    folder (``llama train`` and ``llama finetune`` leave one in ``OUT/model``), or the vocabulary
    stored in a GGUF file (:func:`llama.tokenizers.gguf_vocab.tokenizer_from_gguf`).

    Raises:
        FileNotFoundError: nothing at ``checkpoint``.
        ValueError: no tokenizer is saved with it (the message says to pass ``--tokenizer``).
    """
    from llama.formats.checkpoint import detect_format

    path = Path(checkpoint)
    if path.is_dir():  # any checkpoint folder (Hugging Face, quantized, ...): its format does not matter here
        if (found := tokenizer_file(path)) is not None:
            return load_tokenizer(found)
        missing = f"{path} holds no tokenizer.json or tokenizer.model"
    elif (kind := detect_format(checkpoint)) == "gguf":
        from llama.formats.gguf import read_gguf_vocab
        from llama.tokenizers.gguf_vocab import tokenizer_from_gguf

        if read_gguf_vocab(path) is not None:
            return tokenizer_from_gguf(path)
        missing = f"{path} stores no tokenizer (it was exported without --tokenizer)"
    else:
        missing = f"{path} is a {kind} file, which keeps no tokenizer"
    raise ValueError(f"--prompt needs a tokenizer to turn text into ids, and {missing}: pass --tokenizer FILE, "
                     "or give the prompt as --ids")
