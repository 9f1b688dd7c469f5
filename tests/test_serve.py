"""Serving (llama/serving/, ``llama serve``): the slot table and the scheduler against decoding alone, the
text stream's stop strings, and the server itself, in a process of its own, through the official
``openai`` client and raw HTTP: the same greedy text as ``llama generate`` and ``llama chat``, sixteen
concurrent clients batched together, a client that goes away, bad requests, back-pressure and SIGTERM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import HANG_SECONDS, LlamaServer, random_model, refused, require_module

from llama.cli.main import main
from llama.formats.load import load_model, save_model
from llama.inference.generation import generate
from llama.inference.sampling import Sampling
from llama.model.config import ModelConfig
from llama.posttraining.chat import CHAT_TOKENS, ChatFormat
from llama.posttraining.special_tokens import add_special_tokens, save_tokenizer
from llama.serving.api import APIError, completion_request
from llama.serving.scheduler import QueueFull, Request, Scheduler, ShuttingDown
from llama.serving.slots import SlotTable
from llama.serving.text import TextStream
from llama.tokenizers.bpe import BPETokenizer
from llama.tokenizers.tokenizer import saved_tokenizer

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Weights of std 0.08 make every greedy choice clear-cut: a batch of 4 adds its float sums in another
# order than a batch of 1, and only a near tie could tell the two apart.
SMALL = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


def small_model(vocab_size: int = 97, seed: int = 0, **sizes):
    return random_model(ModelConfig(**{**SMALL, "vocab_size": vocab_size, **sizes}), seed, weights_std=0.08)


def continuation(tok, prompt: list[int], new: list[int]) -> str:
    """The text ``llama generate`` prints after the prompt: the whole decoded again, minus the prompt's text."""
    return tok.decode(prompt + new)[len(tok.decode(prompt).rstrip("\ufffd")):]


# --- The slot table and the scheduler, in this process ------------------------------------------

def test_slots_at_their_own_positions_decode_as_each_request_alone():
    """Requests join a running batch at different times and positions: each gets generate's ids."""
    model = small_model()
    table = SlotTable(model, slots=3)
    prompts = {0: [1, 5, 7, 9, 11, 2], 1: [1, 2], 2: [4, 4, 4]}
    out: dict[int, list[int]] = {}
    for step in range(12):
        if step in (0, 3, 7):  # admitted between decode steps, one after another
            k = len(out)
            slot = table.take()
            assert slot == k
            out[slot] = [int(table.prefill(slot, prompts[k]).argmax())]
        logits = table.decode({s: ids[-1] for s, ids in out.items()})
        assert logits.shape == (len(out), 97)
        for s in out:
            out[s].append(int(logits[s].argmax()))
    for s, ids in out.items():
        assert ids == generate(model, prompts[s], len(ids)), s
        assert table.lengths[s] == len(prompts[s]) + len(ids) - 1  # the last id chosen is not fed yet
    table.release(1)
    assert table.free_slots() == [1] and table.take() == 1  # the lowest free slot: the batch stays short
    with pytest.raises(ValueError, match=r"busy slots \[0, 1\] are in the batch but get no token"):
        table.decode({2: 3})


