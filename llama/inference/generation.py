r"""Autoregressive generation: a KV-cached decode loop, streaming and batching.

A language model gives a distribution over the next token; generating text is running it in
a loop, appending one chosen token at a time. How each token is chosen (greedy, or sampled
after temperature, top-k, top-p and min-p) is a :class:`~llama.inference.sampling.Sampling`, made and
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

import operator
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer

__all__ = [
    "generate_stream",
    "generate",
    "generate_batch",
    "prepare_for_decoding",
]


def _check_lengths(model: Transformer, prompt_len: int, max_new_tokens: int) -> None:
    """Every position must fit the model: say so up front rather than truncating anything."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
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


def _check_ids(model: Transformer, prompt_ids: Sequence[int]) -> list[int]:
    """Ids come from users here: check them once, before any tensor is made, and return them as ints.

    ``torch.tensor`` would silently truncate ``403.7`` to 403 and read ``True`` as 1, so only
    integers pass (Python or NumPy ints, or integer 0-d tensors: whatever ``operator.index`` takes).
    """
    ids = []
    for position, i in enumerate(prompt_ids):
        try:
            if isinstance(i, bool):
                raise TypeError
            ids.append(operator.index(i))
        except TypeError:
            raise ValueError(f"token ids must be integers, got {i!r} ({type(i).__name__}) at position {position}; "
                             "pass the ids a tokenizer gave, as ints") from None
    vocab = model.config.vocab_size
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab}); "
                         "check that the tokenizer matches the model")
    return ids


def _check_settings(model: Transformer, sampling: Sampling) -> None:
    """Catch the pre-``Sampling`` call style, ``generate(model, ids, n, 0.8)``, and stop ids the model cannot make."""
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a llama.Sampling, got {sampling!r}; "
                        "e.g. sampling=Sampling(temperature=0.8, top_p=0.9, seed=0)")
    vocab = model.config.vocab_size
    bad = sorted(i for i in sampling.stop_ids if not 0 <= i < vocab)
    if bad:  # such a stop id would never end the loop: a typo, or a tokenizer from another model
        raise ValueError(f"stop id {bad[0]} is outside the model's vocabulary [0, {vocab}), so it can never be "
                         "produced; use an id of this model's tokenizer (e.g. its EOS)")


def _checked(model: Transformer, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling) -> list[int]:
    """Every check a generation makes before it computes anything; returns the prompt as a list of ints."""
    ids = _check_ids(model, list(prompt_ids))
    _check_lengths(model, len(ids), max_new_tokens)
    _check_settings(model, sampling)
    return ids


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
def _next_logits(model: Transformer, caches: list, tokens: torch.Tensor, input_pos: torch.Tensor,
                 pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits for the position after ``tokens`` (``[b, vocab]``), reading and filling ``caches``.

    ``inference_mode`` records no autograd graph, and ``last_only`` skips the output head for
    every prompt position but the last: only the last one predicts a token we will use.

    Each generation owns its caches, installed on the model for this one forward only: two
    streams on one model, or a ``generate`` between the steps of a stream, never read or
    overwrite each other's keys and values.
    """
    with model.using_cache(caches):
        return model(tokens, input_pos=input_pos, pad_mask=pad_mask, last_only=True)[:, -1]


def _choose(sampling: Sampling, logits: torch.Tensor, generator: torch.Generator | None, step: int) -> torch.Tensor:
    """``sampling.next_ids``, with the step named when the model's logits are not finite."""
    try:
        return sampling.next_ids(logits, generator)
    except ValueError as err:  # only non-finite logits: the settings were checked when made
        raise ValueError(f"at new token {step}: {err}") from None
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
    feeds only the token just chosen (*decode*). The cache belongs to this stream: it is on
    ``model`` only while a step computes, so other generations may run between its steps.

    Args:
        model: the language model (put it in ``eval()`` mode).
        prompt_ids: the prompt, at least one integer id (usually starting with BOS).
        max_new_tokens: the most tokens to produce.
        sampling: how to choose each token (default: greedy), the ids that end the loop (not
            yielded themselves) and the seed (the same seed gives the same tokens).

    Raises:
        ValueError: at the call, before any computation: an empty prompt, a prompt (plus new
            tokens) longer than ``max_seq_len``, an id that is not an integer, or a prompt or
            stop id outside the vocabulary. Bad sampling settings never get this far:
            ``Sampling`` rejects them when it is made. While iterating: the model produced NaN
            or infinite logits.
    """
    prompt_ids = _checked(model, prompt_ids, max_new_tokens, sampling)
    return _decode(model, prompt_ids, max_new_tokens, sampling)


def _decode(model: Transformer, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling) -> Iterator[int]:
    device = model.tok_embeddings.weight.device
    generator = sampling.generator(device)
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    caches = model.new_caches(batch_size=1, max_seq_len=len(prompt_ids) + max_new_tokens)
    input_pos = torch.arange(len(prompt_ids), device=device)  # the prompt: positions 0 .. n-1
    for step in range(1, max_new_tokens + 1):
        logits = _next_logits(model, caches, tokens, input_pos)
        input_pos = input_pos[-1:] + 1  # then one position at a time
        next_id = _choose(sampling, logits, generator, step)
        token = int(next_id)
        if token in sampling.stop_ids:
            return
        yield token
        tokens = next_id.view(1, 1)
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
    if not prompts:
        raise ValueError("prompts is empty: pass a list of prompts, each a list of token ids")
    prompts = [_checked(model, p, max_new_tokens, sampling) for p in prompts]
    device = model.tok_embeddings.weight.device
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
    caches = model.new_caches(batch_size=b, max_seq_len=cache_len)
    input_pos = torch.arange(width, device=device)
    for step in range(1, max_new_tokens + 1):
        logits = _next_logits(model, caches, tokens, input_pos, pad_mask=pad_mask)
        input_pos = input_pos[-1:] + 1
        next_ids = _choose(sampling, logits, generator, step)
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
    return outputs
# --8<-- [end:batch]
