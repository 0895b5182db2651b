"""The real `fusetrace browse` in a real terminal (tmux), read back with capture-pane."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from traces.testing import synthetic_trace

REPO = Path(__file__).resolve().parents[2]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout


def screen_when(session: str, wanted: str, timeout: float = 30.0) -> str:
    """The pane's text once it shows `wanted` (fails with the last screen otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        text = tmux("capture-pane", "-p", "-t", session)
        if wanted in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"never showed {wanted!r}; the screen was:\n{text}")
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_browse_in_a_real_terminal(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    trace = tmp_path / "session.fzt"
    synthetic_trace(trace, 5000, seed=8)
    session = f"fusetrace-test-{tmp_path.name}"
    # COLUMNS/LINES from pytest's environment would override the pane's real size
    command = (f"cd {REPO} && env -u COLUMNS -u LINES XDG_CACHE_HOME={tmp_path / 'cache'} "
               f"{sys.executable} -m inspector.cli browse {trace}; echo browse-exited-$?; sleep 60")
    tmux("new-session", "-d", "-s", session, "-x", "150", "-y", "40", command)
    try:
        first = screen_when(session, "5,000 records")
        assert "session.fzt" in first
        assert " -> INIT " in first and " <- INIT " in first
        assert "Filter" in first and "Follow" in first, "the footer lists the keys"
        tmux("send-keys", "-t", session, "G")
        last = screen_when(session, "#4999")
        assert "session_end" in last
        tmux("send-keys", "-t", session, "/")
        screen_when(session, "Enter applies")  # the bar has opened (and has the focus)
        time.sleep(0.3)
        tmux("send-keys", "-t", session, "-l", "op=BACKING_CLOSE")
        tmux("send-keys", "-t", session, "Enter")
        filtered = screen_when(session, "filter [op=BACKING_CLOSE]")
        rows = [line for line in filtered.splitlines() if " io BACKING_" in line]
        assert rows and all("BACKING_CLOSE" in line for line in rows)
        tmux("send-keys", "-t", session, "q")
        screen_when(session, "browse-exited-0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
