"""The chat format (llama/posttraining/): the template against transformers' apply_chat_template, the
ids against transformers' and sentencepiece's tokenizers, the mask, packing, the errors, the new
rows of the model, the KV-cached conversation against decoding from scratch, and ``llama chat``."""

from __future__ import annotations

import copy
import functools
import random

import pytest
import torch
from helpers import refused

from llama.cli.main import main
from llama.formats.load import save_model
from llama.inference.generation import generate
from llama.inference.sampling import Sampling
from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.posttraining.chat import CHAT_TOKENS, LLAMA3_CHAT_TEMPLATE, ChatFormat, check_template, pack
from llama.posttraining.chat_session import ChatSession
from llama.posttraining.special_tokens import (
    add_special_tokens,
    resize_vocab,
    save_tokenizer,
    special_token_ids,
    write_model_proto,
)
from llama.tokenizers.bpe import BPETokenizer
from llama.tokenizers.pretokenize import GPT2_PATTERN, LLAMA3_PATTERN
from llama.tokenizers.tokenizer import load_tokenizer, train_sentencepiece

# Pieces of text the conversations are made of: ASCII words and punctuation, whitespace of several
# kinds (trimmed by the template at the ends of a message), accents, combining marks, CJK, emoji.
PIECES = (list("abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,!?'-():;\"") + [" ", " ", "\n", "\n\n", "\t", "  "]
          + ["the", " cat", " sat", "'s", "'ll", "é", "ß", "naïve", "жук", "中文", "日本語", "😀", "👍🏽", "e\u0301",
             "\u00a0", "\u3000", "\u2028", "<", "|", ">", "<|", "|>", "\r\n"])
_rng = random.Random(1)
CORPUS = "".join(_rng.choice(PIECES) for _ in range(4000)) + "\n\nHello there.\n\nHi!\n\n" * 20


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25)))


def random_conversation(rng: random.Random) -> list[dict]:
    """System or not, one to four user/assistant rounds, sometimes ending on the user, sometimes
    in an order no chat would take (the template does not care, and neither may we)."""
    messages = [{"role": "system", "content": random_text(rng)}] if rng.random() < 0.4 else []
    for _ in range(rng.randint(1, 4)):
        messages += [{"role": "user", "content": random_text(rng)}, {"role": "assistant", "content": random_text(rng)}]
    if rng.random() < 0.3:
        messages.pop()
    if rng.random() < 0.15:
        rng.shuffle(messages)
    return messages


@functools.cache
def chat_bpe(pattern: str) -> BPETokenizer:
    """A BPE trained on the conversations' pieces, with the chat tokens: GPT-2's pattern (which keeps
    a final "\n\n" whole but splits it before a word) or Llama 3's."""
    return add_special_tokens(BPETokenizer.train(CORPUS, 500, pattern=pattern), CHAT_TOKENS)


@pytest.fixture(scope="module", params=["gpt2", "llama3"])
def bpe(request) -> BPETokenizer:
    return chat_bpe(GPT2_PATTERN if request.param == "gpt2" else LLAMA3_PATTERN)


@pytest.fixture(scope="module")
def spm():
    return add_special_tokens(train_sentencepiece(CORPUS.replace("\n", " ") + "\n" + "hello world\n" * 50, 400),
                              CHAT_TOKENS)


