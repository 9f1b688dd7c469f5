"""What a command writes, and what it must leave alone: a folder holding the user's own model is
not overwritten by ``llama convert``, and an adapter that would merge into NaN or infinite weights
is refused before anything is written (the library's own loader refused the file it wrote)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import HOSTILE_TINY, random_model, refused, snapshot
from safetensors.torch import load_file, save_file

import llama.cli.main
import llama.formats.load
from llama import ModelConfig
from llama.cli.main import main
from llama.formats.load import save_model
from llama.training.lora import LoRAConfig, add_lora, load_adapter, merge_into_base, save_adapter

TINY = HOSTILE_TINY








# ------------------------------------------------------------------------ a folder of the user's own
@pytest.mark.parametrize("to", [["--to", "hf"], ["--to", "quantized", "--quantize", "int8"]])
def test_convert_leaves_a_folder_holding_a_model_as_it_is(tmp_path, capsys, monkeypatch, source, to):
    mine = tmp_path / "mine"
    save_model(random_model(ModelConfig(**TINY), seed=1), mine)  # the user's own model
    (mine / "notes.txt").write_text("mine\n")
    before = snapshot(mine)
    monkeypatch.setattr(llama.formats.load, "load_model", lambda *a, **k: pytest.fail("the source was read first"))
    err = refused(capsys, ["convert", str(source), str(mine), *to])
    assert f"{mine / 'config.json'} exists: it was left as it is; choose an empty or new folder" in err
    assert snapshot(mine) == before


def test_convert_writes_into_a_folder_of_other_files(tmp_path, capsys, source):
    # A tokenizer or a README beside the weights is usual: only a checkpoint's own files are refused.
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    assert main(["convert", str(source), str(out), "--to", "hf"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").read_text() == "{}"


# ------------------------------------------------------------------------------ a merge gone bad
def adapter(folder: Path, alpha: float = 16.0, nan: bool = False) -> Path:
    """A trained-looking adapter saved in PEFT's layout, with ``lora_alpha`` set to ``alpha``
    (a ``B`` of large entries, ~1,000, so that an alpha of 1e38 overflows float32 when merged)."""
    model = random_model(ModelConfig(**TINY))
    add_lora(model, LoRAConfig(rank=2, alpha=8.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1000.0)  # a trained adapter: B is no longer zero
    save_adapter(model, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": alpha}))
    if nan:
        tensors = load_file(folder / "adapter_model.safetensors")
        name = sorted(tensors)[0]
        tensors[name][0, 0] = float("nan")
        save_file(tensors, folder / "adapter_model.safetensors")
    return folder


@pytest.mark.parametrize("kind", ["nan", "alpha", "float16"])
def test_convert_refuses_an_adapter_that_would_merge_into_nan(tmp_path, capsys, source, kind):
    # An alpha of 1e38 overflows float32 when merged; one of 1e30 merges into weights near 1e32,
    # finite in float32 but infinite once cast to float16.
    alpha = {"nan": 16.0, "alpha": 1e38, "float16": 1e30}[kind]
    folder = adapter(tmp_path / "adapter", alpha=alpha, nan=kind == "nan")
    out = tmp_path / "merged"
    dtype = ["--dtype", "float16"] if kind == "float16" else []
    err = refused(capsys, ["convert", str(source), str(out), "--to", "hf", "--merge-adapter", str(folder), *dtype])
    if kind == "nan":
        assert f"{folder / 'adapter_model.safetensors'}: tensor" in err and "holds NaN or infinity in 1 of" in err
    elif kind == "alpha":
        assert "merging the adapter would put NaN or infinity in" in err and "alpha 1e+38" in err
    else:
        assert f"merged with {folder} as float16: tensor" in err and "nothing was written" in err
    assert not out.exists()


def test_generate_refuses_an_adapter_that_would_merge_into_infinity(tmp_path, capsys, source):
    folder = adapter(tmp_path / "adapter", alpha=1e38)
    err = refused(capsys, ["generate", str(source), "--adapter", str(folder), "-n", "3"])
    assert "merging the adapter would put NaN or infinity" in err and "nothing was merged" in err


def test_a_refused_merge_changes_no_layer(tmp_path):
    model = random_model(ModelConfig(**TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_adapter(model, adapter(tmp_path / "adapter", alpha=1e38))
    with pytest.raises(ValueError, match="nothing was merged"):
        merge_into_base(model)
    for name, m in model.named_modules():
        if hasattr(m, "lora_A"):
            assert torch.equal(m.weight, before[f"{name}.weight"]), name
