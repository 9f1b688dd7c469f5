r"""Autoregressive generation: a KV-cached decode loop, streaming and batching.

A language model gives a distribution over the next token; generating text is running it in
a loop, appending one chosen token at a time. How each token is chosen (greedy, or sampled
after temperature, top-k, top-p and min-p) is a :class:`~llama.sampling.Sampling`, made and
checked once and passed to the loops. This module has the loops:

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
>>> from llama import Sampling
>>> warm = Sampling(temperature=0.8, seed=0)
>>> generate(model, [1, 5, 7], max_new_tokens=4, sampling=warm) == generate(model, [1, 5, 7], 4, warm)
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from llama.model import Transformer
from llama.sampling import Sampling

__all__ = [
    "generate_stream",
    "generate",
    "generate_batch",
    "prepare_for_decoding",
    "CompiledDecoder",
]


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



def _check_settings(sampling: Sampling) -> None:
    """Catch the pre-``Sampling`` call style, ``generate(model, ids, n, 0.8)``, with the fix."""
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a llama.Sampling, got {sampling!r}; "
                        "e.g. sampling=Sampling(temperature=0.8, top_p=0.9, seed=0)")


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
    sampling: Sampling = Sampling(),
) -> Iterator[int]:
    """Yield new token ids one at a time, as soon as each is chosen.

    The prompt goes through the model once (*prefill*), filling the KV cache; each later step
    feeds only the token just chosen (*decode*). The cache is installed on ``model`` for the
    duration of the loop and removed when it ends (or when the iterator is closed).

    Args:
        model: the language model (put it in ``eval()`` mode).
        prompt_ids: the prompt, at least one id (usually starting with BOS).
        max_new_tokens: the most tokens to produce.
        sampling: how to choose each token (default: greedy), the ids that end the loop (not
            yielded themselves) and the seed (the same seed gives the same tokens).

    Raises:
        ValueError: an empty prompt, or a prompt (plus new tokens) longer than ``max_seq_len``.
            Bad sampling settings never get this far: ``Sampling`` rejects them when it is made.
    """
    prompt_ids = list(prompt_ids)
    _check_lengths(model, len(prompt_ids), max_new_tokens)
    _check_ids(model, prompt_ids)
    _check_settings(sampling)
    device = model.output.weight.device
    generator = sampling.generator(device)
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    model.setup_cache(batch_size=1, max_seq_len=len(prompt_ids) + max_new_tokens)
    try:
        input_pos = torch.arange(len(prompt_ids), device=device)  # the prompt: positions 0 .. n-1
        for _ in range(max_new_tokens):
            logits = _next_logits(model, tokens, input_pos)
            input_pos = input_pos[-1:] + 1  # then one position at a time
            next_id = sampling.next_ids(logits, generator)
            token = int(next_id)
            if token in sampling.stop_ids:
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
    sampling: Sampling = Sampling(),
) -> list[int]:
    """The new token ids after ``prompt_ids`` (not the prompt itself); see :func:`generate_stream`.

    The default ``sampling`` is greedy decoding; settings with a ``seed`` give the same output
    on every call.
    """
    return list(generate_stream(model, prompt_ids, max_new_tokens, sampling))
# --8<-- [end:generate]


# --8<-- [start:batch]
def generate_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
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
    _check_settings(sampling)
    device = model.output.weight.device
    generator = sampling.generator(device)
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
            next_ids = sampling.next_ids(logits, generator)
            for i, token in enumerate(next_ids.tolist()):
                if finished[i]:
                    continue
                if token in sampling.stop_ids:
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
    def generate_stream(self, prompt_ids: Sequence[int], max_new_tokens: int,
                        sampling: Sampling = Sampling()) -> Iterator[int]:
        """Same arguments and tokens as :func:`generate_stream` (without ``model``)."""
        model = self.model
        prompt_ids = list(prompt_ids)
        _check_lengths(model, len(prompt_ids), max_new_tokens)
        _check_ids(model, prompt_ids)
        if len(prompt_ids) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"{len(prompt_ids)} prompt tokens + {max_new_tokens} new tokens exceed this "
                             f"decoder's max_seq_len={self.max_seq_len}")
        _check_settings(sampling)
        device = model.output.weight.device
        generator = sampling.generator(device)
        model.use_cache(self.caches)
        try:
            prompt = torch.tensor([prompt_ids], device=device)
            logits = _next_logits(model, prompt, torch.arange(len(prompt_ids), device=device))  # prefill, eager
            input_pos = torch.tensor([len(prompt_ids)], device=device)
            for i in range(max_new_tokens):
                next_id = sampling.next_ids(logits, generator)
                token = int(next_id)
                if token in sampling.stop_ids:
                    return
                yield token
                if i + 1 < max_new_tokens:  # no step for a token nobody asked for
                    logits = self._step(next_id.view(1, 1), input_pos)
                    input_pos += 1
        finally:
            model.clear_cache()

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 sampling: Sampling = Sampling()) -> list[int]:
        """The new token ids after ``prompt_ids``; see :meth:`generate_stream`."""
        return list(self.generate_stream(prompt_ids, max_new_tokens, sampling))
# --8<-- [end:compiled]
