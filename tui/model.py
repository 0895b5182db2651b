"""What the browser shows, without any widget: the trace index, the filter, the rows
shown, the cursor, and the lifecycle being followed. Screens read it and call its named
methods; every change is signalled to subscribers with a word saying what changed.

Slow work (building the index, filtering a million rows, the lifecycle analysis) runs in
the app's worker threads, which hand finished results to these methods on the UI thread;
the model itself never blocks on I/O beyond reading a few records.
"""

from __future__ import annotations

import array
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from inspector.exchanges import Exchanges
from inspector.query import Query, QueryContext
from traces import TraceIndex

from .rows import RowMaker

if TYPE_CHECKING:
    from inspector.lifecycles import Analysis, Lifecycle

#: What `subscribe` callbacks are told changed.
CHANGES = ("index", "rows", "cursor", "follow", "analysis", "notice", "progress")

Listener = Callable[[str], None]


@dataclass
class Following:
    """The lifecycle the list is narrowed to, and what the list was before."""

    lifecycle: Lifecycle
    subject: tuple[str, int]
    before: tuple[Query | None, array.array[int] | None, int]  # query, rows, cursor record


class BrowseModel:
    """One trace being browsed."""

    def __init__(self, path: str, live: bool = False) -> None:
        self.path = path
        self.live = live
        self.idx: TraceIndex | None = None
        self.pairs: Exchanges | None = None
        self.rows: RowMaker | None = None
        self.analysis: Analysis | None = None
        self.analysed_upto = 0  # records the analysis covered
        self.query: Query | None = None
        self.shown: array.array[int] | None = None  # record numbers shown; None: all
        self.cursor = 0  # position in the shown list
        self.following: Following | None = None
        self.notice: str | None = None
        self.complete = False  # the first index build ended
        self.known = 0  # records readable now (the build may still be adding rows)
        self.progress: tuple[int, int] = (0, 0)
        self.anomalous: frozenset[int] = frozenset()
        self._listeners: list[Listener] = []

    # --- signals ----------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, what: str) -> None:
        for listener in list(self._listeners):
            listener(what)

    # --- the index ----------------------------------------------------------------------

    def attach(self, idx: TraceIndex) -> None:
        """The index exists (perhaps still being built): rows can be shown."""
        self.idx = idx
        self.pairs = Exchanges(idx)
        self.rows = RowMaker(idx, self.pairs)
        self._emit("index")

    def building(self, done: int, total: int) -> None:
        """Progress of the first build; the rows indexed so far become visible (all but
        the last, whose end the builder has not written down yet)."""
        self.progress = (done, total)
        if self.idx is not None and not self.complete:
            before = self.known
            self.known = max(len(self.idx) - 1, 0)
            if self.known != before and self.shown is None:
                self._emit("rows")
        self._emit("progress")

    def indexed(self) -> None:
        """The first build ended (the pairing is done by the caller's worker)."""
        assert self.idx is not None
        self.complete = True
        self.known = len(self.idx)
        if self.idx.tail and not (self.live and "incomplete record" in self.idx.tail):
            self.set_notice(f"Showing records up to the last good one: {self.idx.tail}")
        self._emit("rows")
        self._emit("progress")

    def grew(self, added: array.array[int] | None) -> None:
        """A live trace gained records; `added` are the new matches of the filter (None
        without one)."""
        assert self.idx is not None
        self.known = len(self.idx)
        if self.following is None and self.shown is not None and added:
            self.shown.extend(added)
        # a record half-written by the recorder is the normal state of a live trace: no notice
        self._emit("rows")

    def set_notice(self, text: str | None) -> None:
        if text != self.notice:
            self.notice = text
            self._emit("notice")

    def context(self) -> QueryContext:
        """What filters run over (the analysis is handed over once it exists)."""
        assert self.idx is not None and self.pairs is not None
        return QueryContext(self.idx, self.pairs, self.analysis)

    # --- analysis -----------------------------------------------------------------------

    def set_analysis(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.analysed_upto = analysis.records
        self.anomalous = frozenset(i for a in analysis.anomalies if a.severity != "note"
                                   for i in a.records)
        self._emit("analysis")

    @property
    def analysis_stale(self) -> bool:
        """A live trace grew since the analysis was made."""
        return self.analysis is None or (self.live and self.analysed_upto < self.known)

    # --- what is shown ------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self.shown) if self.shown is not None else self.known

    def number_at(self, pos: int) -> int:
        """The record number shown at list position `pos`."""
        return self.shown[pos] if self.shown is not None else pos

    @property
    def selected(self) -> int | None:
        """The record under the cursor."""
        return self.number_at(self.cursor) if 0 <= self.cursor < self.count else None

    def position_of(self, record: int) -> int:
        """The list position of `record`, or of the first record after it."""
        if self.shown is None:
            return min(record, max(self.count - 1, 0))
        return min(bisect_left(self.shown, record), max(self.count - 1, 0))

    def set_filter(self, query: Query | None, shown: array.array[int] | None) -> None:
        """Show `shown` (the matches of `query`), keeping the cursor near its record."""
        keep = self.selected
        self.following = None
        self.query, self.shown = query, shown
        self.cursor = self.position_of(keep) if keep is not None else 0
        self._emit("follow")
        self._emit("rows")
        self._emit("cursor")

    def move_to(self, pos: int) -> None:
        pos = max(0, min(pos, self.count - 1))
        if pos != self.cursor:
            self.cursor = pos
            self._emit("cursor")

    def move_by(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def go_to_record(self, record: int) -> None:
        self.move_to(self.position_of(record))

    # --- following one id ---------------------------------------------------------------

    def subjects(self, record: int) -> list[tuple[str, int]]:
        """The ids record `record` belongs to (backing, fh, node, request)."""
        return self.analysis.subjects_of(record) if self.analysis is not None else []

    def lifecycle_for(self, kind: str, key: int, near: int) -> Lifecycle | None:
        """The generation of `kind` `key` holding record `near` (else the closest one)."""
        if self.analysis is None:
            return None
        lives = [lc for lc in self.analysis.find(kind, key) if lc.events]
        if not lives:
            return None
        for lc in lives:
            if near in lc.records:
                return lc
        return min(lives, key=lambda lc: min(abs(i - near) for i in lc.records))

    def follow(self, kind: str, key: int, near: int) -> Lifecycle | None:
        """Narrow the list to one lifecycle, cursor on `near` (or its first event)."""
        lc = self.lifecycle_for(kind, key, near)
        if lc is None:
            return None
        if self.following is None:
            before = (self.query, self.shown, self.selected if self.selected is not None else 0)
        else:
            before = self.following.before
        self.following = Following(lc, (kind, key), before)
        self.shown = array.array("q", sorted(set(lc.records)))
        self.cursor = self.position_of(near) if near in lc.records else 0
        self._emit("follow")
        self._emit("rows")
        self._emit("cursor")
        return lc

    def unfollow(self) -> None:
        """Back to the list as it was, cursor on the record reached while following."""
        if self.following is None:
            return
        at = self.selected
        self.query, self.shown, back = self.following.before
        self.following = None
        self.cursor = self.position_of(at if at is not None else back)
        self._emit("follow")
        self._emit("rows")
        self._emit("cursor")

    def step(self, delta: int) -> None:
        """Next/previous event of the followed lifecycle (next/previous row otherwise)."""
        self.move_by(delta)

    @property
    def follow_position(self) -> tuple[int, int] | None:
        """(1-based event number under the cursor, events) while following."""
        if self.following is None:
            return None
        return self.cursor + 1, self.count
