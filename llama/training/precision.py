"""The precision a run computes in: bfloat16 where the machine multiplies it natively, float32
where it would only emulate it.

bfloat16 autocast halves the bytes each matrix product reads and, on hardware with bfloat16
instructions (``avx512_bf16`` or AMX on x86 CPUs, ``bf16`` on Arm, CUDA GPUs from Ampere on),
computes them faster than float32. Without those instructions PyTorch emulates bfloat16, and
the same product is tens of times *slower* than in float32. ``llama train --dtype auto`` (the
default) therefore asks the machine (:func:`resolve_dtype`), and Muon's orthogonalisation
(:func:`llama.training.optim.newton_schulz`) computes in whichever of the two is fast here
(:func:`fast_dtype`). The answer is found once per process and per device.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import Any

import torch

__all__ = ["DTYPES", "BF16_FEATURES", "resolve_dtype", "bf16_support", "fast_dtype", "cpu_bf16_features",
           "measure_bf16_slowdown", "emulation_warning", "choose_dtype"]

#: The values of ``--dtype``.
DTYPES = ("auto", "float32", "bfloat16")

#: CPU features that multiply bfloat16 in hardware, as ``torch.cpu.get_capabilities()`` names them.
BF16_FEATURES = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")

#: bfloat16 counts as native only if a product in it takes less than this many times as long as
#: in float32 (:func:`measure_bf16_slowdown`; native: about 0.5, emulated: 10 to 100).
SLOWER_THAN_NATIVE = 2.0


# --8<-- [start:resolve]
def resolve_dtype(requested: str, device: str | torch.device = "cpu", saved: str | None = None) -> tuple[str, str]:
    """The dtype a training run computes in, and why, for ``--dtype requested``.

    ``"auto"`` is bfloat16 autocast where ``device`` computes bfloat16 natively
    (:func:`bf16_support`), float32 elsewhere; ``"float32"`` and ``"bfloat16"`` are taken as
    given. A resumed run keeps the dtype it started with (``saved``), whatever ``auto`` would
    choose on this machine: its checkpoints continue bit for bit only in the same precision.

    Args:
        requested: ``"auto"``, ``"float32"`` or ``"bfloat16"`` (:data:`DTYPES`).
        device: where the run computes (``"cpu"``, ``"cuda:0"``, ...).
        saved: the dtype a resumed run recorded in its ``run.json``; ``None`` for a new run.

    Returns:
        ``(dtype, reason)``: ``"float32"`` or ``"bfloat16"``, and one line that says why.

    Raises:
        ValueError: ``requested`` is not one of :data:`DTYPES`, or a resumed run is asked for
            another dtype than the one it started with.

    >>> resolve_dtype("float32")
    ('float32', 'as asked (--dtype float32)')
    >>> resolve_dtype("auto", saved="bfloat16")[0]      # a resumed run keeps its dtype
    'bfloat16'
    """
    if requested not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    if saved is not None:
        if requested not in ("auto", saved):
            raise ValueError(f"--dtype {requested}: the run started with {saved}; a resumed run keeps its dtype")
        native, why = bf16_support(device)
        here = "bfloat16" if native else "float32"
        return saved, f"kept: the run started in {saved}" + ("" if here == saved else f"; auto would choose {here} here: {why}")
    if requested == "float32":
        return "float32", "as asked (--dtype float32)"
    native, why = bf16_support(device)
    if requested == "bfloat16":
        return "bfloat16", "as asked (--dtype bfloat16)" + ("" if native else f", although {why}")
    return ("bfloat16" if native else "float32"), f"auto: {why}"


def bf16_support(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and what it is (cached per process).

    A CUDA GPU says so itself (``torch.cuda.is_bf16_supported``, emulation not counted). A CPU
    must list bfloat16 instructions (:func:`cpu_bf16_features`) *and* use them: a product of
    two small matrices is timed in both dtypes (:func:`measure_bf16_slowdown`, a few
    milliseconds), which also catches a PyTorch that does not use them, and gives the reason its
    number. A CPU whose features PyTorch cannot list is judged by that time alone. Other devices
    get ``False``: float32 is the safe choice there.

    Returns:
        ``(native, what the device is and does)``, e.g. ``(False, "this CPU (AVX2) has no native
        bfloat16: a bf16 matmul measured 31x slower than float32")``.
    """
    return _bf16_support(str(torch.device(device)))