def hf_tokenizer(ours: BPETokenizer):
    """transformers' fast tokenizer for our byte-level BPE (the Rust ``tokenizers`` library runs it),
    with the chat tokens added as special tokens and Llama 3's template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    text = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {text(ours.vocab[i]): i for i in range(256 + len(ours.merges))}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[(text(a), text(b)) for a, b in ours.merges]))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(ours.pattern), behavior="isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in CHAT_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token=CHAT_TOKENS[0], chat_template=LLAMA3_CHAT_TEMPLATE)


# --- The template and the ids, against implementations written elsewhere ----------------------

@pytest.mark.parametrize("pattern", [GPT2_PATTERN, pytest.param(LLAMA3_PATTERN, marks=pytest.mark.slow)],
                         ids=["gpt2", "llama3"])
def test_1000_conversations_render_and_encode_as_transformers_does(pattern, transformers):
    """Text: ``apply_chat_template(conv, tokenize=False)`` on the same Jinja string. Ids: transformers'
    tokenizer (Rust) on that text, with the chat tokens as its added special tokens."""
    bpe = chat_bpe(pattern)
    hf, chat, rng = hf_tokenizer(bpe), ChatFormat(bpe), random.Random(0)
    same_text = same_prompt = same_ids = 0
    for _ in range(1000):
        conv = random_conversation(rng)
        text = hf.apply_chat_template(conv, tokenize=False)
        same_text += text == chat.render(conv)
        same_prompt += hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == chat.render(
            conv, add_generation_prompt=True)
        if any(m["role"] == "assistant" for m in conv):
            ids, mask = chat.encode(conv)
        else:
            ids, mask = chat.encode(conv, add_generation_prompt=True)
            ids = ids[: len(ids) - len(chat.open_header("assistant"))]  # the open header is not in the text
        same_ids += ids == hf(text, add_special_tokens=False)["input_ids"] == bpe.encode(text)
    assert (same_text, same_prompt, same_ids) == (1000, 1000, 1000)


@pytest.mark.slow  # Llama 2's 32,000 pieces, read twice, and 400 conversations
def test_sentencepiece_user_defined_pieces_agree_with_the_library(spm, shared_file):
    """The .model written with the chat tokens as user-defined pieces: the sentencepiece library
    encodes each rendered conversation to the ids our renderer gives, for a trained model and
    Llama 2's."""
    import sentencepiece

    llama2 = add_special_tokens(load_tokenizer(shared_file("llama2-tokenizer.model")), CHAT_TOKENS)
    for tok in (spm, llama2):
        library = sentencepiece.SentencePieceProcessor(model_proto=write_model_proto(tok.proto))
        chat, rng = ChatFormat(tok), random.Random(1)
        assert library.vocab_size() == tok.vocab_size and tok.pieces[-4:] == list(CHAT_TOKENS)
        agree = 0
        for _ in range(200):
            conv = random_conversation(rng) + [{"role": "assistant", "content": random_text(rng)}]
            ids, _ = chat.encode(conv)
            agree += ids == library.encode(chat.render(conv)) == tok.encode(chat.render(conv))
        assert agree == 200


@pytest.mark.slow  # reads Llama 2's tokenizer
def test_adding_tokens_keeps_every_old_id(bpe, spm, shared_file):
    plain = BPETokenizer(bpe.merge_ids, [], bpe.pattern)
    llama2 = load_tokenizer(shared_file("llama2-tokenizer.model"))
    text = "Hello, wörld! 中文 😀\n\nthe cat"
    assert bpe.encode(text) == plain.encode(text) and bpe.vocab_size == plain.vocab_size + 4
    chat_llama2 = add_special_tokens(llama2, CHAT_TOKENS)
    assert chat_llama2.pieces[:llama2.vocab_size] == llama2.pieces
    # The one change: no dummy "▁" in front of a text, since in a chat every text follows a special token.
    assert chat_llama2.encode(text) == llama2.encode(text)[1:] or chat_llama2.encode(" " + text) == llama2.encode(text)
    assert add_special_tokens(bpe, CHAT_TOKENS).vocab_size == bpe.vocab_size  # already there: nothing added


def test_saved_tokenizers_load_with_their_chat_tokens(bpe, spm, tmp_path):
    for tok, name in ((bpe, "tokenizer.json"), (spm, "tokenizer.model")):
        loaded = load_tokenizer(save_tokenizer(tok, tmp_path / name))
        assert special_token_ids(loaded, CHAT_TOKENS) == special_token_ids(tok, CHAT_TOKENS)
        conv = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."}]
        assert ChatFormat(loaded).encode(conv) == ChatFormat(tok).encode(conv)


# --- The mask, the prompt, packing ---------------------------------------------------------------

def test_the_mask_is_the_replies_and_their_end_of_turn(bpe, spm):
    for tok in (bpe, spm):
        chat, rng = ChatFormat(tok), random.Random(2)
        for _ in range(100):
            conv = random_conversation(rng) + [{"role": "assistant", "content": "Yes" + random_text(rng)}]
            ids, mask = chat.encode(conv)
            replies = "".join(m["content"].strip() + CHAT_TOKENS[3] for m in conv if m["role"] == "assistant")
            assert tok.decode(i for i, m in zip(ids, mask) if m) == replies
            # A reply's tokens follow exactly the prompt a model is given to write it.
            last = max(k for k, m in enumerate(conv) if m["role"] == "assistant")
            prompt, _ = chat.encode(conv[:last], add_generation_prompt=True)
            assert ids[: len(prompt)] == prompt and mask[len(prompt)] and not mask[len(prompt) - 1]


def test_pack_puts_whole_conversations_in_windows(bpe):
    chat = ChatFormat(bpe)
    encoded = [chat.encode([{"role": "user", "content": "q" * n}, {"role": "assistant", "content": "a" * n}])
               for n in (3, 30, 5, 8, 1)]
    seq_len = max(len(i) for i, _ in encoded) + 8
    ids, mask = pack(encoded, seq_len=seq_len, pad_id=0)
    assert ids.shape[1] == seq_len and ids.shape[0] < len(encoded)
    flat = [i for row, m in zip(ids.tolist(), mask.tolist()) for i, _ in zip(row, m)]
    assert flat.count(chat.bos_id) == len(encoded)  # every conversation, once
    assert int(mask.sum()) == sum(sum(m) for _, m in encoded)
    for row in ids.tolist():  # each window starts a conversation
        assert row[0] == chat.bos_id
    with pytest.raises(ValueError, match="longer than a window of 10"):
        pack(encoded, seq_len=10)


