"""LoRA: a frozen weight plus a trainable low-rank update, ``W + (alpha / r) B A``.

:func:`add_lora` wraps the chosen projections of a :class:`~llama.model.transformer.Transformer` (``wq wk wv
wo w1 w2 w3``) in :class:`LoRALinear` and freezes everything else; :func:`merge` folds the update
into the weights for inference and :func:`unmerge` restores them bit for bit. Adapters are saved
on their own in Hugging Face PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``),
so that ``peft.PeftModel.from_pretrained`` reads what :func:`save_adapter` writes, and
:func:`load_adapter` reads what PEFT saved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llama._files import atomic_write, atomic_write_text, refuse_to_overwrite
from llama.formats.convert import HF_NAMES, expected_shapes
from llama.model.linear import Linear
from llama.model.rope import half_split_to_interleaved, interleaved_to_half_split

__all__ = ["TARGETS", "LoRAConfig", "LoRALinear", "add_lora", "lora_modules", "lora_state_dict", "merge",
           "unmerge", "merge_into_base", "trainable_parameters", "count_lora_parameters", "save_adapter", "load_adapter", "read_adapter"]

#: The projections an adapter can wrap, by our name, with the module that holds them.
TARGETS = {"wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention",
           "w1": "feed_forward", "w2": "feed_forward", "w3": "feed_forward"}


# --8<-- [start:config]
@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """What to adapt and how.

    Attributes:
        rank: ``r``, the inner width of the update ``B A`` (``B``: ``[out, r]``, ``A``: ``[r, in]``).
        alpha: the update is scaled by ``alpha / rank``, LoRA's and PEFT's default (rsLoRA's
            ``alpha / sqrt(rank)``, which keeps the first steps' size independent of the rank,
            is not supported).
        dropout: probability of zeroing an input feature of the adapter path (training only).
        targets: which projections get an adapter, a subset of :data:`TARGETS`.

    Raises:
        ValueError: a rank that is not a positive integer, a non-positive alpha, a dropout
            outside ``[0, 1)``, or an unknown or empty set of targets.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(TARGETS)

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"the LoRA rank must be a positive integer, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"the LoRA alpha must be a positive number, got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"the LoRA dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"the LoRA targets must be some of {', '.join(TARGETS)}, "
                             f"got {', '.join(self.targets) or 'none'}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank
# --8<-- [end:config]


