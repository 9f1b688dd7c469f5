"""What several subcommands share: how a checkpoint argument is read (a path, or the name of a
downloaded model), ``--max-seq-len``, the ``--quantize``/``--group-size`` flags, how the flags of
``llama train`` and ``llama finetune`` become a ``TrainConfig``, and how a setting is named as its flag."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama.training.config import TrainConfig


# --8<-- [start:checkpoint]
def open_model(path: str, dtype=None, max_seq_len: int | None = None):
    """:func:`llama.formats.load.load_model` (float32 unless ``dtype``), or a sharded training
    checkpoint read whole (:func:`llama.training.sharded.read_sharded`)."""
    import torch

    from llama.formats.load import load_model
    from llama.training.sharded import is_sharded_checkpoint, read_sharded

    dtype = dtype or torch.float32
    if is_sharded_checkpoint(path):
        return read_sharded(path, dtype, max_seq_len)
    return load_model(path, dtype=dtype, max_seq_len=max_seq_len)


def checkpoint_path(name: str) -> str:
    """A checkpoint argument: a path as given, or the name of a downloaded model (``stories260K``).

    Raises:
        FileNotFoundError: a model's name whose file has not been downloaded (the message says how).
    """
    from pathlib import Path

    from llama.data.sources import DATASETS, find_data

    if Path(name).exists() or name not in DATASETS or not DATASETS[name].filename.endswith(".bin"):
        return name
    found = find_data(DATASETS[name].filename)
    if found is None:
        raise FileNotFoundError(f"{name} is not downloaded yet: run `llama download {name}`, or give a path")
    return str(found)
# --8<-- [end:checkpoint]


def check_max_seq_len(value: int | None) -> None:
    """``--max-seq-len``, checked before any file is read: it sizes the RoPE tables made when the model is built."""
    from llama.model.config import MAX_SEQ_LEN

    if value is not None and not 0 < value <= MAX_SEQ_LEN:
        raise ValueError(f"--max-seq-len must be a number of positions from 1 to {MAX_SEQ_LEN:,} (2**20), got {value}")


def add_quantize_flags(p, help_text: str) -> None:
    p.add_argument("--quantize", choices=["int8", "int4"], help=help_text)
    p.add_argument("--group-size", type=int, metavar="N",
                   help="inputs per scale with --quantize (default: one scale per row; int4 wants 32)")


def quantize_flags(args) -> tuple[int, int | None] | None:
    """``(bits, group_size)`` from ``--quantize``/``--group-size``, or None; checked before any loading."""
    if args.quantize is None:
        if args.group_size is not None:
            raise ValueError("--group-size needs --quantize int8 or int4")
        return None
    if args.group_size is not None and (args.group_size < 2 or args.group_size % 2):
        raise ValueError(f"--group-size must be an even number of inputs, e.g. 32, got {args.group_size}")
    return (8 if args.quantize == "int8" else 4), args.group_size


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flag of each setting a (sub)command's parser fills: ``{"batch_size": "--batch-size", ...}``.

    The one mapping from a setting's name (argparse's ``dest``, a field of
    :class:`~llama.training.config.TrainConfig`) to the flag that sets it, read from the parser
    itself so that it cannot disagree with it: the longest of the flag's spellings.

    Args:
        parser: the parser of the command that ran (``llama train``'s, say).

    Returns:
        Setting name -> flag.
    """
    return {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}


# --8<-- [start:config_from_args]
def config_from_args(args: argparse.Namespace, preset: Mapping[str, Any] | None = None,
                     defaults: Mapping[str, Any] | None = None) -> tuple[TrainConfig, bool, set[str]]:
    """The settings of a training command from its parsed flags, and which of them the user gave.

    Every flag of ``llama train`` and ``llama finetune`` is declared with ``default=SUPPRESS``: a
    flag left out is absent from ``args``, so the flags present are the settings given, which a
    resumed run must agree with (the others are taken from the saved run).

    Args:
        args: the parsed flags, with ``resume``.
        preset: settings that count as given, under the flags: a recipe's.
        defaults: settings that replace :class:`~llama.training.config.TrainConfig`'s defaults
            without counting as given (fine-tuning's).

    Returns:
        ``(TrainConfig, resume, names of the settings given)``: the arguments of
        :func:`llama.training.loop.train`.

    Raises:
        ValueError: the settings make no valid run (no length, a negative size, ...).
    """
    import dataclasses

    from llama.training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {**(preset or {}), **{k: v for k, v in vars(args).items() if k in fields}}  # the flags win
    given = set(values) - {"out"}
    values = {**(defaults or {}), **values}
    if args.resume and "max_steps" not in values and "max_time" not in values:
        values["max_steps"] = 1  # placeholder; the saved run's length is used
    return TrainConfig(**values), args.resume, given
# --8<-- [end:config_from_args]