# --- Bad input: one line each ---------------------------------------------------------------------

@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "Hi"}], "has no assistant turn, so nothing to train on"),
    ([{"role": "bot", "content": "Hi"}], "message 0 has the unknown role 'bot': the roles are system, user, assistant"),
    ([{"role": "user", "content": 42}], "message 0 (user) has content of type int, not text"),
    ([{"role": "user", "content": "x<|eot_id|>"}], "contains the special token <|eot_id|> as text"),
    ([{"role": "user"}], "each message is a dict with a 'role' and a 'content'"),
    ("Hi", "a conversation is a list of messages, got str"),
])
def test_bad_conversations_get_one_line(bpe, messages, message):
    with pytest.raises(ValueError, match=r"^[^\n]*$") as err:
        ChatFormat(bpe).encode(messages)
    assert message in str(err.value)


def test_a_conversation_longer_than_the_context_is_refused(bpe):
    conv = [{"role": "user", "content": "hello " * 50}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(ValueError, match=r"the conversation is \d+ tokens, more than the 32 allowed"):
        ChatFormat(bpe).encode(conv, max_len=32)


def test_a_tokenizer_or_template_without_the_chat_tokens_is_refused(bpe):
    plain = BPETokenizer(bpe.merge_ids, [], bpe.pattern)
    with pytest.raises(ValueError, match="has no special token <|begin_of_text|>, .*<|eot_id|>: it was not prepared"):
        ChatFormat(plain)
    check_template(LLAMA3_CHAT_TEMPLATE, bpe)
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    with pytest.raises(ValueError, match="never writes <|begin_of_text|>, .*: it is not Llama 3's format"):
        check_template(chatml)
    with pytest.raises(ValueError, match="has no special token"):
        check_template(LLAMA3_CHAT_TEMPLATE, plain)


# --- The model's new rows --------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_mean_rows_give_the_mean_logit(tied):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=100, max_seq_len=32,
                                    tie_embeddings=tied)).eval()
    x = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        before = model(x)
        resize_vocab(model, 104)
        after = model(x)
    assert model.config.vocab_size == 104 and (model.output.weight is model.tok_embeddings.weight) == tied
    torch.testing.assert_close(after[..., :100], before)
    torch.testing.assert_close(after[..., 100:], before.mean(-1, keepdim=True).expand(-1, -1, 4))
    with pytest.raises(ValueError, match="at least the model's 104"):
        resize_vocab(model, 50)


@pytest.mark.slow  # samples 256 tokens from stories260K
def test_mean_rows_leave_a_trained_model_s_predictions_where_random_rows_do_not(shared_file):
    """stories260K on its own samples: the probability the 4 new tokens take, mean rows against
    random rows of the old rows' scale (the numbers the chapter quotes)."""
    from llama.formats.load import load_model

    base = load_model(shared_file("stories260K.bin")).eval()
    x = torch.tensor([[1] + generate(base, [1], 63, Sampling(temperature=1.0, seed=s)) for s in range(4)])
    mass = {}
    with torch.no_grad():
        for init, seed in (("mean", 0), ("random", 0), ("random", 1)):
            model = resize_vocab(copy.deepcopy(base), 516, init, torch.Generator().manual_seed(seed))
            mass[init, seed] = model(x).softmax(-1)[..., 512:].sum(-1)
    assert mass["mean", 0].max() < 4 / 516  # the bound: exp(mean logit) <= mean of exp(logit)
    assert mass["mean", 0].mean() < 0.001
    assert min(mass["random", s].mean() for s in (0, 1)) > 0.02 and min(mass["random", s].max() for s in (0, 1)) > 0.5


# --- A conversation with the cache, against decoding from scratch -------------------------------

def chat_model(vocab_size: int, max_seq_len: int = 256, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size,
                                   max_seq_len=max_seq_len)).eval()


