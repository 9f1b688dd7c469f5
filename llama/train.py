"""Train a LLaMA-style model on a text file: the loop, its schedule, checkpoints, exact resume, DDP.

Run it as ``llama train ...`` or ``python -m llama.train ...``, alone or under
``torchrun --nproc_per_node N`` (one process per rank; gloo on CPU, nccl on GPU).

What one run writes into ``--out DIR``:

* ``run.json``: the run's settings (a later ``--resume`` must agree with them);
* ``tokenizer.json`` (byte-level BPE) or ``tokenizer.model`` (SentencePiece);
* ``data/{train,val}.npy``: the token ids, tokenized once, memory-mapped;
* ``log.jsonl``: one JSON record per evaluation (loss, perplexity, bits per byte, lr, time);
* ``checkpoints/step-NNNNNNN/``: weights and optimizer state as safetensors, everything else
  (config, step, random-number-generator states) as JSON; ``checkpoints/latest`` names the
  newest complete one;
* ``model/``: the final weights as a Hugging Face folder (:func:`llama.checkpoint.save_hf`),
  and ``samples.txt``: text sampled from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llama._files import atomic_write_text
from llama.config import PRESETS, ModelConfig
from llama.data import (
    WindowSampler,
    eval_windows,
    prepare_tokens,
    read_text,
    resolve_text_path,
    split_bytes,
    token_byte_lengths,
)
from llama.download import sha256_file
from llama.model import Transformer

__all__ = [
    "TrainConfig",
    "MODEL_SIZES",
    "model_config",
    "lr_at",
    "make_optimizer",
    "cross_entropy",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "train",
    "read_log",
    "plot_log",
    "add_arguments",
    "main",
]

#: Model sizes for training from scratch; ``--model`` also accepts the names in :data:`llama.config.PRESETS`.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=32, n_layers=2, n_heads=4, multiple_of=16),       # tests: trains in milliseconds
    "book": dict(dim=128, n_layers=4, n_heads=4, multiple_of=32),      # the chapter's recipe (nanoGPT's CPU size)
    "small": dict(dim=256, n_layers=6, n_heads=8, multiple_of=32),     # for a longer run or a faster machine
}


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
    """The :class:`~llama.config.ModelConfig` of a run: its size, vocabulary and context."""
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


# ----------------------------------------------------------------------------------- the math
# --8<-- [start:lr]
def lr_at(step: int, progress: float, peak: float, warmup_steps: int, min_ratio: float) -> float:
    r"""Learning rate of optimizer step ``step``: linear warm-up times cosine decay.

    $$\eta = \eta_\text{peak}\,\min\!\Big(1, \tfrac{t+1}{T_\text{warm}}\Big)
      \Big(r + (1-r)\,\tfrac{1 + \cos(\pi p)}{2}\Big)$$

    where $p \in [0, 1]$ is the fraction of the run already done (``step / max_steps``, or
    elapsed time over ``max_time`` for a run with a time budget) and $r$ is ``min_ratio``.

    >>> [round(lr_at(s, s / 100, 1.0, 10, 0.1), 3) for s in (0, 9, 50, 100)]
    [0.1, 0.982, 0.55, 0.1]
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    return peak * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
# --8<-- [end:lr]


