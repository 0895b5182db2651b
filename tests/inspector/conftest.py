"""Fixtures of the recorder's tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from inspector.testing import is_mounted
from record_support import assert_no_strays


@pytest.fixture
def isolated(requires_fuse: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's directory, with fusetrace's run directory inside it (so `cleanup` sees
    only this test's notes); no process mentioning it may outlive the test."""
    monkeypatch.setenv("FUSETRACE_RUNDIR", str(tmp_path / "run"))
    yield tmp_path
    assert_no_strays(str(tmp_path))


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory an ordinary user can use (pytest's tmp dirs are root's alone)."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root and setpriv to become an ordinary user")
    path = Path(tempfile.mkdtemp(prefix="fusetrace-nobody-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        if is_mounted(path / "mnt"):
            subprocess.run(["umount", "-l", str(path / "mnt")], timeout=30)
        shutil.rmtree(path, ignore_errors=True)
