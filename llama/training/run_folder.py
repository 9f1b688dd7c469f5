"""The run folder of ``llama train --out DIR``: whether a run may start or resume in it, the lock
that keeps a second process out of it, and the tidying of what an interrupted process left.

A new run starts only in an empty (or new) folder, so it never replaces a file it did not make;
a run holds the folder's lock from start to end; a run that starts or resumes first removes the
partial files of a process killed while writing (a ``SIGKILL`` runs no cleanup). What the folder
holds, and how a run resumes from it, is :mod:`llama.training.state`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "RUN_FILES", "RunLock", "check_out", "latest_name", "remove_partial", "remove_new_run",
           "kept_after_stop"]

#: The lock file inside a run folder.
LOCK_NAME = ".lock"


def check_out(out: Path, resume: bool) -> dict[str, Any] | None:
    """Check the output folder against ``--resume``; writes nothing.

    Args:
        out: the run's folder (``--out``).
        resume: whether the user asked to continue the run in it.

    Returns:
        The saved settings (``run.json``) when resuming, else ``None``.

    Raises:
        ValueError: ``out`` is a file, or its ``run.json`` is damaged.
        FileExistsError: a new run into a folder that holds one, or that holds anything else.
        FileNotFoundError: ``resume`` with no run to resume.
    """
    run_file = out / "run.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    if not resume:
        if run_file.exists() or (out / "checkpoints").exists() or (out / "log.jsonl").exists():
            raise FileExistsError(
                f"{out} already holds a training run; pass --resume to continue it, or choose another --out "
                "(or delete the folder) to start a new one"
            )
        # What a new run killed before writing run.json leaves: the lock and run.json's temporary file.
        others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME
                        and not p.name.startswith(".run.json.")) if out.is_dir() else []
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise FileExistsError(
                f"--out {out} is not empty and holds no training run ({shown}); a new run writes its files "
                "there and would replace yours: choose a new or empty folder"
            )
        return None
    if not run_file.is_file():
        raise FileNotFoundError(f"nothing to resume in {out}: it has no run.json; drop --resume to start a new run")
    try:
        saved = json.loads(run_file.read_text())
        if not isinstance(saved, dict):  # a list once failed later, on .get, with a traceback
            raise ValueError(f"it holds a JSON {type(saved).__name__}, not an object of settings")
        return saved
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{run_file} is damaged ({err}); restore it, or start a new run in another --out") from None



class RunLock:
    """An exclusive lock on a run folder: ``fcntl.flock`` on its ``.lock`` file.

    The kernel releases a flock when its process ends, however it ends (a ``SIGKILL`` too), so a
    lock is never left held by a dead process. The file says who holds it (pid, host, start time)
    for the message a second process gets.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "run"
    >>> lock = RunLock(folder).acquire()
    >>> RunLock(folder).acquire()
    Traceback (most recent call last):
    ...
    FileExistsError: --out ... is in use by another training run (pid ...); wait for it to end ...
    >>> lock.release(remove=True); folder.exists()
    False
    """

    def __init__(self, out: Path) -> None:
        self.out, self.path, self.fd, self.created = out, out / LOCK_NAME, None, False

    def acquire(self) -> RunLock:
        """Take the lock (making the folder if needed); raise ``FileExistsError`` naming the holder if taken."""
        import fcntl

        try:
            self.created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 1000).decode(errors="replace").strip() or "starting"
                    os.close(fd)
                    raise FileExistsError(
                        f"--out {self.out} is in use by another training run ({holder}); wait for it to end "
                        "(or stop it), or choose another --out") from None
                # The previous holder may have removed the file after we opened it (a new run that
                # gave up removes its folder): then the lock we hold guards nothing; open it anew.
                try:
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    self.out.mkdir(parents=True, exist_ok=True)
                os.close(fd)
        except PermissionError as err:
            raise ValueError(f"cannot write into --out {self.out} ({err.strerror}); choose a folder you can write") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
        self.fd = fd
        return self

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; with ``remove``, delete the lock file, and the folder if it was made for it."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
            if self.created:
                try:
                    self.out.rmdir()
                except OSError:  # not empty: something else is there now, keep it
                    pass
        os.close(self.fd)
        self.fd = None


#: What a run writes into its folder, and nothing else: the names :func:`remove_new_run` may remove.
RUN_FILES = ("run.json", "tokenizer.json", "tokenizer.model", "data", "log.jsonl", "checkpoints", "model", "adapter",
             "samples.txt")


def latest_name(root: Path) -> str | None:
    """The checkpoint folder that ``root/latest`` names (``step-0000004``), or ``None`` with no ``latest`` yet.

    ``latest`` is a text file, and a person may have written it. The name is resolved: written
    with a trailing slash (``step-0000004/``, as tab completion writes it) or as a path that
    leads to the same folder, it is that folder. It must be a ``step-N`` folder directly in
    ``root``: an absolute path to another run's checkpoint, ``..`` or a link out of ``root``
    would make a run resume from outside its ``--out``.

    Raises:
        ValueError: ``latest`` cannot be read, or names anything else (the message lists the
            run's checkpoints).
    """
    pointer = root / "latest"
    if not pointer.exists() and not pointer.is_symlink():
        return None
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {pointer} ({err}); write into it the name of the checkpoint to resume "
                         "from (e.g. step-0000004)") from None
    resolved = (root / text).resolve() if text else None
    if resolved is None or resolved.parent != root.resolve() or not re.fullmatch(r"step-\d+", resolved.name):
        found = sorted(p.name for p in root.glob("step-*")) or ["none"]
        raise ValueError(f"{pointer} names {text!r}, which is not a checkpoint of this run (a step-N folder in "
                         f"{root}; it has: {', '.join(found)}); write the name of the one to resume from into it")
    return resolved.name


# --8<-- [start:remove_partial]
def remove_partial(out: Path) -> None:
    """Remove what a process killed while writing leaves in a run folder (held under its lock).

    That is a checkpoint's temporary folder (``checkpoints/.step-*``), a checkpoint that
    ``latest`` does not name (renamed into place, but the process died before ``latest``
    changed, or before the older one was pruned), and the temporary files of atomic writes.
    A checkpoint is removed only when ``latest`` names a complete one: with a ``latest``
    that cannot be read (an error, :func:`latest_name`) or names a missing folder, every
    checkpoint stays.
    """
    root = out / "checkpoints"
    latest = latest_name(root)
    complete = latest is None or (root / latest / "state.json").is_file()
    for folder in (*root.glob(".step-*"), *(p for p in root.glob("step-*") if complete and p.name != latest)):
        shutil.rmtree(folder, ignore_errors=True)
    for folder in (out, root, out / "data", out / "model", out / "adapter"):
        for tmp in folder.glob(".*.tmp"):  # the names of llama._files.atomic_write's temporary files
            if tmp.is_file() and tmp.name.split(".")[1] in {"run", "tokenizer", "log", "latest", "samples", "train",
                                                           "val", "meta", "config", "model", "adapter_model",
                                                           "adapter_config"}:
                tmp.unlink()
# --8<-- [end:remove_partial]


def remove_new_run(out: Path) -> None:
    """Undo a new run that stopped before its first checkpoint, so the same command can run again.

    Its folder was empty when it began (:func:`check_out`), so everything of :data:`RUN_FILES`
    in it is the run's own; anything else is left alone.
    """
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for tmp in out.glob(".run.json.*.tmp"):
        tmp.unlink()


def kept_after_stop(out: str | os.PathLike, resume: bool) -> tuple[str, bool]:
    """What a run that stops on an error keeps, and whether it can be continued with ``--resume``
    (:func:`llama.training.loop.train` removes a new run that has no checkpoint yet)."""
    pointer = Path(out) / "checkpoints" / "latest"
    if pointer.is_file():
        return f"the last checkpoint, {pointer.read_text().strip()}, stays the latest", True
    return ("there is no checkpoint yet", True) if resume else ("this new run, which had no checkpoint, was removed", False)
