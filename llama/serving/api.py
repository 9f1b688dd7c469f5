r"""OpenAI's HTTP API, the parts a completion server needs: requests checked into generations, responses and errors in its shapes.

OpenAI's ``/v1/completions`` continues a prompt; ``/v1/chat/completions`` answers a conversation,
written by the model's chat template (:class:`~llama.posttraining.chat.ChatFormat`). Each request
is checked here, field by field, before anything is queued: a mistake gets a 400 whose message
names the field, what is wrong and the fix, in OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}``, so every OpenAI client library shows it as it
shows OpenAI's own. What this server does not do (several choices, log-probabilities,
penalties, tools) is refused by name, never silently ignored.

>>> from llama.tokenizers.bpe import BPETokenizer
>>> job = completion_request({"model": "m", "prompt": "Hi", "max_tokens": 5, "temperature": 0}, BPETokenizer([]), 64)
>>> job.prompt, job.max_tokens, job.sampling.temperature
([72, 105], 5, 0)
>>> try:
...     completion_request({"model": "m", "prompt": "Hi", "temperature": 3}, BPETokenizer([]), 64)
... except APIError as err:
...     print(err.status, err.body()["error"]["message"])
400 temperature must be a number from 0 to 2, got 3: use 0 for greedy decoding, about 1 to sample
"""

from __future__ import annotations

import json
import numbers
import time
import uuid
from dataclasses import dataclass, field

from llama.inference.sampling import MIN_TEMPERATURE, Sampling
from llama.posttraining.chat import ROLES, ChatFormat

__all__ = ["APIError", "Generation", "parse_body", "check_model", "completion_request", "chat_request",
           "usage", "completion_object", "chat_object", "models_object", "new_id"]

#: OpenAI's default ``max_tokens`` of a completion (a chat's default is the rest of the context).
DEFAULT_COMPLETION_TOKENS = 16
#: Fields this server cannot honour, and the value under which ignoring them changes nothing.
UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None, "suffix": None,
               "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "tools": None, "functions": None,
               "response_format": None}


# --8<-- [start:error]
class APIError(Exception):
    """A request refused, with its HTTP status and OpenAI's error fields.

    Args:
        status: 400 (a bad field), 401 (API key), 404 (unknown model or path), 413 (body too large),
            429 (queue full), 503 (shutting down).
        message: what is wrong and the fix, for a person.
        type: OpenAI's error type (``invalid_request_error``, ...).
        param: the request field at fault, if one is.
        code: a machine-readable reason (``model_not_found``, ``context_length_exceeded``, ...).
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        """The response body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)
# --8<-- [end:error]


# --8<-- [start:generation]
@dataclass
class Generation:
    """A checked request: what to give the scheduler, and how to turn its ids into the response.

    Attributes:
        prompt: the prompt's ids (the rendered conversation, for a chat).
        max_tokens: the most new ids.
        sampling: temperature, top-p and seed, with the stop ids (the tokenizer's EOS for a completion,
            ``<|eot_id|>`` for a chat).
        stop: OpenAI's ``stop`` strings.
        stream: answer with server-sent events, a chunk per piece of text.
        include_usage: when streaming, end with a chunk that carries the token counts.
        prefix: ids decoded with the reply but not part of its text (a completion's prompt).
    """

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    prefix: list[int] = field(default_factory=list)
# --8<-- [end:generation]


def parse_body(body: bytes) -> dict:
    """The request's JSON object.

    Raises:
        APIError: 400, the body is not JSON, or not an object.
    """
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err}): send a JSON object, e.g. "
                       '{"model": "...", "prompt": "Once upon a time"}', code="invalid_json") from None
    if not isinstance(value, dict):
        raise APIError(400, f"the request body is JSON but a {type(value).__name__}, not an object: send "
                       '{"model": ..., ...}', code="invalid_json")
    return value


def check_model(body: dict, served: str) -> None:
    """The request names the served model.

    Raises:
        APIError: 400 without a ``model``; 404 (``model_not_found``) for another one.
    """
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise _bad("model", f'"model" is required (a string): this server serves {served!r} (GET /v1/models)')
    if name != served:
        raise APIError(404, f"the model {name!r} does not exist here: this server serves {served!r} "
                       "(GET /v1/models lists it)", param="model", code="model_not_found")


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# --8<-- [start:settings]
def _settings(body: dict, prompt_len: int, context: int, default_tokens: int, stop_ids: set[int],
              prompt_field: str) -> dict:
    """The fields every generation shares, checked; the keyword arguments of :class:`Generation` but the prompt."""
    for name, neutral in UNSUPPORTED.items():
        if body.get(name, neutral) not in (neutral, None):
            raise _bad(name, f"{name}={body[name]!r} is not supported by this server: leave it out")
    if prompt_len >= context:
        raise _bad(prompt_field, f"the prompt is {prompt_len} tokens, and the model's context is {context}: no room "
                   f"is left for a reply; shorten it to at most {context - 1} tokens", "context_length_exceeded")
    room = context - prompt_len
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = min(default_tokens, room)
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise _bad(name, f"{name} must be an integer of at least 1, got {max_tokens!r}")
    elif max_tokens > room:
        raise _bad(name, f"{name}={max_tokens} does not fit: the prompt is {prompt_len} tokens and the model's "
                   f"context is {context}; ask for at most {room}", "context_length_exceeded")
    temperature = body.get("temperature", 1.0)
    temperature = 1.0 if temperature is None else temperature
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise _bad("temperature", f"temperature must be a number from 0 to 2, got {temperature!r}: use 0 for greedy "
                   "decoding, about 1 to sample")
    top_p = body.get("top_p", 1.0)
    top_p = 1.0 if top_p is None else top_p
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise _bad("top_p", f"top_p must be a number in (0, 1], got {top_p!r}: 1 keeps every token")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad("seed", f"seed must be an integer, got {seed!r}")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", f"stop must be a string or a list of up to 4 strings, got {body.get('stop')!r}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream", f"stream must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", f'stream_options must be an object such as {{"include_usage": true}}, got {options!r}')
    # Below MIN_TEMPERATURE sampling is greedy decoding in all but name (and dividing by it overflows).
    sampling = Sampling(temperature=float(temperature) if temperature >= MIN_TEMPERATURE else 0,
                        top_p=float(top_p) if top_p < 1 else None, seed=seed, stop_ids=stop_ids)
    return {"max_tokens": max_tokens, "sampling": sampling, "stop": stop, "stream": bool(stream),
            "include_usage": bool(options.get("include_usage"))}
