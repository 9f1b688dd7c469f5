"""llama2.c's legacy ``.bin`` format: a 7-number header, then float32 tensors in ``run.c``'s order.

Reading it is how the book loads the pretrained ``stories260K``; writing it lets llama2.c's
``run.c`` and its many ports run the book's own models (the tests check a written file with a
NumPy transcription of run.c's forward pass that reads the file on its own).
The format stores ``wq``/``wk`` in Meta's interleaved RoPE layout, the layout our model runs, so
no permutation is needed either way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from llama._files import atomic_write
from llama.formats.convert import expected_shapes
from llama.model.config import ModelConfig

__all__ = ["LLAMA2C_HEADER", "llama2c_layout", "read_llama2c", "save_llama2c"]

StateDict = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------ llama2.c
#: The seven int32 numbers at the start of a legacy llama2.c ``.bin``, in file order.
LLAMA2C_HEADER = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


# --8<-- [start:read_llama2c]
def llama2c_layout(config: ModelConfig) -> list[tuple[str, tuple[int, ...], int]]:
    """The float32 blocks of a legacy llama2.c file after its header: ``(name, shape, copies)`` in file order.

    >>> [name for name, _, _ in llama2c_layout(ModelConfig.from_preset("stories260K"))][:4]
    ['tok_embeddings', 'attention_norm', 'wq', 'wk']
    """
    dim, hidden, n_layers, vocab = config.dim, config.hidden_dim, config.n_layers, config.vocab_size
    kv_dim, half = config.n_kv_heads * config.head_dim, config.head_dim // 2
    layout = [("tok_embeddings", (vocab, dim), 1), ("attention_norm", (dim,), n_layers),
              ("wq", (dim, dim), n_layers), ("wk", (kv_dim, dim), n_layers), ("wv", (kv_dim, dim), n_layers),
              ("wo", (dim, dim), n_layers), ("ffn_norm", (dim,), n_layers), ("w1", (hidden, dim), n_layers),
              ("w2", (dim, hidden), n_layers), ("w3", (hidden, dim), n_layers), ("norm", (dim,), 1),
              ("rope_real", (config.max_seq_len, half), 1), ("rope_imag", (config.max_seq_len, half), 1)]
    if not config.tie_embeddings:
        layout.append(("output", (vocab, dim), 1))
    return layout


def read_llama2c(path: str | os.PathLike) -> tuple[ModelConfig, StateDict]:
    """Read karpathy's llama2.c legacy ``.bin`` (the layout ``run.c`` memory-maps).

    After the header (:data:`LLAMA2C_HEADER`, int32) come float32 tensors, each layer's copies
    stacked together: embedding, all attention norms, all ``wq``, all ``wk``, all ``wv``, all
    ``wo``, all ffn norms, all ``w1``, ``w2``, ``w3``, the final norm, two RoPE tables
    (``seq_len x head_dim/2`` each, skipped: we recompute them), and, only when ``vocab_size``
    in the header is negative, a separate output head. Matrices are stored like PyTorch's
    ``nn.Linear.weight``, ``[out, in]``, with interleaved RoPE rows: our layout exactly.

    Raises:
        ValueError: a newer llama2.c version, a bad header, or a file size that disagrees with
            the header (a truncated download).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no llama2.c checkpoint at {path}")
    size = path.stat().st_size
    if size < 28:
        raise ValueError(f"{path} has {size} bytes, less than the 28-byte llama2.c header: truncated")
    header = np.fromfile(path, dtype="<i4", count=7)
    if int(header[0]) == 0x616B3432:  # "ak42": the versioned exports of llama2.c's export.py
        raise ValueError(
            f"{path} is a llama2.c export version {int(header[1])}; only the legacy layout is read "
            "(export it with --version 0)"
        )
    fields = dict(zip(LLAMA2C_HEADER, (int(x) for x in header)))
    shared = fields["vocab_size"] > 0  # negative vocab size = the file carries its own output head
    dim, hidden, n_layers, vocab = fields["dim"], fields["hidden_dim"], fields["n_layers"], abs(fields["vocab_size"])
    try:  # ModelConfig rejects impossible headers, such as the first bytes of a text file
        config = ModelConfig(dim=dim, n_layers=n_layers, n_heads=fields["n_heads"], n_kv_heads=fields["n_kv_heads"],
                             vocab_size=vocab, hidden_dim=hidden, max_seq_len=fields["seq_len"],
                             tie_embeddings=shared)
    except ValueError as err:
        raise ValueError(f"{path} is not a llama2.c checkpoint: its header {fields} describes no model ({err})") from None
    layout = llama2c_layout(config)
    n_floats = sum(copies * int(np.prod(shape)) for _, shape, copies in layout)
    if size != 28 + 4 * n_floats:
        problem = "truncated" if size < 28 + 4 * n_floats else "longer than its header implies"
        raise ValueError(
            f"{path} has {size} bytes but its header {fields} implies {28 + 4 * n_floats}: the file is {problem}"
        )
    data = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=28))
    raw, offset = {}, 0
    for name, shape, copies in layout:
        count = copies * int(np.prod(shape))
        raw[name] = data[offset: offset + count].view(copies, *shape)
        offset += count
    _check_rope_tables(raw, config, fields, path)
    where = {"attention_norm": "attention_norm", "ffn_norm": "ffn_norm", "wq": "attention.wq", "wk": "attention.wk",
             "wv": "attention.wv", "wo": "attention.wo", "w1": "feed_forward.w1", "w2": "feed_forward.w2",
             "w3": "feed_forward.w3"}
    sd = {"tok_embeddings.weight": raw["tok_embeddings"][0], "norm.weight": raw["norm"][0]}
    for i in range(n_layers):
        for name, ours in where.items():
            sd[f"layers.{i}.{ours}.weight"] = raw[name][i]
    sd["output.weight"] = sd["tok_embeddings.weight"] if shared else raw["output"][0]
    return config, sd
