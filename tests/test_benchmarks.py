"""The benchmarks' own machinery (not their speeds: those are measured, never tested): the machine
line every benchmark prints, and the llama.cpp peer's files, written by our ``llama convert``."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from helpers import REPO, load_module

from llama import ModelConfig
from llama.formats.gguf import read_gguf
from llama.quantization.weights import quantize


def _bench(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))  # decode.py imports machine.py as its neighbour
    return load_module(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")


def test_machine_line_names_cpu_capability_threads_and_torch():
    line = _bench("machine").machine_line()
    assert line.startswith("machine: ")
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()} " in line
    assert f"{torch.get_num_threads()} threads of " in line
    assert f"torch {torch.__version__}" in line


def test_every_benchmark_prints_the_machine_line():
    scripts = [p for p in sorted((REPO / "benchmarks").glob("*.py")) if "__main__" in p.read_text() and p.name != "machine.py"]
    assert len(scripts) >= 6, "the benchmark scripts are those with a __main__ block"
    for path in scripts:
        assert "machine_line(" in path.read_text(), f"{path.name} does not print the machine it ran on"


def test_no_benchmark_or_test_builds_another_projects_source():
    """llama.cpp comes from the package index; nothing here locates, copies or compiles run.c."""
    for folder in ("benchmarks", "tests", "llama"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "test_benchmarks.py":
                continue
            text = path.read_text()
            assert not re.search(r"llama2c/|tokenizer\.bin|\"gcc\"|'gcc'", text), path


@pytest.mark.slow
def test_the_llama_cpp_files_hold_the_benchmarked_weights(tmp_path, shared_file):
    """The GGUF files the llama.cpp columns run are the very weights our engines decode: F32 equal,
    Q8_0 and Q4_0 the integers and scales of our int8/int4 in groups of 32."""
    shared_file("llama2-tokenizer.model")  # llama.cpp needs a vocabulary in the file
    decode = _bench("decode")
    config = ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=32000, hidden_dim=64,
                         max_seq_len=32, tie_embeddings=True)
    model = decode.scaled_random_model(config)
    paths = decode.write_gguf_files(model, tmp_path, ["F32", "Q8_0", "Q4_0"])
    _, f32 = read_gguf(paths["F32"])
    assert set(f32) == set(model.state_dict()) - {"output.weight"}  # tied: the head is the embedding
    for name, tensor in f32.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    for fmt, bits in (("Q8_0", 8), ("Q4_0", 4)):
        ours = quantize(decode.scaled_random_model(config), bits, 32)
        _, theirs = read_gguf(paths[fmt])
        assert set(theirs) == set(ours.state_dict()), fmt
        for name, tensor in ours.state_dict().items():
            assert torch.equal(theirs[name], tensor), (fmt, name)
    prompt = decode.prompt_ids(32000)
    assert len(prompt) == decode.PROMPT_LEN and prompt[0] == 1


def test_the_decode_table_marks_a_missing_peer_as_skipped_and_a_disagreement_with_its_tie():
    decode = _bench("decode")
    result = {"config": "x", "tok_s": {k: [10.0, 12.0] for k in ("eager", "compiled", "exported", "int8", "transformers")},
              "agreement": {"eager": None, "transformers": {"position": 84, "gap": 0.002, "std": 0.5}},
              "compile_s": 1.0, "export_s": 20.0, "export_cached": False, "weight_bytes_per_token": 10**6}
    result["median"] = {k: 11.0 for k in result["tok_s"]}
    result["median"]["exported"] = 16.5
    header, _, row = decode.table([result], bandwidth=1e9)
    cells = dict(zip(header.split(" | "), row.split(" | ")))
    assert cells["llama.cpp F32 tok/s"] == "skipped" and cells["compiled tok/s"] == "11 (12)"
    assert cells["exported / compiled"] == "1.50x" and cells["exported / bound"] == "2%"
    assert cells["exported / llama.cpp F32"] == "-" and cells["bound tok/s"] == "1000"
    assert cells["exported decoder built in s |"] == "20.0 |"
    assert cells["same ids as compiled"] == "transformers 84/128, gap 0.40% of σ"
    assert cells["Q8_0 ids = int8's"] == "-"


def test_a_disagreement_is_located_and_measured_on_our_logits():
    decode = _bench("decode")
    model = decode.scaled_random_model(ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=50, max_seq_len=16))
    ours = decode.generate(model, [1, 2], 6)
    assert decode.divergence(model, [1, 2], ours, list(ours)) is None
    other = ours[:3] + [(ours[3] + 1) % 50] + ours[4:]
    d = decode.divergence(model, [1, 2], ours, other)
    logits = model(torch.tensor([[1, 2] + ours[:3]]))[0, -1]
    assert d["position"] == 3 and d["gap"] == pytest.approx(float(logits[ours[3]] - logits[other[3]]))
    assert d["gap"] > 0 and d["std"] == pytest.approx(float(logits.std()), rel=1e-5)


def test_a_page_shows_a_results_file_in_place_of_its_marker(tmp_path):
    hook = _bench_hook()
    text = "before\n<!-- results: benchmarks/results/decode.md -->\nafter\n"
    shown = hook.render_results(text, "generation.md")
    assert shown.startswith("before\n`python benchmarks/decode.py") and shown.endswith("\nafter\n")
    assert "| config | eager tok/s |" in shown and "machine: " in shown
    with pytest.raises(hook.PluginError, match="generation.md: benchmarks/results/nothing.md not found: run the "
                                           "benchmark that writes it with --save"):
        hook.render_results("<!-- results: benchmarks/results/nothing.md -->", "generation.md")


def test_every_results_marker_of_the_book_names_a_committed_file():
    hook = _bench_hook()
    found = quoted = 0
    for page in (REPO / "book").glob("*.md"):
        for match in hook.RESULTS.finditer(page.read_text()):
            found += 1
            assert (REPO / match["path"]).is_file(), f"{page.name}: {match['path']}"
        for match in hook.RESULT.finditer(page.read_text()):
            quoted += 1
            format(hook.lookup(match["path"], match["key"], page.name), match["format"])
    assert found and quoted, "no page shows a benchmark's results file, or quotes one"


def test_a_page_quotes_one_figure_of_a_results_json(tmp_path, monkeypatch):
    hook = _bench_hook()
    monkeypatch.setattr(hook, "ROOT", tmp_path)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "q.json").write_text('{"median": 2.17131, "runs": [577, 598, 450], "n": 43620}')
    (results / "s.jsonl").write_text('{"name": "muon, lr 8e-3", "steps": 300, "bpb": 2.4171}\n'
                                     '{"name": "muon, lr 8e-3", "steps": 700, "bpb": 2.1889}\n')
    text = ("median <!-- result: benchmarks/results/q.json median .3f --> bits, steps "
            "<!-- result: benchmarks/results/q.json runs/-1 d -->, <!-- result: benchmarks/results/q.json n , --> tokens; "
            "<!-- result: benchmarks/results/s.jsonl name=muon, lr 8e-3&steps=700/bpb .3f -->×")
    assert hook.render_results(text, "t.md") == "median 2.171 bits, steps 450, 43,620 tokens; 2.189×"
    for marker, error in [
        ("s.jsonl name=muon, lr 8e-3/bpb .3f", "t.md: benchmarks/results/s.jsonl: 2 objects have name=muon, lr 8e-3"),
        ("q.json runs/3 d", "t.md: benchmarks/results/q.json has no '3' \\(in runs/3\\)"),
        ("q.json mean .3f", "t.md: benchmarks/results/q.json has no 'mean'"),
        ("q.json runs .3f", "t.md: benchmarks/results/q.json runs: format '.3f' does not apply"),
        ("x.json a .3f", "t.md: benchmarks/results/x.json not found"),
    ]:
        with pytest.raises(hook.PluginError, match=error):
            hook.render_results(f"<!-- result: benchmarks/results/{marker} -->", "t.md")


def test_the_committed_results_files_are_what_their_json_renders():
    """A results .md is written from its JSON, never edited: each is what --render would write."""
    train, finetune = _bench("train"), _bench("finetune")
    results = REPO / "benchmarks" / "results"
    checked = []
    for path in sorted(results.glob("train-*.md")):
        checked.append(path.name)
        assert path.read_text() == train.rendered(path.stem.removeprefix("train-")), path.name
    assert (results / "finetune.md").read_text() == finetune.results_markdown(json.loads((results / "finetune.json").read_text()))
    if (results / "quantize-quality.json").is_file():
        quantize = _bench("quantize")
        assert (results / "quantize-quality.md").read_text() == quantize.quality_markdown(
            json.loads((results / "quantize-quality.json").read_text()))
    pipeline = _bench("pipeline")
    assert (results / "pipeline.md").read_text() == pipeline.results_markdown(json.loads((results / "pipeline.json").read_text()))
    assert {"train-quality.md", "train-sweep.md"} <= set(checked)


def _race(names, extra=None):
    return {"command": "python benchmarks/train.py x --save", "machine": _bench("machine").machine(), "load_start": 0.4,
            "load_end": 1.9, "config": {"n_layers": 4, "dim": 128, "vocab_size": 1024}, "batch": [8, 256], "threads": 2,
            "rounds": 10, "steps": 1, "results": {n: {"median_tok_s": 16599.4 - 100 * i, "best_tok_s": 16708.0}
                                                   for i, n in enumerate(names)}, **(extra or {})}


def test_the_training_benchmarks_write_their_tables_from_their_records():
    """The records `train.py WHAT --save` stores become tables: the cells a chapter reads, with the
    command and the machine line first (no measurement here: the records are made up)."""
    report = _bench("train_report")
    flops = {"flops_per_token": {"total": 6392832, "weights": 5603328, "attention": 789504},
             "matmul_peak_flop_s": {"float32": 365.2e9, "bfloat16": 820.0e9},
             "memory_counted_bytes": {"weights": 4.3e6, "logits": 16.8e6},
             "peak_memory": {"training_mb": 254.2, "rss_before_model_mb": 400.0}}
    names = ["llama (ours)", "transformers LlamaForCausalLM"]
    text = report.throughput(_race(names, {**flops, "compile": False, "ratio_ours_over_hf": 1.0061,
                                           "engines": {n: {"gflop_s": 106.12, "mfu": 0.2906} for n in names}}))
    assert text.startswith("`python benchmarks/train.py x --save`; machine: ")
    assert "| llama (ours) | 16,599 (16,708) | 106.1 | 365.2 | 29% |" in text and "| ours / transformers | 1.01x |" in text
    assert "6.39 M FLOPs per token" in text and "| peak resident memory of a training step (float32)" in text
    text = report.precision(_race(["float32", "bfloat16"], {**flops, "ratio_bf16_over_f32": 1.2644, "engines": {
        n: {"gflop_s": 95.6, "mfu": 0.26} for n in ("float32", "bfloat16")}}))
    assert "| bfloat16 autocast | 16,499 (16,708) | 95.6 | 820.0 | 26% |" in text and "| 1.26x |" in text
    text = report.parts(_race(["book", "torch", "muon"]))
    assert "| the book's, with Muon for the blocks' matrices | 16,399 (16,708) | 0.99x |" in text
    row = {"label": "AMD EPYC, capability AVX512, 1 thread(s)", "n": 1024, "repeats": 5, "float32_gflop_s": 96.2,
           "bfloat16_gflop_s": 0.96, "auto": "float32", "command": "python benchmarks/train.py matmul --save",
           "machine": None, "load_start": 2.4}
    assert "| AMD EPYC, capability AVX512, 1 thread(s) | 96.2 | 1.0 | 100x slower | float32 |" in report.matmul([row])
    text = report.parallel({**_race([]), "global_batch": 8, "block": 128, "cores": 2, "steps": 20, "rows": [
        {"strategy": "fsdp", "ranks": 2, "held_mb": 5.2171, "counted_mb": 5.2171, "peak_rss_mb": 382.4, "step_ms": 128.3}]})
    assert "| fsdp | 2 | 5.217 | 5.217 | 382 | 128 |" in text


def test_render_without_a_stored_run_says_which_command_writes_it(tmp_path, monkeypatch):
    train = _bench("train")
    monkeypatch.setattr(train.report, "RESULTS", tmp_path)
    with pytest.raises(SystemExit, match="benchmarks/results/train-parts.json not found: run `python benchmarks/train.py "
                                         "parts --save` first"):
        train.main(["parts", "--render"])
    with pytest.raises(SystemExit):
        train.main(["throughput", "--quick", "--save"])


def _bench_hook():
    return load_module("_results_hook", REPO / "hooks" / "results.py")


@pytest.mark.slow  # a server process and a few requests
def test_the_serve_benchmark_runs_quick():
    """benchmarks/serve.py --quick starts `llama serve` on 127.0.0.1, loads it at each level, and stops it itself."""
    import subprocess

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve.py"), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("machine: ")
    assert "| 1 | 2 | 16 |" in done.stdout and "| 4 | 4 | 32 |" in done.stdout


def _pipeline_runs(accuracies: dict[str, list[float]], walls: dict[str, float]) -> list[dict]:
    """Made-up records of benchmarks/pipeline.py, one per seed: accuracy by stage (sampled pass@1 ten
    points below it, pass@8 halfway from it to 1, replies showing work at the accuracy), the same walls;
    RL from the SFT model as RL, unless given."""
    accuracies = {"rl_from_sft": accuracies["rl"], **accuracies}
    walls = {"rl_from_sft": walls["rl"], **walls}
    return [{"seed": i, "held_out": 200, "samples": 8, "wall_s": dict(walls),
             "scores": {stage: {"accuracy": acc[i], "chat_format_rate": None if stage == "base" else 1.0,
                                "pass_at_1": acc[i] - 0.1, "pass_at_k": (acc[i] + 1) / 2, "work_rate": acc[i]}
                        for stage, acc in accuracies.items()},
             "reward_curve": [0.2, 0.4], "reward_curve_from_sft": [0.3, 0.5]} for i in range(3)]


def test_the_pipeline_checks_its_targets_on_the_medians():
    """RL's target is 15 points or half of SFT's error rate, whichever is smaller, on the median
    of the seeds; the commands it runs are the CLI's (they parse)."""
    from llama.cli.main import build_parser

    pipeline = _bench("pipeline")
    walls = {"base": 250.0, "sft": 60.0, "dpo": 90.0, "rl": 280.0}
    runs = _pipeline_runs({"base": [0.1, 0.2, 0.3], "sft": [0.5, 0.6, 0.9], "dpo": [0.6, 0.6, 0.6],
                           "rl": [0.7, 0.79, 0.99], "rl_from_sft": [0.6, 0.7, 0.8]}, {**walls, "rl_from_sft": 299.0})
    s = pipeline.summary(runs)
    assert s["rl_gain_wanted"] == pytest.approx(0.15) and s["rl_gain"] == pytest.approx(0.19)  # medians 0.6 -> 0.79
    assert s["rl_from_sft_gain"] == pytest.approx(0.1) and s["rl_over_dpo"] == pytest.approx(0.19)
    assert s["total_wall_s"] == 680.0  # the four stages of the pipeline, not RL from the SFT model beside them
    assert s["met"] == {"total": True, "each_stage": True, "chat_format": True, "rl_gain": True}
    assert s["rl_sampled_gain"] == pytest.approx(0.19)  # sampled pass@1's medians, 0.5 -> 0.69
    runs = _pipeline_runs({"base": [0.5] * 3, "sft": [0.9] * 3, "dpo": [0.9] * 3, "rl": [0.94] * 3}, {**walls, "rl": 301.0})
    s = pipeline.summary(runs)
    assert s["rl_gain_wanted"] == pytest.approx(0.05) and not s["met"]["rl_gain"] and not s["met"]["each_stage"]
    text = "\n".join(pipeline.table({"runs": runs, "summary": s}))
    assert ("| after `llama rl` | 301 | 94.0% of 200 | 94.0%, 94.0%, 94.0% | 100.0% | 94.0% | 84.0% | 84.0%, 84.0%, 84.0% "
            "| 97.0% |") in text
    assert "| RL over SFT: +15 points, or half the error rate if smaller (+5.0) | +4.0 points | **no** |" in text
    for argv in pipeline.commands(REPO / "runs" / "pipeline" / "seed-0", 0, quick=False).values():
        build_parser().parse_args(argv)


