"""Several processes training as one: torchrun's environment, the process group, DDP, and what
rank 0 decides for every rank.

``torchrun --nproc_per_node N`` starts ``N`` copies of ``llama train`` and tells each, through
environment variables, its ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE``.
:func:`setup` reads them into a :class:`Dist` and joins the process group (gloo on CPU, NCCL on
GPU); :func:`wrap_model` makes the gradients the mean over all ranks; :func:`teardown` leaves the
group. The training loop learns about the other processes only through a :class:`Dist` and these
functions, so another way of spreading a model over processes can be added here alone.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from llama.training.config import SettingError

__all__ = ["RENDEZVOUS_TIMEOUT", "Dist", "setup", "teardown", "wrap_model", "no_grad_sync", "local_part", "all_finite", "on_rank0",
           "broadcast_from_rank0"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands among the processes of a run.

    Attributes:
        rank: this process's index among all of them; rank 0 writes the files.
        world_size: number of processes.
        local_rank: index among the processes of this machine (it picks the GPU).
        local_world_size: processes on this machine, which share its CPU cores.
        device: where this process computes.
        owns_group: :func:`setup` started the process group, so :func:`teardown` ends it.

    >>> Dist().world_size, Dist().device
    (1, device(type='cpu'))
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False


def _read_env() -> dict[str, int]:
    """torchrun's four numbers, checked: ``RANK=abc`` or ``LOCAL_WORLD_SIZE=0`` (left by hand, or by
    another launcher) once ended in a traceback from ``int()`` or a division by zero far from here.

    Raises:
        ValueError: a variable that is not a whole number, or numbers no launcher would set.
    """
    env = {}
    for name, default, least in (("WORLD_SIZE", 1, 1), ("LOCAL_WORLD_SIZE", 1, 1), ("RANK", 0, 0), ("LOCAL_RANK", 0, 0)):
        raw = os.environ.get(name, str(default))
        try:
            env[name] = int(raw)
        except ValueError:
            env[name] = least - 1  # reported just below, with the variable's text
        if env[name] < least:
            raise ValueError(f"the environment variable {name}={raw!r} must be a whole number of at least {least}: "
                             f"start the run with torchrun, which sets it, or unset {name} to train in one process")
    for rank, size in (("RANK", "WORLD_SIZE"), ("LOCAL_RANK", "LOCAL_WORLD_SIZE")):
        if env[rank] >= env[size]:
            raise ValueError(f"the environment variables {rank}={env[rank]} and {size}={env[size]} disagree ({rank} must "
                             f"be below {size}): start the run with torchrun, or unset them to train in one process")
    return env


# --8<-- [start:ddp]
def setup() -> Dist:
    """Read torchrun's environment, pick this process's device and, with several processes,
    join the process group.

    Returns:
        This process's :class:`Dist`; without torchrun, a single process (rank 0 of 1).
    """
    env = _read_env()
    if torch.cuda.is_available():
        device = torch.device("cuda", env["LOCAL_RANK"])  # one GPU per process on a machine
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = env["WORLD_SIZE"] > 1 and not torch.distributed.is_initialized()
    if owns:  # torchrun's MASTER_ADDR and MASTER_PORT say where the ranks meet
        _join_group("nccl" if device.type == "cuda" else "gloo", env)
    return Dist(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], device, owns)


#: Seconds the processes of a run have to find each other before :func:`setup` gives up. torchrun
#: starts them together, so they meet within the seconds torch takes to import; without it, a
#: ``WORLD_SIZE`` left in the environment made a lone process wait for the others forever.
RENDEZVOUS_TIMEOUT = 120.0


def _join_group(backend: str, env: dict[str, int]) -> None:
    """Join the process group, waiting at most :data:`RENDEZVOUS_TIMEOUT` seconds for the other ranks.

    Only the meeting has this deadline: the group's collectives keep torch's own, longer one,
    since rank 0 may work for minutes (a tokenizer, a checkpoint) while the others wait.

    Raises:
        ValueError: no rendezvous address, or not every rank came in time; the message names
            the variables and the two ways out (torchrun, or unsetting them).
    """
    from torch.distributed.constants import default_pg_timeout

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE"):
        # Started by torchrun: it launched every rank together and hosts their store, so torch's
        # own rendezvous meets at once; only a process started by hand can wait for ranks that
        # never come.
        torch.distributed.init_process_group(backend)
        return
    world, rank = env["WORLD_SIZE"], env["RANK"]
    given = f"WORLD_SIZE={world} and RANK={rank} are set (this process is rank {rank} of {world})"
    fix = (f"start the run with `torchrun --nproc_per_node {world} $(which llama) train ...`, or unset WORLD_SIZE "
           "and RANK (left over from another run?) to train in one process")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(f"{given}, but not {' and '.join(missing)}, which say where the processes meet: {fix}")
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        store, rank, world = next(torch.distributed.rendezvous(
            "env://", timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT)))
    except (RuntimeError, ValueError) as err:  # torch's DistStoreError is a RuntimeError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{given}, but the other processes did not all meet at {where} within "
                         f"{RENDEZVOUS_TIMEOUT:.0f} s ({reason}): {fix}") from None
    store.set_timeout(default_pg_timeout)
    # The prefix init_process_group gives a store it makes itself: torchrun's store has other users.
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore("default_pg", store),
                                         rank=rank, world_size=world)


def wrap_model(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """The module the training step runs: ``model`` itself in a single process, else wrapped in
    ``DistributedDataParallel``, whose backward pass all-reduces the gradients to their mean over
    the ranks, so that every rank applies the same update and the weights stay identical.
    """
    if dist.world_size == 1:
        return model
    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
# --8<-- [end:ddp]


def no_grad_sync(net: torch.nn.Module, world_size: int) -> AbstractContextManager:
    """A context in which backward only adds to this rank's gradients, without communicating:
    for all but the last micro-batch of a step. DDP's ``no_sync()``, or FSDP's switch."""
    if world_size == 1:
        return nullcontext()
    if hasattr(net, "no_sync"):
        return net.no_sync()
    return _SkipGradientSync(net)


class _SkipGradientSync:
    """FSDP2's ``set_requires_gradient_sync(False)`` for the duration of a ``with``."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def __enter__(self) -> None:
        self.net.set_requires_gradient_sync(False)

    def __exit__(self, *exc) -> None:
        self.net.set_requires_gradient_sync(True)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """What this rank holds of ``t``: its shard of a sharded (``DTensor``) weight, else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


def all_finite(model: torch.nn.Module, dist: Dist) -> bool:
    """Whether every weight is finite on every rank (each checks what it holds: its shards
    of a sharded model); the same answer on all ranks."""
    ok = torch.tensor([float(all(bool(local_part(p).isfinite().all()) for p in model.parameters()))],
                      device=dist.device)
    if dist.world_size > 1:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item() == 1.0)


def teardown(dist: Dist) -> None:
    """Leave the process group that :func:`setup` started (a group started by the caller stays)."""
    if dist.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# User errors that cross from rank 0 to the other ranks, by name (never by pickle).
_USER_ERRORS = {"SettingError": SettingError, "ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
                "FileExistsError": FileExistsError}


def on_rank0(dist: Dist, work: Callable[[], Any]) -> Any:
    """Run ``work()`` on rank 0 only and give its result to every rank.

    Rank 0 decides what every rank must agree on (is ``--out`` usable, what did the saved run
    use) and writes the files the others then read; they wait here meanwhile. A user error
    (``ValueError``, ``FileNotFoundError``, ``FileExistsError``) raised by ``work`` is raised
    on every rank, so no rank waits forever for one that gave up.

    Args:
        dist: this process's place in the run.
        work: a function whose result is JSON-able; it travels as JSON bytes in a tensor.

    Returns:
        What ``work()`` returned on rank 0.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: what ``work`` raised on rank 0.

    >>> on_rank0(Dist(), lambda: {"step": 5})
    {'step': 5}
    """
    result: dict[str, Any] = {}
    if dist.rank == 0:
        try:
            result = {"ok": work()}
        except tuple(_USER_ERRORS.values()) as err:
            if dist.world_size == 1:
                raise
            if isinstance(err, SettingError):  # the same error on every rank, so that each names the settings
                result = {"error": "SettingError", "message": err.without_values().template}
            else:  # a subclass (json's JSONDecodeError, say) travels as the user error it is
                name = next(name for name, kind in _USER_ERRORS.items() if isinstance(err, kind))
                result = {"error": name, "message": str(err)}
    if dist.world_size > 1:
        # On the process's device: NCCL moves only GPU tensors.
        data = list(json.dumps(result).encode()) if dist.rank == 0 else []
        payload = torch.tensor(data, dtype=torch.uint8, device=dist.device)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=dist.device)
        torch.distributed.broadcast(size, 0)
        if dist.rank != 0:
            payload = torch.empty(int(size), dtype=torch.uint8, device=dist.device)
        torch.distributed.broadcast(payload, 0)
        result = json.loads(bytes(payload.cpu().tolist()).decode())
    if "error" in result:
        raise _USER_ERRORS[result["error"]](result["message"])
    return result["ok"]


def broadcast_from_rank0(value: float, dist: Dist) -> float:
    """Rank 0's ``value`` on every rank: a decision taken from a clock (stop now?) must be the
    same on all ranks, whose clocks differ, or one rank would wait for a step the others skip.

    >>> broadcast_from_rank0(1.5, Dist())
    1.5
    """
    if dist.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dist.device)
    torch.distributed.broadcast(t, 0)
    return float(t)
