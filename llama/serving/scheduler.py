r"""Continuous batching: waiting requests admitted into free slots between decode steps, every busy slot decoded in one forward.

Decoding one token is memory-bound: the time goes into reading every weight once, and a batch of
sixteen rows reads them once too. *Static* batching (:func:`~llama.inference.generation.generate_batch`)
starts a batch together and holds every row until the longest is done, so a short request waits
for a long one and a new one waits for the whole batch. *Continuous* batching schedules at the
granularity of one step, with the slot table of :mod:`llama.serving.slots`:

1. **free**: requests cancelled since the last step (a client that went away) give back their slots;
2. **admit**: while a slot is free and a request waits, take it, run its prompt into the slot
   (prefill), and choose its first token;
3. **decode**: one batched forward feeds every busy slot its last token; each chooses its next one,
   and a request that is done (a stop id, or ``max_tokens``) frees its slot at once.

:class:`Scheduler` is that loop, one :meth:`~Scheduler.step` at a time, on the caller's thread;
:class:`Engine` runs it on a thread of its own and sleeps when there is nothing to do. Tokens
leave through each request's ``emit`` callback, called on the engine's thread.

>>> import torch
>>> from llama.model.config import ModelConfig
>>> from llama.model.transformer import Transformer
>>> from llama.inference.generation import generate
>>> _ = torch.manual_seed(0)
>>> model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=64, max_seq_len=32)).eval()
>>> scheduler = Scheduler(model, slots=2, max_waiting=4)
>>> events = {k: [] for k in range(3)}
>>> for k, prompt in enumerate([[1, 5], [1, 7, 7], [2]]):
...     scheduler.submit(Request(prompt, 4, emit=lambda kind, value, k=k: events[k].append((kind, value))))
>>> while scheduler.step():
...     pass
>>> [e[-1] for e in events.values()]
[('done', 'length'), ('done', 'length'), ('done', 'length')]
>>> [value for kind, value in events[1] if kind == "token"] == generate(model, [1, 7, 7], 4)
True
>>> scheduler.stats()["max_batch"]   # two slots: the third request waited for a free one
2
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Self

import torch

from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.serving.slots import SlotTable

__all__ = ["Request", "QueueFull", "ShuttingDown", "Scheduler", "Engine"]


# --8<-- [start:request]
class Request:
    """One generation, as the scheduler sees it: prompt ids in, ids out through ``emit``.

    ``emit(kind, value)`` is called on the scheduler's thread with, in order:
    ``("token", id)`` for each new id (a stop id is not emitted), then exactly one of
    ``("done", "stop")`` (a stop id came), ``("done", "length")`` (``max_tokens`` ids came) or
    ``("error", message)``. A cancelled request gets nothing more after its cancellation is seen.

    Args:
        prompt: the prompt's ids (not empty; the scheduler's ``max_seq_len`` must hold it and
            ``max_tokens`` more).
        max_tokens: the most new ids.
        sampling: how each id is chosen, and the ids that stop it (default greedy, no stop id).
        emit: the callback (default: ignore everything).
    """

    def __init__(self, prompt: Sequence[int], max_tokens: int, sampling: Sampling = Sampling(),
                 emit: Callable[[str, object], None] | None = None) -> None:
        self.prompt, self.max_tokens, self.sampling = list(prompt), max_tokens, sampling
        self.emit = emit or (lambda kind, value: None)
        self.cancelled = False
        self.produced = 0  # ids chosen so far, a stop id included
        self.pending: int | None = None  # the id chosen last, to feed at the next decode step
        self.generator = None  # made at admission, on the model's device

    def cancel(self) -> None:
        """Ask the scheduler to drop this request: its slot is freed before the next step.

        Safe from any thread: it only sets a flag that the scheduler reads between steps.
        """
        self.cancelled = True
# --8<-- [end:request]


class QueueFull(RuntimeError):
    """The waiting queue is full: the client should try again later (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The scheduler takes no new request: it finishes those it has, then stops (HTTP 503)."""


class Scheduler:
    """The slot table, a bounded queue of waiting requests, and the step that advances them all.

    Args:
        model: the model, in ``eval()`` mode.
        slots: requests decoded together (rows of the KV cache).
        max_waiting: requests that may wait for a slot beyond those the free slots will take; one
            more is refused (:class:`QueueFull`), so a burst of clients gets a clear "try later"
            instead of an ever longer wait.
        max_seq_len: positions per slot (default: the model's).

    Raises:
        ValueError: ``slots`` < 1, ``max_waiting`` < 0, or ``max_seq_len`` beyond the model's.
    """

    def __init__(self, model: Transformer, slots: int, max_waiting: int, max_seq_len: int | None = None) -> None:
        if not isinstance(max_waiting, int) or max_waiting < 0:
            raise ValueError(f"max_waiting must be 0 or more, got {max_waiting!r}")
        self.table = SlotTable(model, slots, max_seq_len)
        self.max_waiting = max_waiting
        self.waiting: deque[Request] = deque()
        self.active: dict[int, Request] = {}  # slot -> request; touched by step() only
        self.closed = False
        self._lock = threading.Lock()  # submit() may run on another thread than step()
        self.counts = {"steps": 0, "prefills": 0, "tokens": 0, "finished": 0, "cancelled": 0, "failed": 0,
                       "rejected": 0, "max_batch": 0}
        self.batch_sizes: dict[int, int] = {}  # busy slots in a decode step -> how many such steps

    # --8<-- [start:submit]
    def submit(self, request: Request) -> None:
        """Queue ``request``; it gets a slot at a coming step, first come first served.

        Raises:
            ShuttingDown: after :meth:`close`.
            QueueFull: ``max_waiting`` requests wait already.
        """
        with self._lock:
            if self.closed:
                raise ShuttingDown("the server is shutting down: it finishes the requests it has and takes no new one")
            # Requests that the next step will admit into free slots do not count as waiting.
            if len(self.waiting) >= self.max_waiting + len(self.table.free_slots()):
                self.counts["rejected"] += 1
                raise QueueFull(f"the server is busy: {len(self.waiting)} request(s) wait for its {self.table.slots} "
                                "slot(s), as many as it queues; try again shortly")
            self.waiting.append(request)
    # --8<-- [end:submit]

    def close(self) -> None:
        """Take no new request (:meth:`submit` raises :class:`ShuttingDown`); the others go on."""
        with self._lock:
            self.closed = True

    def has_work(self) -> bool:
        """Whether a step would do anything: a request waits or decodes."""
        return bool(self.waiting or self.active)

    def stats(self) -> dict:
        """Counters since the start: ``steps`` (decode steps), ``prefills``, ``tokens`` (ids chosen),
        ``finished``, ``cancelled``, ``failed``, ``rejected`` (queue full), ``max_batch`` (most busy
        slots in one decode step), ``batch_sizes`` ({busy slots: steps}); and now: ``active``,
        ``waiting``, ``slots``."""
        return {**self.counts, "batch_sizes": dict(sorted(self.batch_sizes.items())), "active": len(self.active),
                "waiting": len(self.waiting), "slots": self.table.slots}

    # --8<-- [start:step]
    def step(self) -> bool:
        """Free, admit, decode: one round of continuous batching. Returns whether there was work."""
        self._free_cancelled()
        self._admit()
        if self.active:
            self._decode()
        return self.has_work()
    # --8<-- [end:step]

    # --8<-- [start:free]
    def _free_cancelled(self) -> None:
        with self._lock:
            kept = [r for r in self.waiting if not r.cancelled]
            self.counts["cancelled"] += len(self.waiting) - len(kept)
            self.waiting = deque(kept)
        for slot, request in list(self.active.items()):
            if request.cancelled:
                self._release(slot)
                self.counts["cancelled"] += 1
    # --8<-- [end:free]

    def _release(self, slot: int, failed: bool = False) -> None:
        del self.active[slot]
        self.table.release(slot, failed)

    # --8<-- [start:admit]
    def _admit(self) -> None:
        """Fill free slots with waiting requests, each prefilled alone into its own row.

        A prefill computes the whole prompt, so a long one delays this step's decode for every
        other request (chunked prefill, a few hundred positions per step, is the usual cure).
        """
        while True:
            with self._lock:
                if not self.waiting or not self.table.free_slots():
                    return
                request = self.waiting.popleft()
            slot = self.table.take()
            self.active[slot] = request
            request.generator = request.sampling.generator(self.table.device)
            try:
                logits = self.table.prefill(slot, request.prompt)
            except Exception as err:  # a request's failure must not stop the others
                self._fail(slot, err)
                continue
            self.counts["prefills"] += 1
            self._advance(slot, request, logits)
    # --8<-- [end:admit]

    # --8<-- [start:decode]
    def _decode(self) -> None:
        """One batched forward for every busy slot, then each request's next id."""
        batch = {slot: request.pending for slot, request in self.active.items()}
        try:
            logits = self.table.decode(batch)
        except Exception as err:  # fail these requests, keep serving
            for slot in list(self.active):
                self._fail(slot, err)
            return
        self.counts["steps"] += 1
        self.counts["max_batch"] = max(self.counts["max_batch"], len(batch))
        self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
        for slot, request in list(self.active.items()):
            self._advance(slot, request, logits[slot])
    # --8<-- [end:decode]

    # --8<-- [start:advance]
    def _advance(self, slot: int, request: Request, logits: torch.Tensor) -> None:
        """Choose ``request``'s next id from its ``[vocab]`` logits; emit it, or finish the request."""
        try:
            token = int(request.sampling.next_ids(logits.unsqueeze(0), request.generator))
        except ValueError as err:  # non-finite logits: this request's, the others may be fine
            self._fail(slot, err)
            return
        request.produced += 1
        self.counts["tokens"] += 1
        if token in request.sampling.stop_ids:
            self._finish(slot, request, "stop")
            return
        request.pending = token
        request.emit("token", token)
        if request.produced >= request.max_tokens:
            self._finish(slot, request, "length")

    def _finish(self, slot: int, request: Request, reason: str) -> None:
        self._release(slot)  # free now: the next step may admit a waiting request into it
        self.counts["finished"] += 1
        request.emit("done", reason)

    def _fail(self, slot: int, err: Exception) -> None:
        request = self.active[slot]
        self._release(slot, failed=True)  # zeroed: the request may have left NaN in its row
        self.counts["failed"] += 1
        request.emit("error", str(err) or type(err).__name__)
    # --8<-- [end:advance]


# --8<-- [start:engine]
class Engine:
    """A :class:`Scheduler` stepping on a thread of its own: the one place the model runs.

    Other threads (an asyncio server's) only queue requests, cancel them and read counters; the
    engine wakes when there is something to do and sleeps when there is not.

    Args:
        scheduler: the scheduler to run.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)

    def start(self) -> Self:
        """Start the engine's thread; returns the engine."""
        self._thread.start()
        return self

    def submit(self, request: Request) -> None:
        """Queue ``request`` (see :meth:`Scheduler.submit`, whose errors it raises) and wake the engine."""
        self.scheduler.submit(request)
        with self._wake:
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """Cancel ``request`` and wake the engine, so an idle engine frees its slot too."""
        request.cancel()
        with self._wake:
            self._wake.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, let the engine finish those it has, and wait for its thread to end."""
        self.scheduler.close()
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self.scheduler.has_work() and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self.scheduler.has_work():
                    return
            self.scheduler.step()
# --8<-- [end:engine]
