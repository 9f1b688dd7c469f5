r"""Decoding with the step compiled ahead of time: ``torch.export``, then AOTInductor, no Python per kernel.

:class:`~llama.inference.compiled.CompiledDecoder` turns a decode step into a few dozen fused C++
loops, but every step still enters them through ``torch.compile``'s Python: Dynamo's cache
lookup, the code that gathers the model's seventy-odd weights and buffers into the graph's
arguments, and the wrappers around the compiled graph. On a small model that is a sizeable share
of a token's time (``python benchmarks/decode.py --profile`` measures it). AOTInductor compiles the
same graph into a shared library with its own C++ entry point: a step is then one call that hands
over two tensors, the token and its position.

:class:`ExportedDecoder` does that for the model's own ``forward``:

1. ``torch.export`` traces one decode step (token ``[1, 1]``, its position, the KV caches
   installed) into a graph. As under ``torch.compile``, :class:`~llama.model.linear.Linear` and the
   quantized layers take their one-row paths while tracing.
2. ``torch._inductor.aoti_compile_and_package`` compiles it without its weights
   (``package_constants_in_so=False``): the library takes pointers to tensors at load time.
3. The loaded library gets the model's own weights and the decoder's own KV caches as
   *user-managed* constants: no copy, so the eager prefill and the compiled steps read and write
   the same cache buffers, and a weight changed in place is seen at the next step.

Because the library holds no weights, it depends only on the graph, the tensors' shapes, strides
and dtypes, the CPU and the thread count: it is kept in Inductor's cache folder under a hash of
those, and a later decoder for the same shapes, in any process, loads it in a fraction of a second
instead of compiling it again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from llama.inference.compiled import CompiledDecoder, decode_step
from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.quantization.kernel import _cpu_tag

__all__ = ["ExportedDecoder", "package_folder", "one_compiler"]


def package_folder() -> Path:
    """Where compiled steps are kept: ``llama-decoders`` in Inductor's cache (``TORCHINDUCTOR_CACHE_DIR``)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "llama-decoders"


# --8<-- [start:step]
class _Step(nn.Module):
    """One decode step of ``model`` with ``caches`` installed: what ``torch.export`` traces.

    The caches are submodules here, so their buffers get names (``caches.0.k``, ...) in the
    exported graph, like the weights (``model.layers.0.attention.wq.weight``, ...): each name is
    a constant the compiled library is given at load time.
    """

    def __init__(self, model: Transformer, caches: list) -> None:
        super().__init__()
        self.model = model
        self.caches = nn.ModuleList(caches)

    def forward(self, token: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with self.model.using_cache(list(self.caches)):
            return decode_step(self.model, token, input_pos)
# --8<-- [end:step]


def _tensors(step: _Step) -> dict[str, torch.Tensor]:
    """Every weight and buffer of ``step`` by name, shared ones under each name (the tied head, the mask)."""
    named = dict(step.named_parameters(remove_duplicate=False))
    named.update(step.named_buffers(remove_duplicate=False))
    return {name: t.detach() for name, t in named.items()}


def _layout(t: torch.Tensor) -> tuple:
    """Where a tensor's values are and how they are laid out: what the compiled step was handed."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t.dtype


@contextmanager
def one_compiler(path: Path) -> Iterator[None]:
    """Hold the lock of the library ``path`` (``path.lock``, POSIX ``flock``) while it is looked
    for and, if missing, compiled: a second process building the same step waits, then loads the
    first one's library instead of compiling it again. Without ``fcntl`` (Windows) nothing is
    locked and both may compile, which is only slower: the rename keeps the file whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _package_key(program: torch.export.ExportedProgram, tensors: dict[str, torch.Tensor]) -> str:
    """A hash of everything the compiled library depends on; the weights' values are not part of it,
    nor where the traced code lives: the graph's ``# File: ...`` comments are left out, so the same
    step traced from another checkout (or from a chapter's copied listings) finds the same library."""
    code = program.graph_module.print_readable(print_output=False)
    graph = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("#"))
    digest = hashlib.sha256()
    for part in (torch.__version__, torch.backends.cpu.get_cpu_capability(), _cpu_tag(),
                 f"threads={torch.get_num_threads()}", graph):
        digest.update(part.encode() + b"\0")
    for name, t in sorted(tensors.items()):
        digest.update(f"{name} {tuple(t.shape)} {t.stride()} {t.dtype} {t.device}\n".encode())
    return digest.hexdigest()[:32]


