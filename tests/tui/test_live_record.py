"""`fusetrace browse --live` on a trace that `fusetrace record` is writing right now."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from inspector.testing import recorded_server

from tui_support import SIZE, make_app, row_numbers, settle, shown_rows, status, type_text

PASSTHROUGHFS = [sys.executable, "-m", "inspector.passthroughfs"]


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_live_view_follows_a_recording_in_progress(tmp_path: Path) -> None:
    src, mnt, trace = tmp_path / "source", tmp_path / "mnt", tmp_path / "live.fzt"
    src.mkdir()
    mnt.mkdir()
    (src / "before.txt").write_text("here before the mount\n")

    def workload() -> None:
        for i in range(20):
            (mnt / f"new{i}.txt").write_text(f"file {i}\n")

    with recorded_server([*PASSTHROUGHFS, str(src), str(mnt)], mnt, trace) as rec:
        async def run() -> None:
            app = make_app(trace, live=True)
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot)
                assert "LIVE" in status(app)
                first = app.model.known
                await pilot.press("G")
                await asyncio.to_thread(workload)
                await settle(pilot, lambda: app.model.known >= first + 20 * 4)
                # the server may still be answering: the view keeps up with what arrives
                await settle(pilot, lambda: row_numbers(app)[-1] == app.model.known - 1)
                assert row_numbers(app)[-1] > first + 20 * 4 - 1, "the view stays at the end"
                await pilot.press("slash")
                await type_text(pilot, "kind=request and op=CREATE")
                await pilot.press("enter", "G")
                await settle(pilot)
                assert "filter [kind=request and op=CREATE]: 20 of " in status(app)
                names = [row.split("name=")[1].split()[0] for row in shown_rows(app)]
                assert names == [f"'new{i}.txt'" for i in range(20 - len(names), 20)]
        asyncio.run(run())
        assert rec.unmount_and_wait() == 0
