"""Figures of the Chat format chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

* ``chat-mask.svg``: a two-round conversation rendered to tokens by
  :meth:`llama.posttraining.chat.ChatFormat.encode`, one box per token, coloured by what the token is:
  a special token, the prompt (not trained on), or a reply the model is trained to write.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from llama.posttraining import CHAT_TOKENS, ChatFormat, add_special_tokens
from llama.tokenizers import LLAMA3_PATTERN, BPETokenizer

CONVERSATION = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is a llama?"},
    {"role": "assistant", "content": "A llama is a South American camelid."},
    {"role": "user", "content": "Is it big?"},
    {"role": "assistant", "content": "About as tall as a person."},
]
COLOURS = {"special": "#c9c9c9", "prompt": "#dbe8f6", "trained": "#f6c36b"}


def mask_figure():
    """The conversation's tokens, in reading order, wrapped into lines at each ``<|eot_id|>``."""
    corpus = " ".join(m["content"] for m in CONVERSATION) * 20 + " system user assistant " * 20
    tok = add_special_tokens(BPETokenizer.train(corpus, 330, pattern=LLAMA3_PATTERN), CHAT_TOKENS)
    chat = ChatFormat(tok)
    ids, mask = chat.encode(CONVERSATION)
    specials = {chat.bos_id, chat.start_id, chat.end_id, chat.eot_id}
    short = {chat.bos_id: "<|begin_of_text|>", chat.start_id: "<|start_header_id|>",
             chat.end_id: "<|end_header_id|>", chat.eot_id: "<|eot_id|>"}
    fig, ax = plt.subplots(figsize=(9.6, 3.6))
    x, y, width_per_char, height = 0.0, 0.0, 0.115, 0.8
    widest = 0.0
    for i, trained in zip(ids, mask):
        text = short.get(i) or tok.id_to_piece(i).replace("\n", "\u21b5").replace(" ", "\u2423")
        kind = "special" if i in specials and not trained else ("trained" if trained else "prompt")
        w = width_per_char * len(text) + 0.12
        ax.add_patch(Rectangle((x, y - height), w, height, facecolor=COLOURS[kind], edgecolor="white", linewidth=1.2))
        ax.text(x + w / 2, y - height / 2, text, ha="center", va="center", family="monospace", fontsize=8.5)
        x += w
        widest = max(widest, x)
        if i == chat.eot_id:  # one line per turn
            x, y = 0.0, y - 1.0
    ax.set_xlim(-0.1, widest + 0.1)
    ax.set_ylim(y - 0.1, 0.1)
    ax.set_aspect("auto")
    ax.axis("off")
    ax.legend(handles=[Patch(facecolor=COLOURS["special"], label="special token of the prompt: not trained on"),
                       Patch(facecolor=COLOURS["prompt"], label="prompt: given, not trained on"),
                       Patch(facecolor=COLOURS["trained"], label="reply and its <|eot_id|>: trained on (mask True)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=1, frameon=False, fontsize=9)
    ax.set_title(f"One conversation, {len(ids)} tokens, {sum(mask)} of them trained on "
                 "(\u21b5 newline, \u2423 space)", fontsize=10)
    fig.tight_layout()
    return fig


FIGURES = {"chat-mask.svg": mask_figure}
