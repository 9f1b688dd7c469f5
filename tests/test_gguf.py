"""GGUF export and import, checked with the ``gguf`` package's own reader (llama.cpp's project) and
``sentencepiece``: every tensor and metadata value as written, exact round trips, clear refusals."""

from __future__ import annotations

import copy

import gguf  # noqa: E402  (a dependency of the library: llama/formats/gguf.py writes through it)
import numpy as np
import pytest
import torch
from helpers import random_model

from llama import ModelConfig, Transformer, generate
from llama.cli.main import main
from llama.formats.gguf import GGUF_NAMES, GGUFVocab, gguf_layout, read_gguf, read_gguf_vocab, save_gguf
from llama.formats.gguf_quant import to_ggml_blocks
from llama.formats.load import load_model, save_model
from llama.tokenizers.gguf_vocab import tokenizer_from_gguf, vocab_from_sentencepiece
from llama.tokenizers.tokenizer import train_sentencepiece

CONFIG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=80,
                     max_seq_len=32, rope_theta=500000.0, norm_eps=1e-6)
TEXT = ("The quick brown fox jumps over the lazy dog. Once upon a time, 12 cats sat  on a mat.\n"
        "Über café naïve — tabs\tand  spaces.\n") * 20
SAMPLES = ["Hello world", "  two  spaces ", "Über café 123 ✓ 日本", "the lazy dog\nand\ttabs", ""]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "tok.model"
    train_sentencepiece(TEXT, CONFIG.vocab_size, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, spm_model):
    """A random model saved as a Hugging Face folder, then `llama convert --to gguf` in both dtypes."""
    folder = tmp_path_factory.mktemp("gguf")
    model = random_model(CONFIG)
    save_model(model, folder / "hf")
    files = {}
    for dtype in ("float32", "float16"):
        files[dtype] = folder / f"m-{dtype}.gguf"
        assert main(["convert", str(folder / "hf"), str(files[dtype]), "--to", "gguf", "--dtype", dtype,
                     "--tokenizer", str(spm_model)]) == 0
    return model, files


def ggml_names(n_layers: int) -> dict[str, str]:
    out = {}
    for ours, theirs in GGUF_NAMES.items():
        for i in range(n_layers if "{i}" in ours else 1):
            out[ours.format(i=i)] = theirs.format(i=i)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gguf_reader_sees_every_tensor_as_written(exported, dtype):
    model, files = exported
    reader = gguf.GGUFReader(files[dtype])
    tensors = {t.name: t for t in reader.tensors}
    names = ggml_names(CONFIG.n_layers)
    assert set(tensors) == set(names.values())  # untied head included
    want_type = gguf.GGMLQuantizationType.F32 if dtype == "float32" else gguf.GGMLQuantizationType.F16
    for ours, theirs in names.items():
        w = model.state_dict()[ours]
        t = tensors[theirs]
        assert list(t.shape) == list(reversed(w.shape))  # GGUF lists the innermost dim first
        if w.dim() == 1:  # norms stay float32, as llama.cpp's converter keeps 1-D tensors
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            assert np.array_equal(t.data, w.numpy())
        else:
            assert t.tensor_type == want_type
            assert np.array_equal(t.data, w.to(getattr(torch, dtype)).numpy())
        assert t.data_offset % reader.alignment == 0