# --8<-- [end:settings]


# --8<-- [start:completion_request]
def completion_request(body: dict, tokenizer, context: int) -> Generation:
    """A ``POST /v1/completions`` body, checked: its ``prompt`` is text (BOS prepended where the tokenizer
    has one, as ``llama generate --prompt`` does) or token ids; the tokenizer's EOS ends the reply.

    Raises:
        APIError: 400 naming the field at fault.
    """
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, bos=tokenizer.bos_id >= 0)
    elif isinstance(prompt, list) and prompt and all(_is_int(i) for i in prompt):
        ids = list(prompt)
        bad = next((i for i in ids if not 0 <= i < tokenizer.vocab_size), None)
        if bad is not None:
            raise _bad("prompt", f"token id {bad} is outside the vocabulary [0, {tokenizer.vocab_size})")
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise _bad("prompt", f"a list of {len(prompt)} prompts: this server takes one prompt per request; send each alone")
    else:
        raise _bad("prompt", f"prompt must be a string or a list of token ids, got {prompt!r}")
    if not ids:
        raise _bad("prompt", "the prompt is empty and this tokenizer has no BOS to start it: give some text")
    eos = {tokenizer.eos_id} if tokenizer.eos_id >= 0 else set()
    return Generation(ids, prefix=ids, **_settings(body, len(ids), context, DEFAULT_COMPLETION_TOKENS, eos, "prompt"))
# --8<-- [end:completion_request]


# --8<-- [start:chat_request]
def chat_request(body: dict, chat: ChatFormat | None, context: int) -> Generation:
    """A ``POST /v1/chat/completions`` body, checked: ``messages`` rendered by the chat template with an
    open assistant header, as ``llama chat`` does; ``<|eot_id|>`` ends the reply.

    A message's ``content`` is text, or OpenAI's list of parts of which only ``{"type": "text"}`` ones
    are taken (joined).

    Raises:
        APIError: 400 naming the field at fault, or saying that this model has no chat template.
    """
    if chat is None:
        raise APIError(400, "this model's tokenizer has no chat tokens (<|start_header_id|>, <|eot_id|>, ...), so it "
                       "cannot answer a conversation: use POST /v1/completions, or serve a chat model (one made by "
                       "`llama sft`)", code="chat_not_supported")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", f'messages must be a non-empty list such as [{{"role": "user", "content": "Hi"}}], '
                   f"got {messages!r}")
    plain = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise _bad("messages", f"message {k} has the role {role!r}: the roles are {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):
            parts = [p for p in content if not (isinstance(p, dict) and p.get("type") == "text"
                                                 and isinstance(p.get("text"), str))]
            if parts:
                raise _bad("messages", f"message {k} has a content part that is not text ({parts[0]!r}): this model "
                           "reads text only")
            content = "".join(p["text"] for p in content)
        plain.append({"role": m["role"], "content": content})
    try:
        ids, _ = chat.encode(plain, add_generation_prompt=True)
    except ValueError as err:
        raise _bad("messages", str(err)) from None
    return Generation(ids, **_settings(body, len(ids), context, context, {chat.eot_id}, "messages"))
# --8<-- [end:chat_request]


# --8<-- [start:shapes]
def new_id(prefix: str) -> str:
    """A unique response id in OpenAI's style: ``cmpl-...`` or ``chatcmpl-...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's ``usage``: ids of the prompt, ids generated (a stop id included), and their sum."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(id: str, model: str, created: int, text: str, finish_reason: str | None,
                      usage: dict | None = None) -> dict:
    """A ``text_completion``: the whole response, or (``finish_reason`` None until the last) one streamed chunk."""
    out = {"id": id, "object": "text_completion", "created": created, "model": model,
           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if usage is not None:
        out["usage"] = usage
    return out


def chat_object(id: str, model: str, created: int, content: str | None, finish_reason: str | None,
                usage: dict | None = None, chunk: bool = False, role: bool = False) -> dict:
    """A ``chat.completion`` (the whole reply) or a ``chat.completion.chunk`` (``chunk``: a ``delta``
    with this piece of text, the first with ``role``; ``content`` None gives an empty delta).

    A chunk with ``usage`` and no ``finish_reason`` is the last one of a stream asked for with
    ``stream_options={"include_usage": true}``: OpenAI sends it with no choices.
    """
    if not chunk:
        choices = [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                    "finish_reason": finish_reason}]
        return {"id": id, "object": "chat.completion", "created": created, "model": model, "choices": choices,
                "usage": usage}
    delta = ({"role": "assistant"} if role else {}) | ({"content": content} if content is not None else {})
    choices = [] if usage is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]
    out = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def models_object(model: str, created: int | None = None) -> dict:
    """``GET /v1/models``: the one served model."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created or int(time.time()),
                                        "owned_by": "llama"}]}
# --8<-- [end:shapes]
