"""The machine a benchmark ran on, in one line: every benchmark prints it, and every results file keeps it.

A speed is a fact about a machine. The same code decodes several times faster on a CPU with
AVX-512 than on one with AVX2 alone, and bfloat16 is native on some CPUs and emulated (about a
hundred times slower) on others, so a number quoted without the CPU, the instruction set PyTorch
dispatches to (``torch.backends.cpu.get_cpu_capability()``: ``AVX2``, ``AVX512``, ``AVX512_BF16``
and so on), the thread count and the torch release means little.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name as the operating system reports it (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions the CPU reports that matter for these kernels (AVX2, AVX-512 and its bf16)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in flags]


def machine() -> dict:
    """What :func:`machine_line` prints, as a dict for a results file."""
    info = {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict | None = None) -> str:
    """``machine: <CPU>, torch CPU capability <X> (flags), <n> threads of <m> cores, torch <v>``."""
    m = info or machine()
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"machine: {m['cpu']}, torch CPU capability {m['cpu_capability']} ({' '.join(m['cpu_flags']) or 'no AVX'}), "
            f"{m['threads']} threads of {m['cores']} cores, torch {m['torch']}, Python {m['python']}{gpu}")


if __name__ == "__main__":
    print(machine_line())
