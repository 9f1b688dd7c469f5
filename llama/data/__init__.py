"""Training data: public files fetched once into a cache, and the pipeline from text to training windows.

Modules, in the order the book meets them: :mod:`~llama.data.sources`, :mod:`~llama.data.pipeline`.
Every public name of these modules can be imported from the package itself
(``from llama.data import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "DATA_DIR_ENV": "sources", "cache_dir": "sources", "sha256_file": "sources", "cached_download": "sources",
    "DownloadError": "sources", "Dataset": "sources", "DATASETS": "sources", "dataset": "sources",
    "data_dirs": "sources", "find_data": "sources", "download": "sources",
    "TINY_SHAKESPEARE_URL": "pipeline", "TINY_SHAKESPEARE_SHA256": "pipeline",
    "resolve_text_path": "pipeline", "read_text": "pipeline", "split_bytes": "pipeline",
    "tokenize_to_file": "pipeline", "load_tokens": "pipeline", "TokenData": "pipeline",
    "prepare_tokens": "pipeline", "WindowSampler": "pipeline", "eval_windows": "pipeline",
    "token_byte_lengths": "pipeline",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.data.sources import (
        DATASETS, DATA_DIR_ENV, Dataset, DownloadError, cache_dir, cached_download, data_dirs, dataset,
        download, find_data, sha256_file,
    )
    from llama.data.pipeline import (
        TINY_SHAKESPEARE_SHA256, TINY_SHAKESPEARE_URL, TokenData, WindowSampler, eval_windows, load_tokens,
        prepare_tokens, read_text, resolve_text_path, split_bytes, token_byte_lengths, tokenize_to_file,
    )