# --8<-- [start:optimizer]
def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW whose weight decay applies to matrices (projections, embedding) but not to the
    RMSNorm gains, which are vectors: decaying a gain towards 0 would switch its feature off.

    The fused implementation (one kernel for all parameters) is used where this PyTorch has it.
    """
    decay, no_decay = [], []
    for p in model.parameters():  # a tied embedding/head appears once
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
# --8<-- [end:optimizer]


# --8<-- [start:loss]
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats between ``[b, s, vocab]`` logits and ``[b, s]`` target ids.

    Computed in float32 even when the logits are bfloat16: the log-sum-exp over the vocabulary
    is where low precision hurts most.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
# --8<-- [end:loss]


# --8<-- [start:evaluate]
@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, block_size: int, byte_lengths: np.ndarray,
             max_tokens: int | None = None, batch_size: int = 16, rank: int = 0, world_size: int = 1
             ) -> dict[str, float]:
    """Loss, perplexity and bits per byte of ``model`` on validation tokens.

    The windows of :func:`llama.data.eval_windows` predict every token of
    ``tokens[1 : n + 1]`` once (``n = max_tokens``, or all). Their total loss in nats, divided by
    $\\ln 2$ times the number of bytes those target tokens decode to (``byte_lengths``
    summed over them), is the bits per byte. Ranks split the windows and add up their sums.

    Returns:
        ``{"loss": nats per token, "ppl": exp(loss), "bpb": bits per byte, "tokens", "bytes"}``.
    """
    windows = list(eval_windows(tokens, block_size, max_tokens))
    nats = torch.zeros((), dtype=torch.float64)
    mine = windows[rank::world_size]
    i = 0
    while i < len(mine):  # batch windows of equal length together
        j = i
        while j < len(mine) and j - i < batch_size and mine[j][1].size(1) == mine[i][1].size(1):
            j += 1
        x = torch.cat([w[1] for w in mine[i:j]])
        y = torch.cat([w[2] for w in mine[i:j]])
        device = next(model.parameters()).device
        nats += cross_entropy(model(x.to(device)), y.to(device), reduction="sum").double().cpu()
        i = j
    if world_size > 1:
        torch.distributed.all_reduce(nats)
    n_targets = sum(w[2].numel() for w in windows)
    n_bytes = int(byte_lengths[np.asarray(tokens[1 : n_targets + 1], dtype=np.int64)].sum())
    loss = float(nats) / n_targets
    return {"loss": loss, "ppl": math.exp(loss), "bpb": float(nats) / (math.log(2) * n_bytes),
            "tokens": n_targets, "bytes": n_bytes}
# --8<-- [end:evaluate]


# -------------------------------------------------------------------------------- checkpoints
def _rng_json() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}


def _set_rng_json(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --8<-- [start:save_checkpoint]
def save_checkpoint(out: Path, model: Transformer, optimizer: torch.optim.Optimizer, sampler: WindowSampler,
                    state: dict[str, Any], tokenizer_file: Path) -> Path:
    """Write a complete checkpoint to ``out/checkpoints/step-NNNNNNN`` and point ``latest`` at it.

    Files: ``model.safetensors`` (weights), ``optimizer.safetensors`` (AdamW's moments and
    step counts, by parameter name, and the torch and data-sampler generator states),
    ``state.json`` (step, time, configs, Python and NumPy generator states, optimizer
    hyper-parameters) and a copy of the tokenizer. Everything goes into a temporary folder
    that is renamed into place, and ``latest`` is replaced afterwards: a crash at any
    moment leaves the previous checkpoint intact and ``latest`` pointing at a complete one.
    """
    from safetensors.torch import save_file

    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    weights = {k: v for k, v in model.state_dict().items()
               if not (model.config.tie_embeddings and k == "output.weight")}
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
    names = {id(p): n for n, p in model.named_parameters()}
    tensors, groups = {}, []
    for group in optimizer.param_groups:
        groups.append({k: v for k, v in group.items() if k != "params"} | {"params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"state.{names[id(p)]}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.sampler"] = sampler.state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, tmp / "optimizer.safetensors")
    meta = {**state, "param_groups": groups, "rng": _rng_json()}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    shutil.copyfile(tokenizer_file, tmp / tokenizer_file.name)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)  # atomic: the folder appears complete or not at all
    atomic_write_text(root / "latest", name + "\n")
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final
# --8<-- [end:save_checkpoint]


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint folder ``out/checkpoints/latest`` names, or ``None`` if there is none yet."""
    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise ValueError(f"{pointer} names {path.name}, which is missing or incomplete; delete {pointer} to restart")
    return path


