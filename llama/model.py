"""The LLaMA decoder: embeddings, a stack of pre-norm blocks, a final norm and the output head."""

from __future__ import annotations

import math

import torch
from torch import nn

from llama.attention import Attention, KVCache, causal_mask
from llama.config import ModelConfig
from llama.feed_forward import FeedForward
from llama.norm import RMSNorm
from llama.rope import rope_cache

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
                mask: torch.Tensor | None = None, start_pos: int = 0) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))
# --8<-- [end:block]


class Transformer(nn.Module):
    """A LLaMA-style decoder-only language model.

    Parameter names follow Meta's reference (``tok_embeddings``, ``layers.N.attention.wq``,
    ``layers.N.feed_forward.w1``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``);
    :mod:`llama.convert` maps them to Hugging Face's.

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
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
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
    def forward(self, tokens: torch.Tensor, start_pos: int = 0, pad_mask: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Next-token logits for every position (or only the last one).

        Args:
            tokens: ``[b, s]`` token ids.
            start_pos: absolute position of ``tokens[:, 0]``. With a KV cache
                (:meth:`setup_cache`) the earlier positions come from the cache.
            pad_mask: optional ``[b, start_pos + s]`` bool, ``False`` at padding (left
                padding in a batch of prompts of different lengths). Positions are then
                counted per sequence from its first real token, and padding is never attended.
            last_only: compute logits for the last position only. Generation needs nothing
                else, and for a long prompt the output head (``vocab_size x dim``) is then
                applied once instead of ``s`` times.

        Returns:
            ``[b, s, vocab_size]`` logits (``[b, 1, vocab_size]`` with ``last_only``).

        Raises:
            ValueError: ids outside ``[0, vocab_size)``, or positions beyond ``max_seq_len``.
        """
        self._check_tokens(tokens, start_pos)
        b, s = tokens.shape
        cached = self.layers[0].attention.cache is not None
        if pad_mask is None:
            cos, sin = self.rope_cos[start_pos : start_pos + s], self.rope_sin[start_pos : start_pos + s]
            mask = None
        else:
            cos, sin, mask = self._padded_positions(pad_mask, start_pos, s, cached)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, start_pos)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h))
    # --8<-- [end:forward]

    def _check_tokens(self, tokens: torch.Tensor, start_pos: int) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor of shape [batch, seq], got {tuple(tokens.shape)} {tokens.dtype}")
        end = start_pos + tokens.size(1)
        if start_pos < 0 or end > self.config.max_seq_len:
            raise ValueError(
                f"positions {start_pos}..{end - 1} do not fit max_seq_len={self.config.max_seq_len}; "
                "shorten the input or build the model with a larger max_seq_len"
            )
        if tokens.numel() and tokens.device.type != "meta":
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size}); "
                    "check that the tokenizer matches the model"
                )

    def _padded_positions(self, pad_mask: torch.Tensor, start_pos: int, s: int, cached: bool):
        """RoPE rows and attention mask for left-padded sequences (see :meth:`forward`)."""
        b = pad_mask.size(0)
        if pad_mask.shape != (b, start_pos + s) or pad_mask.dtype != torch.bool:
            raise ValueError(f"pad_mask must be a bool tensor of shape [batch, start_pos + seq] = "
                             f"[{b}, {start_pos + s}], got {tuple(pad_mask.shape)} {pad_mask.dtype}")
        # Position of a token = number of real tokens before it in its own sequence.
        positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start_pos:]
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        s_k = start_pos + s if cached else s
        keys_real = pad_mask[:, -s_k:]
        allowed = causal_mask(s, s_k, s_k - s, device=pad_mask.device) & keys_real[:, None, :]
        # A padding query would see no key at all (softmax of all -inf is NaN); let every
        # query see itself so padding rows stay finite. Real queries are unaffected.
        own = torch.arange(s_k - s, s_k, device=pad_mask.device)
        allowed[:, torch.arange(s), own] = True
        return cos, sin, allowed.unsqueeze(1)

    # --8<-- [start:cache]
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Give every attention layer a :class:`~llama.attention.KVCache` (replacing any old one)."""
        max_seq_len = max_seq_len or self.config.max_seq_len
        if max_seq_len > self.config.max_seq_len:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's {self.config.max_seq_len}")
        dtype = dtype or self.output.weight.dtype
        device = self.output.weight.device
        for layer in self.layers:
            attn = layer.attention
            attn.cache = KVCache(batch_size, max_seq_len, attn.n_kv_heads, attn.head_dim, dtype, device)

    def clear_cache(self) -> None:
        """Drop the KV caches: the model goes back to attending only over its input."""
        for layer in self.layers:
            layer.attention.cache = None
    # --8<-- [end:cache]

    # --8<-- [start:pretrained]
    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32, max_seq_len: int | None = None) -> Transformer:
        """Load a checkpoint in any of the formats :mod:`llama.checkpoint` reads, ready for ``eval``.

        ``path`` is a Hugging Face directory (``config.json`` + safetensors), a Meta directory
        (``params.json`` + ``consolidated.NN.pth``) or a llama2.c ``.bin`` file; the format is
        detected. See :func:`llama.checkpoint.load_checkpoint` for the arguments.
        """
        from llama.checkpoint import load_checkpoint  # imported here: checkpoint.py imports this module

        return load_checkpoint(path, dtype=dtype, max_seq_len=max_seq_len)

    def save_pretrained(self, directory) -> None:
        """Write this model in Hugging Face's layout (``config.json`` + ``model.safetensors``).

        ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads the result.
        """
        from llama.checkpoint import save_hf

        save_hf(self, directory)
    # --8<-- [end:pretrained]

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
