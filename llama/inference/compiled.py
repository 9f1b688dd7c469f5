r"""Decoding with the step compiled by ``torch.compile``: :func:`decode_step` and :class:`CompiledDecoder`.

The eager loops of :mod:`llama.inference.generation` run a few hundred small operations per token,
each with Python and dispatch overhead. Compiled, the step is a few dozen fused C++ loops; what
makes one compiled graph serve every step is that nothing in a decode step changes shape (see
:class:`CompiledDecoder`). :func:`decode_step` is the step both compiled decoders compile, this
one and :class:`~llama.inference.exported.ExportedDecoder`; :func:`missing_cxx_compiler` says,
before anything compiles, whether this machine can.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence

import torch

from llama.inference.generation import _checked, _choose, _next_logits
from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.quantization.kernel import load_kernel
from llama.quantization.weights import QuantizedLinear

__all__ = ["decode_step", "CompiledDecoder", "missing_cxx_compiler"]


def missing_cxx_compiler() -> str | None:
    """``None`` when ``torch.compile`` finds a C++ compiler on this machine, else what is missing and the fix.

    On a CPU, Inductor writes C++ and builds it; without a compiler the failure comes only at the
    first compiled step, as a long traceback. This looks first, the way Inductor does (``$CXX``,
    else ``g++``).
    """
    cxx = os.environ.get("CXX")
    wanted = f"CXX={cxx} is not a working compiler" if cxx else "no g++ on PATH"
    try:
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # Inductor's internals moved: look for what it has looked for so far
        if shutil.which(cxx or "g++"):
            return None
    else:
        try:
            get_cpp_compiler()
            return None
        except exc.InvalidCxxCompiler:
            pass
    return (f"torch.compile needs a C++ compiler and found none ({wanted}): install one "
            "(e.g. apt-get install g++) or set CXX to its path")


# --8<-- [start:compiled]
def decode_step(model: Transformer, token: torch.Tensor, input_pos: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step as the compiled decoders compile it: ``model``, its KV caches installed, reads
    ``token`` (``[1, 1]``) at ``input_pos`` (``[1]``).

    Besides the logits, the step makes what the next greedy step takes (the arg-max and the next
    position), so that between two compiled steps a greedy loop runs no PyTorch operation of its
    own: right after a step, whose weights have pushed the interpreter's and PyTorch's data out of
    the CPU's caches, such an operation costs several times its arithmetic.

    Returns:
        ``(logits, next_id, input_pos + 1)``: ``[1, vocab]``; the arg-max ``[1, 1]``, or -1 where its
        logit is NaN or infinite (:func:`~llama.inference.sampling.sample_next` names the problem).
    """
    logits = model(token, input_pos, last_only=True)[:, -1]
    best = logits.argmax(dim=-1, keepdim=True)
    best = torch.where(torch.isfinite(logits.gather(-1, best)), best, -1)
    return logits, best, input_pos + 1


