r"""The HTTP server: OpenAI's endpoints and a chat page on Starlette and uvicorn, the model on one engine thread.

One process, two kinds of work. The event loop (uvicorn's, on the main thread) reads requests,
checks them (:mod:`llama.serving.api`), queues them, and writes responses; the model runs on the
:class:`~llama.serving.scheduler.Engine`'s thread only, one step at a time for every request at
once. They meet in two places: the engine's bounded queue (``submit``, from the loop) and each
request's ``emit`` callback (from the engine), which hands an id to the loop with
``loop.call_soon_threadsafe`` and an ``asyncio.Queue``, the thread-safe way into an event loop.

Endpoints:

* ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``: OpenAI's API, with
  ``stream`` (server-sent events), ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``;
  errors in OpenAI's shape. With an API key, these need ``Authorization: Bearer KEY``.
* ``GET /``: the chat page (one HTML file, no request leaves the server).
* ``GET /health`` (``{"status": "ok"}``, 503 while shutting down) and ``GET /stats``: the
  scheduler's counters (``max_batch``: the most busy slots one decode step has decoded together).

A client that goes away mid-reply cancels its request: the engine frees its slot before its next
step. SIGTERM (or Ctrl-C) stops taking requests (503), lets those in flight finish, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llama.posttraining.chat import ChatFormat
from llama.serving.api import (
    APIError,
    Generation,
    chat_object,
    chat_request,
    check_model,
    completion_object,
    completion_request,
    models_object,
    new_id,
    parse_body,
    usage,
)
from llama.serving.scheduler import Engine, QueueFull, Request, ShuttingDown
from llama.serving.text import TextStream

__all__ = ["MAX_BODY_BYTES", "Job", "build_app", "listen", "serve"]

#: The largest request body accepted (413 beyond): far more than any prompt that fits a context.
MAX_BODY_BYTES = 1 << 20


# --8<-- [start:job]
class Job:
    """One request between the two threads: the scheduler's :class:`~llama.serving.scheduler.Request`
    and the ``asyncio.Queue`` its events arrive in.

    Args:
        generation: the checked request.
        loop: the event loop of the handler that waits for the events.
    """

    def __init__(self, generation: Generation, loop: asyncio.AbstractEventLoop) -> None:
        self.generation, self.loop = generation, loop
        self.events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.request = Request(generation.prompt, generation.max_tokens, generation.sampling, emit=self._emit)
        self.finish_reason: str | None = None

    def _emit(self, kind: str, value: object) -> None:
        # On the engine's thread: asyncio objects may only be touched from their loop's thread,
        # so the put is scheduled there.
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
# --8<-- [end:job]


class _EngineFailed(Exception):
    """The engine could not finish a request (non-finite logits, say)."""


class _App:
    """The endpoints' state: the engine, the tokenizer and chat format, the served name and limits."""

    def __init__(self, engine: Engine, tokenizer, model_name: str, api_key: str | None, max_body: int) -> None:
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.api_key, self.max_body = api_key, max_body
        self.context = engine.scheduler.table.max_seq_len
        try:
            self.chat: ChatFormat | None = ChatFormat(tokenizer)
        except ValueError:  # no chat tokens: completions only (chat requests get a 400 that says so)
            self.chat = None
        self.created = int(time.time())

    # --8<-- [start:checks]
    def authorize(self, request: HTTPRequest) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise APIError(401, "no API key: send the header 'Authorization: Bearer KEY' with the key given to "
                           "`llama serve --api-key`", code="invalid_api_key")
        # compare_digest: the time taken does not tell how much of a guessed key was right.
        if not hmac.compare_digest(header[len("Bearer "):].encode(), self.api_key.encode()):
            raise APIError(401, "incorrect API key: use the key given to `llama serve --api-key`",
                           code="invalid_api_key")

    async def body(self, request: HTTPRequest) -> bytes:
        """The request body, refused (413) past ``max_body`` bytes without reading the rest."""
        too_large = APIError(413, f"the request body is larger than {self.max_body:,} bytes: send a shorter prompt",
                             code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)
    # --8<-- [end:checks]

    async def models(self, request: HTTPRequest) -> Response:
        self.authorize(request)
        return JSONResponse(models_object(self.model_name, self.created))

    async def completions(self, request: HTTPRequest) -> Response:
        return await self.generate(request, chat=False)

    async def chat_completions(self, request: HTTPRequest) -> Response:
        return await self.generate(request, chat=True)

    # --8<-- [start:generate]
    async def generate(self, request: HTTPRequest, chat: bool) -> Response:
        """Check, queue, and answer one request, whole or streamed."""
        self.authorize(request)
        body = parse_body(await self.body(request))
        check_model(body, self.model_name)
        generation = (chat_request(body, self.chat, self.context) if chat
                      else completion_request(body, self.tokenizer, self.context))
        job = Job(generation, asyncio.get_running_loop())
        try:
            self.engine.submit(job.request)
        except QueueFull as err:
            raise APIError(429, str(err), type="rate_limit_error", code="queue_full") from None
        except ShuttingDown as err:
            raise APIError(503, str(err), type="server_error", code="shutting_down") from None
        text = TextStream(self.tokenizer.decode, generation.prefix, generation.stop)
        ids = (new_id("chatcmpl") if chat else new_id("cmpl"), self.model_name, int(time.time()))
        if generation.stream:
            return StreamingResponse(self.events(job, text, chat, ids), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await self.whole(request, job, text, chat, ids)
    # --8<-- [end:generate]

    # --8<-- [start:pieces]
    async def pieces(self, job: Job, text: TextStream) -> AsyncIterator[str]:
        """The reply's text as the engine's ids arrive; sets ``job.finish_reason`` at the end.

        However it ends (the reply is done, a stop string came, the client went away and this
        generator is closed or cancelled), a request that is not done is cancelled on the way
        out, and the engine frees its slot before its next step.
        """
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "token":
                    piece = text.push(value)
                    if piece:
                        yield piece
                    if text.stopped:  # a stop string: the reply ends here, whatever the engine does next
                        job.finish_reason = "stop"
                        return
                elif kind == "done":
                    piece = text.finish()
                    if piece:
                        yield piece
                    job.finish_reason = "stop" if text.stopped else value
                    return
                else:
                    raise _EngineFailed(value)
        finally:
            if job.finish_reason is None or text.stopped:
                self.engine.cancel(job.request)
    # --8<-- [end:pieces]

    # --8<-- [start:whole]
    async def whole(self, request: HTTPRequest, job: Job, text: TextStream, chat: bool, ids: tuple) -> Response:
        """Wait for the whole reply; a client that disconnects meanwhile cancels it."""
        handler = asyncio.current_task()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            handler.cancel()  # pieces() cancels the request on its way out

        watcher = asyncio.ensure_future(watch())
        try:
            reply = "".join([piece async for piece in self.pieces(job, text)])
        except _EngineFailed as err:
            raise APIError(500, f"the model failed: {err}", type="server_error") from None
        finally:
            watcher.cancel()
        counts = usage(len(job.generation.prompt), job.request.produced)
        if chat:
            return JSONResponse(chat_object(*ids, reply, job.finish_reason, counts))
        return JSONResponse(completion_object(*ids, reply, job.finish_reason, counts))
    # --8<-- [end:whole]

    # --8<-- [start:events]
    async def events(self, job: Job, text: TextStream, chat: bool, ids: tuple) -> AsyncIterator[bytes]:
        """The reply as server-sent events: ``data: <chunk JSON>`` per piece, then ``data: [DONE]``.

        When the client disconnects, Starlette cancels this generator at its ``await``: the
        ``finally`` of :meth:`pieces` cancels the request there and then.
        """
        def sse(obj: dict) -> bytes:
            return f"data: {json.dumps(obj)}\n\n".encode()

        if chat:  # OpenAI's first chunk names the role
            yield sse(chat_object(*ids, "", None, chunk=True, role=True))
        try:
            async for piece in self.pieces(job, text):
                yield sse(chat_object(*ids, piece, None, chunk=True) if chat else completion_object(*ids, piece, None))
        except _EngineFailed as err:  # the status is sent already: the error goes in the stream, as OpenAI's do
            yield sse(APIError(500, f"the model failed: {err}", type="server_error").body())
            return
        yield sse(chat_object(*ids, None, job.finish_reason, chunk=True) if chat
                  else completion_object(*ids, "", job.finish_reason))
        if job.generation.include_usage:
            counts = usage(len(job.generation.prompt), job.request.produced)
            yield sse(chat_object(*ids, None, None, counts, chunk=True) if chat
                      else {**completion_object(*ids, "", None), "choices": [], "usage": counts})
        yield b"data: [DONE]\n\n"
    # --8<-- [end:events]

    async def page(self, request: HTTPRequest) -> Response:
        source = resources.files("llama.serving").joinpath("chat.html").read_text("utf-8")
        return HTMLResponse(source.replace("__MODEL__", html.escape(self.model_name, quote=True)))

    async def health(self, request: HTTPRequest) -> Response:
        if self.engine.scheduler.closed:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def stats(self, request: HTTPRequest) -> Response:
        return JSONResponse(self.engine.scheduler.stats())


async def _api_error(request: HTTPRequest, err: APIError) -> Response:
    return JSONResponse(err.body(), status_code=err.status)


async def _http_error(request: HTTPRequest, err: HTTPException) -> Response:
    # Starlette's own 404 and 405 (no such path, wrong method), in OpenAI's shape as well.
    message = f"{request.method} {request.url.path}: {err.detail}"
    if err.status_code == 404:
        message += "; the endpoints are GET /v1/models, POST /v1/completions, POST /v1/chat/completions"
    return JSONResponse(APIError(err.status_code, message).body(), status_code=err.status_code)


async def _server_error(request: HTTPRequest, err: Exception) -> Response:
    return JSONResponse(APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").body(),
                        status_code=500)


def build_app(engine: Engine, tokenizer, model_name: str, api_key: str | None = None,
              max_body: int = MAX_BODY_BYTES) -> Starlette:
    """The Starlette application: every endpoint, errors in OpenAI's shape, the engine started and stopped with it.

    Args:
        engine: the engine (not started: the application starts it, and stops it at shutdown
            once the requests in flight are done).
        tokenizer: the model's tokenizer; with the chat tokens, chat completions work too.
        model_name: the id of the model in ``/v1/models``, which requests must name.
        api_key: if given, ``/v1/*`` requires ``Authorization: Bearer <api_key>``.
        max_body: the largest request body in bytes.
    """
    app = _App(engine, tokenizer, model_name, api_key, max_body)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    routes = [Route("/", app.page), Route("/health", app.health), Route("/stats", app.stats),
              Route("/v1/models", app.models),
              Route("/v1/completions", app.completions, methods=["POST"]),
              Route("/v1/chat/completions", app.chat_completions, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, Exception: _server_error})


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: a free one, chosen by the system).

    Raises:
        ValueError: the port is taken, or the address is not one of this machine's.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == 98:  # EADDRINUSE
            raise ValueError(f"{host}:{port} is in use: stop the program that listens there, or give another "
                             "--port (0 picks a free one)") from None
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}; give an address of this "
                         "machine with --host (127.0.0.1 by default)") from None
    return sock


