"""The hand-written SentencePiece tokenizer against the ``sentencepiece`` library, id for id."""

from __future__ import annotations

import functools
import io
import struct
from pathlib import Path

import pytest
import sentencepiece
from helpers import REPO, pb_field
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama.tokenizers.protobuf import iter_fields
from llama.tokenizers.spm import SentencePieceTokenizer, _decode_bytes
from llama.tokenizers.spm_vocab import SPACE, read_model_proto
from llama.tokenizers.tokenizer import train_sentencepiece

# Text the project trains its own models on, so these checks run without ../shared.
MULTILINGUAL = """\
Tokenizers turn text into integers.  A language model only ever sees the integers.
Les tokenizers découpent le texte en morceaux ; l'été dernier, à Paris.
Der Tokenizer zerlegt Wörter: Straße, Größe, Übermut.
トークナイザーはテキストを分割します。東京は日本の首都です。
分词器把文本切成小块。我们今天学习字节对编码。
Токенизатор разбивает текст на части. Привет, мир!
emoji: 😀 🎉 👍🏽 🇫🇷 and numbers 12345 3.14159 2024-01-01
	tabs	and    runs of     spaces, trailing spaces   
def encode(self, text: str) -> list[int]:
    return [self.vocab[b] for b in text.encode("utf-8")]
"""


@functools.cache
def project_corpus() -> str:
    """The book's and the package's own text, plus some multilingual lines (no downloads)."""
    parts = [MULTILINGUAL * 3]
    for pattern in ("book/*.md", "llama/*.py"):
        for path in sorted(REPO.glob(pattern)):
            parts.append(path.read_text(encoding="utf-8"))
    return "\n".join(parts)


def trained_model(**options) -> bytes:
    """Train a SentencePiece BPE model on the project corpus with the library; return its bytes."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    return _trained_model(key)


@functools.cache
def _trained_model(key: tuple) -> bytes:
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in key}
    buf = io.BytesIO()
    settings_ = dict(
        model_type="bpe", vocab_size=options.pop("vocab_size", 1000), hard_vocab_limit=False,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2, num_threads=2,
    )
    settings_.update(options)
    lines = [line for line in project_corpus().splitlines() if line.strip()]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, **settings_)
    return buf.getvalue()


def with_normalizer_flags(data: bytes, **flags: bool) -> bytes:
    """Rewrite a model's NormalizerSpec booleans (every top-level field is a message)."""
    numbers = {"add_dummy_prefix": 3, "remove_extra_whitespaces": 4, "escape_whitespaces": 5}
    out = bytearray()
    for number, value in iter_fields(data):
        if number == 3:
            spec = bytearray()
            for n, v in iter_fields(value):
                if n in (1, 2, 6):
                    spec += pb_field(n, v)
            for name, flag in flags.items():
                spec += pb_field(numbers[name], int(flag))
            value = bytes(spec)
        out += pb_field(number, value)
    return bytes(out)


def pair(data: bytes):
    return SentencePieceTokenizer.from_bytes(data), sentencepiece.SentencePieceProcessor(model_proto=data)


@functools.cache
def _llama2(path: str):
    return pair(Path(path).read_bytes())


@pytest.fixture
def llama2(shared_file):
    return _llama2(str(shared_file("llama2-tokenizer.model")))


@pytest.fixture(scope="module")
def ours_trained():
    return pair(trained_model())


# ---------------------------------------------------------------- strings to compare on
SPECIAL_CHARS = list(" \t\n\r\x00\x0b\x0c\x1b\u00a0\u2028\u3000") + [
    SPACE, SPACE + SPACE, "😀", "👍🏽", "🇫🇷", "中", "文", "日本", "é", "e\u0301", "ﬁ", "Ω", "\ufffd", "\U0010fffd",
]
WORDS = ["the", "The", " the", "ing", "tion", "Hello", "world", "  ", "   ", "\n", "\n\n", "\t",
         "123", "2024", "3.14", "'s", "--", "def", "(", ")", ":", "Straße", "東京", "Привет"]

strings = st.one_of(
    st.text(max_size=20),  # arbitrary Unicode (hypothesis excludes only lone surrogates)
    st.lists(st.one_of(st.sampled_from(SPECIAL_CHARS), st.characters(codec="utf-8")), max_size=20).map("".join),
    st.lists(st.sampled_from(WORDS + SPECIAL_CHARS), max_size=12).map("".join),
    st.text(alphabet=" \t\nab", max_size=20),  # leading/trailing/multiple spaces
)
BATCH = 50