def test_gguf_reader_sees_every_metadata_value_as_written(exported, spm_model):
    import sentencepiece

    _, files = exported
    reader = gguf.GGUFReader(files["float32"])
    value = {name: field.contents() for name, field in reader.fields.items()}
    expected = {
        "general.architecture": "llama", "general.name": "m-float32", "general.file_type": 0,
        "llama.context_length": 32, "llama.embedding_length": 32, "llama.block_count": 2,
        "llama.feed_forward_length": 80, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 8, "llama.rope.freq_base": 500000.0, "llama.vocab_size": 300,
        "llama.attention.layer_norm_rms_epsilon": float(np.float32(1e-6)),
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.add_space_prefix": True,
    }
    assert {k: value[k] for k in expected} == expected
    assert gguf.GGUFReader(files["float16"]).fields["general.file_type"].contents() == 1
    # The vocabulary, against sentencepiece's own reading of the .model.
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    n = sp.get_piece_size()
    assert value["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(n)]
    assert value["tokenizer.ggml.scores"] == [float(np.float32(sp.get_score(i))) for i in range(n)]
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i)
             else 1 for i in range(n)]
    assert value["tokenizer.ggml.token_type"] == kinds
    assert kinds.count(6) == 256 and kinds.count(1) == n - 259


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_gives_identical_tensors_and_logits(exported, dtype):
    model, files = exported
    config, sd = read_gguf(files[dtype])
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.vocab_size, config.hidden_dim,
            config.max_seq_len, config.rope_theta, config.norm_eps, config.tie_embeddings) == \
           (32, 2, 4, 2, 300, 80, 32, 500000.0, 1e-6, False)
    for name, w in model.state_dict().items():
        want = w if (dtype == "float32" or w.dim() == 1) else w.half()
        assert sd[name].dtype == want.dtype and torch.equal(sd[name], want), name
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    # Both models in the file's dtype: ours cast to it, and the file's (its float32 norms cast too).
    again = load_model(files[dtype], dtype=getattr(torch, dtype))
    source = copy.deepcopy(model).to(getattr(torch, dtype))
    with torch.no_grad():
        assert torch.equal(again(tokens), source(tokens))


def test_tied_head_is_left_out_and_comes_back_tied(tmp_path):
    model = random_model(ModelConfig(dim=16, n_layers=1, n_heads=2, vocab_size=40, max_seq_len=8, tie_embeddings=True))
    save_gguf(model.state_dict(), model.config, tmp_path / "t.gguf")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(tmp_path / "t.gguf").tensors}
    again = load_model(tmp_path / "t.gguf")
    assert again.config.tie_embeddings
    x = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_tokenizer_from_gguf_encodes_like_sentencepiece(exported, spm_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    tok = tokenizer_from_gguf(exported[1]["float32"])
    for text in SAMPLES:
        assert tok.encode(text, bos=True) == [1] + sp.encode(text), text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A random model saved as `llama train` leaves one: OUT/model with its byte-level BPE tokenizer.json
    (GPT-2's pattern, one special token)."""
    from llama.tokenizers.bpe import BPETokenizer

    folder = tmp_path_factory.mktemp("bpe") / "model"
    tok = BPETokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>"])
    save_model(random_model(ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=32)), folder)
    tok.save(folder / "tokenizer.json")
    return folder


def test_bpe_tokenizer_goes_to_gguf_as_gpt2_and_comes_back(bpe_folder, tmp_path, capsys):
    """`llama convert OUT/model X.gguf --to gguf` stores the model's own byte-level BPE the way
    llama.cpp stores GPT-2's; `llama generate X.gguf --prompt` reads it back, without --tokenizer."""
    from llama.tokenizers.bpe import BPETokenizer
    from llama.tokenizers.gguf_vocab import byte_chars

    tok = BPETokenizer.load(bpe_folder / "tokenizer.json")
    path = tmp_path / "m.gguf"
    assert main(["convert", str(bpe_folder), str(path), "--to", "gguf"]) == 0
    assert capsys.readouterr().out.endswith(
        f"float32, byte-level BPE tokenizer of 300 pieces from {bpe_folder / 'tokenizer.json'}\n")
    reader = gguf.GGUFReader(path)
    fields = {name: reader.get_field(name).contents() for name in reader.fields}
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens, merges = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.merges"]
    assert tokens[:256] == byte_chars() and tokens[-1] == "<|endoftext|>" and len(set(tokens)) == 300
    assert len(merges) == 300 - 256 - 1 and all(a + b == tokens[256 + k] for k, (a, b) in enumerate(m.split(" ") for m in merges))
    assert "".join(tokens[i] for i in tok.encode(" the lazy\n")) == "ĠtheĠlazyĊ"  # a space is Ġ, a newline Ċ
    assert fields["tokenizer.ggml.token_type"] == [1] * 299 + [4] and fields["tokenizer.ggml.add_bos_token"] is False
    assert "tokenizer.ggml.scores" not in fields and fields["tokenizer.ggml.eos_token_id"] == 299  # <|endoftext|>
    back = tokenizer_from_gguf(path)
    for text in [*SAMPLES, "a<|endoftext|>b"]:
        assert back.encode(text) == tok.encode(text), text
    assert main(["generate", str(path), "--prompt", "The quick", "-n", "8"]) == 0
    from_gguf = capsys.readouterr().out
    assert main(["generate", str(bpe_folder), "--prompt", "The quick", "-n", "8"]) == 0
    assert capsys.readouterr().out == from_gguf and from_gguf.startswith("The quick")


def test_bpe_tokenizers_gguf_cannot_hold_are_refused(tmp_path):
    from llama.tokenizers.bpe import LLAMA3_PATTERN, BPETokenizer
    from llama.tokenizers.gguf_vocab import vocab_from_bpe

    with pytest.raises(ValueError, match="another pattern than GPT-2's; llama.cpp runs GPT-2's"):
        vocab_from_bpe(BPETokenizer([], pattern=LLAMA3_PATTERN))
    twice = BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])  # "abc" made twice: ab+c and a+bc
    with pytest.raises(ValueError, match=r"two tokens with the same text 'abc' \(ids 257 and 259\)"):
        vocab_from_bpe(twice)


