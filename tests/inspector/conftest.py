"""Fixtures of the recorder's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from record_support import assert_no_strays


@pytest.fixture
def isolated(requires_fuse: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's directory, with fusetrace's run directory inside it (so `cleanup` sees
    only this test's notes); no process mentioning it may outlive the test."""
    monkeypatch.setenv("FUSETRACE_RUNDIR", str(tmp_path / "run"))
    yield tmp_path
    assert_no_strays(str(tmp_path))
