"""Fixtures of the browser's tests: one app factory, a synthetic trace with fixed
timestamps (for snapshots), a trace recorded live from the passthrough filesystem (for
following a real backing id), and helpers that read what the screen shows."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from inspector.testing import fuse_available
from traces.testing import synthetic_trace
from tui.app import BrowseApp
from tui.widgets import LifecyclePanel, MessageList

REPO = Path(__file__).resolve().parents[2]
SIZE = (150, 42)


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


def make_app(path: Path, **kwargs: Any) -> BrowseApp:
    return BrowseApp(str(path), **kwargs)


async def settle(pilot: Pilot[Any], until: Callable[[], bool] | None = None,
                 timeout: float = 30.0) -> None:
    """Let workers finish and the screen repaint; with `until`, wait for that too (the
    lifecycle analysis ends in its own time)."""
    app = pilot.app
    deadline = time.monotonic() + timeout
    while True:
        await app.workers.wait_for_complete()
        await pilot.pause()
        model = app.model  # type: ignore[attr-defined]
        ready = model.complete and (until is None or until())
        if ready:
            await pilot.pause(0.1)  # the detail pane decodes after a short debounce
            return
        if time.monotonic() > deadline:
            raise AssertionError("the browser did not get there in time")
        await pilot.pause(0.05)


async def analysed(pilot: Pilot[Any]) -> None:
    await settle(pilot, lambda: pilot.app.model.analysis is not None)  # type: ignore[attr-defined]


def shown_rows(app: BrowseApp) -> list[str]:
    """The message list's lines as they are drawn (blank lines left out)."""
    messages = app.main.query_one(MessageList)
    lines = [messages.render_line(y).text.rstrip() for y in range(messages.size.height)]
    return [line for line in lines if line.strip()]


def row_numbers(app: BrowseApp) -> list[int]:
    return [int(line.split()[0]) for line in shown_rows(app)]


def text_of(widget: Static) -> str:
    return str(widget.content)


def status(app: BrowseApp) -> str:
    return text_of(app.main.query_one("#status", Static))


def lifecycle_panel(app: BrowseApp) -> str:
    return text_of(app.main.query_one(LifecyclePanel))
