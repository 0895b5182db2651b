"""Fixtures of the browser's tests: a synthetic trace with fixed timestamps (for
snapshots) and a trace recorded live from the passthrough filesystem (for following a
real backing id). Helpers are in `tui_support`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inspector.testing import fuse_available
from traces.testing import synthetic_trace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Index caches that cannot go beside a trace land in the test's directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """400 records, always the same ones (fixed seed, fixed timestamps)."""
    path = tmp_path / "trace.fzt"
    synthetic_trace(path, 400, seed=3)
    return path


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real session of the project's passthrough filesystem, recorded through the proxy
    by `fusetrace demo -w` (BACKING_OPEN, passthrough opens, releases, BACKING_CLOSE)."""
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE mounts unavailable: {reason}")
    path = tmp_path_factory.mktemp("recorded") / "demo.fzt"
    res = subprocess.run([sys.executable, "-m", "inspector.cli", "demo", "-w", str(path)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return path
