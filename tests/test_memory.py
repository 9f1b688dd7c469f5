"""llama/training/memory.py against what really holds memory and what a ring really sends.

* One process: after one optimizer step of a small :class:`Transformer`, the weights, gradients
  and AdamW or Muon state counted equal the bytes of the real tensors, in float32 and bfloat16.
* Sharding: the rounding of :func:`shard_numel` is ``torch.chunk``'s on the real parameters, and
  what FSDP2 (``fully_shard``, one process playing one rank of six through PyTorch's fake process
  group) allocates after a step is what :func:`bytes_per_rank` counts; so is the most it holds
  whole during a step (its ``"buffers"``), sampled at every saved tensor; and a micro-batch whose
  reduce-scatter is skipped (gradient accumulation) leaves the whole model's gradients unsharded.
* Published sizes: Llama 3.1 8B and Llama 3 70B have the parameter counts of Meta's model cards.
* Activation checkpointing: a checkpointed block saves its input, in float32 even under autocast:
  the saved tensors of a forward pass grow by what :func:`bytes_per_rank` counts per block.
* Traffic: a ring all-reduce, simulated tensor by tensor, sends what :func:`communication_bytes`
  counts, and sums correctly.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import unavailable

from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.training.memory import STRATEGIES, bytes_per_rank, communication_bytes, parameter_shapes, shard_numel
from llama.training.optim import make_optimizer

# Odd sizes, so that sharding over several ranks needs padding.
TINY = ModelConfig(dim=24, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=37, hidden_dim=30)
LLAMA3_70B = ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, hidden_dim=28672, vocab_size=128256)


def nbytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank's part
    return t.numel() * t.element_size()


def one_step(model: torch.nn.Module, kind: str) -> torch.optim.Optimizer:
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), kind=kind)
    tokens = torch.randint(0, TINY.vocab_size, (2, 8))
    model(tokens).float().square().mean().backward()
    optimizer.step()
    return optimizer


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    # The 0-dim step counters (4 bytes per tensor) are left out, as training_memory leaves them.
    return sum(nbytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)


@pytest.mark.parametrize("tied", [False, True])
def test_shapes_are_the_models(tied):
    config = ModelConfig(**{**vars(TINY), "tie_embeddings": tied})
    assert parameter_shapes(config) == {k: tuple(p.shape) for k, p in Transformer(config).named_parameters()}


@pytest.mark.parametrize("kind", ["adamw", "muon"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_process_counts_the_real_tensors(kind, dtype):
    torch.manual_seed(0)
    model = Transformer(TINY).to(dtype)
    optimizer = one_step(model, kind)
    real = {"weights": sum(nbytes(p) for p in model.parameters()),
            "gradients": sum(nbytes(p.grad) for p in model.parameters()),
            "optimizer": state_bytes(optimizer)}
    for strategy in STRATEGIES:  # one rank: nothing to split, nothing to send
        counted = bytes_per_rank(TINY, 1, strategy, 2, 8, kind, param_bytes=dtype.itemsize)
        assert {k: counted[k] for k in real} == real, strategy
        assert counted["buffers"] == 0 and communication_bytes(TINY, 1, strategy)["total"] == 0


def test_shard_sizes_are_torch_chunks():
    for name, p in Transformer(TINY).named_parameters():
        for n in range(1, 9):
            chunks = torch.chunk(p.detach(), n, dim=0)
            assert shard_numel(tuple(p.shape), n) == chunks[0].numel(), (name, n)
            # the padding is less than one row per rank
            assert 0 <= n * chunks[0].numel() - p.numel() < n * math.prod(p.shape[1:]), (name, n)


def fake_process_group(rank: int, world_size: int):
    """Join PyTorch's fake process group as ``rank``: collectives check shapes and move nothing."""
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError:
        unavailable("this PyTorch build has no fake process group", "install the torch of constraints.txt")
    import torch.distributed as dist

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    return dist


def fully_sharded(config: ModelConfig) -> Transformer:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = Transformer(config)
    for block in model.layers:  # the wrapping the chapter describes: each block, then the model
        fully_shard(block)
    fully_shard(model)
    return model


@pytest.mark.parametrize("rank", [0, 5])
def test_fsdp2_holds_what_is_counted(rank):
    world = 6
    dist = fake_process_group(rank, world)
    try:
        model = fully_sharded(TINY)
        optimizer = one_step(model, "adamw")  # the fake collectives move no data: sizes only
        counted = bytes_per_rank(TINY, world, "fsdp", 2, 8)
        # Every rank allocates the padded size of each weight ...
        assert sum(p.to_local().untyped_storage().nbytes() for p in model.parameters()) == counted["weights"]
        grads = sum(nbytes(p.grad) for p in model.parameters())
        state = state_bytes(optimizer)
    finally:
        dist.destroy_process_group()
    if rank == 0:  # ... and rank 0, holding the rounded-up chunks, is the busiest
        assert (grads, state) == (counted["gradients"], counted["optimizer"])
    else:  # the last rank's chunks of the 37-row embedding and head are 2 rows, not 7
        assert grads < counted["gradients"] and state < counted["optimizer"]


