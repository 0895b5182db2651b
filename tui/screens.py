"""Screens: the main list with its detail, hex and lifecycle panes; the lifecycles table;
the stats; help; and the small dialog that asks which id to follow."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, OptionList, ProgressBar, Sparkline, Static, Tree
from textual.widgets.option_list import Option

from inspector.query import FIELD_NAMES, QueryError, parse

from .actions import ACTIONS, bindings, key_label
from .decoded import exchange
from .model import BrowseModel
from .widgets import ColumnTitles, ExchangeTree, HexView, LifecyclePanel, MessageList

if TYPE_CHECKING:
    from inspector.lifecycles import Lifecycle

    from .app import BrowseApp

_SUBJECT_NAMES = {"backing": "backing id", "fh": "file handle", "node": "node id",
                  "request": "request (unique)"}
_VERDICT_ORDER = {"leaked": 0, "misused": 1, "still open at end of trace": 2, "closed properly": 3}


class MainScreen(Screen[None]):
    """The record list, the decoded exchange, its bytes, and the followed lifecycle."""

    BINDINGS = bindings("main")

    def __init__(self, model: BrowseModel) -> None:
        super().__init__()
        self.model = model
        self._detail_for: int | None = None
        self._detail_timer: Timer | None = None

    @property
    def detail_record(self) -> int | None:
        """The record the detail pane shows (it follows the cursor after a short pause)."""
        return self._detail_for

    @property
    def browse_app(self) -> BrowseApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield ProgressBar(id="progress", show_eta=False)
        yield Static(id="notice")
        with Horizontal(id="upper"):
            with Vertical(id="list-area"):
                yield ColumnTitles(id="columns")
                yield MessageList(self.model, id="messages")
            with VerticalScroll(id="lifecycle"):
                yield LifecyclePanel(id="lifecycle-panel")
        with Horizontal(id="lower"):
            yield ExchangeTree(id="detail")
            yield HexView(id="hex")
        yield Input(placeholder="filter: op=OPEN,CREATE and nodeid=42 | err | backing=3 | "
                                "lat>10ms   (Enter applies, Esc cancels)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.model.subscribe(self._changed)
        self.query_one(MessageList).focus()
        self._refresh_all()

    # --- reacting to the model ----------------------------------------------------------

    def _changed(self, what: str) -> None:
        if not self.is_attached:
            return
        messages = self.query_one(MessageList)
        if what in ("rows", "index"):
            messages.sync()
            messages.keep_cursor_visible()
            self._status()
            self._schedule_detail()
        elif what == "cursor":
            messages.keep_cursor_visible()
            self._schedule_detail()
            self._lifecycle()
            self._status()
        elif what == "follow":
            self._lifecycle()
            self._status()
        elif what == "analysis":
            messages.refresh()
            self._status()
        elif what == "notice":
            self._notice()
        elif what == "progress":
            self._progress()

    def _refresh_all(self) -> None:
        self.query_one(MessageList).sync()
        self._status()
        self._notice()
        self._progress()
        self._lifecycle()
        self._schedule_detail()

    def _status(self) -> None:
        m = self.model
        parts = [os.path.basename(m.path)]
        if m.live:
            parts.append("LIVE")
        total = m.known
        if m.following is not None:
            kind, key = m.following.subject
            pos = m.follow_position or (0, 0)
            parts.append(f"following {m.following.lifecycle.name}: event {pos[0]}/{pos[1]}")
        elif m.query is not None:
            parts.append(f"filter [{m.query.text}]: {m.count:,} of {total:,} records")
        else:
            parts.append(f"{total:,} records")
        if m.selected is not None:
            parts.append(f"#{m.selected}")
        if m.analysis is None:
            parts.append("analysing lifecycles…" if m.complete else "indexing…")
        else:
            errors = sum(1 for a in m.analysis.anomalies if a.severity == "error")
            word = "anomaly" if errors == 1 else "anomalies"
            parts.append(f"{errors} {word} (l lists them)" if errors else "no anomalies")
        # one line, always: no new layout (a relayout costs more than the whole row decode)
        self.query_one("#status", Static).update(Text("  │  ".join(parts)), layout=False)

    def _notice(self) -> None:
        notice = self.query_one("#notice", Static)
        notice.update(Text(self.model.notice or ""))
        notice.display = bool(self.model.notice)

    def _progress(self) -> None:
        bar = self.query_one(ProgressBar)
        done, total = self.model.progress
        bar.display = not self.model.complete and total > 0
        if total:
            bar.update(total=total, progress=done)

    def _lifecycle(self) -> None:
        box = self.query_one("#lifecycle")
        box.display = self.model.following is not None
        self.query_one(LifecyclePanel).show_model(self.model)

    def _schedule_detail(self) -> None:
        """Decode the selection after the keys settle: holding j must not decode every row."""
        if self._detail_timer is not None:
            self._detail_timer.stop()
        self._detail_timer = self.set_timer(0.05, self._detail)

    def _detail(self) -> None:
        m = self.model
        i = m.selected
        if i is None or m.idx is None or m.pairs is None or i == self._detail_for:
            return
        if not m.complete and i >= m.known:
            return
        self._detail_for = i
        try:
            parts = exchange(m.idx, m.pairs, i)
        except Exception as exc:  # an unreadable record must not take the browser down
            self.query_one(HexView).update(Text(f"record {i} cannot be read: {exc}"))
            return
        tree = self.query_one(ExchangeTree)
        tree.show_parts(parts, i)
        part = next((p for p in parts if p.record.index == i), parts[0])
        self.query_one(HexView).show_bytes(part.tree.label.split(":")[0], part.data, None, None)

    @on(Tree.NodeHighlighted, "#detail")
    def _field_selected(self, event: Tree.NodeHighlighted[Any]) -> None:
        data = event.node.data
        tree = self.query_one(ExchangeTree)
        if data is None or not tree.parts:
            return
        part_no, start, end = data
        part = tree.parts[part_no]
        self.query_one(HexView).show_bytes(part.tree.label.split(":")[0], part.data, start, end)

    # --- actions ------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        if self.model.query is not None:
            box.value = self.model.query.text
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filter_entered(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self._close_filter()
            self.browse_app.apply_filter(None)
            return
        try:
            query = parse(text)
        except QueryError as exc:
            self.notify(f"{exc}\n{exc.pointer()}", title="filter", severity="error", timeout=8)
            return
        self._close_filter()
        self.browse_app.apply_filter(query)

    def _close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = False
        self.query_one(MessageList).focus()

    def on_key(self, event: Any) -> None:
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_focus:
            event.stop()
            self._close_filter()

    def action_back(self) -> None:
        if self.model.following is not None:
            self.model.unfollow()
        elif self.model.query is not None:
            self.browse_app.apply_filter(None)

    def action_follow(self) -> None:
        self.browse_app.follow_selected()

    def action_next_event(self) -> None:
        self.model.step(1)

    def action_previous_event(self) -> None:
        self.model.step(-1)

    def action_lifecycles(self) -> None:
        self.browse_app.action_lifecycles()

    def action_stats(self) -> None:
        self.browse_app.action_stats()

    @on(MessageList.Activated)
    def _activated(self) -> None:
        self.query_one(ExchangeTree).focus()


class ChooseSubject(ModalScreen[tuple[str, int] | None]):
    """Which of the record's ids to follow."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, record: int, subjects: list[tuple[str, int]]) -> None:
        super().__init__()
        self.record = record
        self.subjects = subjects

    def compose(self) -> ComposeResult:
        with Vertical(id="choose"):
            yield Static(f"Record #{self.record} belongs to several ids; follow which one?")
            yield OptionList(*(Option(f"{_SUBJECT_NAMES[k]} {hex(v) if k == 'fh' else v}",
                                      id=f"{k}:{v}") for k, v in self.subjects))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        kind, _, key = (event.option.id or "").partition(":")
        self.dismiss((kind, int(key)))


