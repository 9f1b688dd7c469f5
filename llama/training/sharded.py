"""Sharded checkpoints: every rank writes its own shards with ``torch.distributed.checkpoint``
(DCP), and a run resumes from them on any number of ranks.

A checkpoint of a ``--parallel fsdp`` run is a folder ``checkpoints/step-NNNNNNN/`` that holds

* ``model/`` and ``optimizer/``: safetensors files, one per rank (``shard-0000R-...``), each with
  the rows of every tensor that rank held and, in its header, where those rows sit in the whole
  tensor (DCP's Hugging Face storage: JSON metadata, nothing pickled);
* ``state.json``: step, time, the configs, the optimizer's settings and the Python and NumPy
  generator states; ``rng.safetensors``: the torch and data-sampler generator states (rank 0's);
* a copy of the tokenizer.

Loading asks each rank's model and optimizer for the tensors *they* hold now (whole on one rank,
1/N on N) and reads exactly those rows from whichever files have them: the checkpoint does not
care how many ranks wrote it. The folder appears complete or not at all, and ``latest`` moves
only after it is in place, as for the one-file checkpoints of :mod:`llama.training.state`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from llama._files import make_temp_dir
from llama.formats.checkpoint import check_finite
from llama.formats.load import check_before_building
from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.training.distributed import Dist, on_rank0

__all__ = ["is_sharded_checkpoint", "save_sharded", "load_sharded", "read_sharded"]


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint folder written by :func:`save_sharded`."""
    path = Path(path)
    try:
        return (path / "state.json").is_file() and (path / "model").is_dir()
    except OSError:  # a folder this user may not enter: whoever reads it next says so
        return False


@contextmanager
def _damaged_shards(folder: Path):
    """A shard deleted, truncated or overwritten ended in safetensors' or DCP's traceback, one per
    rank (a ``CheckpointException`` that wraps every rank's): one line naming the folder instead."""
    from safetensors import SafetensorError
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except (SafetensorError, CheckpointException, OSError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the shards in {folder} cannot be read ({first[:200]}): a shard is missing, truncated or "
                         "changed; load an earlier checkpoint, or delete this one") from None


@contextmanager
def _quiet(alone: bool):
    """Silence DCP's warning that it reads or writes in one process, when that is on purpose
    (a one-process run, ``llama convert``)."""
    with warnings.catch_warnings():
        if alone:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
    """What this rank holds: the weights, and the optimizer state flattened to
    ``state.<weight name>.<field>`` tensors and ``param_groups.<weight name>.<setting>`` values."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model)
    if optimizer is None:
        return weights, {}
    return weights, get_optimizer_state_dict(model, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True))


# --8<-- [start:save]
def save_sharded(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: Any,
                 state: dict[str, Any], tokenizer_file: Path, dist: Dist) -> Path:
    """Write this step's checkpoint into ``out/checkpoints/step-NNNNNNN``; every rank calls it.

    Rank 0 makes a temporary folder; every rank writes its shards into it; rank 0 adds the
    rest, renames the folder into place and then points ``latest`` at it.

    Returns:
        The checkpoint folder.
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from llama.training.state import _rng_json, publish_checkpoint

    root = out / "checkpoints"
    name = f"step-{state['step']:07d}"

    def make_folder() -> str:
        root.mkdir(parents=True, exist_ok=True)
        return str(make_temp_dir(root, f".{name}."))

    tmp = Path(on_rank0(dist, make_folder))
    weights, optim = _state_dicts(model, optimizer)
    alone = dist.world_size == 1
    tensors = {k: v for k, v in optim.items() if isinstance(v, torch.Tensor)}
    with _quiet(alone):
        for part, values in (("model", weights), ("optimizer", tensors)):
            dcp.save(values, storage_writer=HuggingFaceStorageWriter(str(tmp / part), save_distributed=True),
                     no_dist=alone)
    settings = {k: v for k, v in optim.items() if not isinstance(v, torch.Tensor)}

    def finish() -> str:  # rank 0, once every rank's shards are written
        rng = {"rng.torch": torch.get_rng_state(), "rng.sampler": sampler.state()}
        if torch.cuda.is_available():
            rng["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(rng, tmp / "rng.safetensors")
        meta = {**state, "format": "dcp", "world_size": dist.world_size, "optimizer_settings": settings,
                "rng": _rng_json()}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        shutil.copyfile(tokenizer_file, tmp / tokenizer_file.name)
        return str(publish_checkpoint(tmp, root, name))  # renamed into place, then `latest`

    try:
        return Path(on_rank0(dist, finish))
    except BaseException:
        if dist.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
# --8<-- [end:save]


# --8<-- [start:load]
def load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: Any) -> dict[str, Any]:
    """Restore weights, optimizer state and generator states from :func:`save_sharded`'s folder,
    into a model sharded over any number of ranks (or not sharded). Every rank calls it.

    Returns:
        The ``state.json`` dict (``step``, ``elapsed``, ...).
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from llama.training.state import restore_generators

    meta = json.loads((path / "state.json").read_text())
    weights, optim = _state_dicts(model, optimizer)  # the tensors this rank holds now, to be filled
    alone = not torch.distributed.is_initialized()
    tensors = {k: v for k, v in optim.items() if isinstance(v, torch.Tensor)}
    with _quiet(alone):
        for part, values in (("model", weights), ("optimizer", tensors)):
            with _damaged_shards(path / part):
                dcp.load(values, storage_reader=HuggingFaceStorageReader(str(path / part)), no_dist=alone)
    set_model_state_dict(model, weights)
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["optimizer_settings"].items()}
    set_optimizer_state_dict(model, optimizer, {**tensors, **settings},
                             options=StateDictOptions(flatten_optimizer_state_dict=True))
    restore_generators(load_file(path / "rng.safetensors"), meta["rng"], sampler)
    return meta
# --8<-- [end:load]


# --8<-- [start:read]
def read_sharded(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                 max_seq_len: int | None = None) -> Transformer:
    """The whole model of a sharded checkpoint, read in one process from every rank's files,
    ready for ``eval``, ``save_model`` (one safetensors file and ``config.json``) or
    ``llama convert``.

    Raises:
        ValueError: ``path`` is not a checkpoint folder of a ``--parallel fsdp`` run.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise ValueError(f"{path} is not a sharded checkpoint (a folder with state.json and model/); "
                         "give a checkpoints/step-NNNNNNN folder of a --parallel fsdp run")
    try:
        fields = json.loads((path / "state.json").read_text())["model_config"]
        if max_seq_len is not None:  # only the RoPE tables depend on it, and they are not saved
            fields = {**fields, "max_seq_len": max_seq_len}
        config = ModelConfig.from_dict(fields)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / 'state.json'}: {err}") from None
    # The shapes the shards' headers record, compared with the config before the model is built.
    with _damaged_shards(path / "model"):
        stored = HuggingFaceStorageReader(str(path / "model")).read_metadata().state_dict_metadata
    check_before_building(config, {name: tuple(m.size) for name, m in stored.items() if hasattr(m, "size")},
                          path / "model", dtype=dtype)
    model = Transformer(config)
    weights = model.state_dict()
    if config.tie_embeddings:
        del weights["output.weight"]  # the embedding's own tensor: filled through it
    with _quiet(True), _damaged_shards(path / "model"):
        dcp.load(weights, storage_reader=HuggingFaceStorageReader(str(path / "model")), no_dist=True)
    check_finite(weights, path / "model")  # bytes changed inside a shard read as NaN, as in any checkpoint
    return model.to(dtype).eval()
# --8<-- [end:read]
