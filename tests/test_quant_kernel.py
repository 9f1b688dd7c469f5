"""The one-row product of quantized layers: the C++ kernel and its PyTorch fallback equal the reference.

The reference is the written-out product: dequantize the weight, then ``F.linear``. The kernel and
the fallback add the same products in another order, so they agree to float32 rounding (a few
units in the last place of the largest partial sums); greedy ids do not change.

With ``int8_activations`` the math changes: ``x`` is rounded to int8 per group first (GGUF's
``Q8_0`` product). The kernel then equals :func:`llama.quantization.weights.rounded_product`, the same math
written out in PyTorch, to float32 rounding; against the float product it is off by at most what
the rounding of ``x`` allows (``test_rounded_activations_stay_within_their_error_bound``), and
greedy ids may change where two logits were closer than that.

Tests that build the kernel need a C++ compiler, like ``torch.compile``: they are marked
``compile``. The fallback's tests trace with a recording backend, which needs no compiler.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import random_model, unavailable

from llama import ModelConfig, Transformer
from llama.inference.compiled import CompiledDecoder
from llama.inference.generation import generate
from llama.quantization import kernel as quant_kernel
from llama.quantization.weights import (
    KERNEL_ROWS,
    QuantizedLinear,
    dequantize_tensor,
    quantize,
    quantize_tensor,
    rounded_product,
    set_int8_activations,
)

# (out, in, bits, group_size): per row, groups of 32 (an odd number of them: 288 = 9 x 32, and
# 96 = 3 x 32 with the last row's odd group at the end of the tensor), output counts that the four
# rows the AVX-512 kernel reads at a time divide and that they do not (7, 17, 33), widths that are
# not a multiple of the 16 floats of a register (tails), the smallest group (2), groups of 64 and
# 128, a row of 2048 in one group.
CASES = [(48, 64, 8, 64), (48, 64, 8, 32), (48, 64, 4, 32), (8, 96, 8, 32), (8, 96, 4, 32), (33, 96, 4, 96),
         (7, 288, 8, 288), (7, 288, 4, 32), (5, 6, 8, 6), (5, 6, 4, 2), (9, 40, 8, 2), (9, 40, 4, 20), (3, 172, 8, 172),
         (3, 172, 4, 172), (17, 288, 8, 32), (5, 256, 8, 128), (5, 256, 4, 64), (3, 2048, 8, 2048), (3, 2048, 4, 2048)]


def reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """The written-out product: the float weight the pair stands for, then a matrix product."""
    return F.linear(x, dequantize_tensor(q, s, bits, group_size))


def pair(out: int, inp: int, bits: int, group_size: int, seed: int = 0):
    torch.manual_seed(seed)
    w = torch.randn(out, inp) * torch.logspace(-1, 1, out)[:, None]  # rows of different sizes
    return quantize_tensor(w, bits, group_size)


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal to float32 rounding: sums of ``in`` products of size up to ``|want|.max()``."""
    return torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.fixture
def kernel():
    if not quant_kernel.load_kernel():
        unavailable("the C++ kernel could not be built here (its warning says why)",
                    "install a C++ compiler and ninja (apt-get install g++ ninja-build)")


class Recorder:
    """A torch.compile backend that keeps the traced graphs and runs them as they are (no compiler)."""

    def __init__(self) -> None:
        self.graphs: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm.code)
        return gm.forward


@pytest.fixture
def no_kernel(monkeypatch):
    """A machine where the kernel cannot be built: load_inline fails as it does without a compiler."""

    def fail(*args, **kwargs):
        raise RuntimeError("Error building extension 'llama_quant_kernel': c++: not found")

    monkeypatch.setattr(quant_kernel, "_state", {})
    monkeypatch.setattr("torch.utils.cpp_extension.load_inline", fail)
    torch._dynamo.reset()  # traces made with the kernel must not be reused
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("out,inp,bits,group_size", CASES)
def test_fallback_one_row_product_equals_reference(out, inp, bits, group_size):
    q, s = pair(out, inp, bits, group_size)
    x = torch.randn(1, inp)
    assert close(quant_kernel.one_row_product(x, q, s, bits, group_size), reference(x, q, s, bits, group_size)[0])


