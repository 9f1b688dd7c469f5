"""Checkpoints: the real stories260K, round trips through three formats, and refusals with clear errors."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from helpers import random_model
from safetensors.torch import load_file, save_file

from llama import ModelConfig, Transformer, generate
from llama.formats.checkpoint import detect_format
from llama.formats.convert import llama_to_hf_state_dict
from llama.formats.llama2c import read_llama2c
from llama.formats.load import load_model, save_model

#: Greedy ids of stories260K from BOS (id 1), recorded from this package and checked below against
#: an independent NumPy re-implementation of llama2.c's run.c; book/checkpoints.md quotes them.
STORIES260K_GREEDY_32 = [461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299, 362, 409, 283, 264,
                         283, 452, 288, 13, 431, 431, 431, 431, 431, 431, 431, 431, 431, 431, 431, 431]

TINY = dict(dim=64, n_layers=2, n_heads=4, vocab_size=101, max_seq_len=64)
# Meta's params.json has no hidden_dim: multiple_of=32 makes Meta's rule give 192 for dim 64.
META_PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 101, "multiple_of": 32,
               "norm_eps": 1e-5, "rope_theta": 10000.0}


def tokens(vocab: int, n: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(5))


def write_llama2c(model: Transformer, path) -> None:
    """Our own writer of the legacy layout, the inverse of read_llama2c (for tests only)."""
    c, sd = model.config, model.state_dict()
    shared = c.tie_embeddings
    header = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size * (1 if shared else -1),
              c.max_seq_len)
    parts = [sd["tok_embeddings.weight"]]
    for key in ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "ffn_norm",
                "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
        parts += [sd[f"layers.{i}.{key}.weight"] for i in range(c.n_layers)]
    parts += [sd["norm.weight"], model.rope_cos, model.rope_sin]
    if not shared:
        parts.append(sd["output.weight"])
    with open(path, "wb") as f:
        f.write(struct.pack("7i", *header))
        for t in parts:
            f.write(t.detach().float().contiguous().numpy().tobytes())


def write_meta(model: Transformer, directory, params: dict, shards: int = 1) -> None:
    """A Meta-style folder; with ``shards > 1`` the tensors are cut as Llama 2's model-parallel ranks are."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(params))
    sd = model.state_dict()
    cut_rows = ("wq", "wk", "wv", "w1", "w3", "output")  # column-parallel: output features split
    cut_cols = ("wo", "w2", "tok_embeddings")  # row-parallel (and Llama 2's embedding): input split
    for rank in range(shards):
        part = {}
        for name, w in sd.items():
            key = name.split(".")[-2]
            if shards > 1 and key in cut_rows:
                w = w.chunk(shards, dim=0)[rank]
            elif shards > 1 and key in cut_cols:
                w = w.chunk(shards, dim=1)[rank]
            part[name] = w.clone()
        torch.save(part, directory / f"consolidated.{rank:02d}.pth")


