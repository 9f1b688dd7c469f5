"""Sharding the model over the ranks with FSDP2: each rank keeps 1/N of every weight, of its
gradient and of its optimizer state, and gathers a block's whole weights only while it computes.

DDP (:func:`llama.training.distributed.wrap_model`) keeps a whole copy of the model, its gradients and its
optimizer state on every rank. ``torch.distributed.fsdp.fully_shard`` instead replaces each
parameter by a ``DTensor`` that holds rows ``r * n / N ... (r + 1) * n / N`` of it on rank ``r``
(dim 0 padded to a multiple of ``N``). Before a block's forward (and again before its
backward) the ranks all-gather that block's weights; after its backward they reduce-scatter
its gradients, each rank receiving the sum of its own rows only. The optimizer then updates the
local rows: AdamW, Muon and the clipping of :mod:`llama.training.optim` run unchanged on ``DTensor`` s,
which do whatever communication an operation needs (a norm, Muon's matrix products).

:func:`shard` wraps each block and then the whole model, so that one block's weights are
gathered at a time; the embedding, the final norm and the head form the last group.
"""

from __future__ import annotations

import torch

from llama.model.transformer import Transformer
from llama.training.distributed import Dist, local_part

__all__ = ["shard", "checkpoint_activations", "full_state_dict", "local_bytes", "held_bytes"]


# --8<-- [start:shard]
def shard(model: Transformer, dist: Dist, param_dtype: torch.dtype | None = None) -> Transformer:
    """Shard ``model`` over the ranks of ``dist`` with FSDP2, one block at a time, in place.

    Args:
        model: the model, whole and identical on every rank (the same seed).
        dist: this process's place in the run; its process group must be started.
        param_dtype: compute in this dtype (``torch.bfloat16``): FSDP gathers the weights cast to
            it, while the shards, the gradients' reduction and the optimizer stay float32.

    Returns:
        ``model`` itself, its parameters now ``DTensor`` s sharded along dim 0.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)  # gathered, used and freed as one unit
    fully_shard(model, mesh=mesh, mp_policy=policy)       # the rest: embedding, final norm, head
    return model
# --8<-- [end:shard]


# --8<-- [start:checkpoint_activations]
def checkpoint_activations(model: Transformer) -> Transformer:
    """Keep only each block's input for the backward pass and recompute the rest from it then:
    the activations of one block at a time instead of all of them, for one more forward pass.

    Each block's ``forward`` is replaced on the block itself, not wrapped in another module: the
    names of the weights (``layers.0.attention.wq.weight``) and so the checkpoints stay the same.
    """
    from torch.utils.checkpoint import checkpoint

    def recomputed(forward):
        # use_reentrant=False: PyTorch's recommended variant, which works with FSDP and keywords
        return lambda *args, **kwargs: checkpoint(forward, *args, use_reentrant=False, **kwargs)

    for block in model.layers:
        block.forward = recomputed(block.forward)
    return model
# --8<-- [end:checkpoint_activations]


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded model, on every rank (every rank must call it: it
    all-gathers); a model that is not sharded gives its own state dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def local_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds of the weights and of the optimizer state (its shards only)."""
    weights = sum(local_part(p).numel() * p.element_size() for p in model.parameters())
    state = 0
    if optimizer is not None:
        for per_param in optimizer.state.values():
            state += sum(local_part(v).numel() * v.element_size() for v in per_param.values()
                         if isinstance(v, torch.Tensor) and v.dim() > 0)
    return {"weights": weights, "optimizer": state}


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> list[dict[str, int]]:
    """:func:`local_bytes` of every rank, on every rank (each must call it: it all-gathers)."""
    mine = local_bytes(model, optimizer)
    held = torch.tensor([[mine["weights"], mine["optimizer"]]], dtype=torch.int64, device=dist.device)
    if dist.world_size > 1:
        every = [torch.zeros_like(held) for _ in range(dist.world_size)]
        torch.distributed.all_gather(every, held)
        held = torch.cat(every)
    return [{"weights": int(w), "optimizer": int(o)} for w, o in held.tolist()]