def test_cached_replies_equal_replies_from_scratch(bpe):
    chat = ChatFormat(bpe)
    model = chat_model(bpe.vocab_size)
    session = ChatSession(model, chat, max_new_tokens=12, system="Be brief.")
    first_prompt = chat.encode([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
                               add_generation_prompt=True)[0]
    for k, message in enumerate(["Hello!", "What is a cat?", "/reset is not a command here", "Thanks."]):
        before = len(session.ids)
        stream = session.send(message)
        prompt = list(session.ids)
        if k == 0:
            assert prompt == first_prompt
        if k == 2:  # a reader who stops a reply early: the turn is closed all the same
            reply = [next(stream), next(stream)]
            stream.close()
        else:
            reply = list(stream)
            assert reply == generate(model, prompt, 12, Sampling(stop_ids={chat.eot_id}))  # all of it, from scratch
        assert reply == generate(model, prompt, len(reply), Sampling())
        assert session.ids == prompt + reply + [chat.eot_id] and len(session.ids) > before
    assert [m["role"] for m in session.messages] == ["system"] + ["user", "assistant"] * 4
    session.reset()
    assert list(session.send("Hello!")) == generate(model, first_prompt, 12, Sampling(stop_ids={chat.eot_id}))


def test_a_conversation_that_outgrows_the_context_is_refused_before_it_changes(bpe):
    session = ChatSession(chat_model(bpe.vocab_size, max_seq_len=48), ChatFormat(bpe), max_new_tokens=40)
    list(session.send("Hi"))
    ids = list(session.ids)
    with pytest.raises(ValueError, match=r"^the conversation would be \d+ tokens, and the model's context is 48: "
                                         r"start a new conversation \(/reset\)"):
        session.send("a much longer message than the context can hold " * 2)
    assert session.ids == ids


# --- llama chat --------------------------------------------------------------------------------------

@pytest.fixture
def chat_checkpoint(tmp_path):
    tok = add_special_tokens(BPETokenizer([]), CHAT_TOKENS)  # bytes only: a 260-token vocabulary
    model = chat_model(tok.vocab_size, max_seq_len=96)
    save_model(model, tmp_path / "chat")
    save_tokenizer(tok, tmp_path / "chat" / "tokenizer.json")
    return tmp_path / "chat", model, ChatFormat(tok)


def test_llama_chat_message_prints_the_library_s_reply(chat_checkpoint, capsys):
    path, model, chat = chat_checkpoint
    assert main(["chat", str(path), "--system", "Be brief.", "--message", "Hello", "-n", "10"]) == 0
    expected = ChatSession(model, chat, max_new_tokens=10, system="Be brief.").reply("Hello")
    assert capsys.readouterr().out == expected + "\n"


def test_llama_chat_in_the_terminal(chat_checkpoint, capsys, monkeypatch):
    path, model, chat = chat_checkpoint
    lines = iter(["Hello", "", "How are you?", "/reset", "Hello", "/exit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(path), "-n", "8"]) == 0
    session = ChatSession(model, chat, max_new_tokens=8)
    first, second = session.reply("Hello"), session.reply("How are you?")
    assert capsys.readouterr().out == f"{first}\n{second}\n{first}\n"
    assert next(lines) == "never read"


def test_ctrl_c_stops_a_reply_and_not_the_session(chat_checkpoint, capsys, monkeypatch):
    path, model, chat = chat_checkpoint
    lines = iter(["Hello", "Again"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines, None) or (_ for _ in ()).throw(EOFError))
    feed, calls = ChatSession._feed, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 3:  # the third step of the first reply
            raise KeyboardInterrupt
        return feed(self)

    monkeypatch.setattr(ChatSession, "_feed", interrupted)
    assert main(["chat", str(path), "-n", "6"]) == 0
    captured = capsys.readouterr()
    assert "(stopped)" in captured.err and "Traceback" not in captured.err
    session = ChatSession(model, chat, max_new_tokens=6)
    stream = session.send("Hello")
    partial = [next(stream), next(stream)]
    stream.close()
    monkeypatch.setattr(ChatSession, "_feed", feed)
    again = session.reply("Again")
    assert captured.out == chat.tokenizer.decode(partial) + "\n" + again + "\n" + "\n"  # the last: end of input


def test_llama_chat_refusals_are_one_line(chat_checkpoint, tmp_path, capsys, monkeypatch):
    path, _, _ = chat_checkpoint
    err = refused(capsys, ["chat", str(path), "--message", "hello " * 40])
    assert "the model's context is 96: start a new conversation (/reset)" in err
    save_tokenizer(BPETokenizer([]), tmp_path / "plain.json")
    err = refused(capsys, ["chat", str(path), "--tokenizer", str(tmp_path / "plain.json"), "--message", "Hi"])
    assert err.startswith(f"llama chat: error: {tmp_path / 'plain.json'}: the tokenizer has no special token")
    assert "-n" in refused(capsys, ["chat", str(path), "-n", "0", "--message", "Hi"])
    # In the terminal, a message that does not fit is reported and the session goes on.
    lines = iter(["hello " * 40, "Hi"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines, None) or (_ for _ in ()).throw(EOFError))
    assert main(["chat", str(path), "-n", "4"]) == 0
    captured = capsys.readouterr()
    assert "the model's context is 96" in captured.err and "Traceback" not in captured.err
    assert captured.out.count("\n") == 2  # the reply to "Hi", and the end of input
