"""The decode step compiled ahead of time (AOTInductor): the eager ids, one library per shape, the weights read in place."""

from __future__ import annotations

import pytest
import torch
from helpers import DECODER_CACHE, DECODER_GQA, check_compiled_sampling_and_nan, random_model, unavailable

from llama import ModelConfig, generate

GQA = ModelConfig(**DECODER_GQA)
CLEAR_CUT = 0.08  # weights large enough that each greedy choice is clear-cut (as in test_generation)

# Each compiled library costs 10-20 s of CPU with a cold cache; the suite compiles two, for the
# graphs of the book's example model (the generation chapter compiles the same float32 one).
pytestmark = pytest.mark.compile


def test_exported_decoder_gives_the_eager_ids_and_reads_the_weights_it_was_given():
    from llama.inference.exported import ExportedDecoder

    model = random_model(GQA, seed=3, weights_std=CLEAR_CUT)
    decoder = ExportedDecoder(model, max_seq_len=DECODER_CACHE)
    for prompt in ([1, 17, 42, 5, 88], [2]):  # the cache buffers are reused by the second call
        n = DECODER_CACHE - len(prompt)
        assert decoder.generate(prompt, n) == generate(model, prompt, n)

    # Another model of the same shapes loads the same library, which holds no weights of its own.
    other = random_model(GQA, seed=5, weights_std=CLEAR_CUT)
    assert generate(other, [1, 5, 9], 30) != generate(model, [1, 5, 9], 30)
    second = ExportedDecoder(other, max_seq_len=DECODER_CACHE)
    assert second.loaded_from_cache
    assert second.generate([1, 5, 9], 30) == generate(other, [1, 5, 9], 30)

    # An eager generation between two compiled steps keeps its own cache, as with CompiledDecoder.
    stream, alone = second.generate_stream([1, 5, 9], 12), generate(other, [1, 5, 9], 12)
    got = []
    for token in stream:
        got.append(token)
        generate(other, [7, 7, 7], 3)
    assert got == alone

    # A weight changed in place is what the next step reads; a weight replaced is refused.
    with torch.no_grad():
        model.layers[1].feed_forward.w2.weight.mul_(-1)
    changed = generate(model, [1, 17, 42], 20)
    assert decoder.generate([1, 17, 42], 20) == changed
    model.layers[1].feed_forward.w2.weight.data = model.layers[1].feed_forward.w2.weight.data.clone()
    with pytest.raises(RuntimeError, match="weights were replaced .* make a new ExportedDecoder"):
        decoder.generate([1, 17, 42], 20)
    check_compiled_sampling_and_nan(second, other)


def test_exported_int8_decoder_calls_the_kernel_and_gives_the_eager_ids():
    from llama.inference.exported import ExportedDecoder
    from llama.quantization.kernel import load_kernel
    from llama.quantization.weights import quantize

    if not load_kernel():
        unavailable("the C++ kernel could not be built here (its warning says why)", "install a C++ compiler and ninja")
    model = quantize(random_model(GQA, seed=3, weights_std=CLEAR_CUT), 8, 32)
    decoder = ExportedDecoder(model, max_seq_len=DECODER_CACHE)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ids = decoder.generate([1, 17, 42, 5, 88], 40)
    assert ids == generate(model, [1, 17, 42, 5, 88], 40)
    # 7 products per layer, 2 layers, and the head: per step, all by the kernel (the eager prefill too)
    assert sum(e.count for e in prof.key_averages() if e.key == "llama::quantized_matmul") == 15 * 40


def test_the_library_key_leaves_out_where_the_traced_code_lives():
    """The step traced from a copy of the code (a chapter's listings run by a reader, another
    checkout) has other source locations in its graph; it finds the library compiled from the
    package all the same. A change of the graph itself still changes the key."""
    from llama.inference.exported import _package_key, _Step, _tensors

    model = random_model(GQA, seed=3)
    step = _Step(model, model.new_caches(batch_size=1, max_seq_len=DECODER_CACHE)).eval()
    args = (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        program = torch.export.export(step, args, strict=False)
    key = _package_key(program, _tensors(step))
    traced = [n for n in program.graph.nodes if n.meta.get("stack_trace")]
    assert traced, "the exported graph records no source locations: this test would check nothing"
    for node in traced:
        node.meta["stack_trace"] = node.meta["stack_trace"].replace("llama", "copied/elsewhere")
    program.graph_module.recompile()
    assert "copied/elsewhere" in program.graph_module.print_readable(print_output=False)
    assert _package_key(program, _tensors(step)) == key

    next(n for n in program.graph.nodes if n.op == "call_function").target = torch.ops.aten.sub.Tensor
    program.graph_module.recompile()
    assert _package_key(program, _tensors(step)) != key


def test_a_second_builder_of_the_same_library_waits_for_the_first(tmp_path):
    """Two processes building the same step at once: the second waits on the library's lock while
    the first compiles, then finds the library and loads it. Here two threads, each opening the
    lock file itself, which ``flock`` treats as two holders, as it does two processes."""
    import threading
    import time

    from llama.inference.exported import one_compiler

    path = tmp_path / "step.pt2"
    inside = threading.Event()

    def first_builder():
        with one_compiler(path):
            inside.set()
            time.sleep(0.5)  # compiling
            path.write_bytes(b"the library")

    builder = threading.Thread(target=first_builder)
    builder.start()
    inside.wait()
    with one_compiler(path):
        assert path.read_bytes() == b"the library"  # not missing: it waited for the first builder
    builder.join()
