"""One list row per record, decoded only when shown and kept in an LRU cache.

Rows come from the index columns (number, time, direction, opcode, unique, nodeid,
latency) plus one line of meaning from the dissectors' fast path (`request_text` /
`reply_text`), decoded against a decoder primed with the session's INIT. A reply's opcode
comes from the index's pairing, so any row decodes without reading the rows before it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from dissectors import SessionDecoder
from dissectors.summary import notify_name, opcode_name
from inspector.exchanges import Exchanges
from inspector.ranges import primed_decoder, records_in
from inspector.timeline import ARROWS, annotate, event_text, feed_ioctl, ioctl_text
from traces import Kind, TraceIndex

#: Column titles and widths; the summary takes what is left.
COLUMNS = (("#", 8), ("time", 11), ("", 2), ("opcode", 14), ("unique", 8), ("nodeid", 8),
           ("summary", 0), ("latency", 9))
_REQUEST_HEAD = re.compile(r"^\S+ unique=\d+ nodeid=\d+ ?")  # shown in their own columns
_REPLY_HEAD = re.compile(r"^\S+ unique=\d+ ?")
_CACHE_ROWS = 4096


@dataclass(frozen=True, slots=True)
class Row:
    """What one list line shows, and how it should look (`tone`)."""

    number: int
    time: str
    arrow: str
    opcode: str
    unique: str
    nodeid: str
    summary: str
    latency: str
    tone: str  # "", "error", "ioctl", "event", "notify"

    def cells(self) -> tuple[str, ...]:
        return (str(self.number), self.time, self.arrow, self.opcode, self.unique, self.nodeid,
                self.summary, self.latency)


def format_latency(ns: int | None) -> str:
    if ns is None:
        return ""
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}us"
    if ns < 10_000_000_000:
        return f"{ns / 1_000_000:.2f}ms"
    return f"{ns / 1e9:.1f}s"


class RowMaker:
    """Rows of one index, cached; `forget()` after the decoding context may have changed."""

    def __init__(self, idx: TraceIndex, pairs: Exchanges) -> None:
        self.idx = idx
        self.pairs = pairs
        self._cache: OrderedDict[int, Row] = OrderedDict()
        self._dec: SessionDecoder | None = None
        self._primed_at = -1

    def forget(self) -> None:
        self._cache.clear()
        self._dec = None

    def _decoder(self) -> SessionDecoder:
        """The INIT-primed decoder; primed again while the trace has not shown INIT yet."""
        n = len(self.idx)
        if self._dec is None or (not self._dec.ctx.minor_known and n != self._primed_at):
            self._dec, self._primed_at = primed_decoder(self.idx, n), n
        return self._dec

    def row(self, i: int) -> Row:
        got = self._cache.get(i)
        if got is not None:
            self._cache.move_to_end(i)
            return got
        got = self._make(i)
        self._cache[i] = got
        if len(self._cache) > _CACHE_ROWS:
            self._cache.popitem(last=False)
        return got

    def _make(self, i: int) -> Row:
        idx, dec = self.idx, self._decoder()
        t0 = idx.ts(0)
        rec = next(records_in(idx, (i,), dec))
        kind = rec.kind
        unique = idx.unique(i)
        opcode, nodeid, latency, tone = "", "", "", ""
        if kind is Kind.REQUEST:
            text = annotate(dec.request_text(rec.raw or b""), rec)
            dec.pending.pop(unique, None)  # rows come in any order: pair nothing here
            opcode, nodeid = opcode_name(idx.opcode(i)), str(idx.nodeid(i))
            summary = _REQUEST_HEAD.sub("", text, count=1)
        elif kind is Kind.REPLY and unique:
            text = annotate(dec.reply_text(rec.raw or b""), rec)
            opcode = opcode_name(idx.opcode(i)) if idx.opcode(i) else "?"
            summary = _REPLY_HEAD.sub("", text, count=1)
            latency = format_latency(self.pairs.latency(i)) if i < len(self.pairs) else ""
            tone = "error" if idx.error(i) < 0 else ""
        elif kind is Kind.REPLY:
            text = annotate(dec.reply_text(rec.raw or b""), rec)
            opcode = notify_name(idx.error(i)).removeprefix("NOTIFY_")
            summary, tone = text.partition(" ")[2], "notify"
        elif kind is Kind.IOCTL:
            call = feed_ioctl(dec, rec)
            name, _, summary = ioctl_text(call, rec).partition(" ")
            opcode, tone = name.removeprefix("FUSE_DEV_IOC_"), "ioctl"
            tone = "error" if call.errno else tone
        else:
            opcode, _, summary = event_text(rec).partition(" ")
            tone = "event"
        return Row(i, f"{(rec.ts - t0) / 1e9:.6f}", ARROWS[kind], opcode,
                   str(unique) if unique else "", nodeid if nodeid != "0" else "", summary,
                   latency, tone)
