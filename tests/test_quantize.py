"""Weight-only quantization: the scheme's error bound, the int4 packing, Q8_0 bytes read by gguf, the model."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_model

from llama import ModelConfig, Transformer
from llama.formats.load import load_model, save_model
from llama.quantization.weights import QuantizedLinear, dequantize_tensor, quantize, quantize_tensor, unpack_int4

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, hidden_dim=96, max_seq_len=64)
# A model whose weights are drawn like trained ones, N(0, 0.08), its norm gains left at 1 (helpers.random_model).
TRAINED_LIKE = dict(random_gains=False, weights_std=0.08)


@pytest.mark.parametrize("bits,group_size", [(8, 64), (8, 32), (4, 32), (4, 64)])
def test_error_is_at_most_half_a_step(bits, group_size):
    torch.manual_seed(1)
    w = torch.randn(16, 128) * torch.logspace(-2, 1, 16)[:, None]  # rows of very different sizes
    w[3, 7] = 40.0  # an outlier: only its own group pays for it
    q, s = quantize_tensor(w, bits, group_size)
    step = s.float().repeat_interleave(group_size, dim=1)
    err = (dequantize_tensor(q, s, bits, group_size) - w).abs()
    assert (err <= step / 2 + 1e-7 * w.abs()).all()
    qmax = 127 if bits == 8 else 7
    # The largest weight of each group lands on +-qmax: the scale is the group's absmax / qmax.
    values = q.float() if bits == 8 else unpack_int4(q, group_size).float()
    per_group_max = values.abs().view(16, -1, group_size).amax(-1)
    assert (per_group_max == qmax).all()


def test_scale_is_rounded_to_float16_before_dividing():
    w = torch.tensor([[0.1234567, -0.05, 0.0771, 0.0]])
    q, s = quantize_tensor(w, 8, 4)
    # Dividing by the float16 scale, not by absmax / 127 in float32, gives these integers.
    assert q.tolist() == [torch.round(w / s.float()).to(torch.int8).tolist()[0]]
    assert s.dtype == torch.float16 and s.item() == torch.tensor(0.1234567 / 127).half().item()


def test_int4_nibble_order():
    w = torch.tensor([[1.0, -7.0, 3.0, 7.0, 2.0, 0.0, -7.0, 5.0]])  # absmax 7: scale 1, q = w
    q, s = quantize_tensor(w, 4, 4)
    assert s.tolist() == [[1.0, 1.0]]
    # In each group of 4: byte j holds column j (low nibble) and j + 2 (high), each as q + 8.
    assert q.tolist() == [[(1 + 8) | ((3 + 8) << 4), (-7 + 8) | ((7 + 8) << 4),
                           (2 + 8) | ((-7 + 8) << 4), (0 + 8) | ((5 + 8) << 4)]]
    assert unpack_int4(q, 4).tolist() == [[1, -7, 3, 7, 2, 0, -7, 5]]


def test_zero_group_and_bad_input():
    q, s = quantize_tensor(torch.zeros(2, 32), 8, 32)
    assert (q == 0).all() and (s == 0).all()
    with pytest.raises(ValueError, match="divides the 48 inputs"):
        quantize_tensor(torch.randn(2, 48), 4, 32)
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        quantize_tensor(torch.randn(2, 32), 3, 32)
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize_tensor(torch.tensor([[float("nan"), 1.0]]), 8, 2)
    with pytest.raises(ValueError, match="too large for a float16 scale"):
        quantize_tensor(torch.tensor([[1e8, 1.0]]), 8, 2)


def test_int8_group_32_is_q8_0_for_gguf():
    """Our int8 pairs, laid out as Q8_0 blocks, read back through gguf's own dequantizer; and its quantizer agrees."""
    gguf_quants = pytest.importorskip("gguf.quants", reason="the gguf package (llama.cpp's Python reader) is needed")
    from gguf import GGMLQuantizationType

    torch.manual_seed(2)
    w = torch.randn(8, 256) * 0.05
    q, s = quantize_tensor(w, 8, 32)
    blocks = torch.cat([s.reshape(-1, 1).view(torch.uint8), q.reshape(-1, 32).view(torch.uint8)], dim=1)
    theirs = gguf_quants.dequantize(blocks.reshape(8, -1).numpy(), GGMLQuantizationType.Q8_0)
    ours = dequantize_tensor(q, s, 8, 32)
    assert torch.equal(torch.from_numpy(theirs), ours)
    # ggml quantizes with the float32 scale and stores it rounded: at most one step apart from ours.
    their_bytes = gguf_quants.quantize(w.numpy(), GGMLQuantizationType.Q8_0)
    their_w = torch.from_numpy(gguf_quants.dequantize(their_bytes, GGMLQuantizationType.Q8_0))
    step = s.float().repeat_interleave(32, dim=1)
    assert ((their_w - ours).abs() <= step * 1.001).all()
    assert (their_w == ours).float().mean() > 0.95


@pytest.mark.parametrize("bits,group_size", [(8, None), (8, 32), (4, 32)])
def test_quantized_model_is_the_dequantized_float_model(bits, group_size):
    model = random_model(CONFIG, **TRAINED_LIKE)
    qmodel = quantize(copy.deepcopy(model), bits, group_size)
    layers = [m for m in qmodel.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 7 * CONFIG.n_layers + 1  # every projection and the head
    assert isinstance(qmodel.tok_embeddings, torch.nn.Embedding)
    # The same float model with each weight replaced by its dequantized value gives the same logits.
    with torch.no_grad():
        for (_name, m), (_, qm) in zip(model.named_modules(), qmodel.named_modules()):
            if isinstance(qm, QuantizedLinear):
                m.weight = torch.nn.Parameter(qm.dequantized())
        tokens = torch.tensor([[1, 5, 9, 33, 2]])
        assert torch.allclose(qmodel(tokens), model(tokens), atol=1e-5)


def test_quantize_refuses_twice_and_bad_group():
    model = quantize(random_model(CONFIG, **TRAINED_LIKE), 8)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, 8)
    with pytest.raises(ValueError, match=r"divides the inputs of every layer \(64 and 96 here\): use 32, 16 or 8"):
        quantize(random_model(CONFIG, **TRAINED_LIKE), 4, group_size=48)


