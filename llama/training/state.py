"""The run folder: what a training run saves, and how a run resumes from it exactly.

What one run writes into ``--out DIR`` (only rank 0 writes):

* ``run.json``: the run's settings (a later ``--resume`` must agree with them), ``dtype`` being
  the one ``--dtype auto`` chose, with why (``dtype_reason``);
* ``tokenizer.json`` (byte-level BPE) or ``tokenizer.model`` (SentencePiece): :mod:`llama.training.tokenizer`;
* ``data/{train,val}.npy``: the token ids, tokenized once, memory-mapped;
* ``log.jsonl``: one JSON record per evaluation (loss, perplexity, bits per byte, lr, time);
* ``checkpoints/step-NNNNNNN/``: weights and optimizer state as safetensors, everything else
  (config, step, random-number-generator states) as JSON; ``checkpoints/latest`` names the
  newest complete one;
* ``model/``: the final weights as a Hugging Face folder (:func:`llama.formats.checkpoint.save_hf`),
  and ``samples.txt``: text sampled from it;
* ``.lock``: who holds the folder (:mod:`llama.training.run_folder`, which also checks the folder and
  tidies what a killed process left in it).

:mod:`llama.training.loop` calls these functions; they know nothing of the training loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llama._files import atomic_write_text, default_mode, make_temp_dir
from llama.data.pipeline import TokenData, WindowSampler, prepare_tokens, read_text, resolve_text_path, split_bytes
from llama.data.sources import sha256_file
from llama.model.transformer import Transformer
from llama.training.config import TrainConfig, check_memory, model_config
from llama.training.finetune import save_final
from llama.training.lora import merge_into_base
from llama.training.run_folder import latest_name
from llama.training.tokenizer import build_tokenizer

__all__ = [
    "merge_resume",
    "preflight",
    "prepare_run",
    "save_checkpoint",
    "publish_checkpoint",
    "latest_checkpoint",
    "resume_checkpoint",
    "load_checkpoint",
    "restore_generators",
    "read_log",
    "append_log",
    "finish_run",
    "trim_log",
]


# --------------------------------------------------------------------------- starting or resuming
def merge_resume(cfg: TrainConfig, given: set[str], saved: dict[str, Any], world_size: int) -> TrainConfig:
    """Settings of a resumed run: the saved ones, except flags given now that
    :attr:`TrainConfig.RESUMABLE_CHANGES` allows to change (how long, how it reports).

    Args:
        cfg: the settings of this invocation.
        given: names of the settings the user gave explicitly; the others come from ``saved``.
        saved: the run's ``run.json`` (:func:`llama.training.run_folder.check_out`).
        world_size: number of processes now.

    Returns:
        The settings to continue the run with.

    Raises:
        ValueError: a flag given now contradicts the saved run, or the number of processes
            differs in a DDP run or does not divide a sharded run's global batch (the message
            lists them).
    """
    # A sharded (fsdp) run resumes on any number of processes, each taking an equal part of
    # the same global batch: the data order depends only on that (llama.data.pipeline.WindowSampler).
    reshard = saved.get("parallel") == "fsdp" and world_size != saved.get("world_size")
    global_batch = saved.get("batch_size", 0) * saved.get("world_size", 1)
    per_rank = {"batch_size": global_batch // world_size} if reshard and global_batch % world_size == 0 else {}
    # --dtype auto asks for whatever the run started with (llama.training.precision.resolve_dtype keeps it).
    conflicts = [f"--{k.replace('_', '-')} {v!r} (the run used {saved.get(k)!r})"
                 for k, v in cfg.run_settings().items()
                 if k in given and v != per_rank.get(k, saved.get(k)) and not (k == "dtype" and v == "auto")]
    if reshard and not per_rank:
        conflicts.append(f"{world_size} process(es): the run's global batch of {global_batch} windows "
                         "does not split evenly over them")
    elif world_size != saved.get("world_size") and not reshard:
        conflicts.append(f"{world_size} process(es) (the run used {saved.get('world_size')}; "
                         "the data order depends on it; a --parallel fsdp run can change it)")
    if conflicts:
        raise ValueError(f"--resume: the flags disagree with the run in {cfg.out}: " + "; ".join(conflicts)
                         + ". Drop those flags to continue the run as it was, or start a new run in another --out")
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"out"}
    # A setting newer than the saved run (--optimizer in a run from before it) keeps its default,
    # which is what that run used.
    merged = {k: getattr(cfg, k) if k in given or k not in saved else saved[k] for k in fields}
    return dataclasses.replace(cfg, **{**merged, **per_rank})


def preflight(cfg: TrainConfig, device: torch.device) -> None:
    """What can be checked of a run before anything is written: the text is there and not empty,
    the model's sizes fit together, and its weights and RoPE tables fit in memory.

    The tokenizer's size is known only once it is made: ``--vocab-size`` (256 for bytes) stands
    for it here, and :func:`llama.training.loop.train` checks the memory again with the real one.

    Raises:
        ValueError, FileNotFoundError: the message names the flag or file to change.
    """
    text = read_text(resolve_text_path(cfg.data))
    if not split_bytes(text)[1]:
        raise ValueError(f"{cfg.data} is too small ({len(text)} bytes) to keep 10% for validation; use a longer text")
    check_memory(cfg, model_config(cfg, 256 if cfg.tokenizer == "bytes" else cfg.vocab_size), device)


def prepare_run(cfg: TrainConfig, text_path: Path, saved: dict[str, Any] | None, world_size: int,
                write: bool, notes: dict[str, Any] | None = None, source: Any = None) -> tuple[Any, Path, TokenData]:
    """The run's tokenizer and token ids, made in its folder the first time and read after that.

    With ``write`` (rank 0 only, before the others call this without it): a new run records its
    settings in ``run.json``, with the number of processes, the text's sha256 and ``notes``
    (why the run computes in its dtype, ``dtype_reason``); a resumed run
    checks that the text is the one it was trained on. Then the tokenizer is trained (or copied:
    :func:`llama.training.tokenizer.build_tokenizer`)
    and the text tokenized, unless their files are already there.

    Args:
        cfg: the run's settings (``out``, ``tokenizer``, ``vocab_size``).
        text_path: the training text.
        saved: the saved settings of a resumed run (:func:`llama.training.run_folder.check_out`), or ``None``.
        world_size: number of processes, recorded because the data order depends on it.
        write: write ``run.json`` (or check the text against it) first.
        notes: more fields for a new run's ``run.json``.
        source: a run's other data (:func:`llama.training.loop.train`): its ``tokenizer`` makes the run's
            from the one built here (adding special tokens), and (with ``write``) writes it over its file.

    Returns:
        ``(tokenizer, its file, TokenData of the train and validation ids)``.

    Raises:
        ValueError: a resumed run given another text, or whose tokenizer file is not the one its
            settings made (``tokenizer_sha256`` in ``run.json``, kind and size).
        FileNotFoundError: ``cfg.tokenizer`` names a file that does not exist.
    """
    out = Path(cfg.out)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        if saved is None:
            run = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
            run.update(world_size=world_size, text_sha256=sha256_file(text_path), **(notes or {}))
            atomic_write_text(out / "run.json", json.dumps(run, indent=1))
        elif saved["text_sha256"] != sha256_file(text_path):
            raise ValueError(f"--resume: {text_path} is not the text the run in {out} was trained on "
                             "(its sha256 differs); pass the original with --data")
    tokenizer, tok_file = build_tokenizer(cfg, text_path, out, saved)
    if source is not None:
        tokenizer = source.tokenizer(tokenizer, tok_file if write else None)
    tok_sha = sha256_file(tok_file)
    if write and (saved or {}).get("tokenizer_sha256") != tok_sha:  # recorded once it exists; checked on resume
        run = json.loads((out / "run.json").read_text())
        atomic_write_text(out / "run.json", json.dumps({**run, "tokenizer_sha256": tok_sha}, indent=1))
    data = prepare_tokens(text_path, tokenizer, tok_sha, out / "data")
    return tokenizer, tok_file, data


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
    moment leaves the previous checkpoint intact and ``latest`` pointing at a complete one. An
    error while writing (a full disk) removes the new, partial folder before it propagates.
    """
    from safetensors.torch import save_file

    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:07d}"
    tmp = make_temp_dir(root, f".{name}.")  # the permissions a plain mkdir gives, not mkdtemp's 0700
    try:
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
    except BaseException:  # a full disk, Ctrl-C: no partial folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_checkpoint(tmp, root, name)