def test_the_scheduler_admits_between_steps_frees_finished_slots_and_refuses_beyond_its_queue():
    model = small_model()
    scheduler = Scheduler(model, slots=2, max_waiting=3)
    events: dict[int, list] = {}
    requests = []
    for k in range(5):
        events[k] = []
        sampling = Sampling(temperature=0.9, seed=k) if k == 4 else Sampling()
        request = Request([1, 3 + k, 7], 3 + 2 * k, sampling, emit=lambda kind, v, k=k: events[k].append((kind, v)))
        scheduler.submit(request)  # 2 for the free slots, 3 to wait
        requests.append(request)
    with pytest.raises(QueueFull, match=r"the server is busy: 5 request\(s\) wait for its 2 slot\(s\), as many as it "
                                        "queues; try again shortly"):
        scheduler.submit(Request([1], 2))
    while scheduler.step():
        pass
    for k, request in enumerate(requests):
        tokens = [v for kind, v in events[k] if kind == "token"]
        assert tokens == generate(model, request.prompt, request.max_tokens, request.sampling), k
        assert events[k][-1] == ("done", "length")
    stats = scheduler.stats()
    assert stats["max_batch"] == 2 and stats["finished"] == 5 and stats["active"] == stats["waiting"] == 0
    assert stats["rejected"] == 1 and sum(stats["batch_sizes"].values()) == stats["steps"]
    # A stop id ends a request with "stop"; a cancelled one is dropped between two steps.
    first = generate(model, [1, 2], 3)
    stopped, seen = [], []
    scheduler.submit(Request([1, 2], 9, Sampling(stop_ids={first[2]}), emit=lambda kind, v: stopped.append((kind, v))))
    long = Request([1, 3], 40, emit=lambda kind, v: seen.append(v))
    scheduler.submit(long)
    scheduler.step()
    long.cancel()
    while scheduler.step():
        pass
    assert stopped == [("token", t) for t in first[:first.index(first[2])]] + [("done", "stop")]
    assert len(seen) == 2 and scheduler.stats()["cancelled"] == 1 and scheduler.table.free_slots() == [0, 1]
    scheduler.close()
    with pytest.raises(ShuttingDown):
        scheduler.submit(Request([1], 2))


def test_a_request_failed_by_nan_logits_leaves_its_slot_clean_for_the_next():
    """A step whose logits are NaN fails its request alone; the NaN it wrote into the slot's cache is
    zeroed, since the mask would not hide it (0 * NaN is NaN), so the next request in the slot runs."""
    model = small_model()
    scheduler = Scheduler(model, slots=1, max_waiting=1)
    events = []
    scheduler.submit(Request([1, 3, 7], 10, emit=lambda kind, v: events.append((kind, v))))
    scheduler.step()  # admitted, prefilled, one decode step: positions 0 to 3 written
    weight = model.layers[0].attention.wv.weight
    kept = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] = float("nan")  # the next step caches a NaN value at position 4; its logits are NaN
    while scheduler.step():
        pass
    assert events[-1][0] == "error" and "NaN logits" in events[-1][1]
    with torch.no_grad():
        weight[0, 0] = kept
    tokens = []
    scheduler.submit(Request([1, 2], 8, emit=lambda kind, v: tokens.append(v) if kind == "token" else None))
    while scheduler.step():
        pass
    assert tokens == generate(model, [1, 2], 8) and scheduler.stats()["failed"] == 1


def test_the_text_stream_holds_back_what_may_start_a_stop_string():
    tok = BPETokenizer([])
    stream = TextStream(tok.decode, stop=["END", "\n\n"])
    pieces = [stream.push(i) for i in tok.encode("one EN two E")]
    assert "".join(pieces) == "one EN two " and stream.finish() == "E" and stream.text == "one EN two E"
    stream = TextStream(tok.decode, stop=["END"])
    assert "".join(stream.push(i) for i in tok.encode("ab ENDcd")) == "ab " and stream.stopped
    assert stream.push(65) == "" and stream.finish() == ""
    # A character whose bytes have not all come waits for them; with the prompt as prefix, only new text.
    euro = tok.encode("é€")
    stream = TextStream(tok.decode, prefix=tok.encode("x"))
    assert [stream.push(i) for i in euro] == ["", "é", "", "", "€"]