def compare_on_strings(ours: SentencePieceTokenizer, lib, n_strings: int) -> int:
    """Compare encode and decode(encode) on batches of generated strings; return the count."""
    seen = []

    @settings(max_examples=n_strings // BATCH + 5, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(strings, min_size=BATCH, max_size=BATCH))
    def check(batch):
        expected = lib.encode(batch)
        for s, ids in zip(batch, expected):
            assert ours.encode(s) == ids, s
            assert ours.decode(ids) == lib.decode(ids), s
        seen.append(len(batch))

    check()
    return sum(seen)


# ---------------------------------------------------------------- Llama 2's model
def test_llama2_model_fields(llama2):
    """The facts the chapter states about Llama 2's tokenizer.model."""
    ours, lib = llama2
    p = ours.proto
    assert (p.model_type, len(p.pieces), p.byte_fallback, p.split_digits) == ("bpe", 32000, True, True)
    assert (p.normalizer_name, p.add_dummy_prefix, p.remove_extra_whitespaces, p.escape_whitespaces) == (
        "identity", True, False, True)
    assert p.precompiled_charsmap == b""
    assert (ours.bos_id, ours.eos_id, ours.unk_id, ours.vocab_size) == (lib.bos_id(), lib.eos_id(), lib.unk_id(), 32000)
    for i in range(0, 32000, 97):
        assert ours.id_to_piece(i) == lib.id_to_piece(i)
        assert ours.scores[i] == lib.get_score(i)


def test_llama2_every_line_of_tinyshakespeare(llama2, shared_file):
    ours, lib = llama2
    lines = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) > 40_000
    expected = lib.encode(lines)
    mismatches = [line for line, ids in zip(lines, expected) if ours.encode(line) != ids]
    assert mismatches == []
    for ids in expected[:2000]:
        assert ours.decode(ids) == lib.decode(ids)


def test_llama2_whole_tinyshakespeare_at_once(llama2, shared_file):
    ours, lib = llama2
    text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    ids = lib.encode(text)
    assert ours.encode(text) == ids
    assert ours.decode(ids) == lib.decode(ids) == text
    assert ours.encode(text, bos=True, eos=True) == [1] + ids + [2]


@pytest.mark.slow  # 10,000 strings through two tokenizers
def test_llama2_10000_generated_strings(llama2):
    assert compare_on_strings(*llama2, n_strings=10_000) >= 10_000


def test_llama2_examples_from_the_chapter(llama2):
    ours, lib = llama2
    for s in ["Hello world", " Hello", "  two  spaces  ", "\n", "日本語 😀", "", " ", "a\tb"]:
        assert ours.encode(s) == lib.encode(s)
        assert ours.encode_as_pieces(s) == lib.encode(s, out_type=str)


# ---------------------------------------------------------------- a model we train ourselves
@pytest.mark.slow  # 10,000 strings through two tokenizers
def test_trained_model_10000_generated_strings(ours_trained):
    assert compare_on_strings(*ours_trained, n_strings=10_000) >= 10_000


def test_trained_model_on_its_corpus(ours_trained):
    ours, lib = ours_trained
    text = project_corpus()
    assert ours.encode(text) == lib.encode(text)
    lines = text.splitlines()
    assert [ours.encode(line) for line in lines] == lib.encode(lines)


def test_train_sentencepiece_writes_a_model_the_reader_loads(tmp_path):
    path = tmp_path / "sub" / "tok.model"
    ours = train_sentencepiece(MULTILINGUAL * 5, vocab_size=400, model_path=path, hard_vocab_limit=False)
    lib = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert ours.vocab_size == lib.vocab_size()
    assert compare_on_strings(ours, lib, n_strings=500) >= 500
    assert list(tmp_path.glob("sub/*")) == [path]  # no temp files left behind
    # A Path is read as a file; a str is the text itself.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(MULTILINGUAL * 5, encoding="utf-8")
    from_file = train_sentencepiece(corpus, vocab_size=400, hard_vocab_limit=False)
    assert from_file.pieces == ours.pieces
    with pytest.raises(FileNotFoundError, match="no corpus file"):
        train_sentencepiece(tmp_path / "missing.txt", vocab_size=400)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_sentencepiece("  \n\n", vocab_size=400)
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        train_sentencepiece("tiny corpus", vocab_size=5000)


