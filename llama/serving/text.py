r"""Ids to streamed text: what is new of the decoded text at each token, held back where a stop string may begin.

A token is not a piece of text of its own: SentencePiece drops the space of a word that starts a
text, and a byte-level token may hold half of a character. So, as ``llama generate`` does, the
whole sequence is decoded again at each token and only what is new is sent; a character whose
bytes have not all come yet (decoded as U+FFFD) waits until they have.

OpenAI's ``stop`` strings end a reply where one first appears, the string itself left out. Text
that could be the beginning of one is held back until the next tokens say whether it is: a
client never receives text that has to be taken back.

>>> from llama.tokenizers.bpe import BPETokenizer
>>> tok = BPETokenizer([])                     # bytes: one token per byte
>>> stream = TextStream(tok.decode, stop=["\n\n"])
>>> [stream.push(i) for i in tok.encode("Hi.\nOK\n\nnever")]
['H', 'i', '.', '', '\nO', 'K', '', '', '', '', '', '', '']
>>> stream.stopped, stream.text
(True, 'Hi.\nOK')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

__all__ = ["TextStream"]


# --8<-- [start:stream]
class TextStream:
    """The text of a growing list of ids, handed out piece by piece, cut at the first stop string.

    Args:
        decode: the tokenizer's ``decode`` (ids to text).
        prefix: ids that come before the reply and belong to the context, not to the text (a
            completion's prompt: decoding it with the reply keeps the reply's first space).
        stop: strings that end the text where the first of them begins (not included).

    Attributes:
        text: everything handed out so far (after :meth:`finish`: the whole reply).
        stopped: a stop string appeared; later ids are ignored.
    """

    def __init__(self, decode: Callable[[Iterable[int]], str], prefix: Sequence[int] = (),
                 stop: Sequence[str] = ()) -> None:
        self.decode, self.stop = decode, [s for s in stop if s]
        self.ids = list(prefix)
        self.start = len(decode(self.ids).rstrip("\ufffd")) if self.ids else 0
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one id; returns the text that is now certain (possibly ``""``)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        return self._advance(self.decode(self.ids)[self.start:].rstrip("\ufffd"), final=False)

    def finish(self) -> str:
        """No more ids: returns what was held back (a partial character, or the start of a stop
        string that never came)."""
        if self.stopped:
            return ""
        return self._advance(self.decode(self.ids)[self.start:], final=True)

    def _advance(self, full: str, final: bool) -> str:
        cut = min((i for i in (full.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            safe = cut
        elif final:
            safe = len(full)
        else:  # hold back a tail that a stop string begins with
            safe = len(full) - max((k for s in self.stop for k in range(1, len(s)) if full.endswith(s[:k])), default=0)
        new = full[len(self.text):max(safe, len(self.text))]
        self.text += new
        return new
# --8<-- [end:stream]
