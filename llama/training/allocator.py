"""Keeping the memory a training step frees for the next step, instead of handing it back to the
operating system and faulting it in again.

A training step allocates its activations, logits and gradients, and frees them before the next
step allocates the same sizes again. glibc's ``malloc`` serves a large request (above its
threshold, 128 KiB at first, raised as large blocks are freed, up to 32 MiB) with a fresh
``mmap``, and gives a freed block, or the free top of its heap, back to the operating system. The
next step's tensors then land on pages the process no longer has: the kernel maps every 4 KiB
page again, zeroed, at its first write: thousands of page faults per step, and a large share of
its CPU time (``python benchmarks/train.py allocator`` counts both). Raising both thresholds keeps
the freed memory in the heap, where the next step reuses it, and the faults stop; the process
holds on to what its largest step used, which it needs again at the next step anyway.

PyTorch's CPU tuning guide gives the same advice in another form: run under an allocator that
reuses memory (jemalloc, tcmalloc). :func:`reuse_freed_memory` does it from within the process,
with glibc's own ``mallopt``, so ``llama train`` needs no preloaded library.
"""

from __future__ import annotations

import ctypes

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "reuse_freed_memory"]

# --8<-- [start:reuse]
#: Requests up to this size come from the heap rather than their own ``mmap``: glibc's largest
#: allowed value on 64-bit machines (``mallopt`` refuses more).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is given back to the system only beyond this much.
TRIM_THRESHOLD = 1 << 30

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to keep freed memory for reuse (see the module's description).

    It changes how this process allocates from now on, for every later allocation, and changes
    nothing else: the same tensors, the same numbers.

    Returns:
        ``True`` if both settings were taken; ``False`` where there is no glibc (macOS,
        Windows, musl), which leaves the process as it was.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
# --8<-- [end:reuse]
