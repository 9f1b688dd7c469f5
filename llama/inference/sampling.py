r"""Sampling rules: how one row of logits becomes one token id.

Greedy decoding takes the arg-max. Sampling draws from the softmax instead, usually after
reshaping it: temperature (:func:`apply_temperature`), then top-k, top-p and min-p
(:func:`top_k_filter`, :func:`top_p_filter`, :func:`min_p_filter`). :class:`Sampling` holds one
choice of these settings, checked once when it is made, with the stop ids and the seed that
the decode loops of :mod:`llama.inference.generation` also need.

>>> import torch
>>> logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
>>> Sampling().next_ids(logits)                        # greedy: the arg-max
tensor([0])
>>> settings = Sampling(temperature=1.0, top_k=2, seed=0)
>>> settings.next_ids(logits, settings.generator(logits.device)).item() in (0, 1)
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["Sampling", "apply_temperature", "top_k_filter", "top_p_filter", "min_p_filter", "argmax", "sample_next"]


# --8<-- [start:settings]
#: The smallest positive temperature :class:`Sampling` takes: logits of 1e30 divided by it stay finite
#: in float32, and below it sampling is greedy decoding anyway.
MIN_TEMPERATURE = 1e-4


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)  # True is an int, not a setting


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class Sampling:
    """How to choose each next token, checked once here so the decode loops never check again.

    Args:
        temperature: 0 for greedy decoding (the arg-max, no randomness), else the divisor of the
            logits (:func:`apply_temperature`).
        top_k: keep only this many candidates (``None``: all).
        top_p: keep the nucleus of this probability mass, in (0, 1] (``None``: all).
        min_p: keep candidates at least this fraction as likely as the best, in [0, 1]
            (``None``: all).
        stop_ids: ids that end generation (any iterable of ints; stored as a ``frozenset``).
        seed: seed of a private random generator, so the same seed gives the same tokens
            (``None``: draw from PyTorch's global random state).

    Raises:
        ValueError: a setting out of range or of the wrong type; the message names it and the fix.

    Greedy decoding ignores the filters, but they are checked all the same: a typo should not
    wait for the day someone turns sampling on.

    >>> Sampling(temperature=0.8, top_p=0.9, stop_ids=[2], seed=0)
    Sampling(temperature=0.8, top_k=None, top_p=0.9, min_p=None, stop_ids=frozenset({2}), seed=0)
    >>> Sampling(top_p=1.5)
    Traceback (most recent call last):
    ValueError: top_p must be in (0, 1], got 1.5; use None to disable it
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    stop_ids: frozenset[int] = frozenset()
    seed: int | None = None

    def __post_init__(self) -> None:
        t, k, p, m = self.temperature, self.top_k, self.top_p, self.min_p
        # Range tests are written `not lo <= x <= hi` so that NaN, which fails every comparison, fails them.
        if not _is_real(t) or not 0 <= t < math.inf:
            raise ValueError(f"temperature must be >= 0 and finite, got {t!r}; use 0 for greedy decoding, "
                             "a positive value to sample")
        # Logits divided by 1e-45 overflow to infinity and softmax makes NaN of them (a traceback from
        # torch.multinomial); long before that, sampling is greedy decoding in all but name.
        if 0 < t < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {t!r}: dividing the "
                             "logits by less overflows them, and so small a temperature is greedy decoding; use 0")
        if k is not None and (not _is_int(k) or k <= 0):
            raise ValueError(f"top_k must be a positive integer, got {k!r}; use None to disable it")
        if p is not None and (not _is_real(p) or not 0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}; use None to disable it")
        if m is not None and (not _is_real(m) or not 0 <= m <= 1):
            raise ValueError(f"min_p must be in [0, 1], got {m!r}; use None to disable it")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.stop_ids, Iterable) or isinstance(self.stop_ids, (str, bytes)):
            raise ValueError(f"stop_ids must be a collection of token ids, got {self.stop_ids!r}; "
                             f"for a single id write stop_ids={{{self.stop_ids!r}}}")
        stop = frozenset(self.stop_ids)
        if not all(_is_int(i) for i in stop):
            raise ValueError(f"stop_ids must be integer token ids, got {sorted(stop, key=repr)!r}")
        object.__setattr__(self, "stop_ids", stop)  # frozen: the one sanctioned way to normalise a field

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """A fresh random stream on ``device`` seeded with ``seed`` (``None`` without a seed).

        Each decode loop makes its own, so the same settings give the same tokens on every call,
        and PyTorch's global random state is left alone.
        """
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)

    def next_ids(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The next token of each row of ``logits`` (``[b, vocab]`` → ``[b]``); see :func:`sample_next`."""
        return sample_next(logits, self, generator)
# --8<-- [end:settings]


# --8<-- [start:temperature]
def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Divide the logits by $T$: $p_i \propto \exp(z_i / T)$.

    $T < 1$ sharpens the distribution towards the most likely token, $T > 1$ flattens it.
    $T = 0$ is the limit "always the most likely token" and is handled as greedy decoding by
    :func:`sample_next`, never by dividing by zero here.

    Like the filters below, this is only the arithmetic: the range of ``temperature`` (> 0 here)
    is checked once, by :class:`Sampling`, not again at every token.

    >>> apply_temperature(torch.tensor([2.0, 0.0]), 0.5)
    tensor([4., 0.])
    """
    return logits / temperature
# --8<-- [end:temperature]


# --8<-- [start:top_k]
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row; the others become ``-inf`` (probability 0).

    Ties with the k-th largest value are all kept, so a row may keep more than ``k``
    (``k >= 1``; a ``k`` larger than the vocabulary keeps everything).

    >>> top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    tensor([-inf, 3., 2., -inf])
    """
    k = min(k, logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))
# --8<-- [end:top_k]


# --8<-- [start:top_p]
def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    r"""Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches ``p``.

    Sort the probabilities in decreasing order, $p_{(1)} \ge p_{(2)} \ge \dots$, and keep token
    $(j)$ when the mass *before* it, $\sum_{i<j} p_{(i)}$, is still below ``p``. The most likely
    token is therefore always kept, and the kept mass is the first partial sum $\ge p$
    (``p`` in (0, 1]).

    >>> top_p_filter(torch.tensor([0.5, 0.3, 0.2]).log(), 0.7).exp()   # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    tensor([0.5000, 0.3000, 0.0000])
    """
    # stable: equal logits keep their vocabulary order, so ties are cut the same way on every run
    # and the first of the most likely tokens (argmax's choice) is always in the nucleus.
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= p
    # Scatter the decision back from sorted order to vocabulary order.
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
# --8<-- [end:top_p]


# --8<-- [start:min_p]
def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    r"""Keep tokens at least ``min_p`` times as likely as the most likely one: $p_i \ge \mathrm{min\_p}\cdot p_{\max}$.

    Unlike top-p the cut moves with the model's confidence: a peaked distribution keeps few
    tokens, a flat one keeps many. In logits the test is $z_i \ge z_{\max} + \ln \mathrm{min\_p}$,
    so no softmax is needed (``min_p`` in [0, 1]).

    >>> min_p_filter(torch.tensor([0.5, 0.3, 0.2]).log(), 0.5).exp()   # keep p >= 0.25
    tensor([0.5000, 0.3000, 0.0000])
    """
    if min_p == 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(min_p))
    return logits.masked_fill(logits < threshold, float("-inf"))
# --8<-- [end:min_p]


# --8<-- [start:sample_next]
def argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)``: the first of each row's largest values (NaN counts as the largest).

    On the CPU, in float32, NumPy's arg-max computes it: ATen's compares one value at a time,
    NumPy's a whole register of values, which over a vocabulary of 32,000 saves a greedy decode
    step tens of microseconds, at every token.

    >>> argmax(torch.tensor([[0.0, 2.0, 2.0], [5.0, float("nan"), 1.0]]))
    tensor([1, 1])
    """
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(logits.detach().numpy().argmax(-1))
    return logits.argmax(dim=-1)


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token of each row of ``logits`` (``[b, vocab]`` → ``[b]`` ids).

    ``temperature == 0`` is greedy decoding: the arg-max, no randomness. Otherwise the
    filters run in the order temperature → top-k → top-p → min-p, and a token is drawn from
    the softmax of what is left. None of the filters ever removes the most likely token, so
    every row keeps at least one candidate.

    Args:
        logits: ``[b, vocab]`` scores for the next position.
        sampling: the settings (already checked when the :class:`Sampling` was made).
        generator: the random stream to draw from (:meth:`Sampling.generator`), or ``None``
            for PyTorch's global one.

    Returns:
        ``[b]`` token ids (``long``).

    Raises:
        ValueError: a row of ``logits`` has a NaN or ``+inf``, or is all ``-inf`` (``-inf`` alone,
            a banned token, is fine). Greedy decoding would otherwise pick the NaN silently, and
            sampling would fail inside ``torch.multinomial``.

    >>> sample_next(torch.tensor([[0.0, 9.0, 1.0]]), Sampling(temperature=0.5, top_k=1))
    tensor([1])
    """
    if sampling.temperature == 0:
        ids = argmax(logits)
        # The chosen logits carry every problem: NaN and +inf win the arg-max, and a row with no
        # finite logit chooses -inf. Reading them is a host sync on a GPU; the decode loops sync at
        # each token anyway (``int(next_id)``).
        _refuse_non_finite(logits, logits.gather(-1, ids[:, None].to(logits.device)))
        return ids
    # The row maxima carry the same problems (max propagates NaN), in one small reduction.
    _refuse_non_finite(logits, logits.amax(dim=-1))
    logits = apply_temperature(logits.float(), sampling.temperature)
    if sampling.top_k is not None:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p is not None:
        logits = top_p_filter(logits, sampling.top_p)
    if sampling.min_p is not None:
        logits = min_p_filter(logits, sampling.min_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _refuse_non_finite(logits: torch.Tensor, best: torch.Tensor) -> None:
    """Raise the error of :func:`sample_next` unless every value of ``best`` (each row's best logit) is finite."""
    if not torch.isfinite(best).all():
        kind = "NaN" if logits.isnan().any() else "infinite"
        overflow = "" if logits.dtype == torch.float32 else f", or overflow in {logits.dtype} (load it in float32)"
        raise ValueError(f"the model produced {kind} logits: its weights may be non-finite{overflow}; "
                         "check the checkpoint (torch.isfinite on each weight)")
# --8<-- [end:sample_next]
