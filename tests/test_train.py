"""Training: schedule, optimizer groups, bits per byte, checkpoints, exact resume, CLI errors
(llama.training.loop, llama.training.config, llama.training.state and ``llama train``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import HANG_SECONDS, REPO, TINY_RUN, assert_same_checkpoint, make_text, whole_and_killed
from safetensors.torch import load_file

from llama.cli.main import build_parser
from llama.cli.main import main as cli_main
from llama.cli.train import train_config_from_args
from llama.formats.load import load_model
from llama.model.transformer import Transformer
from llama.tokenizers.bpe import BPETokenizer
from llama.training.config import TrainConfig, model_config
from llama.training.loop import evaluate, train
from llama.training.optim import lr_at, make_optimizer
from llama.training.state import read_log

TINY = [*TINY_RUN, "--batch-size", "4", "--no-progress"]


@pytest.fixture
def text(tmp_path):
    return make_text(tmp_path / "text.txt")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``llama train ARGS`` in a subprocess (the console script's module, run from this checkout)."""
    cmd = [sys.executable, "-m", "llama.cli.main", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=HANG_SECONDS)


# -------------------------------------------------------------------------------------- the math
def test_lr_schedule_shape():
    peak, warm, steps, r = 1e-3, 10, 100, 0.1
    lrs = [lr_at(s, s / steps, peak, warm, r) for s in range(steps + 1)]
    assert lrs[:10] == pytest.approx([peak * (s + 1) / 10 * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * s / 100)))
                                      for s in range(10)])
    assert 0.97 * peak < max(lrs) <= peak  # the cosine factor has started to decay during warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # never rises after warm-up
    assert lrs[-1] == pytest.approx(peak * r)
    assert lr_at(500, 5.0, peak, warm, r) == pytest.approx(peak * r)  # progress is clamped at the end


def test_weight_decay_skips_norm_gains_and_covers_every_parameter_once():
    model = Transformer(model_config(TrainConfig(out="x", model="tiny", max_steps=1), 50))
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("norm.weight") for p in no_decay["params"])
    assert all(p.dim() == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.slow  # trains a BPE tokenizer in pure Python
def test_bits_per_byte_counts_the_bytes_of_the_predicted_tokens():
    torch.manual_seed(0)
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 30
    tok = BPETokenizer.train(text, 300)
    ids = np.array(tok.encode(text), dtype=np.uint16)
    model = Transformer(model_config(TrainConfig(out="x", model="tiny", max_steps=1, block_size=16), tok.vocab_size))
    lengths = np.array([len(tok.vocab[i]) for i in range(tok.vocab_size)])
    res = evaluate(model, ids, 16, lengths)
    # the predicted tokens are all but the first; they decode to the text minus the first token's bytes
    assert res["tokens"] == len(ids) - 1
    assert res["bytes"] == len(text.encode()) - len(tok.vocab[int(ids[0])])
    # an independent computation of the same number: full-length forward passes, token by token sums
    nats = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 16):
            x = torch.tensor(ids[start : start + 17].astype(np.int64))
            logp = torch.log_softmax(model(x[None, :-1]).double(), -1)[0]
            nats -= logp.gather(-1, x[1:, None]).sum().item()
    assert res["loss"] == pytest.approx(nats / res["tokens"], rel=1e-6)
    assert res["bpb"] == pytest.approx(nats / math.log(2) / res["bytes"], rel=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(res["loss"]))
    byte_level = evaluate(model, ids, 16, np.ones(tok.vocab_size, dtype=np.int64))
    assert byte_level["bpb"] == pytest.approx(byte_level["loss"] / math.log(2))  # one byte per token