@pytest.mark.slow  # four llama commands on the tiny model, each scored
def test_the_pipeline_runs_quick_beside_a_measured_run():
    """benchmarks/pipeline.py --quick, as the RL chapter offers it, runs every stage and prints its
    table, in runs/pipeline/seed-0-quick: the measured run's seed-0 folder is not its to delete."""
    import subprocess

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--quick", "--seeds", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "--out runs/pipeline/seed-0-quick/rl " in done.stdout and "runs/pipeline/seed-0/" not in done.stdout
    assert "| after `llama rl` |" in done.stdout and "| RL over SFT in sampled pass@1 (measured, no target) |" in done.stdout


def test_the_pipeline_figure_draws_accuracy_by_stage_and_the_reward_curve():
    """figures/rl.py's pipeline figure, from made-up records: four bars, the sampled pass@1 of each
    stage, and a reward line per seed."""
    figure = load_module("_figures_rl", REPO / "figures" / "rl.py")
    runs = _pipeline_runs({"base": [0.1, 0.2, 0.3], "sft": [0.5, 0.6, 0.9], "dpo": [0.6] * 3, "rl": [0.7, 0.8, 0.9],
                           "rl_from_sft": [0.4, 0.5, 0.6]}, {"base": 1.0, "sft": 1.0, "dpo": 1.0, "rl": 1.0})
    fig = figure.pipeline_figure({"task": "addition(digits=2)", "runs": runs})
    bars, curves = fig.axes
    assert [round(b.get_height(), 6) for b in bars.patches] == [20.0, 60.0, 60.0, 80.0, 50.0]
    assert [round(v, 6) for v in bars.lines[-2].get_ydata()] == [10.0, 50.0, 50.0, 70.0, 40.0]  # sampled pass@1's medians
    assert [round(v, 6) for v in bars.lines[-1].get_ydata()] == [20.0, 60.0, 60.0, 80.0, 50.0]  # replies showing work
    assert len(curves.lines) == 6 and [list(line.get_ydata()) for line in curves.lines[:2]] == [[0.2, 0.4], [0.3, 0.5]]