def whole_tensor_bytes(groups) -> tuple[int, int]:
    """Bytes FSDP2 holds whole right now: gathered weights (including an all-gather still in
    flight, a prefetch) and the gradients of gathered weights. FSDP2's internals, read as they
    are in the torch of constraints.txt."""
    weights, grads = {}, {}
    for group in groups:
        for param in group.fsdp_params:
            if hasattr(param, "_unsharded_param"):
                w = param._unsharded_param
                weights[w.untyped_storage().data_ptr()] = w.untyped_storage().nbytes()
                if w.grad is not None:
                    grads[w.grad.untyped_storage().data_ptr()] = w.grad.untyped_storage().nbytes()
        if group._all_gather_result is not None:
            out = group._all_gather_result.all_gather_output.untyped_storage()
            weights[out.data_ptr()] = out.nbytes()
    weights.pop(0, None)  # freed storages
    grads.pop(0, None)
    return sum(weights.values()), sum(grads.values())


def test_fsdp2_whole_tensors_are_what_is_counted():
    # Untied, as the recipe and Llama 3.1 8B are. With a tied head, autograd keeps the head's
    # share of the shared gradient in its own buffer until the embedding's share arrives, where
    # nothing here can see it (bytes_per_rank counts it).
    config = ModelConfig(**{**vars(TINY), "n_layers": 3})
    dist = fake_process_group(0, 6)
    try:
        model = fully_sharded(config)
        groups = [m._get_fsdp_state()._fsdp_param_group for m in [*model.layers, model]]
        peak = 0

        def sample(t):  # at every tensor saved in the forward and used in the backward
            nonlocal peak
            peak = max(peak, sum(whole_tensor_bytes(groups)))
            return t

        with torch.autograd.graph.saved_tensors_hooks(sample, sample):
            model(torch.randint(0, config.vocab_size, (2, 8))).float().square().mean().backward()
        sample(None)  # the end of the backward: the embedding's gradient has arrived
    finally:
        dist.destroy_process_group()
    assert peak == bytes_per_rank(config, 6, "fsdp", 2, 8)["buffers"]


def whole_gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of unsharded gradients FSDP2 holds: those it accumulates between micro-batches whose
    reduce-scatter is skipped, and the unsharded weights' own. FSDP2's internals, read as they are
    in the torch of constraints.txt."""
    total = 0
    for module in [*model.layers, model]:
        for param in module._get_fsdp_state()._fsdp_param_group.fsdp_params:
            grads = [param.unsharded_accumulated_grad]
            if hasattr(param, "_unsharded_param"):
                grads.append(param._unsharded_param.grad)
            total += sum(nbytes(g) for g in grads if g is not None)
    return total


def test_fsdp2_accumulation_without_sync_holds_whole_gradients():
    """The parallelism chapter's statement: skipping the reduce-scatter of a micro-batch
    (``llama.training.distributed.no_grad_sync``) leaves every rank holding the gradients of the whole model
    until the synchronised micro-batch, which leaves only this rank's shard."""
    from llama.training.distributed import no_grad_sync

    world = 4
    dist = fake_process_group(0, world)
    try:
        model = fully_sharded(TINY)
        tokens = torch.randint(0, TINY.vocab_size, (2, 8))
        with no_grad_sync(model, world):
            model(tokens).float().square().mean().backward()
        between = whole_gradient_bytes(model), sum(nbytes(p.grad) for p in model.parameters() if p.grad is not None)
        model(tokens).float().square().mean().backward()
        after = whole_gradient_bytes(model), sum(nbytes(p.grad) for p in model.parameters())
    finally:
        dist.destroy_process_group()
    assert between == (bytes_per_rank(TINY, 1, "ddp", 2, 8)["gradients"], 0)
    assert after == (0, bytes_per_rank(TINY, world, "fsdp", 2, 8)["gradients"])

def test_published_parameter_counts():
    # Meta's model cards: Llama 3.1 8B has 8.03B parameters, Llama 3 70B 70.6B.
    for config, published in ((ModelConfig.from_preset("llama3.1-8b"), 8.03e9), (LLAMA3_70B, 70.6e9)):
        n = bytes_per_rank(config, 1, "ddp", 1, 1)["weights"] // 4
        assert n == sum(math.prod(s) for s in parameter_shapes(config).values())
        assert abs(n / published - 1) < 0.005, (n, published)


