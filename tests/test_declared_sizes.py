"""Sizes a file declares, checked before they size anything: a context length, a number of layers or
a width that the tensors present do not bear out is one line naming the file, not gigabytes of RoPE
tables, a name table that runs out of memory, or a whole model built before its tensors were read.

The hostile files are made here. Spies stand where the allocation would be (the RoPE tables, a
model off the ``meta`` device, a name table) and fail the test instead of allocating; the slow test
runs the same commands in a process whose address space is limited to 2 GiB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from helpers import HANG_SECONDS, HOSTILE_TINY, REPO, hf_folder, random_model, refused, sharded_folder

import llama.cli.main
import llama.formats.checkpoint
import llama.formats.convert
import llama.formats.gguf
import llama.formats.load
import llama.model.transformer
from llama import ModelConfig, Transformer
from llama.cli.main import main
from llama.model.config import MAX_SEQ_LEN
from llama.quantization.weights import quantize, save_quantized

TINY = HOSTILE_TINY
HUGE_WIDTH = dict(dim=40960, n_heads=320, n_kv_heads=320, hidden_dim=64)  # a 27 GB model, from tiny tensors


# ------------------------------------------------------------------------------ the hostile files
def gguf_file(path: Path, **metadata) -> Path:
    return helpers.gguf_file(path, ModelConfig(**TINY), **metadata)




def quantized_folder(path: Path, **config_fields) -> Path:
    save_quantized(quantize(random_model(ModelConfig(**TINY)), 8), path)
    meta = json.loads((path / "quantized.json").read_text())
    meta["config"].update(config_fields)
    (path / "quantized.json").write_text(json.dumps(meta))
    return path




def meta_folder(path: Path, **params) -> Path:
    path.mkdir(parents=True)
    base = {"dim": 32, "n_layers": 1, "n_heads": 4, "vocab_size": 50, "multiple_of": 64, "norm_eps": 1e-5}
    (path / "params.json").write_text(json.dumps({**base, **params}))
    torch.save(random_model(ModelConfig(**{**TINY, "hidden_dim": None, "multiple_of": 64})).state_dict(),
               path / "consolidated.00.pth")
    return path


# ------------------------------------------------------------------------------------ the spies
@pytest.fixture
def no_allocation(monkeypatch):
    """Fail, instead of allocating, where a declared size would be allocated before it is checked."""
    real_rope, real_init = llama.model.transformer.rope_cache, Transformer.__init__

    def rope_cache(head_dim, seq_len, *args, **kwargs):
        if seq_len > MAX_SEQ_LEN and torch.empty(0).device.type != "meta":
            pytest.fail(f"RoPE tables of {seq_len} positions were made")
        return real_rope(head_dim, seq_len, *args, **kwargs)

    def init(self, config):
        if torch.empty(0).device.type != "meta" and config.dim > 4096:
            pytest.fail(f"a model of width {config.dim} was built before its tensors were compared")
        if config.n_layers > 10_000:  # even on the meta device: a module for every layer
            pytest.fail(f"a model of {config.n_layers} layers was built before its tensors were counted")
        real_init(self, config)

    def guard(real):
        def names(n_layers, *args):
            if n_layers > 10_000:
                pytest.fail(f"a table of names for {n_layers} layers was made")
            return real(n_layers, *args)
        return names

    def shapes_guard(config):
        if config.n_layers > 10_000:
            pytest.fail(f"the shapes of {config.n_layers} layers were listed")
        return llama.formats.convert.expected_shapes(config)

    monkeypatch.setattr(llama.model.transformer, "rope_cache", rope_cache)
    monkeypatch.setattr(Transformer, "__init__", init)
    monkeypatch.setattr(llama.formats.gguf, "_names", guard(llama.formats.gguf._names))
    monkeypatch.setattr(llama.formats.convert, "_names", guard(llama.formats.convert._names))
    monkeypatch.setattr(llama.formats.checkpoint, "expected_shapes", shapes_guard)




# ------------------------------------------------------------------------------- context length
@pytest.mark.parametrize("make", [
    lambda tmp: gguf_file(tmp / "model.gguf", **{"llama.context_length": 2_000_000_000}),
    lambda tmp: hf_folder(tmp / "hf", max_position_embeddings=2_000_000_000),
    lambda tmp: quantized_folder(tmp / "q", max_seq_len=2_000_000_000),
    lambda tmp: sharded_folder(tmp / "step-0000004", max_seq_len=2_000_000_000),
], ids=["gguf", "config.json", "quantized.json", "state.json"])
def test_a_context_length_of_2e9_in_a_file(tmp_path, capsys, no_allocation, make):
    path = make(tmp_path)
    err = refused(capsys, ["generate", str(path), "-n", "3"])
    assert str(path) in err and "max_seq_len=2000000000 is more positions than the 1,048,576 (2**20)" in err
    assert "--max-seq-len N sets it" in err


@pytest.mark.parametrize("command", ["generate", "convert"])
def test_a_max_seq_len_flag_of_2e9(tmp_path, capsys, monkeypatch, no_allocation, command):
    path = hf_folder(tmp_path / "hf")
    monkeypatch.setattr(llama.formats.load, "load_model", lambda *a, **k: pytest.fail("the model was read first"))
    extra = ["--to", "hf", str(tmp_path / "out")] if command == "convert" else []
    err = refused(capsys, [command, str(path), *extra, "--max-seq-len", "2000000000"])
    assert "--max-seq-len must be a number of positions from 1 to 1,048,576 (2**20), got 2000000000" in err


def test_max_seq_len_loads_a_file_that_declares_a_longer_context(tmp_path, capsys, no_allocation):
    # A context beyond the ceiling is refused, never shortened silently; the flag shortens it on purpose.
    path = hf_folder(tmp_path / "hf", max_position_embeddings=2**21)
    assert main(["generate", str(path), "-n", "3", "--max-seq-len", "64"]) == 0
    assert len(capsys.readouterr().out.split()) == 3


# ---------------------------------------------------------------------------- number of layers
@pytest.mark.parametrize("make", [
    lambda tmp: gguf_file(tmp / "model.gguf", **{"llama.block_count": 20_000_000}),
    lambda tmp: hf_folder(tmp / "hf", num_hidden_layers=20_000_000),
    lambda tmp: meta_folder(tmp / "meta", n_layers=20_000_000),
    lambda tmp: quantized_folder(tmp / "q", n_layers=20_000_000),
    lambda tmp: sharded_folder(tmp / "step-0000004", n_layers=20_000_000),
], ids=["gguf", "config.json", "params.json", "quantized.json", "state.json"])
def test_2e7_layers_declared_by_a_file_of_one(tmp_path, capsys, no_allocation, make):
    path = make(tmp_path)
    err = refused(capsys, ["generate", str(path), "-n", "3"])
    assert str(path) in err and "declares 20000000 layers, which have at least 180000002 tensors, but it holds" in err


# ------------------------------------------------------------------------ a width the tensors lack
@pytest.mark.parametrize("make", [
    lambda tmp: quantized_folder(tmp / "q", **HUGE_WIDTH),
    lambda tmp: sharded_folder(tmp / "step-0000004", **HUGE_WIDTH),
], ids=["quantized.json", "state.json"])
def test_a_config_wider_than_its_tensors_is_refused_before_the_model_is_built(tmp_path, capsys, no_allocation, make):
    path = make(tmp_path)
    err = refused(capsys, ["generate", str(path), "-n", "3"])
    assert str(path) in err and "has shape (50, 32) but the config implies (50, 40960)" in err


def test_a_quantized_file_with_a_tensor_of_another_shape(tmp_path, capsys):
    # load_state_dict found it only after the model was built, and then with a traceback.
    from safetensors.torch import load_file, save_file

    path = quantized_folder(tmp_path / "q")
    sd = load_file(path / "model.safetensors")
    sd["layers.0.attention.wq.scales"] = sd["layers.0.attention.wq.scales"][:16].clone()
    save_file(sd, path / "model.safetensors")
    err = refused(capsys, ["generate", str(path), "-n", "3"])
    assert "tensor layers.0.attention.wq.scales has shape (16, 1) but the config implies (32, 1)" in err


# --------------------------------------------------------------- in 2 GiB of address space
@pytest.mark.slow  # a fresh interpreter
def test_the_hostile_files_are_refused_in_2_gib_of_address_space(tmp_path):
    """Without spies: each command must end in its one-line refusal where an allocation of the
    declared size would fail (torch raises, or Python's MemoryError) instead."""
    commands = [
        ["generate", str(gguf_file(tmp_path / "model.gguf", **{"llama.context_length": 2_000_000_000}))],
        ["generate", str(hf_folder(tmp_path / "hf", max_position_embeddings=2_000_000_000))],
        ["generate", str(hf_folder(tmp_path / "hf2")), "--max-seq-len", "2000000000"],
        ["generate", str(quantized_folder(tmp_path / "q", **HUGE_WIDTH))],
        ["generate", str(sharded_folder(tmp_path / "step-0000004", **HUGE_WIDTH))],
        ["generate", str(gguf_file(tmp_path / "layers.gguf", **{"llama.block_count": 20_000_000}))],
    ]
    script = """if True:
        import contextlib, io, json, resource, sys
        limit = 2 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from llama.cli.main import main
        results = []
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = main(argv + ["-n", "2"])
            except BaseException as e:  # a MemoryError or torch's allocation error: the old behaviour
                code = f"{type(e).__name__}: {str(e)[:200]}"
            results.append([code, err.getvalue()])
        print(json.dumps(results))
    """
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], cwd=REPO, capture_output=True,
                          text=True, timeout=HANG_SECONDS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for argv, (code, err) in zip(commands, json.loads(proc.stdout.splitlines()[-1])):
        assert code == 2 and err.count("\n") == 1, (argv, code, err)
