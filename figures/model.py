"""Figures of the Feed-forward, The model and Checking ourselves chapters, drawn with ``llama``.

See hooks/figures.py for how ``FIGURES`` is turned into SVG files of the site.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from llama.formats import expected_shapes
from llama.model import (
    PRESETS,
    FeedForward,
    ModelConfig,
    RopeScaling,
    Transformer,
    count_parameters,
    interleaved_to_half_split,
    llama_hidden_dim,
)


def _one_thread(make):
    """Run a figure function with one intra-op thread, then restore the setting.

    The models in these figures are tiny; spreading a 64-wide matmul over threads costs more
    than it saves, and on a busy machine waiting for the threads dominates the build time.
    """

    def wrapper():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return make()
        finally:
            torch.set_num_threads(threads)

    wrapper.__name__ = wrapper.__qualname__ = make.__name__
    wrapper.__doc__ = make.__doc__
    return wrapper


# ------------------------------------------------------------------------------ feed-forward
def swiglu():
    """SiLU next to ReLU, and what the gate does to a value."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), facecolor="white")
    z = torch.linspace(-5, 5, 201)
    left.plot(z, F.relu(z), label="ReLU$(z)$", linestyle="--")
    left.plot(z, F.silu(z), label=r"SiLU$(z) = z\,\sigma(z)$")
    left.plot(z, torch.sigmoid(z), label=r"$\sigma(z)$", linewidth=0.8)
    left.axhline(0, color="black", linewidth=0.5)
    left.set_xlabel("pre-activation $z$")
    left.set_ylabel("activation")
    left.set_title("SiLU: a smooth ReLU with a small dip")
    left.legend(loc="upper left")

    # A one-feature SwiGLU: gate a = w1 x, value b = w3 x; the output of the gate is SiLU(a) * b.
    ff = FeedForward(dim=1, hidden_dim=1)
    with torch.no_grad():
        ff.w2.weight.fill_(1.0)
        for slope, style in [(1.0, "-"), (-1.0, "--"), (0.25, ":")]:
            ff.w1.weight.fill_(1.0)
            ff.w3.weight.fill_(slope)
            x = torch.linspace(-5, 5, 201)[:, None]
            right.plot(x[:, 0], ff(x)[:, 0], style, label=rf"$w_1 = 1,\ w_3 = {slope:g}$")
    right.axhline(0, color="black", linewidth=0.5)
    right.set_xlabel("input $x$ (one feature)")
    right.set_ylabel(r"$w_2\,\mathrm{SiLU}(w_1 x)\,(w_3 x)$")
    right.set_title("SwiGLU with one hidden unit: a learned curve")
    right.legend(loc="upper left")
    fig.tight_layout()
    return fig


# (dim, multiple_of, ffn_dim_multiplier) from Meta's params.json of each released model.
RELEASED = {
    "Llama 2 7B": (4096, 256, None),
    "Llama 2 13B": (5120, 256, None),
    "Llama 2 70B": (8192, 4096, 1.3),
    "Llama 3 8B": (4096, 1024, 1.3),
    "Llama 3 70B": (8192, 4096, 1.3),
    "Llama 3.1 405B": (16384, 4096, 1.2),
    "Llama 3.2 1B": (2048, 256, 1.5),
    "Llama 3.2 3B": (3072, 256, 1.0),
}


def hidden_width():
    """Feed-forward width over model width for Meta's released models, by Llama's rule."""
    fig, ax = plt.subplots(figsize=(7, 3.6), facecolor="white")
    names = list(RELEASED)
    ratios = [llama_hidden_dim(*RELEASED[n]) / RELEASED[n][0] for n in names]
    bars = ax.barh(names, ratios, color=["C0" if RELEASED[n][2] is None else "C1" for n in names])
    ax.bar_label(bars, labels=[f"{llama_hidden_dim(*RELEASED[n]):,}" for n in names], padding=3, fontsize="small")
    ax.axvline(8 / 3, color="grey", linestyle="--", linewidth=0.8, label="8/3: as many parameters as a 4x MLP")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", frameon=False)
    ax.invert_yaxis()
    ax.set_xlim(0, 4.6)
    ax.set_xlabel("hidden_dim / dim (labels: hidden_dim)")
    ax.set_title("Feed-forward width by Llama's rule (orange: with ffn_dim_multiplier)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- model
def _by_component(name: str) -> str:
    """The group of a parameter name of :class:`Transformer`, for the breakdown figure."""
    for key, group in [("tok_embeddings", "embedding"), ("output", "output head"),
                       ("attention.wq", "wq"), ("attention.wk", "wk"), ("attention.wv", "wv"),
                       ("attention.wo", "wo"), ("feed_forward.w1", "w1 (gate)"),
                       ("feed_forward.w2", "w2 (down)"), ("feed_forward.w3", "w3 (up)")]:
        if name.startswith(key) or f".{key}." in name:
            return group
    return "RMSNorm gains"


def parameter_breakdown():
    """Parameters of Llama 2 7B and Llama 3.2 1B by matrix, from the shapes the config implies."""
    names = ["llama2-7b", "llama3.2-1b"]
    groups = ["embedding", "wq", "wk", "wv", "wo", "w1 (gate)", "w3 (up)", "w2 (down)", "RMSNorm gains", "output head"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), facecolor="white")
    for ax, name in zip(axes, names):
        cfg = PRESETS[name]
        counts: dict[str, int] = defaultdict(int)
        for pname, shape in expected_shapes(cfg).items():
            if not (cfg.tie_embeddings and pname == "output.weight"):  # a tied head is the embedding
                counts[_by_component(pname)] += math.prod(shape)
        values = [counts.get(g, 0) / 1e6 for g in groups]
        bars = ax.barh(groups, values, color=["C0"] + ["C1"] * 4 + ["C2"] * 3 + ["C3", "C4"])
        ax.bar_label(bars, labels=[f"{v:,.0f}M" if v >= 1 else f"{v * 1e3:,.0f}K" if v else "tied" for v in values],
                     padding=2, fontsize="small")
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.3)
        ax.set_xlabel("parameters (millions)")
        ax.set_title(f"{name}: {count_parameters(cfg) / 1e9:.2f}B in all")
    fig.tight_layout()
    return fig