# --8<-- [start:load_checkpoint]
def load_checkpoint(path: Path, model: Transformer, optimizer: torch.optim.Optimizer,
                    sampler: WindowSampler) -> dict[str, Any]:
    """Restore weights, optimizer state and every generator state from :func:`save_checkpoint`'s folder.

    Returns the ``state.json`` dict (``step``, ``elapsed``, ...).
    """
    from safetensors.torch import load_file

    meta = json.loads((path / "state.json").read_text())
    weights = load_file(path / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not (model.config.tie_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    tensors = load_file(path / "optimizer.safetensors")
    params = dict(model.named_parameters())
    index = {}
    groups = []
    for group in meta["param_groups"]:
        ids = []
        for name in group["params"]:
            index[name] = len(index)
            ids.append(index[name])
        groups.append({**group, "params": ids, "betas": tuple(group["betas"])})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            name, field = key[len("state."):].rsplit(".", 1)
            if name not in params:
                raise ValueError(f"{path}: optimizer state for unknown parameter {name}")
            opt_state.setdefault(index[name], {})[field] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    sampler.set_state(tensors["rng.sampler"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    _set_rng_json(meta["rng"])
    return meta
# --8<-- [end:load_checkpoint]


# ------------------------------------------------------------------------------- the run's files
def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_log(records: Sequence[dict[str, Any]] | str | os.PathLike, target_bpb: float | None = None,
             reference: tuple[str, float] | None = None):
    """A matplotlib figure of a run's ``log.jsonl``: losses on the left, bits per byte on the right.

    Args:
        records: the log's records, or the path of a ``log.jsonl``.
        target_bpb: draw a horizontal line at this validation bits per byte.
        reference: ``(label, bits per byte)`` of another result to mark.

    Needs matplotlib (``pip install llama-from-scratch[plot]``).
    """
    import matplotlib.pyplot as plt

    if not isinstance(records, (list, tuple)):
        records = read_log(records)
    periodic = [r for r in records if not r.get("final")]
    final = [r for r in records if r.get("final")]
    t = [r["elapsed"] for r in periodic]
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(t, [r["train_loss"] for r in periodic], label="train (mean since last eval)")
    ax_loss.plot(t, [r["val_loss"] for r in periodic], label=f"validation ({periodic[0]['val_tokens']} tokens)")
    ax_loss.set(xlabel="training time (s)", ylabel="cross-entropy (nats per token)")
    ax_loss.legend(frameon=False)
    ax_bpb.plot(t, [r["val_bpb"] for r in periodic], color="C1", label="validation")
    if final:
        ax_bpb.plot([final[-1]["elapsed"]], [final[-1]["val_bpb"]], "o", color="C3",
                    label=f"final, whole validation set: {final[-1]['val_bpb']:.3f}")
    if target_bpb is not None:
        ax_bpb.axhline(target_bpb, color="grey", ls="--", lw=1, label=f"target {target_bpb}")
    if reference is not None:
        ax_bpb.axhline(reference[1], color="grey", ls=":", lw=1, label=f"{reference[0]}: {reference[1]}")
    ax_bpb.set(xlabel="training time (s)", ylabel="bits per byte", ylim=(None, min(5.0, max(r["val_bpb"] for r in periodic))))
    ax_bpb.legend(frameon=False)
    fig.tight_layout()
    return fig


def _prepare_out(cfg: TrainConfig, resume: bool) -> tuple[Path, dict[str, Any] | None]:
    """Check ``--out`` against ``--resume``; return the folder and the saved settings (if resuming)."""
    out = Path(cfg.out)
    run_file = out / "run.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    if not resume:
        if run_file.exists() or (out / "checkpoints").exists() or (out / "log.jsonl").exists():
            raise FileExistsError(
                f"{out} already holds a training run; pass --resume to continue it, or choose another --out "
                "(or delete the folder) to start a new one"
            )
        return out, None
    if not run_file.is_file():
        raise FileNotFoundError(f"nothing to resume in {out}: it has no run.json; drop --resume to start a new run")
    return out, json.loads(run_file.read_text())


def _merge_resume(cfg: TrainConfig, given: set[str], saved: dict[str, Any], world_size: int) -> TrainConfig:
    """Settings of a resumed run: the saved ones, except flags given now that
    :attr:`TrainConfig.RESUMABLE_CHANGES` allows to change (how long, how it reports).

    Raises:
        ValueError: a flag given now contradicts the saved run, or the number of processes
            differs (the message lists them).
    """
    conflicts = [f"--{k.replace('_', '-')} {v!r} (the run used {saved.get(k)!r})"
                 for k, v in cfg.run_settings().items() if k in given and v != saved.get(k)]
    if world_size != saved.get("world_size"):
        conflicts.append(f"{world_size} process(es) (the run used {saved.get('world_size')}; "
                         "the data order depends on it)")
    if conflicts:
        raise ValueError(f"--resume: the flags disagree with the run in {cfg.out}: " + "; ".join(conflicts)
                         + ". Drop those flags to continue the run as it was, or start a new run in another --out")
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"out"}
    return dataclasses.replace(cfg, **{k: getattr(cfg, k) if k in given else saved[k] for k in fields})


def _build_tokenizer(cfg: TrainConfig, text_path: Path, out: Path):
    """Train or load the tokenizer into ``out``; returns (tokenizer, its file)."""
    from llama.tokenizer import BPETokenizer, load_tokenizer, train_sentencepiece

    for existing in (out / "tokenizer.json", out / "tokenizer.model"):
        if existing.is_file():
            return load_tokenizer(existing), existing
    if cfg.tokenizer in ("bytes", "bpe", "sentencepiece"):
        train_text = split_bytes(read_text(text_path))[0].decode("utf-8")  # never the validation text
        if cfg.tokenizer == "sentencepiece":
            path = out / "tokenizer.model"
            return train_sentencepiece(train_text, cfg.vocab_size, path), path
        tok = BPETokenizer([]) if cfg.tokenizer == "bytes" else BPETokenizer.train(train_text, cfg.vocab_size)
        path = out / "tokenizer.json"
        tok.save(path)
        return tok, path
    source = Path(cfg.tokenizer)
    if not source.is_file():
        raise FileNotFoundError(f"--tokenizer {source}: no such file; give bytes, bpe, sentencepiece or a saved tokenizer")
    tok = load_tokenizer(source)
    path = out / ("tokenizer.json" if source.read_bytes()[:1] == b"{" else "tokenizer.model")
    shutil.copyfile(source, path)
    return tok, path


def _setup_distributed() -> tuple[int, int, int, torch.device]:
    """(rank, world_size, local_rank, device) from torchrun's environment; starts the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, local_rank, device


_USER_ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError, "FileExistsError": FileExistsError}


def _on_rank0(rank: int, world: int, work) -> dict[str, Any]:
    """Run ``work()`` (returning a JSON-able dict) on rank 0 and give its result to every rank.

    A user error raised by ``work`` is raised on every rank, so no rank waits forever for a
    rank that gave up. The result travels as JSON bytes in a tensor (never a pickle).
    """
    result: dict[str, Any] = {}
    if rank == 0:
        try:
            result = {"ok": work()}
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            if world == 1:
                raise
            result = {"error": type(err).__name__, "message": str(err)}
    if world > 1:
        payload = torch.tensor(list(json.dumps(result).encode()) if rank == 0 else [], dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64)
        torch.distributed.broadcast(size, 0)
        if rank != 0:
            payload = torch.empty(int(size), dtype=torch.uint8)
        torch.distributed.broadcast(payload, 0)
        result = json.loads(bytes(payload.tolist()).decode())
    if "error" in result:
        raise _USER_ERRORS[result["error"]](result["message"])
    return result["ok"]


KILL_ENV = "LLAMA_TRAIN_KILL_AT_STEP"  # test hook: SIGKILL this process right after that optimizer step


# --8<-- [start:train]
def train(cfg: TrainConfig, resume: bool = False, given: set[str] | None = None) -> dict[str, Any]:
    """Run (or resume) training as ``cfg`` says; returns the final evaluation's log record.

    Args:
        cfg: the settings.
        resume: continue the run in ``cfg.out`` from its latest checkpoint.
        given: names of the settings the user set explicitly (on resume these must agree
            with the saved run; the others are taken from it). ``None``: all of them.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad data, flags or output folder; the
            message says what to change.
    """
    rank, world, local_rank, device = _setup_distributed()
    # Only rank 0 looks at --out (another rank could see rank 0's new run.json and refuse it);
    # the verdict, or the error, goes to every rank.
    out, saved = Path(cfg.out), None
    verdict = _on_rank0(rank, world, lambda: {"saved": _prepare_out(cfg, resume)[1]})
    saved = verdict["saved"]
    if saved is not None:
        cfg = _merge_resume(cfg, set(dataclasses.asdict(cfg)) if given is None else given, saved, world)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_world))
    try:
        return _train(cfg, resume, out, saved, rank, world, local_rank, device)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, resume: bool, out: Path, saved: dict[str, Any] | None,
           rank: int, world: int, local_rank: int, device: torch.device) -> dict[str, Any]:

    # Data and tokenizer: rank 0 prepares the files, the other ranks wait and read them.
    text_path = resolve_text_path(cfg.data)
    def prepare() -> dict:
        out.mkdir(parents=True, exist_ok=True)
        if saved is None:
            run = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
            run.update(world_size=world, text_sha256=sha256_file(text_path))
            atomic_write_text(out / "run.json", json.dumps(run, indent=1))
        elif saved["text_sha256"] != sha256_file(text_path):
            raise ValueError(f"--resume: {text_path} is not the text the run in {out} was trained on "
                             "(its sha256 differs); pass the original with --data")
        tok, tok_file = _build_tokenizer(cfg, text_path, out)
        prepare_tokens(text_path, tok, sha256_file(tok_file), out / "data")
        return {}

    _on_rank0(rank, world, prepare)
    tokenizer, tok_file = _build_tokenizer(cfg, text_path, out)  # now only reads the files
    data = prepare_tokens(text_path, tokenizer, sha256_file(tok_file), out / "data")
    mconf = model_config(cfg, tokenizer.vocab_size)
    if len(data.val) < 2:
        raise ValueError(f"the validation text of {text_path} has {len(data.val)} token(s); use a longer text")

    torch.manual_seed(cfg.seed)
    model = Transformer(mconf).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    sampler = WindowSampler(data.train, cfg.block_size, cfg.batch_size, cfg.seed, rank, world)
    byte_lengths = token_byte_lengths(tokenizer)
    step, elapsed, log = 0, 0.0, out / "log.jsonl"
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        meta = load_checkpoint(ckpt, model, optimizer, sampler)
        step, elapsed = meta["step"], meta["elapsed"]
    if rank == 0 and log.exists():  # forget evaluations made after the checkpoint we resume from
        kept = [r for r in read_log(log) if r["step"] <= step and not r.get("final")]
        atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in kept))
    net = model
    if cfg.compile:
        net = torch.compile(net)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext())
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.accum * world

    def progress_of(step: int, elapsed: float) -> float:
        fractions = []
        if cfg.max_steps:
            fractions.append(step / cfg.max_steps)
        if cfg.max_time:
            fractions.append(elapsed / cfg.max_time)
        return max(fractions)

    def log_eval(train_loss: float | None, final: bool = False) -> dict[str, Any]:
        net.eval()
        result = evaluate(model, data.val, cfg.block_size, byte_lengths,
                          None if final else cfg.eval_tokens, rank=rank, world_size=world)
        net.train()
        record = {"step": step, "tokens": step * tokens_per_step, "elapsed": round(elapsed, 3),
                  "lr": lr, "train_loss": train_loss, **{f"val_{k}": v for k, v in result.items()}}
        if final:
            record["final"] = True
        if rank == 0:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record

    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        total = cfg.max_steps if cfg.max_steps and not cfg.max_time else 1000
        bar = tqdm(total=total, initial=round(progress_of(step, elapsed) * total), unit="step" if total == cfg.max_steps else "‰",
                   dynamic_ncols=True, file=sys.stderr)
    kill_at = int(os.environ.get(KILL_ENV, "0"))
    losses: list[float] = []
    lr = lr_at(step, progress_of(step, elapsed), cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
    net.train()
    start = time.perf_counter() - elapsed
    while True:
        elapsed = time.perf_counter() - start
        if world > 1 and cfg.max_time:  # every rank must take the same decision at the same step
            t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            torch.distributed.broadcast(t, 0)
            elapsed = float(t)
        if progress_of(step, elapsed) >= 1.0:
            break
        # --8<-- [start:step]
        lr = lr_at(step, progress_of(step, elapsed), cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.accum):
            x, y = sampler.next_batch()
            sync = nullcontext() if world == 1 or micro == cfg.accum - 1 else net.no_sync()
            with sync:
                with autocast:
                    logits = net(x.to(device))
                loss = cross_entropy(logits, y.to(device)) / cfg.accum
                loss.backward()
            step_loss += loss.detach()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if world > 1:  # for the log only: the mean loss over all ranks
            torch.distributed.all_reduce(step_loss)
            step_loss /= world
        # --8<-- [end:step]
        losses.append(float(step_loss))
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        elapsed = time.perf_counter() - start
        done = progress_of(step, elapsed) >= 1.0
        if step % cfg.eval_every == 0 or done:
            record = log_eval(sum(losses) / len(losses))
            losses.clear()
            if rank == 0:
                save_checkpoint(out, model, optimizer, sampler,
                                {"step": step, "elapsed": time.perf_counter() - start,
                                 "model_config": mconf.to_dict(), "train_config": dataclasses.asdict(cfg)}, tok_file)
            if bar is not None:
                bar.set_postfix_str(f"val {record['val_loss']:.3f} ({record['val_bpb']:.3f} bpb)", refresh=False)
        if bar is not None:
            tok_s = step * tokens_per_step / max(elapsed, 1e-9)
            bar.set_description(f"step {step} loss {losses[-1] if losses else float(step_loss):.3f} {tok_s:,.0f} tok/s")
            bar.update(max(0, min(bar.total, round(progress_of(step, elapsed) * bar.total)) - bar.n))
    if bar is not None:
        bar.close()
    final = log_eval(None, final=True)
    if rank == 0:
        _finish(out, model, tokenizer, cfg)
    if world > 1:
        torch.distributed.barrier()
    return final
# --8<-- [end:train]


def _finish(out: Path, model: Transformer, tokenizer, cfg: TrainConfig) -> None:
    """Write the final model as a Hugging Face folder and a text sample from it."""
    from llama.checkpoint import save_hf
    from llama.generation import generate
    from llama.sampling import Sampling

    save_hf(model, out / "model")
    shutil.copyfile(next(p for p in (out / "tokenizer.json", out / "tokenizer.model") if p.is_file()),
                    out / "model" / ("tokenizer.json" if (out / "tokenizer.json").is_file() else "tokenizer.model"))
    if cfg.sample_tokens > 0:
        model.eval()
        prompt = tokenizer.encode("\n")
        n = min(cfg.sample_tokens, model.config.max_seq_len - len(prompt))
        ids = generate(model, prompt, n, Sampling(temperature=0.8, seed=cfg.seed))
        atomic_write_text(out / "samples.txt", tokenizer.decode(ids) + "\n")


# -------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``llama train`` flags on ``parser``. Defaults are :class:`TrainConfig`'s;
    flags not given are absent from the parsed namespace (so ``--resume`` knows which were)."""
    d = TrainConfig(out="", max_steps=1)
    S = argparse.SUPPRESS
    parser.add_argument("--data", default=S, help="UTF-8 text file to train on (default: Tiny Shakespeare, "
                        "from $LLAMA_DATA_DIR, the cache, or downloaded)")
    parser.add_argument("--out", required=True, help="folder for the tokenizer, data, log, checkpoints and model")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", default=S, help=f"bytes, bpe, sentencepiece (trained here) or a saved tokenizer file (default {d.tokenizer})")
    g.add_argument("--vocab-size", type=int, default=S, help=f"vocabulary of a trained tokenizer (default {d.vocab_size})")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=S, help=f"size: {', '.join(MODEL_SIZES)} or a preset of llama.config (default {d.model})")
    for name in ("dim", "n-layers", "n-heads", "n-kv-heads", "max-seq-len"):
        g.add_argument(f"--{name}", type=int, default=S, help="override the size's value")
    g = parser.add_argument_group("optimization")
    g.add_argument("--block-size", type=int, default=S, help=f"tokens per training window (default {d.block_size})")
    g.add_argument("--batch-size", type=int, default=S, help=f"windows per micro-step per process (default {d.batch_size})")
    g.add_argument("--accum", type=int, default=S, help=f"gradient-accumulation micro-steps per step (default {d.accum})")
    g.add_argument("--lr", type=float, default=S, help=f"peak learning rate (default {d.lr})")
    g.add_argument("--min-lr-ratio", type=float, default=S, help=f"final lr / peak lr (default {d.min_lr_ratio})")
    g.add_argument("--warmup-steps", type=int, default=S, help=f"linear warm-up steps (default {d.warmup_steps})")
    g.add_argument("--weight-decay", type=float, default=S, help=f"AdamW weight decay (default {d.weight_decay})")
    g.add_argument("--beta1", type=float, default=S, help=f"AdamW beta1 (default {d.beta1})")
    g.add_argument("--beta2", type=float, default=S, help=f"AdamW beta2 (default {d.beta2})")
    g.add_argument("--grad-clip", type=float, default=S, help=f"max gradient norm, 0 = off (default {d.grad_clip})")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default=S, help="float32, or bfloat16 autocast")
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    g.add_argument("--seed", type=int, default=S, help=f"seed of everything random (default {d.seed})")
    g = parser.add_argument_group("length and reporting")
    g.add_argument("--max-steps", type=int, default=S, help="stop after this many optimizer steps")
    g.add_argument("--max-time", type=float, default=S, help="stop after this many seconds of training")
    g.add_argument("--eval-every", type=int, default=S, help=f"evaluate and checkpoint every N steps (default {d.eval_every})")
    g.add_argument("--eval-tokens", type=int, default=S, help=f"validation tokens per periodic evaluation (default {d.eval_tokens})")
    g.add_argument("--threads", type=int, default=S, help="CPU threads per process")
    g.add_argument("--sample-tokens", type=int, default=S, help=f"tokens to sample at the end (default {d.sample_tokens})")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bar")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool, set[str]]:
    """(config, resume, names of the flags given) from a namespace made by :func:`add_arguments`."""
    values = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    given = set(values) - {"out"}
    if args.resume and "max_steps" not in values and "max_time" not in values:
        values["max_steps"] = 1  # placeholder; the saved run's length is used
        given.discard("max_steps")
    return TrainConfig(**values), args.resume, given


def run(args: argparse.Namespace) -> int:
    """Run training from parsed flags; prints the final evaluation."""
    cfg, resume, given = config_from_args(args)
    result = train(cfg, resume=resume, given=given)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final: step {result['step']}, {result['elapsed']:.1f} s, val loss {result['val_loss']:.4f} nats/token, "
              f"perplexity {result['val_ppl']:.2f}, {result['val_bpb']:.4f} bits per byte "
              f"({result['val_tokens']} tokens, {result['val_bytes']} bytes)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llama.train``: the same flags as ``llama train``."""
    from llama.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
