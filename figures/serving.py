"""Figures of the Serving chapter, drawn at build time (see hooks/figures.py).

``serving-load.svg`` reads the run of ``python benchmarks/serve.py --save``, committed as
``benchmarks/results/serve.json``: aggregate tokens/s and the time to first token of ``llama serve``
against the number of concurrent clients, with the machine and its load in the title.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "serve.json"


def machine_title(result: dict) -> str:
    """The machine line, short enough for a title: CPU, cores, torch, and the load it ran under."""
    m = result["machine"]
    load = result.get("load_average") or []
    under = f", load average up to {max(load):.2f}" if load else ""
    return f"{m['cpu']} ({m['cpu_capability']}), {m['threads']} threads of {m['cores']} cores, torch {m['torch']}{under}"


def load_figure():
    """Left: aggregate tokens/s against concurrent clients, with one client's speed times the clients
    (perfect scaling) for reference; right: time to first token, median and 99th percentile."""
    result = json.loads(RESULTS.read_text())
    rows = result["rows"]
    clients = [r["clients"] for r in rows]
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(9, 3.7))
    ax.plot(clients, [r["tokens_per_s"] for r in rows], "o-", label="measured")
    one = rows[0]["tokens_per_s"] / rows[0]["clients"]
    ax.plot(clients, [one * c for c in clients], ":", color="grey", label="one client × clients")
    for r in rows:
        ax.annotate(f"{r['tokens_per_s'] / rows[0]['tokens_per_s']:.1f}×", (r["clients"], r["tokens_per_s"]),
                    textcoords="offset points", xytext=(-6, 6), ha="right", fontsize="small")
    ax.set(xscale="log", xlabel="concurrent clients", ylabel="aggregate tokens/s", ylim=(0, None))
    ax.set_title(f"throughput, {result['slots']} slots", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    ax_t.plot(clients, [r["ttft_p50_ms"] for r in rows], "o-", label="median (p50)")
    ax_t.plot(clients, [r["ttft_p99_ms"] for r in rows], "s--", label="99th percentile (p99)")
    ax_t.set(xscale="log", xlabel="concurrent clients", ylabel="time to first token (ms)", ylim=(0, None))
    ax_t.set_title("time to first token", fontsize="medium")
    ax_t.legend(frameon=False, fontsize="small")
    for a in (ax, ax_t):
        a.set_xticks(clients, [str(c) for c in clients])
        a.minorticks_off()
        a.set_xlim(clients[0] / 1.4, clients[-1] * 1.4)
    fig.suptitle(f"llama serve, {result['new_tokens']} new tokens per request: {machine_title(result)}",
                 fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {"serving-load.svg": load_figure}
