"""GB/s of weights read by each one-row product of a quantized layer: PyTorch's kernels, the compiled sums, ours.

Run from the repository root::

    python benchmarks/quant_kernels.py                  # this CPU, then emulated AVX2 (on an AVX-512 CPU)
    python benchmarks/quant_kernels.py --quick          # one small shape, to check that the script works

One row ``x`` (``[1, in]``, float32) times ``[out, in]`` weights, as in a decode step, for the
shapes of the stories110M-like config's matrices (768 x 768, 2048 x 768, 768 x 2048) and of the
32000 x 768 output head, in each format the book uses: int8 with a scale per row, int8 with a
scale per 32 inputs, int4 with a scale per 32 inputs. As a decode step goes through its layers,
each timed call multiplies ``x`` by ``k`` distinct matrices of the shape: as many as make 64 MiB
in float32 (at most 16; the head: 1), so float32 reads its weights from memory, not from the
cache. The kernels:

- float32 ``F.linear`` and float32 compiled (:class:`llama.model.linear.Linear`'s one-row sum under
  ``torch.compile``): the yardstick, 4 bytes per weight;
- compiled sums: :func:`llama.quantization.kernel.one_row_product` under ``torch.compile``, the path
  quantized layers took before the C++ kernel (and take without a compiler);
- ATen int8: ``torch.ops.aten._weight_int8pack_mm`` (one float32 scale per row only, so only
  the per-row format); ATen int4: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` on the weight
  converted by ``_convert_weight_to_int4pack_for_cpu`` (values ``q + 8``, float32 scales and
  zero offsets 0: the same numbers as the book's format);
- C++ kernel: ``torch.ops.llama.quantized_matmul`` (:mod:`llama.quantization.kernel`), called eagerly
  and from a compiled graph; "int8 x": the same kernel with ``int8_activations=True``, ``x`` rounded to
  int8 per group and integer products (GGUF's ``Q8_0`` math), checked against
  :func:`llama.quantization.weights.rounded_product` instead of ``F.linear``.

Compiled functions are called as :class:`llama.inference.compiled.CompiledDecoder` calls its step (C++
wrapper, guards skipped), the ``k`` products in one graph. GB/s counts the bytes of the weights
as stored (integers and float16 scales, or float32 scales and zeros for ATen's int4; 4 bytes per
float32 weight) over the time of a call: the median of 5 timings of loops of calls, each about
0.1 s. "vs float32" is float32 compiled's time over the kernel's, for the same products. Every
kernel's result is checked first: against ``F.linear`` with the dequantized weight, or for the
int8-activation rows against the written-out rounded product.

On an AVX-512 machine the same table is printed again from a child process with
``ATEN_CPU_CAPABILITY=avx2`` (ATen's and Inductor's kernels take their AVX2 versions; Inductor
gets a cache folder of its own) and our kernel built with ``-march=haswell`` (AVX2 and FMA, no
AVX-512): an emulation of an AVX2-only CPU's instructions, not of its memory or clock.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line  # noqa: E402

from llama.quantization import kernel as quant_kernel  # noqa: E402
from llama.quantization.weights import (  # noqa: E402
    dequantize_tensor,
    quantize_tensor,
    rounded_product,
    unpack_int4,
)

SHAPES = [(768, 768), (2048, 768), (768, 2048), (32000, 768)]
FORMATS = [("int8/row", 8, None), ("int8/32", 8, 32), ("int4/32", 4, 32)]


def timed(fn, repeats: int = 5, seconds: float = 0.1) -> float:
    """Median seconds of one call of ``fn`` (loops of calls, each about ``seconds``)."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 4:
        fn()
        calls += 1
    n = max(1, calls * 4)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def compiled(fn):
    """``fn`` compiled as :class:`~llama.inference.compiled.CompiledDecoder` compiles a step (C++ wrapper, no guards).

    Guards are what tell two compiled lambdas of the same line apart, so Dynamo forgets earlier
    compilations first: time each compiled function before making the next.
    """
    torch._dynamo.reset()
    step = torch.compile(fn, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    step_x = {}

    def call(x):
        if not step_x:
            step_x["first"] = step(x)  # the first call compiles, with guards
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return step(x)

    return call


def kernels(weights: list[torch.Tensor], bits: int, group: int | None, kernel: bool):
    """``(name, function of x, bytes it reads)`` for each kernel of one format, checked against F.linear."""
    out, inp = weights[0].shape
    group = group or inp
    pairs = [quantize_tensor(w, bits, group) for w in weights]
    nbytes = sum(q.numel() + 2 * s.numel() for q, s in pairs)
    found = [("compiled sums", lambda: compiled(lambda x: [quant_kernel.one_row_product(x, q, s, bits, group)
                                                           for q, s in pairs]), nbytes)]
    if bits == 8 and group == inp:
        rows = [(q, s[:, 0].float()) for q, s in pairs]
        found.append(("ATen int8", lambda: lambda x: [torch.ops.aten._weight_int8pack_mm(x, q, s) for q, s in rows],
                      sum(q.numel() + 4 * out for q, _ in rows)))
    if bits == 4 and inp % 32 == 0:
        packed = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(q, group).int() + 8, 1),
                   torch.stack([s.float().t(), torch.zeros(inp // group, out)], dim=-1).contiguous())  # scale, zero
                  for q, s in pairs]
        found.append(("ATen int4", lambda: lambda x: [torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, group, sz)
                                                      for p, sz in packed],
                      sum(p.numel() + 4 * sz.numel() for p, sz in packed)))
    if kernel:
        found.append(("C++ kernel", lambda: lambda x: [quant_kernel.quantized_matmul(x, q, s, bits, group)
                                                       for q, s in pairs], nbytes))
        found.append(("C++ kernel, compiled", lambda: compiled(lambda x: [
            quant_kernel.quantized_matmul(x, q, s, bits, group) for q, s in pairs]), nbytes))
        found.append(("C++ kernel, int8 x", lambda: lambda x: [
            quant_kernel.quantized_matmul(x, q, s, bits, group, True) for q, s in pairs], nbytes))
        found.append(("C++ kernel, int8 x, compiled", lambda: compiled(lambda x: [
            quant_kernel.quantized_matmul(x, q, s, bits, group, True) for q, s in pairs]), nbytes))
    x = torch.randn(1, inp)
    q, s = pairs[-1]
    want = F.linear(x, dequantize_tensor(q, s, bits, group))
    rounded = rounded_product(x, q, s, bits, group)  # what the int8-activation rows compute
    for name, make, size in found:
        fn = make()
        reference = rounded if "int8 x" in name else want
        err = float((fn(x)[-1].reshape(1, out) - reference).abs().max() / reference.abs().max())
        if err > 1e-5:
            raise SystemExit(f"{name}, {out}x{inp} {bits}-bit groups of {group}: relative error {err:.2g}")
        yield name, (lambda fn=fn: fn(x)), size


def table(shapes, march: str) -> None:
    kernel = quant_kernel.load_kernel(march=march)
    print(f"{machine_line()}; our kernel built with -march={march}{'' if kernel else ' FAILED'}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| shape | k | format | kernel | GB/s | vs float32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for out, inp in shapes:
        k = 1 if out == 32000 else min(16, math.ceil(64 * 2**20 / (4 * out * inp)))
        torch.manual_seed(0)
        weights = [torch.randn(out, inp) * 0.05 for _ in range(k)]
        x = torch.randn(1, inp)
        with torch.no_grad():
            step = compiled(lambda x: [(w * x).sum(-1) for w in weights])  # Linear's one-row product
            f32 = {"F.linear": timed(lambda: [F.linear(x, w) for w in weights]), "compiled": timed(lambda: step(x))}
            step = None  # frees the compiled function before the next shape
            for name, seconds in f32.items():
                rate = 4 * out * inp * k / seconds / 1e9
                print(f"| {out}x{inp} | {k} | float32 | {name} | {rate:.1f} | {f32['compiled'] / seconds:.2f}x |")
            for fmt, bits, group in FORMATS:
                for name, fn, nbytes in kernels(weights, bits, group, kernel):
                    seconds = timed(fn)
                    print(f"| {out}x{inp} | {k} | {fmt} | {name} | {nbytes / seconds / 1e9:.1f} | "
                          f"{f32['compiled'] / seconds:.2f}x |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small shape")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--march", default=None, help=argparse.SUPPRESS)  # the child's AVX2 emulation
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [(768, 768)] if args.quick else SHAPES
    table(shapes, args.march or "native")
    if args.march is None and torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        # Inductor's cache does not tell the two ISAs apart: kernels cached by the AVX-512 run would
        # be loaded by the AVX2 one (and gave wrong sums with torch 2.13), so it gets a cache of its own.
        cache = Path(tempfile.gettempdir()) / f"torchinductor_avx2_{getpass.getuser()}"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        cmd = [sys.executable, __file__, "--march", "haswell", "--threads", str(args.threads)]
        subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
