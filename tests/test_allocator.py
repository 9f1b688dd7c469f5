"""``reuse_freed_memory``: memory a step frees is reused by the next step instead of being faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from helpers import REPO, make_text

# A step's pattern: sixteen tensors of 8 MiB, written, then freed together (as a step's activations
# are); page faults counted by the kernel over ten steps after three that let the heap grow.
CHILD = """
import json, resource, sys, torch
from llama.training.allocator import reuse_freed_memory
taken = reuse_freed_memory() if sys.argv[1] == "1" else None

def step():
    held = [torch.ones(2 << 20) for _ in range(16)]
    return sum(t[0] for t in held)

for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"taken": taken, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""

PAGES_PER_STEP = 16 * (8 << 20) // 4096  # 32,768 pages of 4 KiB


def faults_per_step(reuse: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, "1" if reuse else "0"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere the call does nothing")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, reused = faults_per_step(False), faults_per_step(True)
    assert reused["taken"] is True
    assert reused["faults"] <= PAGES_PER_STEP / 40, reused
    # Without the call the same steps fault (usually every page; at least a tenth of them under
    # load), so the bound above is one the defaults do not meet.
    assert default["faults"] >= PAGES_PER_STEP / 20, f"glibc's defaults kept the memory without being asked: {default}"



def test_the_training_loop_asks_for_it(monkeypatch, tmp_path):
    import llama.training.loop as loop
    from llama.training import TrainConfig

    calls = []
    monkeypatch.setattr(loop, "reuse_freed_memory", lambda: calls.append(1) or True)
    text = make_text(tmp_path / "text.txt", n_words=400)
    loop.train(TrainConfig(out=str(tmp_path / "run"), data=str(text), tokenizer="bytes", model="tiny", block_size=16,
                           batch_size=2, max_steps=1, sample_tokens=0, progress=False))
    assert calls == [1]

