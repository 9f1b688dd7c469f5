"""The model (part I of the book): its configuration, its layers and the Transformer that stacks them.

Modules, in the order the book meets them: :mod:`~llama.model.config`, :mod:`~llama.model.norm`,
:mod:`~llama.model.rope`, :mod:`~llama.model.linear`, :mod:`~llama.model.attention`,
:mod:`~llama.model.feed_forward`, :mod:`~llama.model.transformer`, :mod:`~llama.model.reference`.
Every public name of these modules can be imported from the package itself
(``from llama.model import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "ModelConfig": "config", "RopeScaling": "config", "PRESETS": "config", "MAX_SEQ_LEN": "config",
    "llama_hidden_dim": "config",
    "RMSNorm": "norm",
    "rope_frequencies": "rope", "scale_frequencies": "rope", "rope_cache": "rope", "apply_rope": "rope",
    "interleaved_to_half_split": "rope", "half_split_to_interleaved": "rope",
    "Linear": "linear",
    "causal_mask": "attention", "kv_cache_bytes": "attention", "KVCache": "attention",
    "Attention": "attention",
    "FeedForward": "feed_forward",
    "TransformerBlock": "transformer", "Transformer": "transformer", "count_parameters": "transformer",
    "repeat_kv": "reference", "apply_rope_half_split": "reference",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.model.config import MAX_SEQ_LEN, ModelConfig, PRESETS, RopeScaling, llama_hidden_dim
    from llama.model.norm import RMSNorm
    from llama.model.rope import (
        apply_rope, half_split_to_interleaved, interleaved_to_half_split, rope_cache, rope_frequencies,
        scale_frequencies,
    )
    from llama.model.linear import Linear
    from llama.model.attention import Attention, KVCache, causal_mask, kv_cache_bytes
    from llama.model.feed_forward import FeedForward
    from llama.model.transformer import Transformer, TransformerBlock, count_parameters
    from llama.model.reference import apply_rope_half_split, repeat_kv