# --8<-- [start:layer]
class LoRALinear(Linear):
    r"""A frozen :class:`~llama.model.linear.Linear` plus a trainable low-rank path:
    $\;y = W x + \tfrac{\alpha}{r}\, B\,A\,\operatorname{dropout}(x)$.

    ``B`` starts at zero, so at initialisation the layer computes exactly what the base did;
    ``A`` starts random (Kaiming-uniform, like ``nn.Linear``), so the gradient reaching ``B`` is
    not zero either. The base weight keeps its name (``weight``): a state dict of the wrapped
    model holds the base model's keys, plus ``lora_A`` and ``lora_B``.

    Args:
        base: the layer to wrap; its weight is shared, not copied, and frozen.
        config: rank, alpha and dropout.

    Shape:
        ``x``: ``[..., in_features]`` → ``[..., out_features]``.
    """

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a weight we replace at once
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        self.config, self.scaling = config, config.scaling
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(config.rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.unmerged_weight: torch.Tensor | None = None  # the base weight, kept while merged

    @property
    def merged(self) -> bool:
        return self.unmerged_weight is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.merged:  # the update is inside the weight already
            return out
        return out + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta(self) -> torch.Tensor:
        """The update this adapter adds to the weight: ``(alpha / r) B A``, ``[out, in]``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the weight: one matrix product per layer at inference, as before.

        The base weight is kept aside, because ``(W + D) - D`` is not always ``W`` in floating
        point: :meth:`unmerge` puts the kept copy back instead of subtracting.
        """
        if not self.merged:
            self.unmerged_weight = self.weight.detach().clone()
            self.weight.add_(self.delta().to(self.weight.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight exactly (bit for bit) and compute the update separately again."""
        if self.merged:
            self.weight.copy_(self.unmerged_weight)
            self.unmerged_weight = None
# --8<-- [end:layer]


# --8<-- [start:add_lora]
def add_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Freeze every parameter of ``model``, then wrap the ``config.targets`` projections of every
    block in :class:`LoRALinear`; only the adapters' ``A`` and ``B`` train. Returns ``model``.

    Raises:
        ValueError: the model already has adapters.
    """
    if lora_modules(model):
        raise ValueError("the model already has LoRA adapters; build a fresh model to add others")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.layers:
        for name in config.targets:
            parent = getattr(block, TARGETS[name])
            setattr(parent, name, LoRALinear(getattr(parent, name), config))
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts: with adapters, the trainable share is small."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
# --8<-- [end:add_lora]


# --8<-- [start:count]
def count_lora_parameters(config, lora: LoRAConfig) -> int:
    """Parameters of the adapters :func:`add_lora` gives a model of ``config`` (a
    :class:`~llama.model.config.ModelConfig`), from the sizes alone: ``r (in + out)`` per adapted
    projection, against ``in x out`` for the projection itself.

    >>> from llama import ModelConfig
    >>> count_lora_parameters(ModelConfig.from_preset("llama2-7b"), LoRAConfig(rank=8))
    19988480
    """
    matrices = {n: shape for n, shape in expected_shapes(config).items() if n.startswith("layers.") and len(shape) == 2}
    return sum(lora.rank * sum(shape) for n, shape in matrices.items() if n.split(".")[-2] in lora.targets)
# --8<-- [end:count]


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers by name (``layers.0.attention.wq``, ...); empty without adapters."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors (``layers.0.attention.wq.lora_A``, ...): what fine-tuning changed."""
    return {f"{name}.{ab}": getattr(m, ab).detach() for name, m in lora_modules(model).items()
            for ab in ("lora_A", "lora_B")}


# --8<-- [start:merge]
def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (:meth:`LoRALinear.merge`); returns ``model``."""
    for m in lora_modules(model).values():
        m.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge`: every weight is the base weight again, bit for bit; returns ``model``."""
    for m in lora_modules(model).values():
        m.unmerge()
    return model


def merge_into_base(model: nn.Module) -> nn.Module:
    """Merge every adapter for good: each :class:`LoRALinear` becomes a plain
    :class:`~llama.model.linear.Linear` holding ``W + (alpha / r) B A``, and no copy of ``W`` is kept.

    The model is then an ordinary :class:`~llama.model.transformer.Transformer` again (its state dict has the
    base model's keys only), to save, convert or compile like any other. Returns ``model``.

    Raises:
        ValueError: a merged weight would hold NaN or infinity (an ``alpha`` of 1e30, say),
            checked for every layer before any changes: a merged model is what gets written.
    """
    for name, m in lora_modules(model).items():  # one layer's sum at a time, not a copy of every weight
        with torch.no_grad():
            bad = int((~torch.isfinite(m.weight + m.delta().to(m.weight.dtype))).sum())
        if bad:
            raise ValueError(f"merging the adapter would put NaN or infinity in {bad} values of {name}.weight "
                             f"(alpha {m.config.alpha:g}, rank {m.config.rank}): the adapter is damaged or its lora_alpha "
                             "is not a trained one's; nothing was merged")
    for name, m in lora_modules(model).items():
        parent, _, child = name.rpartition(".")
        m.merge()
        plain = Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        setattr(model.get_submodule(parent), child, plain)
    return model
# --8<-- [end:merge]


# --------------------------------------------------------------------------- PEFT's layout
# --8<-- [start:peft_names]
def _peft_names(n_layers: int) -> dict[str, str]:
    """Our adapted layer's name → PEFT's module name for ``LlamaForCausalLM``
    (``layers.0.attention.wq`` → ``base_model.model.model.layers.0.self_attn.q_proj``)."""
    names = {}
    for i in range(n_layers):
        for target, parent in TARGETS.items():
            hf = HF_NAMES[f"layers.{{i}}.{parent}.{target}.weight"].format(i=i).removesuffix(".weight")
            names[f"layers.{i}.{parent}.{target}"] = "base_model.model." + hf
    return names


def _rope_heads(name: str, model_config) -> int | None:
    """Heads of a projection whose output rows Hugging Face keeps in half-split RoPE order."""
    return {"wq": model_config.n_heads, "wk": model_config.n_kv_heads}.get(name.rsplit(".", 1)[-1])
# --8<-- [end:peft_names]


# --8<-- [start:save_adapter]
def save_adapter(model: nn.Module, directory: str | os.PathLike, base: str | None = None) -> Path:
    """Write the adapters alone, in PEFT's layout, into ``directory``; returns it.

    ``adapter_model.safetensors`` holds ``lora_A``/``lora_B`` under PEFT's names for a
    ``LlamaForCausalLM``; ``B`` of ``wq`` and ``wk`` has its rows reordered as the base weight's are
    (:func:`llama.model.rope.interleaved_to_half_split`), because ``B``'s rows are the weight's output
    rows, while ``A`` (input side) is unchanged. ``adapter_config.json`` says rank, alpha,
    dropout and targets, by Hugging Face's module names.

    Args:
        model: a model with adapters (:func:`add_lora`), not merged.
        directory: folder to write (created if needed).
        base: the base checkpoint, recorded as ``base_model_name_or_path``.

    Raises:
        ValueError: the model has no adapters or is merged, or a file in the way is not an adapter.
    """
    from safetensors.torch import load_file, save_file

    layers = lora_modules(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; add them with add_lora (or --lora-rank)")
    if any(m.merged for m in layers.values()):
        raise ValueError("the adapters are merged into the weights; unmerge(model) before saving them")
    lora = next(iter(layers.values())).config
    targets = sorted({name.rsplit(".", 1)[-1] for name in layers})
    names = _peft_names(len(model.layers))
    tensors = {}
    for name, m in layers.items():
        b, heads = m.lora_B.detach(), _rope_heads(name, model.config)
        tensors[f"{names[name]}.lora_A.weight"] = m.lora_A.detach().contiguous().clone()
        tensors[f"{names[name]}.lora_B.weight"] = (b if heads is None else interleaved_to_half_split(b, heads)).contiguous().clone()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": lora.rank,
              "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none", "fan_in_fan_out": False,
              "target_modules": [names[f"layers.0.{TARGETS[t]}.{t}"].rsplit(".", 1)[-1] for t in targets],
              "use_rslora": False, "use_dora": False, "inference_mode": True}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    refuse_to_overwrite(directory / "adapter_model.safetensors", load_file, "an adapter")
    refuse_to_overwrite(directory / "adapter_config.json", lambda p: json.loads(p.read_text())["peft_type"],
                        "an adapter's config")
    atomic_write(directory / "adapter_model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / "adapter_config.json", json.dumps(config, indent=2, allow_nan=False) + "\n")
    return directory
# --8<-- [end:save_adapter]


# --8<-- [start:load_adapter]
def read_adapter(directory: str | os.PathLike, model_config) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """Read a PEFT adapter folder for a model of ``model_config``: its :class:`LoRAConfig` and its
    tensors by our names (``layers.0.attention.wq.lora_B``, rows of ``wq``/``wk``'s ``B`` back in
    interleaved order).

    Raises:
        FileNotFoundError: a file of the folder is missing.
        ValueError: a kind of adapter this model does not have (not LoRA, DoRA, rsLoRA, a rank
            or alpha per layer, biases), a tensor for no layer of this model, or a shape that
            does not fit it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not an adapter folder: {name} is missing")
    cfg = _adapter_config(directory / "adapter_config.json")
    unsupported = [f"{k}={cfg.get(k)!r}" for k, ok in (("peft_type", "LORA"), ("bias", "none"), ("use_dora", False),
                   ("use_rslora", False), ("fan_in_fan_out", False)) if cfg.get(k, ok) != ok]
    unsupported += [f"{k} (per-layer values)" for k in ("rank_pattern", "alpha_pattern") if cfg.get(k)]
    if unsupported:
        raise ValueError(f"{directory}: this adapter uses {', '.join(unsupported)}; only plain LoRA "
                         "(one rank and alpha, no bias) loads into this model")
    ours = {peft: name for name, peft in _peft_names(model_config.n_layers).items()}
    tensors, weights = {}, directory / "adapter_model.safetensors"
    # A link is followed, as open() does: Hugging Face's download cache keeps every file of an
    # adapter as a link into its blobs/ folder, outside the adapter's own. Only plain tensors can
    # come out of a safetensors file, wherever it lies; what it is not is named below.
    linked = f" (a link to {weights.resolve()})" if weights.is_symlink() else ""
    try:
        stored = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"could not read {weights}{linked}: it is truncated or not a safetensors file ({err}); "
                         "save the adapter again, or copy it whole") from None
    shapes = expected_shapes(model_config)
    for key, value in stored.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{directory / 'adapter_model.safetensors'}: tensor {key} holds NaN or infinity in "
                             f"{int((~torch.isfinite(value)).sum())} of its {value.numel()} values: the adapter is "
                             "damaged, or saved from a run that diverged")
        module, _, ab = key.removesuffix(".weight").rpartition(".")
        if module not in ours or ab not in ("lora_A", "lora_B"):
            raise ValueError(f"{directory}: tensor {key} belongs to no projection of this model "
                             f"({model_config.n_layers} layers); is the adapter for another base model?")
        name, heads = ours[module], _rope_heads(ours[module], model_config)
        out_features, in_features = shapes[f"{name}.weight"]
        fits = value.dim() == 2 and (value.size(1) == in_features if ab == "lora_A" else value.size(0) == out_features)
        if not fits:  # before the rows of B are reordered, which would fail on the wrong shape with a traceback
            want = f"[rank, {in_features}]" if ab == "lora_A" else f"[{out_features}, rank]"
            raise ValueError(f"{weights}: tensor {key} has shape {list(value.shape)} but {name} of this model takes "
                             f"{want}: the adapter does not fit this model (damaged, or made for another base model)")
        tensors[f"{name}.{ab}"] = value if ab == "lora_A" or heads is None else half_split_to_interleaved(value, heads)
    ranks = {t.size(0) for k, t in tensors.items() if k.endswith("lora_A")}
    if len(ranks) != 1 or ranks != {cfg.get("r")}:
        raise ValueError(f"{directory}: adapter_config.json says r={cfg.get('r')!r} but the tensors have ranks {sorted(ranks)}")
    targets = tuple(t for t in TARGETS if any(k.endswith(f".{t}.lora_A") for k in tensors))
    config = LoRAConfig(rank=cfg["r"], alpha=float(cfg.get("lora_alpha", 8)), dropout=float(cfg.get("lora_dropout", 0.0)),
                        targets=targets)
    return config, tensors


def _adapter_config(path: Path) -> dict:
    """``adapter_config.json`` as a dict whose ``r``, ``lora_alpha`` and ``lora_dropout`` are numbers:
    a list, a ``null`` or a quoted number there once ended in a traceback from ``float()`` or
    ``.get``, or (``"16"``) was silently taken."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}): save the adapter again, or fix the file") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds a JSON {type(cfg).__name__}, not an object of settings "
                         '({"r": 8, "lora_alpha": 16, ...}): save the adapter again, or fix the file')
    for key, kind in (("r", int), ("lora_alpha", (int, float)), ("lora_dropout", (int, float))):
        value = cfg.get(key, 0 if key == "lora_dropout" else 1)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"{path}: {key} must be {what}, got {json.dumps(value)}: write the adapter's value "
                             "(e.g. 16), without quotes")
    return cfg


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Add the adapters saved in ``directory`` (by :func:`save_adapter` or by PEFT) to ``model``.

    The model must not have adapters yet; it gets them wrapped (:func:`add_lora`) with the saved
    tensors, frozen base and all. Returns ``model``.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_adapter`, or a tensor whose shape does not
            fit the model, or a projection of the saved targets with no tensor.
    """
    config, tensors = read_adapter(directory, model.config)
    add_lora(model, config)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # a shape that does not fit: torch lists every one
        raise ValueError(f"{directory}: the adapter does not fit this model: {str(err).splitlines()[1].strip()}") from None
    missing = [m for m in missing if ".lora_" in m]
    if missing or unexpected:
        raise ValueError(f"{directory}: missing adapter tensors {missing[:3]}, unexpected {unexpected[:3]}")
    return model
# --8<-- [end:load_adapter]