def test_layout_covers_the_file_in_order(exported):
    path = exported[1]["float32"]
    parts = gguf_layout(path)
    assert [p[0] for p in parts[:4]] == ["header", "metadata", "tensor infos", "padding"]
    assert parts[0][1] == 0 and parts[-1][2] == path.stat().st_size
    assert all(a[2] == b[1] for a, b in zip(parts, parts[1:]))  # contiguous, no gap, no overlap
    assert parts[3][2] % 32 == 0


def test_stories260K_through_gguf_generates_the_same_ids(shared_file, tmp_path):
    path = shared_file("stories260K.bin")
    assert main(["convert", str(path), str(tmp_path / "s.gguf"), "--to", "gguf"]) == 0
    assert generate(load_model(tmp_path / "s.gguf"), [1], 8) == \
        generate(load_model(path), [1], 8) == [461, 461, 401, 401, 401, 461, 378, 455]


@pytest.mark.slow
def test_llama2_tokenizer_pieces_scores_and_types(shared_file, tmp_path):
    """Meta's 32,000-piece tokenizer on a random model of its vocabulary (seconds: the reader parses 96,000 values)."""
    import sentencepiece

    model_file = shared_file("llama2-tokenizer.model")
    model = random_model(ModelConfig(dim=8, n_layers=1, n_heads=1, vocab_size=32000, max_seq_len=8))
    save_gguf(model.state_dict(), model.config, tmp_path / "l.gguf", vocab=vocab_from_sentencepiece(model_file))
    vocab = read_gguf_vocab(tmp_path / "l.gguf")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    assert vocab.pieces == [sp.id_to_piece(i) for i in range(32000)]
    assert vocab.scores == [sp.get_score(i) for i in range(32000)]
    assert vocab.types.count(6) == 256 and vocab.types[:3] == [2, 3, 3]
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (1, 2, 0, -1)


# ------------------------------------------------------------------------------------- refusals
def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(100))
    with pytest.raises(ValueError, match=r"x.gguf is not a GGUF file: it does not start with the bytes 'GGUF'"):
        load_model(tmp_path / "x.gguf")


def test_truncated_file(exported, tmp_path):
    data = exported[1]["float32"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:700])
    with pytest.raises(ValueError, match=r"cut.gguf: it is truncated or damaged"):
        load_model(tmp_path / "cut.gguf")