# --8<-- [start:exported]
class ExportedDecoder(CompiledDecoder):
    """:class:`~llama.inference.compiled.CompiledDecoder` with the step compiled ahead of time by AOTInductor.

    Same arguments (without ``options``), same methods, same ids. The step is traced by
    ``torch.export`` and compiled into a library that holds no weights (see the module's
    description); each decode step is one call of it, with no Python between its kernels. The
    prompt goes through the eager model, once per call, into the same cache buffers.

    Building one exports the step (about a second) and loads the library from
    :func:`package_folder`, or compiles it there first: tens of seconds, once per shape, CPU and
    thread count.

    Args:
        model: the model, in ``eval()`` mode. Its weights are read where they are, at every step:
            change their values in place if you like, but do not replace them or change their
            shapes, dtypes or layout while the decoder is in use (``generate`` checks that the
            same tensors are still there, and raises if not).
        max_seq_len: cache length, as for ``CompiledDecoder``.

    Attributes:
        loaded_from_cache: ``True`` when the library was found in :func:`package_folder`, ``False``
            when this decoder compiled it.

    Raises:
        RuntimeError: no C++ compiler (the message says what to install).
    """

    def __init__(self, model: Transformer, max_seq_len: int | None = None) -> None:
        super().__init__(model, max_seq_len)

    def _prepare_step(self) -> None:
        self._traced = step = _Step(self.model, self.caches).eval()  # kept: generate_stream re-reads its tensors
        device = self.model.tok_embeddings.weight.device
        token = torch.zeros(1, 1, dtype=torch.long, device=device)
        position = torch.zeros(1, dtype=torch.long, device=device)
        with torch.no_grad():
            program = torch.export.export(step, (token, position), strict=False)
        self._weights = _tensors(step)
        path = package_folder() / f"{_package_key(program, self._weights)}.pt2"
        path.parent.mkdir(parents=True, exist_ok=True)
        with one_compiler(path):  # another process compiling the same step: wait, then load its library
            self.loaded_from_cache = path.exists()
            if not self.loaded_from_cache:
                # Written beside its final name and renamed: nothing ever reads half a file.
                handle, partial = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
                os.close(handle)
                try:
                    torch._inductor.aoti_compile_and_package(
                        program, package_path=partial, inductor_configs={"aot_inductor.package_constants_in_so": False})
                    os.replace(partial, path)
                finally:
                    Path(partial).unlink(missing_ok=True)
        self._library = torch._inductor.aoti_load_package(str(path))
        wanted = set(self._library.get_constant_fqns())
        if not wanted <= self._weights.keys():  # a constant Inductor made itself would hold stale values
            raise RuntimeError(f"the compiled step wants constants the model does not have: {sorted(wanted - self._weights.keys())}")
        self._library.load_constants({name: self._weights[name] for name in wanted},
                                     check_full_update=True, user_managed=True)
        self._run = self._library.loader.boxed_run  # the C++ entry, without the wrapper's pytree work

    def _step(self, token: torch.Tensor, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(self._run([token, input_pos]))

    def generate_stream(self, prompt_ids: Sequence[int], max_new_tokens: int,
                        sampling: Sampling = Sampling()) -> Iterator[int]:
        """As :meth:`CompiledDecoder.generate_stream`; first checks that the model still has the weights it was given."""
        now = _tensors(self._traced)
        if any(_layout(now[name]) != _layout(t) for name, t in self._weights.items()):
            raise RuntimeError("the model's weights were replaced (or reshaped) after this ExportedDecoder was made, "
                               "and its compiled step reads the old ones; make a new ExportedDecoder")
        return super().generate_stream(prompt_ids, max_new_tokens, sampling)
# --8<-- [end:exported]
