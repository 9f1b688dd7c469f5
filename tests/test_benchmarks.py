"""The benchmarks' own machinery (not their speeds: those are measured, never tested): the machine
line every benchmark prints, and the llama.cpp peer's files, written by our ``llama convert``."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from helpers import REPO, load_module

from llama import ModelConfig
from llama.formats.gguf import read_gguf
from llama.quantization.weights import quantize


def _bench(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))  # decode.py imports machine.py as its neighbour
    return load_module(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")


def test_machine_line_names_cpu_capability_threads_and_torch():
    line = _bench("machine").machine_line()
    assert line.startswith("machine: ")
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()} " in line
    assert f"{torch.get_num_threads()} threads of " in line
    assert f"torch {torch.__version__}" in line


def test_every_benchmark_prints_the_machine_line():
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        if path.name == "machine.py":
            continue
        assert "machine_line(" in path.read_text(), f"{path.name} does not print the machine it ran on"


def test_no_benchmark_or_test_builds_another_projects_source():
    """llama.cpp comes from the package index; nothing here locates, copies or compiles run.c."""
    for folder in ("benchmarks", "tests", "llama"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "test_benchmarks.py":
                continue
            text = path.read_text()
            assert not re.search(r"llama2c/|tokenizer\.bin|\"gcc\"|'gcc'", text), path


@pytest.mark.slow
def test_the_llama_cpp_files_hold_the_benchmarked_weights(tmp_path, shared_file):
    """The GGUF files the llama.cpp columns run are the very weights our engines decode: F32 equal,
    Q8_0 and Q4_0 the integers and scales of our int8/int4 in groups of 32."""
    shared_file("llama2-tokenizer.model")  # llama.cpp needs a vocabulary in the file
    decode = _bench("decode")
    config = ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=32000, hidden_dim=64,
                         max_seq_len=32, tie_embeddings=True)
    model = decode.scaled_random_model(config)
    paths = decode.write_gguf_files(model, tmp_path, ["F32", "Q8_0", "Q4_0"])
    _, f32 = read_gguf(paths["F32"])
    assert set(f32) == set(model.state_dict()) - {"output.weight"}  # tied: the head is the embedding
    for name, tensor in f32.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    for fmt, bits in (("Q8_0", 8), ("Q4_0", 4)):
        ours = quantize(decode.scaled_random_model(config), bits, 32)
        _, theirs = read_gguf(paths[fmt])
        assert set(theirs) == set(ours.state_dict()), fmt
        for name, tensor in ours.state_dict().items():
            assert torch.equal(theirs[name], tensor), (fmt, name)
    prompt = decode.prompt_ids(32000)
    assert len(prompt) == decode.PROMPT_LEN and prompt[0] == 1


def test_the_decode_table_marks_a_missing_peer_as_skipped_and_a_disagreement_with_its_tie():
    decode = _bench("decode")
    result = {"config": "x", "tok_s": {k: [10.0, 12.0] for k in ("eager", "compiled", "int8", "transformers")},
              "agreement": {"eager": None, "transformers": {"position": 84, "gap": 0.002, "std": 0.5}},
              "compile_s": 1.0, "weight_bytes_per_token": 10**6}
    result["median"] = {k: 11.0 for k in result["tok_s"]}
    header, _, row = decode.table([result], bandwidth=1e9)
    cells = dict(zip(header.split(" | "), row.split(" | ")))
    assert cells["llama.cpp F32 tok/s"] == "skipped" and cells["compiled tok/s"] == "11 (12)"
    assert cells["compiled / llama.cpp F32"] == "-" and cells["bound tok/s"] == "1000"
    assert cells["same ids as compiled"] == "transformers 84/128, gap 0.40% of σ"
    assert cells["Q8_0 ids = int8's"] == "-"


def test_a_disagreement_is_located_and_measured_on_our_logits():
    decode = _bench("decode")
    model = decode.scaled_random_model(ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=50, max_seq_len=16))
    ours = decode.generate(model, [1, 2], 6)
    assert decode.divergence(model, [1, 2], ours, list(ours)) is None
    other = ours[:3] + [(ours[3] + 1) % 50] + ours[4:]
    d = decode.divergence(model, [1, 2], ours, other)
    logits = model(torch.tensor([[1, 2] + ours[:3]]))[0, -1]
    assert d["position"] == 3 and d["gap"] == pytest.approx(float(logits[ours[3]] - logits[other[3]]))
    assert d["gap"] > 0 and d["std"] == pytest.approx(float(logits.std()), rel=1e-5)


def test_a_page_shows_a_results_file_in_place_of_its_marker(tmp_path):
    hook = _bench_hook()
    text = "before\n<!-- results: benchmarks/results/decode.md -->\nafter\n"
    shown = hook.render_results(text, "generation.md")
    assert shown.startswith("before\n`python benchmarks/decode.py") and shown.endswith("\nafter\n")
    assert "| config | eager tok/s |" in shown and "machine: " in shown
    with pytest.raises(hook.PluginError, match="generation.md: benchmarks/results/nothing.md not found: run the "
                                           "benchmark that writes it with --save"):
        hook.render_results("<!-- results: benchmarks/results/nothing.md -->", "generation.md")


def test_every_results_marker_of_the_book_names_a_committed_file():
    hook = _bench_hook()
    found = 0
    for page in (REPO / "book").glob("*.md"):
        for match in hook.RESULTS.finditer(page.read_text()):
            found += 1
            assert (REPO / match["path"]).is_file(), f"{page.name}: {match['path']}"
    assert found, "no page shows a benchmark's results file"


def _bench_hook():
    return load_module("_results_hook", REPO / "hooks" / "results.py")
