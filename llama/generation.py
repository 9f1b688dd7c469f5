r"""Autoregressive generation: a KV-cached decode loop, sampling rules, streaming and batching.

A language model gives a distribution over the next token; generating text is running it in
a loop, appending one chosen token at a time. This module has three layers:

* **sampling** (:func:`sample_next`): turn one row of logits into one token id, greedily or by
  sampling after temperature, top-k, top-p and min-p;
* **decoding** (:func:`generate_stream`, :func:`generate`): feed the prompt once (*prefill*),
  then one token per step through the model's KV cache (*decode*);
* **batching** (:func:`generate_batch`): several prompts of different lengths at once, left
  padded, with an attention mask so padding is never seen.

>>> import torch
>>> from llama import ModelConfig, Transformer
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=64, max_seq_len=64))
>>> ids = generate(model, [1, 5, 7], max_new_tokens=4)
>>> len(ids), all(0 <= i < 64 for i in ids)
(4, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from llama.model import Transformer

__all__ = [
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
    "sample_next",
    "generate_stream",
    "generate",
    "generate_batch",
    "prepare_for_decoding",
    "CompiledDecoder",
]


# --8<-- [start:temperature]
def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Divide the logits by $T$: $p_i \propto \exp(z_i / T)$.

    $T < 1$ sharpens the distribution towards the most likely token, $T > 1$ flattens it.
    $T = 0$ is the limit "always the most likely token" and is handled as greedy decoding by
    :func:`sample_next`, never by dividing by zero here.

    >>> apply_temperature(torch.tensor([2.0, 0.0]), 0.5)
    tensor([4., 0.])
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive here, got {temperature}; use sample_next for greedy (0)")
    return logits / temperature
# --8<-- [end:temperature]


# --8<-- [start:top_k]
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row; the others become ``-inf`` (probability 0).

    Ties with the k-th largest value are all kept, so a row may keep more than ``k``.

    >>> top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    tensor([-inf, 3., 2., -inf])
    """
    if k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {k}; use None to disable it")
    k = min(k, logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))
# --8<-- [end:top_k]


# --8<-- [start:top_p]
def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    r"""Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches ``p``.

    Sort the probabilities in decreasing order, $p_{(1)} \ge p_{(2)} \ge \dots$, and keep token
    $(j)$ when the mass *before* it, $\sum_{i<j} p_{(i)}$, is still below ``p``. The most likely
    token is therefore always kept, and the kept mass is the first partial sum $\ge p$.

    >>> top_p_filter(torch.tensor([0.5, 0.3, 0.2]).log(), 0.7).exp()   # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    tensor([0.5000, 0.3000, 0.0000])
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}; use None to disable it")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= p
    # Scatter the decision back from sorted order to vocabulary order.
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
# --8<-- [end:top_p]


# --8<-- [start:min_p]
def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    r"""Keep tokens at least ``min_p`` times as likely as the most likely one: $p_i \ge \text{min\_p}\cdot p_{\max}$.

    Unlike top-p the cut moves with the model's confidence: a peaked distribution keeps few
    tokens, a flat one keeps many. In logits the test is $z_i \ge z_{\max} + \ln \text{min\_p}$,
    so no softmax is needed.

    >>> min_p_filter(torch.tensor([0.5, 0.3, 0.2]).log(), 0.5).exp()   # keep p >= 0.25
    tensor([0.5000, 0.3000, 0.0000])
    """
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}; use None to disable it")
    if min_p == 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(min_p))
    return logits.masked_fill(logits < threshold, float("-inf"))
# --8<-- [end:min_p]


# --8<-- [start:sample_next]
def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token of each row of ``logits`` (``[b, vocab]`` → ``[b]`` ids).

    ``temperature == 0`` is greedy decoding: the arg-max, no randomness. Otherwise the
    filters run in the order temperature → top-k → top-p → min-p, and a token is drawn from
    the softmax of what is left. None of the filters ever removes the most likely token, so
    every row keeps at least one candidate.

    Args:
        logits: ``[b, vocab]`` scores for the next position.
        temperature: 0 for greedy, else the divisor of the logits.
        top_k: keep only this many candidates (``None``: all).
        top_p: keep the nucleus of this probability mass (``None``: all).
        min_p: keep candidates at least this fraction as likely as the best (``None``: all).
        generator: the random number generator to draw from (for reproducible sampling).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
# --8<-- [end:sample_next]


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, min_p: float | None) -> None:
    """Reject bad sampling settings before any work is done (greedy ignores the filters)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1] or None, got {min_p}")


