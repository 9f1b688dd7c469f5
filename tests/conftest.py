"""Shared fixtures: where the reference artifacts live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The folder with the reference artifacts (``LLAMA_DATA_DIR``, default ``../shared/data``)."""
    return Path(os.environ.get("LLAMA_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_file():
    """Return a function ``shared_file(name) -> Path`` that skips the test when the file is absent."""

    def find(name: str) -> Path:
        path = shared_data_dir() / name
        if not path.is_file():
            pytest.skip(f"{name} not found in {shared_data_dir()} (set LLAMA_DATA_DIR to the folder that has it)")
        return path

    return find
