"""Fixtures of the recorder's tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from inspector.testing import is_mounted
from private_host import give_to_nobody, private_host
from record_support import assert_no_strays


@pytest.fixture
def isolated(requires_fuse: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's directory, with fusetrace's run directory inside it (so `cleanup` sees
    only this test's notes); no process mentioning it may outlive the test."""
    monkeypatch.setenv("FUSETRACE_RUNDIR", str(tmp_path / "run"))
    yield tmp_path
    assert_no_strays(str(tmp_path))


@pytest.fixture
def nobody_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory of user nobody's own, the test running in a private mount namespace
    (`private_host`): there /dev/fuse is a node of the test's own that it may chmod, and
    nobody can reach this checkout's interpreter wherever it lives. The host's /dev/fuse,
    /tmp and mounts are left as they were."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root and setpriv to become an ordinary user")
    path, scratch = tmp_path / "nobody", tmp_path / "dev"
    path.mkdir(mode=0o700)
    scratch.mkdir(mode=0o700)
    (path / ".cache").mkdir()
    give_to_nobody(path, path / ".cache")
    monkeypatch.setenv("FUSETRACE_RUNDIR", str(path / "run"))
    monkeypatch.setenv("HOME", str(path))  # setpriv keeps the environment: caches go here
    monkeypatch.setenv("XDG_CACHE_HOME", str(path / ".cache"))
    with private_host(scratch, [path], os.stat("/dev/fuse").st_mode & 0o777):
        try:
            yield path
        finally:
            if is_mounted(path / "mnt"):
                subprocess.run(["umount", "-l", str(path / "mnt")], timeout=30)
