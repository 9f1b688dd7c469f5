"""Numbers in a model's config that are of the right type but not usable: NaN, infinity, an epsilon of
1e30. Each used to load (JSON and GGUF both carry NaN and Infinity) and print other tokens with exit 0,
or be blamed on the weights; each is now one line naming the file and the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import helpers
from helpers import hf_folder, random_model, refused

from llama import ModelConfig, RopeScaling
from llama.formats.load import save_model

TINY = dict(dim=32, n_layers=1, n_heads=4, vocab_size=50, max_seq_len=32)




def gguf_file(path: Path, **metadata) -> Path:
    return helpers.gguf_file(path, ModelConfig(**TINY), **metadata)




@pytest.mark.parametrize("fields,named", [
    ({"rope_theta": math.inf}, "rope_theta must be a finite number above 1"),
    ({"rope_theta": math.nan}, "rope_theta must be a finite number above 1"),
    ({"rope_theta": 1e300}, "rope_theta must be a finite number above 1"),  # infinite in float32
    ({"rms_norm_eps": math.nan}, "norm_eps must be a finite number between 0 and 1"),
    ({"rms_norm_eps": 1e30}, "norm_eps must be a finite number between 0 and 1"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": math.inf}}, "rope_scaling.factor must be a finite number"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": math.nan}},
     "rope_scaling.low_freq_factor must be a finite number"),
])
def test_a_config_json_with_a_number_that_cannot_work(tmp_path, capsys, fields, named):
    folder = hf_folder(tmp_path / "model", **fields)
    err = refused(capsys, ["generate", str(folder), "-n", "3"])
    assert str(folder / "config.json") in err and named in err


@pytest.mark.parametrize("key,value,named", [
    ("llama.rope.freq_base", math.inf, "rope_theta must be a finite number above 1"),
    ("llama.attention.layer_norm_rms_epsilon", math.nan, "norm_eps must be a finite number between 0 and 1"),
])
def test_a_gguf_with_a_number_that_cannot_work(tmp_path, capsys, key, value, named):
    path = gguf_file(tmp_path / "model.gguf", **{key: value})
    err = refused(capsys, ["generate", str(path), "-n", "3"])
    assert str(path) in err and named in err
    assert "weights" not in err  # a NaN epsilon was blamed on the weights: "its weights may be non-finite"


@pytest.mark.parametrize("params,named", [
    ({"rope_theta": math.nan}, "rope_theta must be a finite number above 1"),
    ({"ffn_dim_multiplier": math.inf}, "ffn_dim_multiplier must be a finite positive number"),
    ({"ffn_dim_multiplier": math.nan}, "ffn_dim_multiplier must be a finite positive number"),
    ({"multiple_of": 0}, "multiple_of must be a positive integer"),
    ({"use_scaled_rope": True, "rope_scaling_factor": math.inf}, "rope_scaling.factor must be a finite number"),
])
def test_a_meta_params_json_with_a_number_that_cannot_work(tmp_path, capsys, params, named):
    folder = tmp_path / "meta"
    folder.mkdir()
    config = ModelConfig(**TINY)
    base = {"dim": 32, "n_layers": 1, "n_heads": 4, "vocab_size": 50, "multiple_of": 32, "norm_eps": 1e-5}
    (folder / "params.json").write_text(json.dumps({**base, **params}))
    torch.save(random_model(config).state_dict(), folder / "consolidated.00.pth")
    err = refused(capsys, ["generate", str(folder), "-n", "3"])
    assert str(folder / "params.json") in err and named in err


def test_convert_never_writes_nan_or_infinity_into_config_json(tmp_path, capsys):
    source = hf_folder(tmp_path / "model", rope_theta=math.inf)
    refused(capsys, ["convert", str(source), str(tmp_path / "out"), "--to", "hf"])
    assert not (tmp_path / "out").exists()


def test_a_saved_config_is_plain_json(tmp_path):
    # What the library writes reads back with a strict JSON parser (NaN and Infinity are not JSON).
    save_model(random_model(ModelConfig(**TINY)), tmp_path / "model")

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"config.json holds {name}"))

    assert strict((tmp_path / "model" / "config.json").read_text())["rope_theta"] == 10000.0


@pytest.mark.parametrize("fields,message", [
    (dict(rope_theta=math.inf), "rope_theta must be a finite number above 1"),
    (dict(rope_theta=1.0), "rope_theta must be a finite number above 1"),
    (dict(norm_eps=math.nan), "norm_eps must be a finite number between 0 and 1"),
    (dict(ffn_dim_multiplier=math.nan), "ffn_dim_multiplier must be a finite positive number"),
    (dict(hidden_dim=64, ffn_dim_multiplier=math.inf), "ffn_dim_multiplier must be a finite number"),
])
def test_model_config_refuses_values_that_cannot_work(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**TINY, **fields})


@pytest.mark.parametrize("fields,message", [
    (dict(factor=math.inf), "rope_scaling.factor must be a finite number"),
    (dict(high_freq_factor=math.nan), "rope_scaling.high_freq_factor must be a finite number"),
])
def test_rope_scaling_refuses_values_that_cannot_work(fields, message):
    with pytest.raises(ValueError, match=message):
        RopeScaling(**fields)
