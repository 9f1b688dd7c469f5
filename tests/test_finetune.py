"""Fine-tuning (``llama finetune``, llama.training.finetune): the training loop on a base checkpoint, with
LoRA adapters or every weight; only adapters change, the run resumes exactly after a kill, and the
adapter it leaves is used by ``llama generate --adapter``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import HANG_SECONDS, REPO, assert_same_checkpoint, byte_level_base, random_model, whole_and_killed
from safetensors.torch import load_file

from llama import ModelConfig
from llama.cli.main import main as cli_main
from llama.formats.load import load_model, save_model
from llama.tokenizers.bpe import BPETokenizer
from llama.training.config import TrainConfig
from llama.training.lora import load_adapter, lora_state_dict
from llama.training.state import read_log

FLAGS = ["--block-size", "32", "--batch-size", "4", "--threads", "1", "--eval-tokens", "256",
         "--sample-tokens", "8", "--no-progress", "--lora-rank", "2", "--warmup-steps", "2"]


@pytest.fixture
def base(tmp_path) -> Path:
    """A small byte-level model saved as ``llama train`` leaves one: model/ with its tokenizer."""
    return byte_level_base(tmp_path / "base")


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("ROMEO. But soft, what light through yonder window breaks?\n" * 120, encoding="utf-8")
    return path


def finetune(*argv: str) -> int:
    return cli_main(["finetune", *argv])


def test_lora_run_changes_only_adapters_and_leaves_an_adapter(tmp_path, base, text, capsys):
    out = tmp_path / "run"
    assert finetune("--base", str(base), "--data", str(text), "--out", str(out), *FLAGS, "--max-steps", "6",
                    "--eval-every", "3") == 0
    assert "bits per byte" in capsys.readouterr().out
    before = load_file(base / "model.safetensors")
    model = load_model(base)
    saved = load_file(out / "checkpoints" / "step-0000006" / "model.safetensors")
    for name, tensor in model.state_dict().items():  # the base, in our names and layout
        if name in saved:
            assert saved[name].numpy().tobytes() == tensor.numpy().tobytes(), f"{name} changed"
    assert len(before) == 2 + 2 * 9 + 1  # every base tensor was compared above (tied head: none)
    adapters = {k: v for k, v in saved.items() if ".lora_" in k}
    assert len(adapters) == 2 * 7 * 2 and any(v.abs().sum() > 0 for k, v in adapters.items() if k.endswith("lora_B"))
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                                  "tokenizer.json"]
    tuned = load_adapter(load_model(base), out / "adapter")
    for k, v in lora_state_dict(tuned).items():
        assert torch.equal(v, adapters[k]), k
    log = read_log(out / "log.jsonl")
    assert [r["step"] for r in log] == [3, 6, 6] and all(math.isfinite(r["val_bpb"]) for r in log)
    assert (out / "samples.txt").is_file()
    # llama convert --merge-adapter: a plain checkpoint computing what base + adapter compute
    assert cli_main(["convert", str(base), str(tmp_path / "merged"), "--to", "hf", "--merge-adapter", str(out / "adapter")]) == 0
    merged = load_model(tmp_path / "merged")
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (merged(tokens) - tuned.eval()(tokens)).abs().max() <= 1e-5
        assert (merged(tokens) - load_model(base)(tokens)).abs().max() > 1e-4


def test_generate_uses_the_adapter(tmp_path, base, text, capsys):
    out = tmp_path / "run"
    assert finetune("--base", str(base), "--data", str(text), "--out", str(out), *FLAGS, "--max-steps", "3",
                    "--lr", "0.05") == 0
    capsys.readouterr()
    argv = ["generate", str(base), "--tokenizer", str(base / "tokenizer.json"), "--prompt", "ROMEO", "-n", "20"]
    assert cli_main(argv) == 0
    plain = capsys.readouterr().out
    assert cli_main([*argv, "--adapter", str(out / "adapter")]) == 0
    adapted = capsys.readouterr().out
    assert adapted.startswith("ROMEO") and adapted != plain


def test_rank_zero_fine_tunes_every_weight(tmp_path, base, text):
    out = tmp_path / "full"
    assert finetune("--base", str(base), "--data", str(text), "--out", str(out), *FLAGS, "--lora-rank", "0",
                    "--max-steps", "2") == 0
    assert not (out / "adapter").exists()
    tuned, before = load_file(out / "model" / "model.safetensors"), load_file(base / "model.safetensors")
    assert tuned.keys() == before.keys() and all(not torch.equal(tuned[k], before[k]) for k in before)


@pytest.mark.slow  # two fine-tuning processes
def test_exact_resume_after_sigkill(tmp_path, base, text):
    """Kill a LoRA run after step 5 (its last checkpoint: step 4); resume it; at step 8 its weights
    and optimizer state are bit-identical to an uninterrupted run's (dropout on: its random
    numbers must come back too)."""
    flags = ["--base", str(base), "--data", str(text), *FLAGS, "--max-steps", "8", "--eval-every", "4",
             "--lora-dropout", "0.1"]
    killed = whole_and_killed(tmp_path, "finetune", flags, step=5)
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    assert finetune("--base", str(base), "--out", str(killed), "--resume") == 0
    assert_same_checkpoint(tmp_path / "whole" / "checkpoints" / "step-0000008", killed / "checkpoints" / "step-0000008")
    assert [r["val_loss"] for r in read_log(killed / "log.jsonl")] == [r["val_loss"] for r in read_log(tmp_path / "whole" / "log.jsonl")]


def test_errors(tmp_path, base, text, capsys):
    def error(*argv: str) -> str:
        assert finetune(*argv) == 2
        return capsys.readouterr().err

    run = ["--data", str(text), *FLAGS, "--max-steps", "1"]
    assert "no checkpoint at" in error("--base", str(tmp_path / "nothing"), "--out", str(tmp_path / "a"), *run)
    bare = tmp_path / "bare"
    save_model(random_model(ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=256, max_seq_len=64)), bare)
    assert "--tokenizer FILE" in error("--base", str(bare), "--out", str(tmp_path / "b"), *run)
    big = tmp_path / "big.json"
    BPETokenizer.train("abababab cdcdcd " * 50, 260).save(big)
    assert "only 256" in error("--base", str(base), "--tokenizer", str(big), "--out", str(tmp_path / "c"), *run)
    assert "--lora-targets" in error("--base", str(base), "--out", str(tmp_path / "d"), *run, "--lora-targets", "q_proj")
    assert "--lora-rank must be" in error("--base", str(base), "--out", str(tmp_path / "e"), *run, "--lora-rank", "-1")
    assert finetune("--base", str(base), "--out", str(tmp_path / "f"), *run) == 0
    err = error("--base", str(base), "--out", str(tmp_path / "f"), "--resume", "--lora-rank", "4")
    assert "--lora-rank 4 (the run used 2)" in err
    with pytest.raises(ValueError, match="give its checkpoint with base$"):
        TrainConfig(out="x", max_steps=1, lora_rank=4)


def test_fine_tuning_keeps_the_base_s_context(tmp_path, base, text, capsys):
    """The base knows 64 positions: fine-tuning defaults to windows of 64 and keeps that context;
    longer windows are refused by name, not trained on positions the base never saw."""
    import json

    flags = ["--data", str(text), "--batch-size", "2", "--threads", "1", "--eval-tokens", "128",
             "--sample-tokens", "0", "--no-progress", "--max-steps", "1"]
    assert finetune("--base", str(base), "--out", str(tmp_path / "full"), "--lora-rank", "0", *flags) == 0
    assert json.loads((tmp_path / "full" / "run.json").read_text())["block_size"] == 64
    assert json.loads((tmp_path / "full" / "model" / "config.json").read_text())["max_position_embeddings"] == 64
    capsys.readouterr()
    assert finetune("--base", str(base), "--out", str(tmp_path / "long"), "--block-size", "128", *flags) == 2
    assert capsys.readouterr().err == (
        f"llama finetune: error: --block-size 128 is longer than the 64-token context of the base {base}, which never "
        "saw later positions: fine-tune with --block-size 64 or less (or lengthen the context knowingly with "
        "--max-seq-len)\n")
    assert not (tmp_path / "long").exists()
    # What the message offers works: the context lengthened knowingly.
    assert finetune("--base", str(base), "--out", str(tmp_path / "long"), "--block-size", "128", "--max-seq-len", "128",
                    "--lora-rank", "0", *flags) == 0
    assert json.loads((tmp_path / "long" / "model" / "config.json").read_text())["max_position_embeddings"] == 128


def chapter_commands() -> list[list[str]]:
    """The worked example's console block, one argv per command."""
    import re
    import shlex

    chapter = (REPO / "book" / "finetuning.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"<!-- tested-by: tests/test_finetune.py -->\n```console\n(.*?)```", chapter, re.S)
    return [shlex.split(line[2:]) for line in block.splitlines()]


def test_chapter_shows_the_benchmark_s_commands():
    """The worked example's commands are the ones benchmarks/finetune.py runs, and they parse."""
    import importlib.util

    from llama.cli.main import build_parser

    spec = importlib.util.spec_from_file_location("_bench_finetune", REPO / "benchmarks" / "finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data, train, finetune_, generate = chapter_commands()
    assert data == ["python", "benchmarks/finetune.py", "--data-only"]
    assert train == ["llama", "train", *bench.PRETRAIN_ARGS]
    flags = dict(bench.RUNS)["LoRA r=4"]
    assert finetune_ == ["llama", "finetune", *bench.FINETUNE_ARGS, "--out", "runs/finetune/LoRA-r4", *flags]
    for argv in (train, finetune_, generate):
        build_parser().parse_args(argv[1:])
    assert generate[generate.index("--adapter") + 1] == "runs/finetune/LoRA-r4/adapter"


def test_the_chapter_s_first_command_makes_the_files_the_others_read(tmp_path, shared_file):
    """Run as printed, from a checkout's root, the data command writes the two texts the chapter's
    `llama train` and `llama finetune` read: the lovers' speeches (as the chapter counts them) and the rest."""
    import os

    data, train, finetune_, _ = chapter_commands()
    (tmp_path / "benchmarks").symlink_to(REPO / "benchmarks")  # tmp_path stands for the repository root
    env = {**os.environ, "LLAMA_DATA_DIR": str(shared_file("tinyshakespeare.txt").parent)}
    done = subprocess.run([sys.executable, *data[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr
    rest, lovers = (tmp_path / train[train.index("--data") + 1]), (tmp_path / finetune_[finetune_.index("--data") + 1])
    assert done.stdout == f"wrote runs/finetune/lovers.txt (49,563 bytes)\nwrote runs/finetune/rest.txt ({rest.stat().st_size:,} bytes)\n"
    speeches = lovers.read_text(encoding="utf-8").rstrip("\n").split("\n\n")
    assert len(speeches) == 288 and {s.split("\n", 1)[0] for s in speeches} == {"ROMEO:", "JULIET:"}
    assert not {s.split("\n", 1)[0] for s in rest.read_text(encoding="utf-8").split("\n\n")} & {"ROMEO:", "JULIET:"}


def test_memory_check_counts_gradients_and_moments_of_adapters_only():
    from llama.model.transformer import count_parameters
    from llama.training.config import memory_needed
    from llama.training.lora import LoRAConfig, count_lora_parameters

    config = ModelConfig.from_preset("llama2-7b")
    full = TrainConfig(out="x", max_steps=1, base="somewhere")
    lora = TrainConfig(out="x", max_steps=1, base="somewhere", lora_rank=8)
    n, adapters = count_parameters(config), count_lora_parameters(config, LoRAConfig(rank=8))
    assert memory_needed(full, config)["weights"] == 16 * n
    assert memory_needed(lora, config)["weights"] == 4 * n + 16 * adapters  # 27 GB, not 108 GB


def test_a_run_saved_before_fine_tuning_existed_still_resumes(tmp_path, text):
    """run.json files written before the fine-tuning settings existed lack them; --resume takes the defaults."""
    import json

    flags = ["--data", str(text), "--model", "tiny", "--tokenizer", "bytes", "--block-size", "32", "--batch-size", "2",
             "--threads", "1", "--eval-tokens", "64", "--sample-tokens", "0", "--no-progress"]
    out = tmp_path / "old"
    assert cli_main(["train", "--out", str(out), *flags, "--max-steps", "2", "--eval-every", "1"]) == 0
    run = json.loads((out / "run.json").read_text())
    for key in ("base", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets"):
        del run[key]
    (out / "run.json").write_text(json.dumps(run))
    assert cli_main(["train", "--out", str(out), "--resume", "--max-steps", "3"]) == 0
    assert read_log(out / "log.jsonl")[-1]["step"] == 3