def lifecycle_rows(lives: list[Lifecycle]) -> list[tuple[Any, ...]]:
    """Table rows for lifecycles: the worst verdicts first, then by first record."""
    ordered = sorted(lives, key=lambda lc: (_VERDICT_ORDER.get(lc.verdict, 9),
                                            lc.events[0].index if lc.events else 0))
    return [(lc.kind, hex(lc.key) if lc.kind == "fh" else lc.key, lc.generation + 1, lc.state,
             lc.verdict, len(lc.events), lc.events[0].index if lc.events else "",
             lc.events[-1].index if lc.events else "", lc.label,
             " ".join(a.code for a in lc.anomalies)) for lc in ordered]


class LifecyclesScreen(Screen[tuple[str, int, int] | None]):
    """Every backing id, file handle and node id with its state; leaks first; Enter
    follows one, a column title (or `o`) sorts by that column."""

    LIMIT = 20_000  # rows; a million-record trace has more ids than a table should hold
    COLUMNS = ("kind", "id", "use", "state", "verdict", "events", "first #", "last #", "what",
               "anomalies")
    BINDINGS = [
        Binding("escape,q", "close", "Back"),
        Binding("b", "only('backing')", "Backing ids"),
        Binding("h", "only('fh')", "Handles"),
        Binding("o", "only('node')", "Nodes"),
        Binding("a", "only('')", "All"),
        Binding("enter", "pick", "Follow", show=True),
        Binding("j", "cursor('down')", "Down", show=False),
        Binding("k", "cursor('up')", "Up", show=False),
    ]

    def __init__(self, model: BrowseModel) -> None:
        super().__init__()
        self.model = model
        self.kind = ""
        self._rows: list[tuple[Any, ...]] = []
        self._sorted_by: tuple[int, bool] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="lc-title")
        yield DataTable(id="lc-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*self.COLUMNS)
        self._fill()
        table.focus()

    def _fill(self) -> None:
        analysis = self.model.analysis
        title = self.query_one("#lc-title", Static)
        table = self.query_one(DataTable)
        table.clear()
        if analysis is None:
            title.update("The lifecycle analysis is still running; come back in a moment.")
            return
        kinds = [self.kind] if self.kind else ["backing", "fh", "node"]
        lives = [lc for k in kinds for lc in analysis.lifecycles(k)]
        self._rows = lifecycle_rows(lives)
        if self._sorted_by is not None:
            col, reverse = self._sorted_by
            self._rows.sort(key=lambda r: _sort_key(r[col]), reverse=reverse)
        shown = self._rows[:self.LIMIT]
        for n, row in enumerate(shown):
            verdict = row[4]
            style = "bold red" if verdict in ("leaked", "misused") else (
                "yellow" if verdict == "still open at end of trace" else "")
            table.add_row(*(Text(str(c), style=style) for c in row), key=str(n))
        what = {"": "backing ids, file handles and node ids", "backing": "backing ids",
                "fh": "file handles", "node": "node ids"}[self.kind]
        bad = sum(1 for r in self._rows if r[4] in ("leaked", "misused"))
        more = f" (first {self.LIMIT:,} shown)" if len(self._rows) > self.LIMIT else ""
        title.update(f"{len(self._rows):,} {what}{more}, {bad} leaked or misused.  "
                     "Enter follows one; click a column title to sort.")

    def action_only(self, kind: str) -> None:
        self.kind = kind
        self._fill()

    def action_cursor(self, where: str) -> None:
        table = self.query_one(DataTable)
        table.action_cursor_down() if where == "down" else table.action_cursor_up()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        col = event.column_index
        reverse = self._sorted_by == (col, False)
        self._sorted_by = (col, reverse)
        self._fill()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_pick()

    def action_pick(self) -> None:
        table = self.query_one(DataTable)
        if not self._rows or table.cursor_row >= min(len(self._rows), self.LIMIT):
            return
        row = self._rows[table.cursor_row]
        key = int(row[1], 16) if row[0] == "fh" else int(row[1])
        first = row[6] if isinstance(row[6], int) else 0
        self.dismiss((row[0], key, first))

    def action_close(self) -> None:
        self.dismiss(None)


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, int):
        return (0, value)
    text = str(value)
    try:
        return (0, int(text, 0))
    except ValueError:
        return (1, text)


