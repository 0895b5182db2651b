"""The browser driven like a person drives it (keys, clicks), asserting on what it shows.

Expectations come from the trace itself (the decoder's `fusetrace show` lines, the lead's
lifecycle analysis), never from the browser's own model.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, OptionList, Static

from inspector.lifecycles import analyse
from inspector.query import QueryContext, parse
from inspector.show import show_lines
from traces import TraceIndex, TraceReader, TraceWriter
from traces.testing import synthetic_trace
from tui.screens import ChooseSubject, HelpScreen, LifecyclesScreen, StatsScreen
from tui.widgets import ExchangeTree, HexView

from tui_support import (SIZE, analysed, lifecycle_panel, make_app, row_numbers, settle, shown_rows,
                         status, text_of, type_text)


def show_text(path: Path) -> dict[int, str]:
    """`fusetrace show`'s line of every record, by record number."""
    with TraceReader(path) as reader:
        return {int(line.split()[0]): line for line in show_lines(reader)}


def test_opens_and_shows_the_first_records(synthetic: Path) -> None:
    async def run() -> None:
        app = make_app(synthetic)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            rows = shown_rows(app)
            assert row_numbers(app) == list(range(len(rows)))
            lines = show_text(synthetic)
            for row in rows[:5]:  # same opcode, unique and fields as fusetrace show
                n, _time, arrow, opcode, unique, *_ = row.split()
                assert f" {arrow} {opcode} unique={unique}" in lines[int(n)]
            assert "400 records" in status(app)
            tree = app.main.query_one(ExchangeTree)
            assert "INIT" in str(tree.root.children[0].label)
    asyncio.run(run())


