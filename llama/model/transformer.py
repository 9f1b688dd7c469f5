"""The LLaMA decoder: embeddings, a stack of pre-norm blocks, a final norm and the output head."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from llama.model.attention import Attention, KVCache, causal_mask
from llama.model.config import ModelConfig
from llama.model.feed_forward import FeedForward
from llama.model.linear import Linear
from llama.model.norm import RMSNorm
from llama.model.rope import rope_cache

__all__ = ["TransformerBlock", "Transformer", "count_parameters"]


# --8<-- [start:block]
class TransformerBlock(nn.Module):
    """One pre-norm block: ``h = x + Attention(norm(x))``, then ``h + FeedForward(norm(h))``.

    Normalising the *input* of each sub-layer (not its output, as the original Transformer
    did) leaves the residual stream untouched from embedding to head, which keeps deep
    stacks trainable without warm-up tricks.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config.dim, config.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_pos: torch.Tensor, pad_keys: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, input_pos, pad_keys)
        return h + self.feed_forward(self.ffn_norm(h))
# --8<-- [end:block]


class Transformer(nn.Module):
    """A LLaMA-style decoder-only language model.

    Parameter names follow Meta's reference (``tok_embeddings``, ``layers.N.attention.wq``,
    ``layers.N.feed_forward.w1``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``);
    :mod:`llama.formats.convert` maps them to Hugging Face's.

    Args:
        config: the sizes. Build on the ``meta`` device (``with torch.device("meta"):``) to
            inspect a large model without allocating its weights.

    >>> model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50))
    >>> model(torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 3, 50])
    """

    # --8<-- [start:init]
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # RoPE tables are derived from the config, so they are not saved with the weights.
        cos, sin = rope_cache(config.head_dim, config.max_seq_len, config.rope_theta, config.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's rule: shrink the projections that write into the residual stream so its
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
    # --8<-- [end:init]

    # --8<-- [start:forward]
    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None,
                pad_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Next-token logits for every position (or only the last one).

        Args:
            tokens: ``[b, s]`` token ids.
            input_pos: ``[s]`` positions of the tokens (default ``0 .. s-1``). With a KV cache
                (:meth:`setup_cache`) the keys and values are written there, and earlier
                positions come from the cache. ``[b, s]`` gives each sequence positions of its
                own, for a cache that writes each row at its own (:class:`llama.serving.slots.SlotCache`).
            pad_mask: optional bool ``[b, s_k]``, ``False`` at padding (left padding in a batch
                of prompts of different lengths); ``s_k`` is the cache length, or ``s`` without
                a cache. Positions are then counted per sequence from its first real token,
                and padding is never attended.
            last_only: compute logits for the last position only. Generation needs nothing
                else, and for a long prompt the output head (``vocab_size x dim``) is then
                applied once instead of ``s`` times.

        Returns:
            ``[b, s, vocab_size]`` logits (``[b, 1, vocab_size]`` with ``last_only``).

        Raises:
            ValueError: ``tokens`` is not a ``[b, s]`` integer tensor, or longer than ``max_seq_len``.
        """
        self._check_tokens(tokens)
        if input_pos is None:
            input_pos = torch.arange(tokens.size(1), device=tokens.device)
        if pad_mask is None:
            positions, pad_keys = input_pos, None
        else:
            positions, pad_keys = self._padded_positions(pad_mask, input_pos, tokens.size(0))
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, input_pos, pad_keys)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h))
    # --8<-- [end:forward]

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        # Shapes and dtypes only: reading values (ids in range) would wait for the device at
        # every step; the entry points that take ids from users check them once.
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor of shape [batch, seq], got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.size(1) > self.config.max_seq_len:
            raise ValueError(
                f"{tokens.size(1)} positions do not fit max_seq_len={self.config.max_seq_len}; "
                "shorten the input or build the model with a larger max_seq_len"
            )

    # --8<-- [start:padding]
    def _padded_positions(self, pad_mask: torch.Tensor, input_pos: torch.Tensor, batch: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE positions ``[b, s]`` and key mask ``[b, 1, s, s_k]`` for left-padded sequences."""
        if pad_mask.dim() != 2 or pad_mask.dtype != torch.bool or pad_mask.size(0) != batch \
                or pad_mask.size(1) < input_pos.numel():
            raise ValueError(f"pad_mask must be a bool tensor of shape [batch, keys] (keys: the cache length, or "
                             f"the number of tokens without a cache), got {tuple(pad_mask.shape)} {pad_mask.dtype}")
        # Position of a token = number of real tokens before it in its own sequence.
        positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)[:, input_pos]
        pad_keys = pad_mask[:, None, :].expand(-1, input_pos.numel(), -1).clone()
        # A padding query would see no key at all (softmax of all -inf is NaN); let every
        # query see itself so padding rows stay finite. Real queries are unaffected.
        pad_keys[:, torch.arange(input_pos.numel(), device=pad_mask.device), input_pos] = True
        return positions, pad_keys.unsqueeze(1)
    # --8<-- [end:padding]

    # --8<-- [start:cache]
    def new_caches(self, batch_size: int, max_seq_len: int | None = None,
                   dtype: torch.dtype | None = None) -> list[KVCache]:
        """One :class:`~llama.model.attention.KVCache` per layer, made but not installed (see :meth:`using_cache`)."""
        max_seq_len = max_seq_len or self.config.max_seq_len
        if max_seq_len > self.config.max_seq_len:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's {self.config.max_seq_len}")
        # The embedding, not the head: a quantized head holds integers (llama.quantization.weights).
        dtype = dtype or self.tok_embeddings.weight.dtype
        device = self.tok_embeddings.weight.device
        mask = causal_mask(max_seq_len, device=device)  # one table, shared by every layer
        return [KVCache(batch_size, max_seq_len, self.config.n_kv_heads, self.config.head_dim, dtype, device, mask)
                for _ in self.layers]

    def setup_cache(self, batch_size: int, max_seq_len: int | None = None,
                    dtype: torch.dtype | None = None) -> list[KVCache]:
        """Give every attention layer a new KV cache (replacing any old one); returns the caches."""
        caches = self.new_caches(batch_size, max_seq_len, dtype)
        self.use_cache(caches)
        return caches

    def use_cache(self, caches: list[KVCache] | None) -> None:
        """Install ``caches`` (one per layer, from :meth:`new_caches`); ``None`` removes them."""
        for i, layer in enumerate(self.layers):
            layer.attention.cache = None if caches is None else caches[i]

    @contextlib.contextmanager
    def using_cache(self, caches: list[KVCache]) -> Iterator[None]:
        """Install ``caches`` for the block only, then put back whatever was installed before.

        A generation keeps its own caches and installs them for each of its forward passes, so
        two generations on one model never read or overwrite each other's keys and values.
        """
        before = [layer.attention.cache for layer in self.layers]
        self.use_cache(caches)
        try:
            yield
        finally:
            self.use_cache(before)

    def clear_cache(self) -> None:
        """Drop the KV caches: the model goes back to attending only over its input."""
        self.use_cache(None)
    # --8<-- [end:cache]


    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())


# --8<-- [start:count]
def count_parameters(config: ModelConfig) -> int:
    """Parameters of :class:`Transformer` computed from the config alone.

    Per block: ``wq`` and ``wo`` are ``dim x dim``, ``wk`` and ``wv`` are
    ``dim x (n_kv_heads * head_dim)``, the three feed-forward matrices are
    ``dim x hidden_dim``, plus two norm gains of size ``dim``. Around the blocks: the
    embedding, the final norm, and the output head unless it is tied to the embedding.

    >>> count_parameters(ModelConfig.from_preset("llama2-7b"))
    6738415616
    """
    d, kv = config.dim, config.n_kv_heads * config.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * config.hidden_dim + 2 * d
    head = 0 if config.tie_embeddings else config.vocab_size * d
    return config.vocab_size * d + config.n_layers * per_layer + d + head
# --8<-- [end:count]
