r"""The chat format: Llama 3's turns of special tokens, rendered to ids with the mask of what is trained on.

A conversation is a list of messages ``{"role": ..., "content": ...}`` with the roles
``system``, ``user`` and ``assistant``. Llama 3 writes it as text with four special tokens::

    <|begin_of_text|><|start_header_id|>user<|end_header_id|>

    Hello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>

    Hi.<|eot_id|>

:data:`LLAMA3_CHAT_TEMPLATE` is that format as the Jinja template Meta ships with Llama 3
Instruct (what ``transformers``' ``apply_chat_template`` runs); :meth:`ChatFormat.render` writes
the same text in Python, and :meth:`ChatFormat.encode` the same ids, one part at a time, with a
mask that is ``True`` on the tokens a fine-tuned model learns to produce: the assistant's replies
and their ``<|eot_id|>``. :func:`pack` lays several encoded conversations into fixed-length
windows for training.

>>> from llama.tokenizers.bpe import BPETokenizer
>>> from llama.posttraining.special_tokens import add_special_tokens
>>> tok = add_special_tokens(BPETokenizer.train("hello there, hello here", 262), CHAT_TOKENS)
>>> chat = ChatFormat(tok)
>>> ids, mask = chat.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
>>> tok.decode(i for i, m in zip(ids, mask) if m)
'hello<|eot_id|>'
>>> ids == tok.encode(chat.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]))
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llama.posttraining.special_tokens import special_token_ids

__all__ = ["CHAT_TOKENS", "ROLES", "LLAMA3_CHAT_TEMPLATE", "ChatFormat", "check_template", "pack"]

# --8<-- [start:format]
#: The four special tokens of the format, in the order they are appended to a vocabulary.
CHAT_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
BEGIN, START, END, EOT = CHAT_TOKENS
#: Who may speak. ``system`` sets the behaviour, ``user`` asks, ``assistant`` is the model.
ROLES = ("system", "user", "assistant")

#: Meta's chat template for Llama 3 Instruct, verbatim: each message is a header naming its role,
#: a blank line, the content with surrounding whitespace trimmed, and ``<|eot_id|>``; the whole
#: begins with ``bos_token``; ``add_generation_prompt`` ends it with an open assistant header.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# --8<-- [end:format]


# --8<-- [start:check]
def check_conversation(messages: Sequence[dict], *, train: bool = False) -> None:
    """Refuse what the format cannot write, with one line naming the message and the fix.

    Raises:
        ValueError: ``messages`` is not a list of ``{"role", "content"}`` dicts, a role is not one
            of :data:`ROLES`, a content is not text or spells a special token, or (``train``) no
            assistant turn is there to learn from.
    """
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        raise ValueError(f"a conversation is a list of messages, got {type(messages).__name__}; "
                         "e.g. [{'role': 'user', 'content': 'Hello'}]")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not {"role", "content"} <= set(m):
            raise ValueError(f"message {k} is {m!r}: each message is a dict with a 'role' and a 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"message {k} has the unknown role {m['role']!r}: the roles are {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {k} ({m['role']}) has content of type {type(m['content']).__name__}, "
                             "not text: give its content as a str")
        spelled = next((t for t in CHAT_TOKENS if t in m["content"]), None)
        if spelled is not None:
            raise ValueError(f"message {k} ({m['role']}) contains the special token {spelled} as text, which the "
                             "model could not tell from the format's own: remove it from the message")
    if train and not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"the conversation of {len(messages)} message(s) has no assistant turn, so nothing to "
                         "train on: add the reply the model should learn")
# --8<-- [end:check]


class ChatFormat:
    """The chat format over one tokenizer that has the :data:`CHAT_TOKENS`.

    Args:
        tokenizer: a tokenizer prepared with
            :func:`~llama.posttraining.special_tokens.add_special_tokens` (``CHAT_TOKENS``).

    Raises:
        ValueError: the tokenizer lacks one of the special tokens (the message names it and the fix).
    """

    # --8<-- [start:init]
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        ids = special_token_ids(tokenizer, CHAT_TOKENS)
        self.bos_id, self.start_id, self.end_id, self.eot_id = (ids[t] for t in CHAT_TOKENS)
        # The blank line after a header, as the tokenizer cuts it when a reply follows. GPT-2's
        # pre-tokenizer keeps "\n\n" whole at the end of a text but splits it before a word, so
        # the open header of a prompt must end with the ids that training saw before replies.
        body = tokenizer.encode("\n\n" + "Hi")
        self.header_gap = body[: self._gap(body)]
        self._role_ids = {role: tokenizer.encode(role) for role in ROLES}
    # --8<-- [end:init]

    def _gap(self, body: list[int]) -> int:
        """How many leading ids of a turn's body (``"\\n\\n" + content``) spell the blank line and nothing more."""
        size = 0
        for k, i in enumerate(body):
            size += len(self.tokenizer.id_to_bytes(i))
            if size >= 2:
                return k + 1 if size == 2 else k  # a token that also holds content belongs to the content
        return len(body)

    # --8<-- [start:render]
    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as :data:`LLAMA3_CHAT_TEMPLATE` renders it.

        Raises:
            ValueError: see :func:`check_conversation`.
        """
        check_conversation(messages)
        text = BEGIN + "".join(f"{START}{m['role']}{END}\n\n{m['content'].strip()}{EOT}" for m in messages)
        return text + (f"{START}assistant{END}\n\n" if add_generation_prompt else "")
    # --8<-- [end:render]

    # --8<-- [start:encode]
    def encode(self, messages: Sequence[dict], max_len: int | None = None,
               add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """Token ids of :meth:`render`'s text, and which of them the model is trained on.

        Each piece of text between two special tokens is encoded on its own, as a tokenizer
        that knows the special tokens does with the whole text (it cuts the text at them first),
        so the ids equal ``tokenizer.encode(render(messages))``. The mask is ``True`` on an
        assistant turn's reply and its ``<|eot_id|>``: the blank line after its header belongs to
        the prompt, which the model is given, not asked to write.

        Args:
            messages: the conversation (see :func:`check_conversation`).
            max_len: the most ids allowed (the model's context); ``None`` for no limit.
            add_generation_prompt: end with an open assistant header (for generating a reply);
                then no assistant turn is required.

        Returns:
            ``(ids, mask)``, two lists of the same length.

        Raises:
            ValueError: a bad conversation (see :func:`check_conversation`), or one longer than ``max_len``.
        """
        check_conversation(messages, train=not add_generation_prompt)
        ids, mask = [self.bos_id], [False]
        for m in messages:
            header = [self.start_id, *self._role_ids[m["role"]], self.end_id]
            body = self.tokenizer.encode("\n\n" + m["content"].strip())
            gap = self._gap(body)
            ids += header + body + [self.eot_id]
            trained = m["role"] == "assistant"
            mask += [False] * (len(header) + gap) + [trained] * (len(body) - gap + 1)
        if add_generation_prompt:
            ids += self.open_header("assistant")
            mask += [False] * (len(ids) - len(mask))
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"the conversation is {len(ids)} tokens, more than the {max_len} allowed (the model's "
                             "context): drop its earliest turns, or split it")
        return ids, mask
    # --8<-- [end:encode]

    def prompt(self, content: str) -> list[int]:
        """The ids that ask ``content`` as the user's turn and open the assistant's: a task's prompt
        for a chat model (a ``format_prompt`` of :func:`~llama.posttraining.evaluate.replies`)."""
        return self.encode([{"role": "user", "content": content}], add_generation_prompt=True)[0]

    def open_header(self, role: str) -> list[int]:
        """The ids that open a turn of ``role`` and leave it to be written: header and blank line."""
        return [self.start_id, *self._role_ids[role], self.end_id, *self.header_gap]

    def turn(self, role: str, content: str) -> list[int]:
        """The ids of one whole turn (header, content, ``<|eot_id|>``), as :meth:`encode` writes it."""
        check_conversation([{"role": role, "content": content}])
        return [self.start_id, *self._role_ids[role], self.end_id,
                *self.tokenizer.encode("\n\n" + content.strip()), self.eot_id]


# --8<-- [start:template]
def check_template(template: str, tokenizer=None) -> None:
    """Check that a Jinja chat template (e.g. a ``tokenizer_config.json``'s ``chat_template``) writes
    this format: it must render a probe conversation to the text :meth:`ChatFormat.render` gives.

    Args:
        template: the Jinja source.
        tokenizer: optional; if given, it must also have the :data:`CHAT_TOKENS`.

    Raises:
        ValueError: the template never writes a special token of the format, or writes other text.
    """
    import jinja2.sandbox

    probe = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}]
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        text = env.from_string(template).render(messages=probe, bos_token=BEGIN, add_generation_prompt=True)
    except jinja2.TemplateError as err:
        raise ValueError(f"the chat template does not render: {err}") from None
    missing = [t for t in CHAT_TOKENS if t not in text]
    if missing:
        raise ValueError(f"the chat template never writes {', '.join(missing)}: it is not Llama 3's format; "
                         "use llama.posttraining.chat.LLAMA3_CHAT_TEMPLATE")
    expected = BEGIN + "".join(f"{START}{m['role']}{END}\n\n{m['content']}{EOT}" for m in probe) + f"{START}assistant{END}\n\n"
    if text != expected:
        raise ValueError(f"the chat template renders {text[:80]!r}..., not this format's {expected[:80]!r}...: "
                         "use llama.posttraining.chat.LLAMA3_CHAT_TEMPLATE")
    if tokenizer is not None:
        special_token_ids(tokenizer, CHAT_TOKENS)
# --8<-- [end:template]


# --8<-- [start:pack]
def pack(encoded: Sequence[tuple[list[int], list[bool]]], seq_len: int,
         pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay encoded conversations into windows of ``seq_len`` ids, whole, first fit, in order.

    Each conversation goes into the first window with room for all of it (none is cut: a reply
    without its question teaches nothing); the rest of a window is ``pad_id``, masked out. Each
    conversation begins with ``<|begin_of_text|>``, which tells the model a new one starts, as
    BOS does between documents in pre-training.

    Args:
        encoded: ``(ids, mask)`` pairs from :meth:`ChatFormat.encode`.
        seq_len: the window length.
        pad_id: the id written after the last conversation of a window.

    Returns:
        ``(ids, mask)``: ``[n_windows, seq_len]`` long and bool tensors; ``mask`` is ``True``
        where the token is one to learn to predict.

    Raises:
        ValueError: a conversation is longer than ``seq_len``, or ids and mask differ in length.
    """
    windows: list[tuple[list[int], list[bool]]] = []
    for k, (ids, mask) in enumerate(encoded):
        if len(ids) != len(mask):
            raise ValueError(f"conversation {k} has {len(ids)} ids but a mask of {len(mask)}")
        if len(ids) > seq_len:
            raise ValueError(f"conversation {k} is {len(ids)} tokens, longer than a window of {seq_len}: "
                             "give a larger seq_len, or drop or split the conversation")
        window = next((w for w in windows if len(w[0]) + len(ids) <= seq_len), None)
        if window is None:
            windows.append(window := ([], []))
        window[0].extend(ids)
        window[1].extend(mask)
    out_ids = torch.full((len(windows), seq_len), pad_id, dtype=torch.long)
    out_mask = torch.zeros(len(windows), seq_len, dtype=torch.bool)
    for row, (ids, mask) in enumerate(windows):
        out_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        out_mask[row, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
    return out_ids, out_mask
# --8<-- [end:pack]