def test_keys_move_the_cursor_and_end_jumps_to_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "big.fzt"
    synthetic_trace(path, 20_000, seed=4)

    async def run() -> None:
        app = make_app(path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("j", "j", "down", "k")
            await settle(pilot)
            assert "#2" in status(app)
            await pilot.press("G")
            await settle(pilot)
            assert row_numbers(app)[-1] == 19_999
            assert "#19999" in status(app)
            await pilot.press("g")
            await settle(pilot)
            assert row_numbers(app)[0] == 0
            await pilot.press("pagedown")
            await settle(pilot)
            assert row_numbers(app)[0] > 0, "a page down scrolls"
            await pilot.click("#messages", offset=(5, 3))
            await settle(pilot)
            assert f"#{row_numbers(app)[3]}" in status(app), "a click selects the row"
    asyncio.run(run())


def test_filter_bar_narrows_the_list_and_reports_mistakes(synthetic: Path) -> None:
    async def run() -> None:
        app = make_app(synthetic)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("slash")
            box = app.main.query_one("#filter", Input)
            assert box.has_focus
            await type_text(pilot, "op=LOOKUP and err")
            await pilot.press("enter")
            await settle(pilot)
            expected = list(parse("op=LOOKUP and err").select(
                QueryContext(TraceIndex.open(synthetic))))
            assert row_numbers(app) == expected[:len(row_numbers(app))] and expected
            assert all("LOOKUP" in row for row in shown_rows(app))
            assert f"filter [op=LOOKUP and err]: {len(expected)} of 400" in status(app)
            # a mistake: the list stays, the error says where
            await pilot.press("slash", "ctrl+u")
            for key in "lat>10":
                await pilot.press(key)
            await pilot.press("enter")
            await settle(pilot)
            assert len(app._notifications) and "column 5" in list(app._notifications)[-1].message
            await pilot.press("escape", "escape")  # close the bar, then clear the filter
            await settle(pilot)
            assert row_numbers(app)[0] == 0 and "400 records" in status(app)
    asyncio.run(run())


def test_follow_a_backing_id_from_its_ioctl_to_its_close(recorded: Path) -> None:
    analysis = analyse(recorded)
    lives = [lc for lc in analysis.lifecycles("backing") if lc.verdict == "closed properly"]
    assert lives, "the passthrough filesystem registered a backing id and closed it"
    life = lives[0]

    async def run() -> None:
        app = make_app(recorded)
        async with app.run_test(size=SIZE) as pilot:
            await analysed(pilot)
            await pilot.press("slash")
            await type_text(pilot, "op=BACKING_OPEN")
            await pilot.press("enter")
            await settle(pilot)
            assert row_numbers(app)[0] == life.records[0]
            await pilot.press("f")
            await settle(pilot)
            if isinstance(app.screen, ChooseSubject):  # the ioctl names several ids
                options = app.screen.query_one(OptionList)
                wanted = next(i for i in range(options.option_count)
                              if options.get_option_at_index(i).id == f"backing:{life.key}")
                options.highlighted = wanted
                await pilot.press("enter")
                await settle(pilot)
            assert row_numbers(app) == sorted(set(life.records))
            rows = shown_rows(app)
            assert "BACKING_OPEN" in rows[0] and "BACKING_CLOSE" in rows[-1]
            assert any(" OPEN " in r or " CREATE " in r for r in rows)
            assert any("RELEASE" in r for r in rows)
            assert f"following backing id {life.key}: event 1/{len(rows)}" in status(app)
            panel = lifecycle_panel(app)
            assert "verdict: closed properly" in panel and f"▶ #{life.records[0]} " in panel
            for step in range(2, len(rows) + 1):
                await pilot.press("n")
                await settle(pilot)
                assert f"event {step}/{len(rows)}" in status(app)
            assert f"▶ #{life.records[-1]} " in lifecycle_panel(app)
            tree = app.main.query_one(ExchangeTree)
            assert "BACKING_CLOSE" in str(tree.root.children[0].label)
            await pilot.press("p")
            await settle(pilot)
            assert f"event {len(rows) - 1}/{len(rows)}" in status(app)
            await pilot.press("escape")  # back to the filtered list
            await settle(pilot)
            assert "following" not in status(app) and "filter [op=BACKING_OPEN]" in status(app)
    asyncio.run(run())


def test_detail_tree_selects_bytes_in_the_hex_view(recorded: Path) -> None:
    life_id = analyse(recorded).lifecycles("backing")[0].key

    async def run() -> None:
        app = make_app(recorded)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("slash")
            await type_text(pilot, "op=OPEN and kind=reply")
            await pilot.press("enter")
            await settle(pilot)
            await pilot.press("enter")  # into the decoded tree
            await settle(pilot)
            tree = app.main.query_one(ExchangeTree)
            assert tree.has_focus
            labels = [str(tree.root.children[i].label) for i in range(len(tree.root.children))]
            assert labels[0].startswith("request #") and labels[1].startswith("reply #")
            # walk down to the reply's backing_id field
            for _ in range(200):
                node = tree.cursor_node
                if node is not None and str(node.label).startswith("backing_id"):
                    break
                await pilot.press("down")
            assert node is not None and str(node.label).startswith("backing_id")
            await settle(pilot)
            hexview = app.main.query_one(HexView)
            text = hexview.content  # a rich Text: the marked bytes are its spans
            part, start, end = node.data
            field_bytes = tree.parts[part].data[start:end]
            assert field_bytes == life_id.to_bytes(4, "little")
            marked = [text.plain[s.start:s.end] for s in text.spans]
            assert field_bytes.hex(" ") in marked, "the field's bytes are highlighted"
    asyncio.run(run())


def test_lifecycles_stats_and_help_screens(recorded: Path) -> None:
    analysis = analyse(recorded)

    async def run() -> None:
        app = make_app(recorded)
        async with app.run_test(size=SIZE) as pilot:
            await analysed(pilot)
            await pilot.press("l")
            await settle(pilot)
            assert isinstance(app.screen, LifecyclesScreen)
            table = app.screen.query_one(DataTable)
            total = sum(len(analysis.lifecycles(k)) for k in ("backing", "fh", "node"))
            assert table.row_count == total
            await pilot.press("b")  # backing ids only
            await settle(pilot)
            assert table.row_count == len(analysis.lifecycles("backing"))
            first = table.get_row_at(0)
            await pilot.press("enter")  # follow it
            await settle(pilot)
            assert app.screen is app.main
            assert f"following backing id {first[1]}" in status(app)
            await pilot.press("s")
            await settle(pilot, lambda: isinstance(app.screen, StatsScreen)
                          and app.screen.query_one(DataTable).row_count > 0)
            names = [str(app.screen.query_one(DataTable).get_row_at(i)[0])
                     for i in range(app.screen.query_one(DataTable).row_count)]
            assert "LOOKUP" in names and "OPEN" in names
            assert "p99 latency by opcode" in text_of(app.screen.query_one("#bars", Static))
            await pilot.press("escape", "question_mark")
            await settle(pilot)
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await settle(pilot)
            assert app.screen is app.main
    asyncio.run(run())


def test_leaks_come_first_in_the_lifecycles_screen(tmp_path: Path) -> None:
    path = tmp_path / "cut.fzt"
    synthetic_trace(path, 2000, seed=9)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])  # recorder killed: ids still open at the end
    analysis = analyse(path)
    worst = {lc.verdict for k in ("backing", "fh", "node") for lc in analysis.lifecycles(k)}

    async def run() -> None:
        app = make_app(path)
        async with app.run_test(size=SIZE) as pilot:
            await analysed(pilot)
            await pilot.press("l")
            await settle(pilot)
            table = app.screen.query_one(DataTable)
            verdicts = [str(table.get_row_at(i)[4]) for i in range(table.row_count)]
            order = ["leaked", "misused", "still open at end of trace", "closed properly"]
            ranks = [order.index(v) for v in verdicts]
            assert ranks == sorted(ranks) and set(verdicts) == worst
            # a click on the "events" title sorts by it, a second click reverses
            x = sum(col.get_render_width(table) for col in list(table.columns.values())[:5]) + 2
            for descending in (False, True):
                await pilot.click(table, offset=(x, 0))
                await settle(pilot)
                events = [int(str(table.get_row_at(i)[5])) for i in range(table.row_count)]
                assert events == sorted(events, reverse=descending) and len(set(events)) > 1
    asyncio.run(run())


