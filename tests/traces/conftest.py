"""Fixtures for trace tests: a private cache home and a small trace of every kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from trace_helpers import write_small


@pytest.fixture(autouse=True)
def private_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Index caches that fall back to the cache home go to a temp dir, not ~/.cache."""
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, list[tuple[int, int]]]:
    path = tmp_path / "small.fzt"
    return path, write_small(path)
