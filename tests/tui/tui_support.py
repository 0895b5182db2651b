"""What the browser's tests share: the app factory, waiting for the app to settle, and
reading what the screen shows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from textual.pilot import Pilot
from textual.widgets import Static

from tui.app import BrowseApp
from tui.widgets import LifecyclePanel, MessageList

SIZE = (150, 42)


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
        detail = app.main.detail_record  # type: ignore[attr-defined]
        ready = (model.complete and (until is None or until())
                 and model.selected in (None, detail))  # the detail pane decodes after a pause
        if ready:
            await pilot.pause()
            return
        if time.monotonic() > deadline:
            raise AssertionError("the browser did not get there in time")
        await pilot.pause(0.05)


async def analysed(pilot: Pilot[Any]) -> None:
    await settle(pilot, lambda: pilot.app.model.analysis is not None)  # type: ignore[attr-defined]


async def type_text(pilot: Pilot[Any], text: str) -> None:
    """Type `text` key by key, as a person would (a space is the "space" key)."""
    for key in text:
        await pilot.press(key if key != " " else "space")


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
