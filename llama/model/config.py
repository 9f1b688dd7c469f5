"""Model hyper-parameters: one dataclass, named presets, and conversion to and from Hugging Face.

Every size in the model follows from :class:`ModelConfig`. The names follow Meta's
``params.json`` (``dim``, ``n_layers``, ``n_heads``, ...); :meth:`ModelConfig.from_hf` and
:meth:`ModelConfig.to_hf` translate to the field names of transformers' ``LlamaConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "MAX_SEQ_LEN", "llama_hidden_dim"]

#: The longest context a :class:`ModelConfig` accepts: 2**20 = 1,048,576 positions, 8 times Llama
#: 3.1's 131,072 and as long as the longest Llama-architecture releases. The number sizes the RoPE
#: tables, which are made whole when the model is built (at head width 128 they take 512 MB here),
#: and it comes from files (``max_position_embeddings``, a GGUF's ``llama.context_length``): without
#: a ceiling, a 1 MB file declaring 2e9 positions made gigabytes of tables before anything else was
#: checked. A longer context is refused, never shortened silently; ``--max-seq-len`` sets a shorter one.
MAX_SEQ_LEN = 2**20


# --8<-- [start:hidden_dim]
def llama_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """Width of the SwiGLU feed-forward layer by Meta's rule.

    Start from the classic ``4 * dim``, take two thirds of it (SwiGLU has three weight
    matrices instead of two, so this keeps the parameter count of a 4x MLP), optionally
    scale by ``ffn_dim_multiplier``, then round up to a multiple of ``multiple_of`` so the
    matrix shapes suit the hardware.

    Args:
        dim: model width.
        multiple_of: round the result up to a multiple of this.
        ffn_dim_multiplier: extra factor used by Llama 2 70B and Llama 3 (``None`` for 1.0).

    Returns:
        The hidden width of the feed-forward layer.

    >>> llama_hidden_dim(4096)                        # Llama 2 7B
    11008
    >>> llama_hidden_dim(2048, 256, 1.5)              # Llama 3.2 1B
    8192
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)
# --8<-- [end:hidden_dim]


_KINDS = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "object": ("an object ({...})", lambda v: isinstance(v, dict)),
}


def _check_field(data: dict[str, Any], key: str, kind: str, default: Any = None, *, null: bool = False,
                 where: str = "") -> Any:
    """``data[key]`` (or ``default`` when absent), checked to be of ``kind`` (a key of ``_KINDS``).

    JSON files written by hand or by other tools carry ``"64"`` or ``"false"``: a string where a
    number or a boolean belongs. Converting it would hide the mistake (``bool("false")`` is True),
    so it is an error naming the field. ``null=True`` lets ``null`` mean the default.
    """
    if key not in data or (null and data[key] is None):
        return default
    value = data[key]
    what, ok = _KINDS[kind]
    if not ok(value):
        hint = ""
        if isinstance(value, str):
            try:
                if ok(json.loads(value)):
                    hint = f": write {value} without quotes"
            except ValueError:
                pass
        raise ValueError(f"{where}{key} must be {what}, got {value!r}{hint}")
    return value


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's RoPE frequency scaling (``rope_type: "llama3"`` in Hugging Face configs).

    Attributes:
        factor: how much longer the new context is than the original one (8 for Llama 3.1,
            32 for Llama 3.2 1B/3B).
        low_freq_factor: wavelengths longer than ``original_max_position_embeddings /
            low_freq_factor`` are divided by ``factor``.
        high_freq_factor: wavelengths shorter than ``original_max_position_embeddings /
            high_freq_factor`` are kept; those in between are interpolated.
        original_max_position_embeddings: the context length the model was pre-trained on.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        for name, kind in (("factor", "number"), ("low_freq_factor", "number"), ("high_freq_factor", "number"),
                           ("original_max_position_embeddings", "int")):
            _check_field(vars(self), name, kind, where="rope_scaling.")
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            _check_finite(f"rope_scaling.{name}", getattr(self, name))
        if self.factor < 1.0:
            raise ValueError(f"rope_scaling.factor must be >= 1 (got {self.factor}); use None for no scaling")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                "rope_scaling needs 0 < low_freq_factor < high_freq_factor "
                f"(got {self.low_freq_factor} and {self.high_freq_factor}); Llama 3.1 uses 1.0 and 4.0"
            )
        if self.original_max_position_embeddings <= 0:
            raise ValueError("rope_scaling.original_max_position_embeddings must be positive (Llama 3.1 uses 8192)")