@_one_thread
def residual_stream():
    """RMS of the residual stream after each block of a small random model, and of what is added."""
    torch.manual_seed(0)
    cfg = PRESETS["stories260K"]
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (4, 64))
    stream, added = [], []

    def record(block, inputs, output):
        stream.append(output.pow(2).mean().sqrt().item())
        added.append((output - inputs[0]).pow(2).mean().sqrt().item())

    hooks = [layer.register_forward_hook(record) for layer in model.layers]
    with torch.no_grad():
        embedded = model.tok_embeddings(tokens).pow(2).mean().sqrt().item()
        model(tokens)
    for h in hooks:
        h.remove()
    fig, ax = plt.subplots(figsize=(7, 3.4), facecolor="white")
    layers = list(range(cfg.n_layers + 1))
    ax.plot(layers, [embedded] + stream, marker="o", label="residual stream $h_\\ell$")
    ax.plot(layers[1:], added, marker="s", label="what block $\\ell$ adds")
    ax.set_xlabel("after block (0 = embeddings)")
    ax.set_ylabel("RMS")
    ax.set_ylim(bottom=0)
    ax.set_title(f"stories260K at initialisation ({cfg.n_layers} blocks, seed 0)")
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------- checking
@_one_thread
def checking_mistakes():
    """How far one wrong detail moves the logits of a tiny model, next to float32 rounding."""
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, max_seq_len=64,
                      rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16))
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    tokens = torch.randint(0, cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
    state = model.state_dict()
    with torch.no_grad():
        reference = model(tokens)

    def logits_with(config: ModelConfig, sd: dict[str, torch.Tensor] | None = None, dtype=torch.float32):
        other = Transformer(config).eval()
        other.load_state_dict(sd or state)
        with torch.no_grad():
            return other.to(dtype)(tokens).float()

    other_layout = {k: interleaved_to_half_split(v, cfg.n_heads if ".wq." in k else cfg.n_kv_heads)
                    if k.endswith(("attention.wq.weight", "attention.wk.weight")) else v for k, v in state.items()}
    cases = {
        "same model in float64\n(rounding only)": logits_with(cfg, dtype=torch.float64),
        "RMSNorm eps 1e-6\ninstead of 1e-5": logits_with(dataclasses.replace(cfg, norm_eps=1e-6)),
        "RoPE base 10,000\ninstead of 500,000": logits_with(dataclasses.replace(cfg, rope_theta=10000.0)),
        "Llama 3.1 scaling\nleft out": logits_with(dataclasses.replace(cfg, rope_scaling=None)),
        "scaling factor 32\ninstead of 8": logits_with(dataclasses.replace(cfg, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 16))),
        "wq/wk rows in the\nother RoPE layout": logits_with(cfg, other_layout),
    }
    diffs = [float((v - reference).abs().max()) for v in cases.values()]
    fig, ax = plt.subplots(figsize=(7, 3.8), facecolor="white")
    bars = ax.barh(list(cases), diffs, color=["C2"] + ["C3"] * (len(cases) - 1))
    ax.bar_label(bars, labels=[f"{d:.1e}" for d in diffs], padding=3, fontsize="small")
    ax.axvline(1e-5, color="black", linestyle="--", linewidth=0.8, label="tolerance of the parity test, 1e-5")
    ax.set_xscale("log")
    ax.set_xlim(min(diffs) / 5, max(diffs) * 20)
    ax.invert_yaxis()
    ax.set_xlabel("max |difference| of the logits (log scale)")
    ax.set_title("One wrong detail in a tiny random model, against rounding")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {
    "ffn-swiglu.svg": swiglu,
    "ffn-hidden-width.svg": hidden_width,
    "model-parameters.svg": parameter_breakdown,
    "model-residual-stream.svg": residual_stream,
    "checking-mistakes.svg": checking_mistakes,
}
