"""The acceptance test of a run's robustness: kill it (SIGKILL) at random moments, checkpoint
writes included, resume it each time, and end bit-identical to a run never interrupted."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY_RUN
from safetensors.torch import load_file

from llama.training.run_folder import RunLock, remove_partial
from llama.training.state import latest_checkpoint, read_log

pytestmark = pytest.mark.slow  # a dozen killed and resumed training runs

FLAGS = [*TINY_RUN, "--batch-size", "4", "--no-progress", "--eval-tokens", "128", "--max-steps", "16", "--eval-every", "2",
         "--optimizer", "muon"]  # the recipe's: Muon's momentum and the AdamW groups' moments both resume

# One process imports torch once, then forks one child per run: a run starts in milliseconds
# instead of seconds. It reads a job per line and answers with the child's exit status. The
# child SIGKILLs itself (no finally, no atexit: like a crash) at the moment the job names:
#   ["step", k]       after optimizer step k (and its checkpoint, if it has one);
#   ["write", n, w]   at the n-th write of a checkpoint file, before (w=0) or after (w=1) it;
#   ["timer", s]      after s seconds, wherever it is (checkpoint writes are slowed a little,
#                     so that some timers go off inside them);
#   ["none"]          never.
SERVER = r"""
import json, os, shutil, signal, sys, threading, time
import safetensors.torch
import llama.training.state as state
from llama.cli.main import build_parser
from llama.cli.train import train_config_from_args
from llama.training.loop import train

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def run(job, argv):
    kind, on_step = job[0], None
    if kind == "step":
        on_step = lambda step: step == job[1] and die()
    writes = [0]
    def writer(real, slow=0.0):
        def write(*args, **kwargs):
            writes[0] += 1
            if kind == "write" and writes[0] == job[1] and job[2] == 0:
                die()
            time.sleep(slow)
            result = real(*args, **kwargs)
            if kind == "write" and writes[0] == job[1] and job[2] == 1:
                die()
            return result
        return write
    slow = 0.02 if kind == "timer" else 0.0
    safetensors.torch.save_file = writer(safetensors.torch.save_file, slow)
    state.shutil.copyfile = writer(shutil.copyfile, slow)
    state.atomic_write_text = writer(state.atomic_write_text, slow)
    state.os.rename = writer(os.rename, slow)
    if kind == "timer":
        threading.Timer(job[1], die).start()
    cfg, resume, given = train_config_from_args(build_parser().parse_args(["train", *argv]))
    train(cfg, resume=resume, given=given, on_step=on_step)

for line in sys.stdin:
    job, argv = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            run(job, argv)
            code = 0
        except BaseException as err:
            print(repr(err), file=sys.stderr, flush=True)
            code = 1
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


def test_random_kills_then_resume_end_bit_identical(tmp_path):
    rng = random.Random(2024)  # the kill times are random, and the same at every run of the test
    text = tmp_path / "text.txt"
    words = "the king and queen of denmark speak to thee my lord what news from rome".split()
    text.write_text(" ".join(rng.choice(words) for _ in range(3000)) + "\n")
    errors = tmp_path / "errors.txt"
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=errors.open("w"), text=True)

    def run(out: Path, job: list, resume: bool) -> int:
        argv = ["--data", str(text), "--out", str(out), *FLAGS, *(["--resume"] if resume else [])]
        server.stdin.write(json.dumps([job, argv]) + "\n")
        server.stdin.flush()
        return json.loads(server.stdout.readline())

    try:
        assert run(tmp_path / "whole", ["none"], False) == 0
        out, kills, kinds = tmp_path / "killed", 0, []
        while kills < 12:
            job = rng.choice([["step", rng.randint(1, 16)], ["write", rng.randint(1, 12), rng.randint(0, 1)],
                              ["timer", rng.uniform(0.0, 0.4)]])
            code = run(out, job, resume=(out / "run.json").exists())
            assert code in (0, -9), f"{job}: exit {code}: {errors.read_text()}"
            if code == 0:  # the run ended before the kill came: start it again from the beginning
                assert read_log(out / "log.jsonl")[-1]["final"]
                shutil.rmtree(out)
                continue
            kills += 1
            kinds.append(job[0])
            ckpt = latest_checkpoint(out) if out.exists() else None
            if ckpt is not None:  # latest names a complete checkpoint that loads
                json.loads((ckpt / "state.json").read_text())
                assert load_file(ckpt / "model.safetensors").keys() and load_file(ckpt / "optimizer.safetensors")
            if out.exists():  # what the next start does first leaves no orphan
                lock = RunLock(out).acquire()
                remove_partial(out)
                lock.release()
                root = out / "checkpoints"
                named = {ckpt.name} if ckpt else set()
                assert not root.exists() or {p.name for p in root.iterdir()} - {"latest"} == named
                assert not [p for p in out.rglob(".*") if p.name != ".lock"]
        assert set(kinds) == {"step", "write", "timer"}
        assert run(out, ["none"], resume=(out / "run.json").exists()) == 0
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    last = "checkpoints/step-0000016"
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(tmp_path / "whole" / last / name), load_file(out / last / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after {kills} kills"
    log_whole, log_killed = read_log(tmp_path / "whole" / "log.jsonl"), read_log(out / "log.jsonl")
    assert [(r["step"], r["val_loss"]) for r in log_killed] == [(r["step"], r["val_loss"]) for r in log_whole]
