"""Train a LLaMA-style model on a text file: the schedule, the optimizer, the loss, evaluation in
bits per byte, one training step, and the loop that runs them.

``llama train ...`` runs :func:`train`, alone or under ``torchrun --nproc_per_node N`` (one
process per rank). The settings are a :class:`llama.training.config.TrainConfig`; what a run saves,
and how it resumes exactly, is :mod:`llama.training.state`; how processes train as one is
:mod:`llama.training.distributed`.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llama.data.pipeline import WindowSampler, eval_windows, resolve_text_path, token_byte_lengths
from llama.model.transformer import Transformer
from llama.training.allocator import reuse_freed_memory
from llama.training.config import TrainConfig, check_memory, model_config
from llama.training.distributed import (
    Dist,
    all_finite,
    broadcast_from_rank0,
    no_grad_sync,
    on_rank0,
    setup,
    teardown,
    wrap_model,
)
from llama.training.finetune import build_model
from llama.training.fsdp import checkpoint_activations, full_state_dict, held_bytes, shard
from llama.training.loss import cross_entropy
from llama.training.optim import clip_grad_norm, lr_at, make_optimizer
from llama.training.precision import choose_dtype
from llama.training.run_folder import RunLock, check_out, kept_after_stop, remove_new_run, remove_partial
from llama.training.sharded import load_sharded, save_sharded
from llama.training.state import (
    append_log,
    finish_run,
    merge_resume,
    preflight,
    prepare_run,
    resume_checkpoint,
    save_checkpoint,
    trim_log,
)

__all__ = ["evaluate", "train_step", "train"]


# --8<-- [start:evaluate]
@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, block_size: int, byte_lengths: np.ndarray,
             max_tokens: int | None = None, batch_size: int = 16, rank: int = 0, world_size: int = 1,
             lockstep: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Loss, perplexity and bits per byte of ``model`` on validation tokens.

    The windows of :func:`llama.data.pipeline.eval_windows` predict every token of
    ``tokens[1 : n + 1]`` once (``n = max_tokens``, or all). Their total loss in nats, divided by
    $\\ln 2$ times the number of bytes those target tokens decode to (``byte_lengths``
    summed over them), is the bits per byte. Ranks split the windows and add up their sums;
    with ``lockstep`` (a sharded model), a rank with fewer batches runs empty forward passes
    until all have run as many. ``progress(n)`` is told of each batch of ``n`` windows done.

    Returns:
        ``{"loss": nats per token, "ppl": exp(loss), "bpb": bits per byte, "tokens", "bytes"}``.
    """
    windows = list(eval_windows(tokens, block_size, max_tokens))
    device = next(model.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=device)  # on the device: NCCL all-reduces only GPU tensors

    def batches(mine):  # (start, end) of runs of equal-length windows, at most batch_size long
        spans, i = [], 0
        while i < len(mine):
            j = i
            while j < len(mine) and j - i < batch_size and mine[j][1].size(1) == mine[i][1].size(1):
                j += 1
            spans.append((i, j))
            i = j
        return spans

    mine = windows[rank::world_size]
    spans = batches(mine)
    for i, j in spans:
        x = torch.cat([w[1] for w in mine[i:j]])
        y = torch.cat([w[2] for w in mine[i:j]])
        nats += cross_entropy(model(x.to(device)), y.to(device), reduction="sum").double()
        if progress is not None:
            progress(j - i)
    if lockstep:  # a sharded model's forward gathers weights from every rank: all run as many
        most = max(len(batches(windows[r::world_size])) for r in range(world_size))
        for _ in range(most - len(spans)):
            model(windows[0][1][:, :1].to(device))
    if world_size > 1:
        torch.distributed.all_reduce(nats)
    n_targets = sum(w[2].numel() for w in windows)
    n_bytes = int(byte_lengths[np.asarray(tokens[1 : n_targets + 1], dtype=np.int64)].sum())
    loss = float(nats) / n_targets
    return {"loss": loss, "ppl": math.exp(loss), "bpb": float(nats) / (math.log(2) * n_bytes),
            "tokens": n_targets, "bytes": n_bytes}
# --8<-- [end:evaluate]


