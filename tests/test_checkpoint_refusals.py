"""Checkpoints that must not load: each refusal is one line that names the file, the field or tensor, and the fix."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import llama_as_nobody_each, random_model
from safetensors.torch import load_file, save_file

from llama import ModelConfig
from llama.cli.main import main
from llama.formats.checkpoint import read_checkpoint
from llama.formats.load import load_model, save_model

TINY = dict(dim=64, n_layers=2, n_heads=4, vocab_size=101, max_seq_len=64)
META_PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 101, "multiple_of": 32,
               "norm_eps": 1e-5, "rope_theta": 10000.0}
META_CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, multiple_of=32)


def hf_folder(directory: Path) -> Path:
    save_model(random_model(ModelConfig(**TINY)), directory)
    return directory


def sharded_hf_folder(directory: Path) -> Path:
    """A Hugging Face folder whose weights are listed in model.safetensors.index.json."""
    hf_folder(directory)
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    names = load_file(directory / "model-00001-of-00001.safetensors").keys()
    write_index(directory, {name: "model-00001-of-00001.safetensors" for name in names})
    return directory


def write_index(directory: Path, weight_map: dict) -> None:
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def edit_config(directory: Path, **fields) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **fields}))


def meta_folder(directory: Path, params: dict = META_PARAMS, shards: int = 1) -> Path:
    """A Meta folder; with two shards the projections are cut in halves and the rest repeated."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(params))
    sd = random_model(META_CONFIG).state_dict()
    for rank in range(shards):
        part = {}
        for name, w in sd.items():
            if shards > 1 and name.split(".")[-2] in ("wq", "wk", "wv", "w1", "w3", "output"):
                w = w.chunk(shards, dim=0)[rank]
            elif shards > 1 and name.split(".")[-2] in ("wo", "w2", "tok_embeddings"):
                w = w.chunk(shards, dim=1)[rank]
            part[name] = w.clone()
        torch.save(part, directory / f"consolidated.{rank:02d}.pth")
    return directory


def one_line_error(status: int, err: str) -> str:
    """A user's mistake: exit code 2 and one line on stderr, no traceback; the line."""
    assert status == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def one_line_cli_error(capsys, argv: list[str]) -> str:
    """Run ``llama ARGV``, which must fail with :func:`one_line_error`; return that line."""
    status = main(argv)
    return one_line_error(status, capsys.readouterr().err)


# ------------------------------------------------------------------------------ shard paths
@pytest.mark.parametrize("shard", ["/etc/passwd", "../other/model.safetensors", "sub/../../other/model.safetensors"])
def test_index_paths_outside_the_folder_are_refused(tmp_path, shard):
    sharded_hf_folder(tmp_path / "other")  # a real checkpoint next door: the old loader read it
    folder = sharded_hf_folder(tmp_path / "model")
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    write_index(folder, {**weight_map, "model.norm.weight": shard})
    with pytest.raises(ValueError, match=r"weight_map\['model.norm.weight'\] names .* which is not a file in .*model; "
                                         r"shards must sit next to the index"):
        read_checkpoint(folder)


def test_a_shard_that_links_out_of_the_folder_is_refused(tmp_path):
    sharded_hf_folder(tmp_path / "other")
    folder = sharded_hf_folder(tmp_path / "model")
    shard = folder / "model-00001-of-00001.safetensors"
    shard.unlink()
    shard.symlink_to(tmp_path / "other" / "model-00001-of-00001.safetensors")
    with pytest.raises(ValueError, match=r"names 'model-00001-of-00001.safetensors', which is not a file in"):
        read_checkpoint(folder)


def test_the_hugging_face_cache_layout_still_loads(tmp_path):
    """The cache keeps files in blobs/ and links snapshots/REV/NAME to them: that link out is expected."""
    source = sharded_hf_folder(tmp_path / "source")
    repo = tmp_path / "hub" / "models--someone--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(source.iterdir())):
        shutil.copy(file, repo / "blobs" / f"blob{i}")
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    config, sd = read_checkpoint(snapshot)
    assert config == read_checkpoint(source)[0] and sd.keys() == read_checkpoint(source)[1].keys()


