"""The Markdown of ``benchmarks/train.py``'s results files, from the records it stores as JSON.

One function per measurement, each taking what ``train.py`` stored (``results/train-<name>.json``,
or the lines of ``train-sweep.jsonl``) and returning the text of ``results/train-<name>.md``: the
first line says which command measured it on which machine (:mod:`report`), the tables follow.
Nothing here measures, so ``python benchmarks/train.py WHAT --render`` can rewrite a file from
what is stored.
"""

from __future__ import annotations

from report import machine_text, markdown, number, table


def _load(record: dict) -> str:
    return f"load average {record['load_start']:.2f} at the start, {record['load_end']:.2f} at the end"


def _model(record: dict) -> str:
    c, (b, t) = record["config"], record["batch"]
    return (f"{c['n_layers']} layers × {c['dim']}, a {number(c['vocab_size'])}-token vocabulary, {b} × {t} tokens "
            f"per step, {record['threads']} threads")


def _rate(r: dict) -> str:
    return f"{number(r['median_tok_s'])} ({number(r['best_tok_s'])})"


def quality(record: dict, log: list[dict]) -> str:
    """``train-quality.md``: each run's steps and bits per byte, their median, and the committed run's figures."""
    runs = record["val_bpb_runs"]
    rows = [[str(i + 1) + (", committed (its log, samples and figure)" if i == len(runs) - 1 else ""),
             number(steps), f"{bpb:.4f}"] for i, (steps, bpb) in enumerate(zip(record["steps_runs"], runs))]
    rows.append(["median (spread)", "", f"**{record['val_bpb_median']:.4f}** ({record['val_bpb_spread']:.4f})"])
    periodic = [r for r in log if not r.get("final")][-1]
    committed = [
        ["training loop, periodic evaluations included", f"{record['training_loop_s']:.1f} s"],
        ["optimizer steps", number(record["steps"])],
        ["tokens trained", number(record["train_tokens"])],
        ["validation loss", f"{record['val_loss_nats_per_token']:.3f} nats per token"],
        ["perplexity", f"{record['val_ppl']:.1f}"],
        ["validation bits per byte", f"**{record['val_bpb']:.3f}**"],
        ["validation text (the whole split, each token once)",
         f"{number(record['val_tokens'])} tokens, {number(record['val_bytes'])} bytes"],
        [f"last periodic evaluation, step {periodic['step']} (the split's first {number(periodic['val_tokens'])} "
         "tokens)", f"{periodic['val_bpb']:.3f} bits per byte"],
        ["the whole command (tokenizer, final evaluation, sample and saving included)",
         f"{record['command_wall_s']:.1f} s"],
    ]
    command = record.get("benchmark_command", f"python benchmarks/train.py quality --repeats {record['repeats']}")
    notes = [f"`{record['command']}` {record['repeats']} times, {record['threads']} threads",
             f"load average {record['load_average_1min_at_end']:.2f} at the end"]
    return markdown(command, record.get("machine"), notes, [
        table(["run", "optimizer steps", "validation bits per byte"], rows),
        table(["the committed run", ""], committed)])


def sweep(records: list[dict]) -> str:
    """``train-sweep.md``: every variant's run, in the order they were made."""
    rows = [[r["name"], "`" + " ".join(r["flags"]) + "`" if r["flags"] else "(the defaults)", number(r["steps"]),
             f"{r['val_bpb']:.3f}", number(r["loop_s"]), f"{r['load_start']:.1f} → {r['load_end']:.1f}"]
            for r in records]
    # Runs made before the machine line have none: where the table mixes machines, each names its rows.
    groups: list[list] = []
    for i, r in enumerate(records, 1):
        text = machine_text(r.get("machine"))
        if groups and groups[-1][0] == text:
            groups[-1][2] = i
        else:
            groups.append([text, i, i])
    machines = [text if len(groups) == 1 else f"rows {a}–{b}: {text}" if a < b else f"row {a}: {text}"
                for text, a, b in groups]
    threads = sorted({r["threads"] for r in records})
    per_run = "one thread per run" if threads == [1] else f"{', '.join(map(str, threads))} threads per run"
    header = ["variant", "flags besides `llama train`'s defaults", "steps", "validation bits per byte",
              "training loop, s", "load average"]
    first = "; ".join(["`python benchmarks/train.py sweep --sweep-steps STEPS --threads 1 [--only VARIANT]`, "
                       "one line of the table per run", *machines,
                       f"{per_run}, bfloat16 autocast, bits per byte of the whole validation split after the "
                       "run's steps"])
    return first + "\n\n" + table(header, rows, right=2) + "\n"