@pytest.mark.compile
@pytest.mark.parametrize("out,inp,bits,group_size", CASES)
@pytest.mark.parametrize("rows", [1, 3])
def test_kernel_equals_reference(kernel, out, inp, bits, group_size, rows):
    q, s = pair(out, inp, bits, group_size)
    x = torch.randn(rows, inp)
    got = quant_kernel.quantized_matmul(x, q, s, bits, group_size)
    assert got.shape == (rows, out) and got.dtype == torch.float32
    assert close(got, reference(x, q, s, bits, group_size))


@pytest.mark.compile
def test_kernel_refuses_what_it_cannot_read(kernel):
    q, s = pair(8, 64, 8, 32)
    with pytest.raises(RuntimeError, match="must be a contiguous float32"):
        quant_kernel.quantized_matmul(torch.randn(1, 64, dtype=torch.float64), q, s, 8, 32)
    with pytest.raises(RuntimeError, match="do not fit bits and group_size"):
        quant_kernel.quantized_matmul(torch.randn(1, 64), q, s, 4, 32)


@pytest.mark.compile
@pytest.mark.parametrize("bits,group_size", [(8, 64), (8, 32), (4, 32)])
def test_layer_calls_the_kernel_under_compile(kernel, bits, group_size):
    """Up to KERNEL_ROWS rows go to the kernel, inside a fullgraph compile; more rows to the reference."""
    torch.manual_seed(3)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(64, 48, bias=False), bits, group_size)
    torch._dynamo.reset()
    recorder = Recorder()
    traced = torch.compile(layer, fullgraph=True, dynamic=False, backend=recorder)
    shapes = [(1, 1, 64), (64,), (2, 3, 64), (1, KERNEL_ROWS + 1, 64)]  # a decode step, one vector, batches
    for shape in shapes:
        x = torch.randn(shape)
        assert close(traced(x), reference(x, layer.qweight, layer.scales, bits, group_size)), shape
    assert ["quantized_matmul" in code for code in recorder.graphs] == [True, True, True, False]
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)  # Inductor calls the operator itself
    x = torch.randn(1, 1, 64)
    assert close(compiled(x), reference(x, layer.qweight, layer.scales, bits, group_size))


def test_kernel_ready_is_marked_as_the_public_decorator_marks():
    """kernel.py marks ``kernel_ready`` by hand (the decorator's import of torch._dynamo costs every
    process 1.4 s): the mark must be the one ``torch.compiler.assume_constant_result`` sets."""
    def probe() -> bool:
        return True

    before = set(vars(probe))
    torch.compiler.assume_constant_result(probe)
    marks = {name: value for name, value in vars(probe).items() if name not in before}
    assert marks and all(getattr(quant_kernel.kernel_ready, name, None) == value for name, value in marks.items())


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_library_does_not_import_the_compiler():
    code = "import sys, llama.inference.generation, llama.quantization.weights; print('torch._dynamo' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.compile
def test_eager_calls_use_the_kernel_once_it_is_built(kernel, monkeypatch):
    torch.manual_seed(5)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(64, 48, bias=False), 4, 32)
    calls = []
    monkeypatch.setattr("llama.quantization.weights.quantized_matmul",
                        lambda *args: calls.append(args[0].shape) or quant_kernel.quantized_matmul(*args))
    for shape in [(1, 1, 64), (3, 8, 64), (1, KERNEL_ROWS + 1, 64)]:  # a step, a prompt, a long prompt
        x = torch.randn(shape)
        assert close(layer(x), reference(x, layer.qweight, layer.scales, 4, 32))
    assert calls == [(1, 64), (24, 64)]
    x = torch.randn(1, 64, requires_grad=True)  # the operator has no backward: the reference has
    layer(x).sum().backward()
    assert x.grad is not None and calls == [(1, 64), (24, 64)]
    meta = layer.to("meta")  # another device: the kernel is for the CPU only
    assert meta(torch.randn(1, 64, device="meta")).shape == (1, 48) and calls == [(1, 64), (24, 64)]