@functools.cache
def _bf16_support(device: str) -> tuple[bool, str]:
    kind = torch.device(device).type
    if kind == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"this GPU ({name}) computes bfloat16 natively"
        return False, f"this GPU ({name}) has no native bfloat16"
    if kind != "cpu":
        return False, f"bfloat16 support of {kind} devices is not checked here"
    capability = torch.backends.cpu.get_cpu_capability()
    features = cpu_bf16_features()
    slowdown = measure_bf16_slowdown()  # a few milliseconds; tens where bfloat16 is emulated
    times = f"{slowdown:.0f}x" if slowdown >= 10 else f"{max(slowdown, 1 / slowdown):.1f}x"
    measured = f"a bf16 matmul measured {times} {'slower' if slowdown >= 1 else 'faster'} than float32"
    if not features:  # none listed, or PyTorch cannot say (then the time alone decides)
        native = features is None and slowdown < SLOWER_THAN_NATIVE
        return native, f"this CPU ({capability}) {'computes' if native else 'has no native'} bfloat16: {measured}"
    listed = f"{capability}, {' and '.join(features)}"
    if slowdown < SLOWER_THAN_NATIVE:
        return True, f"this CPU ({listed}) computes bfloat16 natively: {measured}"
    return False, f"this CPU ({listed}) has bfloat16 instructions, but PyTorch does not use them here: {measured}"
# --8<-- [end:resolve]


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """``torch.bfloat16`` where ``device`` computes it natively (:func:`bf16_support`), else
    ``torch.float32``: the dtype for products whose precision bfloat16 is enough for."""
    return torch.bfloat16 if bf16_support(device)[0] else torch.float32


def cpu_bf16_features() -> list[str] | None:
    """The bfloat16 instructions this CPU has (of :data:`BF16_FEATURES`), or ``None`` when PyTorch
    cannot list its features (``torch.cpu.get_capabilities`` is missing or names none of them)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return None
    capabilities = get()
    if not any(name in capabilities for name in BF16_FEATURES):
        return None
    return [name for name in BF16_FEATURES if capabilities.get(name)]


def measure_bf16_slowdown(size: int = 256, repeats: int = 5) -> float:
    """How many times as long a ``[size, size]`` matrix product takes in bfloat16 as in float32
    on this CPU: the best of ``repeats`` each, after one untimed product, on one thread (other
    jobs on a shared machine disturb one thread least). About 0.5 where bfloat16 is native,
    10 to 100 where it is emulated; 256 keeps an emulated product to tens of milliseconds.

    The inputs come from a generator of their own: torch's global one, which a training run's
    exact resume depends on, is not touched.
    """
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    best = {}
    torch.set_num_threads(1)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            x, y = a.to(dtype), b.to(dtype)
            x @ y
            best[dtype] = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                x @ y
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def emulation_warning(dtype: str, device: str | torch.device = "cpu") -> str | None:
    """The one-line warning for a run in ``dtype`` that ``device`` would only emulate, or ``None``.

    >>> emulation_warning("float32") is None      # float32 is native everywhere
    True
    """
    if dtype != "bfloat16":
        return None
    native, why = bf16_support(device)
    return None if native else f"warning: --dtype bfloat16 is emulated here: {why}; --dtype auto would use float32"


def choose_dtype(requested: str, saved: dict[str, Any] | None, device: torch.device, report: bool) -> list[str]:
    """Rank 0 of a training run: its dtype and why (:func:`resolve_dtype`; a ``run.json`` older than
    ``--dtype`` means float32), said on stderr with the progress (``report``), and a warning where
    bfloat16 is emulated.

    Args:
        requested: the run's ``dtype`` setting (``"auto"``, ``"float32"`` or ``"bfloat16"``).
        saved: the saved ``run.json`` of a resumed run, or ``None``.
        device: where the run computes.
        report: print the choice (the warning is printed in any case).

    Returns:
        ``[dtype, why]``, a list: JSON carries it to the other ranks.
    """
    dtype, why = resolve_dtype(requested, device, None if saved is None else saved.get("dtype", "float32"))
    warning = emulation_warning(dtype, device)
    for line in ([f"dtype: {dtype} ({why})"] if report else []) + ([warning] if warning else []):
        print(line, file=sys.stderr, flush=True)
    return [dtype, why]
