r"""Pre-tokenization: the regular expression that cuts text into chunks before BPE merges anything.

BPE merges only inside a chunk, so that no token spans the end of one word and the start of the
next. The pattern is part of a tokenizer file, and so data: :func:`pre_tokenize` applies it so
that it can neither hang (a pattern that backtracks without end is stopped) nor drop text (a
pattern that leaves characters between its matches is refused).

>>> import regex
>>> pre_tokenize(regex.compile(GPT2_PATTERN), "Hello world's end")
['Hello', ' world', "'s", ' end']
"""

from __future__ import annotations

import regex

__all__ = ["GPT2_PATTERN", "LLAMA3_PATTERN", "pre_tokenize"]

# --8<-- [start:patterns]
#: GPT-2's pre-tokenizer: English contractions, words with one optional leading space,
#: numbers, runs of punctuation, and whitespace (a run of spaces gives its last space
#: to the word that follows, thanks to the ``\s+(?!\S)`` lookahead).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: Llama 3's (tiktoken ``cl100k``-style) pre-tokenizer: case-insensitive contractions,
#: a word may take one leading non-letter (``"(hello"``), digits in groups of at most 3,
#: and newlines kept apart from other whitespace.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# --8<-- [end:patterns]

#: What a pattern may spend on a text: 1 s, plus 20 microseconds a character (GPT-2's pattern
#: needs under one, on a loaded machine). A pattern can backtrack without end on some texts
#: (``(a|aa)+$`` on a run of ``a``); the ``regex`` module stops a search at a timeout.
_PATTERN_SECONDS, _PATTERN_SECONDS_PER_CHAR = 1.0, 20e-6


# --8<-- [start:pre_tokenize]
def pre_tokenize(compiled: regex.Pattern, text: str, source: str = "") -> list[str]:
    """The chunks ``compiled`` cuts ``text`` into, which together must be the whole text.

    Args:
        compiled: the pre-tokenizer pattern, compiled with the ``regex`` module.
        text: the text to cut.
        source: ``"FILE: "`` to begin the messages with (the tokenizer file the pattern came from).

    Raises:
        ValueError: the pattern takes longer than ``_PATTERN_SECONDS`` allows (it backtracks),
            or leaves a character out: encoding would drop it (``"Hello"`` became ``"ello"``).
    """
    limit = _PATTERN_SECONDS + _PATTERN_SECONDS_PER_CHAR * len(text)
    try:
        chunks = compiled.findall(text, timeout=limit)
        if sum(map(len, chunks)) == len(text):  # the matches follow each other: the whole text
            return chunks
        spans = [m.span() for m in compiled.finditer(text, timeout=limit)]
    except TimeoutError:
        raise ValueError(
            f"{source}the pre-tokenizer pattern {compiled.pattern!r} took more than {limit:.1f} s on a text of "
            f"{len(text):,} characters: it backtracks (a repetition inside a repetition, such as (a|aa)+); "
            "use the gpt2 or llama3 pattern (llama tokenize train --pattern)"
        ) from None
    starts, ends = [start for start, _ in spans] + [len(text)], [0] + [end for _, end in spans]
    gap = next((end for start, end in zip(starts, ends) if start != end), None)
    if gap is None:  # the matches cover the text, but findall gave their groups
        raise ValueError(f"{source}the pre-tokenizer pattern {compiled.pattern!r} has capturing groups, so the "
                         "chunks would be the groups, not the matches: write each group as (?:...)")
    raise ValueError(f"{source}the pre-tokenizer pattern {compiled.pattern!r} does not match every character: it "
                     f"leaves out {text[gap]!r} at position {gap}, which encoding would drop; end the pattern with "
                     "|\\s+|. or use the gpt2 or llama3 pattern")
# --8<-- [end:pre_tokenize]