# --8<-- [start:config]
@dataclass
class ModelConfig:
    """Hyper-parameters of a LLaMA-style decoder.

    Attributes:
        dim: model width (``hidden_size`` in Hugging Face).
        n_layers: number of transformer blocks.
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads; ``None`` means ``n_heads`` (multi-head
            attention), 1 is multi-query attention, anything in between is grouped-query.
        vocab_size: number of token ids.
        hidden_dim: feed-forward width; ``None`` computes it with :func:`llama_hidden_dim`
            from ``multiple_of`` and ``ffn_dim_multiplier``.
        multiple_of: rounding of the feed-forward width (used only when ``hidden_dim`` is None).
        ffn_dim_multiplier: scale of the feed-forward width (used only when ``hidden_dim`` is None).
        max_seq_len: longest sequence the model accepts (sizes the RoPE table and KV cache).
        rope_theta: RoPE base; 10,000 for Llama 2, 500,000 for Llama 3.
        norm_eps: epsilon of RMSNorm.
        tie_embeddings: share the embedding matrix with the output head.
        rope_scaling: Llama 3.1 frequency scaling, or ``None``.

    Raises:
        ValueError: if the sizes do not fit together; the message says which and how to fix it.

    >>> cfg = ModelConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=100)
    >>> cfg.head_dim, cfg.hidden_dim
    (8, 256)
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    hidden_dim: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    rope_scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:  # the rule does arithmetic: its inputs are checked first
            _check_field(vars(self), "dim", "int")
            _check_field(vars(self), "multiple_of", "int")
            _check_field(vars(self), "ffn_dim_multiplier", "number", null=True)
            if self.multiple_of <= 0:
                raise ValueError(f"multiple_of must be a positive integer, got {self.multiple_of}")
            if self.ffn_dim_multiplier is not None and not (math.isfinite(self.ffn_dim_multiplier)
                                                            and self.ffn_dim_multiplier > 0):
                raise ValueError(f"ffn_dim_multiplier must be a finite positive number (1.3 in Llama 3 8B) or "
                                 f"None, got {self.ffn_dim_multiplier}")
            self.hidden_dim = llama_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
        self.validate()

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``dim // n_heads``."""
        return self.dim // self.n_heads
    # --8<-- [end:config]

    def validate(self) -> None:
        """Check that the sizes fit together; raise ``ValueError`` naming the fix if not."""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(
                f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}): "
                f"choose n_heads among the divisors of dim, e.g. {_nearby_divisor(self.dim, self.n_heads)}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}) so each "
                f"key/value head serves the same number of query heads: e.g. n_kv_heads="
                f"{_nearby_divisor(self.n_heads, self.n_kv_heads)}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = dim / n_heads = {self.head_dim} is odd, but RoPE rotates pairs of features: "
                "choose dim and n_heads so that dim / n_heads is even"
            )
        if self.max_seq_len > MAX_SEQ_LEN:
            tables = 4 * self.max_seq_len * self.head_dim  # cos and sin, float32, head_dim / 2 columns each
            raise ValueError(
                f"max_seq_len={self.max_seq_len} is more positions than the {MAX_SEQ_LEN:,} (2**20) this model "
                f"accepts: its RoPE tables alone would take {tables / 1e9:,.1f} GB; give a shorter context "
                "(--max-seq-len N sets it when loading a checkpoint)"
            )
        for name in ("rope_theta", "norm_eps", "ffn_dim_multiplier"):
            _check_field(vars(self), name, "number", null=True)
        _check_field(vars(self), "tie_embeddings", "bool")
        # NaN passes every comparison, and infinity makes the frequencies 0 or the norm 0: both
        # would load and print other tokens, so the values are checked, not only their types.
        if not (math.isfinite(self.rope_theta) and 1 < self.rope_theta < _FLOAT32_MAX):
            raise ValueError(f"rope_theta must be a finite number above 1 (10000 in Llama 2, 500000 in Llama 3), "
                             f"got {self.rope_theta}: it is the base of RoPE's frequencies")
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps < 1):
            raise ValueError(f"norm_eps must be a finite number between 0 and 1 (1e-5 or 1e-6 in Llama models), "
                             f"got {self.norm_eps}")
        if self.ffn_dim_multiplier is not None:  # unused once hidden_dim is given, but saved with the config
            _check_finite("ffn_dim_multiplier", self.ffn_dim_multiplier)

    # ----------------------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named configuration from :data:`PRESETS`, with fields optionally overridden.

        >>> ModelConfig.from_preset("stories15M").dim
        288
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    # ----------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (used in checkpoints); :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    # ------------------------------------------------------------------- Hugging Face names
    # --8<-- [start:hf_config]
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Read the fields of a transformers ``LlamaConfig`` (a ``config.json`` as a dict).

        Accepts both forms met in practice: ``rope_theta`` + ``rope_scaling`` (published
        ``config.json`` files, transformers 4) and a ``rope_parameters`` dict holding
        ``rope_theta`` and the scaling fields (transformers 5). Missing keys take
        transformers' defaults (note its ``rms_norm_eps`` default is 1e-6).

        Raises:
            ValueError: for a field of the wrong type (``"64"`` for 64, ``"false"`` for false:
                nothing is converted), and for features this model does not have (biases,
                another activation, a ``head_dim`` different from
                ``hidden_size / num_attention_heads``, a RoPE type other than default or ``llama3``).

        >>> cfg = ModelConfig.from_hf({"hidden_size": 64, "num_hidden_layers": 2,
        ...     "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 99})
        >>> cfg.dim, cfg.n_kv_heads, cfg.norm_eps, cfg.rope_theta
        (64, 4, 1e-06, 10000.0)
        """
        if not isinstance(hf, dict):
            raise ValueError(f"a config.json must hold a JSON object of fields, not a {type(hf).__name__}")

        def get(key: str, kind: str, default: Any = None, null: bool = False) -> Any:
            return _check_field(hf, key, kind, default, null=null)

        if get("hidden_act", "str", "silu") != "silu":
            raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported: this model uses SwiGLU (silu)")
        for flag in ("attention_bias", "mlp_bias"):
            if get(flag, "bool", False):
                raise ValueError(f"{flag}=True is not supported: Llama's projections have no bias")
        # Every field's type is checked before any is compared, so a message names the real cause.
        dim = get("hidden_size", "int", 4096)
        n_heads = get("num_attention_heads", "int", 32)
        head_dim = get("head_dim", "int", null=True)
        fields = dict(
            n_layers=get("num_hidden_layers", "int", 32),
            n_kv_heads=get("num_key_value_heads", "int", n_heads, null=True),
            vocab_size=get("vocab_size", "int", 32000),
            hidden_dim=get("intermediate_size", "int", 11008),
            max_seq_len=get("max_position_embeddings", "int", 2048),
            norm_eps=get("rms_norm_eps", "number", 1e-6),
            tie_embeddings=get("tie_word_embeddings", "bool", False),
        )
        rope = dict(get("rope_parameters", "object", {}, null=True))
        legacy = get("rope_scaling", "object", {}, null=True)
        rope_theta = _check_field(rope, "rope_theta", "number", get("rope_theta", "number", 10000.0),
                                  where="rope_parameters.")
        rope.pop("rope_theta", None)
        where = "rope_parameters." if rope else "rope_scaling."
        scaling_fields = rope or dict(legacy)
        rope_type = scaling_fields.pop("rope_type", scaling_fields.pop("type", "default"))
        if rope_type == "default":
            rope_scaling = None
        elif rope_type == "llama3":
            kinds = {"factor": "number", "low_freq_factor": "number", "high_freq_factor": "number",
                     "original_max_position_embeddings": "int"}
            rope_scaling = RopeScaling(**{k: _check_field(scaling_fields, k, kind, where=where)
                                          for k, kind in kinds.items() if k in scaling_fields})
        else:
            raise ValueError(f"rope type {rope_type!r} is not supported; use 'default' or 'llama3'")
        config = cls(dim=dim, n_heads=n_heads, rope_theta=float(rope_theta), rope_scaling=rope_scaling, **fields)
        if head_dim is not None and head_dim != config.head_dim:  # after the sizes are known to be valid
            raise ValueError(
                f"head_dim={head_dim} differs from hidden_size/num_attention_heads={dim}/{n_heads}; "
                "this model derives head_dim from dim and n_heads"
            )
        return config

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` fields of transformers' ``LlamaConfig`` for this model.

        Writes ``rope_theta`` and ``rope_scaling`` (the form published checkpoints use,
        which transformers 4 and 5 both read).

        >>> ModelConfig.from_hf(ModelConfig.from_preset("llama3.2-1b").to_hf()) == ModelConfig.from_preset("llama3.2-1b")
        True
        """
        rope_scaling = None
        if self.rope_scaling is not None:
            rope_scaling = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "intermediate_size": self.hidden_dim,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
        }
    # --8<-- [end:hf_config]


#: The largest float32: RoPE computes its frequencies in float32, and a base beyond it is infinite there.
_FLOAT32_MAX = 3.4028234663852886e38


def _check_finite(name: str, value: float) -> None:
    """Refuse NaN and infinity in a field already known to be a number (JSON readers accept both)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def _nearby_divisor(n: int, near: int, steps: int = 100_000) -> int:
    """The divisor of ``n`` closest to ``near`` (for error messages that suggest a fix).

    It looks outwards from ``near``, the smaller candidate first, and stops after ``steps`` on
    each side: 1 divides every ``n``, so the closest divisor is never further than ``near - 1``,
    and a message about ``--dim 1999999998`` comes at once instead of after a loop over every
    number up to ``dim`` (minutes). When the search stops first, 1 is the suggestion.

    >>> _nearby_divisor(100, 8), _nearby_divisor(1999999998, 7), _nearby_divisor(2**61 - 1, 10**9)
    (10, 6, 1)
    """
    for step in range(min(max(near, 1), steps)):
        for d in (near - step, near + step):
            if 1 <= d <= n and n % d == 0:
                return d
    return 1


# --8<-- [start:presets]
PRESETS: dict[str, ModelConfig] = {
    # karpathy's TinyStories models (llama2.c); stories260K is the one in ../shared/data.
    "stories260K": ModelConfig(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512,
                               hidden_dim=172, max_seq_len=512, tie_embeddings=True),
    "stories15M": ModelConfig(dim=288, n_layers=6, n_heads=6, vocab_size=32000, hidden_dim=768,
                              max_seq_len=256, tie_embeddings=True),
    "stories110M": ModelConfig(dim=768, n_layers=12, n_heads=12, vocab_size=32000, hidden_dim=2048,
                               max_seq_len=1024, tie_embeddings=True),
    # Meta's released sizes (values from their params.json / config.json).
    "llama2-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, max_seq_len=4096),
    "llama3.1-8b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                               hidden_dim=14336, max_seq_len=131072, rope_theta=500000.0,
                               rope_scaling=RopeScaling(factor=8.0)),
    "llama3.2-1b": ModelConfig(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                               hidden_dim=8192, max_seq_len=131072, rope_theta=500000.0,
                               tie_embeddings=True, rope_scaling=RopeScaling(factor=32.0)),
}
# --8<-- [end:presets]
