"""Snapshots of the main screens on a synthetic trace (fixed seed, fixed timestamps), so
they are the same on every run; `pytest --snapshot-update` after an intended change."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from textual.pilot import Pilot
from textual.widgets import DataTable

from tui_support import SIZE, analysed, make_app, settle


def typed(text: str) -> list[str]:
    return ["space" if c == " " else c for c in text]


def ready(*keys: str, until: Callable[[Pilot[Any]], bool] | None = None):  # type: ignore[no-untyped-def]
    """Wait for the index and the analysis, press `keys`, let everything settle."""
    async def run_before(pilot: Pilot[Any]) -> None:
        await analysed(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        if until is not None:
            await settle(pilot, lambda: until(pilot))
    return run_before


def test_main_screen(snap_compare: Any, synthetic: Path) -> None:
    assert snap_compare(make_app(synthetic), terminal_size=SIZE,
                        run_before=ready("j", "j", "j", "j", "j"))


def test_filtered(snap_compare: Any, synthetic: Path) -> None:
    keys = ["slash", *typed("op=LOOKUP and err"), "enter"]
    assert snap_compare(make_app(synthetic), terminal_size=SIZE, run_before=ready(*keys))


def test_following_a_backing_id(snap_compare: Any, synthetic: Path) -> None:
    keys = ["slash", *typed("op=BACKING_OPEN"), "enter", "f", "n"]
    assert snap_compare(make_app(synthetic), terminal_size=SIZE, run_before=ready(*keys))


def test_lifecycles_screen(snap_compare: Any, synthetic: Path) -> None:
    assert snap_compare(make_app(synthetic), terminal_size=SIZE, run_before=ready("l"))


def test_stats_screen(snap_compare: Any, synthetic: Path) -> None:
    def filled(pilot: Pilot[Any]) -> bool:
        tables = pilot.app.screen.query(DataTable)
        return bool(tables) and tables.first().row_count > 0

    assert snap_compare(make_app(synthetic), terminal_size=SIZE,
                        run_before=ready("s", until=filled))


def test_help_screen(snap_compare: Any, synthetic: Path) -> None:
    assert snap_compare(make_app(synthetic), terminal_size=SIZE, run_before=ready("question_mark"))
