r"""Supervised fine-tuning: a task's problems as chat conversations, trained on with the loss of the assistant's tokens only.

A problem of :mod:`llama.posttraining.tasks` becomes a conversation (:func:`conversation`): the
prompt is the user's turn and the answer, in the task's answer format, the assistant's. The chat
format (:mod:`llama.posttraining.chat`) writes it as ids with a mask that is ``True`` on the
assistant's reply and its ``<|eot_id|>``; :class:`SFTSampler` packs an endless stream of them into
windows, and a target whose token is not to be learned becomes :data:`IGNORE` (``-100``, the value
``torch.nn.functional.cross_entropy`` skips with ``ignore_index``). :func:`masked_cross_entropy` is
then the mean loss over the targets that remain:

$$\mathcal{L} = \frac{1}{\sum_t m_t} \sum_t m_t \left(\log \sum_j e^{z_{t,j}} - z_{t,y_t}\right)$$

Nothing else of training changes. :class:`SFTData` is what :func:`llama.training.loop.train` is
given (its ``source``) to run on these windows: the chat tokens added to the base's tokenizer, the
model's rows for them, the sampler and the loss; the loop, its log, its checkpoints and exact
resume are the ones of ``llama train``.

>>> import math
>>> logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])       # [1, 2, 3]: two positions
>>> targets = torch.tensor([[IGNORE, 1]])                             # only the second counts
>>> round(masked_cross_entropy(logits, targets).item(), 4), round(math.log(math.exp(3) + 2) - 3, 4)
(0.0949, 0.0949)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llama.inference.generation import generate_batch
from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.posttraining.chat import CHAT_TOKENS, ChatFormat
from llama.posttraining.special_tokens import add_special_tokens, resize_vocab, save_tokenizer
from llama.posttraining.tasks import Problem, Task, make_task, solution
from llama.training.loss import cross_entropy

__all__ = ["IGNORE", "conversation", "parse_task", "masked_targets", "masked_cross_entropy", "pack_stream",
           "SFTSampler", "SFTData", "chat_replies"]

#: The target of a token the model is not trained to predict: what ``F.cross_entropy`` ignores by default.
IGNORE = -100


# --8<-- [start:conversation]
def conversation(problem: Problem, system: str | None = None) -> list[dict[str, str]]:
    """A problem as a chat: its prompt from the user, ``Answer: <answer>`` from the assistant (after
    the problem's work, if it shows any: :func:`~llama.posttraining.tasks.solution`).

    Args:
        problem: a task's problem (:meth:`~llama.posttraining.tasks.Task.train`).
        system: an optional system message, the first turn.

    Returns:
        The messages, ``[{"role": ..., "content": ...}, ...]``.

    >>> conversation(Problem("What is 2 + 3?", "5"))
    [{'role': 'user', 'content': 'What is 2 + 3?'}, {'role': 'assistant', 'content': 'Answer: 5'}]
    """
    turns = [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": solution(problem)}]
    return ([{"role": "system", "content": system}] if system else []) + turns
# --8<-- [end:conversation]


def parse_task(spec: str) -> Task:
    """The task a run's ``sft`` setting names: ``NAME`` or ``NAME:KNOB=VALUE[,KNOB=VALUE]``
    (``addition:digits=2``, ``addition:digits=3,work=30``).

    Raises:
        ValueError: not of that form, or a task or difficulty :func:`~llama.posttraining.tasks.make_task` refuses.
    """
    name, _, knobs = spec.partition(":")
    settings = {}
    for knob in knobs.split(",") if knobs else ():
        key, eq, value = knob.partition("=")
        if not eq or not value.strip().isdigit():
            raise ValueError(f"--task-args {knob!r} is not KNOB=NUMBER (e.g. digits=2, or digits=3,work=30)")
        settings[key.strip()] = int(value)
    return make_task(name.strip(), **settings)


# --8<-- [start:loss]
def masked_targets(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of packed windows: the targets are the ids shifted by one, :data:`IGNORE`
    where the mask says the token is not learned (the prompt, the headers, padding).

    Args:
        ids: ``[n, L + 1]`` token ids (:func:`llama.posttraining.chat.pack`'s, or :func:`pack_stream`'s).
        mask: ``[n, L + 1]`` bool, ``True`` on the tokens to learn.

    Returns:
        ``(inputs, targets)``, both ``[n, L]`` int64.
    """
    return ids[:, :-1], ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's cross-entropy (:func:`llama.training.loss.cross_entropy`) averaged over the targets
    that are not :data:`IGNORE`: what ``F.cross_entropy(..., ignore_index=-100)`` computes.

    Args:
        logits: ``[b, s, vocab]`` scores.
        targets: ``[b, s]`` ids, :data:`IGNORE` where no loss is taken.

    Returns:
        A float32 scalar: nats per learned token.

    Raises:
        ValueError: every target is ignored (a batch with nothing to learn has no mean).
    """
    keep = targets != IGNORE
    if not bool(keep.any()):
        raise ValueError("every target of the batch is ignored: the windows hold no assistant tokens to learn")
    return cross_entropy(logits[keep][None], targets[keep][None])  # [1, n, vocab] against [1, n]
# --8<-- [end:loss]


# --8<-- [start:pack_stream]
def pack_stream(encoded: Sequence[tuple[list[int], list[bool]]], seq_len: int,
                pad_id: int = 0) -> tuple[list[tuple[list[int], list[bool]]], list[int]]:
    """Conversations laid whole into windows in order, a new window when the next one does not fit
    (next fit: a stream has no end, so a window is never gone back to, unlike
    :func:`llama.posttraining.chat.pack`'s first fit).

    Args:
        encoded: ``(ids, mask)`` pairs from :meth:`~llama.posttraining.chat.ChatFormat.encode`.
        seq_len: the window length.
        pad_id: the id after a window's last conversation, masked out.

    Returns:
        ``(windows, counts)``: the windows that are complete (the next conversation did not fit
        in them; the last, still open, is left for more conversations), each ``(ids, mask)`` of
        ``seq_len``, and how many conversations each holds.

    Raises:
        ValueError: a conversation longer than ``seq_len``.

    >>> pack_stream([([1, 2], [False, True]), ([3, 4, 5], [False, True, True]), ([6], [True])], 4)
    ([([1, 2, 0, 0], [False, True, False, False])], [1])
    """
    windows, counts, ids, mask, n = [], [], [], [], 0
    for k, (i, m) in enumerate(encoded):
        if len(i) > seq_len:
            raise ValueError(f"conversation {k} is {len(i)} tokens, longer than a window of {seq_len}: "
                             "raise --block-size, or shorten the task's problems")
        if len(ids) + len(i) > seq_len:  # the window is complete: pad it
            windows.append((ids + [pad_id] * (seq_len - len(ids)), mask + [False] * (seq_len - len(mask))))
            counts.append(n)
            ids, mask, n = [], [], 0
        ids, mask, n = ids + list(i), mask + list(m), n + 1
    return windows, counts
# --8<-- [end:pack_stream]


# --8<-- [start:sampler]
class SFTSampler:
    """Windows of ``block_size + 1`` ids packed from an endless stream of a task's conversations.

    The stream is the task's training problems from ``seed`` (never a held-out one), each as
    :func:`conversation` writes it, encoded with the chat format and laid in order by
    :func:`pack_stream`. Like :class:`llama.data.pipeline.WindowSampler`, every rank makes the
    same global batch of ``batch_size * world_size`` windows and keeps its own, and the sampler's
    whole position is one number, the conversations used: :meth:`state` and :meth:`set_state` save
    and restore it, which the training checkpoint does as it does the window sampler's generator.

    Args:
        chat: the chat format over the run's tokenizer.
        task: the task whose problems are trained on.
        block_size: tokens the model sees; windows hold one more, the last target.
        batch_size: windows per rank.
        seed: seeds the task's stream of problems.
        rank: this process's index among ``world_size``.
        world_size: the processes training together.
        system: an optional system message for every conversation.
    """

    def __init__(self, chat: ChatFormat, task: Task, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, system: str | None = None) -> None:
        self.chat, self.task, self.system, self.seed = chat, task, system, seed
        self.block_size, self.batch_size, self.rank, self.world_size = block_size, batch_size, rank, world_size
        self.set_state(torch.zeros(1, dtype=torch.int64))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[batch_size, block_size]`` and targets (:data:`IGNORE` where not learned), int64."""
        wanted = self.batch_size * self.world_size
        while True:
            windows, counts = pack_stream(self.pending, self.block_size + 1)
            if len(windows) >= wanted:
                break
            more = max(wanted, len(self.pending))  # doubles: a few rounds whatever a window holds
            self.pending += [self.chat.encode(conversation(p, self.system)) for p in itertools.islice(self.problems, more)]
        taken = sum(counts[:wanted])
        self.pending, self.used = self.pending[taken:], self.used + taken
        mine = windows[self.rank * self.batch_size: (self.rank + 1) * self.batch_size]
        ids = torch.tensor([w[0] for w in mine], dtype=torch.long)
        mask = torch.tensor([w[1] for w in mine], dtype=torch.bool)
        return masked_targets(ids, mask)

    def state(self) -> torch.Tensor:
        """``int64[1]``: how many conversations of the stream the windows so far used."""
        return torch.tensor([self.used], dtype=torch.int64)

    def set_state(self, state: torch.Tensor) -> None:
        """Go to the position :meth:`state` gave: the stream from ``seed`` again, its first ``state`` problems skipped."""
        self.used = int(state[0])
        self.problems = itertools.islice(self.task.train(self.seed), self.used, None)  # its first `used` skipped
        self.pending: list[tuple[list[int], list[bool]]] = []
# --8<-- [end:sampler]


# --8<-- [start:source]
class SFTData:
    """What :func:`llama.training.loop.train` is given as its ``source`` to fine-tune on a task's
    conversations (the run's settings name the task: ``TrainConfig.sft``, ``TrainConfig.sft_system``).

    The loop asks it for the run's tokenizer, the model's new rows, the training windows and the
    loss; everything else (the schedule, the log, evaluation of the validation text, checkpoints,
    exact resume, LoRA) is the loop's own.
    """

    loss = staticmethod(masked_cross_entropy)

    def tokenizer(self, tokenizer: Any, path: Path | None = None) -> Any:
        """The base's tokenizer with the :data:`~llama.posttraining.chat.CHAT_TOKENS` (a no-op if it has them),
        written over ``path`` (the run folder's copy) when that adds any."""
        chat = add_special_tokens(tokenizer, CHAT_TOKENS)
        if path is not None and chat.vocab_size != tokenizer.vocab_size:
            save_tokenizer(chat, path)
        return chat

    def model(self, model: Transformer, vocab_size: int) -> Transformer:
        """The base model with rows up to ``vocab_size`` (:func:`~llama.posttraining.special_tokens.resize_vocab`).

        The embedding and output layers are new modules, trainable even when LoRA froze the rest:
        the new tokens' rows start as the mean row, and the model must learn to emit ``<|eot_id|>``.
        """
        return resize_vocab(model, vocab_size)

    def sampler(self, cfg: Any, tokenizer: Any, rank: int, world_size: int) -> SFTSampler:
        """The run's :class:`SFTSampler`, from its settings (``sft``, ``sft_system``, ``block_size``, ``batch_size``, ``seed``).

        Raises:
            ValueError: the settings name no task (``--resume`` of a run that is not supervised fine-tuning).
        """
        if cfg.sft is None:
            raise ValueError(f"the run in {cfg.out} is not a supervised fine-tuning run (its run.json names no task): "
                             "resume it with the command that started it")
        return SFTSampler(ChatFormat(tokenizer), parse_task(cfg.sft), cfg.block_size, cfg.batch_size, cfg.seed,
                          rank, world_size, cfg.sft_system)
# --8<-- [end:source]


def chat_replies(model: Transformer, chat: ChatFormat, prompts: Sequence[str], max_new_tokens: int = 32,
                 system: str | None = None, batch_size: int = 32) -> list[tuple[str, bool]]:
    """Greedy replies to ``prompts`` asked as user turns, and whether each ended with ``<|eot_id|>``.

    Args:
        model: the model.
        chat: the chat format over its tokenizer.
        prompts: one user message each.
        max_new_tokens: the longest reply; a reply that reaches it without ``<|eot_id|>`` did not end.
        system: an optional system message before each.
        batch_size: prompts generated together.

    Returns:
        ``(reply text, ended)`` per prompt.
    """
    out = []
    for start in range(0, len(prompts), batch_size):
        encoded = [chat.encode(([{"role": "system", "content": system}] if system else [])
                               + [{"role": "user", "content": p}], add_generation_prompt=True)[0]
                   for p in prompts[start:start + batch_size]]
        for ids in generate_batch(model, encoded, max_new_tokens, Sampling(stop_ids={chat.eot_id})):
            out.append((chat.tokenizer.decode(ids), len(ids) < max_new_tokens))
    return out
