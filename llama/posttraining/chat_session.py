r"""A multi-turn conversation with a model, which keeps the KV cache of everything said so far.

Each turn adds a user message and the model's reply to one growing sequence of ids. Running the
model over the whole sequence again at every turn would cost the whole conversation each time;
:class:`ChatSession` keeps one :class:`~llama.model.attention.KVCache` per layer, as long as the
model's context, and feeds only the ids the cache has not seen: the end of the last reply, the
new user turn and the open assistant header. A reply ends at ``<|eot_id|>``, after
``max_new_tokens``, or where the context is full.

>>> import torch
>>> from llama.model.config import ModelConfig
>>> from llama.model.transformer import Transformer
>>> from llama.tokenizers.bpe import BPETokenizer
>>> from llama.posttraining.chat import CHAT_TOKENS, ChatFormat
>>> from llama.posttraining.special_tokens import add_special_tokens
>>> tok = add_special_tokens(BPETokenizer([]), CHAT_TOKENS)
>>> _ = torch.manual_seed(0)
>>> model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=128)).eval()
>>> session = ChatSession(model, ChatFormat(tok), max_new_tokens=5)
>>> reply = list(session.send("Hello"))
>>> len(reply) <= 5, session.ids[-1] == session.chat.eot_id
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.posttraining.chat import ChatFormat

__all__ = ["ChatSession"]


class ChatSession:
    """One conversation with ``model``, turn after turn, reusing the KV cache between turns.

    Args:
        model: the model, in ``eval()`` mode, with the chat tokens in its vocabulary.
        chat: the :class:`~llama.posttraining.chat.ChatFormat` of its tokenizer.
        sampling: how each token is chosen (default greedy); ``<|eot_id|>`` always ends a reply.
        max_new_tokens: the most tokens of one reply.
        system: an optional system message, the first turn of the conversation (and after :meth:`reset`).

    Raises:
        ValueError: the tokenizer's vocabulary does not fit the model's, or ``max_new_tokens`` < 1.
    """

    # --8<-- [start:init]
    def __init__(self, model: Transformer, chat: ChatFormat, sampling: Sampling = Sampling(),
                 max_new_tokens: int = 256, system: str | None = None) -> None:
        vocab = chat.tokenizer.vocab_size
        if vocab != model.config.vocab_size:
            raise ValueError(f"the tokenizer has {vocab} tokens but the model {model.config.vocab_size}: they do not "
                             "belong together (was the model resized for the chat tokens?)")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.model, self.chat, self.sampling = model, chat, sampling
        self.max_new_tokens, self.system = max_new_tokens, system
        self.context = model.config.max_seq_len
        # One cache for the whole conversation: allocated once, as long as the context.
        self.caches = model.new_caches(batch_size=1, max_seq_len=self.context)
        self.generator = sampling.generator(model.tok_embeddings.weight.device)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays). Old keys and values stay in the
        cache but are overwritten before any position can attend to them: the causal mask lets
        position ``p`` see only positions written for this conversation."""
        self.ids: list[int] = [self.chat.bos_id]  # every id of the conversation, fed or not
        self.fed = 0  # how many of them the cache holds
        self.messages: list[dict] = []
        if self.system is not None:
            self.ids += self.chat.turn("system", self.system)
            self.messages.append({"role": "system", "content": self.system})
    # --8<-- [end:init]

    # --8<-- [start:feed]
    @torch.inference_mode()
    def _feed(self) -> torch.Tensor:
        """Run the ids the cache has not seen, at their positions; the logits after the last one."""
        new = self.ids[self.fed:]
        device = self.model.tok_embeddings.weight.device
        tokens = torch.tensor([new], dtype=torch.long, device=device)
        positions = torch.arange(self.fed, len(self.ids), device=device)
        with self.model.using_cache(self.caches):
            logits = self.model(tokens, input_pos=positions, last_only=True)[:, -1]
        self.fed = len(self.ids)  # only once the pass is done: an interrupted one is redone
        return logits
    # --8<-- [end:feed]

    # --8<-- [start:send]
    def send(self, message: str) -> Iterator[int]:
        """Add a user turn and yield the reply's ids as they are chosen (not ``<|eot_id|>``).

        The reply joins the conversation as it comes; when the iterator ends, or is closed early
        (a reader who stops it, Ctrl-C), the reply is closed with ``<|eot_id|>``, so the next turn
        follows a whole one.

        Raises:
            ValueError: at the call, before anything changes: a bad message (see
                :func:`~llama.posttraining.chat.check_conversation`), or a conversation that no longer fits
                the model's context (the message says to reset).
        """
        turn = self.chat.turn("user", message) + self.chat.open_header("assistant")
        if len(self.ids) + len(turn) >= self.context:  # room for the turn and at least one new token
            raise ValueError(f"the conversation would be {len(self.ids) + len(turn)} tokens, and the model's context "
                             f"is {self.context}: start a new conversation (/reset), or write a shorter message")
        self.ids += turn
        self.messages.append({"role": "user", "content": message})
        return self._reply()

    def _reply(self) -> Iterator[int]:
        start = len(self.ids)
        try:
            for step in range(1, self.max_new_tokens + 1):
                if len(self.ids) >= self.context:  # the context is full: the reply ends here
                    break
                logits = self._feed()
                try:
                    token = int(self.sampling.next_ids(logits, self.generator))
                except ValueError as err:
                    raise ValueError(f"at new token {step}: {err}") from None
                if token == self.chat.eot_id:
                    break
                self.ids.append(token)
                yield token
        finally:
            reply = self.ids[start:]
            self.ids.append(self.chat.eot_id)
            self.messages.append({"role": "assistant", "content": self.chat.tokenizer.decode(reply)})
    # --8<-- [end:send]

    def reply(self, message: str) -> str:
        """:meth:`send` ``message`` and return the whole reply as text."""
        return self.chat.tokenizer.decode(list(self.send(message)))