@pytest.mark.parametrize("bits,group_size", [(8, 64), (4, 32)])
def test_without_a_compiler_the_layer_falls_back_to_pytorch_sums(no_kernel, bits, group_size):
    torch.manual_seed(4)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(64, 48, bias=False), bits, group_size)
    recorder = Recorder()
    traced = torch.compile(layer, fullgraph=True, dynamic=False, backend=recorder)
    x = torch.randn(1, 1, 64)
    with pytest.warns(UserWarning, match="computed in PyTorch instead"):
        got = traced(x)
    assert close(got, reference(x, layer.qweight, layer.scales, bits, group_size))
    assert len(recorder.graphs) == 1 and "quantized_matmul" not in recorder.graphs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the answer is kept
        assert quant_kernel.load_kernel() is False
    x = torch.randn(2, 64)  # eager calls: the reference itself
    assert torch.equal(layer(x), reference(x, layer.qweight, layer.scales, bits, group_size))


def assert_same_ids_or_a_float_tie(model, prompt: list[int], compiled: list[int], eager: list[int]) -> None:
    """The compiled decoder's ids are eager's, or they part where eager's two candidates nearly tie.

    Inductor adds the graph's other sums (norms, attention) in another order, and the differences
    pass through the KV cache from step to step: with random weights, a tie within 1% of the
    logits' standard deviation can fall either way (seen: 0.1% at step 12, in some runs only). A
    wrong kernel or layout parts at once, by a wide margin."""
    if compiled == eager:
        return
    i = next(k for k, (a, b) in enumerate(zip(compiled, eager)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + eager[:i]]))[0, -1]
    gap = float(logits[eager[i]] - logits[compiled[i]])
    assert 0 <= gap < 1e-2 * float(logits.std()), (i, gap, float(logits.std()))


def quantize_by_layer(model: Transformer, schemes: list[tuple[int, int | None]]) -> Transformer:
    """Block ``i`` of ``model`` quantized with ``schemes[i]`` (bits, group size), the head kept in float:
    one compiled graph then calls the kernel in every format (a compile takes seconds with a cold cache)."""
    for block, (bits, group_size) in zip(model.layers, schemes, strict=True):
        quantize(block, bits, group_size)
    return model


@pytest.mark.compile
def test_compiled_decoding_with_the_kernel_keeps_the_greedy_ids(kernel):
    config = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=97, hidden_dim=96, max_seq_len=64)
    model = random_model(config, random_gains=False, weights_std=0.08)
    qmodel = quantize_by_layer(copy.deepcopy(model), [(8, None), (8, 32), (4, 32)])
    decoder = CompiledDecoder(qmodel, max_seq_len=32)
    assert_same_ids_or_a_float_tie(qmodel, [1, 5, 9], decoder.generate([1, 5, 9], 24), generate(qmodel, [1, 5, 9], 24))


# ------------------------------------------------------------------------ int8 activations (Q8_0's math)
def test_round_activations_is_within_half_a_step():
    torch.manual_seed(6)
    x = torch.randn(3, 96) * torch.logspace(-2, 2, 96)
    x[1, 32:64] = 0  # an all-zero group: scale 0, integers 0
    q, d = quant_kernel.round_activations(x, 32)
    assert q.dtype == torch.int8 and d.shape == (3, 3) and int(q.abs().max()) == 127
    assert d[1, 1] == 0 and not q[1, 32:64].any()
    step = d.repeat_interleave(32, dim=1)
    assert ((q * step - x).abs() <= step / 2 * (1 + 1e-6)).all()


