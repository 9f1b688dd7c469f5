"""``llama download`` and :func:`llama.data.sources.find_data`, on local files only (``file://`` URLs and a
server on 127.0.0.1): the registry's entries are replaced by small files of the test's own."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from helpers import REPO, local_http_server, run_console_blocks

import llama.data.sources as dl
from llama.cli.main import main


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """Every data set served from tmp_path/src as file:// URLs; no data folder, an empty cache."""
    src = tmp_path / "src"
    src.mkdir()
    fake = {}
    for d in dl.DATASETS.values():
        payload = f"stand-in for {d.filename}\n".encode() * 50
        (src / d.filename).write_bytes(payload)
        fake[d.name] = dataclasses.replace(d, url=(src / d.filename).as_uri(), sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(dl, "DATASETS", fake)
    monkeypatch.delenv("LLAMA_DATA_DIR", raising=False)
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(tmp_path / "cache"))
    # Only the environment's folders: not the data folder beside this checkout.
    monkeypatch.setattr(dl, "data_dirs", lambda: ([Path(dl.os.environ["LLAMA_DATA_DIR"])]
                                                  if dl.os.environ.get("LLAMA_DATA_DIR") else []) + [dl.cache_dir()])
    return src


def test_download_fetches_once_then_finds_it(sources, tmp_path, capsys):
    assert main(["download", "stories260K"]) == 0
    target = tmp_path / "cache" / "stories260K.bin"
    assert capsys.readouterr().out == f"downloaded {target}\n"
    assert target.read_bytes() == (sources / "stories260K.bin").read_bytes()
    (sources / "stories260K.bin").unlink()  # the source is gone: the second call must not need it
    assert main(["download", "stories260K"]) == 0
    assert capsys.readouterr().out == f"already here, not downloaded: {target}\n"
    assert dl.find_data("stories260K.bin") == target


def test_a_file_in_the_data_folder_is_not_downloaded(sources, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "tinyshakespeare.txt").write_bytes((sources / "tinyshakespeare.txt").read_bytes())
    (sources / "tinyshakespeare.txt").unlink()  # a download would fail
    monkeypatch.setenv("LLAMA_DATA_DIR", str(folder))
    assert main(["download", "tinyshakespeare"]) == 0
    assert capsys.readouterr().out == f"already here, not downloaded: {folder / 'tinyshakespeare.txt'}\n"
    assert not (tmp_path / "cache").exists()


def test_list_says_what_there_is_and_where(sources, tmp_path, capsys):
    assert main(["download", "llama2-tokenizer"]) == 0
    capsys.readouterr()
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("stories260K", "llama2-tokenizer", "tinyshakespeare"):
        assert name in out
    assert str(tmp_path / "cache" / "llama2-tokenizer.model") in out
    assert out.count("not here yet") == 2
    assert f"downloads go to {tmp_path / 'cache'}" in out


def test_http_download_from_a_local_server(sources, tmp_path, monkeypatch, capsys):
    with local_http_server(sources) as (base, hits):
        d = dl.DATASETS["stories260K"]
        monkeypatch.setitem(dl.DATASETS, "stories260K", dataclasses.replace(d, url=f"{base}/{d.filename}"))
        assert main(["download", "stories260K"]) == 0
        assert main(["download", "stories260K"]) == 0
    assert hits == ["/stories260K.bin"]  # the second call made no request
    assert capsys.readouterr().out.splitlines()[0] == f"downloaded {tmp_path / 'cache' / 'stories260K.bin'}"


def test_errors_are_one_line_naming_the_fix(sources, tmp_path, monkeypatch, capsys):
    assert main(["download", "stories260K", "gpt4"]) == 2
    err = capsys.readouterr().err
    assert err == ("llama download: error: unknown data set 'gpt4': choose one of stories260K, llama2-tokenizer, "
                   "tinyshakespeare (llama download --list)\n")
    assert not (tmp_path / "cache").exists()  # the bad name stopped everything before any download

    assert main(["download"]) == 2
    assert "--list" in capsys.readouterr().err

    (sources / "stories260K.bin").unlink()  # what an unreachable server looks like to urllib
    assert main(["download", "stories260K"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llama download: error: could not download file://")
    assert "check the network" in err and str(tmp_path / "cache" / "stories260K.bin") in err

    d = dl.DATASETS["tinyshakespeare"]
    monkeypatch.setitem(dl.DATASETS, "tinyshakespeare", dataclasses.replace(d, sha256="0" * 64))
    assert main(["download", "tinyshakespeare"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected 0000" in err and "nothing was kept" in err
    assert not (tmp_path / "cache" / "tinyshakespeare.txt").exists()


def test_find_data_refuses_a_wrong_copy(sources, tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "stories260K.bin").write_bytes(b"not the model")
    monkeypatch.setenv("LLAMA_DATA_DIR", str(folder))
    with pytest.raises(ValueError, match=r"not the published stories260K.bin .*llama download stories260K"):
        dl.find_data("stories260K.bin")
    assert dl.find_data("llama2-tokenizer.model") is None
    (folder / "notes.txt").write_text("any file")  # not a data set: found without a check
    assert dl.find_data("notes.txt") == folder / "notes.txt"


def test_data_dirs_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(tmp_path / "c"))
    assert dl.data_dirs() == [tmp_path / "d", tmp_path / "c", REPO.parent / "shared" / "data"]
    monkeypatch.delenv("LLAMA_DATA_DIR")
    assert dl.data_dirs()[0] == tmp_path / "c"


def test_the_registry_matches_the_reference_files(shared_file):
    """The published sha256 of each entry is that of the reference copy (skipped where there is none)."""
    for d in dl.DATASETS.values():
        assert dl.sha256_file(shared_file(d.filename)) == d.sha256, d.name
        assert d.url.startswith("https://")


def test_the_running_page_console_blocks_run_as_shown(sources, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    page = (REPO / "book" / "running.md").read_text(encoding="utf-8")
    run_console_blocks(page.split("\n## A tour in a minute\n")[0], capsys)  # the tour: tests/test_tour.py
