"""`fusetrace browse`: the Textual app, its background work, and how it starts.

Work that can take seconds on a million records runs in thread workers and hands its
result to the model on the UI thread: the index build (rows show while it runs, with a
progress bar), the request/reply pairing, the lifecycle analysis, filtering, and in live
mode `TraceIndex.refresh()` twice a second. A trace that cannot be read past some record
opens up to the last good one with a notice; one whose header is bad never starts the
app (`run_browse` reports it as one line, like every other command).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from typing import TYPE_CHECKING, Iterable

from textual import work
from textual.worker import get_current_worker
from textual.app import App, SystemCommand
from textual.screen import Screen

from inspector.query import Query, QueryError, parse
from traces import TraceIndex, TraceReadError

from .actions import ACTIONS, Action, bindings
from .loading import check_trace, open_early
from .model import BrowseModel
from .screens import ChooseSubject, HelpScreen, LifecyclesScreen, MainScreen, StatsScreen
from .widgets import MessageList

if TYPE_CHECKING:
    from inspector.lifecycles import Analysis

LIVE_POLL = 0.5  # seconds between looks at a growing trace
_PROGRESS_EVERY = 0.05  # seconds between progress updates sent to the UI


class BrowseApp(App[None]):
    """Browse one trace; `live` keeps reading what a running recorder appends."""

    CSS_PATH = "browse.tcss"
    TITLE = "fusetrace browse"
    BINDINGS = bindings("app")

    def __init__(self, path: str, live: bool = False, query: Query | None = None) -> None:
        super().__init__()
        self.model = BrowseModel(path, live)
        self.model.query = query
        self.main = MainScreen(self.model)
        self._analysis_ready = threading.Event()
        self._follow_when_analysed: int | None = None  # record whose `f` waits for the analysis

    def on_mount(self) -> None:
        self.push_screen(self.main)
        self._load()

    # --- background work ----------------------------------------------------------------

    @work(thread=True, exclusive=True, group="load")
    def _load(self) -> None:
        model = self.model
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= _PROGRESS_EVERY or done >= total:
                last = now
                self.call_from_thread(model.building, done, total)

        try:
            idx = open_early(model.path, lambda i: self.call_from_thread(model.attach, i), progress)
        except (TraceReadError, OSError) as exc:
            self.call_from_thread(model.set_notice, f"Cannot read the trace: {exc}")
            return
        self.call_from_thread(self._indexed, idx)
        assert model.pairs is not None
        model.pairs.update()  # after the rows show: pairing a million takes a while
        self.call_from_thread(self._paired)

    def _indexed(self, idx: TraceIndex) -> None:
        self.model.indexed()
        if self.model.query is not None:
            self._filter(self.model.query)
        self._analyse()
        if self.model.live:
            self.set_interval(LIVE_POLL, self._poll)

    def _paired(self) -> None:
        """Latencies are known now: rows drawn without them are drawn again."""
        assert self.model.rows is not None
        self.model.rows.forget()
        self.main.query_one(MessageList).refresh()

    @work(thread=True, exclusive=True, group="analysis")
    def _analyse(self) -> None:
        from inspector.lifecycles import analyse

        idx = self.model.idx
        assert idx is not None
        try:
            analysis = analyse(idx)
        except (TraceReadError, OSError) as exc:
            self.call_from_thread(self.notify, f"No lifecycle analysis: {exc}", severity="error")
            return
        analysis.subjects_of(0)  # builds its record → ids map here, not on the first `f`
        # analyse() froze the lifecycles out of the collector's sight; the record → ids map
        # lives as long as the app too: freeze it, or a full collection freezes the UI.
        gc.freeze()
        self.call_from_thread(self._analysed, analysis)

    def _analysed(self, analysis: Analysis) -> None:
        self.model.set_analysis(analysis)
        self._analysis_ready.set()
        waiting, self._follow_when_analysed = self._follow_when_analysed, None
        if waiting is not None and waiting == self.model.selected:
            self.follow_selected()

    @work(thread=True, exclusive=True, group="filter")
    def _filter(self, query: Query | None) -> None:
        model = self.model
        if query is None:
            self.call_from_thread(model.set_filter, None, None)
            return
        if query.needs_analysis and not self._analysis_ready.is_set():
            self.call_from_thread(self.notify, "Waiting for the lifecycle analysis…")
            worker = get_current_worker()
            while not self._analysis_ready.wait(0.2):
                if worker.is_cancelled:  # a newer filter, or the app is closing
                    return
        try:
            shown = query.select(model.context())
        except (TraceReadError, OSError) as exc:
            self.call_from_thread(self.notify, f"Filter failed: {exc}", severity="error")
            return
        self.call_from_thread(model.set_filter, query, shown)

    def _poll(self) -> None:
        self._refresh_live()

    @work(thread=True, exclusive=True, group="live")
    def _refresh_live(self) -> None:
        model = self.model
        idx, pairs = model.idx, model.pairs
        assert idx is not None and pairs is not None
        before = len(idx)
        try:
            added = idx.refresh()
        except (TraceReadError, OSError) as exc:
            self.call_from_thread(model.set_notice, f"Stopped following the trace: {exc}")
            return
        if not added:
            return
        pairs.update()
        query = model.query
        matches = query.select(model.context(), before) if query is not None else None
        self.call_from_thread(self._grew, matches)

    def _grew(self, matches: object) -> None:
        model = self.model
        at_end = model.cursor >= model.count - 1
        model.grew(matches)  # type: ignore[arg-type]
        if at_end:  # like tail -f: stay on the newest record
            model.move_to(model.count - 1)

    # --- what the screens ask for -------------------------------------------------------

    def apply_filter(self, query: Query | None) -> None:
        self._filter(query)

    def follow_selected(self) -> None:
        model = self.model
        record = model.selected
        if record is None:
            return
        if model.analysis is None or model.analysis_stale:
            if model.analysis is not None:  # a live trace grew: analyse what it holds now
                self._analysis_ready.clear()
                self._analyse()
            self._follow_when_analysed = record
            self.notify(f"Following #{record} once the lifecycle analysis is done…")
            return
        subjects = model.subjects(record)
        if not subjects:
            self.notify(f"Record #{record} belongs to no backing id, file handle, node or request.")
            return
        if len(subjects) == 1:
            self._follow(subjects[0], record)
            return
        self.push_screen(ChooseSubject(record, subjects),
                         lambda choice: self._follow(choice, record) if choice else None)

    def _follow(self, subject: tuple[str, int], near: int) -> None:
        kind, key = subject
        if self.model.follow(kind, key, near) is None:
            self.notify(f"No lifecycle of {kind} {key} in the analysis.", severity="warning")

    def action_lifecycles(self) -> None:
        def picked(choice: tuple[str, int, int] | None) -> None:
            if choice is not None:
                kind, key, first = choice
                self._follow((kind, key), first)

        self.push_screen(LifecyclesScreen(self.model), picked)

    def action_stats(self) -> None:
        self.push_screen(StatsScreen(self.model))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:  # type: ignore[type-arg]
        yield from super().get_system_commands(screen)
        for action in ACTIONS:
            yield SystemCommand(action.title, action.help, lambda a=action: self._run(a))

    def _run(self, action: Action) -> None:
        """Run a table action on the widget that owns it."""
        if action.where == "app":
            target: object = self
        elif action.where == "main":
            target = self.main
        else:
            target = self.main.query_one(MessageList)
        if self.screen is not self.main and action.where != "app":
            self.pop_screen()
        getattr(target, f"action_{action.name}")()


def run_browse(path: str, live: bool = False, filter_text: str | None = None) -> int:
    """Start the browser; a bad header or filter is one line on stderr and exit 2."""
    try:
        query = parse(filter_text) if filter_text else None
    except QueryError as exc:
        print(f"fusetrace: error: {exc}\n{exc.pointer()}", file=sys.stderr)
        return 2
    check_trace(path)  # TraceReadError: the CLI prints it as one line
    BrowseApp(path, live, query).run()
    return 0
