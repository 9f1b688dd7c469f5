"""The settings of a training run: :class:`TrainConfig` (one field per ``llama train`` flag) and
the model sizes it can name.

The settings are plain data, checked when they are made, so that a bad flag fails before any
data is read or any process group is joined; :mod:`llama.training.loop` runs them and
:mod:`llama.training.state` saves them with the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama.model.config import MAX_SEQ_LEN, PRESETS, ModelConfig

if TYPE_CHECKING:
    from llama.training.lora import LoRAConfig

__all__ = ["MODEL_SIZES", "RECIPES", "TrainConfig", "model_config", "base_config", "memory_needed", "check_memory"]

# --8<-- [start:sizes]
#: Model sizes for training from scratch; ``--model`` also accepts the names in :data:`llama.model.config.PRESETS`.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=32, n_layers=2, n_heads=4, multiple_of=16),       # tests: trains in milliseconds
    "book": dict(dim=128, n_layers=4, n_heads=4, multiple_of=32),      # the chapter's recipe (nanoGPT's CPU size)
    "small": dict(dim=256, n_layers=6, n_heads=8, multiple_of=32),     # for a longer run or a faster machine
}
# --8<-- [end:sizes]

# --8<-- [start:recipes]
#: Named runs, for ``llama train --recipe NAME``: settings that differ from :class:`TrainConfig`'s
#: defaults. ``shakespeare`` is the book's recipe, the best of the sweep in "Where the time goes":
#: the ``book`` model, Muon, a 2,048-token BPE vocabulary, 16 windows of 128 tokens, two minutes.
#: A flag given beside ``--recipe`` overrides the recipe's value.
RECIPES: dict[str, dict[str, Any]] = {
    "shakespeare": dict(max_time=120.0, optimizer="muon", vocab_size=2048, lr=0.008, batch_size=16, block_size=128),
}
# --8<-- [end:recipes]


@dataclass
class TrainConfig:
    """Everything that defines a training run (the ``llama train`` flags).

    Attributes:
        out: output folder.
        data: text file to train on; ``None`` is Tiny Shakespeare (see :func:`llama.data.pipeline.resolve_text_path`).
        tokenizer: ``"bytes"`` (256 byte tokens), ``"bpe"`` or ``"sentencepiece"`` (trained on
            the training split with ``vocab_size`` tokens), or the path of a saved tokenizer.
        vocab_size: size of a trained tokenizer's vocabulary.
        model: a key of :data:`MODEL_SIZES` or of :data:`llama.model.config.PRESETS`.
        dim, n_layers, n_heads, n_kv_heads: override the size's fields.
        block_size: tokens per training window (the context the model learns to use).
        max_seq_len: the model's longest sequence (default ``block_size``; with ``base``, the base's).
        batch_size: windows per micro-step *per process*.
        accum: micro-steps whose gradients are summed before one optimizer step.
        lr: peak learning rate; min_lr_ratio: final learning rate as a fraction of it.
        warmup_steps: steps of linear warm-up.
        weight_decay, beta1, beta2: AdamW's settings.
        optimizer: ``"adamw"``, or ``"muon"`` (Muon for the blocks' matrices at ``muon_lr``, AdamW
            for the rest: :func:`llama.training.optim.make_optimizer`).
        muon_lr: Muon's peak learning rate (its schedule is ``lr``'s, scaled).
        grad_clip: largest global gradient norm (0 disables clipping).
        max_steps: stop after this many optimizer steps; max_time: stop after this many
            seconds of training loop. At least one is required; with both, whichever comes first.
        eval_every: evaluate (and checkpoint) every this many steps.
        eval_tokens: validation tokens used by the periodic evaluations (the final one uses all).
        seed: seeds the weights, the data order and every random-number generator.
        dtype: ``"auto"``: ``"bfloat16"`` autocast (mixed precision) where the machine computes it
            natively, ``"float32"`` elsewhere (:func:`llama.training.precision.resolve_dtype`); or either of them.
            :func:`llama.training.loop.train` records the dtype it chose, and a resumed run keeps it.
        compile: run the model through ``torch.compile``.
        threads: CPU threads per process (default: all cores, divided among local ranks).
        sample_tokens: tokens to sample from the final model into ``samples.txt``.
        progress: show a progress bar.
        base: fine-tune this checkpoint (:mod:`llama.training.finetune`) instead of training a new model;
            its sizes replace ``model`` and the size overrides.
        parallel: how several processes (``torchrun``) share the work: ``"ddp"``, a whole copy of
            the model on each (:mod:`llama.training.distributed`), or ``"fsdp"``, each holding 1/N of the
            weights, gradients and optimizer state (:mod:`llama.training.fsdp`), with sharded checkpoints
            that resume on any number of processes (:mod:`llama.training.sharded`).
        checkpoint_activations: recompute each block's activations in the backward pass instead
            of keeping them (less memory, one more forward pass).
        lora_rank: with ``base``, train LoRA adapters of this rank on ``lora_targets`` (a comma-separated
            subset of ``wq,wk,wv,wo,w1,w2,w3``) with ``lora_alpha`` and ``lora_dropout``
            (:class:`llama.training.lora.LoRAConfig`); 0 trains every weight.
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
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    max_steps: int | None = None
    max_time: float | None = None
    eval_every: int = 25
    eval_tokens: int = 4096
    seed: int = 1337
    dtype: str = "auto"
    compile: bool = False
    threads: int | None = None
    sample_tokens: int = 300
    progress: bool = True
    base: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "wq,wk,wv,wo,w1,w2,w3"
    parallel: str = "ddp"
    checkpoint_activations: bool = False

    #: Fields that may change when a run is resumed: how long it goes on, how it reports, and how
    #: it computes the same numbers (compiled, recomputing activations).
    RESUMABLE_CHANGES = ("max_steps", "max_time", "eval_every", "eval_tokens", "threads",
                         "compile", "sample_tokens", "progress", "data", "out", "checkpoint_activations")

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_time is None:
            raise ValueError("give --max-steps, --max-time or both: the run needs an end")
        # Every number is checked here, once: a NaN, an infinity or a negative count would
        # otherwise surface much later (a loop that never ends, an overflow, a traceback).
        optional = ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "max_steps", "threads")
        for name in ("vocab_size", "block_size", "batch_size", "accum", "eval_every", "eval_tokens", *optional):
            value = getattr(self, name)
            if not (value is None and name in optional) and not (_is_int(value) and value > 0):
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "sample_tokens"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"--{_flag(name)} must be an integer >= 0, got {getattr(self, name)!r}")
        if not (_is_int(self.seed) and 0 <= self.seed < 2**64):
            raise ValueError(f"--seed must be an integer from 0 to {2**64 - 1} (what torch's generators take), "
                             f"got {self.seed!r}")
        ranges = {"lr": (0, math.inf, "a positive number"), "muon_lr": (0, math.inf, "a positive number"),
                  "max_time": (0, math.inf, "a positive number of seconds"),
                  "min_lr_ratio": (0, 1, "a number in [0, 1]"), "weight_decay": (0, math.inf, "a number >= 0"),
                  "grad_clip": (0, math.inf, "a number >= 0 (0 = off)"), "beta1": (0, 1, "a number in [0, 1)"),
                  "beta2": (0, 1, "a number in [0, 1)")}
        for name, (low, high, what) in ranges.items():
            value = getattr(self, name)
            if value is None and name == "max_time":
                continue
            inside = _is_number(value) and math.isfinite(value) and low <= value <= high
            if not inside or (name in ("lr", "muon_lr", "max_time") and value == 0) or (name.startswith("beta") and value == 1):
                raise ValueError(f"--{_flag(name)} must be {what}, got {value!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"--optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"--parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.parallel == "fsdp" and self.compile:
            raise ValueError("--compile is not supported with --parallel fsdp here; drop one of them")
        if self.parallel == "fsdp" and self.lora_rank:
            raise ValueError("LoRA fine-tuning trains a few small adapters: use --parallel ddp, not fsdp")
        if self.dtype not in ("auto", "float32", "bfloat16"):  # llama.training.precision.DTYPES (without importing torch)
            raise ValueError(f"--dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.max_seq_len is not None and self.max_seq_len > MAX_SEQ_LEN:
            raise ValueError(f"--max-seq-len must be a number of positions from 1 to {MAX_SEQ_LEN:,} (2**20), got "
                             f"{self.max_seq_len}: the model's RoPE tables are made for every position")
        if self.max_seq_len is not None and self.block_size > self.max_seq_len:
            raise ValueError(
                f"--block-size {self.block_size} is larger than --max-seq-len {self.max_seq_len}: the "
                "model cannot see windows longer than its maximum sequence; lower --block-size or raise --max-seq-len"
            )
        if not (_is_int(self.lora_rank) and self.lora_rank >= 0):
            raise ValueError(f"--lora-rank must be an integer >= 0 (0: train every weight), got {self.lora_rank!r}")
        if self.lora_rank and self.base is None:
            raise ValueError("LoRA adapters fine-tune a trained model: give its checkpoint with --base")
        self.lora_config()  # its own checks, with the flags' names

    def lora_config(self) -> LoRAConfig | None:
        """The :class:`llama.training.lora.LoRAConfig` of a LoRA fine-tuning run, or ``None``."""
        if not self.lora_rank:
            return None
        from llama.training.lora import LoRAConfig  # imports torch: `llama --help` must not wait for it

        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout, targets=targets)

    def run_settings(self) -> dict[str, Any]:
        """The fields that define the run (all but :attr:`RESUMABLE_CHANGES`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RESUMABLE_CHANGES}


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """The :class:`~llama.model.config.ModelConfig` of a run: its size, vocabulary and context.

    Args:
        cfg: the run's settings (``model``, the size overrides, ``block_size``, ``max_seq_len``).
        vocab_size: the tokenizer's vocabulary, known only once it is trained or loaded.

    Returns:
        The model's configuration; its ``max_seq_len`` is ``cfg.max_seq_len``, else
        ``cfg.block_size`` for a new model and the base's own context for a fine-tuned one.

    Raises:
        ValueError: ``cfg.model`` names neither a size of :data:`MODEL_SIZES` nor a preset, or
            ``cfg.block_size`` is longer than the context of ``cfg.base``.

    >>> model_config(TrainConfig(out="run", model="tiny", max_steps=1, block_size=64), 256).dim
    32
    """
    overrides = {k: getattr(cfg, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads") if getattr(cfg, k)}
    max_seq_len = cfg.max_seq_len or cfg.block_size
    if cfg.base is not None:
        return _base_config(cfg, vocab_size)
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


def check_base(base: str) -> str:
    """The format of a fine-tuning base (:func:`llama.formats.checkpoint.detect_format`), with a quantized or
    a sharded checkpoint refused by what it is: both were reported as an "unknown checkpoint format"
    although ``llama generate`` reads them. LoRA trains beside float weights, so a quantized base
    would need its float weights back, which it no longer holds exactly; a sharded one converts in one command.

    Raises:
        FileNotFoundError: nothing at ``base``.
        ValueError: a quantized or sharded checkpoint, or a format :mod:`llama.formats.checkpoint` does not read.
    """
    from pathlib import Path

    from llama.formats.checkpoint import detect_format
    from llama.quantization.weights import is_quantized_checkpoint

    # llama.training.sharded.is_sharded_checkpoint's test, written here: that module imports this one.
    if is_quantized_checkpoint(base):
        raise ValueError(f"--base {base} is a quantized checkpoint: LoRA fine-tunes float weights; give --base the "
                         "float checkpoint it was quantized from (quantize the result afterwards if you like)")
    if (Path(base) / "state.json").is_file() and (Path(base) / "model").is_dir():
        raise ValueError(f"--base {base} is a sharded checkpoint of a --parallel fsdp run: convert it into one "
                         f"folder first (llama convert {base} BASE --to hf), then give --base BASE")
    return detect_format(base)


def base_config(base: str) -> ModelConfig:
    """The config of a checkpoint as stored (its context length too), read without building the model."""
    import json
    from pathlib import Path

    from llama.formats.checkpoint import read_checkpoint

    if check_base(base) == "hf":  # the sizes alone, without reading the weights
        return ModelConfig.from_hf(json.loads((Path(base) / "config.json").read_text(encoding="utf-8")))
    return read_checkpoint(base)[0]


def _base_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """The config of the checkpoint a run fine-tunes. It keeps the base's context length unless
    ``--max-seq-len`` changes it: windows longer than that context are refused, not trained on
    positions the base never saw."""
    config = base_config(cfg.base)
    if vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but the base model {cfg.base} only {config.vocab_size}; "
                         "fine-tune with the tokenizer the base was trained with (--tokenizer)")
    if cfg.max_seq_len is not None:
        return dataclasses.replace(config, max_seq_len=cfg.max_seq_len)
    if cfg.block_size > config.max_seq_len:
        raise ValueError(f"--block-size {cfg.block_size} is longer than the {config.max_seq_len}-token context of the "
                         f"base {cfg.base}, which never saw later positions: fine-tune with --block-size "
                         f"{config.max_seq_len} or less (or lengthen the context knowingly with --max-seq-len)")
    return config


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def memory_needed(cfg: TrainConfig, config: ModelConfig) -> dict[str, int]:
    """A lower bound, in bytes, of the memory one training process needs, by what needs it.

    ``weights``: the float32 weights with their gradients and AdamW's two moments (4 copies; with
    LoRA adapters, the weights once and only the adapters 4 times);
    ``rope``: the cos and sin tables of ``max_seq_len`` positions; ``logits``: one micro-batch's
    logits, their float32 copy in the loss and their gradient. Activations come on top.

    >>> cfg = TrainConfig(out="run", model="tiny", max_steps=1, block_size=64, batch_size=2)
    >>> need = memory_needed(cfg, model_config(cfg, 256))    # 64 positions x 4 frequencies, twice
    >>> need["rope"], need["logits"]
    (2048, 393216)
    """
    from llama.model.transformer import count_parameters

    lora = cfg.lora_config()
    if lora is None:
        weights = 4 * 4 * count_parameters(config)
    else:  # frozen weights have no gradient and no AdamW moments
        from llama.training.lora import count_lora_parameters

        weights = 4 * count_parameters(config) + 4 * 4 * count_lora_parameters(config, lora)
    return {"weights": weights,
            "rope": 2 * config.max_seq_len * (config.head_dim // 2) * 4,
            "logits": 3 * cfg.batch_size * cfg.block_size * config.vocab_size * 4}


def check_memory(cfg: TrainConfig, config: ModelConfig, device: Any = "cpu") -> None:
    """Refuse, before allocating anything, a run whose :func:`memory_needed` exceeds the memory of
    ``device`` (a GPU's, or the machine's for the CPU).

    Raises:
        ValueError: the message says how much each part needs and which flags lower it.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        available, where = torch.cuda.get_device_properties(device).total_memory, str(device)
    else:
        available, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
    need = memory_needed(cfg, config)
    if sum(need.values()) > available:
        raise ValueError(
            f"this run needs at least {_size(sum(need.values()))} of memory, more than the {_size(available)} of "
            f"{where}: {_size(need['weights'])} for the weights of --model {cfg.model} with their gradients and "
            f"AdamW state, {_size(need['rope'])} for the RoPE tables of --max-seq-len {config.max_seq_len}, "
            f"{_size(need['logits'])} for one micro-batch's logits; lower --max-seq-len, the model size, "
            "--batch-size or --block-size")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"
