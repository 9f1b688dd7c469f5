"""Tokenizer speed on Tiny Shakespeare: the hand-written encoders against the ``sentencepiece`` library.

Usage::

    python benchmarks/tokenizer.py [--data-dir DIR] [--repeats 3]

``DIR`` (default: ``$LLAMA_DATA_DIR``, else ``../shared/data`` next to the repository) must hold
``llama2-tokenizer.model`` and ``tinyshakespeare.txt``. Prints one table; every number is the best
of ``--repeats`` runs. "cold" means a fresh tokenizer (empty word cache) for each run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import sentencepiece

from llama.tokenizers.tokenizer import BPETokenizer, SentencePieceTokenizer

REPO = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = os.environ.get("LLAMA_DATA_DIR", str(REPO.parent / "shared" / "data"))
    parser.add_argument("--data-dir", default=default_dir)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    data = Path(args.data_dir)
    model, corpus = data / "llama2-tokenizer.model", data / "tinyshakespeare.txt"
    for path in (model, corpus):
        if not path.is_file():
            print(f"missing {path}: set --data-dir or LLAMA_DATA_DIR", file=sys.stderr)
            return 2
    text = corpus.read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    lines = text.split("\n")
    r = args.repeats
    rows = []

    lib = sentencepiece.SentencePieceProcessor(model_file=str(model))
    t, ids_lib = best_of(r, lambda: lib.encode(text))
    rows.append(("sentencepiece library, whole file", t))
    t, _ = best_of(r, lambda: lib.encode(lines))
    rows.append(("sentencepiece library, line by line", t))

    t_load, ours = best_of(r, lambda: SentencePieceTokenizer(model))

    def cold(tok):
        tok.clear_cache()
        return tok.encode(text)

    t, ids = best_of(r, lambda: cold(ours))
    assert ids == ids_lib, "hand-written encoder disagrees with the library"
    rows.append(("hand-written SentencePiece, whole file, cold cache", t))
    t, _ = best_of(r, lambda: ours.encode(text))
    rows.append(("hand-written SentencePiece, whole file, warm cache", t))
    ours.clear_cache()
    t, _ = best_of(1, lambda: [ours.encode(line) for line in lines])
    rows.append(("hand-written SentencePiece, line by line, cold cache", t))

    t_train, bpe = best_of(r, lambda: BPETokenizer.train(text, 1024))
    t, ids_bpe = best_of(r, lambda: cold(bpe))
    assert bpe.decode(ids_bpe) == text
    rows.append(("hand-written byte-level BPE (vocab 1024), whole file, cold", t))

    print(f"Tiny Shakespeare: {mb:.3f} MB, {len(lines)} lines; Llama 2 tokens: {len(ids_lib)}; "
          f"BPE-1024 tokens: {len(ids_bpe)}")
    print(machine_line())
    print(f"sentencepiece {sentencepiece.__version__}, best of {r}")
    print(f"load Llama 2 tokenizer.model by hand: {t_load:.3f} s")
    print(f"BPETokenizer.train(tinyshakespeare, vocab_size=1024): {t_train:.2f} s")
    print(f"{'encoder':60s} {'seconds':>8s} {'MB/s':>8s}")
    for name, seconds in rows:
        print(f"{name:60s} {seconds:8.3f} {mb / seconds:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
