"""Tampered files, odd environment variables and binary input: each once ended in a traceback
(or a misleading sentence) and now ends in one line naming the file, flag or variable, what is
wrong and what to do, with exit code 2 and nothing of the user's changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import HOSTILE_TINY, make_text, random_model, refused, sharded_folder, snapshot

from llama import ModelConfig
from llama.cli.main import main

TINY = HOSTILE_TINY








@pytest.fixture
def text(tmp_path) -> Path:
    return make_text(tmp_path / "text.txt", 2000, words="the king and queen of denmark")




def quantized_folder(path: Path, bits: int = 8, group_size: int | None = 16) -> Path:
    from llama.quantization.weights import quantize, save_quantized

    model = random_model(ModelConfig(**TINY))
    save_quantized(quantize(model, bits, group_size), path)
    return path


# ------------------------------------------------------------------------------- the environment
TRAIN = ["--model", "tiny", "--tokenizer", "bytes", "--block-size", "32", "--batch-size", "4", "--threads", "1",
         "--max-steps", "1", "--no-progress"]


@pytest.mark.parametrize("name, value, message", [
    ("RANK", "abc", "the environment variable RANK='abc' must be a whole number of at least 0: start the run with "
                    "torchrun, which sets it, or unset RANK to train in one process"),
    ("LOCAL_WORLD_SIZE", "0", "the environment variable LOCAL_WORLD_SIZE='0' must be a whole number of at least 1"),
    ("WORLD_SIZE", "0", "the environment variable WORLD_SIZE='0' must be a whole number of at least 1"),
    ("LOCAL_RANK", "3", "LOCAL_RANK=3 and LOCAL_WORLD_SIZE=1 disagree (LOCAL_RANK must be below LOCAL_WORLD_SIZE)"),
])
def test_torchrun_variables_that_are_not_numbers_a_launcher_sets(tmp_path, capsys, monkeypatch, text, name, value,
                                                                 message):
    monkeypatch.setenv(name, value)
    err = refused(capsys, ["train", "--data", str(text), "--out", str(tmp_path / "run"), *TRAIN])
    assert message in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- the command line
def test_a_temperature_so_small_it_overflows_the_logits(capsys, source):
    err = refused(capsys, ["generate", str(source), "--ids", "1", "2", "-n", "2", "--temperature", "1e-45"])
    assert "temperature must be 0 (greedy) or at least 0.0001, got 1e-45: dividing the logits by less overflows them" in err
    assert main(["generate", str(source), "--ids", "1", "2", "-n", "2", "--temperature", "1e-4", "--seed", "0"]) == 0


@pytest.mark.parametrize("method, output", [("bpe", "tok.json"), ("sentencepiece", "tok.model")])
def test_a_binary_file_to_tokenize_train(tmp_path, capsys, method, output):
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    err = refused(capsys, ["tokenize", "train", str(binary), "--vocab-size", "300", "-o", str(tmp_path / output),
                           "--method", method])
    assert f"{binary} is not UTF-8 text (byte 0x89 at offset 0 is not UTF-8): give a text file" in err
    assert not (tmp_path / output).exists()


# ------------------------------------------------------------------------------------ the base model
def test_finetune_of_a_quantized_or_sharded_base_says_what_it_is(tmp_path, capsys, text):
    quantized = quantized_folder(tmp_path / "quantized")
    before = snapshot(quantized)
    err = refused(capsys, ["finetune", "--base", str(quantized), "--data", str(text), "--out", str(tmp_path / "a")])
    assert "unknown" not in err
    assert f"--base {quantized} is a quantized checkpoint: LoRA fine-tunes float weights; give --base the float " \
           "checkpoint it was quantized from" in err
    sharded = sharded_folder(tmp_path / "step-0000004")
    err = refused(capsys, ["finetune", "--base", str(sharded), "--data", str(text), "--out", str(tmp_path / "b")])
    assert "unknown" not in err
    assert f"convert it into one folder first (llama convert {sharded} BASE --to hf), then give --base BASE" in err
    assert snapshot(quantized) == before and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ adapters
def adapter_folder(folder: Path) -> Path:
    import torch

    from llama.training.lora import LoRAConfig, add_lora, save_adapter

    model = random_model(ModelConfig(**TINY))
    add_lora(model, LoRAConfig(rank=2, alpha=8.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: B is no longer zero
    return save_adapter(model, folder)


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **fields}))


def replace_tensor(folder: Path, part: str, shape: tuple[int, ...]) -> str:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if part in k)
    tensors[key] = torch.zeros(shape)
    save_file(tensors, folder / "adapter_model.safetensors")
    return key


def generate_with(source: Path, adapter: Path) -> list[str]:
    return ["generate", str(source), "--adapter", str(adapter), "--ids", "1", "2", "-n", "2"]


def test_a_damaged_adapter_is_named_with_what_is_wrong(tmp_path, capsys, source):
    folder = adapter_folder(tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = refused(capsys, generate_with(source, folder))
    assert f"could not read {weights}: it is truncated or not a safetensors file" in err
    assert "save the adapter again, or copy it whole" in err


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "adapter_config.json holds a JSON list, not an object of settings"),
    ("{", "adapter_config.json is not JSON"),
    (None, "adapter_config.json: lora_alpha must be a number, got null: write the adapter's value (e.g. 16), without quotes"),
    ('"16"', 'adapter_config.json: lora_alpha must be a number, got "16"'),
    ("[16]", "adapter_config.json: lora_alpha must be a number, got [16]"),
])
def test_an_adapter_config_of_the_wrong_type(tmp_path, capsys, source, content, message):
    folder = adapter_folder(tmp_path / "adapter")
    if content in ("[1, 2]", "{"):
        (folder / "adapter_config.json").write_text(content)
    else:
        edit_config(folder, lora_alpha=None if content is None else json.loads(content))
    before = snapshot(folder)
    err = refused(capsys, generate_with(source, folder))
    assert f"{folder / 'adapter_config.json'}" in err and message in err
    assert snapshot(folder) == before


@pytest.mark.parametrize("part, shape, message", [
    ("q_proj.lora_B", (31, 2), "self_attn.q_proj.lora_B.weight has shape [31, 2] but layers.0.attention.wq of this "
                               "model takes [32, rank]: the adapter does not fit this model (damaged, or made for another base model)"),
    ("q_proj.lora_B", (7,), "has shape [7] but layers.0.attention.wq of this model takes [32, rank]"),
    ("down_proj.lora_B", (33, 2), "has shape [33, 2] but layers.0.feed_forward.w2 of this model takes [32, rank]"),
    ("up_proj.lora_A", (2, 31), "has shape [2, 31] but layers.0.feed_forward.w3 of this model takes [rank, 32]"),
])
def test_an_adapter_tensor_of_the_wrong_shape(tmp_path, capsys, source, part, shape, message):
    folder = adapter_folder(tmp_path / "adapter")
    replace_tensor(folder, part, shape)
    err = refused(capsys, generate_with(source, folder))
    assert f"{folder / 'adapter_model.safetensors'}: tensor " in err and message in err


def test_an_adapter_file_that_is_a_link_is_followed_and_named_when_it_is_no_adapter(tmp_path, capsys, source):
    # Hugging Face's cache keeps an adapter's files as links into its blobs/ folder, outside the
    # adapter's own: a link is followed, as open() does. Only tensors come out of a safetensors
    # file wherever it lies; a link to something else is refused, naming where it leads.
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    folder = adapter_folder(tmp_path / "snapshots" / "main")
    (folder / "adapter_model.safetensors").rename(blobs / "0123abcd")
    (folder / "adapter_model.safetensors").symlink_to(blobs / "0123abcd")
    assert main(generate_with(source, folder)) == 0
    capsys.readouterr()
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n" * 100)
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.safetensors").symlink_to(secret)
    err = refused(capsys, generate_with(source, folder))
    assert f"could not read {folder / 'adapter_model.safetensors'} (a link to {secret}): it is truncated or not a " \
           "safetensors file" in err
    assert "password" not in err and secret.read_text() == "password\n" * 100


# -------------------------------------------------------------------------------- sharded checkpoints
def damage_truncate(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def damage_overwrite(shard: Path) -> None:
    shard.write_bytes(b"not a shard\n" * 10)


def damage_nan(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[-8:] = b"\xff" * 8  # the last two float32 values become NaN; the header is intact
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (damage_truncate, "cannot be read (Error while deserializing header: incomplete metadata, file not fully covered): "
                      "a shard is missing, truncated or changed; load an earlier checkpoint, or delete this one"),
    (damage_overwrite, "cannot be read (Error while deserializing header"),
    (damage_nan, "holds NaN or infinity in 2 of its"),
    (Path.unlink, "declares 1 layers, which have at least 11 tensors, but it holds 0"),  # handled before this round
])
def test_a_sharded_checkpoint_with_a_damaged_shard(tmp_path, capsys, damage, message):
    folder = sharded_folder(tmp_path / "step-0000004")
    (shard,) = (folder / "model").glob("*.safetensors")
    damage(shard)
    err = refused(capsys, ["generate", str(folder), "--ids", "1", "2", "-n", "2"])
    assert str(folder / "model") in err and message in err


# ---------------------------------------------------------------------------------------- downloads
def test_download_list_goes_on_past_a_damaged_copy(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "stories260K.bin").write_bytes(b"an interrupted copy")
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(cache))
    monkeypatch.setenv("LLAMA_DATA_DIR", str(tmp_path / "none"))
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"damaged: {cache / 'stories260K.bin'} is not the published stories260K.bin (its sha256 differs): " \
           "remove it, then run `llama download stories260K`" in out
    assert "tinyshakespeare" in out and "downloads go to" in out  # the entries after it are listed
    assert (cache / "stories260K.bin").read_bytes() == b"an interrupted copy"


def test_a_part_file_left_by_a_killed_download_is_removed_by_the_next(tmp_path):
    import fcntl
    import hashlib

    from llama.data.sources import cached_download

    source = tmp_path / "source.bin"
    source.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".model.bin.k1ll3d.part"  # what a download killed by SIGKILL leaves
    stale.write_bytes(b"weig")
    busy = cache / ".model.bin.runn1n.part"  # a download in progress in another process holds its lock
    other = cache / ".notes.txt.k1ll3d.part"  # another file's: not this download's to remove
    other.write_bytes(b"x")
    with open(busy, "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cached_download(source.as_uri(), digest, "model.bin", cache).read_bytes() == source.read_bytes()
        assert not stale.exists() and busy.exists() and other.exists()
    with pytest.raises(ValueError, match="nothing was kept"):  # a failed download leaves no part of its own
        cached_download(source.as_uri(), "0" * 64, "again.bin", cache)
    assert sorted(p.name for p in cache.iterdir()) == [".model.bin.runn1n.part", ".notes.txt.k1ll3d.part", "model.bin"]


# --------------------------------------------------------------------------------------- run folders
@pytest.fixture
def run_folder(tmp_path, capsys, text) -> Path:
    out = tmp_path / "trained"
    assert main(["train", "--data", str(text), "--out", str(out), *TRAIN[:-3], "--max-steps", "2", "--eval-every", "2",
                 "--eval-tokens", "256", "--sample-tokens", "0", "--no-progress"]) == 0
    capsys.readouterr()
    return out


def edit_json(path: Path, value=None, **fields) -> None:
    path.write_text(json.dumps(value if value is not None else {**json.loads(path.read_text()), **fields}))


def edit_ids(path: Path) -> None:
    import numpy as np

    ids = np.load(path)
    ids[5] = 60000
    np.save(path, ids)


@pytest.mark.parametrize("edit, message", [
    (lambda out: edit_json(out / "run.json", [1]), "run.json is damaged (it holds a JSON list, not an object of settings)"),
    (lambda out: edit_json(out / "checkpoints/step-0000002/state.json", [1]),
     "state.json is damaged (ValueError('it holds a JSON list, not an object'))"),
    (lambda out: edit_json(out / "checkpoints/step-0000002/state.json", step="2"),
     "state.json is damaged (ValueError('step is \"2\", which is not what a checkpoint stores there'))"),
    (lambda out: edit_json(out / "checkpoints/step-0000002/state.json", elapsed=None), "elapsed is null"),
    (lambda out: edit_json(out / "checkpoints/step-0000002/state.json", rng=5), "rng is 5"),
    (lambda out: edit_ids(out / "data/train.npy"), "train.npy holds the id 60000, outside the tokenizer's vocabulary of "
                                                   "256 ids (or is not ids): it was changed; delete "),
])
def test_a_run_folder_whose_files_have_the_wrong_types(capsys, run_folder, edit, message):
    edit(run_folder)
    before = snapshot(run_folder)
    err = refused(capsys, ["train", "--out", str(run_folder), "--resume", "--max-steps", "3"])
    assert message in err
    after = snapshot(run_folder)
    # The lock file records who last held the folder (the refused command, a second later): not the user's.
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


# ------------------------------------------------------------------------------- quantized folders
def test_a_quantized_folder_whose_group_size_or_scales_were_changed(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = quantized_folder(tmp_path / "q")
    edit_json(folder / "quantized.json", quantization={"bits": 8, "group_size": 7, "head": True})
    err = refused(capsys, ["generate", str(folder), "--ids", "1", "2", "-n", "2"])
    assert f"{folder}: its quantization scheme does not fit the model: group_size=7" in err
    assert "quantize the float model again" in err
    # Handled before this round: scales of another shape, or a group size that divides the widths.
    folder = quantized_folder(tmp_path / "q2")
    edit_json(folder / "quantized.json", quantization={"bits": 8, "group_size": 8, "head": True})
    err = refused(capsys, ["generate", str(folder), "--ids", "1", "2", "-n", "2"])
    assert f"{folder}: tensor layers.0.attention.wq.scales has shape (32, 2) but the config implies (32, 4)" in err
    folder = quantized_folder(tmp_path / "q3")
    tensors = load_file(folder / "model.safetensors")
    tensors["layers.0.attention.wk.scales"] = tensors["layers.0.attention.wk.scales"][:, :1].contiguous()
    save_file(tensors, folder / "model.safetensors")
    err = refused(capsys, ["generate", str(folder), "--ids", "1", "2", "-n", "2"])
    assert "tensor layers.0.attention.wk.scales has shape (32, 1) but the config implies (32, 2)" in err
