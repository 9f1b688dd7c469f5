"""The tokenizer of a training run: trained on the run's training text, or copied from a file,
into its folder, and checked against the run's settings when it is there already.

:func:`llama.training.state.prepare_run` calls :func:`build_tokenizer` on rank 0, which writes
the file, then on every rank, which reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama._files import atomic_write_bytes
from llama.data.pipeline import read_text, split_bytes
from llama.data.sources import sha256_file
from llama.tokenizers.bpe import BPETokenizer, is_bpe_file
from llama.tokenizers.tokenizer import load_tokenizer, train_sentencepiece
from llama.training.config import TrainConfig

__all__ = ["build_tokenizer"]


# --8<-- [start:build]
def build_tokenizer(cfg: TrainConfig, text_path: Path, out: Path, saved: dict[str, Any] | None) -> tuple[Any, Path]:
    """The run's tokenizer, in the run folder ``out``: the one already there, else trained on the
    training split of ``text_path`` (never on the validation text), else copied from ``cfg.tokenizer``.

    Args:
        cfg: the run's settings (``tokenizer``: ``"bytes"``, ``"bpe"``, ``"sentencepiece"`` or a
            file; ``vocab_size``).
        text_path: the training text.
        out: the run folder, where the tokenizer is ``tokenizer.json`` (BPE) or ``tokenizer.model``.
        saved: the saved ``run.json`` of a resumed run, or ``None``.

    Returns:
        ``(tokenizer, its file in out)``.

    Raises:
        FileNotFoundError: ``cfg.tokenizer`` names a file that does not exist.
        ValueError: the tokenizer in ``out`` is not the one the run's settings made.
    """
    found = [p for p in (out / "tokenizer.json", out / "tokenizer.model") if p.is_file()]
    if found:
        tok = load_tokenizer(found[0])
        _check_tokenizer(cfg, tok, found, saved)
        return tok, found[0]
    if cfg.tokenizer in ("bytes", "bpe", "sentencepiece"):
        train_text = split_bytes(read_text(text_path))[0].decode("utf-8")  # never the validation text
        if cfg.tokenizer == "sentencepiece":
            path = out / "tokenizer.model"
            return train_sentencepiece(train_text, cfg.vocab_size, path), path
        tok = BPETokenizer([]) if cfg.tokenizer == "bytes" else BPETokenizer.train(train_text, cfg.vocab_size)
        path = out / "tokenizer.json"
        tok.save(path)
        return tok, path
    source = Path(cfg.tokenizer)
    if not source.is_file():
        raise FileNotFoundError(f"--tokenizer {source}: no such file; give bytes, bpe, sentencepiece or a saved tokenizer")
    tok = load_tokenizer(source)
    path = out / ("tokenizer.json" if is_bpe_file(source) else "tokenizer.model")
    atomic_write_bytes(path, source.read_bytes())
    return tok, path
# --8<-- [end:build]


def _check_tokenizer(cfg: TrainConfig, tok: Any, found: list[Path], saved: dict[str, Any] | None) -> None:
    """The tokenizer file in a run folder must be the one its settings made: a run trained with
    another one would learn, and report, something other than what ``run.json`` says."""
    path = found[0]
    wanted = {"bytes": (".json", 256), "bpe": (".json", cfg.vocab_size),
              "sentencepiece": (".model", cfg.vocab_size)}.get(cfg.tokenizer)
    problem = None
    if len(found) > 1:
        problem = "the folder holds both tokenizer.json and tokenizer.model"
    elif saved is not None and saved.get("tokenizer_sha256") not in (None, sha256_file(path)):
        problem = "it is not the file the run was started with (its sha256 differs)"
    elif wanted is not None and (path.suffix, tok.vocab_size) != wanted:
        problem = f"that makes a {wanted[0]} file of {wanted[1]} tokens, but it is a {path.suffix} file of {tok.vocab_size}"
    if problem:
        raise ValueError(f"{path} does not belong to this run (--tokenizer {cfg.tokenizer}, --vocab-size "
                         f"{cfg.vocab_size}): {problem}. Put back the run's tokenizer (every checkpoint folder "
                         "holds a copy), or start a new run in another --out")