# --8<-- [end:read_llama2c]


def _check_rope_tables(raw: StateDict, config: ModelConfig, fields: dict, path: Path) -> None:
    """Compare the RoPE tables stored in the file with the ones its header implies.

    A header changed so that the file size still matches (fewer heads and a shorter context,
    say) loads and generates other tokens. The tables, written by llama2.c's exporter from the
    true head width and context, sit after every weight: a header that lies about any size
    either moves them or changes their values, so they give it away.
    """
    half = config.head_dim // 2
    freqs = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) * 2 / config.head_dim))
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64), freqs)
    for name, table in (("rope_real", angles.cos()), ("rope_imag", angles.sin())):
        stored = raw[name][0].double()
        if not torch.allclose(stored, table, atol=1e-3, rtol=0):  # llama2.c computed them in float32
            raise ValueError(f"{path}: its header {fields} disagrees with the RoPE tables stored in the file "
                             "(they were written for other sizes): the header was changed, or the file is not "
                             "a llama2.c export")



# ------------------------------------------------------------------------------ save llama2.c
#: What ``run.c`` hard-codes instead of reading from the file; a config must match to be written.
_LLAMA2C_FIXED = {"rope_theta": 10000.0, "norm_eps": 1e-5, "rope_scaling": None}


# --8<-- [start:save_llama2c]
def save_llama2c(state_dict: StateDict, config: ModelConfig, path: str | os.PathLike) -> None:
    """Write weights as a legacy llama2.c ``.bin``, the file ``run.c`` runs and :func:`read_llama2c` reads.

    The inverse of :func:`read_llama2c`: the :data:`LLAMA2C_HEADER` as int32 (``vocab_size``
    negative when the output head is not shared with the embedding), then every tensor as
    float32 in :func:`llama2c_layout`'s order. Our ``wq``/``wk`` rows are already in the
    interleaved RoPE order run.c rotates, so the matrices are written as they are. The two RoPE
    tables (``cos`` and ``sin``, ``max_seq_len x head_dim/2``) that run.c skips are written
    with the values llama2.c's exporter put there, so the file is the one llama2.c would make.
    The file is written atomically.

    Args:
        state_dict: our tensor names, e.g. ``model.state_dict()``; with ``config.tie_embeddings``
            ``output.weight`` may be absent, or present and equal to the embedding.
        config: the model's config. run.c reads only the header, so everything else it must
            assume: RoPE base 10,000 without scaling and RMSNorm epsilon 1e-5.
        path: the ``.bin`` file to write.

    Raises:
        ValueError: a config the format cannot describe, or a state dict that does not match it.
    """
    for field, value in _LLAMA2C_FIXED.items():
        if getattr(config, field) != value:
            raise ValueError(
                f"llama2.c's format cannot hold {field}={getattr(config, field)!r}: run.c assumes {value!r} "
                "and the file has no field for it"
            )
    kv_dim = config.n_kv_heads * config.head_dim
    # run.c indexes the embedding and its KV cache with 32-bit ints.
    if max(config.vocab_size * config.dim, config.n_layers * config.max_seq_len * kv_dim) >= 2**31:
        raise ValueError(
            "llama2.c's run.c indexes with 32-bit ints: vocab_size * dim and n_layers * max_seq_len * kv_dim "
            "must stay below 2**31 (lower max_seq_len)"
        )
    names = set(expected_shapes(config))
    if config.tie_embeddings:
        names.discard("output.weight")
        head = state_dict.get("output.weight")
        if head is not None and not torch.equal(head, state_dict.get("tok_embeddings.weight", head)):
            raise ValueError(
                "config.tie_embeddings is True but output.weight differs from tok_embeddings.weight: "
                "llama2.c's format stores a shared head only once; untie the config to write both"
            )
    missing, unexpected = sorted(names - set(state_dict)), sorted(set(state_dict) - names - {"output.weight"})
    if missing or unexpected:
        raise ValueError(f"state dict does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, shape in expected_shapes(config).items():  # in model order, so the first wrong one is named
        if name in names and tuple(state_dict[name].shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(state_dict[name].shape)} but the config implies {shape}")

    # llama2.c's exporter: cos and sin of pos * 10000^(-2i/head_dim), one row per position.
    half = config.head_dim // 2
    freqs = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) * 2 / config.head_dim))
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64), freqs)
    rope = {"rope_real": angles.cos(), "rope_imag": angles.sin()}
    ours = {"tok_embeddings": "tok_embeddings", "norm": "norm", "output": "output",
            "attention_norm": "attention_norm", "ffn_norm": "ffn_norm", "wq": "attention.wq",
            "wk": "attention.wk", "wv": "attention.wv", "wo": "attention.wo", "w1": "feed_forward.w1",
            "w2": "feed_forward.w2", "w3": "feed_forward.w3"}

    def blocks():
        for name, _, _copies in llama2c_layout(config):
            if name in rope:
                yield rope[name]
            elif name in ("tok_embeddings", "norm", "output"):  # not copies == 1: a one-layer model has one of each
                yield state_dict[f"{ours[name]}.weight"]
            else:
                yield from (state_dict[f"layers.{i}.{ours[name]}.weight"] for i in range(config.n_layers))

    header = {**{field: getattr(config, field) for field in LLAMA2C_HEADER[:-1]}, "seq_len": config.max_seq_len}
    header["vocab_size"] *= 1 if config.tie_embeddings else -1  # negative: a separate head follows

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(np.asarray([header[field] for field in LLAMA2C_HEADER], dtype="<i4").tobytes())
            for tensor in blocks():  # one tensor at a time: a large model is never copied whole
                f.write(tensor.detach().to("cpu", torch.float32).numpy().astype("<f4", copy=False).tobytes())

    atomic_write(path, write)
# --8<-- [end:save_llama2c]
