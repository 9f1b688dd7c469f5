"""Numbers in a model's config that are of the right type but not usable: NaN, infinity, an epsilon of
1e30. Each used to load (JSON and GGUF both carry NaN and Infinity) and print other tokens with exit 0,
or be blamed on the weights; each is now one line naming the file and the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import helpers
import pytest
import torch
from helpers import hf_folder, random_model, refused

from llama import ModelConfig, RopeScaling
from llama.formats.load import save_model
from llama.training.config import SettingError

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


# --------------------------------------------- a training setting: named by the library, flagged by the CLI
@pytest.mark.parametrize("fields,message", [
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(max_time=math.nan), "max_time must be a positive number of seconds, got nan"),
    (dict(block_size=64, max_seq_len=32), "block_size 64 is larger than max_seq_len 32: the model cannot see windows "
                                          "longer than its maximum sequence; lower block_size or raise max_seq_len"),
    (dict(base="model", lora_rank=4, lora_alpha=-1.0), "lora_alpha must be a positive number, got -1.0"),
    (dict(base="model", lora_rank=4, lora_dropout=1.0), "lora_dropout must be a number in [0, 1), got 1.0"),
    (dict(base="model", lora_rank=4, lora_targets="q_proj"), "lora_targets: the LoRA targets must be some of wq, wk"),
])
def test_a_training_setting_is_named_as_the_library_calls_it(fields, message):
    from llama.training.config import TrainConfig

    with pytest.raises(SettingError) as refusal:
        TrainConfig(out="run", **{"max_steps": 1, **fields})
    assert str(refusal.value).startswith(message) and "--" not in str(refusal.value)


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--block-size", "64", "--max-seq-len", "32"], "--block-size 64 is larger than --max-seq-len 32: the model cannot "
                                                    "see windows longer than its maximum sequence; lower --block-size "
                                                    "or raise --max-seq-len"),
    (["--model", "huge"], "unknown --model 'huge'; choose one of: tiny, book, small, "),
])
def test_the_command_line_names_the_setting_as_its_flag(tmp_path, capsys, flags, message):
    from llama.cli.main import main

    assert main(["train", "--out", str(tmp_path / "run"), "--max-steps", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llama train: error: {message}") and err.count("\n") == 1


def test_a_value_spelled_like_a_setting_keeps_its_spelling():
    # A folder called "base" given as --base: only the setting is written as the flag, not the path.
    err = SettingError("{base} {path} is a quantized checkpoint: give {base} the float one", path="base")
    assert str(err) == "base base is a quantized checkpoint: give base the float one"
    assert err.naming({"base": "--base"}) == "--base base is a quantized checkpoint: give --base the float one"
    braces = SettingError("{lr} must be positive, got {value!r} ({{literal}})", value="{lr}")
    assert braces.settings == ("lr",) and braces.naming({"lr": "--lr"}) == "--lr must be positive, got '{lr}' ({literal})"


def test_a_setting_error_travels_as_text_and_still_names_its_settings():
    # What on_rank0 sends to the other ranks (JSON), and what pickle copies.
    import pickle

    err = SettingError("{block_size} {value} is larger than {max_seq_len} in {path}", value=64, path="{odd}")
    for copy in (err.without_values(), pickle.loads(pickle.dumps(err))):
        assert copy.settings == ("block_size", "max_seq_len") and str(copy) == str(err)
        assert copy.naming({"block_size": "--block-size"}) == "--block-size 64 is larger than max_seq_len in {odd}"


@pytest.mark.parametrize("error,kind", [
    (lambda: SettingError("{batch_size} must be a positive integer, got {value!r}", value=0), "SettingError"),
    (lambda: json.JSONDecodeError("Expecting value", "x", 0), "ValueError"),  # a subclass travels as its user error
])
def test_an_error_on_rank0_is_raised_on_every_rank(monkeypatch, error, kind):
    # The two ranks' broadcasts, replayed in one process: what rank 0 sends, rank 1 receives.
    from llama.training.distributed import Dist, on_rank0

    def work():
        raise error()

    sent = []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda tensor, src: sent.append(tensor.clone()))
    with pytest.raises(ValueError) as on_0:
        on_rank0(Dist(rank=0, world_size=2), work)
    received = iter(sent)
    monkeypatch.setattr(torch.distributed, "broadcast", lambda tensor, src: tensor.copy_(next(received)))
    with pytest.raises(ValueError) as on_1:
        on_rank0(Dist(rank=1, world_size=2), work)
    for raised in on_0.value, on_1.value:
        assert type(raised).__name__ == kind and str(raised) == str(error())
    if kind == "SettingError":
        assert on_1.value.naming({"batch_size": "--batch-size"}) == "--batch-size must be a positive integer, got 0"