@pytest.mark.parametrize(
    "options",
    [
        # user-defined pieces are never split; control pieces in text are plain text
        dict(user_defined_symbols=["<tab>", "@@", "東京"], control_symbols=["<sep>"]),
        # leading/trailing/duplicate spaces removed
        dict(remove_extra_whitespaces=True),
        # no byte fallback: a run of unknown characters becomes one <unk>
        dict(byte_fallback=False, character_coverage=0.98),
        dict(add_dummy_prefix=False),
        # the BPE trainer insists on escape_whitespaces, so that one is patched in afterwards
        dict(patch=dict(escape_whitespaces=False, remove_extra_whitespaces=True)),
        dict(patch=dict(escape_whitespaces=False, add_dummy_prefix=False)),
        dict(add_dummy_prefix=False, remove_extra_whitespaces=True, user_defined_symbols=["x", "a b"]),
    ],
    ids=["user-defined", "remove-spaces", "no-byte-fallback", "no-dummy-prefix", "no-escape",
         "no-escape-no-prefix", "mixed"],
)
def test_variants_match_the_library(options):
    options = dict(options)
    patch = options.pop("patch", None)
    data = trained_model(vocab_size=500, **options)
    if patch:
        data = with_normalizer_flags(data, **patch)
    ours, lib = pair(data)
    assert lib.encode("a b") == ours.encode("a b")
    extra = ["<tab>x<tab>", "a@@@b", "東京東京", "<sep>", "  a  b  ", "x  ", "ab c", " x x", "a b"]
    for s in extra:
        assert ours.encode(s) == lib.encode(s), s
        assert ours.decode(lib.encode(s)) == lib.decode(lib.encode(s)), s
    assert compare_on_strings(ours, lib, n_strings=500) >= 500


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_decode_arbitrary_ids_like_the_library(data):
    """Any id sequence (byte pieces forming invalid UTF-8, <s> in the middle, <unk>, ...)."""
    ours, lib = pair(trained_model())
    n = ours.vocab_size
    ids = data.draw(st.lists(st.one_of(st.integers(0, 300), st.integers(0, n - 1)), max_size=30))
    assert ours.decode(ids) == lib.decode(ids)


def test_decode_bytes_one_replacement_per_invalid_byte():
    # Python's errors="replace" gives ONE U+FFFD for the truncated 3-byte sequence E2 96;
    # SentencePiece gives one per byte.
    assert b"\xe2\x96".decode("utf-8", errors="replace") == "\ufffd"
    assert _decode_bytes(b"\xe2\x96") == "\ufffd\ufffd"
    assert _decode_bytes(b"a\xe2\x96\x81b\xff") == "a\u2581b\ufffd"
    assert _decode_bytes(b"\xed\xa0\x80") == "\ufffd" * 3  # an encoded surrogate is invalid
    assert _decode_bytes(b"\xf0\x9f\x98\x80") == "😀"


# ---------------------------------------------------------------- the model file and bad input
def test_read_model_proto_by_hand():
    # (The wire format itself is tested in tests/test_protobuf.py.)
    # A model with one piece: pieces { piece: "a" score: -2 type: NORMAL } and a bpe trainer spec
    piece = b"\x0a\x01a" + b"\x15" + struct.pack("<f", -2.0) + b"\x18\x01"
    model = b"\x0a" + bytes([len(piece)]) + piece + b"\x12\x02\x18\x02"
    proto = read_model_proto(model)
    assert (proto.pieces[0].piece, proto.pieces[0].score, proto.pieces[0].type, proto.model_type) == ("a", -2.0, 1, "bpe")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SentencePiece model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    text = tmp_path / "text.model"
    text.write_text("this is not a model\n")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(text)
    data = trained_model()
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(truncated)
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer.from_bytes(b"")


@pytest.mark.slow  # trains two SentencePiece models
def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match="unigram model"):
        SentencePieceTokenizer.from_bytes(trained_model(model_type="unigram", vocab_size=600))
    with pytest.raises(ValueError, match="normalization rule 'nmt_nfkc'.*identity"):
        SentencePieceTokenizer.from_bytes(trained_model(normalization_rule_name="nmt_nfkc", vocab_size=600))


def test_bad_ids_and_text():
    ours, _ = pair(trained_model())
    for bad in (-1, ours.vocab_size, 2.0, "3"):
        with pytest.raises(ValueError, match="out of range"):
            ours.decode([5, bad])
    with pytest.raises(ValueError, match="lone surrogate|not valid Unicode"):
        ours.encode("a\ud800b")
