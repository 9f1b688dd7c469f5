"""Writing files so that a crash or an error never leaves a half-written one behind."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "default_mode", "make_temp_dir",
           "open_for_reading", "refuse_to_overwrite", "refuse_checkpoint_folder", "CHECKPOINT_FILES"]


def default_mode(folder: bool = False) -> int:
    """The permissions ``open(path, "w")`` (``0o666``) or ``mkdir`` (``0o777``) would give, less the umask.

    ``tempfile`` creates files 0600 and folders 0700 whatever the umask; what we rename into
    place must look like any other file the user writes, or other users and tools cannot read it.
    """
    try:  # Linux says it without changing it; elsewhere it can only be read by setting it
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the permissions ``mkdir`` would give (not 0700).

    For a folder that is filled and then renamed into place: it must end up like any other folder.
    """
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, default_mode(folder=True))
    return path


def _target(path: Path) -> tuple[Path, int]:
    """The regular file to replace for ``path`` (a symlink's target) and the mode the new file gets.

    Raises ``ValueError`` for anything that is not a regular file or an absent name: replacing a
    device, a pipe or a folder with a file would destroy it (``os.replace`` does not refuse).
    """
    if path.is_symlink():
        target = path.resolve()
        if not target.exists():
            raise ValueError(
                f"{path} is a symbolic link to {target}, which does not exist: fix or remove the link, "
                "or choose another file to write"
            )
        path = target
    try:
        st = path.stat()
    except FileNotFoundError:
        return path, default_mode()
    if stat.S_ISREG(st.st_mode):
        return path, stat.S_IMODE(st.st_mode)
    kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, a pipe or a socket)"
    raise ValueError(f"{path} is {kind}: it was left as it is; give the path of a file to write")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(temporary_path)``, then move the result onto ``path`` in one step.

    The temporary file sits in the same folder, so ``os.replace`` is a rename on one file
    system: readers see the old file (or none) until the new one is complete. On any error the
    temporary file is removed and the error propagates.

    What ``path`` may be:

    * absent: a new file is made with the permissions a plain ``open(path, "w")`` gives
      (``0o666`` less the umask);
    * a regular file: it is replaced, and the new file keeps its permissions;
    * a symbolic link: written through, as ``open`` would, so the link stays and its target
      (which must exist and be a regular file) is replaced;
    * anything else (a folder, a device such as ``/dev/null``, a FIFO, a socket): ``ValueError``,
      and nothing is written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path, mode = _target(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError:
        raise ValueError(f"cannot write {path}: permission denied in {path.parent}; choose a folder "
                         "your user may write to") from None
    os.close(fd)
    try:
        write(tmp)
        # After writing, not before: a read-only mode (0444) would stop ``write`` opening the file.
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def refuse_to_overwrite(path: str | os.PathLike, read: Callable[[Path], object], what: str) -> None:
    """Raise ``ValueError`` unless ``path`` is absent or already ``what`` (``read(path)`` succeeds).

    For outputs that replace a file of the same name: a name given by mistake (the input text, a
    folder, an unrelated file) must fail before the work, not lose the user's file after it.
    """
    path = Path(path)
    target, _ = _target(path)
    if not target.exists():
        return
    try:
        read(target)
    except Exception:  # whatever the reader refuses is not a file we wrote
        raise ValueError(
            f"{path} exists and is not {what}: it was left as it is; choose another output file, or "
            "delete this one first if you mean to replace it"
        ) from None


def open_for_reading(path: str | os.PathLike):
    """``open(path, "rb")``, with a refusal by the file system turned into a one-line ``ValueError``.

    A file the user may not read is the user's to fix, and must not surface as a traceback or be
    reported by a parser as damaged.
    """
    try:
        return open(path, "rb")
    except PermissionError:
        raise ValueError(
            f"cannot read {path}: permission denied; give your user read access (chmod +r) or copy the file"
        ) from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder where a file was expected") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


#: The files of a checkpoint folder, by which a folder holding one is recognised.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "quantized.json",
                    "params.json", "pytorch_model.bin")


def refuse_checkpoint_folder(directory: str | os.PathLike) -> None:
    """Refuse to write a new checkpoint into ``directory`` when it already holds one, or is a file.

    ``llama convert`` writes ``config.json`` and ``model.safetensors``: into a folder of the
    user's own model they replaced both. Checked before the source is read, so a refusal costs
    nothing; the files are left as they are.

    Raises:
        ValueError: ``directory`` is a file.
        FileExistsError: it holds one of :data:`CHECKPOINT_FILES` (the message names it).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a folder; choose a folder to write the checkpoint into")
    for name in CHECKPOINT_FILES:
        if (directory / name).exists() or (directory / name).is_symlink():
            raise FileExistsError(f"{directory / name} exists: it was left as it is; choose an empty or new folder "
                                  "to write the checkpoint into")