@pytest.mark.compile
@pytest.mark.parametrize("out,inp,bits,group_size", CASES)
@pytest.mark.parametrize("rows", [1, 3])
def test_kernel_with_int8_activations_equals_the_written_out_math(kernel, out, inp, bits, group_size, rows):
    q, s = pair(out, inp, bits, group_size)
    torch.manual_seed(1)
    x = torch.randn(rows, inp)
    x[-1, :group_size] = 0  # a group of zeros: its scale is 0
    got = quant_kernel.quantized_matmul(x, q, s, bits, group_size, int8_activations=True)
    assert close(got, rounded_product(x, q, s, bits, group_size))


@pytest.mark.compile
@pytest.mark.parametrize("bits,group_size", [(8, 32), (4, 32), (8, 256)])
def test_rounded_activations_stay_within_their_error_bound(kernel, bits, group_size):
    """Rounding x moves each x_i by at most d_g / 2, so y_o moves by at most sum_i |w_oi| d_g(i) / 2."""
    q, s = pair(64, 256, bits, group_size)
    torch.manual_seed(2)
    x = torch.randn(4, 256)
    _, d = quant_kernel.round_activations(x, group_size)
    w = dequantize_tensor(q, s, bits, group_size)
    bound = w.abs() @ (d.repeat_interleave(group_size, dim=1) / 2).T  # [out, rows]
    error = (quant_kernel.quantized_matmul(x, q, s, bits, group_size, True) - F.linear(x, w)).abs().T
    assert (error <= bound * 1.001 + 1e-5).all()
    assert error.max() > 1e-4  # the math did change: the rounding shows


@pytest.mark.compile
@pytest.mark.parametrize("march", ["haswell", "x86-64"])
def test_the_avx2_and_the_portable_builds_compute_the_same(march):
    """Built for AVX2 without AVX-512 (-march=haswell) or for any x86-64 (the plain C++ loops): one build
    per process, so each in a child process, checked against the written-out math of both kinds."""
    script = textwrap.dedent(f"""
        import torch, torch.nn.functional as F
        from llama.quantization import kernel as qk
        from llama.quantization.weights import dequantize_tensor, quantize_tensor, rounded_product
        assert qk.load_kernel(march={march!r})
        for out, inp, bits, group in {CASES!r}:
            torch.manual_seed(0)
            q, s = quantize_tensor(torch.randn(out, inp), bits, group)
            x = torch.randn(2, inp)
            for got, want in [(qk.quantized_matmul(x, q, s, bits, group, True), rounded_product(x, q, s, bits, group)),
                              (qk.quantized_matmul(x, q, s, bits, group), F.linear(x, dequantize_tensor(q, s, bits, group)))]:
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max())), (out, inp, bits, group)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    if "could not be built" in done.stderr:
        unavailable(f"the kernel could not be built with -march={march}", "install a C++ compiler and ninja")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.compile
@pytest.mark.parametrize("bits", [8, 4])
def test_int8_activations_are_the_same_math_on_every_path(kernel, bits):
    """The kernel (a step, a short prompt) and the reference (a long prompt) both round x first."""
    torch.manual_seed(7)
    layer = set_int8_activations(QuantizedLinear.from_linear(torch.nn.Linear(64, 48, bias=False), bits, 32))
    x = torch.randn(1, KERNEL_ROWS + 1, 64)
    want = rounded_product(x[0], layer.qweight, layer.scales, bits, 32)
    assert close(layer(x)[0], want)  # more rows than the kernel takes: dequantized x times dequantized W
    assert close(layer(x[:, :3])[0], want[:3])  # the kernel


@pytest.mark.compile
def test_compiled_decoding_with_int8_activations_keeps_eager_greedy_ids(kernel):
    """Compiled and eager decoding compute the same rounded math: the same ids (the float math's may differ).
    The first block holds int8 weights, the second int4."""
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, hidden_dim=96, max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.08)
    qmodel = set_int8_activations(quantize_by_layer(copy.deepcopy(model), [(8, 32), (4, 32)]))
    compiled = CompiledDecoder(qmodel, max_seq_len=32).generate([1, 5, 9], 24)
    assert_same_ids_or_a_float_tie(qmodel, [1, 5, 9], compiled, generate(qmodel, [1, 5, 9], 24))
