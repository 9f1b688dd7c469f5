"""DDP for real: ``torchrun`` starts 2 ranks (gloo, 127.0.0.1) that train like one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import HANG_SECONDS, REPO, TINY_RUN
from safetensors.torch import load_file

from llama.training.state import read_log

# float32 written out: the ranks' sums come in another order, and the tolerances below are float32's.
TINY = [*TINY_RUN, "--no-progress", "--dtype", "float32"]

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="this PyTorch has no gloo backend"),
]

LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, optimizer):
    words = "the king and queen of denmark speak to thee my lord what news from rome".split()
    text = tmp_path / "text.txt"
    text.write_text(" ".join(words[(i * 7 + i // 13) % len(words)] for i in range(6000)) + "\n")
    common = ["--data", str(text), *TINY, "--max-steps", "6", "--eval-every", "1", "--optimizer", optimizer]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "llama.cli.main", "train", "--out", str(tmp_path / "ddp"), *common, "--batch-size", "2"]
    single = [sys.executable, "-m", "llama.cli.main", "train", "--out", str(tmp_path / "single"), *common, "--batch-size", "4"]
    env = {**os.environ, **LOOPBACK}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in (ddp, single)]
    outputs = [p.communicate(timeout=HANG_SECONDS) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert outputs[0][0].count("final:") == 1  # only rank 0 reports

    # Muon orthogonalises in bfloat16 where that is native (llama.training.precision.fast_dtype): a
    # last-bit difference between the all-reduced and the one-process gradient can round a
    # bfloat16 entry the other way (2^-8 of it), and the Newton-Schulz steps, steep near 0, amplify
    # that in the gradient's weak directions. The losses still agree to 2e-4 (they fall by more
    # than 0.05 over these steps), and each weight matrix to 5% of its norm (3% measured).
    tol = 1e-5 if optimizer == "adamw" else 2e-4
    log_ddp, log_one = read_log(tmp_path / "ddp" / "log.jsonl"), read_log(tmp_path / "single" / "log.jsonl")
    assert [r["step"] for r in log_ddp] == [r["step"] for r in log_one] == [1, 2, 3, 4, 5, 6, 6]
    assert [r["tokens"] for r in log_ddp] == [r["tokens"] for r in log_one]  # same global batch
    for a, b in zip(log_ddp, log_one):
        for key in ("train_loss", "val_loss"):
            if a[key] is not None:
                assert abs(a[key] - b[key]) <= tol, (a["step"], key, a[key], b[key])
    # the losses moved, so agreeing is not trivial
    assert log_one[0]["train_loss"] - log_one[5]["train_loss"] > 0.05
    w_ddp = load_file(tmp_path / "ddp" / "checkpoints" / "step-0000006" / "model.safetensors")
    w_one = load_file(tmp_path / "single" / "checkpoints" / "step-0000006" / "model.safetensors")
    for k in w_one:
        if optimizer == "adamw":
            torch.testing.assert_close(w_ddp[k], w_one[k], atol=1e-5, rtol=0)
        else:
            assert torch.linalg.norm(w_ddp[k] - w_one[k]) <= 0.05 * torch.linalg.norm(w_one[k]), k


def test_a_user_error_stops_every_rank(tmp_path):
    """An error found by rank 0 (here: --out holds a run) reaches rank 1 too: both exit, nobody hangs."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "run.json").write_text("{}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "llama.cli.main", "train", "--out", str(out), "--data", str(tmp_path / "absent.txt"), *TINY, "--max-steps", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **LOOPBACK}, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert proc.returncode != 0
    assert proc.stderr.count("already holds a training run") == 2  # printed by both ranks
