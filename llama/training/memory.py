"""Memory and traffic of data-parallel training, per rank, counted from the model's sizes alone.

Four ways of spreading a training step over ``N`` processes (ranks), each with its own slice of
the batch: DDP keeps a whole copy of the weights, gradients and optimizer state on every rank;
ZeRO stage 1 splits the optimizer state between the ranks, stage 2 the gradients too, and
stage 3 (what PyTorch's FSDP does) the weights as well. :func:`bytes_per_rank` counts what one
rank holds in each case, :func:`communication_bytes` what it sends per step.

The counts of one process come from :func:`llama.training.flops.training_memory`; this module adds how
the parts divide over the ranks, tensor by tensor, with the rounding FSDP2 really does.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.training.flops import training_memory

__all__ = ["STRATEGIES", "parameter_shapes", "shard_numel", "bytes_per_rank", "communication_bytes"]

#: What each rank keeps whole ("ddp") or splits: "zero1" the optimizer state, "zero2" also the
#: gradients, "fsdp" (ZeRO stage 3) also the weights.
STRATEGIES = ("ddp", "zero1", "zero2", "fsdp")


# --8<-- [start:shapes]
def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter of :class:`llama.model.transformer.Transformer`, read from one
    built on PyTorch's ``meta`` device: tensors with a shape and no storage, so that even a 70B
    model is built in a fraction of a second, and the shapes cannot drift from the model's code.
    A tied head is the embedding's tensor, listed once, as ``named_parameters`` lists it.

    >>> from llama.model.config import ModelConfig
    >>> shapes = parameter_shapes(ModelConfig.from_preset("llama3.1-8b"))
    >>> shapes["layers.0.attention.wk.weight"], shapes["output.weight"], len(shapes)
    ((1024, 4096), (128256, 4096), 291)
    """
    key = repr(config)  # every field: a config is a mutable dataclass, not hashable
    if key not in _shapes:
        with torch.device("meta"):
            model = Transformer(config)
        if len(_shapes) >= 64:  # a search over many configs (e.g. ranks) asks for the same few
            _shapes.pop(next(iter(_shapes)))
        _shapes[key] = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return dict(_shapes[key])


_shapes: dict[str, dict[str, tuple[int, ...]]] = {}


def shard_numel(shape: tuple[int, ...], world_size: int) -> int:
    """Elements one rank stores of a tensor split along its first dimension over ``world_size``
    ranks, as FSDP2 splits it: ``torch.chunk`` rows, ``ceil(rows / N)`` each, and the last
    ranks' shorter (or empty) chunks padded to that size, so every rank allocates the same.

    >>> shard_numel((128256, 4096), 64), 128256 * 4096 // 64      # 2004 rows each: no padding
    (8208384, 8208384)
    >>> shard_numel((10, 3), 4)     # 3 rows each, 12 rows in all: 2 of them padding
    9
    """
    rows = shape[0] if shape else 1
    return math.ceil(rows / world_size) * math.prod(shape[1:])
# --8<-- [end:shapes]