def _foreign(path, arch="llama", quantized=None):
    writer = gguf.GGUFWriter(path, arch=arch)
    model = random_model(ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=32, hidden_dim=96, max_seq_len=8,
                                     tie_embeddings=True))
    for key, value in (("context_length", 8), ("embedding_length", 32), ("block_count", 1), ("feed_forward_length", 96),
                       ("attention.head_count", 4), ("attention.head_count_kv", 4), ("rope.dimension_count", 8)):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    names = {k.format(i=0): v.format(i=0) for k, v in GGUF_NAMES.items() if k != "output.weight"}
    for ours, theirs in names.items():
        w = model.state_dict()[ours].numpy()
        if quantized and w.ndim == 2:
            kind = gguf.GGMLQuantizationType[quantized]
            writer.add_tensor(theirs, gguf.quants.quantize(w, kind), raw_dtype=kind)
        else:
            writer.add_tensor(theirs, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_foreign_file_written_by_the_gguf_package_reads(tmp_path):
    config, sd = read_gguf(_foreign(tmp_path / "ok.gguf"))
    assert config.tie_embeddings and config.hidden_dim == 96 and len(sd) == 11


def test_unsupported_tensor_type(tmp_path):
    with pytest.raises(ValueError, match=r"tensor token_embd.weight is stored as Q5_0, which this reader does not "
                                         r"support: it reads F32, F16, Q8_0 and Q4_0"):
        read_gguf(_foreign(tmp_path / "q.gguf", quantized="Q5_0"))


def test_unsupported_architecture(tmp_path):
    with pytest.raises(ValueError, match=r"holds a 'gpt2' model; only the 'llama' architecture is read here"):
        read_gguf(_foreign(tmp_path / "g.gguf", arch="gpt2"))


def test_cli_refusals(exported, spm_model, tmp_path, capsys):
    src = exported[1]["float32"]
    (tmp_path / "t.json").write_text('{"vocab": {}}')
    err = _error(capsys, "convert", str(src), str(tmp_path / "o.gguf"), "--to", "gguf", "--tokenizer", str(tmp_path / "t.json"))
    assert f"{tmp_path / 't.json'} is not a BPE tokenizer file" in err
    err = _error(capsys, "convert", str(src), str(tmp_path / "o.gguf"), "--to", "gguf", "--dtype", "bfloat16")
    assert "--to gguf writes float32 or float16 weights" in err
    err = _error(capsys, "convert", str(src), str(tmp_path / "o"), "--to", "hf", "--tokenizer", str(spm_model))
    assert "--tokenizer is for --to gguf" in err
    (tmp_path / "notes.txt").write_text("mine")
    err = _error(capsys, "convert", str(src), str(tmp_path / "notes.txt"), "--to", "gguf")
    assert "notes.txt exists and is not a GGUF file: it was left as it is" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "o").exists()


def test_library_refusals(tmp_path):
    model = random_model(ModelConfig(dim=16, n_layers=1, n_heads=2, vocab_size=40, max_seq_len=8))
    with pytest.raises(ValueError, match="GGUF export writes float32 or float16, not bfloat16"):
        save_gguf(model.state_dict(), model.config, tmp_path / "a.gguf", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="missing \\['layers.0.attention.wq.weight'\\]"):
        sd = {k: v for k, v in model.state_dict().items() if k != "layers.0.attention.wq.weight"}
        save_gguf(sd, model.config, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def _id_vocab(size: int) -> GGUFVocab:
    """A SentencePiece-shaped vocabulary of ``size`` made-up pieces: llama.cpp needs one to load a
    model, and stories260K's own 512-piece tokenizer is not available (the test works with ids)."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [f"\u2581p{i}" for i in range(size - len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * (size - 259)
    return GGUFVocab(pieces, [0.0] * 259 + [-float(i) for i in range(size - 259)], types, bos_id=1, eos_id=2, unk_id=0)


@pytest.mark.slow
def test_llama_cpp_generates_the_same_ids(tmp_path, shared_file):
    """llama.cpp itself (through llama-cpp-python, optional) runs the exported stories260K greedily."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional: it builds llama.cpp)")
    model = load_model(shared_file("stories260K.bin"))
    prompt = [1, 461, 401]
    ours = generate(model, prompt, 64)
    save_gguf(model.state_dict(), model.config, tmp_path / "s.gguf", vocab=_id_vocab(512))
    llm = llama_cpp.Llama(model_path=str(tmp_path / "s.gguf"), n_ctx=128, n_threads=1, verbose=False)
    theirs = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        theirs.append(token)
        if len(theirs) == len(ours):
            break
    assert theirs == ours


