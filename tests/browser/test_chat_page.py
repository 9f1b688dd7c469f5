"""The chat page of ``llama serve`` in Chromium: a message typed and sent, the reply streamed in piece by
piece (the library's own reply, greedy), a long reply stopped, no console error, and no request that
leaves 127.0.0.1."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import HANG_MS, HANG_SECONDS, LlamaServer, random_model

from llama.formats.load import save_model
from llama.model.config import ModelConfig
from llama.posttraining.chat import CHAT_TOKENS, ChatFormat
from llama.posttraining.chat_session import ChatSession
from llama.posttraining.special_tokens import add_special_tokens, save_tokenizer
from llama.tokenizers.bpe import BPETokenizer


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """A chat model whose replies never end by themselves (``<|eot_id|>``'s output row is zero, so its
    logit is 0 and some other is higher), served without an API key; ``(server, model, chat)``."""
    tok = add_special_tokens(BPETokenizer([]), CHAT_TOKENS)
    chat = ChatFormat(tok)
    model = random_model(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size,
                                      max_seq_len=2048), weights_std=0.08)
    with torch.no_grad():
        model.output.weight[chat.eot_id] = 0
    folder = tmp_path_factory.mktemp("page") / "chat"
    save_model(model, folder)
    save_tokenizer(tok, folder / "tokenizer.json")
    server = LlamaServer(folder, ["--slots", "2"], folder.parent / "stderr.txt")
    yield server, model, chat
    assert server.stop() == 0, server.output()


def test_the_chat_page_streams_a_reply_and_stops_one(browser, chat_server):
    import httpx

    server, model, chat = chat_server
    context = browser.new_context()
    context.set_default_timeout(HANG_MS)
    page = context.new_page()
    problems, requests = [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(server.url, wait_until="load")
        assert page.locator("#model").text_content() == "chat"
        # Type and send: the reply streams in, and is the model's greedy reply.
        page.click("summary")  # the settings
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "24")
        page.fill("#message", "Hello")
        page.press("#message", "Enter")
        page.wait_for_selector(".turn.assistant[data-done='true']")
        reply = page.locator(".turn.assistant").last
        expected = ChatSession(model, chat, max_new_tokens=24).reply("Hello")
        assert reply.evaluate("e => e.textContent") == expected
        assert int(reply.get_attribute("data-chunks")) > 1  # streamed in pieces, not in one piece at the end
        assert page.locator(".turn.note").last.text_content() == "(the reply reached its length limit)"
        # A reply as long as the context allows, stopped once it has begun.
        page.fill("#max-tokens", "")
        page.fill("#message", "Tell me a long story.")
        page.click("#send")
        page.wait_for_function("() => document.querySelectorAll('.turn.assistant')[1].textContent.length > 0")
        assert page.locator("#stop").is_enabled()
        page.click("#stop")
        page.wait_for_selector(".turn.assistant[data-done='true'] >> nth=1")
        assert page.locator(".turn.note").last.text_content() == "(stopped)"
        stopped = page.locator(".turn.assistant").nth(1).evaluate("e => e.textContent")
        assert 0 < len(stopped) < 1000 and page.locator("#send").is_enabled()
        # The server saw the client go: the request was dropped and its slot is free again.
        deadline = time.monotonic() + HANG_SECONDS
        while (stats := httpx.get(server.url + "stats", timeout=HANG_SECONDS).json())["active"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stats["cancelled"] == 1 and stats["finished"] == 1, stats
        time.sleep(0.2)
        assert page.locator(".turn.assistant").nth(1).evaluate("e => e.textContent") == stopped  # nothing more came
    finally:
        context.close()
    assert not problems, "\n".join(problems)
    origin = server.url.rstrip("/")
    assert requests and all(url.startswith(origin + "/") for url in requests), requests