def test_a_weight_map_value_that_is_not_a_file_name(tmp_path, capsys):
    folder = sharded_hf_folder(tmp_path / "model")
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    write_index(folder, {**weight_map, "model.norm.weight": 3})
    err = one_line_cli_error(capsys, ["convert", str(folder), str(tmp_path / "out"), "--to", "hf"])
    assert "model.safetensors.index.json: weight_map['model.norm.weight'] is 3, not a file name" in err


# ------------------------------------------------------------------------------- config.json
@pytest.mark.parametrize("fields,message", [
    ({"tie_word_embeddings": "false"},
     "tie_word_embeddings must be true or false, got 'false': write false without quotes"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps must be a number, got '1e-5': write 1e-5 without quotes"),
    ({"hidden_size": "64"}, "hidden_size must be an integer, got '64': write 64 without quotes"),
    ({"num_hidden_layers": 2.5}, "num_hidden_layers must be an integer, got 2.5"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": "8"}}, "rope_scaling.factor must be a number, got '8'"),
    ({"rope_scaling": "llama3"}, "rope_scaling must be an object"),
])
def test_config_fields_of_the_wrong_type_are_named(tmp_path, capsys, fields, message):
    folder = hf_folder(tmp_path / "model")
    edit_config(folder, **fields)
    err = one_line_cli_error(capsys, ["generate", str(folder), "-n", "2"])
    assert f"{folder / 'config.json'}: {message}" in err


def test_a_config_that_is_not_an_object(tmp_path, capsys):
    folder = hf_folder(tmp_path / "model")
    (folder / "config.json").write_text("[1, 2]")
    err = one_line_cli_error(capsys, ["convert", str(folder), str(tmp_path / "out"), "--to", "hf"])
    assert "config.json holds a JSON list, not an object of fields" in err


# ------------------------------------------------------------------------------- params.json
@pytest.mark.parametrize("params,message", [
    ({k: v for k, v in META_PARAMS.items() if k != "dim"}, "params.json has no dim: every Meta params.json gives"),
    ({**META_PARAMS, "dim": "64"}, "params.json: dim must be an integer, got '64': write 64 without quotes"),
    ({**META_PARAMS, "norm_eps": "1e-5"}, "params.json: norm_eps must be a number, got '1e-5'"),
    ({**META_PARAMS, "use_scaled_rope": "true"}, "params.json: use_scaled_rope must be true or false, got 'true'"),
])
def test_params_json_fields(tmp_path, capsys, params, message):
    folder = meta_folder(tmp_path / "meta", params)
    err = one_line_cli_error(capsys, ["generate", str(folder), "-n", "2"])
    assert message in err


# ----------------------------------------------------------------------------------- tensors
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_and_boolean_tensors_are_not_cast(tmp_path, dtype):
    folder = hf_folder(tmp_path / "model")
    sd = load_file(folder / "model.safetensors")
    sd["model.norm.weight"] = torch.ones_like(sd["model.norm.weight"], dtype=dtype)
    save_file(sd, folder / "model.safetensors")
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor model.norm.weight is {name}, not floating point"):
        load_model(folder)


def test_meta_shards_that_disagree_on_a_repeated_tensor(tmp_path):
    folder = meta_folder(tmp_path / "meta", shards=2)
    assert load_model(folder).config.n_kv_heads == 2  # the two shards agree: it loads
    second = torch.load(folder / "consolidated.01.pth", weights_only=True)
    second["layers.1.ffn_norm.weight"] = second["layers.1.ffn_norm.weight"] + 1
    torch.save(second, folder / "consolidated.01.pth")
    with pytest.raises(ValueError, match=r"tensor layers.1.ffn_norm.weight should be repeated identically in every "
                                         r"consolidated.NN.pth, but consolidated.01.pth differs"):
        load_model(folder)
    del second["layers.1.ffn_norm.weight"]
    torch.save(second, folder / "consolidated.01.pth")
    with pytest.raises(ValueError, match=r"consolidated.01.pth and consolidated.00.pth hold different tensors"):
        load_model(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(tmp_path, capsys, value):
    folder = hf_folder(tmp_path / "model")
    sd = load_file(folder / "model.safetensors")
    sd["model.layers.1.mlp.down_proj.weight"][3, 5] = value
    save_file(sd, folder / "model.safetensors")
    err = one_line_cli_error(capsys, ["generate", str(folder), "-n", "4"])
    assert "tensor layers.1.feed_forward.w2.weight holds NaN or infinity in 1 of its 16384 values" in err


def test_the_pickle_refusal_does_not_suggest_unsafe_loading(tmp_path):
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(META_PARAMS))
    torch.save({"tok_embeddings.weight": torch.zeros(2), "evil": os.system}, folder / "consolidated.00.pth")
    with pytest.raises(ValueError) as info:
        load_model(folder)
    message = str(info.value)
    assert "is not plain weights" in message and "system" in message  # the reason is kept
    assert "weights_only" not in message and "trusted" not in message


# ------------------------------------------------------------------------------ permissions
UNREADABLE = [("hf", "config.json"), ("hf", "model.safetensors"), ("meta", "params.json"),
              ("meta", "consolidated.00.pth"), ("llama2c", "model.bin"), ("hf", ".")]


@pytest.fixture(scope="module")
def as_nobody():
    """This file's permission cases, each a ``llama`` command run as nobody, all in one interpreter
    (helpers.llama_as_nobody_each): ``{case: (folder, exit code, stderr)}``.

    "output": ``llama convert`` into a folder nobody may not make. ``(kind, name)``: ``llama
    generate`` on a ``kind`` checkpoint whose file ``name`` (``.``: the folder itself) nobody may not read.
    """
    # Outside pytest's tmp_path, whose parent only root may enter; root's and 0755, so nobody may
    # enter it but not write in it: only the file of each case is closed.
    root = Path(tempfile.mkdtemp())
    try:
        os.chmod(root, 0o755)
        source = hf_folder(root / "model")
        cases = {"output": root}
        argvs = [["convert", str(source), str(root / "out"), "--to", "hf"]]
        for kind, unreadable in UNREADABLE:
            folder = root / f"{kind}-{unreadable.strip('.') or 'folder'}" / "checkpoint"
            if kind == "hf":
                hf_folder(folder)
            elif kind == "meta":
                meta_folder(folder)
            else:
                from llama.formats.llama2c import save_llama2c

                folder.mkdir(parents=True)
                model = random_model(ModelConfig(**TINY, tie_embeddings=True))
                save_llama2c(model.state_dict(), model.config, folder / "model.bin")
            for directory in (folder, folder.parent):
                os.chmod(directory, 0o755)
            os.chmod(folder / unreadable, 0)
            cases[kind, unreadable] = folder
            argvs.append(["generate", str(folder / "model.bin" if kind == "llama2c" else folder), "-n", "1"])
        results = llama_as_nobody_each(argvs)
        yield {case: (folder, *result) for (case, folder), result in zip(cases.items(), results)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # a fresh interpreter imports every module of the package, then runs as nobody
def test_an_output_folder_the_user_may_not_make(as_nobody):
    root, status, err = as_nobody["output"]
    assert one_line_error(status, err) == f"llama convert: error: cannot make the folder {root / 'out'}: permission " \
                                          "denied; choose a place your user may write to\n"
    assert not (root / "out").exists()


@pytest.mark.slow  # a fresh interpreter imports every module of the package, then runs as nobody
@pytest.mark.parametrize("kind,unreadable", UNREADABLE)
def test_unreadable_files_are_named_as_unreadable(as_nobody, kind, unreadable):
    """A file the user may not read is reported as such, not as truncated, missing, or with a traceback."""
    folder, status, err = as_nobody[kind, unreadable]
    if unreadable == ".":
        assert one_line_error(status, err) == f"llama generate: error: cannot read the folder {folder}: permission " \
                                              "denied; give your user read access (chmod +rx) or copy it\n"
    else:
        assert one_line_error(status, err) == f"llama generate: error: cannot read {folder / unreadable}: " \
                                              "permission denied; give your user read access (chmod +r) or copy the file\n"