# ------------------------------------------------------------------------------ the real model
def test_stories260k_loads_and_matches_transformers(shared_file, tmp_path, transformers):
    path = shared_file("stories260K.bin")
    model = load_model(path)
    assert model.config == ModelConfig.from_preset("stories260K")
    assert not model.training
    save_model(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = tokens(512, 64)
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
        # The two models pair RoPE features differently (neighbours here, halves there), so the
        # float32 sums of q.k run in another order. Measured against transformers in float64,
        # both float32 results are off by the same rounding (about 6e-5 here, 1e-5 relative).
        exact = hf.double()(x).logits
    assert (ours - exact).abs().max().item() <= 1e-4
    assert (theirs - exact).abs().max().item() <= 1e-4
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert theirs.std() > 1.0  # a trained model's logits, not near-zero noise


def test_stories260k_greedy_ids_from_bos(shared_file):
    model = load_model(shared_file("stories260K.bin"))
    assert generate(model, [1], 32) == STORIES260K_GREEDY_32


def read_runc_file(path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A llama2.c ``.bin`` read as ``run.c`` maps it (its ``memory_map_weights``), independently of
    :func:`llama.formats.llama2c.read_llama2c`: the header, then each weight for all layers at once, the
    final norm, two RoPE tables that run.c skips, and the classifier only when the vocabulary
    size in the header is negative."""
    with open(path, "rb") as f:
        dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", f.read(28))
        floats = np.fromfile(f, dtype="<f4")
    shared, vocab = vocab > 0, abs(vocab)
    hd = dim // n_heads
    kv_dim = n_kv_heads * hd
    # (name, per layer?, shape), in the file's order; "rope" is the two tables run.c skips.
    layout = [("tok_embeddings", False, (vocab, dim)), ("attention_norm", True, (dim,)),
              ("attention.wq", True, (dim, dim)), ("attention.wk", True, (kv_dim, dim)),
              ("attention.wv", True, (kv_dim, dim)), ("attention.wo", True, (dim, dim)),
              ("ffn_norm", True, (dim,)), ("feed_forward.w1", True, (hidden, dim)),
              ("feed_forward.w2", True, (dim, hidden)), ("feed_forward.w3", True, (hidden, dim)),
              ("norm", False, (dim,)), ("rope", False, (2, seq_len, hd // 2))]
    layout += [] if shared else [("output", False, (vocab, dim))]
    w, offset = {}, 0
    for name, per_layer, shape in layout:
        size = int(np.prod(shape))
        for key in [f"layers.{i}.{name}.weight" for i in range(n_layers)] if per_layer else [f"{name}.weight"]:
            w[key] = floats[offset: offset + size].reshape(shape).astype(np.float64)
            offset += size
    assert offset == floats.size, "the file holds more or fewer floats than its header declares"
    if shared:
        w["output.weight"] = w["tok_embeddings.weight"]
    config = ModelConfig(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         vocab_size=vocab, max_seq_len=seq_len, tie_embeddings=shared)
    return config, w


def runc_greedy(config: ModelConfig, w: dict[str, np.ndarray], prompt: list[int], steps: int) -> list[int]:
    """llama2.c's run.c forward pass, transcribed to NumPy float64 one position at a time.

    As run.c does, it runs ``steps`` positions: the prompt's tokens are forced, every later one is
    the argmax of the previous position's logits. It returns the tokens after the first (the
    prompt's included), ``steps`` of them; its RoPE base (10000) and epsilon (1e-5) are run.c's.
    """
    d, hd = config.dim, config.head_dim
    kv_dim, group = config.n_kv_heads * hd, config.n_heads // config.n_kv_heads
    keys = np.zeros((config.n_layers, steps, kv_dim))
    values = np.zeros_like(keys)

    def rmsnorm(x, g):
        return g * x / np.sqrt(np.mean(x * x) + 1e-5)

    token, out = prompt[0], []
    for pos in range(steps):
        x = w["tok_embeddings.weight"][token].copy()
        for layer in range(config.n_layers):
            p = f"layers.{layer}."
            xb = rmsnorm(x, w[p + "attention_norm.weight"])
            q, k = w[p + "attention.wq.weight"] @ xb, w[p + "attention.wk.weight"] @ xb
            v = w[p + "attention.wv.weight"] @ xb
            for i in range(0, d, 2):  # rotate the pair (i, i+1), as run.c does
                angle = pos / 10000.0 ** ((i % hd) / hd)
                c, s = np.cos(angle), np.sin(angle)
                for vec in (q, k) if i < kv_dim else (q,):
                    vec[i], vec[i + 1] = vec[i] * c - vec[i + 1] * s, vec[i] * s + vec[i + 1] * c
            keys[layer, pos], values[layer, pos] = k, v
            att = np.zeros(d)
            for h in range(config.n_heads):
                g = slice((h // group) * hd, (h // group + 1) * hd)
                scores = keys[layer, : pos + 1, g] @ q[h * hd:(h + 1) * hd] / np.sqrt(hd)
                weights = np.exp(scores - scores.max())
                att[h * hd:(h + 1) * hd] = (weights / weights.sum()) @ values[layer, : pos + 1, g]
            x = x + w[p + "attention.wo.weight"] @ att
            xb = rmsnorm(x, w[p + "ffn_norm.weight"])
            gate, up = w[p + "feed_forward.w1.weight"] @ xb, w[p + "feed_forward.w3.weight"] @ xb
            x = x + w[p + "feed_forward.w2.weight"] @ (gate / (1 + np.exp(-gate)) * up)
        forced = pos + 1 < len(prompt)
        token = prompt[pos + 1] if forced else int(np.argmax(w["output.weight"] @ rmsnorm(x, w["norm.weight"])))
        out.append(token)
    return out


def test_stories260k_greedy_ids_agree_with_an_independent_implementation(shared_file):
    config, w = read_runc_file(shared_file("stories260K.bin"))
    assert config == ModelConfig.from_preset("stories260K")
    assert runc_greedy(config, w, [1], 24) == STORIES260K_GREEDY_32[:24]


# -------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("tied", [False, True])
def test_hf_to_ours_to_hf_gives_identical_tensors(tmp_path, tied, transformers):
    hf_config = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=101,
                                         max_position_embeddings=64, tie_word_embeddings=tied)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.save_pretrained(tmp_path / "theirs")
    ours = load_model(tmp_path / "theirs")
    save_model(ours, tmp_path / "back")
    a, b = load_file(tmp_path / "theirs" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = tokens(101)
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max() <= 1e-5


def test_sharded_hf_checkpoint_loads(tmp_path, transformers):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=101)).eval()
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    ours = load_model(tmp_path / "sharded")
    x = tokens(101)
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_to_ours_to_hf_gives_identical_tensors(tmp_path, shards, transformers):
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, multiple_of=32)
    model = random_model(config)
    write_meta(model, tmp_path / "meta", META_PARAMS, shards=shards)
    assert detect_format(tmp_path / "meta") == "meta"
    loaded = load_model(tmp_path / "meta", max_seq_len=64)
    assert loaded.config == ModelConfig(**{**config.to_dict(), "max_seq_len": 64})
    save_model(loaded, tmp_path / "hf")
    written = load_file(tmp_path / "hf" / "model.safetensors")
    expected = llama_to_hf_state_dict(model.state_dict(), config)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = tokens(101)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("tied", [True, False])
def test_llama2c_round_trip(tmp_path, tied):
    model = random_model(ModelConfig(**TINY, n_kv_heads=2, hidden_dim=80, tie_embeddings=tied))
    write_llama2c(model, tmp_path / "tiny.bin")
    loaded = load_model(tmp_path / "tiny.bin")
    assert loaded.config == model.config
    sd, back = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd[k], back[k]) for k in sd)
    assert (loaded.output.weight is loaded.tok_embeddings.weight) == tied


def test_saved_folder_has_only_the_two_files_and_a_loadable_dtype(tmp_path):
    model = random_model(ModelConfig(**TINY))
    save_model(model.to(torch.bfloat16), tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]  # no temp files left
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    again = load_model(tmp_path / "out", dtype=torch.bfloat16)
    assert again.output.weight.dtype == torch.bfloat16
    assert torch.equal(again.output.weight, model.output.weight)


# ------------------------------------------------------------------------------------ refusals
class Payload:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    directory = tmp_path / "meta"
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps(META_PARAMS))
    torch.save({"tok_embeddings.weight": torch.zeros(101, 64), "evil": Payload(marker)},
               directory / "consolidated.00.pth")
    # The payload is real: plain pickle-based loading would run it.
    with pytest.raises(ValueError, match=r"is not plain weights: it pickles objects .* refused"):
        load_model(directory)
    assert not marker.exists()
    torch.load(directory / "consolidated.00.pth", weights_only=False)  # the unsafe way, to prove the point
    assert marker.exists()


def test_pickle_of_something_else_than_weights_is_refused(tmp_path):
    directory = tmp_path / "meta"
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps(META_PARAMS))
    torch.save({"model": {"w": torch.zeros(2)}, "step": 10}, directory / "consolidated.00.pth")
    with pytest.raises(ValueError, match=r"not a dict of weight names to tensors"):
        load_model(directory)


def test_missing_and_truncated_files(tmp_path, shared_file):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_model(tmp_path / "nothing.bin")
    model = random_model(ModelConfig(**TINY, hidden_dim=80, tie_embeddings=True))
    write_llama2c(model, tmp_path / "tiny.bin")
    data = (tmp_path / "tiny.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"has \d+ bytes but its header .* implies \d+: the file is truncated"):
        load_model(tmp_path / "cut.bin")
    (tmp_path / "stub.bin").write_bytes(data[:10])
    with pytest.raises(ValueError, match="less than the 28-byte llama2.c header"):
        load_model(tmp_path / "stub.bin")
    save_model(model, tmp_path / "hf")
    blob = (tmp_path / "hf" / "model.safetensors").read_bytes()
    (tmp_path / "hf" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="model.safetensors: it is truncated or not a safetensors file"):
        load_model(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has config.json but no weights"):
        load_model(tmp_path / "hf")
    meta = tmp_path / "meta"
    write_meta(random_model(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101,
                                        multiple_of=32)), meta, META_PARAMS)
    pth = (meta / "consolidated.00.pth").read_bytes()
    (meta / "consolidated.00.pth").write_bytes(pth[: len(pth) // 2])
    with pytest.raises(ValueError, match="it is truncated or not a PyTorch checkpoint"):
        load_model(meta)


def test_shapes_that_contradict_the_config(tmp_path):
    model = random_model(ModelConfig(**TINY, hidden_dim=80))
    save_model(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["intermediate_size"] = 96
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"feed_forward.w1.weight has shape \(80, 64\) but the config implies \(96, 64\); the checkpoint and its config disagree"):
        load_model(tmp_path / "hf")
    meta = tmp_path / "meta"
    write_meta(random_model(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101,
                                        multiple_of=32)), meta, {**META_PARAMS, "multiple_of": 256})
    with pytest.raises(ValueError, match=r"feed_forward.w1.weight has shape \(192, 64\) .* implies \(256, 64\)"):
        load_model(meta)


def test_unknown_formats(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither config.json .* nor params.json .*: unknown checkpoint format"):
        load_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        load_model(tmp_path / "notes.txt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="is a PyTorch/zip archive, not a llama2.c .bin"):
        load_model(tmp_path / "pytorch_model.bin")
    (tmp_path / "v1.bin").write_bytes(struct.pack("<2i", 0x616B3432, 1) + bytes(300))
    with pytest.raises(ValueError, match="llama2.c export version 1; only the legacy layout"):
        load_model(tmp_path / "v1.bin")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**META_PARAMS, "moe_args": {}}))
    with pytest.raises(ValueError, match=r"params.json has keys this model does not support: \['moe_args'\]"):
        load_model(tmp_path / "meta")


def test_save_refuses_a_file_as_destination(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        save_model(random_model(ModelConfig(**TINY)), tmp_path / "file")


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    model = random_model(ModelConfig(**TINY))
    save_model(model, tmp_path / "out")
    before = (tmp_path / "out" / "model.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(random_model(ModelConfig(**TINY), seed=1), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    save_file  # noqa: B018  (imported for the monkeypatched name's sake)


# ------------------------------------------ save_llama2c, checked by the NumPy transcription of run.c
# Imports stay inside the tests so this section can be appended to without touching the file's top.
GQA_TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=301, hidden_dim=96, max_seq_len=48)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_save_llama2c_round_trip_is_exact(tmp_path, tie):
    from llama.formats.llama2c import llama2c_layout, save_llama2c

    config = ModelConfig(**GQA_TINY, tie_embeddings=tie)
    sd = random_model(config).state_dict()
    save_llama2c(sd, config, tmp_path / "model.bin")
    read_config, read_sd = read_llama2c(tmp_path / "model.bin")
    assert read_config == config
    assert set(read_sd) == set(sd)
    for name, tensor in sd.items():
        assert torch.equal(read_sd[name], tensor), name
    header = np.fromfile(tmp_path / "model.bin", dtype="<i4", count=7).tolist()
    assert header == [64, 96, 2, 4, 2, 301 if tie else -301, 48]
    # The two tables run.c skips hold what llama2.c's exporter wrote: cos and sin of pos * 10000^(-2i/head_dim).
    floats = np.fromfile(tmp_path / "model.bin", dtype="<f4", offset=28)
    before_rope = llama2c_layout(config)[:-2 if tie else -3]
    n_before = sum(copies * int(np.prod(shape)) for _, shape, copies in before_rope)
    angles = np.outer(np.arange(48), 10000.0 ** (-np.arange(8) * 2 / 16))
    np.testing.assert_allclose(floats[n_before: n_before + 48 * 8].reshape(48, 8), np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(floats[n_before + 48 * 8: n_before + 2 * 48 * 8].reshape(48, 8), np.sin(angles),
                               atol=1e-6)


def test_save_llama2c_refuses_what_run_c_cannot_run(tmp_path):
    from llama import RopeScaling
    from llama.formats.llama2c import save_llama2c

    sd = random_model(ModelConfig(**GQA_TINY)).state_dict()
    path = tmp_path / "model.bin"
    for field, value, shown in (("rope_theta", 500000.0, "rope_theta=500000.0: run.c assumes 10000.0"),
                                ("norm_eps", 1e-6, "norm_eps=1e-06: run.c assumes 1e-05"),
                                ("rope_scaling", RopeScaling(), "rope_scaling=RopeScaling")):
        with pytest.raises(ValueError, match=f"llama2.c's format cannot hold {shown}"):
            save_llama2c(sd, ModelConfig(**GQA_TINY, **{field: value}), path)
    with pytest.raises(ValueError, match=r"missing \['layers.1.feed_forward.w3.weight'\], unexpected \[\]"):
        save_llama2c({k: v for k, v in sd.items() if k != "layers.1.feed_forward.w3.weight"},
                     ModelConfig(**GQA_TINY), path)
    with pytest.raises(ValueError, match=r"feed_forward.w1.weight has shape \(96, 64\) but the config implies \(80"):
        save_llama2c(sd, ModelConfig(**{**GQA_TINY, "hidden_dim": 80}), path)
    with pytest.raises(ValueError, match="output.weight differs from tok_embeddings.weight"):
        save_llama2c(sd, ModelConfig(**GQA_TINY, tie_embeddings=True), path)
    with pytest.raises(ValueError, match="32-bit ints"):
        save_llama2c(sd, ModelConfig(**{**GQA_TINY, "vocab_size": 2**25}), path)  # vocab_size * dim = 2**31
    assert not path.exists() and os.listdir(tmp_path) == []  # refused before anything was written


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_a_saved_llama2c_file_decodes_in_the_numpy_transcription_of_run_c(tmp_path, tie):
    """save_llama2c's file, read and run as llama2.c's run.c reads and runs it (the NumPy
    transcription above, which shares no code with the package), picks our greedy ids."""
    from llama.formats.llama2c import save_llama2c

    config = ModelConfig(**GQA_TINY, tie_embeddings=tie)
    model = random_model(config, seed=3)
    with torch.no_grad():  # at init scale the layers barely move the residual stream, and a tied
        for name, p in model.named_parameters():  # head then repeats the last token: make them count
            if name.startswith("layers.") and p.ndim == 2:
                p.mul_(30)
    save_llama2c(model.state_dict(), config, tmp_path / "model.bin")
    read_config, w = read_runc_file(tmp_path / "model.bin")
    assert read_config == config
    prompt, steps = [1, 7, 100, 101], 40
    theirs = runc_greedy(read_config, w, prompt, steps)
    ours = generate(model, prompt, steps - len(prompt) + 1)
    assert len(set(ours)) > 10  # not a one-token loop, so agreeing means something
    assert theirs == prompt[1:] + ours