@pytest.mark.slow
def test_llama_cpp_runs_the_book_s_own_kind_of_model_with_its_bpe_tokenizer(tmp_path, capsys):
    """`llama train` (byte-level BPE, as the book's recipe), `llama convert OUT/model --to gguf`, then
    llama.cpp itself: it tokenizes text to our ids, and greedily continues a prompt with the ids
    `llama generate` prints."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional: it builds llama.cpp)")
    from llama.tokenizers.tokenizer import load_tokenizer

    text = tmp_path / "text.txt"
    text.write_text(TEXT * 3 + "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nO Romeo!\n" * 20)
    assert main(["train", "--data", str(text), "--out", str(tmp_path / "run"), "--model", "tiny", "--vocab-size", "320",
                 "--block-size", "64", "--max-steps", "120", "--eval-every", "120", "--threads", "1", "--sample-tokens", "0",
                 "--no-progress", "--dtype", "float32"]) == 0
    assert main(["convert", str(tmp_path / "run" / "model"), str(tmp_path / "m.gguf"), "--to", "gguf"]) == 0
    tok = load_tokenizer(tmp_path / "run" / "model" / "tokenizer.json")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, n_threads=1, verbose=False)
    samples = [*SAMPLES[:-1], "ROMEO:\nBut soft, what light\n\n  JULIET:  O Romeo, 1234 Romeo!\n", TEXT[:200], " \n\n x"]
    for sample in samples:
        assert llm.tokenize(sample.encode("utf-8"), add_bos=False, special=True) == tok.encode(sample), sample
    prompt, n = tok.encode("ROMEO:\nBut"), 40
    ours = generate(load_model(tmp_path / "m.gguf"), prompt, n)
    theirs = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        theirs.append(token)
        if len(theirs) == n:
            break
    assert theirs == ours
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "m.gguf"), "--prompt", "ROMEO:\nBut", "-n", str(n)]) == 0
    assert capsys.readouterr().out == tok.decode(prompt + theirs) + "\n"


def _widened(base: Transformer) -> Transformer:
    """stories260K with its feed-forward width 172, no multiple of 32, widened to 192 by zero rows and
    columns: the same function (SiLU(0) * 0 = 0), and a trained model that Q8_0 can hold."""
    import dataclasses

    sd = dict(base.state_dict())
    for i in range(base.config.n_layers):
        for name, pad in (("w1", (0, 0, 0, 20)), ("w3", (0, 0, 0, 20)), ("w2", (0, 20))):
            key = f"layers.{i}.feed_forward.{name}.weight"
            sd[key] = torch.nn.functional.pad(sd[key], pad)
    wide = Transformer(dataclasses.replace(base.config, hidden_dim=192)).eval()
    wide.load_state_dict(sd, strict=False)
    return wide


def test_our_q8_0_bytes_beside_ggml_quantizer(shared_file):
    """The chapter's count: our int8 (scale rounded to float16 before dividing) against ggml's
    reference Q8_0 quantizer (dividing by the float32 scale) on the same float weights."""
    from llama.quantization.weights import quantize

    wide = _widened(load_model(shared_file("stories260K.bin")))
    floats = {k: v.clone() for k, v in wide.state_dict().items()}
    model = quantize(wide, 8, 32, head=False)
    differ = total = 0
    for name, layer in model.named_modules():
        if hasattr(layer, "qweight"):
            ours, _ = to_ggml_blocks(layer.qweight, layer.scales, name)
            theirs = gguf.quants.quantize(floats[f"{name}.weight"].numpy(), gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(ours.reshape(-1, 34)[:, :2], theirs.reshape(-1, 34)[:, :2])  # same scales
            off = np.abs(ours.view(np.int8).astype(int) - theirs.view(np.int8).astype(int))
            assert off.max() <= 1
            differ, total = differ + int((off > 0).sum()), total + ours.size
    assert (differ, total) == (1505, 261120)


@pytest.mark.slow
def test_llama_cpp_reads_our_q8_0_blocks(tmp_path, shared_file):
    """llama.cpp on our Q8_0 file computes our int8 model's logits, up to its own rounding of the
    activations to 8 bits (ggml's Q8_0 dot product quantizes both sides); a wrong block layout is far off."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional: it builds llama.cpp)")
    from llama.quantization.weights import quantize

    base = load_model(shared_file("stories260K.bin"))
    wide = _widened(base)
    model = quantize(wide, 8, 32, head=False)
    prompt = [1, 461, 401]
    tokens = torch.tensor([prompt + generate(base, prompt, 40)])
    with torch.no_grad():
        ours = model(tokens)[0].numpy()

    def llama_cpp_logits(state_dict, name):
        save_gguf(state_dict, model.config, tmp_path / name, vocab=_id_vocab(512))
        llm = llama_cpp.Llama(model_path=str(tmp_path / name), n_ctx=64, n_threads=1, verbose=False, logits_all=True)
        llm.eval(tokens[0].tolist())
        theirs = np.array(llm.scores[: tokens.shape[1]])
        return np.abs(theirs - ours).max(), (theirs.argmax(-1) == ours.argmax(-1)).mean()

    diff, agree = llama_cpp_logits(model.state_dict(), "q8.gguf")
    assert diff < 3.0 and agree >= 0.9, (diff, agree)  # measured: 1.43 and 0.96 (logits' std 5.2)
    scrambled = {k: v.view(v.shape[0], -1, 32).flip(-1).reshape(v.shape) if k.endswith(".qweight") else v
                 for k, v in model.state_dict().items()}  # each block's bytes in the wrong order
    diff, agree = llama_cpp_logits(scrambled, "bad.gguf")
    assert diff > 10 and agree < 0.5, (diff, agree)  # measured: 25.6 and 0.02


# ------------------------------------------------------------------------------ Q8_0 and Q4_0
@pytest.mark.parametrize("bits, kind, file_type", [(8, "Q8_0", 7), (4, "Q4_0", 2)])
def test_quantized_model_is_written_as_ggml_blocks_and_read_back_exactly(tmp_path, bits, kind, file_type):
    from llama.quantization.weights import quantize

    model = quantize(random_model(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96,
                                              hidden_dim=160, max_seq_len=16)), bits, 32)
    save_gguf(model.state_dict(), model.config, tmp_path / "q.gguf")
    reader = gguf.GGUFReader(tmp_path / "q.gguf")
    assert reader.fields["general.file_type"].contents() == file_type
    tensors = {t.name: t for t in reader.tensors}
    for ours, theirs in ggml_names(2).items():
        t = tensors[theirs]
        if ours.endswith(("norm.weight",)) or ours == "tok_embeddings.weight":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        layer = model.get_submodule(ours.removesuffix(".weight"))
        assert t.tensor_type.name == kind
        # gguf's own dequantizer (ggml's block layout, written by llama.cpp's project) gives our weights.
        assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type), layer.dequantized().numpy()), ours
    again = load_model(tmp_path / "q.gguf")
    assert again.quantization == {"bits": bits, "group_size": 32, "head": True}
    theirs_sd, ours_sd = again.state_dict(), model.state_dict()
    assert set(theirs_sd) == set(ours_sd)
    assert all(theirs_sd[k].dtype == v.dtype and torch.equal(theirs_sd[k], v) for k, v in ours_sd.items())
    tokens = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


