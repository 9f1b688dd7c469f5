"""Serving (part V): an OpenAI-compatible HTTP server that decodes many requests at once by continuous batching.

Modules, in the order the book meets them: :mod:`~llama.serving.slots`, :mod:`~llama.serving.scheduler`,
:mod:`~llama.serving.text`, :mod:`~llama.serving.api`, :mod:`~llama.serving.server`.
Every public name of these modules can be imported from the package itself
(``from llama.serving import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "SlotCache": "slots", "SlotTable": "slots",
    "Request": "scheduler", "QueueFull": "scheduler", "ShuttingDown": "scheduler", "Scheduler": "scheduler",
    "Engine": "scheduler",
    "TextStream": "text",
    "APIError": "api", "Generation": "api", "parse_body": "api", "check_model": "api", "completion_request": "api",
    "chat_request": "api", "usage": "api", "completion_object": "api", "chat_object": "api", "models_object": "api",
    "new_id": "api",
    "MAX_BODY_BYTES": "server", "Job": "server", "build_app": "server", "listen": "server", "serve": "server",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.serving.slots import SlotCache, SlotTable
    from llama.serving.scheduler import Engine, QueueFull, Request, Scheduler, ShuttingDown
    from llama.serving.text import TextStream
    from llama.serving.api import (
        APIError, Generation, chat_object, chat_request, check_model, completion_object, completion_request,
        models_object, new_id, parse_body, usage,
    )
    from llama.serving.server import MAX_BODY_BYTES, Job, build_app, listen, serve