class CompiledDecoder:
    """Batch-1 decoding with the model's own ``forward`` compiled by ``torch.compile`` (opt-in, for speed).

    Decoding one token on a CPU is hundreds of small operations: eagerly, the Python and
    dispatch overhead of each costs about as much as reading the weights. Compiled, the step
    becomes a few dozen fused C++ loops called from a C++ wrapper (``cpp_wrapper``), each
    matrix-vector product one loop streaming its weights (:class:`~llama.model.linear.Linear`), or for
    a quantized model one call of the C++ kernel of :mod:`llama.quantization.kernel`, which it builds
    first (once per machine) if the model has quantized layers.

    What makes one compiled graph serve every step is that nothing in a decode step changes
    shape: the token is ``[1, 1]``, its position a one-element *tensor*, and the KV cache has a
    fixed length (:class:`~llama.model.attention.KVCache` writes at tensor positions and hands back
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
        missing = missing_cxx_compiler()
        if missing:
            raise RuntimeError(f"{missing}; or decode without compiling (llama.generate)")
        self.options = {"cpp_wrapper": True} if options is None else options
        if any(isinstance(m, QuantizedLinear) for m in model.modules()):
            load_kernel()  # now rather than at the first step, so that the eager prompt pass uses it too
        # The same cache objects at every call: the compiled step reads them where it found
        # them when it was traced. Positions not yet written are masked, so they need no reset
        # (unless a generation left NaN in them: see KVCache.reset).
        self.caches = model.new_caches(batch_size=1, max_seq_len=self.max_seq_len)
        self.streaming = False  # one cache, so one stream at a time
        self._prepare_step()

    def _prepare_step(self) -> None:
        """Make the compiled step (here lazily: ``torch.compile`` compiles at the first call)."""
        self.step = torch.compile(decode_step, fullgraph=True, dynamic=False, options=self.options)
        self.compiled = False

    def _step(self, token: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with self.model.using_cache(self.caches):  # as for eager steps: installed only while it runs
            if not self.compiled:  # the first call traces and compiles
                out = self.step(self.model, token, input_pos)
                self.compiled = True
                return out
            # Every later call has the same shapes, dtypes, model and caches, so the guards that
            # torch.compile checks before each call (hundreds of microseconds for 100+ tensors)
            # can only pass: skip them.
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self.step(self.model, token, input_pos)

    def _check_free(self) -> None:
        if self.streaming:
            raise RuntimeError("this CompiledDecoder is already generating: a stream from it is still open and "
                               "its one KV cache is in use; finish or close() that stream first, or make "
                               "another CompiledDecoder (or use llama.generate_stream) for a second one")

    def generate_stream(self, prompt_ids: Sequence[int], max_new_tokens: int,
                        sampling: Sampling = Sampling()) -> Iterator[int]:
        """Same arguments and tokens as :func:`generate_stream` (without ``model``).

        One stream at a time per decoder (it has one cache): starting a second while the first
        is still open raises ``RuntimeError``. Other, eager, generations may run between its steps.
        """
        prompt_ids = _checked(self.model, prompt_ids, max_new_tokens, sampling)
        if len(prompt_ids) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"{len(prompt_ids)} prompt tokens + {max_new_tokens} new tokens exceed this "
                             f"decoder's max_seq_len={self.max_seq_len}")
        self._check_free()
        return self._decode(prompt_ids, max_new_tokens, sampling)

    @torch.no_grad()
    def _decode(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling) -> Iterator[int]:
        self._check_free()  # again: two streams made before either started
        self.streaming = True
        try:
            device = self.model.tok_embeddings.weight.device
            generator = sampling.generator(device)
            prompt = torch.tensor([prompt_ids], device=device)
            positions = torch.arange(len(prompt_ids), device=device)
            logits = _next_logits(self.model, self.caches, prompt, positions)  # prefill, eager
            next_id = _choose(sampling, logits, generator, 1).view(1, 1)
            input_pos = torch.tensor([len(prompt_ids)], device=device)
            for i in range(max_new_tokens):
                if i > 0:  # the step of the last token yielded (none for a token nobody asked for)
                    logits, next_id, input_pos = self._step(next_id, input_pos)
                    if sampling.temperature != 0:  # greedy takes the step's own choice
                        next_id = _choose(sampling, logits, generator, i + 1).view(1, 1)
                token = int(next_id)
                if token < 0:  # the step's greedy choice had a logit that is NaN or infinite
                    token = int(_choose(sampling, logits, generator, i + 1))  # raises, naming which
                if token in sampling.stop_ids:
                    return
                yield token
        except ValueError:  # NaN or infinite logits: the caches may hold NaN, which the mask does not hide
            for cache in self.caches:
                cache.reset()
            raise
        finally:
            self.streaming = False

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 sampling: Sampling = Sampling()) -> list[int]:
        """The new token ids after ``prompt_ids``; see :meth:`generate_stream`."""
        return list(self.generate_stream(prompt_ids, max_new_tokens, sampling))
# --8<-- [end:compiled]