class StatsScreen(Screen[None]):
    """Per-opcode counts, errors and latency percentiles, with bars and a request-rate
    sparkline over the trace's duration."""

    BINDINGS = [Binding("escape,q", "close", "Back")]

    def __init__(self, model: BrowseModel) -> None:
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        yield Static("Per-opcode statistics (reading the trace…)", id="stats-title")
        yield Static("requests over time:", id="rate-title")
        yield Sparkline([], id="rate")
        with VerticalScroll(id="stats-body"):
            yield DataTable(id="stats-table", cursor_type="row", zebra_stripes=True)
            yield Static(id="bars")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("opcode", "count", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms")
        self._collect()

    @work(thread=True, exclusive=True)
    def _collect(self) -> None:
        from inspector.reports.stats import collect

        ops, totals = collect(self.model.path)
        rate = _rate(self.model)
        self.app.call_from_thread(self._show, ops, totals, rate)

    def _show(self, ops: dict[str, Any], totals: dict[str, int], rate: list[int]) -> None:
        table = self.query_one(DataTable)
        ordered = sorted(ops.items(), key=lambda kv: -kv[1].count)
        for name, st in ordered:
            errors = " ".join(f"{e}×{n}" for e, n in st.errors.most_common(3))
            table.add_row(name, f"{st.count:,}", errors, *(_ms(st.percentile(p)) for p in (50, 90, 99)),
                          _ms(st.latencies[-1] if st.latencies else None))
        self.query_one("#stats-title", Static).update(
            "Per-opcode statistics   " + ", ".join(f"{k} {v:,}" for k, v in sorted(totals.items())))
        self.query_one(Sparkline).data = rate or [0]
        self.query_one("#bars", Static).update(_bars(ordered))

    def action_close(self) -> None:
        self.dismiss(None)


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def _rate(model: BrowseModel, buckets: int = 120) -> list[int]:
    """Requests per time slice across the trace, from the index columns."""
    idx = model.idx
    if idx is None or not len(idx):
        return []
    n = len(idx)
    ts, kinds = idx.column("ts", 0, n), idx.column("kind", 0, n)
    t0, t1 = ts[0], ts[-1]
    span = max(t1 - t0, 1)
    counts = [0] * buckets
    for t, k in zip(ts, kinds):
        if k == 1:
            counts[min((t - t0) * buckets // span, buckets - 1)] += 1
    return counts


def _bars(ordered: list[tuple[str, Any]]) -> Text:
    """p99 latency per opcode as horizontal bars (log-free: the slowest fills the width)."""
    text = Text("\np99 latency by opcode\n", style="bold")
    worst = max((st.percentile(99) or 0 for _, st in ordered), default=0) or 1
    for name, st in ordered:
        p99 = st.percentile(99) or 0
        width = round(50 * p99 / worst)
        text.append(f"{name:<14} ")
        text.append("█" * width, style="red" if st.errors else "green")
        text.append(f" {_ms(p99)} ms\n")
    return text


class HelpScreen(ModalScreen[None]):
    """The keys (from the action table) and the filter language."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "Close")]

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("Keys\n", style="bold")
        for a in ACTIONS:
            text.append(f"  {key_label(a):<18}", style="bold cyan")
            text.append(f"{a.help}\n")
        text.append("  Ctrl+P            command palette (every action above by name)\n")
        text.append("  Tab               move between the list, the decoded tree and the filter\n")
        text.append("\nFilter language\n", style="bold")
        text.append("  fields: " + ", ".join(FIELD_NAMES) + "\n")
        for example, meaning in (
                ("op=OPEN,CREATE and nodeid=42", "opens and creates of node 42 (request + reply)"),
                ("err  /  err=ENOENT,EACCES", "exchanges whose reply is an error"),
                ("backing=3  fh=0x7f  node=5", "records of that id's lifecycle"),
                ("lat>10ms  pid=1234  unique=88", "slow exchanges, one process, one request"),
                ("kind=ioctl  kind=event  n>=1000", "record kinds, record numbers"),
                ("anomaly  /  anomaly=backing-leak", "records that prove an anomaly"),
                ("not (op=GETATTR or op=LOOKUP)", "and, or, not, parentheses")):
            text.append(f"  {example:<34}", style="bold cyan")
            text.append(f"{meaning}\n")
        with VerticalScroll(id="help"):
            yield Static(text)