def test_requests_are_checked_field_by_field():
    tok = BPETokenizer([])
    body = {"model": "m", "prompt": "Hello", "max_tokens": 4}
    job = completion_request({**body, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "x"}, tok, 32)
    assert job.prompt == tok.encode("Hello") and job.sampling == Sampling(temperature=0.5, top_p=0.9, seed=3)
    assert job.stop == ["x"] and completion_request({**body, "temperature": 0.00001}, tok, 32).sampling.temperature == 0
    for change, param, message in [
        ({"max_tokens": 28}, "max_tokens", "max_tokens=28 does not fit: the prompt is 5 tokens and the model's context "
                                            "is 32; ask for at most 27"),
        ({"prompt": "x" * 40}, "prompt", "the prompt is 40 tokens, and the model's context is 32"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be an integer of at least 1, got 0"),
        ({"temperature": -1}, "temperature", "temperature must be a number from 0 to 2, got -1"),
        ({"top_p": 0}, "top_p", "top_p must be a number in (0, 1], got 0"),
        ({"stop": ["a"] * 5}, "stop", "stop must be a string or a list of up to 4 strings"),
        ({"n": 2}, "n", "n=2 is not supported by this server: leave it out"),
        ({"prompt": [1, 999]}, "prompt", "token id 999 is outside the vocabulary [0, 256)"),
        ({"prompt": ["a", "b"]}, "prompt", "a list of 2 prompts: this server takes one prompt per request"),
    ]:
        with pytest.raises(APIError) as caught:
            completion_request({**body, **change}, tok, 32)
        assert caught.value.status == 400 and caught.value.param == param
        assert caught.value.message.startswith(message), caught.value.message


# --- The server, in a process of its own ---------------------------------------------------------

@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    """A chat model (byte tokens and the four chat tokens, 260 ids) saved with its tokenizer."""
    tok = add_special_tokens(BPETokenizer([]), CHAT_TOKENS)
    folder = tmp_path_factory.mktemp("serve") / "chat"
    save_model(small_model(tok.vocab_size, max_seq_len=1024), folder)
    save_tokenizer(tok, folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def server(chat_folder, tmp_path_factory):
    """``llama serve`` on the chat model: 4 slots, 16 may wait, an API key. Stopped by SIGTERM at the end."""
    running = LlamaServer(chat_folder, ["--slots", "4", "--queue", "16", "--api-key", KEY],
                          tmp_path_factory.mktemp("serve-log") / "stderr.txt")
    yield running
    assert running.stop() == 0, running.output()
    assert "Traceback" not in running.output(), running.output()


@pytest.fixture(scope="module")
def client(server):
    openai = require_module("openai")
    with openai.OpenAI(base_url=server.url + "v1", api_key=KEY, max_retries=0, timeout=HANG_SECONDS) as c:
        yield c


def stats(server) -> dict:
    import httpx

    return httpx.get(server.url + "stats", timeout=HANG_SECONDS).json()


@pytest.mark.slow  # llama serve in a process of its own
def test_the_openai_client_gets_what_llama_generate_prints(server, client, chat_folder, capsys):
    assert [m.id for m in client.models.list().data] == ["chat"]
    for prompt, n in (("Once upon a time", 24), ("Hi", 6)):
        assert main(["generate", str(chat_folder), "--prompt", prompt, "-n", str(n)]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith(prompt) and printed.endswith("\n")
        expected = printed[len(prompt):-1]
        whole = client.completions.create(model="chat", prompt=prompt, max_tokens=n, temperature=0)
        assert whole.object == "text_completion" and whole.choices[0].text == expected
        assert whole.choices[0].finish_reason == "length"
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(prompt.encode()), n)
        chunks = list(client.completions.create(model="chat", prompt=prompt, max_tokens=n, temperature=0, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) > 2  # streamed, piece by piece


@pytest.mark.slow  # llama serve in a process of its own
def test_the_openai_client_gets_what_llama_chat_prints(server, client, chat_folder, capsys):
    for system, message, n in ((None, "Hello", 20), ("Be brief.", "What is a llama?", 40)):
        flags = ["--system", system] if system else []
        assert main(["chat", str(chat_folder), *flags, "--message", message, "-n", str(n)]) == 0
        expected = capsys.readouterr().out[:-1]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
        whole = client.chat.completions.create(model="chat", messages=messages, max_tokens=n, temperature=0)
        assert whole.object == "chat.completion" and whole.choices[0].message.content == expected
        assert whole.choices[0].message.role == "assistant"
        tok = saved_tokenizer(chat_folder)
        prompt = ChatFormat(tok).encode(messages, add_generation_prompt=True)[0]
        assert whole.usage.prompt_tokens == len(prompt)
        stream = client.chat.completions.create(model="chat", messages=messages, max_tokens=n, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
        assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason


@pytest.mark.slow  # llama serve in a process of its own
def test_sixteen_concurrent_clients_get_their_answers_alone_while_batched(server, chat_folder):
    require_module("httpx")  # tests/serve_clients.py's client
    model, tok = load_model(chat_folder).eval(), saved_tokenizer(chat_folder)
    bodies, expected = [], []
    for k in range(16):
        prompt = f"Story {k}: the llama"
        n = 8 + k
        body = {"model": "chat", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": k % 2 == 0}
        sampling = Sampling()
        if k in (5, 10):  # sampled with a seed: its own random stream, whatever else is decoded beside it
            body |= {"temperature": 0.9, "seed": k}
            sampling = Sampling(temperature=0.9, seed=k)
        ids = tok.encode(prompt)
        bodies.append(body)
        expected.append((continuation(tok, ids, generate(model, ids, n, sampling)), "length"))
    before = stats(server)
    # A reply of 1000 tokens: it cannot end by itself before its client, starved on a loaded machine
    # as it may be, has read two chunks and hung up.
    leaver = {"model": "chat", "prompt": "A long one", "max_tokens": 1000, "temperature": 0, "stream": True}
    job = {"url": server.url, "key": KEY, "bodies": bodies, "leaver": leaver, "timeout": HANG_SECONDS}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("serve_clients.py"))], input=json.dumps(job),
                          capture_output=True, text=True, timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [tuple(a) for a in result["answers"]] == expected and result["read"] == 2
    deadline = time.monotonic() + HANG_SECONDS
    while (after := stats(server))["active"] or after["waiting"]:  # the leaver's slot comes back
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert after["max_batch"] > 1, after  # decoded together, not one after another
    assert after["cancelled"] - before["cancelled"] == 1, after  # the client that hung up, dropped mid-reply
    assert after["finished"] - before["finished"] == 16
    assert after["prefills"] - before["prefills"] == 17


@pytest.mark.slow  # llama serve in a process of its own
def test_bad_requests_get_their_status_and_a_clear_message_and_the_server_goes_on(server, client):
    httpx = require_module("httpx")
    openai = require_module("openai")
    good = {"model": "chat", "prompt": "Hi", "max_tokens": 1}
    cases = [
        ({"content": b"{not json"}, 400, "the request body is not valid JSON"),
        ({"json": [1, 2]}, 400, "the request body is JSON but a list, not an object"),
        ({"json": {**good, "model": "gpt-4"}}, 404, "the model 'gpt-4' does not exist here: this server serves 'chat'"),
        ({"json": {**good, "max_tokens": 1023}}, 400, "max_tokens=1023 does not fit: the prompt is 2 tokens and the "
                                                      "model's context is 1024; ask for at most 1022"),
        ({"json": {**good, "temperature": 2.5}}, 400, "temperature must be a number from 0 to 2, got 2.5"),
        ({"json": {**good, "prompt": "x" * 1100}}, 400, "the prompt is 1100 tokens, and the model's context is 1024"),
        ({"json": good, "headers": {"Authorization": "Bearer wrong"}}, 401, "incorrect API key"),
        ({"json": good, "headers": {"Authorization": ""}}, 401, "no API key: send the header 'Authorization: Bearer"),
        ({"content": json.dumps({**good, "prompt": "x" * (2 << 20)}).encode()}, 413,
         "the request body is larger than 1,048,576 bytes"),
    ]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=HANG_SECONDS) as http:
        for request, status, message in cases:
            response = http.post("v1/completions", **request)
            assert response.status_code == status, (request.get("json"), response.text)
            error = response.json()["error"]
            assert error["message"].startswith(message), error
            assert set(error) == {"message", "type", "param", "code"}
            assert http.post("v1/completions", json=good).status_code == 200  # and it goes on serving
        response = http.get("v1/nothing")
        assert response.status_code == 404 and "the endpoints are GET /v1/models" in response.json()["error"]["message"]
        assert http.get("v1/completions").status_code == 405
    # The official client raises its own error classes for them, with the message.
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        client.completions.create(model="other", prompt="Hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="temperature must be a number from 0 to 2"):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], temperature=-0.5)
    with pytest.raises(openai.BadRequestError, match="message 0 has the role 'robot'"):
        client.chat.completions.create(model="chat", messages=[{"role": "robot", "content": "Hi"}])
    with openai.OpenAI(base_url=server.url + "v1", api_key="wrong", max_retries=0) as other:
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            other.models.list()
    assert client.completions.create(**good).choices[0].finish_reason == "length"


@pytest.mark.slow  # llama serve in a process of its own
def test_the_chat_page_is_served_and_asks_for_nothing_outside_the_server(server):
    httpx = require_module("httpx")
    page = httpx.get(server.url, timeout=HANG_SECONDS)  # no API key needed for the page itself
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<meta name="model" content="chat">' in page.text
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text


# --- Back-pressure and SIGTERM, on a server of one slot ------------------------------------------

@pytest.mark.slow  # llama serve in a process of its own
def test_a_full_queue_answers_429_and_sigterm_finishes_the_reply_in_flight(tmp_path):
    httpx = require_module("httpx")
    folder = tmp_path / "plain"
    save_model(small_model(256, max_seq_len=512), folder)  # bytes only: no chat tokens
    BPETokenizer([]).save(folder / "tokenizer.json")
    running = LlamaServer(folder, ["--slots", "1", "--queue", "0"], tmp_path / "stderr.txt")
    try:
        with httpx.Client(base_url=running.url, timeout=HANG_SECONDS) as http:
            body = {"model": "plain", "prompt": "Once", "max_tokens": 400, "temperature": 0, "stream": True}
            with http.stream("POST", "v1/completions", json=body) as long:
                lines = long.iter_lines()
                assert next(lines).startswith("data: ")  # the one slot is busy from now on
                busy = http.post("v1/completions", json={**body, "stream": False, "max_tokens": 1})
                assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
                assert "the server is busy: 0 request(s) wait for its 1 slot(s)" in busy.text
                chat = http.post("v1/chat/completions", json={"model": "plain", "messages": [{"role": "user",
                                                                                              "content": "Hi"}]})
                assert chat.status_code == 400 and "this model's tokenizer has no chat tokens" in chat.text
                assert http.get("stats").json()["active"] == 1
                running.proc.send_signal(15)  # SIGTERM, mid-reply
                rest = list(lines)
            chunks = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
            assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # all 400 tokens, none cut off
        assert running.stop() == 0
        assert "Traceback" not in running.output()
        with pytest.raises(httpx.ConnectError):
            httpx.get(running.url + "health", timeout=HANG_SECONDS)
    finally:
        running.proc.kill()


# --- The command line ----------------------------------------------------------------------------

def test_llama_serve_refusals_are_one_line(chat_folder, tmp_path, capsys):
    assert "--slots must be 1 or more, got 0" in refused(capsys, ["serve", str(chat_folder), "--slots", "0"])
    assert "--queue must be 0 or more" in refused(capsys, ["serve", str(chat_folder), "--queue", "-1"])
    assert "--port must be a port number" in refused(capsys, ["serve", str(chat_folder), "--port", "70000"])
    assert "--api-key is empty" in refused(capsys, ["serve", str(chat_folder), "--api-key", " "])
    assert refused(capsys, ["serve", str(tmp_path / "missing")]).startswith("llama serve: error: ")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        err = refused(capsys, ["serve", str(chat_folder), "--port", str(port)])
        assert f"127.0.0.1:{port} is in use: stop the program that listens there, or give another --port" in err
    finally:
        holder.close()