# ------------------------------------------------------------------------------------ a real run
def test_run_writes_log_checkpoint_model_and_samples(tmp_path, text):
    out = tmp_path / "run"
    assert cli_main(["train", "--data", str(text), "--out", str(out), *TINY, "--max-steps", "6", "--eval-every", "3"]) == 0
    log = read_log(out / "log.jsonl")
    assert [r["step"] for r in log] == [3, 6, 6] and log[-1]["final"] and "final" not in log[0]
    for r in log:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2))  # byte tokens: 1 byte each
    assert log[0]["val_tokens"] == 256 and log[-1]["val_tokens"] == len(np.load(out / "data" / "val.npy")) - 1
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000006"
    ckpt = out / "checkpoints" / "step-0000006"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                      "state.json", "tokenizer.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 6 and state["model_config"]["dim"] == 32
    assert set(state["rng"]) == {"python", "numpy"}
    assert {"rng.torch", "rng.sampler"} <= set(load_file(ckpt / "optimizer.safetensors"))
    assert not list((out / "checkpoints").glob("step-0000003"))  # older checkpoints are pruned

    model = load_model(out / "model")  # the final model, as a Hugging Face folder
    assert torch.equal(model.tok_embeddings.weight, load_file(ckpt / "model.safetensors")["tok_embeddings.weight"])
    assert (out / "samples.txt").is_file()


@pytest.mark.slow  # three training processes
def test_exact_resume_after_sigkill(tmp_path, text):
    """Kill a run (SIGKILL) after step 7, its last checkpoint being step 5; resume it; the weights
    and optimizer state at step 12 are bit-identical to an uninterrupted run's."""
    flags = ["--data", str(text), *TINY, "--max-steps", "12", "--eval-every", "5"]
    killed = whole_and_killed(tmp_path, "train", flags, step=7)
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step-0000005"
    resumed = run_cli("--out", str(killed), "--resume")  # every setting comes from the saved run
    assert resumed.returncode == 0, resumed.stderr
    assert_same_checkpoint(tmp_path / "whole" / "checkpoints" / "step-0000012", killed / "checkpoints" / "step-0000012")
    log_w, log_k = read_log(tmp_path / "whole" / "log.jsonl"), read_log(killed / "log.jsonl")
    assert [r["step"] for r in log_k] == [5, 10, 12, 12]
    assert [r["val_loss"] for r in log_k] == [r["val_loss"] for r in log_w]
    assert [r["train_loss"] for r in log_k[1:]] != [None] * 3


def test_resume_is_not_a_no_op(tmp_path, text):
    """Resuming really continues training (so the bit-for-bit comparison above is not vacuous)."""
    flags = ["--data", str(text), "--out", str(tmp_path / "r"), *TINY, "--eval-every", "2"]
    assert cli_main(["train", *flags, "--max-steps", "2"]) == 0
    w2 = load_file(tmp_path / "r" / "checkpoints" / "step-0000002" / "model.safetensors")
    assert cli_main(["train", *flags, "--max-steps", "4", "--resume"]) == 0
    w4 = load_file(tmp_path / "r" / "checkpoints" / "step-0000004" / "model.safetensors")
    assert not torch.equal(w2["output.weight"], w4["output.weight"])


