r"""The run of a post-training stage that samples while it trains: DPO on pairs of a chat model's own
replies (``llama dpo``), or GRPO or REINFORCE on groups of them (``llama rl``).

Each step draws the next training problems of a task, samples replies to them from the policy as
it is now, grades them, and takes one optimizer step: DPO on a right reply preferred to a wrong one
(:func:`~llama.posttraining.dpo.preference_pairs`, :func:`~llama.posttraining.dpo.dpo_step`, against
the frozen base), GRPO or REINFORCE on the group's advantages (:func:`~llama.posttraining.rl.rollout`,
:func:`~llama.posttraining.rl.rl_step`). The run folder is the training loop's
(:mod:`llama.training.run_folder`, :mod:`llama.training.state`): ``run.json``, the tokenizer,
``log.jsonl`` (a record per step), checkpoints written atomically with the weights, AdamW's state,
the problem stream's position and every generator's state, and ``model/`` at the end. The sampling
of step $s$ is seeded by the run's seed and $s$ alone, so a run killed at any moment and resumed
ends with the same weights, to the bit, as one never interrupted.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from llama._files import atomic_write_text
from llama.data.sources import sha256_file
from llama.formats.load import load_model, save_model
from llama.model.transformer import Transformer
from llama.posttraining.chat import EOT, ChatFormat
from llama.posttraining.dpo import Pair, dpo_step, frozen_copy, pair_batch, preference_pairs
from llama.posttraining.rl import flat_groups, informative_groups, rl_step, rollout
from llama.posttraining.sft import parse_task
from llama.posttraining.tasks import Problem, Task
from llama.tokenizers.tokenizer import load_tokenizer
from llama.training.config import SettingError, check_base
from llama.training.finetune import base_tokenizer
from llama.training.run_folder import RunLock, check_out, kept_after_stop, remove_new_run, remove_partial
from llama.training.state import append_log, read_log, resume_checkpoint, save_checkpoint, trim_log

__all__ = ["METHODS", "StageConfig", "ProblemStream", "load_reward", "chat_model", "run_stage"]

#: What a stage trains with: ``dpo`` (``llama dpo``), ``grpo`` or ``reinforce`` (``llama rl``).
METHODS = ("dpo", "grpo", "reinforce")
#: Draws of new problems a DPO step makes before it gives up finding a right and a wrong reply.
DPO_DRAWS = 8


# --8<-- [start:config]
@dataclass(frozen=True)
class StageConfig:
    """The settings of a ``llama dpo`` or ``llama rl`` run.

    Attributes:
        out: the run folder.
        base: the chat model to start from (``llama sft``'s ``OUT/model``), with its tokenizer beside it.
        task: the task and difficulty, as ``llama sft`` names it (``addition:digits=2``).
        method: one of :data:`METHODS`.
        seed: seeds the problem stream and every step's sampling.
        max_steps: optimizer steps.
        lr: AdamW's learning rate (constant; no weight decay, which would pull towards zero, not the base).
        problems_per_step: training problems drawn per step (RL: trained on per step).
        oversample: RL draws ``oversample * problems_per_step`` problems a step and trains on up to
            ``problems_per_step`` of their groups whose rewards differ
            (:func:`~llama.posttraining.rl.informative_groups`); 1: on every group drawn.
        group: replies sampled per problem (GRPO's $G$; DPO pairs the best with the worst of them).
        max_new_tokens: the longest reply, in tokens.
        temperature: the sampling temperature (1: the policy's own distribution).
        beta: DPO's $\\beta$.
        kl_beta: weight of RL's k3 KL term to the base (0: none, and no reference is kept).
        clip_eps: GRPO's clip $\\epsilon$.
        level: ``sequence`` or ``token`` averaging of RL's per-token losses.
        save_every: steps between checkpoints (the last step has one too).
        threads: CPU threads (0: PyTorch's default).
        reward: ``FILE.py:NAME``, a Python function ``NAME(reply, problem) -> float`` in ``FILE.py``
            that rewards replies instead of the task's grader (:func:`load_reward`); ``None``: the grader.
    """

    out: str
    base: str
    task: str
    method: str = "grpo"
    seed: int = 0
    max_steps: int = 50
    lr: float = 1e-4
    problems_per_step: int = 8
    oversample: int = 1
    group: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    beta: float = 0.1
    kl_beta: float = 0.0
    clip_eps: float = 0.2
    level: str = "sequence"
    save_every: int = 10
    threads: int = 0
    reward: str | None = None

    #: Settings a resumed run may change: how long it goes on, how often it saves, how it computes.
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("out", "max_steps", "save_every", "threads")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SettingError("{method} must be one of {names}, got {value!r}", names=", ".join(METHODS),
                               value=self.method)
        for name in ("max_steps", "problems_per_step", "oversample", "max_new_tokens", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError("{" + name + "} must be a positive integer, got {value!r}", value=value)
        if isinstance(self.group, bool) or not isinstance(self.group, int) or self.group < 2:
            raise SettingError("{group} must be at least 2, got {value!r}: replies are compared within a group, "
                               "and a reply alone has nothing to be compared with", value=self.group)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise SettingError("{seed} must be an integer from 0 to {high}, got {value!r}", high=2**32 - 1, value=self.seed)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise SettingError("{threads} must be an integer >= 0 (0: all cores), got {value!r}", value=self.threads)
        for name, positive in (("lr", True), ("temperature", True), ("beta", True), ("kl_beta", False),
                               ("clip_eps", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    value <= 0 if positive else value < 0):
                what = "a positive number" if positive else "a number >= 0"
                raise SettingError("{" + name + "} must be {what}, got {value!r}", what=what, value=value)
        if self.level not in ("sequence", "token"):
            raise SettingError("{level} must be sequence or token, got {value!r}", value=self.level)
        if self.reward is not None and (not isinstance(self.reward, str) or not self.reward.rpartition(":")[2]
                                        or not self.reward.rpartition(":")[0].endswith(".py")):
            raise SettingError("{reward} must be FILE.py:NAME, a Python file and the name of its function "
                               "(reply, problem) -> float, got {value!r}", value=self.reward)
        try:
            parse_task(self.task)
        except ValueError as err:
            raise SettingError("{task}: {problem}", problem=str(err)) from None
# --8<-- [end:config]


# --8<-- [start:stream]
class ProblemStream:
    """The task's training problems from ``seed``, handed out in order; its position is one number.

    :meth:`state` and :meth:`set_state` have the shape of the training loop's samplers', so a
    checkpoint (:func:`llama.training.state.save_checkpoint`) saves and restores it with them.
    """

    def __init__(self, task: Task, seed: int) -> None:
        self.task, self.seed = task, seed
        self.set_state(torch.zeros(1, dtype=torch.int64))

    def take(self, n: int) -> list[Problem]:
        """The next ``n`` problems."""
        self.used += n
        return list(itertools.islice(self.problems, n))

    def state(self) -> torch.Tensor:
        """``int64[1]``: how many problems have been handed out."""
        return torch.tensor([self.used], dtype=torch.int64)

    def set_state(self, state: torch.Tensor) -> None:
        """Go back to the position :meth:`state` gave: the stream from ``seed`` again, that many problems skipped."""
        self.used = int(state[0])
        self.problems = itertools.islice(self.task.train(self.seed), self.used, None)  # its first `used` skipped
# --8<-- [end:stream]


def load_reward(spec: str) -> Callable[[str, Problem], float]:
    """The reward function ``FILE.py:NAME`` names: ``NAME`` of the Python file ``FILE.py``, run as a module.

    The file is the user's own code, run as ``python FILE.py`` would run it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file fails to run, or has no function ``NAME``.
    """
    import importlib.util

    path, _, name = spec.rpartition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--reward {spec}: there is no file {path}")
    module_spec = importlib.util.spec_from_file_location(f"_reward_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise ValueError(f"--reward {spec}: running {path} failed with {type(err).__name__}: {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"--reward {spec}: {path} has no function {name!r}; define {name}(reply, problem) -> float")
    return function


def chat_model(base: str) -> tuple[Path, ChatFormat]:
    """The tokenizer file beside a chat model, and the chat format over it.

    Raises:
        FileNotFoundError: no base, or no tokenizer beside it.
        ValueError: the base is not a float checkpoint, or its tokenizer has no chat tokens (a
            model ``llama sft`` has not made into a chat model).
    """
    check_base(base)
    tok_file = base_tokenizer(base)
    try:
        return tok_file, ChatFormat(load_tokenizer(tok_file))
    except ValueError as err:
        raise ValueError(f"{base} is not a chat model: {str(err).split(':')[0].removeprefix('the ')}; "
                         "run llama sft on it first, and give its OUT/model as --base") from None


def _base_digest(base: str) -> str:
    """A sha256 of the base's weight files: a resumed run must start from the very same weights."""
    path = Path(base)
    files = (sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))) if path.is_dir() else [path]
    return ":".join(sha256_file(f) for f in files)


def _merge_resume(cfg: StageConfig, given: set[str], saved: dict[str, Any]) -> StageConfig:
    """The saved run's settings, with the ones given now that :attr:`StageConfig.RESUMABLE_CHANGES` allows.

    Raises:
        ValueError: the run folder holds another kind of run, another base, or flags that disagree.
    """
    out = cfg.out
    if saved.get("method") not in METHODS:
        raise ValueError(f"{out} holds no llama dpo or llama rl run: resume it with the command that started it")
    if (saved["method"] == "dpo") != (cfg.method == "dpo"):
        command = "llama dpo" if saved["method"] == "dpo" else "llama rl"
        raise ValueError(f"{out} holds a {saved['method']} run: resume it with {command}")
    if Path(cfg.base).resolve() != Path(saved["base"]).resolve() or _base_digest(cfg.base) != saved.get("base_sha256"):
        raise ValueError(f"--resume: --base {cfg.base} is not the model the run in {out} started from "
                         f"({saved['base']}, as it was then): give that --base, or start a new run in another --out")
    fields = {f.name for f in dataclasses.fields(StageConfig)}
    conflicts = [f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (the run used {saved.get(k)!r})" for k in sorted(given)
                 if k in fields and k not in (*StageConfig.RESUMABLE_CHANGES, "base")
                 and getattr(cfg, k) != saved.get(k)]
    if conflicts:
        raise ValueError(f"--resume: the flags disagree with the run in {out}: " + "; ".join(conflicts)
                         + ". Drop those flags to continue the run as it was, or start a new run in another --out")
    now = {"out", "base", *(set(given) & set(StageConfig.RESUMABLE_CHANGES))}
    return dataclasses.replace(cfg, **{k: saved[k] for k in fields - now if k in saved})


def run_stage(cfg: StageConfig, resume: bool = False, given: set[str] | None = None,
              on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a DPO or RL stage as ``cfg`` says; returns the final log record.

    The folder is checked and locked as ``llama train`` does it; a new run that stops before its
    first checkpoint leaves nothing behind, so the same command can run again.

    Args:
        cfg: the settings.
        resume: continue the run in ``cfg.out`` from its latest checkpoint.
        given: names of the settings the user gave (on resume they must agree with the saved
            run, the others are taken from it); ``None``: all of them.
        on_step: called with the step number after each step, once its checkpoint (if any) is written.

    Returns:
        ``{"step", "elapsed", "reward", "final": True}``: ``reward`` is the mean reward of the last ten
        RL steps' replies (``None`` for DPO, whose steps log the share of problems that made a pair).

    Raises:
        ValueError, FileNotFoundError, FileExistsError: a bad base, folder or flag, a reward
            function that fails, or a run that diverged; the message says what to change.
    """
    out = Path(cfg.out)
    saved = check_out(out, resume)
    if saved is not None:
        cfg = _merge_resume(cfg, set(dataclasses.asdict(cfg)) if given is None else given, saved)
    tok_source, chat = chat_model(cfg.base)
    reward = None if cfg.reward is None else load_reward(cfg.reward)
    lock = RunLock(out).acquire()
    undo = False
    threads = torch.get_num_threads()
    try:
        saved = check_out(out, resume)  # again, under the lock
        remove_partial(out)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if saved is None:
            run = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
            atomic_write_text(out / "run.json", json.dumps({**run, "base_sha256": _base_digest(cfg.base)}, indent=1))
            shutil.copyfile(tok_source, out / tok_source.name)
        return _loop(cfg, resume, chat, out / tok_source.name, on_step, reward)
    except BaseException:
        undo = saved is None and not (out / "checkpoints" / "latest").exists()
        if undo:
            remove_new_run(out)
        raise
    finally:
        lock.release(remove=undo)
        torch.set_num_threads(threads)


# --8<-- [start:loop]
def _loop(cfg: StageConfig, resume: bool, chat: ChatFormat, tok_file: Path, on_step: Callable[[int], None] | None,
          reward: Callable[[str, Problem], float] | None) -> dict[str, Any]:
    """The body of :func:`run_stage`, once the folder is locked and ``run.json`` written."""
    out, log = Path(cfg.out), Path(cfg.out) / "log.jsonl"
    task = parse_task(cfg.task)
    torch.manual_seed(cfg.seed)
    policy = load_model(cfg.base).train()
    # DPO's loss compares with the base; RL's only through its KL term, and without one keeps no copy.
    reference = frozen_copy(policy) if cfg.method == "dpo" or cfg.kl_beta > 0 else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    stream = ProblemStream(task, cfg.seed)
    step, elapsed = 0, 0.0
    meta = resume_checkpoint(out, policy, optimizer, stream, tok_file) if resume else None
    if meta is not None:
        step, elapsed = meta["step"], meta["elapsed"]
    trim_log(log, step)  # the records after the checkpoint are made again
    start = time.perf_counter() - elapsed
    while step < cfg.max_steps:
        if cfg.method == "dpo":
            record = _dpo_update(policy, reference, optimizer, chat, task, stream, cfg, step, reward)
        else:
            record = _rl_update(policy, reference, optimizer, chat, task, stream, cfg, step, reward)
        step += 1
        if not math.isfinite(record["loss"]) or not all(bool(p.isfinite().all()) for p in policy.parameters()):
            kept, _ = kept_after_stop(out, resume)
            raise ValueError(f"the run diverged at step {step} (loss {record['loss']}): nothing more was saved and "
                             f"{kept}; lower --lr (it is {cfg.lr:g}) in a new run")
        elapsed = time.perf_counter() - start
        append_log(log, {"step": step, "elapsed": round(elapsed, 3), **record})
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            state = {"step": step, "elapsed": elapsed, "model_config": policy.config.to_dict(),
                     "stage_config": dataclasses.asdict(cfg)}
            save_checkpoint(out, policy, optimizer, stream, state, tok_file)
        print(f"step {step}/{cfg.max_steps} | " + " | ".join(f"{k} {v:.3f}" for k, v in record.items()),
              file=sys.stderr, flush=True)
        if on_step is not None:
            on_step(step)
    save_model(policy, out / "model")
    shutil.copyfile(tok_file, out / "model" / tok_file.name)  # beside the model: llama chat OUT/model finds it
    rewards = [r["reward"] for r in read_log(log) if "reward" in r][-10:]
    final = {"step": step, "elapsed": round(time.perf_counter() - start, 3),
             "reward": sum(rewards) / len(rewards) if rewards else None, "final": True}
    append_log(log, final)
    return final


def _seed(cfg: StageConfig, step: int, draw: int = 0) -> int:
    """The sampling seed of a step's ``draw``-th batch: a function of the run's seed and the step alone."""
    return (cfg.seed * 1_000_003 + step) * DPO_DRAWS + draw


def _rl_update(policy: Transformer, reference: Transformer | None, optimizer: torch.optim.Optimizer,
               chat: ChatFormat, task: Task, stream: ProblemStream, cfg: StageConfig, step: int,
               reward: Callable[[str, Problem], float] | None) -> dict[str, float]:
    """One GRPO or REINFORCE step on groups of replies to the next problems; its :func:`rl_step` record,
    with the reward and the flat groups of every group drawn, and the count of ``groups`` trained on."""
    drawn = rollout(policy, chat.tokenizer, task, stream.take(cfg.problems_per_step * cfg.oversample), cfg.group,
                    cfg.max_new_tokens, temperature=cfg.temperature, seed=_seed(cfg, step), reward=reward,
                    format_prompt=chat.prompt, stop=(EOT,))
    batch = informative_groups(drawn, cfg.problems_per_step) if cfg.oversample > 1 else drawn
    record = rl_step(policy, batch, optimizer, method=cfg.method, clip_eps=cfg.clip_eps, kl_beta=cfg.kl_beta,
                     reference=reference, level=cfg.level)
    # How the policy did is a matter of everything it was asked, not of the groups kept for the step.
    return {**record, "reward": drawn.rewards.mean().item(),
            "flat_groups": int(flat_groups(drawn.rewards).sum()), "groups": len(batch.problems)}


def _dpo_update(policy: Transformer, reference: Transformer, optimizer: torch.optim.Optimizer, chat: ChatFormat,
                task: Task, stream: ProblemStream, cfg: StageConfig, step: int,
                reward: Callable[[str, Problem], float] | None) -> dict[str, float]:
    """One DPO step on pairs of the policy's own replies to the next problems (more are drawn while
    none has a right and a wrong reply); the loss, the reward accuracy and margin, and the pairs' count."""
    pairs: list[Pair] = []
    tried = 0
    for draw in range(DPO_DRAWS):
        problems = stream.take(cfg.problems_per_step)
        found, _ = preference_pairs(policy, chat.tokenizer, task, problems, cfg.group, cfg.max_new_tokens,
                                    temperature=cfg.temperature, seed=_seed(cfg, step, draw), format_prompt=chat.prompt,
                                    stop=(EOT,), reward=reward)
        pairs, tried = pairs + found, tried + len(problems)
        if pairs:
            break
    if not pairs:
        raise ValueError(f"step {step + 1}: none of {tried} problems got one better and one worse reply among "
                         f"{cfg.group}: the model is always right or always wrong on {task}; choose a task "
                         "it half knows, or raise --group or --temperature")
    # A reply ends its turn with <|eot_id|>, as the chat format writes it: the pair teaches the ending too.
    pairs = [Pair(p.prompt, p.chosen + EOT, p.rejected + EOT) for p in pairs]
    _check_fit(chat, pairs, policy.config.max_seq_len, cfg.max_new_tokens, step)
    batch = pair_batch(chat.tokenizer, pairs, policy.config.max_seq_len, chat.prompt)
    result = dpo_step(policy, reference, batch, optimizer, cfg.beta)
    return {"loss": result.loss.item(), "accuracy": result.accuracy, "margin": result.margin,
            "pairs": len(pairs), "paired": len(pairs) / tried}
# --8<-- [end:loop]


def _check_fit(chat: ChatFormat, pairs: list[Pair], max_seq_len: int, max_new_tokens: int, step: int) -> None:
    """Refuse, naming the flag, pairs whose prompt and reply text outgrow the context.

    A pair is text, encoded again: its reply can take more tokens than were sampled, one for the
    ``<|eot_id|>`` that ends it and more for bytes that are not UTF-8 (an undertrained byte-level
    model writes them), which decode to U+FFFD and come back as its three bytes.
    """
    longest = max(len(chat.prompt(p.prompt)) + len(chat.tokenizer.encode(reply))
                  for p in pairs for reply in (p.chosen, p.rejected))
    if longest > max_seq_len:
        raise ValueError(f"step {step + 1}: a pair's prompt and reply take {longest} tokens, more than the model's "
                         f"max_seq_len={max_seq_len}: a reply sampled in at most --max-new-tokens {max_new_tokens} "
                         "took more as text (its <|eot_id|>, and any bytes that are not UTF-8, three each); lower "
                         "--max-new-tokens")


if __name__ == "__main__":  # the stage has no flags of its own: they belong to the command line
    raise SystemExit("llama.posttraining.stage is a library module; run `llama dpo ...` or `llama rl ...`")