def publish_checkpoint(tmp: Path, root: Path, name: str) -> Path:
    """Rename the complete checkpoint folder ``tmp`` to ``root/name``, then point ``latest`` at
    it and remove the older ones. A failure at any point leaves no partial or orphan folder:
    ``latest`` keeps naming the previous checkpoint."""
    final = root / name
    try:
        for f in tmp.rglob("*"):  # safetensors creates its files 0600: give them a normal write's mode
            if f.is_file():
                os.chmod(f, default_mode())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)  # atomic: the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        atomic_write_text(root / "latest", name + "\n")
    except BaseException:  # complete, but never named by latest: it would only be an orphan
        shutil.rmtree(final, ignore_errors=True)
        raise
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final
# --8<-- [end:save_checkpoint]


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint folder ``out/checkpoints/latest`` names, or ``None`` if there is none yet.

    Raises:
        ValueError: ``latest`` names something other than a complete checkpoint of this run
            (:func:`llama.training.run_folder.latest_name`).
    """
    name = latest_name(out / "checkpoints")
    if name is None:
        return None
    pointer, path = out / "checkpoints" / "latest", out / "checkpoints" / name
    if not (path / "state.json").is_file():
        raise ValueError(f"{pointer} names {path.name}, which is missing or incomplete; delete {pointer} to restart")
    return path


def resume_checkpoint(out: Path, model: Transformer, optimizer: torch.optim.Optimizer, sampler: WindowSampler,
                      tokenizer_file: Path, load=None) -> dict[str, Any] | None:
    """Load the latest checkpoint of the run in ``out`` (:func:`load_checkpoint`) after checking
    that it belongs to the run: the model it holds is the one ``run.json`` describes, and its copy
    of the tokenizer is the run's. Returns its ``state.json``, or ``None`` when there is none yet.
    ``load`` reads the folder (default :func:`load_checkpoint`; a sharded run's is
    :func:`llama.training.sharded.load_sharded`).

    Raises:
        ValueError: the checkpoint disagrees with the run, or a file of it cannot be read (a
            truncated copy); the message names the file and what to do.
    """
    from safetensors import SafetensorError

    path = latest_checkpoint(out)
    if path is None:
        return None
    restart = (f"put back a good copy of {path}, or delete {out / 'checkpoints'} to train the run again "
               "from step 0 with --resume")
    try:
        meta = json.loads((path / "state.json").read_text())
        _check_types(meta)
        saved = meta["model_config"]
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / 'state.json'} is damaged ({err!r}); {restart}") from None
    differ = {k: (v, saved.get(k)) for k, v in model.config.to_dict().items() if saved.get(k) != v}
    if differ:
        diffs = ", ".join(f"{k} {b!r} (run.json makes {a!r})" for k, (a, b) in differ.items())
        raise ValueError(f"{path} holds another model than {out / 'run.json'} describes: {diffs}. run.json was "
                         "changed after the checkpoint was written: put it back, or start a new run in another --out")
    copy = path / tokenizer_file.name
    if not copy.is_file() or sha256_file(copy) != sha256_file(tokenizer_file):
        raise ValueError(f"{tokenizer_file} is not the tokenizer {path} was trained with ({copy}); "
                         f"copy that one back to {tokenizer_file}")
    try:
        return (load or load_checkpoint)(path, model, optimizer, sampler)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"the checkpoint {path} cannot be loaded ({reason}): it is damaged or truncated; "
                         f"{restart}") from None


def _check_types(meta: Any) -> None:
    """``state.json``'s fields of the types written: a hand-edited ``"step": "2"`` or ``"rng": 5``
    failed later with a traceback (a comparison of int and str, a subscript of an int)."""
    if not isinstance(meta, dict):
        raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
    for key, kind in (("step", int), ("elapsed", (int, float)), ("model_config", dict), ("rng", dict)):
        if key in meta and (isinstance(meta[key], bool) or not isinstance(meta[key], kind)):
            raise ValueError(f"{key} is {json.dumps(meta[key])}, which is not what a checkpoint stores there")


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
    restore_generators(tensors, meta["rng"], sampler)
    return meta


def restore_generators(tensors: dict[str, torch.Tensor], rng_json: dict[str, Any], sampler: WindowSampler) -> None:
    """Put back every random-number generator a checkpoint saved: torch's (and CUDA's), the data
    sampler's (``rng.*`` tensors), Python's and NumPy's (``state.json``'s ``rng``)."""
    torch.set_rng_state(tensors["rng.torch"])
    sampler.set_state(tensors["rng.sampler"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    _set_rng_json(rng_json)
# --8<-- [end:load_checkpoint]


# ------------------------------------------------------------------------------------- the log
def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to ``log.jsonl``, one JSON object a line (rank 0 alone calls this)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Forget the records of ``log.jsonl`` made after ``step`` (and the final one): a run resumed
    from the checkpoint of ``step`` makes them again, and the log must read as one run's.

    A last line cut short (a process killed, or a disk filled, while appending it) is dropped.
    """
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON; repair or delete that line, then --resume") from None
    kept = [r for r in records if r["step"] <= step and not r.get("final")]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------------------------- the end of a run