def test_muon_run_resumes_bit_identical(tmp_path, text):
    """Muon's momentum buffers (and the AdamW state of the other groups) go through the checkpoint:
    a 4-step run stopped after its step-2 checkpoint and resumed ends where one run in one go ends."""
    flags = ["--data", str(text), *TINY, "--optimizer", "muon", "--eval-every", "2", "--sample-tokens", "0",
             "--max-steps", "4"]
    assert cli_main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0

    def stop(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    cfg, _, given = train_config_from_args(build_parser().parse_args(["train", *flags, "--out", str(tmp_path / "parts")]))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, given=given, on_step=stop)
    assert cli_main(["train", "--out", str(tmp_path / "parts"), "--resume"]) == 0
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(tmp_path / "whole" / "checkpoints" / "step-0000004" / name)
        b = load_file(tmp_path / "parts" / "checkpoints" / "step-0000004" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    assert any(k.endswith(".momentum_buffer") for k in a) and any(k.endswith(".exp_avg") for k in a)
    saved = json.loads((tmp_path / "parts" / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert [g["muon"] for g in saved["param_groups"]] == [True, False, False]


# ---------------------------------------------------------------------------------- clear errors
def train_error(capsys, *argv: str) -> str:
    assert cli_main(["train", *argv]) == 2
    return capsys.readouterr().err


def test_error_empty_and_too_small_data(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "is empty" in train_error(capsys, "--data", str(empty), "--out", str(tmp_path / "a"), *TINY, "--max-steps", "1")
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be.\n")  # 19 training bytes: not one window of 32 + 1

    err = train_error(capsys, "--data", str(small), "--out", str(tmp_path / "b"), *TINY, "--max-steps", "1")
    assert "fewer than block_size + 1" in err and "--block-size" in err


def test_error_block_size_beyond_max_seq_len(tmp_path, capsys, text):
    err = train_error(capsys, "--data", str(text), "--out", str(tmp_path / "a"), *TINY, "--max-steps", "1",
                      "--max-seq-len", "16")
    assert "--block-size 32 is larger than --max-seq-len 16" in err


def test_error_unknown_optimizer_and_bad_muon_lr(tmp_path, capsys, text):
    for flags, message in ((["--muon-lr", "0"], "--muon-lr must be a positive number"),
                           (["--muon-lr", "nan"], "--muon-lr must be a positive number")):
        err = train_error(capsys, "--data", str(text), "--out", str(tmp_path / "r"), *TINY, "--max-steps", "1", *flags)
        assert message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="^optimizer must be adamw or muon"):
        TrainConfig(out="r", max_steps=1, optimizer="sgd")
    assert not (tmp_path / "r").exists()


def test_error_no_length(tmp_path, capsys, text):
    assert "--max-steps, --max-time" in train_error(capsys, "--data", str(text), "--out", str(tmp_path / "a"), *TINY)


def test_error_overwriting_a_run_and_resuming_with_other_settings(tmp_path, capsys, text):
    out = str(tmp_path / "run")
    assert cli_main(["train", "--data", str(text), "--out", out, *TINY, "--max-steps", "2"]) == 0
    capsys.readouterr()
    err = train_error(capsys, "--data", str(text), "--out", out, *TINY, "--max-steps", "2")
    assert "already holds a training run" in err and "--resume" in err
    err = train_error(capsys, "--out", out, "--resume", "--lr", "0.1", "--block-size", "16")
    assert "--lr 0.1 (the run used 0.004)" in err and "--block-size 16 (the run used 32)" in err
    other = make_text(tmp_path / "other.txt", seed=1)
    assert "not the text the run" in train_error(capsys, "--out", out, "--resume", "--data", str(other))
    err = train_error(capsys, "--out", str(tmp_path / "nothing"), "--resume")
    assert "nothing to resume" in err


@pytest.mark.slow  # two fresh interpreters
def test_console_script_reports_and_fails_in_one_line(tmp_path, text):
    """``llama train`` as a process: the final evaluation on stdout; a user error is one line, exit 2."""
    proc = run_cli("--data", str(text), "--out", str(tmp_path / "m"), *TINY, "--max-steps", "1", "--eval-every", "1")
    assert proc.returncode == 0, proc.stderr
    assert "bits per byte" in proc.stdout
    bad = run_cli("--out", str(tmp_path / "m"), "--max-steps", "1")
    assert bad.returncode == 2 and "already holds a training run" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow  # a fresh interpreter
def test_the_module_points_to_the_command():
    """``python -m llama.training.loop`` has no flags of its own: it says what to run instead of silently doing nothing."""
    proc = subprocess.run([sys.executable, "-m", "llama.training.loop", "--out", "x"], capture_output=True, text=True,
                          cwd=REPO, timeout=HANG_SECONDS)
    assert proc.returncode == 1 and "llama train --out" in proc.stderr and "Traceback" not in proc.stderr


def test_on_step_is_called_after_each_step_and_its_checkpoint(tmp_path, text):
    seen = []

    def on_step(step: int) -> None:
        latest = tmp_path / "r" / "checkpoints" / "latest"
        seen.append((step, latest.read_text().strip() if latest.exists() else None))

    cfg = TrainConfig(out=str(tmp_path / "r"), data=str(text), model="tiny", tokenizer="bytes", block_size=32,
                      batch_size=4, threads=1, eval_tokens=256, sample_tokens=0, progress=False, max_steps=4,
                      eval_every=2)
    assert train(cfg, on_step=on_step)["step"] == 4
    assert seen == [(1, None), (2, "step-0000002"), (3, "step-0000002"), (4, "step-0000004")]


# ------------------------------------------------------------------------ the chapter's command
def _benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_train", REPO / "benchmarks" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chapter_shows_the_benchmarks_recipe_command():
    import re

    command = _benchmark_module().RECIPE_COMMAND
    chapter = (REPO / "book" / "training.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- tested-by: tests/test_train.py -->\n```console\n(.*?)```", chapter, re.S)
    assert blocks == [f"$ {command}\n"]


@pytest.mark.slow  # trains a BPE tokenizer, then a model
def test_recipe_command_runs_with_tiny_limits(tmp_path, shared_file, monkeypatch):
    """The recipe's exact flags (Tiny Shakespeare found through LLAMA_DATA_DIR, the default BPE and
    model), with --max-steps 2, a tiny model and a 300-token BPE added so that it ends in seconds."""
    import shlex

    monkeypatch.setenv("LLAMA_DATA_DIR", str(shared_file("tinyshakespeare.txt").parent))
    argv = shlex.split(_benchmark_module().RECIPE_COMMAND)
    assert argv[:2] == ["llama", "train"]
    argv = [a if a != "runs/shakespeare" else str(tmp_path / "run") for a in argv[1:]]
    tiny = ["--max-steps", "2", "--eval-every", "1", "--eval-tokens", "512", "--sample-tokens", "4", "--no-progress",
            "--model", "tiny", "--vocab-size", "300"]
    assert cli_main([*argv, *tiny]) == 0
    log = read_log(tmp_path / "run" / "log.jsonl")
    first = int(np.load(tmp_path / "run" / "data" / "val.npy")[0])
    first_bytes = len(BPETokenizer.load(tmp_path / "run" / "tokenizer.json").vocab[first])
    assert log[-1]["final"] and log[-1]["val_bytes"] == 111_539 - first_bytes  # all but the first token's
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    # The recipe's settings, with the flags given beside it (a tiny model, 300 tokens) winning.
    assert (run["max_time"], run["optimizer"], run["lr"], run["batch_size"], run["block_size"]) == (
        120, "muon", 0.008, 16, 128)
    assert (run["model"], run["vocab_size"]) == ("tiny", 300)


def test_max_time_says_what_it_bounds_and_the_final_evaluation_shows_progress(tmp_path, text, monkeypatch, capsys):
    """--max-time bounds the training loop; its help says so, and when it ends the run says what
    still comes (the final evaluation, with its own progress, the model and the sample)."""
    from llama.training import loop as train_module

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "final evaluation, model and sample after it, come on top" in " ".join(help_text.split())
    monkeypatch.setattr(train_module, "PLAIN_PROGRESS_SECONDS", 0.0)  # a plain line at every update
    flags = [f for f in TINY if f != "--no-progress"]
    assert cli_main(["train", "--data", str(text), "--out", str(tmp_path / "run"), *flags, "--max-time", "0.5",
                     "--eval-every", "1000"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("final: step ") and " s of training loop (" in out and " s in all), val loss " in out
    err = err.splitlines()
    stop = next(i for i, line in enumerate(err) if line.startswith("stopped at step"))
    assert "(--max-time 0.5 s of training loop reached); final evaluation on the whole validation split" in err[stop]
    assert err[stop].endswith("tokens), then the model and 8 tokens of sample")
    assert err[stop + 1:] and all(line.startswith("final evaluation") for line in err[stop + 1:])
    assert err[-1].endswith("(100%)")
