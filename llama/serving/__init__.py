"""Serving (part V): an OpenAI-compatible HTTP server that decodes many requests at once by continuous batching.

Modules, in the order the book meets them: :mod:`~llama.serving.slots`, :mod:`~llama.serving.scheduler`.
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
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.serving.slots import SlotCache, SlotTable
    from llama.serving.scheduler import Engine, QueueFull, Request, Scheduler, ShuttingDown
