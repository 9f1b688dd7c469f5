"""The settings of a training run: :class:`TrainConfig` (one field per ``llama train`` flag) and
the model sizes it can name.

The settings are plain data, checked when they are made, so that a bad flag fails before any
data is read or any process group is joined; :mod:`llama.training.loop` runs them and
:mod:`llama.training.state` saves them with the run. A bad setting raises a :class:`SettingError`,
whose message names the setting as the library does (``batch_size``); the command line names it
as its flag (``--batch-size``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama.model.config import MAX_SEQ_LEN, PRESETS, ModelConfig

if TYPE_CHECKING:
    from llama.training.lora import LoRAConfig

__all__ = ["MODEL_SIZES", "RECIPES", "SettingError", "TrainConfig", "model_config", "base_config", "memory_needed",
           "check_memory"]

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
#: defaults. ``shakespeare`` is the book's recipe, the best of the sweeps in "Where the time goes":
#: the ``book`` model, Muon, a 2,048-token BPE vocabulary, 16 windows of 128 tokens, a weight decay
#: of 1.0 (two minutes see the training text several times over), two minutes.
#: A flag given beside ``--recipe`` overrides the recipe's value.
RECIPES: dict[str, dict[str, Any]] = {
    "shakespeare": dict(max_time=120.0, optimizer="muon", vocab_size=2048, lr=0.008, batch_size=16, block_size=128,
                        weight_decay=1.0),
}
# --8<-- [end:recipes]


class SettingError(ValueError):
    """A setting that makes no valid run, in a message that names each setting it is about.

    The message is a template (:meth:`str.format`'s): a field that is not one of ``values`` is a
    setting, written as its name (``"{batch_size} must be ..."`` reads ``batch_size must be ...``).
    A front end names the settings its own way with :meth:`naming` (the command line: as its
    flags), without searching the text, where a value (a path) could look like a setting's name.

    Args:
        template: the message, ``{setting}`` for each setting and ``{name}`` for each value.
        **values: the values the message quotes.

    >>> err = SettingError("{block_size} {value} is larger than {max_seq_len}", value=512)
    >>> str(err), err.settings
    ('block_size 512 is larger than max_seq_len', ('block_size', 'max_seq_len'))
    >>> err.naming({"block_size": "--block-size", "max_seq_len": "--max-seq-len"})
    '--block-size 512 is larger than --max-seq-len'
    """

    def __init__(self, template: str, **values: Any) -> None:
        self.template, self.values = template, values
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
        self.settings = tuple(dict.fromkeys(f for f in fields if f not in values))
        super().__init__(self.naming({}))

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each setting written as ``names[setting]`` (as its own name where absent).

        Args:
            names: setting -> how to write it, e.g. ``{"batch_size": "--batch-size"}``.

        Returns:
            The message.
        """
        return self.template.format(**{s: names.get(s, s) for s in self.settings}, **self.values)

    def without_values(self) -> SettingError:
        """The same error with its values written into the template: it holds text alone, which
        JSON carries to another process (:func:`llama.training.distributed.on_rank0`) and pickle can
        copy, and still names its settings.

        Returns:
            A :class:`SettingError` without ``values``.
        """
        marks = {s: f"\0{s}\0" for s in self.settings}  # no value holds a NUL: they are paths, numbers, names
        text = self.template.format(**marks, **self.values).replace("{", "{{").replace("}", "}}")
        for s in self.settings:
            text = text.replace(marks[s], "{" + s + "}")
        return SettingError(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return SettingError, (self.without_values().template,)


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
        sft: with ``base``, supervised fine-tuning on the conversations of this task, ``NAME`` or
            ``NAME:KNOB=VALUE`` (:func:`llama.posttraining.sft.parse_task`), instead of windows of the
            text (which the evaluations still measure); :func:`llama.training.loop.train` is then given
            the data (``source``). sft_system: a system message for each conversation.

    Raises:
        SettingError: a setting that makes no valid run (no length, a negative size, a NaN, two
            settings that do not go together), named as the field it is.
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
    sft: str | None = None
    sft_system: str | None = None

    #: Fields that may change when a run is resumed: how long it goes on, how it reports, and how
    #: it computes the same numbers (compiled, recomputing activations).
    RESUMABLE_CHANGES = ("max_steps", "max_time", "eval_every", "eval_tokens", "threads",
                         "compile", "sample_tokens", "progress", "data", "out", "checkpoint_activations")

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_time is None:
            raise SettingError("give {max_steps}, {max_time} or both: the run needs an end")
        # Every number is checked here, once: a NaN, an infinity or a negative count would
        # otherwise surface much later (a loop that never ends, an overflow, a traceback).
        optional = ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "max_steps", "threads")
        for name in ("vocab_size", "block_size", "batch_size", "accum", "eval_every", "eval_tokens", *optional):
            value = getattr(self, name)
            if not (value is None and name in optional) and not (_is_int(value) and value > 0):
                raise SettingError("{" + name + "} must be a positive integer, got {value!r}", value=value)
        for name in ("warmup_steps", "sample_tokens"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 0):
                raise SettingError("{" + name + "} must be an integer >= 0, got {value!r}", value=getattr(self, name))
        if not (_is_int(self.seed) and 0 <= self.seed < 2**64):
            raise SettingError("{seed} must be an integer from 0 to {high} (what torch's generators take), "
                               "got {value!r}", high=2**64 - 1, value=self.seed)
        ranges = {"lr": (0, math.inf, "a positive number"), "muon_lr": (0, math.inf, "a positive number"),
                  "max_time": (0, math.inf, "a positive number of seconds"),
                  "min_lr_ratio": (0, 1, "a number in [0, 1]"), "weight_decay": (0, math.inf, "a number >= 0"),
                  "grad_clip": (0, math.inf, "a number >= 0 (0 = off)"), "beta1": (0, 1, "a number in [0, 1)"),
                  "beta2": (0, 1, "a number in [0, 1)"), "lora_alpha": (0, math.inf, "a positive number"),
                  "lora_dropout": (0, 1, "a number in [0, 1)")}
        for name, (low, high, what) in ranges.items():
            value = getattr(self, name)
            if value is None and name == "max_time":
                continue
            inside = _is_number(value) and math.isfinite(value) and low <= value <= high
            if (not inside or (name in ("lr", "muon_lr", "max_time", "lora_alpha") and value == 0)
                    or (name in ("beta1", "beta2", "lora_dropout") and value == 1)):
                raise SettingError("{" + name + "} must be {what}, got {value!r}", what=what, value=value)
        if self.optimizer not in ("adamw", "muon"):
            raise SettingError("{optimizer} must be adamw or muon, got {value!r}", value=self.optimizer)
        if self.parallel not in ("ddp", "fsdp"):
            raise SettingError("{parallel} must be ddp or fsdp, got {value!r}", value=self.parallel)
        if self.parallel == "fsdp" and self.compile:
            raise SettingError("{compile} is not supported with {parallel} fsdp here; drop one of them")
        if self.parallel == "fsdp" and self.lora_rank:
            raise SettingError("LoRA fine-tuning trains a few small adapters: use {parallel} ddp, not fsdp")
        if self.dtype not in ("auto", "float32", "bfloat16"):  # llama.training.precision.DTYPES (without importing torch)
            raise SettingError("{dtype} must be auto, float32 or bfloat16, got {value!r}", value=self.dtype)
        if self.max_seq_len is not None and self.max_seq_len > MAX_SEQ_LEN:
            raise SettingError("{max_seq_len} must be a number of positions from 1 to {high:,} (2**20), got "
                               "{value}: the model's RoPE tables are made for every position",
                               high=MAX_SEQ_LEN, value=self.max_seq_len)
        if self.max_seq_len is not None and self.block_size > self.max_seq_len:
            raise SettingError(
                "{block_size} {block} is larger than {max_seq_len} {longest}: the model cannot see windows longer "
                "than its maximum sequence; lower {block_size} or raise {max_seq_len}",
                block=self.block_size, longest=self.max_seq_len)
        if not (_is_int(self.lora_rank) and self.lora_rank >= 0):
            raise SettingError("{lora_rank} must be an integer >= 0 (0: train every weight), got {value!r}",
                               value=self.lora_rank)
        if self.lora_rank and self.base is None:
            raise SettingError("LoRA adapters fine-tune a trained model: give its checkpoint with {base}")
        if self.sft is not None and self.base is None:
            raise SettingError("supervised fine-tuning ({sft}) trains a pre-trained model: give its checkpoint with {base}")
        self.lora_config()  # the targets, checked where they are known

    def lora_config(self) -> LoRAConfig | None:
        """The :class:`llama.training.lora.LoRAConfig` of a LoRA fine-tuning run, or ``None``."""
        if not self.lora_rank:
            return None
        from llama.training.lora import LoRAConfig  # imports torch: `llama --help` must not wait for it

        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        try:
            return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout, targets=targets)
        except ValueError as err:  # the numbers are checked when the settings are made: this is the targets
            raise SettingError("{lora_targets}: {problem}", problem=str(err)) from None

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
        SettingError: ``cfg.model`` names neither a size of :data:`MODEL_SIZES` nor a preset, or
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
    raise SettingError("unknown {model} {value!r}; choose one of: {names}", value=cfg.model,
                       names=", ".join([*MODEL_SIZES, *PRESETS]))