def budget(records: list[dict]) -> str:
    """``train-budget.md``: the recipe's variants, each run at the recipe's own time budget."""
    rows = [[r["name"], "`" + " ".join(r["flags"]) + "`", number(r["steps"]), f"{r['train_loss']:.3f}",
             f"{r['val_bpb']:.3f}", f"{r['load_start']:.2f} → {r['load_end']:.2f}"] for r in records]
    machines = sorted({machine_text(r.get("machine")) for r in records})
    first = "; ".join(["`python benchmarks/train.py budget`: `llama train --recipe shakespeare` with the flags of each "
                       "row, one run each, one after another", *machines,
                       f"{', '.join(sorted({str(r['threads']) for r in records}))} threads, the recipe's 120 seconds "
                       "of training loop; training loss: the mean of the last steps before the final evaluation; "
                       "bits per byte of the whole validation split"])
    header = ["variant", "flags beside `--recipe shakespeare`", "steps", "training loss, nats", "validation bits per byte",
              "load average"]
    return first + "\n\n" + table(header, rows, right=2) + "\n"


def _flops_note(record: dict) -> str:
    f = record["flops_per_token"]
    return (f"{f['total'] / 1e6:.2f} M FLOPs per token (6 × {f['weights'] / 6e6:.3f} M weights that multiply + "
            f"{f['attention'] / 1e6:.2f} M causal attention)")


def _memory_rows(record: dict, dtype: str) -> list[list[str]]:
    mem, counted = record["peak_memory"], record["memory_counted_bytes"]
    parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in counted.items())
    return [[f"peak resident memory of a training step ({dtype}), above what the process held before", f"{mem['training_mb']:.0f}"],
            ["held before building the model (Python, torch, the data)", f"{mem['rss_before_model_mb']:.0f}"],
            [f"counted by `training_memory` ({parts})", f"{sum(counted.values()) / 1e6:.1f}"]]


def throughput(record: dict) -> str:
    """``train-throughput.md``: our training step against transformers', with FLOP/s, MFU and memory."""
    peak = record["matmul_peak_flop_s"]["float32"] / 1e9
    rows = [[name, _rate(r), f"{record['engines'][name]['gflop_s']:.1f}", f"{peak:.1f}",
             f"{100 * record['engines'][name]['mfu']:.0f}%"] for name, r in record["results"].items()]
    rows.append(["ours / transformers", f"{record['ratio_ours_over_hf']:.2f}x", "", "", ""])
    notes = [_load(record), _model(record) + (", torch.compile" if record["compile"] else ""),
             f"float32; tokens/s: median (best) of {record['rounds']} rounds of {record['steps']} step(s), the two "
             "alternating", _flops_note(record)]
    return markdown(record["command"], record["machine"], notes, [
        table(["training step, float32", "tokens/s", "achieved GFLOP/s", "float32 matmul peak, GFLOP/s", "MFU"], rows),
        table(["memory", "MB"], _memory_rows(record, "float32"))])


def precision(record: dict) -> str:
    """``train-precision.md``: float32 against bfloat16 autocast, one race, with FLOP/s and MFU."""
    peaks = record["matmul_peak_flop_s"]
    rows = [[{"bfloat16": "bfloat16 autocast"}.get(name, name), _rate(r), f"{record['engines'][name]['gflop_s']:.1f}",
             f"{peaks[name] / 1e9:.1f}", f"{100 * record['engines'][name]['mfu']:.0f}%"]
            for name, r in record["results"].items()]
    rows.append(["bfloat16 autocast / float32", f"{record['ratio_bf16_over_f32']:.2f}x", "", "", ""])
    notes = [_load(record), _model(record), f"tokens/s: median (best) of {record['rounds']} rounds of "
             f"{record['steps']} step(s), the two alternating", _flops_note(record)]
    return markdown(record["command"], record["machine"], notes, [
        table(["training step", "tokens/s", "achieved GFLOP/s", "matmul peak at its dtype, GFLOP/s", "MFU"], rows),
        table(["memory", "MB"], _memory_rows(record, "bfloat16 autocast"))])