# --8<-- [start:train_step]
def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: WindowSampler, lr: float,
               accum: int = 1, grad_clip: float = 0.0, autocast_dtype: torch.dtype | None = None,
               world_size: int = 1, loss_fn: Callable[..., torch.Tensor] = cross_entropy) -> float:
    """One optimizer step: ``accum`` micro-batches of gradients, clipped, then one update.

    Args:
        net: the model to train (under several processes, wrapped by
            :func:`llama.training.distributed.wrap_model`).
        optimizer: its optimizer (:func:`llama.training.optim.make_optimizer`).
        sampler: where the ``[batch_size, block_size]`` inputs and targets come from.
        lr: the learning rate of this step (:func:`llama.training.optim.lr_at`); a group with an
            ``lr_ratio`` (Muon's) gets ``lr`` times it.
        accum: micro-batches whose gradients add up before the update.
        grad_clip: largest global gradient norm; 0 does not clip.
        autocast_dtype: run the forward pass under ``torch.autocast`` in this dtype
            (``torch.bfloat16``); ``None`` runs it in the weights' dtype.
        world_size: number of processes training together.
        loss_fn: the loss of logits against targets (``[b, s, vocab]``, ``[b, s]``); supervised
            fine-tuning's leaves out the targets it is not to learn (:mod:`llama.posttraining.sft`).

    Returns:
        The step's mean training loss in nats per token, averaged over all processes.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)
    device = next(net.parameters()).device
    autocast = nullcontext() if autocast_dtype is None else torch.autocast(device.type, dtype=autocast_dtype)
    step_loss = torch.zeros((), device=device)
    for micro in range(accum):
        x, y = sampler.next_batch()
        # DDP (or FSDP) averages the gradients across processes during backward; once, at the last micro-batch
        last = world_size == 1 or micro == accum - 1
        with nullcontext() if last else no_grad_sync(net, world_size):
            with autocast:
                logits = net(x.to(device))
            loss = loss_fn(logits, y.to(device)) / accum  # the sum over micro-batches is the mean
            loss.backward()
        step_loss += loss.detach()
    if grad_clip > 0:
        clip_grad_norm(net.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if world_size > 1:  # for the log only: the mean loss over all ranks
        torch.distributed.all_reduce(step_loss)
        step_loss /= world_size
    return float(step_loss)
# --8<-- [end:train_step]


def train(cfg: TrainConfig, resume: bool = False, given: set[str] | None = None,
          on_step: Callable[[int], None] | None = None, source: Any = None) -> dict[str, Any]:
    """Run (or resume) training as ``cfg`` says; returns the final evaluation's log record.

    Under torchrun every process calls this; they find each other through the environment
    (:func:`llama.training.distributed.setup`) and leave the process group when it returns. Rank 0 chooses
    the precision (:func:`llama.training.precision.resolve_dtype`), says it on stderr with the progress and
    records it, with why, in ``run.json``.

    Args:
        cfg: the settings.
        resume: continue the run in ``cfg.out`` from its latest checkpoint.
        given: names of the settings the user set explicitly (on resume these must agree
            with the saved run; the others are taken from it). ``None``: all of them.
        on_step: called with the step number after each optimizer step, once that step's
            evaluation and checkpoint (if it has them) are written; on every process.
        source: what a run trains on other than windows of ``cfg.data`` (whose text the evaluations
            still measure); an object with ``tokenizer``, ``model``, ``sampler`` and ``loss``, as
            :class:`llama.posttraining.sft.SFTData` for a run whose ``cfg.sft`` names a task.

    Returns:
        The final evaluation's record (as in ``log.jsonl``: ``step``, ``elapsed``, ``val_loss``,
        ``val_ppl``, ``val_bpb``, ...).

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad data, flags or output folder; the
            message says what to change.
    """
    if cfg.sft is not None and source is None:
        raise ValueError("a supervised fine-tuning run (cfg.sft) trains on its source's windows: give source (llama sft does)")
    dist = setup()
    requested = cfg.dtype  # "auto" unless given: resolved below, once the saved run is known
    threads_before = torch.get_num_threads()
    out = Path(cfg.out)
    lock: RunLock | None = None
    undo = False

    def open_run() -> dict[str, Any] | None:
        """Rank 0: check the folder and every setting before writing anything, then lock the folder."""
        nonlocal lock
        saved = check_out(out, resume)
        run_cfg = cfg if saved is None else merge_resume(cfg, set(dataclasses.asdict(cfg)) if given is None else given,
                                                         saved, dist.world_size)
        preflight(run_cfg, dist.device)
        lock = RunLock(out).acquire()
        saved = check_out(out, resume)  # again, under the lock: another run may have started meanwhile
        remove_partial(out)
        return saved

    try:
        # Only rank 0 looks at --out (another rank could see rank 0's new run.json and refuse it);
        # the verdict, or the error, goes to every rank.
        saved = on_rank0(dist, open_run)
        if saved is not None:
            cfg = merge_resume(cfg, set(dataclasses.asdict(cfg)) if given is None else given, saved, dist.world_size)
        # The processes of one machine share its cores; each keeps the memory a step frees for the next.
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist.local_world_size))
        reuse_freed_memory()
        try:
            dtype, why = on_rank0(dist, lambda: choose_dtype(requested, saved, dist.device, cfg.progress))
            cfg = dataclasses.replace(cfg, dtype=dtype)
            return _train_loop(cfg, resume, saved, dist, on_step, why, source)
        except BaseException:
            # A new run that stops before its first checkpoint leaves nothing, so the same command
            # (with other flags, say) can run again; a later stop keeps the run for --resume.
            undo = lock is not None and saved is None and not (out / "checkpoints" / "latest").exists()
            if undo:
                remove_new_run(out)
            raise
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        again = "continue it with --resume" if (out / "run.json").exists() else "run the same command again"
        raise ValueError(f"no space left on the device writing {err.filename or out}: the run stopped; free some "
                         f"space, then {again}") from None
    finally:
        if lock is not None:
            lock.release(remove=undo)
        torch.set_num_threads(threads_before)
        teardown(dist)


# --8<-- [start:loop]
def _train_loop(cfg: TrainConfig, resume: bool, saved: dict[str, Any] | None, dist: Dist,
                on_step: Callable[[int], None] | None, dtype_reason: str, source: Any) -> dict[str, Any]:
    """The body of :func:`train`, once the settings are final (``cfg.dtype`` chosen, for
    ``dtype_reason``) and the processes joined; ``source`` as in :func:`train`."""
    out, rank, world = Path(cfg.out), dist.rank, dist.world_size
    # Data and tokenizer: rank 0 writes the files, then every rank reads them.
    text_path = resolve_text_path(cfg.data)
    on_rank0(dist, lambda: _write_run_files(cfg, text_path, saved, world, dtype_reason, source))
    tokenizer, tok_file, data = prepare_run(cfg, text_path, saved, world, write=False, source=source)  # reads them
    if len(data.val) < 2:
        raise ValueError(f"the validation text of {text_path} has {len(data.val)} token(s); use a longer text")

    torch.manual_seed(cfg.seed)  # the same weights on every rank
    mconf = model_config(cfg, tokenizer.vocab_size)
    check_memory(cfg, mconf, dist.device)
    model = build_model(cfg, mconf)  # a new model, or a base to fine-tune (with rows for a source's new tokens)
    model = (model if source is None else source.model(model, mconf.vocab_size)).to(dist.device)
    if cfg.checkpoint_activations:
        checkpoint_activations(model)
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    sharded = cfg.parallel == "fsdp"
    if sharded and world > 1:  # before the optimizer, which then holds this rank's shards only
        shard(model, dist, param_dtype=autocast_dtype)
        autocast_dtype = None  # FSDP's policy casts the gathered weights instead
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.optimizer, cfg.muon_lr)
    sampler = (WindowSampler(data.train, cfg.block_size, cfg.batch_size, cfg.seed, rank, world) if source is None
               else source.sampler(cfg, tokenizer, rank, world))
    byte_lengths = token_byte_lengths(tokenizer)
    step, elapsed, log = 0, 0.0, out / "log.jsonl"
    meta = resume_checkpoint(out, model, optimizer, sampler, tok_file, load_sharded if sharded else None) if resume else None
    if meta is not None:
        step, elapsed = meta["step"], meta["elapsed"]
    if rank == 0:
        trim_log(log, step)
    net = model if sharded else wrap_model(torch.compile(model) if cfg.compile else model, dist)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.accum * world

    bar = _progress_bar(cfg, _progress(cfg, step, elapsed)) if rank == 0 and cfg.progress else None
    losses: list[float] = []  # training losses since the last evaluation
    lr = lr_at(step, _progress(cfg, step, elapsed), cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
    net.train()
    start = time.perf_counter() - elapsed
    while True:
        elapsed = _clock(start, cfg, dist)
        if _progress(cfg, step, elapsed) >= 1.0:
            break
        lr = lr_at(step, _progress(cfg, step, elapsed), cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        loss = train_step(net, optimizer, sampler, lr, cfg.accum, cfg.grad_clip, autocast_dtype, world,
                          cross_entropy if source is None else source.loss)
        losses.append(loss)
        step += 1
        if not math.isfinite(loss):  # the same on every rank: the loss is averaged over them
            raise _diverged(cfg, resume, step, f"the loss is {loss}")
        elapsed = _clock(start, cfg, dist)
        if step % cfg.eval_every == 0 or _progress(cfg, step, elapsed) >= 1.0:
            if not all_finite(model, dist):  # never checkpoint them
                raise _diverged(cfg, resume, step, f"the loss was {loss:.4g}, but the update made weights non-finite")
            record = {"step": step, "tokens": step * tokens_per_step, "elapsed": round(elapsed, 3), "lr": lr,
                      "train_loss": sum(losses) / len(losses), **_validate(net, model, cfg, dist, data.val, byte_lengths)}
            if rank == 0:
                append_log(log, record)
            losses.clear()
            state = {"step": step, "elapsed": time.perf_counter() - start, "model_config": mconf.to_dict(),
                     "train_config": dataclasses.asdict(cfg), "bytes_per_rank": held_bytes(model, optimizer, dist)}
            if sharded:  # every rank writes its shards
                _save(cfg, resume, step, save_sharded, model, optimizer, sampler, state, tok_file, dist)
            elif rank == 0:
                _save(cfg, resume, step, save_checkpoint, model, optimizer, sampler, state, tok_file)
            if bar is not None:
                bar.set_postfix_str(f"val {record['val_loss']:.3f} ({record['val_bpb']:.3f} bpb)", refresh=False)
        if bar is not None:
            tok_s = step * tokens_per_step / max(elapsed, 1e-9)
            bar.set_description(f"step {step} loss {loss:.3f} {tok_s:,.0f} tok/s")
            bar.update(max(0, min(bar.total, round(_progress(cfg, step, elapsed) * bar.total)) - bar.n))
        if on_step is not None:
            on_step(step)
    if bar is not None:  # the loop's bar gives way to the final evaluation's, saying what still comes
        bar = _final_progress(bar, cfg, step, elapsed, len(data.val) - 1, world)
    final = {"step": step, "tokens": step * tokens_per_step, "elapsed": round(elapsed, 3), "lr": lr, "train_loss": None,
             **_validate(net, model, cfg, dist, data.val, byte_lengths, final=True, bar=bar), "final": True}
    if rank == 0:
        append_log(log, final)
    if sharded and world > 1:  # the whole weights, gathered from every rank's shards, for rank 0 to write
        whole = full_state_dict(model)
        if rank == 0:
            model = Transformer(mconf)
            model.load_state_dict(whole)
    if rank == 0:
        finish_run(out, model, tokenizer, tok_file, cfg)
    if world > 1:
        torch.distributed.barrier()  # nobody leaves before rank 0 has written the model
    return final


def _progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """The fraction of the run done at ``step``, ``elapsed`` seconds in: of its steps, of its time,
    or the larger of the two."""
    return max(step / cfg.max_steps if cfg.max_steps else 0.0, elapsed / cfg.max_time if cfg.max_time else 0.0)


def _clock(start: float, cfg: TrainConfig, dist: Dist) -> float:
    """Seconds of training since ``start``. Under a time budget with several ranks, rank 0's: the
    decisions taken from it (stop? evaluate?) must be the same on every rank at every step."""
    seconds = time.perf_counter() - start
    return broadcast_from_rank0(seconds, dist) if dist.world_size > 1 and cfg.max_time else seconds


def _validate(net: torch.nn.Module, model: torch.nn.Module, cfg: TrainConfig, dist: Dist, val: np.ndarray,
              byte_lengths: np.ndarray, final: bool = False, bar: Any = None) -> dict[str, float]:
    """:func:`evaluate` on ``cfg.eval_tokens`` validation ids (all of them if ``final``), in eval
    mode, as ``val_loss``, ``val_ppl``, ``val_bpb``, ...; ``bar`` counts the windows, and is closed."""
    net.eval()
    sharded = cfg.parallel == "fsdp"
    result = evaluate(model, val, cfg.block_size, byte_lengths, None if final else cfg.eval_tokens, rank=dist.rank,
                      world_size=dist.world_size, lockstep=sharded, progress=bar and bar.update)
    if bar is not None:
        bar.close()
    if sharded and dist.world_size > 1:
        model.reshard()  # the outermost unit stays gathered after a forward that no backward follows
    net.train()
    return {f"val_{k}": v for k, v in result.items()}

def _write_run_files(cfg: TrainConfig, text_path: Path, saved: dict[str, Any] | None, world: int,
                     dtype_reason: str, source: Any) -> None:
    """Rank 0: ``run.json``, the tokenizer and the token ids, which the other ranks then read."""
    prepare_run(cfg, text_path, saved, world, write=True, notes={"dtype_reason": dtype_reason}, source=source)
# --8<-- [end:loop]


def _progress_bar(cfg: TrainConfig, progress: float, windows: int = 0):
    """A tqdm bar in steps for a run of ``--max-steps`` alone, else in thousandths of the run (or, given
    ``windows``, the final evaluation's); on a terminal only: elsewhere (a log file, a pipe) its redraws
    would be kilobytes of ``\\r``, so a plain line every :data:`PLAIN_PROGRESS_SECONDS` seconds says the same."""
    from tqdm import tqdm

    total = windows or (cfg.max_steps if cfg.max_steps and not cfg.max_time else 1000)
    unit, desc = ("window", "final evaluation") if windows else ("step" if total == cfg.max_steps else "‰", "")
    if not sys.stderr.isatty():
        return _PlainProgress(total, round(progress * total), desc)
    return tqdm(total=total, initial=round(progress * total), unit=unit, desc=desc or None, dynamic_ncols=True,
                file=sys.stderr)


def _final_progress(bar: Any, cfg: TrainConfig, step: int, elapsed: float, n_tokens: int, world: int):
    """Close the loop's bar, say why it stopped (``--max-time`` bounds the loop alone) and what comes next."""
    bar.close()
    limit = f"--max-time {cfg.max_time:g} s of training loop" if cfg.max_time and elapsed >= cfg.max_time else "--max-steps"
    print(f"stopped at step {step} ({limit} reached); final evaluation on the whole validation split ({n_tokens:,} "
          f"tokens), then the model and {cfg.sample_tokens} tokens of sample", file=sys.stderr, flush=True)
    return _progress_bar(cfg, 0.0, len(range(0, n_tokens, cfg.block_size)[::world]))


#: Seconds between the progress lines of a run whose stderr is not a terminal.
PLAIN_PROGRESS_SECONDS = 10.0


class _PlainProgress:
    """The part of tqdm's interface the loop uses, printing one line at a time."""

    def __init__(self, total: int, initial: int, desc: str = "") -> None:
        self.total, self.n, self.desc, self.postfix = total, initial, desc, ""
        self.last = time.monotonic()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix_str(self, postfix: str, refresh: bool = False) -> None:
        self.postfix = postfix

    def update(self, n: int) -> None:
        self.n += n
        if time.monotonic() - self.last >= PLAIN_PROGRESS_SECONDS:
            self.last = time.monotonic()
            print(f"{self.desc} {self.postfix} ({100 * self.n / self.total:.0f}%)".strip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _diverged(cfg: TrainConfig, resume: bool, step: int, what: str) -> ValueError:
    """The error of a run whose loss or weights stopped being finite: nothing after it is saved."""
    kept, resumable = kept_after_stop(Path(cfg.out), resume)
    where = " in a new run (another --out)" if resumable else ""
    return ValueError(f"training diverged at step {step}: {what}. It stopped without saving anything more; {kept}. "
                      f"Lower --lr (it is {cfg.lr:g}){where}, or check the training text")


def _save(cfg: TrainConfig, resume: bool, step: int, write: Callable[..., Any], *args: Any) -> None:
    """``write(out, *args)`` (:func:`save_checkpoint`, or :func:`save_sharded`), with a write
    that fails (a full disk) reported in one line."""
    from safetensors import SafetensorError

    try:
        write(Path(cfg.out), *args)
    except (OSError, SafetensorError) as err:
        kept, resumable = kept_after_stop(Path(cfg.out), resume)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(f"could not write the checkpoint of step {step} into {Path(cfg.out) / 'checkpoints'} "
                         f"({reason}); the partial checkpoint was removed and {kept}. Free some space, then "
                         f"{'continue with --resume' if resumable else 'run the command again'}") from None


if __name__ == "__main__":  # the loop has no flags of its own: they belong to the command line
    raise SystemExit("llama.training.loop is a library module; train with `llama train --out DIR ...`")