# --8<-- [start:shutdown]
def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, with a drain at the first signal and a clean exit after it.

        The first SIGTERM or Ctrl-C closes the scheduler (new requests get 503) and starts
        uvicorn's graceful shutdown, which waits for the responses in flight. uvicorn would then
        raise the signal again, to end the process "killed by SIGTERM"; a drained server has done
        what was asked, so here it exits 0.
        """

        def __init__(self, config, on_signal: Callable[[], None]) -> None:
            super().__init__(config)
            self.on_signal = on_signal

        def handle_exit(self, sig, frame) -> None:
            self.on_signal()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

    return Server
# --8<-- [end:shutdown]


def serve(engine: Engine, tokenizer, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, announce: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then finish the requests in flight and return.

    Args:
        engine: the engine (not started), as for :func:`build_app`.
        tokenizer: the model's tokenizer, as for :func:`build_app`.
        model_name: the id of the model in ``/v1/models``, as for :func:`build_app`.
        api_key: if given, ``/v1/*`` requires ``Authorization: Bearer <api_key>``, as for :func:`build_app`.
        host: the address to listen on; the default, 127.0.0.1, is reachable from this machine only.
        port: the port (0: a free one).
        announce: called with the server's URL once it listens (default: print it on stderr).

    Raises:
        ValueError: the address cannot be listened on (see :func:`listen`).
    """
    import uvicorn

    sock = listen(host, port)
    bound = sock.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    (announce or (lambda url: print(f"llama serve: {url} (Ctrl-C or SIGTERM stops it)", file=sys.stderr,
                                    flush=True)))(f"http://{where}:{bound}/")
    config = uvicorn.Config(build_app(engine, tokenizer, model_name, api_key), log_level="warning",
                            access_log=False, lifespan="on")
    _server_class()(config, on_signal=engine.scheduler.close).run(sockets=[sock])