def test_a_group_size_that_fits_no_layer_is_refused_with_sizes_that_fit_every_layer(tmp_path, capsys):
    """stories260K's layers take 64 inputs (attention, w1, w3, the head) and 172 (w2): 32 divides
    neither of them all, and the sizes the refusal suggests must each quantize the whole model."""
    import re

    from llama.cli.main import main

    config = ModelConfig(dim=64, n_layers=1, n_heads=8, n_kv_heads=4, vocab_size=512, hidden_dim=172, max_seq_len=32)
    save_model(Transformer(config), tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--quantize", "int4", "--group-size", "32", "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert err == ("llama generate: error: group_size=32 (--group-size) must be an even number that divides the inputs "
                   "of every layer (64 and 172 here): use 4 or 2, which divide them all, or leave --group-size out for "
                   "one scale per row\n")
    suggested = [int(n) for n in re.findall(r"\d+", err.split("use ", 1)[1].split(",")[0])]
    assert suggested == [4, 2]
    for size in suggested:
        quantize(Transformer(config), 4, group_size=size)
    assert main(["generate", str(tmp_path / "m"), "--quantize", "int4", "-n", "2"]) == 0  # one scale per row


@pytest.mark.compile
@pytest.mark.parametrize("bits,group_size", [(8, 64), (8, 32), (4, 32)])
def test_compiled_one_row_product_equals_eager(bits, group_size):
    from llama.inference.compiled import missing_cxx_compiler

    if missing_cxx_compiler():
        pytest.skip(missing_cxx_compiler())
    torch.manual_seed(3)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(64, 48, bias=False), bits, group_size)
    x = torch.randn(1, 1, 64)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    assert torch.allclose(compiled(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("bits,group_size,head", [(8, None, True), (4, 32, False)])
def test_save_and_load_give_the_same_model(tmp_path, bits, group_size, head):
    from llama.quantization.weights import save_quantized

    config = ModelConfig(**{**CONFIG.to_dict(), "tie_embeddings": True})
    torch.manual_seed(0)
    qmodel = quantize(Transformer(config).eval(), bits, group_size, head=head)
    save_quantized(qmodel, tmp_path / "q")
    loaded = load_model(tmp_path / "q", dtype=torch.bfloat16)
    assert loaded.quantization == qmodel.quantization
    for name, t in qmodel.state_dict().items():  # integers and float16 scales exactly as saved
        if name.endswith(("qweight", "scales")):
            assert torch.equal(loaded.state_dict()[name], t), name
    loaded = load_model(tmp_path / "q")
    tokens = torch.tensor([[1, 4, 9, 16]])
    assert torch.equal(loaded(tokens), qmodel(tokens))
    with pytest.raises(FileExistsError, match="left as it is"):
        save_quantized(qmodel, tmp_path / "q")


def test_save_refuses_a_float_model_and_load_refuses_wrong_dtypes(tmp_path):
    from safetensors.torch import load_file, save_file

    from llama.quantization.weights import save_quantized

    with pytest.raises(ValueError, match="not quantized"):
        save_quantized(random_model(CONFIG, **TRAINED_LIKE), tmp_path / "f")
    save_quantized(quantize(random_model(CONFIG, **TRAINED_LIKE), 8), tmp_path / "q")
    sd = load_file(tmp_path / "q" / "model.safetensors")
    sd["layers.0.attention.wq.qweight"] = sd["layers.0.attention.wq.qweight"].float()
    save_file(sd, tmp_path / "q" / "model.safetensors")
    with pytest.raises(ValueError, match="wq.qweight is torch.float32"):
        load_model(tmp_path / "q")


def test_cli_convert_then_generate(tmp_path, capsys):
    from llama.cli.main import main
    from llama.inference.generation import generate

    model = random_model(CONFIG, **TRAINED_LIKE)
    save_model(model, tmp_path / "f")
    assert main(["convert", str(tmp_path / "f"), str(tmp_path / "q"), "--to", "quantized", "--quantize", "int4",
                 "--group-size", "32"]) == 0
    assert "int4 weights, groups of 32" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "q"), "--ids", "1", "7", "-n", "8"]) == 0
    printed = [int(x) for x in capsys.readouterr().out.split()]
    assert printed == generate(quantize(model, 4, 32), [1, 7], 8)
    # --quantize on generate quantizes the float checkpoint after loading: the same ids.
    assert main(["generate", str(tmp_path / "f"), "--ids", "1", "7", "-n", "8", "--quantize", "int4",
                 "--group-size", "32"]) == 0
    assert [int(x) for x in capsys.readouterr().out.split()] == printed
    for argv, message in [
        (["convert", str(tmp_path / "f"), str(tmp_path / "h"), "--to", "hf", "--quantize", "int8"], "go together"),
        (["generate", str(tmp_path / "f"), "--group-size", "32"], "--group-size needs --quantize"),
        (["convert", str(tmp_path / "q"), str(tmp_path / "h"), "--to", "hf"], "cannot hold"),
        (["generate", str(tmp_path / "f"), "--quantize", "int4", "--group-size", "48"], "divides the inputs of every layer (64 and 96 here)"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
