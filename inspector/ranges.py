"""`fusetrace show -r A:B`: any slice of a huge trace at once, through the cached index.

Decoding from the middle needs what the beginning said: the INIT exchange (read from the
first records) and, for replies whose request came before A, the opcode the index paired
them with. Building the index on a big trace shows a progress bar on stderr.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from dissectors import Opcode, SessionDecoder
from traces import Kind, Record, TraceIndex

#: Below this size the index builds faster than a progress bar is worth drawing.
PROGRESS_FROM_BYTES = 32 << 20
_INIT_SEARCH = 64  # INIT is the first exchange; look no further for it


@contextmanager
def byte_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress(done, total bytes) callback drawing a transient bar on stderr (a
    terminal only) once the job is big enough to be worth one."""
    with Progress(label, BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(label, total=None, visible=False)

        def progress(done: int, total: int) -> None:
            if total >= PROGRESS_FROM_BYTES:
                bar.update(task, completed=done, total=total, visible=True)

        yield progress


@contextmanager
def indexed(path: str) -> Iterator[TraceIndex]:
    """The trace's index, with a progress bar while a big one is built."""
    with byte_progress("indexing") as progress:
        idx = TraceIndex.open(path, progress=progress)
    try:
        yield idx
    finally:
        idx.close()


def parse_range(text: str, count: int) -> range:
    """`A:B`, `A:` or `:B` (Python slice rules, negatives count from the end)."""
    start, sep, stop = text.partition(":")
    if not sep:
        raise ValueError(f"records must be START:STOP, got {text!r}")
    return range(count)[slice(int(start) if start else None, int(stop) if stop else None)]


def primed_decoder(idx: TraceIndex, start: int) -> SessionDecoder:
    """A decoder in the state the connection was in at record `start`."""
    dec = SessionDecoder()
    for i in range(min(start, _INIT_SEARCH, len(idx))):
        if idx.opcode(i) == Opcode.INIT:
            rec = idx.record(i)
            if rec.kind is Kind.REQUEST:
                dec.feed_request(rec.raw or b"")
            elif rec.kind is Kind.REPLY:
                dec.feed_reply(rec.raw or b"")
    return dec


def records_in(idx: TraceIndex, rows: range, dec: SessionDecoder) -> Iterator[Record]:
    """The records of `rows`; replies to requests outside the range get their opcode
    from the index, so they decode as if the whole trace had been read."""
    for i in rows:
        if idx.kind(i) is Kind.REPLY:
            unique = idx.unique(i)
            if unique and idx.opcode(i):
                dec.expect(unique, idx.opcode(i))
        yield idx.record(i)
