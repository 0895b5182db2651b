"""The main screen's widgets. They read the `BrowseModel` and call its methods; none of
them keeps trace state of its own beyond caches.

`MessageList` is a line-API `ScrollView`: its virtual height is the number of rows shown
and `render_line` decodes only the rows on screen (through the `RowMaker` LRU cache), so
a million-record trace scrolls like a short one.
"""

from __future__ import annotations

from typing import Any

from rich.segment import Segment
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static, Tree

from .actions import bindings
from .decoded import Part, Span, hexdump_lines
from .model import BrowseModel
from .rows import COLUMNS

_FIXED = sum(w for _, w in COLUMNS) + len(COLUMNS) - 1  # the summary's width comes on top
_TONES = ("error", "anomaly", "ioctl", "event", "notify")


def fit(text: str, width: int, right: bool = False) -> str:
    if len(text) > width:
        return text[:max(width - 1, 0)] + "…" if width > 0 else ""
    return text.rjust(width) if right else text.ljust(width)


def line_cells(cells: tuple[str, ...], width: int) -> str:
    """One row's cells laid out in the list's columns for a list `width` cells wide."""
    summary = max(width - _FIXED, 10)
    out = []
    for (title, w), text in zip(COLUMNS, cells):
        right = title in ("#", "time", "unique", "nodeid", "latency")
        out.append(fit(text, w or summary, right))
    return " ".join(out)


class ColumnTitles(Static):
    """The list's column titles, laid out like its rows."""

    def render(self) -> Text:
        return Text(line_cells(tuple(t for t, _ in COLUMNS), self.size.width))


class MessageList(ScrollView, can_focus=True):
    """The records shown, one line each, with a cursor."""

    BINDINGS = bindings("list")
    COMPONENT_CLASSES = {"messages--cursor", *(f"messages--{t}" for t in _TONES)}

    class Activated(Message):
        """Enter or a double click on a row."""

    def __init__(self, model: BrowseModel, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def sync(self) -> None:
        """The number of rows changed: resize the virtual canvas."""
        self.virtual_size = Size(self.size.width, self.model.count)
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(event.size.width, self.model.count)
        self.keep_cursor_visible()

    def keep_cursor_visible(self) -> None:
        self._scroll_to_cursor()
        # again once the layout settled: a pane that appeared may have taken some lines
        self.call_after_refresh(self._scroll_to_cursor)

    def _scroll_to_cursor(self) -> None:
        height = self.scrollable_content_region.height or self.size.height
        top = round(self.scroll_offset.y)
        cur = self.model.cursor
        if cur < top:
            self.scroll_to(y=cur, animate=False, immediate=True)
        elif height and cur >= top + height:
            self.scroll_to(y=cur - height + 1, animate=False, immediate=True)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        model, width = self.model, self.scrollable_content_region.width or self.size.width
        pos = round(self.scroll_offset.y) + y
        base = self.rich_style
        if model.rows is None or pos >= model.count:
            return Strip.blank(width, base)
        number = model.number_at(pos)
        row = model.rows.row(number)
        tone = "anomaly" if number in model.anomalous else row.tone
        style = base
        if tone:
            style = base + self.get_component_rich_style(f"messages--{tone}")
        if pos == model.cursor:
            style = style + self.get_component_rich_style("messages--cursor")
        text = line_cells(row.cells(), width)
        return Strip([Segment(fit(text, width), style)], width)

    @property
    def page(self) -> int:
        return max((self.scrollable_content_region.height or self.size.height) - 1, 1)

    def action_cursor_down(self) -> None:
        self.model.move_by(1)

    def action_cursor_up(self) -> None:
        self.model.move_by(-1)

    def action_page_down(self) -> None:
        self._page(self.page)

    def action_page_up(self) -> None:
        self._page(-self.page)

    def _page(self, delta: int) -> None:
        """Scroll a page and move the cursor as far, like a pager."""
        top = round(self.scroll_offset.y)
        self.scroll_to(y=max(0, min(top + delta, self.max_scroll_y)), animate=False,
                       immediate=True)
        self.model.move_by(delta)

    def action_first(self) -> None:
        self.model.move_to(0)

    def action_last(self) -> None:
        self.model.move_to(self.model.count - 1)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        self.model.move_to(round(self.scroll_offset.y) + offset.y)
        if event.chain >= 2:
            self.post_message(self.Activated())

    def on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            self.post_message(self.Activated())


class ExchangeTree(Tree[tuple[int, int | None, int | None]]):
    """The selected record and the other half of its exchange, as decoded trees; each
    node's data is (part, start, end) for the hex view."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("nothing selected", **kwargs)
        self.show_root = False
        self.guide_depth = 2
        self.parts: list[Part] = []

    def show_parts(self, parts: list[Part], selected: int) -> None:
        self.parts = parts
        self.clear()
        first = None
        for n, part in enumerate(parts):
            node = self._add(self.root, part.tree, n, expand_depth=2)
            if part.record.index == selected:
                first = node
        self.root.expand()
        if first is not None:
            self.move_cursor(first)

    def _add(self, parent: Any, span: Span, part: int, expand_depth: int) -> Any:
        data = (part, span.start, span.end)
        if not span.children:
            return parent.add_leaf(span.label, data)
        node = parent.add(span.label, data, expand=expand_depth > 0)
        for child in span.children:
            self._add(node, child, part, expand_depth - 1)
        return node


class HexView(Static):
    """Hex dump of one message with the selected field's bytes highlighted."""

    COMPONENT_CLASSES = {"hex--mark"}
    LIMIT = 4096  # bytes shown around the highlight: a whole 1 MiB WRITE would not help

    def show_bytes(self, title: str, data: bytes, start: int | None, end: int | None) -> None:
        lo = 0
        if len(data) > self.LIMIT:
            lo = max(0, min((start or 0) - 256, len(data) - self.LIMIT)) & ~15
        window = data[lo:lo + self.LIMIT]
        mark = self.get_component_rich_style("hex--mark")
        text = Text(f"{title}  ({len(data)} bytes)\n", style="bold")
        for line, marks in hexdump_lines(window, start, end, origin=lo):
            piece = Text(line)
            for a, b in marks:
                piece.stylize(mark, a, b)
            text.append_text(piece)
            text.append("\n")
        if lo + self.LIMIT < len(data):
            text.append(f"… {len(data) - lo - self.LIMIT} more bytes", style="dim")
        if not data:
            text.append("(no bytes: an event the recorder noted)", style="dim")
        self.update(text, layout=False)  # fixed size: repaint only


class LifecyclePanel(Static):
    """Where the followed lifecycle is: its events, the one under the cursor, its verdict."""

    def show_model(self, model: BrowseModel) -> None:
        f = model.following
        if f is None:
            self.update("", layout=False)
            return
        lc = f.lifecycle
        at = model.selected
        pos = model.follow_position or (0, 0)
        verdict_style = "green" if lc.verdict == "closed properly" else "bold red"
        text = Text()
        text.append(f"{lc.name}", style="bold")
        if lc.label:
            text.append(f"  {lc.label}")
        text.append(f"\nevent {pos[0]} of {pos[1]}   state: {lc.state}\n")
        text.append("verdict: ")
        text.append(lc.verdict, style=verdict_style)
        text.append("\n\n")
        for e in lc.events:
            here = e.index == at
            line = f"{'▶' if here else ' '} #{e.index:<7} {e.what} {e.detail}\n"
            text.append(line, style="reverse" if here else "")
        for a in lc.anomalies:
            text.append(f"\n! {a.code}: {a.message}\n", style="bold red")
        self.update(text)
