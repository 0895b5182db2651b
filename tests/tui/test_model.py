"""The browser's model without any widget: what it shows, where the cursor goes, what it
signals, and how following a lifecycle narrows and restores the list."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.lifecycles import analyse
from inspector.query import parse
from traces import TraceIndex
from traces.testing import synthetic_trace
from tui.loading import open_early
from tui.model import BrowseModel


@pytest.fixture
def model(synthetic: Path) -> BrowseModel:
    m = BrowseModel(str(synthetic))
    m.attach(TraceIndex.open(synthetic))
    assert m.pairs is not None
    m.pairs.update()
    m.indexed()
    m.set_analysis(analyse(synthetic))
    return m


def test_changes_are_signalled(model: BrowseModel) -> None:
    seen: list[str] = []
    model.subscribe(seen.append)
    model.move_by(3)
    model.move_by(0)  # nothing moved: nothing said
    assert seen == ["cursor"] and model.selected == 3
    model.move_to(10_000)
    assert model.selected == model.count - 1 == 399


def test_a_filter_keeps_the_cursor_near_its_record(model: BrowseModel) -> None:
    model.move_to(200)
    query = parse("op=OPEN,RELEASE")
    shown = query.select(model.context())
    model.set_filter(query, shown)
    assert model.count == len(shown)
    assert model.selected == next(i for i in shown if i >= 200)
    model.set_filter(None, None)
    assert model.count == 400 and model.selected == next(i for i in shown if i >= 200)


def test_follow_narrows_to_the_lifecycle_and_unfollow_restores_the_list(
        model: BrowseModel, synthetic: Path) -> None:
    life = analyse(synthetic).lifecycles("backing")[0]
    query = parse("kind=ioctl")
    model.set_filter(query, query.select(model.context()))
    model.go_to_record(life.records[0])
    seen: list[str] = []
    model.subscribe(seen.append)
    assert ("backing", life.key) in model.subjects(life.records[0])
    model.follow("backing", life.key, life.records[0])
    assert list(model.shown or []) == sorted(set(life.records))
    assert model.follow_position == (1, len(set(life.records)))
    assert {"follow", "rows", "cursor"} <= set(seen)
    for _ in life.records:
        model.step(1)
    assert model.selected == life.records[-1], "n stops at the last event"
    model.unfollow()
    assert model.query is query and model.following is None
    assert model.selected == next(i for i in query.select(model.context())
                                  if i >= life.records[-1])


def test_rows_show_while_the_index_is_being_built(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    synthetic_trace(path, 30_000, seed=1)
    model = BrowseModel(str(path))
    visible: list[int] = []

    def progress(done: int, total: int) -> None:
        model.building(done, total)
        if model.known and not visible:
            visible.append(model.known)
            assert model.rows is not None
            row = model.rows.row(model.known - 1)  # the newest readable row decodes
            assert row.number == model.known - 1

    idx = open_early(path, model.attach, progress)
    assert visible and visible[0] < len(idx) == 30_000, "rows were readable before the end"
    model.indexed()
    assert model.known == model.count == 30_000