def _check_lengths(model: Transformer, prompt_len: int, max_new_tokens: int) -> None:
    """Every position must fit the model: say so up front rather than truncating anything."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    limit = model.config.max_seq_len
    if prompt_len == 0:
        raise ValueError("the prompt is empty: start it with the BOS id (1 for Llama 2 tokenizers), e.g. [1]")
    if prompt_len > limit:
        raise ValueError(
            f"the prompt has {prompt_len} tokens but the model's max_seq_len is {limit}; shorten the prompt"
        )
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"{prompt_len} prompt tokens + {max_new_tokens} new tokens exceed max_seq_len={limit}; "
            f"ask for at most {limit - prompt_len} new tokens"
        )


def _check_ids(model: Transformer, prompt_ids: Sequence[int]) -> None:
    """Ids come from users here, as Python ints: check them once, before any tensor is made."""
    vocab = model.config.vocab_size
    bad = next((i for i in prompt_ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab}); "
                         "check that the tokenizer matches the model")


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A private random stream for ``seed`` (so the same seed gives the same text), or the global one."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


# --8<-- [start:layout]
@torch.no_grad()
def prepare_for_decoding(model: Transformer) -> Transformer:
    """Store each weight matrix column-major (transposed in memory); shapes and values are unchanged.

    Decoding one token multiplies a single vector by every matrix: the time goes into reading
    the matrices from memory. ``nn.Linear`` keeps ``weight`` (``[out, in]``) row by row, and
    for that layout the vector product in PyTorch's CPU BLAS (MKL) reads memory markedly slower
    than for the transposed layout, where consecutive addresses feed consecutive outputs
    (on the book's 2-core AMD machine, 1.3x to 1.5x more tokens/s in ``benchmarks/decode.py``).
    The model computes the same function; only the sums run in another order, so logits can
    change in the last bits.

    Returns ``model`` (changed in place). Tied weights stay tied.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.stride(-1) == 1:
            module.weight.data = module.weight.data.t().contiguous().t()
    return model
# --8<-- [end:layout]


# --8<-- [start:step]
@torch.inference_mode()
def _next_logits(model: Transformer, tokens: torch.Tensor, input_pos: torch.Tensor,
                 pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits for the position after ``tokens`` (``[b, vocab]``), reading and filling the KV cache.

    ``inference_mode`` records no autograd graph, and ``last_only`` skips the output head for
    every prompt position but the last: only the last one predicts a token we will use.
    """
    return model(tokens, input_pos=input_pos, pad_mask=pad_mask, last_only=True)[:, -1]
# --8<-- [end:step]


# --8<-- [start:stream]
def generate_stream(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time, as soon as each is chosen.

    The prompt goes through the model once (*prefill*), filling the KV cache; each later step
    feeds only the token just chosen (*decode*). The cache is installed on ``model`` for the
    duration of the loop and removed when it ends (or when the iterator is closed).

    Args:
        model: the language model (put it in ``eval()`` mode).
        prompt_ids: the prompt, at least one id (usually starting with BOS).
        max_new_tokens: the most tokens to produce.
        temperature: 0 for greedy decoding, else the divisor of the logits (:func:`sample_next`).
        top_k: keep only this many candidates (``None``: all).
        top_p: keep the nucleus of this probability mass (``None``: all).
        min_p: keep candidates at least this fraction as likely as the best (``None``: all).
        stop_ids: ids that end generation; the stop id itself is not yielded.
        seed: seed of a private random generator: the same seed gives the same tokens.

    Raises:
        ValueError: an empty prompt, a prompt (plus new tokens) longer than ``max_seq_len``,
            or a sampling setting out of range.
    """
    prompt_ids = list(prompt_ids)
    _check_lengths(model, len(prompt_ids), max_new_tokens)
    _check_ids(model, prompt_ids)
    _check_sampling(temperature, top_k, top_p, min_p)
    stop = set(stop_ids)
    device = model.output.weight.device
    generator = _generator(seed, device)
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    model.setup_cache(batch_size=1, max_seq_len=len(prompt_ids) + max_new_tokens)
    try:
        input_pos = torch.arange(len(prompt_ids), device=device)  # the prompt: positions 0 .. n-1
        for _ in range(max_new_tokens):
            logits = _next_logits(model, tokens, input_pos)
            input_pos = input_pos[-1:] + 1  # then one position at a time
            next_id = sample_next(logits, temperature, top_k, top_p, min_p, generator)
            token = int(next_id)
            if token in stop:
                return
            yield token
            tokens = next_id.view(1, 1)
    finally:
        model.clear_cache()
# --8<-- [end:stream]


# --8<-- [start:generate]
def generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
) -> list[int]:
    """The new token ids after ``prompt_ids`` (not the prompt itself); see :func:`generate_stream`.

    ``temperature=0.0`` (the default) is greedy decoding; the same ``seed`` gives the same output.
    """
    return list(generate_stream(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, min_p,
                                stop_ids, seed))
# --8<-- [end:generate]


# --8<-- [start:batch]
def generate_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
) -> list[list[int]]:
    """Generate for several prompts at once; returns the new ids of each prompt.

    Prompts of different lengths are *left* padded so that every sequence's last prompt token
    sits in the same column, where the first new token is predicted. ``pad_mask`` (``False`` at
    padding) tells the model to skip padding as keys and to count positions from each
    sequence's first real token, so a padded sequence gets exactly the logits it would get alone.

    A sequence that produces a stop id is finished (its later tokens are discarded); the loop
    ends when all are finished or after ``max_new_tokens`` steps. Greedy results equal
    :func:`generate` on each prompt alone; sampled ones draw from one random stream for the
    whole batch, so they differ from unbatched sampling with the same seed.
    """
    prompts = [list(p) for p in prompts]
    if not prompts:
        raise ValueError("prompts is empty: pass a list of prompts, each a list of token ids")
    for p in prompts:
        _check_lengths(model, len(p), max_new_tokens)
        _check_ids(model, p)
    _check_sampling(temperature, top_k, top_p, min_p)
    stop = set(stop_ids)
    device = model.output.weight.device
    generator = _generator(seed, device)
    b, width = len(prompts), max(len(p) for p in prompts)
    cache_len = width + max_new_tokens
    tokens = torch.zeros(b, width, dtype=torch.long, device=device)  # id 0 at padding: never attended
    # One mask for the whole cache: False at each prompt's left padding, True everywhere else
    # (the generated tokens that will fill the columns after the prompts are all real).
    pad_mask = torch.ones(b, cache_len, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        pad_mask[i, : width - len(p)] = False
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * b
    model.setup_cache(batch_size=b, max_seq_len=cache_len)
    try:
        input_pos = torch.arange(width, device=device)
        for _ in range(max_new_tokens):
            logits = _next_logits(model, tokens, input_pos, pad_mask=pad_mask)
            input_pos = input_pos[-1:] + 1
            next_ids = sample_next(logits, temperature, top_k, top_p, min_p, generator)
            for i, token in enumerate(next_ids.tolist()):
                if finished[i]:
                    continue
                if token in stop:
                    finished[i] = True
                else:
                    outputs[i].append(token)
            if all(finished):
                break
            tokens = next_ids.view(b, 1)
    finally:
        model.clear_cache()
    return outputs
# --8<-- [end:batch]


# --8<-- [start:compiled]
class CompiledDecoder:
    """Batch-1 decoding with the model's own ``forward`` compiled by ``torch.compile`` (opt-in, for speed).

    Decoding one token on a CPU is hundreds of small operations: eagerly, the Python and
    dispatch overhead of each costs about as much as reading the weights. Compiled, the step
    becomes a few dozen fused C++ loops called from a C++ wrapper (``cpp_wrapper``), each
    matrix-vector product one loop streaming its weights (:class:`~llama.linear.Linear`).

    What makes one compiled graph serve every step is that nothing in a decode step changes
    shape: the token is ``[1, 1]``, its position a one-element *tensor*, and the KV cache has a
    fixed length (:class:`~llama.attention.KVCache` writes at tensor positions and hands back
    the whole buffer with the causal-mask row of the position). The prompt goes through the
    eager model, once per call.

    The first call compiles (seconds to tens of seconds); later calls reuse the compiled step
    for any prompt and length as long as ``prompt + new tokens <= max_seq_len``. Greedy ids
    agree with :func:`generate`; logits may differ in the last bits (sums run in another order).

    Args:
        model: the model, in ``eval()`` mode. Its weights are read at every step (not copied),
            but do not change their shapes, dtypes or devices while this object is in use.
            Leave them in ``nn.Linear``'s row-major layout (not :func:`prepare_for_decoding`):
            the compiled one-row product streams each weight row as one contiguous sum.
        max_seq_len: cache length, the longest prompt + new tokens (default: the model's).
            Every step attends over the whole cache, so keep it close to what you need.
        options: ``torch.compile`` options (Inductor settings); default ``{"cpp_wrapper": True}``.
    """

    def __init__(self, model: Transformer, max_seq_len: int | None = None,
                 options: dict | None = None) -> None:
        self.model = model
        self.max_seq_len = max_seq_len or model.config.max_seq_len
        if self.max_seq_len > model.config.max_seq_len:
            raise ValueError(f"max_seq_len={self.max_seq_len} exceeds the model's {model.config.max_seq_len}")
        self.options = {"cpp_wrapper": True} if options is None else options
        # The same cache objects at every call: the compiled step reads them where it found
        # them when it was traced. Positions not yet written are masked, so they need no reset.
        self.caches = model.setup_cache(batch_size=1, max_seq_len=self.max_seq_len)
        model.clear_cache()
        self.step = torch.compile(model, fullgraph=True, dynamic=False, options=self.options)
        self.compiled = False

    def _step(self, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        if not self.compiled:  # the first call traces and compiles
            logits = self.step(token, input_pos, last_only=True)
            self.compiled = True
            return logits[:, -1]
        # Every later call has the same shapes, dtypes, model and caches, so the guards that
        # torch.compile checks before each call (hundreds of microseconds for 100+ tensors)
        # can only pass: skip them.
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return self.step(token, input_pos, last_only=True)[:, -1]

    @torch.no_grad()
    def generate_stream(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                        top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                        stop_ids: Iterable[int] = (), seed: int | None = None) -> Iterator[int]:
        """Same arguments and tokens as :func:`generate_stream` (without ``model``)."""
        model = self.model
        prompt_ids = list(prompt_ids)
        _check_lengths(model, len(prompt_ids), max_new_tokens)
        _check_ids(model, prompt_ids)
        if len(prompt_ids) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"{len(prompt_ids)} prompt tokens + {max_new_tokens} new tokens exceed this "
                             f"decoder's max_seq_len={self.max_seq_len}")
        _check_sampling(temperature, top_k, top_p, min_p)
        stop = set(stop_ids)
        device = model.output.weight.device
        generator = _generator(seed, device)
        model.use_cache(self.caches)
        try:
            prompt = torch.tensor([prompt_ids], device=device)
            logits = _next_logits(model, prompt, torch.arange(len(prompt_ids), device=device))  # prefill, eager
            input_pos = torch.tensor([len(prompt_ids)], device=device)
            for i in range(max_new_tokens):
                next_id = sample_next(logits, temperature, top_k, top_p, min_p, generator)
                token = int(next_id)
                if token in stop:
                    return
                yield token
                if i + 1 < max_new_tokens:  # no step for a token nobody asked for
                    logits = self._step(next_id.view(1, 1), input_pos)
                    input_pos += 1
        finally:
            model.clear_cache()

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, **kwargs) -> list[int]:
        """The new token ids after ``prompt_ids``; see :meth:`generate_stream`."""
        return list(self.generate_stream(prompt_ids, max_new_tokens, **kwargs))
# --8<-- [end:compiled]