def finish_run(out: Path, model: Transformer, tokenizer: Any, tok_file: Path, cfg: TrainConfig) -> None:
    """Write the final model (a Hugging Face folder, or an adapter folder after LoRA) with its
    tokenizer, and a sample of ``cfg.sample_tokens`` tokens from it into ``samples.txt``.

    Args:
        out: the run folder.
        model: the trained model, whole (on rank 0).
        tokenizer: the run's tokenizer, whose file ``tok_file`` is copied beside the model.
        tok_file: the tokenizer's file in ``out``.
        cfg: the run's settings (``base``, ``sample_tokens``, ``seed``; ``sft``: adapters are merged
            into the model, which is written whole).
    """
    from llama.inference.generation import generate
    from llama.inference.sampling import Sampling

    if cfg.sft is not None:  # a chat model, whole: its vocabulary is no longer the base's, which an adapter needs
        merge_into_base(model)
    shutil.copyfile(tok_file, save_final(model, out, cfg.base) / tok_file.name)  # model/, or a run's adapter/
    if cfg.sample_tokens > 0:
        model.eval()
        prompt = tokenizer.encode("\n")
        n = min(cfg.sample_tokens, model.config.max_seq_len - len(prompt))
        ids = generate(model, prompt, n, Sampling(temperature=0.8, seed=cfg.seed))
        atomic_write_text(out / "samples.txt", tokenizer.decode(ids) + "\n")