def check_base(base: str) -> str:
    """The format of a fine-tuning base (:func:`llama.formats.checkpoint.detect_format`), with a quantized or
    a sharded checkpoint refused by what it is: both were reported as an "unknown checkpoint format"
    although ``llama generate`` reads them. LoRA trains beside float weights, so a quantized base
    would need its float weights back, which it no longer holds exactly; a sharded one converts in one command.

    Raises:
        FileNotFoundError: nothing at ``base``.
        SettingError: a quantized or sharded checkpoint.
        ValueError: a format :mod:`llama.formats.checkpoint` does not read.
    """
    from pathlib import Path

    from llama.formats.checkpoint import detect_format
    from llama.quantization.weights import is_quantized_checkpoint

    # llama.training.sharded.is_sharded_checkpoint's test, written here: that module imports this one.
    if is_quantized_checkpoint(base):
        raise SettingError("{base} {path} is a quantized checkpoint: LoRA fine-tunes float weights; give {base} the "
                           "float checkpoint it was quantized from (quantize the result afterwards if you like)",
                           path=base)
    if (Path(base) / "state.json").is_file() and (Path(base) / "model").is_dir():
        raise SettingError("{base} {path} is a sharded checkpoint of a {parallel} fsdp run: convert it into one "
                           "folder first (llama convert {path} BASE --to hf), then give {base} BASE", path=base)
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
    if cfg.sft is not None:  # the chat tokens are new ids: the model gets rows for them (llama.posttraining.sft)
        config = dataclasses.replace(config, vocab_size=max(vocab_size, config.vocab_size))
    if vocab_size > config.vocab_size:
        raise SettingError("the tokenizer has {n} tokens but the base model {path} only {base_n}; fine-tune with "
                           "the tokenizer the base was trained with ({tokenizer})", n=vocab_size, path=cfg.base,
                           base_n=config.vocab_size)
    if cfg.max_seq_len is not None:
        return dataclasses.replace(config, max_seq_len=cfg.max_seq_len)
    if cfg.block_size > config.max_seq_len:
        raise SettingError("{block_size} {block} is longer than the {context}-token context of the base {path}, "
                           "which never saw later positions: fine-tune with {block_size} {context} or less (or "
                           "lengthen the context knowingly with {max_seq_len})", block=cfg.block_size,
                           context=config.max_seq_len, path=cfg.base)
    return config


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
        SettingError: the message says how much each part needs and which settings lower it.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        available, where = torch.cuda.get_device_properties(device).total_memory, str(device)
    else:
        available, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
    need = memory_needed(cfg, config)
    if sum(need.values()) > available:
        raise SettingError(
            "this run needs at least {total} of memory, more than the {available} of {where}: {weights} for the "
            "weights of {model} {size} with their gradients and AdamW state, {rope} for the RoPE tables of "
            "{max_seq_len} {positions}, {logits} for one micro-batch's logits; lower {max_seq_len}, the model size, "
            "{batch_size} or {block_size}", total=_size(sum(need.values())), available=_size(available), where=where,
            weights=_size(need["weights"]), size=cfg.model, rope=_size(need["rope"]), positions=config.max_seq_len,
            logits=_size(need["logits"]))


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"
