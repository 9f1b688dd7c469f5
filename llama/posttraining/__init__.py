"""After pre-training (part V of the book): the chat format, and what turns a model of text into an assistant.

Modules, in the order the book meets them: :mod:`~llama.posttraining.special_tokens`, :mod:`~llama.posttraining.chat`, :mod:`~llama.posttraining.chat_session`.
Every public name of these modules can be imported from the package itself
(``from llama.posttraining import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "add_special_tokens": "special_tokens", "special_token_ids": "special_tokens", "save_tokenizer": "special_tokens",
    "write_model_proto": "special_tokens", "resize_vocab": "special_tokens",
    "CHAT_TOKENS": "chat", "ROLES": "chat", "LLAMA3_CHAT_TEMPLATE": "chat", "ChatFormat": "chat",
    "check_template": "chat", "pack": "chat",
    "ChatSession": "chat_session",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.posttraining.special_tokens import (
        add_special_tokens, resize_vocab, save_tokenizer, special_token_ids, write_model_proto,
    )
    from llama.posttraining.chat import CHAT_TOKENS, LLAMA3_CHAT_TEMPLATE, ROLES, ChatFormat, check_template, pack
    from llama.posttraining.chat_session import ChatSession
