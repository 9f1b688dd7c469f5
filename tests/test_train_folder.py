"""``llama train`` and what it does to its folder when things go wrong: a folder of someone else's
files, a second process, a full disk, a stray tokenizer, bad numbers, divergence, a damaged
checkpoint, a failed start, Ctrl-C, and a log that is not a terminal."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
from helpers import REPO, TINY_RUN, make_text
from safetensors.torch import load_file

import llama.training.loop
from llama.cli.main import main as cli_main
from llama.training.config import TrainConfig
from llama.training.loop import train
from llama.training.run_folder import RunLock
from llama.training.state import read_log

TINY = [*TINY_RUN, "--batch-size", "4", "--no-progress"]


@pytest.fixture
def text(tmp_path):
    return make_text(tmp_path / "text.txt", 3000)


def train_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli_main(["train", *argv])
    return code, capsys.readouterr().err


def tiny_config(out: Path, text: Path, **changes) -> TrainConfig:
    fields = dict(out=str(out), data=str(text), model="tiny", tokenizer="bytes", block_size=32, batch_size=4,
                  threads=1, eval_tokens=256, sample_tokens=0, progress=False, max_steps=4, eval_every=2)
    return TrainConfig(**{**fields, **changes})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def partial_folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------- someone else's folder
def test_a_new_run_never_writes_into_a_folder_of_other_files(tmp_path, capsys, text, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "config.json").write_text("my model")
    (mine / "samples.txt").write_text("my samples")
    (mine / "data").mkdir()
    (mine / "data" / "train.npy").write_bytes(b"my data")
    before = snapshot(mine)
    code, err = train_cli(capsys, "--data", str(text), "--out", str(mine), *TINY, "--max-steps", "1")
    assert code == 2 and "is not empty and holds no training run" in err and "model" in err
    monkeypatch.chdir(mine)  # --out . is the same folder
    code, err = train_cli(capsys, "--data", str(text), "--out", ".", *TINY, "--max-steps", "1")
    assert code == 2 and "is not empty" in err
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["data", "model", "samples.txt"]
    # an empty folder of the user's is fine, and stays when a run in it fails before starting
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = train_cli(capsys, "--data", str(text), "--out", str(empty), *TINY, "--max-steps", "1", "--n-heads", "3")
    assert code == 2 and empty.is_dir() and list(empty.iterdir()) == []


# ------------------------------------------------------------------------------ a second process
def test_a_run_folder_in_use_is_refused_with_its_holder(tmp_path, capsys, text):
    out = tmp_path / "run"
    assert train(tiny_config(out, text))["step"] == 4
    lock = RunLock(out).acquire()  # as another process would hold it (flock is per open file)
    try:
        before = snapshot(out)
        code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
        assert code == 2 and f"{out} is in use by another training run (pid {os.getpid()} on " in err
        assert "started" in err and snapshot(out) == before
    finally:
        lock.release()
    assert train(tiny_config(out, text, max_steps=6), resume=True, given={"max_steps"})["step"] == 6


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from llama.training.run_folder import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
                               "print('locked', flush=True); time.sleep(60)", str(out)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=f"pid {holder.pid} on "):
            RunLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(out).acquire().release()  # SIGKILL ran no cleanup, yet the lock is free


# ------------------------------------------------------------------------------------ a full disk
def test_a_full_disk_during_a_checkpoint_leaves_the_last_one_and_resume_works(tmp_path, capsys, text, monkeypatch):
    out = tmp_path / "run"
    real_save = safetensors.torch.save_file
    calls = []

    def full_disk(tensors, path, *args, **kwargs):
        calls.append(Path(path).parent.name)
        if Path(path).parent.name.startswith(".step-0000004") and Path(path).name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    flags = ["--data", str(text), "--out", str(out), *TINY, "--eval-every", "2"]
    code, err = train_cli(capsys, *flags, "--max-steps", "6")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "could not write the checkpoint of step 4" in err and "No space left on device" in err
    assert "step-0000002, stays the latest" in err and "--resume" in err
    assert any(c.startswith(".step-0000004") for c in calls)  # it failed inside the checkpoint
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000002"]
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)  # space again
    code, err = train_cli(capsys, "--out", str(out), "--resume")
    assert code == 0, err
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000006"


def test_orphans_of_a_killed_run_are_removed_on_the_next_start(tmp_path, text):
    out = tmp_path / "run"
    train(tiny_config(out, text))
    ckpts = out / "checkpoints"
    (ckpts / ".step-0000006.abc123").mkdir()
    (ckpts / ".step-0000006.abc123" / "model.safetensors").write_bytes(b"partial")
    (ckpts / "step-0000005").mkdir()  # renamed into place, but latest never named it
    (ckpts / ".latest.xyz.tmp").write_text("step-0000005")
    (out / ".log.jsonl.q.tmp").write_text("")
    train(tiny_config(out, text, max_steps=6), resume=True, given={"max_steps"})
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-0000006"]
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------ checkpoints/latest
def test_a_latest_written_with_a_trailing_slash_resumes_from_that_checkpoint(tmp_path, capsys, text):
    # Tab completion writes "step-0000004/": the run's only checkpoint was deleted as an orphan.
    out = tmp_path / "run"
    train(tiny_config(out, text))
    (out / "checkpoints" / "latest").write_text("step-0000004/\n")
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
    assert code == 0, err
    assert [r["step"] for r in read_log(out / "log.jsonl") if not r.get("final")] == [2, 4, 6]  # resumed at 4
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000006"


@pytest.mark.parametrize("written", ["ABSOLUTE", "../../other/checkpoints/step-0000004", "step-0000004/../../.."])
def test_a_latest_that_leads_out_of_the_run_is_refused_and_nothing_is_deleted(tmp_path, capsys, text, written):
    # An absolute path to another run resumed from outside --out and deleted the run's own checkpoint.
    other, out = tmp_path / "other", tmp_path / "run"
    train(tiny_config(other, text))
    train(tiny_config(out, text))
    pointer = out / "checkpoints" / "latest"
    pointer.write_text(str(other / "checkpoints" / "step-0000004") if written == "ABSOLUTE" else written)
    before, before_other = snapshot(out), snapshot(other)
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{pointer} names" in err and "which is not a checkpoint of this run" in err
    assert "it has: step-0000004" in err and "write the name of the one to resume from into it" in err
    del before[".lock"]
    after = snapshot(out)
    after.pop(".lock", None)
    assert after == before and snapshot(other) == before_other


def test_a_latest_that_names_a_missing_checkpoint_deletes_none(tmp_path, capsys, text):
    out = tmp_path / "run"
    train(tiny_config(out, text))
    (out / "checkpoints" / "latest").write_text("step-0000009\n")
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
    assert code == 2 and "names step-0000009, which is missing or incomplete" in err
    assert (out / "checkpoints" / "step-0000004" / "state.json").is_file()


# ------------------------------------------------------------------------------- a stray tokenizer
def test_resume_refuses_a_tokenizer_that_is_not_the_runs(tmp_path, capsys, text):
    from llama.tokenizers.bpe import BPETokenizer

    out = tmp_path / "run"
    assert cli_main(["train", "--data", str(text), "--out", str(out), *TINY, "--max-steps", "2", "--eval-every", "2"]) == 0
    capsys.readouterr()
    BPETokenizer.train(text.read_text(), 300).save(out / "tokenizer.json")
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "4")
    assert code == 2 and "tokenizer.json does not belong to this run (--tokenizer bytes" in err
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "4", "--vocab-size", "300")
    assert code == 2 and "--vocab-size 300 (the run used 1024)" in err
    (out / "tokenizer.json").unlink()  # a missing one is remade from the settings, as it was
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "4")
    assert code == 0, err


# ----------------------------------------------------------------------------------- bad numbers
@pytest.mark.parametrize("flag, value, message", [
    ("--max-time", "nan", "--max-time must be a positive number of seconds, got nan"),
    ("--max-time", "inf", "--max-time must be a positive number of seconds, got inf"),
    ("--threads", "-1", "--threads must be a positive integer, got -1"),
    ("--seed", "99999999999999999999", "--seed must be an integer from 0 to 18446744073709551615"),
    ("--lr", "nan", "--lr must be a positive number, got nan"),
    ("--beta2", "1", "--beta2 must be a number in [0, 1), got 1.0"),
    ("--grad-clip", "nan", "--grad-clip must be a number >= 0 (0 = off), got nan"),
    ("--dim", "0", "--dim must be a positive integer, got 0"),
    ("--sample-tokens", "-1", "--sample-tokens must be an integer >= 0, got -1"),
])
def test_every_number_is_checked_before_anything_is_written(tmp_path, capsys, text, flag, value, message):
    code, err = train_cli(capsys, "--data", str(text), "--out", str(tmp_path / "run"), *TINY, "--max-steps", "1",
                          flag, value)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------- divergence
def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, text, monkeypatch):
    out = tmp_path / "run"
    real_step = llama.training.loop.train_step
    done = []

    def nan_at_step_3(*args, **kwargs):
        done.append(1)
        loss = real_step(*args, **kwargs)
        return float("nan") if len(done) == 3 else loss

    monkeypatch.setattr(llama.training.loop, "train_step", nan_at_step_3)
    with pytest.raises(ValueError, match=r"training diverged at step 3: the loss is nan.*step-0000002, stays the "
                                         r"latest. Lower --lr \(it is 0.004\) in a new run"):
        train(tiny_config(out, text, max_steps=6))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000002"]
    assert not (out / "model").exists() and not (out / "samples.txt").exists()


def test_a_huge_learning_rate_ends_in_one_line_and_saves_no_nan(tmp_path, capsys, text):
    out = tmp_path / "run"
    flags = ["--data", str(text), "--out", str(out), *TINY, "--max-steps", "6", "--lr", "1e30"]
    code, err = train_cli(capsys, *flags, "--eval-every", "1")
    assert code == 2 and err.count("\n") == 1
    assert "training diverged at step 2: the loss was" in err and "the update made weights non-finite" in err
    assert "step-0000001, stays the latest. Lower --lr (it is 1e+30) in a new run" in err
    weights = load_file(out / "checkpoints" / "step-0000001" / "model.safetensors")
    assert all(bool(w.isfinite().all()) for w in weights.values())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000001"]
    # before its first checkpoint a new run leaves nothing: the same command with a lower --lr can run again
    other = tmp_path / "other"
    code, err = train_cli(capsys, *flags, "--eval-every", "2", "--out", str(other))
    assert code == 2 and "this new run, which had no checkpoint, was removed" in err and not other.exists()


# ------------------------------------------------------------------ a checkpoint that does not fit
def test_resume_with_a_run_json_that_disagrees_with_the_checkpoint(tmp_path, capsys, text):
    out = tmp_path / "run"
    train(tiny_config(out, text))
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "dim": 64}))
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
    assert code == 2 and "checkpoints/step-0000004 holds another model than" in err
    assert "dim 32 (run.json makes 64)" in err and err.count("\n") == 1


def test_resume_from_a_truncated_checkpoint(tmp_path, capsys, text):
    out = tmp_path / "run"
    train(tiny_config(out, text))
    weights = out / "checkpoints" / "step-0000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = train_cli(capsys, "--out", str(out), "--resume", "--max-steps", "6")
    assert code == 2 and "checkpoints/step-0000004 cannot be loaded" in err and "damaged or truncated" in err
    assert f"delete {out / 'checkpoints'} to train the run again from step 0 with --resume" in err
    assert err.count("\n") == 1


def test_a_context_too_long_for_memory_is_refused_before_allocating(tmp_path, capsys, text):
    code, err = train_cli(capsys, "--data", str(text), "--out", str(tmp_path / "run"), *TINY, "--max-steps", "1",
                          "--max-seq-len", "1000000000000")
    assert code == 2 and "--max-seq-len must be a number of positions from 1 to 1,048,576 (2**20)" in err
    # Within that ceiling, a run is still measured against the machine's memory.
    code, err = train_cli(capsys, "--data", str(text), "--out", str(tmp_path / "run"), *TINY, "--max-steps", "1",
                          "--max-seq-len", "1048576", "--dim", "131072", "--n-heads", "1")
    assert code == 2 and "this run needs at least" in err
    assert "549.8 GB for the RoPE tables of --max-seq-len 1048576" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------- a failed start
@pytest.mark.parametrize("bad", [["--n-heads", "3"], ["--model", "huge"], ["--data", "EMPTY"]])
def test_a_run_that_cannot_start_leaves_nothing_and_the_retry_works(tmp_path, capsys, text, bad):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    out = tmp_path / "run"
    code, err = train_cli(capsys, "--data", str(text), "--out", str(out), *TINY, "--max-steps", "1",
                          *[str(empty) if b == "EMPTY" else b for b in bad])
    assert code == 2 and err.count("\n") == 1, err
    assert not out.exists()
    code, err = train_cli(capsys, "--data", str(text), "--out", str(out), *TINY, "--max-steps", "1")
    assert code == 0, err


def test_a_run_that_fails_after_writing_its_files_removes_them(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be.\n")  # 19 training bytes: not one window of 32 + 1
    out = tmp_path / "run"
    code, err = train_cli(capsys, "--data", str(small), "--out", str(out), *TINY, "--max-steps", "1")
    assert code == 2 and "--block-size" in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_releases_the_lock_and_leaves_no_partial_folder(tmp_path, text, monkeypatch):
    out = tmp_path / "run"

    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(out, text), on_step=interrupt)
    RunLock(out).acquire().release()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000002"]
    real_save = safetensors.torch.save_file

    def interrupted_save(tensors, path, *args, **kwargs):  # Ctrl-C in the middle of a checkpoint
        if Path(path).name == "optimizer.safetensors":
            raise KeyboardInterrupt
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(out, text), resume=True, given=set())
    RunLock(out).acquire().release()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000002"]


# ------------------------------------------------------------------------------- not a terminal
@pytest.mark.slow
def test_progress_goes_to_a_terminal_only(tmp_path, text):
    flags = [f for f in TINY if f != "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "llama.cli.main", "train", "--data", str(text), "--out",
                           str(tmp_path / "run"), *flags, "--max-steps", "3"],
                          cwd=REPO, capture_output=True, timeout=120)  # bytes: text mode would turn \r into \n
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stderr and len(proc.stderr) < 1000


# ------------------------------------------------------------------------------- permissions
def test_checkpoints_get_the_permissions_of_a_normal_write(tmp_path, text):
    """mkdtemp makes 0700 folders and mkstemp 0600 files; a run's files must look like any other."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        train(tiny_config(out, text))
    finally:
        os.umask(old)
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert stat.S_IMODE(latest.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in latest.iterdir()} == {0o644}
    assert stat.S_IMODE((out / "run.json").stat().st_mode) == 0o644