@pytest.mark.parametrize("cut", ["tail", "garbage"])
def test_a_damaged_trace_opens_up_to_its_last_good_record(tmp_path: Path, cut: str) -> None:
    path = tmp_path / "damaged.fzt"
    synthetic_trace(path, 300, seed=2)
    data = path.read_bytes()
    if cut == "tail":
        data = data[:-7]
    else:
        middle = len(data) // 2
        data = data[:middle] + b"\xc1" * 64 + data[middle:]
    path.write_bytes(data)
    good = TraceIndex.open(path, cache_dir=tmp_path)

    async def run() -> None:
        app = make_app(path)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            notice = text_of(app.main.query_one("#notice", Static))
            assert "Showing records up to the last good one" in notice
            assert f"after {len(good)} good records" in notice
            await pilot.press("G")
            await settle(pilot)
            assert row_numbers(app)[-1] == len(good) - 1
    asyncio.run(run())


def test_live_mode_shows_records_as_they_are_written(tmp_path: Path) -> None:
    source = tmp_path / "source.fzt"
    synthetic_trace(source, 600, seed=6)
    records = list(TraceReader(source))
    path = tmp_path / "live.fzt"
    writer = TraceWriter(path, {"source": "test"})

    def write(part: list) -> None:
        for rec in part:
            if rec.is_request:
                writer.request(rec.raw, ts=rec.ts, **rec.meta)
            elif rec.is_reply:
                writer.reply(rec.raw, ts=rec.ts, **rec.meta)
            elif rec.is_ioctl:
                writer.ioctl(ts=rec.ts, **rec.meta)
            else:
                writer.event(rec.meta["event"], ts=rec.ts, **{k: v for k, v in rec.meta.items()
                                                              if k != "event"})

    write(records[:100])

    async def run() -> None:
        app = make_app(path, live=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert "100 records" in status(app)
            await pilot.press("G")
            write(records[100:450])
            await settle(pilot, lambda: app.model.known == 450)  # type: ignore[attr-defined]
            await pilot.pause(0.2)
            assert "450 records" in status(app)
            assert row_numbers(app)[-1] == 449, "at the end, the list follows new records"
            assert "LIVE" in status(app)
    try:
        asyncio.run(run())
    finally:
        writer.close()


@pytest.mark.parametrize("content, message", [
    (b"garbage", "not a fusetrace trace"),
    (None, "no such file"),
])
def test_browse_refuses_what_is_not_a_trace_in_one_line(tmp_path: Path, content: bytes | None,
                                                        message: str) -> None:
    path = tmp_path / "x.fzt"
    if content is not None:
        path.write_bytes(content)
    res = subprocess.run([sys.executable, "-m", "inspector.cli", "browse", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith("fusetrace: error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, "one line, no traceback"
