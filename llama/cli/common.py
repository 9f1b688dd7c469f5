"""What several subcommands share: how a checkpoint argument is read (a path, or the name of a
downloaded model), ``--max-seq-len``, the ``--quantize``/``--group-size`` flags, the flags of a command
that starts from a trained model (``--base``, LoRA's), a task named by ``--task`` and ``--task-args``,
how the flags of ``llama train`` and ``llama finetune`` become a ``TrainConfig``, and how a setting is
named as its flag."""

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


# --8<-- [start:base_flags]
def add_base_flags(p: argparse.ArgumentParser, out_help: str, *, tokenizer: bool = True,
                   lora_rank_help: str | None = None) -> None:
    """The flags of a command that starts from a trained model (``llama finetune``, ``sft``, ``dpo``, ``rl``).

    ``--base``, ``--out`` and ``--resume``; with ``tokenizer``, ``--tokenizer`` and ``--max-seq-len``;
    with ``lora_rank_help``, the LoRA group (``--lora-rank`` described by it). Every flag but the
    first three is declared with ``default=SUPPRESS``: a flag not given is absent, so ``--resume``
    takes the saved value (:func:`config_from_args`).

    Args:
        p: the subcommand's parser.
        out_help: what the run leaves in ``--out``.
        tokenizer: declare ``--tokenizer`` and ``--max-seq-len``.
        lora_rank_help: the help of ``--lora-rank`` (its default differs by command); ``None``: no LoRA flags.
    """
    from llama.training.config import TrainConfig

    S = argparse.SUPPRESS
    p.add_argument("--base", required=True, help="the checkpoint to start from (e.g. a run's OUT/model folder)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--resume", action="store_true", help="continue the run in --out (give the same --base)")
    if tokenizer:
        p.add_argument("--tokenizer", default=S, help="the base's tokenizer file (default: the one beside --base)")
        # What the refusal of windows longer than the base's context offers: lengthening it knowingly.
        p.add_argument("--max-seq-len", type=int, default=S, help="the model's longest sequence (default: the base's context)")
    if lora_rank_help is not None:
        d = TrainConfig(out="", max_steps=1)
        g = p.add_argument_group("LoRA")
        g.add_argument("--lora-rank", type=int, default=S, help=lora_rank_help)
        g.add_argument("--lora-alpha", type=float, default=S, help=f"the update is scaled by alpha / rank (default {d.lora_alpha:g})")
        g.add_argument("--lora-dropout", type=float, default=S, help=f"dropout on the adapters' input (default {d.lora_dropout:g})")
        g.add_argument("--lora-targets", default=S, help=f"projections to adapt, comma-separated (default {d.lora_targets})")
# --8<-- [end:base_flags]


def task_setting(values: dict[str, Any], key: str, resume: bool) -> None:
    """Fold ``--task-args`` into the task setting ``values[key]`` (``addition:digits=2``), checked before any file is read.

    Args:
        values: the parsed flags as a dict (``--task`` stored under ``key``); changed in place.
        key: where the task is stored (``sft`` for ``llama sft``, ``task`` for ``llama dpo`` and ``llama rl``).
        resume: the run is resumed (the saved task is used when ``--task`` is not given).

    Raises:
        ValueError: ``--task-args`` without ``--task``, an unknown task or difficulty, or no
            ``--task`` on a new run.
    """
    from llama.posttraining.sft import parse_task

    if "task_args" in values and key not in values:
        raise ValueError("--task-args needs --task NAME")
    if key in values:
        values[key] = values[key] + (f":{values['task_args']}" if "task_args" in values else "")
        try:
            parse_task(values[key])
        except ValueError as err:
            raise ValueError(f"--task: {err}") from None
    elif not resume:
        raise ValueError("--task is required: the task whose problems to train on (e.g. --task addition)")
    values.pop("task_args", None)


# --8<-- [start:stage_flags]
def add_stage_flags(p: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """The flags ``llama dpo`` and ``llama rl`` share: the base, the task, and how each step samples and trains.

    Declared with ``default=SUPPRESS``, as :func:`add_base_flags`'s; ``defaults`` (the command's
    own, over :class:`~llama.posttraining.stage.StageConfig`'s) are shown in the help.
    """
    from llama.posttraining.tasks import TASKS

    S = argparse.SUPPRESS
    add_base_flags(p, "folder for the log, checkpoints and the trained chat model", tokenizer=False)
    p.add_argument("--task", default=S, help=f"the task whose problems are sampled and graded: {', '.join(TASKS)}")
    p.add_argument("--task-args", default=S, metavar="KNOB=N", help="the task's settings, e.g. digits=2, or digits=3,work=30 (default: the task's)")
    p.add_argument("--max-steps", type=int, default=S, help=f"optimizer steps (default {defaults['max_steps']})")
    p.add_argument("--lr", type=float, default=S, help=f"AdamW's learning rate, constant (default {defaults['lr']:g})")
    p.add_argument("--problems-per-step", type=int, default=S, metavar="N",
                   help=f"training problems drawn per step (default {defaults['problems_per_step']})")
    p.add_argument("--group", type=int, default=S, metavar="G",
                   help=f"replies sampled per problem, compared with each other (default {defaults['group']})")
    p.add_argument("--max-new-tokens", type=int, default=S, help=f"the longest reply (default {defaults['max_new_tokens']})")
    p.add_argument("--temperature", type=float, default=S,
                   help=f"the sampling temperature (default {defaults['temperature']:g}: the model's own distribution)")
    p.add_argument("--seed", type=int, default=S, help=f"seeds the problems and the sampling (default {defaults['seed']})")
    p.add_argument("--save-every", type=int, default=S, metavar="N",
                   help=f"steps between checkpoints; the last step has one too (default {defaults['save_every']})")
    p.add_argument("--threads", type=int, default=S, help="CPU threads (default: PyTorch's)")
    p.add_argument("--reward", default=S, metavar="FILE.py:NAME", help="reward replies with the function NAME(reply, "
                   "problem) -> float of a Python file of yours, instead of the task's grader")


def stage_config_from_args(args: argparse.Namespace, defaults: Mapping[str, Any]) -> tuple[Any, bool, set[str]]:
    """The :class:`~llama.posttraining.stage.StageConfig` of ``llama dpo`` or ``llama rl``, and which settings were given.

    Args:
        args: the parsed flags (absent where not given), with ``resume`` and ``method``.
        defaults: the command's defaults, which do not count as given.

    Returns:
        ``(StageConfig, resume, names of the settings given)``, for :func:`llama.posttraining.stage.run_stage`.

    Raises:
        ValueError: no ``--task`` on a new run, an unknown task, or flags that make no run.
    """
    import dataclasses
    import json
    from pathlib import Path

    from llama.posttraining.stage import StageConfig

    values = vars(args).copy()
    task_setting(values, "task", args.resume)
    fields = {f.name for f in dataclasses.fields(StageConfig)}
    values = {k: v for k, v in values.items() if k in fields}
    given = set(values) - {"out"}
    if "task" not in values:  # resumed without --task: the run's own, which the saved settings replace anyway
        run_file = Path(args.out) / "run.json"
        saved = json.loads(run_file.read_text()) if run_file.is_file() else {}
        values["task"] = saved.get("task") if isinstance(saved, dict) and isinstance(saved.get("task"), str) else "addition"
    return StageConfig(**{**defaults, **values}), args.resume, given
# --8<-- [end:stage_flags]