def test_per_channel_int8_is_refused(tmp_path):
    from llama.quantization.weights import quantize

    model = quantize(random_model(ModelConfig(dim=64, n_layers=1, n_heads=4, vocab_size=40, max_seq_len=8)), 8)
    with pytest.raises(ValueError, match=r"layers.0.attention.wq.weight: int8 with one scale per row \(per channel\) "
                                         r"has no GGUF block type: .* quantize with group_size=32"):
        save_gguf(model.state_dict(), model.config, tmp_path / "pc.gguf")
    assert not (tmp_path / "pc.gguf").exists()


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
def test_blocks_made_by_ggml_quantizer_load_and_compute_as_gguf_dequantizes_them(tmp_path, kind, monkeypatch):
    """A file quantized by the gguf package itself (ggml's rounding, Q4_0's -8 included): our model
    computes with exactly the weights gguf's dequantizer gives, embedding included."""
    # The layers' PyTorch path, dequantize then multiply, whether or not an earlier test in this
    # process loaded the C++ kernel (its sums, in another order, differ in the last bits).
    import llama.quantization.weights

    monkeypatch.setattr(llama.quantization.weights, "kernel_loaded", lambda: False)
    path = _foreign(tmp_path / "f.gguf", quantized=kind)
    model = load_model(path)
    assert model.quantization["bits"] == (8 if kind == "Q8_0" else 4)
    plain = {}
    for t in gguf.GGUFReader(path).tensors:
        plain[t.name] = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type)))
    names = {k.format(i=0): v.format(i=0) for k, v in GGUF_NAMES.items() if k != "output.weight"}
    reference = Transformer(model.config).eval()
    reference.load_state_dict({ours: plain[theirs] for ours, theirs in names.items()}, strict=False)
    assert torch.equal(model.tok_embeddings.weight, plain["token_embd.weight"])
    tokens = torch.tensor([[1, 5, 9, 30, 2]])
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))