def saved_bytes(n_layers: int, autocast: bool) -> int:
    """Bytes of the distinct storages a forward pass saves for the backward, with every block
    checkpointed (the reentrant variant saves its inputs with ``save_for_backward``)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(TINY, n_layers=n_layers))
    for block in model.layers:
        block.forward = (lambda f: lambda *args: checkpoint(f, *args, use_reentrant=True))(block.forward)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        model(torch.randint(0, TINY.vocab_size, (2, 8)))
    return sum(storages.values())


@pytest.mark.parametrize("autocast", [False, True])
def test_checkpointing_keeps_each_blocks_input(autocast):
    # One more block adds its input and nothing else (RoPE's tables are shared by all blocks).
    counted = [bytes_per_rank(dataclasses.replace(TINY, n_layers=n), 1, "ddp", 2, 8, autocast=autocast,
                              activation_checkpointing=True)["activations"] for n in (2, 3)]
    assert saved_bytes(3, autocast) - saved_bytes(2, autocast) == counted[1] - counted[0] == 4 * 2 * 8 * TINY.dim


def ring_all_reduce(buffers: list[torch.Tensor]) -> int:
    """Sum ``buffers`` in place the way a ring does; returns the elements rank 0 sent."""
    n = len(buffers)
    chunks = [list(torch.tensor_split(b, n)) for b in buffers]
    sent = 0
    for phase in ("reduce-scatter", "all-gather"):
        for step in range(n - 1):
            # Rank r passes one chunk to rank r + 1: in the reduce-scatter it is added there, in the
            # all-gather it replaces what was there. Every rank sends at once: read first, then write.
            # After the reduce-scatter, rank r holds the whole sum of chunk r + 1, which goes round next.
            moves = [((r - step + (phase == "all-gather")) % n, r) for r in range(n)]
            payload = [chunks[r][c].clone() for c, r in moves]
            sent += payload[0].numel()
            for (c, r), x in zip(moves, payload):
                if phase == "reduce-scatter":
                    chunks[(r + 1) % n][c] += x
                else:
                    chunks[(r + 1) % n][c].copy_(x)
    return sent


def test_ring_all_reduce_sends_what_is_counted():
    n_params = sum(math.prod(s) for s in parameter_shapes(TINY).values())
    for world in (2, 3, 4):
        buffers = [torch.randn(n_params, dtype=torch.float64) for _ in range(world)]
        expected = torch.stack(buffers).sum(0)
        sent = ring_all_reduce(buffers)
        assert all(torch.allclose(b, expected) for b in buffers), "the simulated ring does not sum"
        counted = communication_bytes(TINY, world, "ddp")["all_reduce"]
        assert abs(4 * sent - counted) <= 4 * world, (world, 4 * sent, counted)  # chunks differ by an element


def test_sharded_traffic():
    # ZeRO-1 and 2 send what DDP sends; FSDP gathers the blocks twice (forward and backward).
    config = ModelConfig(dim=64, n_layers=4, n_heads=4, vocab_size=512, hidden_dim=128)  # every size divides 8
    ddp, z1, fsdp = (communication_bytes(config, 8, s) for s in ("ddp", "zero1", "fsdp"))
    assert z1["total"] == ddp["total"] == 2 * 7 * 4 * sum(math.prod(s) for s in parameter_shapes(config).values()) // 8
    outer = 4 * 2 * 512 * 64 + 4 * 64
    assert fsdp["total"] == pytest.approx(1.5 * ddp["total"] - 7 / 8 * outer)


@pytest.mark.parametrize("bad, message", [
    ({"world_size": 0}, "world_size must be"), ({"strategy": "zero3"}, "unknown strategy 'zero3'"),
    ({"param_bytes": 8}, "param_bytes must be 4"),
])
def test_bad_input(bad, message):
    args = {"world_size": 2, "strategy": "fsdp", "param_bytes": 4, **bad}
    with pytest.raises(ValueError, match=message):
        bytes_per_rank(TINY, args["world_size"], args["strategy"], 1, 1, param_bytes=args["param_bytes"])
    with pytest.raises(ValueError, match=message):
        communication_bytes(TINY, **args)


def test_bad_batch():
    with pytest.raises(ValueError, match="batch_size and seq_len must be 1 or more, got 0 and 8"):
        bytes_per_rank(TINY, 2, "ddp", 0, 8)
    with pytest.raises(ValueError, match="optimizer must be adamw or muon"):
        bytes_per_rank(TINY, 2, "ddp", 1, 8, optimizer="sgd")
