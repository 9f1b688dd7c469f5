"""The atomic writer every ``-o``/``--out`` goes through: what it replaces, what it refuses, the modes it gives."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from helpers import llama_as_nobody_each, run_as_nobody

from llama._files import atomic_write_text, make_temp_dir


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temporary file left


def test_a_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "gone.json")
    with pytest.raises(ValueError, match=r"link.json is a symbolic link to .*gone.json, which does not exist"):
        atomic_write_text(link, "new")
    assert link.is_symlink() and not (tmp_path / "gone.json").exists()


def test_a_fifo_is_refused_and_kept(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe is not a regular file .*: it was left as it is; give the path of a"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_a_device_is_refused_and_kept(tmp_path):
    # A copy of /dev/null's device node in tmp_path: the real one must not be at risk in a test.
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as err:
        pytest.skip(f"cannot make a device node here ({err}); the FIFO test covers the same path")
    with pytest.raises(ValueError, match=r"null is not a regular file \(a device"):
        atomic_write_text(null, "x")
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_a_folder_is_refused_and_kept(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"out is a folder: it was left as it is"):
        atomic_write_text(folder, "x")
    assert (folder / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("mask,file_mode,folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_new_files_and_folders_get_the_modes_the_umask_gives(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    atomic_write_text(tmp_path / "new.json", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == file_mode
    assert stat.S_IMODE(os.stat(make_temp_dir(tmp_path, ".t.")).st_mode) == folder_mode


@pytest.mark.parametrize("mode", [0o640, 0o444, 0o755])
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, mode):
    umask(0o022)
    path = tmp_path / "old.json"
    path.write_text("old")
    os.chmod(path, mode)
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_a_downloaded_file_gets_the_umask_mode_not_0600(tmp_path, umask):
    import hashlib

    from llama.data.sources import cached_download

    umask(0o022)
    source = tmp_path / "text.txt"
    source.write_bytes(b"to be")
    path = cached_download(source.as_uri(), hashlib.sha256(b"to be").hexdigest(), directory=tmp_path / "cache")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


@pytest.fixture
def public_dir():
    """A folder everyone may enter but only its owner may write, outside pytest's private tmp_path."""
    root = Path(tempfile.mkdtemp())
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # a fresh interpreter imports every module of the package, then runs as nobody
def test_an_unwritable_folder_is_a_one_line_error(public_dir):
    proc = run_as_nobody("from pathlib import Path\nfrom llama._files import atomic_write_text\n"
                         "try:\n    atomic_write_text(Path(sys.argv[1]), 'x')\n"
                         "except ValueError as err:\n    print(err)\n    sys.exit(3)\n", str(public_dir / "tok.json"))
    assert proc.returncode == 3, proc.stderr  # the ValueError, and no other exception
    assert proc.stdout == (f"cannot write {public_dir / 'tok.json'}: permission denied in {public_dir}; "
                           "choose a folder your user may write to\n")
    assert list(public_dir.iterdir()) == []


@pytest.mark.slow  # a fresh interpreter imports every module of the package, then runs as nobody
def test_an_unreadable_tokenizer_is_a_one_line_error(public_dir):
    path = public_dir / "tok.json"
    path.write_text("{}")
    os.chmod(path, 0)
    [(status, err)] = llama_as_nobody_each([["tokenize", "encode", "-t", str(path), "hello"]])
    assert status == 2, err
    assert err == (f"llama tokenize: error: cannot read {path}: permission denied; give your "
                   "user read access (chmod +r) or copy the file\n")