def attention(record: dict) -> str:
    """``train-attention.md``: fused attention's forward and backward in float32 and bfloat16."""
    rows, by = [], {(tuple(r["batch"]), r["dtype"]): r for r in record["rows"]}
    for (b, t), dtype in by:
        r = by[(b, t), dtype]
        rows.append([f"{b} × {t}", dtype, f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}"])
        if dtype == "bfloat16":
            f32 = by[(b, t), "float32"]
            rows.append([f"{b} × {t}", "bfloat16 / float32", f"{r['forward_ms'] / f32['forward_ms']:.2f}x",
                         f"{r['backward_ms'] / f32['backward_ms']:.2f}x"])
    c = record["config"]
    notes = [_load(record), f"`F.scaled_dot_product_attention(q, k, v, is_causal=True)` with {c['n_heads']} heads of "
             f"{c['head_dim']} (the book model's), {record['threads']} threads; milliseconds: median of "
             f"{record['rounds']} rounds, the dtypes alternating"]
    return markdown(record["command"], record["machine"], notes,
                    [table(["windows × tokens", "dtype", "forward, ms", "backward, ms"], rows)])


def allocator(record: dict) -> str:
    """``train-allocator.md``: the recipe's step with glibc's allocator as it starts and set to reuse memory."""
    base = record["rows"][0]
    rows = [[r["allocator"], number(r["faults"]), f"{r['cpu_ms']:.0f}", f"{r['wall_ms']:.0f}",
             f"{base['wall_ms'] / r['wall_ms']:.2f}x"] for r in record["rows"]]
    c, (b, t) = record["config"], record["batch"]
    notes = [_load(record), f"the recipe's step: {c['n_layers']} layers × {c['dim']}, a {number(c['vocab_size'])}-token "
             f"vocabulary, {b} × {t} tokens, bfloat16 autocast, Muon, {record['threads']} threads",
             f"per step: medians of {record['rounds']} fresh processes of each, {record['steps']} steps each "
             "after 3 untimed ones, the two alternating"]
    return markdown(record["command"], record["machine"], notes, [table(
        ["allocator", "page faults per step", "CPU ms per step (all threads)", "wall ms per step", "speed"], rows)])


PARTS = {"book": "the book's cross-entropy, AdamW and clipping (what `llama train` runs)",
         "torch": "PyTorch's `F.cross_entropy`, fused `AdamW`, `clip_grad_norm_`",
         "muon": "the book's, with Muon for the blocks' matrices"}


def parts(record: dict) -> str:
    """``train-parts.md``: the book's loss and optimizers against PyTorch's, and Muon against AdamW."""
    torch_rate = record["results"]["torch"]["median_tok_s"]
    rows = [[PARTS[name], _rate(r), f"{r['median_tok_s'] / torch_rate:.2f}x"] for name, r in record["results"].items()]
    notes = [_load(record), _model(record), f"bfloat16 autocast; tokens/s: median (best) of {record['rounds']} "
             f"rounds of {record['steps']} step(s), the three alternating"]
    return markdown(record["command"], record["machine"], notes,
                    [table(["the step", "tokens/s", "against PyTorch's"], rows)])


def matmul(rows: list[dict]) -> str:
    """``train-matmul.md``: one row per machine or setting that ran ``matmul --save``."""
    cells = []
    for r in rows:
        ratio = r["bfloat16_gflop_s"] / r["float32_gflop_s"]
        cells.append([r["label"], f"{r['float32_gflop_s']:.1f}", f"{r['bfloat16_gflop_s']:.1f}",
                      f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.0f}x slower", r["auto"]])
    lines = "; ".join(f"row {i + 1}: `{r['command']}`, {machine_text(r['machine'])}, load average {r['load_start']:.2f}"
                      for i, r in enumerate(rows))
    header = ["machine", "float32, GFLOP/s", "bfloat16, GFLOP/s", "bfloat16 against float32", "`--dtype auto`"]
    return (f"`python benchmarks/train.py matmul --save`: the best of {rows[0]['repeats']} products of two "
            f"{rows[0]['n']} × {rows[0]['n']} matrices, one row per machine or setting; {lines}\n\n"
            + table(header, cells) + "\n")


def parallel(record: dict) -> str:
    """``train-parallel.md``: DDP and FSDP on 1, 2 and 4 ranks."""
    rows = [[r["strategy"], r["ranks"], f"{r['held_mb']:.3f}", f"{r['counted_mb']:.3f}", f"{r['peak_rss_mb']:.0f}",
             f"{r['step_ms']:.0f}"] for r in record["rows"]]
    notes = [_load(record), f"global batch {record['global_batch']} × {record['block']} byte tokens, "
             f"{record['steps']} steps, gloo on {record['cores']} cores, one thread per rank where ranks outnumber them"]
    header = ["strategy", "ranks", "weights + AdamW per rank, held (MB)", "counted by llama.training.memory (MB)",
              "peak RSS per rank (MB)", "ms per step"]
    return markdown(record["command"], record["machine"], notes, [table(header, rows, right=2)])