def _check(world_size: int, strategy: str, param_bytes: int) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a whole number of ranks, 1 or more, got {world_size!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if param_bytes not in (2, 4):
        raise ValueError(f"param_bytes must be 4 (float32) or 2 (bfloat16), got {param_bytes!r}")


# --8<-- [start:per_rank]
def _state_copies(name: str, shape: tuple[int, ...], optimizer: str) -> int:
    # As llama.training.optim.make_optimizer groups them: Muon keeps one momentum per matrix of the
    # blocks; AdamW, for everything else, two moments.
    return 1 if optimizer == "muon" and len(shape) == 2 and name.startswith("layers.") else 2


def bytes_per_rank(config: ModelConfig, world_size: int, strategy: str, batch_size: int, seq_len: int,
                   optimizer: str = "adamw", param_bytes: int = 4, activation_checkpointing: bool = False,
                   autocast: bool = True) -> dict[str, int]:
    """Bytes the busiest rank holds during a training step, by part, for ``strategy``.

    Every rank runs its own ``batch_size x seq_len`` tokens, so activations and logits do not
    shrink with more ranks. Weights, gradients and optimizer state are stored in the
    parameters' dtype (``param_bytes``); what a strategy splits, each rank holds
    ``1 / world_size`` of. FSDP splits each tensor on its own (:func:`shard_numel`, rank 0
    holding the rounded-up share); ZeRO-1 and 2 split the flattened whole.

    ``"buffers"`` is what the communication holds on top. DDP: a second copy of the gradients,
    the flat buckets it all-reduces (PyTorch's default, ``gradient_as_bucket_view=False``).
    FSDP: what FSDP2's schedule holds whole, with the model wrapped block by block and then as
    a whole. The outer unit (embedding, final norm, head) stays gathered from its forward to the
    end of the backward, and its gradients are reduced when the backward ends. While a block is
    differentiated there are also its weights and gradients and the next block's weights,
    fetched ahead, next to the outer unit's weights and the gradients of the head and final
    norm; the embedding's gradient comes last, when the blocks' are gone. The larger of those
    two moments counts, weights at their gathered (padded) size. ZeRO-1 and 2: 0 (their
    buckets depend on the implementation).

    With ``activation_checkpointing`` each block keeps only its input (the float32 residual
    stream) and recomputes its activations in the backward, one block at a time.

    Args:
        config: the model.
        world_size: number of ranks ``N``.
        strategy: one of :data:`STRATEGIES`.
        batch_size: sequences per rank and step.
        seq_len: tokens per sequence.
        optimizer: ``"adamw"`` or ``"muon"``.
        param_bytes: 4 (float32) or 2 (bfloat16) per weight, gradient and state element.
        activation_checkpointing: recompute each block's activations in the backward.
        autocast: the matrix products run in bfloat16 (2-byte activations) rather than float32.

    Returns:
        ``{"weights", "gradients", "optimizer", "activations", "logits", "buffers", "total"}``
        in bytes; ``"total"`` adds parts that peak at different moments, so it slightly
        overstates the peak.

    Raises:
        ValueError: an unknown strategy or optimizer, a world size, batch size or sequence
            length below 1, or ``param_bytes`` not 2 or 4.
    """
    _check(world_size, strategy, param_bytes)
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be 1 or more, got {batch_size} and {seq_len}")
    whole = training_memory(config, batch_size, seq_len, optimizer, autocast)  # one process, float32
    shapes = parameter_shapes(config)
    full, n_state = whole["weights"] // 4, whole["optimizer"] // 4  # elements
    if strategy == "fsdp":  # each tensor split on its own, padded
        weights = sum(shard_numel(s, world_size) for s in shapes.values())
        state = sum(_state_copies(k, s, optimizer) * shard_numel(s, world_size) for k, s in shapes.items())
    else:  # the flattened whole split evenly
        weights, state = math.ceil(full / world_size), math.ceil(n_state / world_size)
    parts = {"weights": param_bytes * (weights if strategy == "fsdp" else full),
             "gradients": param_bytes * (weights if strategy in ("zero2", "fsdp") else full),
             "optimizer": param_bytes * (n_state if strategy == "ddp" else state)}
    activations = whole["activations"]
    if activation_checkpointing:
        one_block = training_memory(dataclasses.replace(config, n_layers=1), batch_size, seq_len, optimizer, autocast)
        inputs = 4 * batch_size * seq_len * config.dim * config.n_layers  # float32 block inputs
        activations = inputs + one_block["activations"]
    buffers = 0
    if strategy == "ddp" and world_size > 1:
        buffers = param_bytes * full
    elif strategy == "fsdp" and world_size > 1:
        outer = [k for k in shapes if not k.startswith("layers.")]
        block = [k for k in shapes if k.startswith("layers.0.")]
        gathered = {k: world_size * shard_numel(s, world_size) for k, s in shapes.items()}  # padded
        # Used after the blocks in the forward, so differentiated before them: head and final norm.
        late = [k for k in outer if k != "tok_embeddings.weight" or config.tie_embeddings]
        during_blocks = (sum(gathered[k] for k in outer) + sum(math.prod(shapes[k]) for k in late)
                         + min(2, config.n_layers) * sum(gathered[k] for k in block)
                         + sum(math.prod(shapes[k]) for k in block))
        at_the_end = sum(gathered[k] + math.prod(shapes[k]) for k in outer)
        buffers = param_bytes * max(during_blocks, at_the_end)
    parts.update(activations=activations, logits=whole["logits"], buffers=buffers)
    parts["total"] = sum(parts.values())
    return parts
# --8<-- [end:per_rank]


# --8<-- [start:communication]
def communication_bytes(config: ModelConfig, world_size: int, strategy: str, param_bytes: int = 4) -> dict[str, int]:
    """Bytes one rank sends per training step (and receives: the ring algorithms are symmetric).

    On a ring of ``N`` ranks, an all-gather or a reduce-scatter of a buffer of ``B`` bytes
    passes ``N - 1`` chunks of ``B / N`` through each rank: ``(N - 1) / N x B``. An all-reduce
    is the two in turn: ``2 (N - 1) / N x B``. DDP all-reduces the gradients. ZeRO-1 and 2
    reduce-scatter them (each rank needs only the part of the sum its optimizer updates) and
    all-gather the updated weights after the step: the same bytes. FSDP all-gathers each
    block's weights before its forward and again before its backward (they were freed in
    between; the outer unit, kept, is gathered once) and reduce-scatters the gradients:
    1.5 times DDP's traffic, in FSDP2's padded shards.

    Args:
        config: the model.
        world_size: number of ranks ``N``.
        strategy: one of :data:`STRATEGIES`.
        param_bytes: bytes per element sent: 4 for float32, 2 when weights are gathered and
            gradients reduced in bfloat16.

    Returns:
        ``{"all_reduce", "reduce_scatter", "all_gather", "total"}``, bytes per rank and step.

    Raises:
        ValueError: an unknown strategy, a world size below 1, or ``param_bytes`` not 2 or 4.
    """
    _check(world_size, strategy, param_bytes)
    shapes = parameter_shapes(config)
    n, ring = sum(math.prod(s) for s in shapes.values()), world_size - 1
    out = {"all_reduce": 0, "reduce_scatter": 0, "all_gather": 0}
    if strategy == "ddp":
        out["all_reduce"] = 2 * ring * param_bytes * n // world_size
    elif strategy in ("zero1", "zero2"):
        out["reduce_scatter"] = out["all_gather"] = ring * param_bytes * math.ceil(n / world_size)
    else:
        shards = {k: shard_numel(s, world_size) for k, s in shapes.items()}
        blocks = sum(v for k, v in shards.items() if k.startswith("layers."))
        out["reduce_scatter"] = ring * param_bytes * sum(shards.values())
        out["all_gather"] = ring * param_bytes * (sum(shards.values()) + blocks)  # blocks twice
    out["total"] = sum(out.values())
    return out
# --8<-- [end:communication]
