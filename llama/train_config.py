"""The settings of a training run: :class:`TrainConfig` (one field per ``llama train`` flag) and
the model sizes it can name.

The settings are plain data, checked when they are made, so that a bad flag fails before any
data is read or any process group is joined; :mod:`llama.train` runs them and
:mod:`llama.train_state` saves them with the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llama.config import PRESETS, ModelConfig

__all__ = ["MODEL_SIZES", "TrainConfig", "model_config"]

# --8<-- [start:sizes]
#: Model sizes for training from scratch; ``--model`` also accepts the names in :data:`llama.config.PRESETS`.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=32, n_layers=2, n_heads=4, multiple_of=16),       # tests: trains in milliseconds
    "book": dict(dim=128, n_layers=4, n_heads=4, multiple_of=32),      # the chapter's recipe (nanoGPT's CPU size)
    "small": dict(dim=256, n_layers=6, n_heads=8, multiple_of=32),     # for a longer run or a faster machine
}
# --8<-- [end:sizes]


@dataclass
class TrainConfig:
    """Everything that defines a training run (the ``llama train`` flags).

    Attributes:
        out: output folder.
        data: text file to train on; ``None`` is Tiny Shakespeare (see :func:`llama.data.resolve_text_path`).
        tokenizer: ``"bytes"`` (256 byte tokens), ``"bpe"`` or ``"sentencepiece"`` (trained on
            the training split with ``vocab_size`` tokens), or the path of a saved tokenizer.
        vocab_size: size of a trained tokenizer's vocabulary.
        model: a key of :data:`MODEL_SIZES` or of :data:`llama.config.PRESETS`.
        dim, n_layers, n_heads, n_kv_heads: override the size's fields.
        block_size: tokens per training window (the context the model learns to use).
        max_seq_len: the model's longest sequence (default ``block_size``).
        batch_size: windows per micro-step *per process*.
        accum: micro-steps whose gradients are summed before one optimizer step.
        lr: peak learning rate; min_lr_ratio: final learning rate as a fraction of it.
        warmup_steps: steps of linear warm-up.
        weight_decay, beta1, beta2: AdamW's settings.
        grad_clip: largest global gradient norm (0 disables clipping).
        max_steps: stop after this many optimizer steps; max_time: stop after this many
            seconds of training loop. At least one is required; with both, whichever comes first.
        eval_every: evaluate (and checkpoint) every this many steps.
        eval_tokens: validation tokens used by the periodic evaluations (the final one uses all).
        seed: seeds the weights, the data order and every random-number generator.
        dtype: ``"float32"``, or ``"bfloat16"`` for mixed precision (autocast).
        compile: run the model through ``torch.compile``.
        threads: CPU threads per process (default: all cores, divided among local ranks).
        sample_tokens: tokens to sample from the final model into ``samples.txt``.
        progress: show a progress bar.
    """

    out: str
    data: str | None = None
    tokenizer: str = "bpe"
    vocab_size: int = 1024
    model: str = "book"
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    block_size: int = 256
    max_seq_len: int | None = None
    batch_size: int = 8
    accum: int = 1
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    max_steps: int | None = None
    max_time: float | None = None
    eval_every: int = 25
    eval_tokens: int = 4096
    seed: int = 1337
    dtype: str = "float32"
    compile: bool = False
    threads: int | None = None
    sample_tokens: int = 300
    progress: bool = True

    #: Fields that may change when a run is resumed: how long it goes on and how it reports.
    RESUMABLE_CHANGES = ("max_steps", "max_time", "eval_every", "eval_tokens", "threads",
                         "compile", "sample_tokens", "progress", "data", "out")

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_time is None:
            raise ValueError("give --max-steps, --max-time or both: the run needs an end")
        for name in ("vocab_size", "block_size", "batch_size", "accum", "eval_every", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"--max-steps must be positive, got {self.max_steps}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"--max-time must be positive, got {self.max_time}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("--lr must be positive and --min-lr-ratio in [0, 1]")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("--warmup-steps, --grad-clip and --weight-decay cannot be negative")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.max_seq_len is not None and self.block_size > self.max_seq_len:
            raise ValueError(
                f"--block-size {self.block_size} is larger than --max-seq-len {self.max_seq_len}: the "
                "model cannot see windows longer than its maximum sequence; lower --block-size or raise --max-seq-len"
            )

    def run_settings(self) -> dict[str, Any]:
        """The fields that define the run (all but :attr:`RESUMABLE_CHANGES`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RESUMABLE_CHANGES}


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """The :class:`~llama.config.ModelConfig` of a run: its size, vocabulary and context.

    Args:
        cfg: the run's settings (``model``, the size overrides, ``block_size``, ``max_seq_len``).
        vocab_size: the tokenizer's vocabulary, known only once it is trained or loaded.

    Returns:
        The model's configuration; its ``max_seq_len`` is ``cfg.max_seq_len`` or ``cfg.block_size``.

    Raises:
        ValueError: ``cfg.model`` names neither a size of :data:`MODEL_SIZES` nor a preset.

    >>> model_config(TrainConfig(out="run", model="tiny", max_steps=1, block_size=64), 256).dim
    32
    """
    overrides = {k: getattr(cfg, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads") if getattr(cfg, k)}
    max_seq_len = cfg.max_seq_len or cfg.block_size
    if cfg.model in MODEL_SIZES:
        fields = {**MODEL_SIZES[cfg.model], **overrides}
        if "n_kv_heads" not in overrides:
            fields["n_kv_heads"] = None
        return ModelConfig(**fields, vocab_size=vocab_size, max_seq_len=max_seq_len)
    if cfg.model in PRESETS:
        if "n_heads" in overrides and "n_kv_heads" not in overrides:
            overrides["n_kv_heads"] = overrides["n_heads"]
        return ModelConfig.from_preset(cfg.model, vocab_size=vocab_size, max_seq_len=max_seq_len, **overrides)
    raise ValueError(f"unknown --model {cfg.model!r}; choose one of: {', '.join([*MODEL_SIZES, *PRESETS])}")
