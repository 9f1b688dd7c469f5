"""``llama dpo`` and ``llama rl`` (llama.posttraining.stage): a run takes steps on the model's own graded
replies, logs each, checkpoints, leaves a chat model, resumes bit-identically after a SIGKILL, and
refuses what makes no run in one line.

The tiny chat model is untrained, so it never answers a task right: the runs reward replies of even
length instead (``--reward``), which it writes about half the time, so every step has a signal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import (
    REPO,
    assert_same_checkpoint,
    byte_level_base,
    chat_base,
    refused,
    run_console_blocks,
    whole_and_killed,
)
from safetensors.torch import load_file

from llama.cli.main import main
from llama.formats.load import load_model
from llama.posttraining.stage import ProblemStream, StageConfig
from llama.posttraining.tasks import make_task
from llama.training.state import read_log

REWARDS = '''
def even_length(reply, problem):
    return float(len(reply) % 2 == 0)


def broken(reply, problem):
    return {"right": 1.0}[reply]
'''
SMALL = ["--task", "addition", "--task-args", "digits=1", "--problems-per-step", "2", "--group", "4",
         "--max-new-tokens", "6", "--threads", "1"]


@pytest.fixture
def base(tmp_path) -> Path:
    return chat_base(tmp_path / "chat")


@pytest.fixture
def rewards(tmp_path) -> Path:
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    return path


def test_the_problem_stream_resumes_from_its_state():
    task = make_task("addition", digits=2)
    stream = ProblemStream(task, seed=3)
    stream.take(5)
    again = ProblemStream(task, seed=3)
    again.set_state(stream.state())
    assert again.take(4) == stream.take(4) and int(stream.state()[0]) == 9
    assert not any(task.is_held_out(p) for p in ProblemStream(task, seed=0).take(200))


@pytest.mark.slow  # two processes of each command
@pytest.mark.parametrize("command, steps", [("rl", ["--method", "grpo", "--kl-beta", "0.1", "--oversample", "2"]),
                                           ("dpo", ["--beta", "0.5"])])
def test_exact_resume_after_sigkill(tmp_path, base, rewards, command, steps, capsys):
    """Kill a run after step 3 (its last checkpoint: step 2); resume it; at step 4 its weights, AdamW
    state, problem position and generators equal an uninterrupted run's, and so does its log."""
    flags = ["--base", str(base), *SMALL, "--reward", f"{rewards}:even_length", "--max-steps", "4", "--save-every", "2",
             "--lr", "1e-3", *steps]
    killed = whole_and_killed(tmp_path, command, flags, step=3)
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert main([command, "--base", str(base), "--out", str(killed), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert_same_checkpoint(whole / "checkpoints" / "step-0000004", killed / "checkpoints" / "step-0000004")
    assert int(load_file(killed / "checkpoints" / "step-0000004" / "optimizer.safetensors")["rng.sampler"][0]) >= 8
    strip = lambda records: [{k: v for k, v in r.items() if k != "elapsed"} for r in records]  # noqa: E731
    assert strip(read_log(killed / "log.jsonl")) == strip(read_log(whole / "log.jsonl"))
    log = read_log(whole / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 4] and log[-1]["final"]
    assert any(r["loss"] != 0 for r in log[:-1])  # the steps had something to learn
    trained, first = load_model(whole / "model"), load_model(base)
    assert not torch.equal(trained.layers[0].attention.wq.weight, first.layers[0].attention.wq.weight)
    run = json.loads((whole / "run.json").read_text())
    assert run["method"] == ("dpo" if command == "dpo" else "grpo") and run["task"] == "addition:digits=1"
    capsys.readouterr()
    assert main(["chat", str(whole / "model"), "--message", "What is 2 + 3?", "-n", "4"]) == 0  # a chat model


def test_errors(tmp_path, base, rewards, capsys):
    def out(name: str) -> list[str]:
        return ["--out", str(tmp_path / name)]

    common = ["--base", str(base), *SMALL, "--max-steps", "1"]
    assert "--task: unknown task 'adition'; choose one of addition" in refused(
        capsys, ["rl", "--base", str(base), *out("a"), "--task", "adition"])
    assert "--task is required" in refused(capsys, ["dpo", "--base", str(base), *out("b")])
    assert "--group must be at least 2, got 1" in refused(capsys, ["rl", *common, *out("c"), "--group", "1"])
    assert "--beta must be a positive number, got 0.0" in refused(capsys, ["dpo", *common, *out("d"), "--beta", "0"])
    assert "--kl-beta must be a number >= 0, got -1.0" in refused(capsys, ["rl", *common, *out("e"), "--kl-beta", "-1"])
    assert "--lr must be a positive number, got nan" in refused(capsys, ["rl", *common, *out("f"), "--lr", "nan"])
    assert "--max-steps must be a positive integer, got 0" in refused(capsys, ["dpo", *common, *out("g"), "--max-steps", "0"])
    assert "--oversample must be a positive integer, got 0" in refused(capsys, ["rl", *common, *out("n"), "--oversample", "0"])
    plain = byte_level_base(tmp_path / "plain")
    err = refused(capsys, ["rl", "--base", str(plain), *SMALL, *out("h")])
    assert f"{plain} is not a chat model: tokenizer has no special token" in err and "run llama sft on it first" in err
    err = refused(capsys, ["rl", *common, *out("i"), "--reward", f"{rewards}:broken"])
    assert "the reward of a reply to addition(digits=1)'s problem 'What is " in err
    assert "failed with KeyError" in err and "; the reply was '" in err
    assert "there is no file" in refused(capsys, ["rl", *common, *out("j"), "--reward", f"{tmp_path}/none.py:f"])
    assert "has no function 'nope'" in refused(capsys, ["rl", *common, *out("k"), "--reward", f"{rewards}:nope"])
    assert "--reward must be FILE.py:NAME" in refused(capsys, ["rl", *common, *out("l"), "--reward", "even_length"])
    err = refused(capsys, ["dpo", *common, *out("m")])  # the untrained model is never right: no pair to learn from
    assert "step 1: none of 16 problems got one better and one worse reply among 4: the model is always right or " \
           "always wrong on addition(digits=1)" in err
    # 37 prompt tokens + 27 new ones fill the 64-token context; the untrained model's random bytes are
    # mostly not UTF-8, and as text each comes back as the three bytes of U+FFFD.
    err = refused(capsys, ["dpo", *common, *out("o"), "--max-new-tokens", "27", "--reward", f"{rewards}:even_length"])
    assert re.search(r"step 1: a pair's prompt and reply take \d+ tokens, more than the model's max_seq_len=64: a reply "
                     r"sampled in at most --max-new-tokens 27 took more as text .*; lower --max-new-tokens$", err), err
    for name in "abcdefghijklmno":  # a refused new run leaves nothing behind
        assert not (tmp_path / name).exists(), name

    # One step, then every way to resume it wrongly.
    assert main(["rl", *common, *out("run"), "--reward", f"{rewards}:even_length"]) == 0
    capsys.readouterr()
    other = chat_base(tmp_path / "other")
    err = refused(capsys, ["rl", "--base", str(other), *out("run"), "--resume"])
    assert f"--resume: --base {other} is not the model the run in {tmp_path / 'run'} started from" in err
    assert "holds a grpo run: resume it with llama rl" in refused(capsys, ["dpo", "--base", str(base), *out("run"), "--resume"])
    err = refused(capsys, ["rl", "--base", str(base), *out("run"), "--resume", "--group", "8", "--max-steps", "2"])
    assert "--resume: the flags disagree with the run in" in err and "--group 8 (the run used 4)" in err
    assert "already holds a training run" in refused(capsys, ["rl", *common, *out("run")])
    # What may change on resume: how long it runs.
    assert main(["rl", "--base", str(base), *out("run"), "--resume", "--max-steps", "2"]) == 0
    assert [r["step"] for r in read_log(tmp_path / "run" / "log.jsonl")] == [1, 2, 2]


def test_settings_are_checked_where_they_are_made():
    with pytest.raises(ValueError, match="method must be one of dpo, grpo, reinforce, got 'ppo'"):
        StageConfig(out="x", base="b", task="addition", method="ppo")
    with pytest.raises(ValueError, match="level must be sequence or token"):
        StageConfig(out="x", base="b", task="addition", level="batch")


@pytest.mark.parametrize("chapter", ["dpo.md", "rl.md"])
def test_the_chapter_s_commands_run_as_printed(chapter, tmp_path, monkeypatch, capsys):
    """The console block of the chapter's "The command", run in a folder holding the tests' chat model
    as ``runs/sft/model`` and the chapter's ``even.py``."""
    text = (REPO / "book" / chapter).read_text(encoding="utf-8")
    (block,) = re.findall(r"<!-- tested-by: tests/test_stage.py -->\n(```console\n.*?```)", text, re.S)
    chat_base(tmp_path / "runs" / "sft" / "model")
    (tmp_path / "even.py").write_text("def even(reply, problem):\n    return float(len(reply) % 2 == 0)\n")
    monkeypatch.chdir(tmp_path)
    run_console_blocks(block, capsys)
    assert (tmp_path / "runs" / chapter.removesuffix(".md") / "model" / "tokenizer.json").is_file()
