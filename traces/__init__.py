"""The fusetrace trace file format (version 1, `.fzt`): write, stream, index.

    >>> with TraceWriter("s.fzt", {"mountpoint": "/mnt"}) as w:
    ...     w.request(raw_request); w.reply(raw_reply)
    >>> for record in TraceReader("s.fzt"): ...
    >>> idx = TraceIndex.open("s.fzt"); idx.record(len(idx) - 1)

Knows record kinds, not FUSE: decoding belongs to `dissectors`. `TraceReadError` is the
only exception raised for bad input.
"""

from __future__ import annotations

from .compat import FORMAT_VERSION
from .errors import TraceReadError
from .index import Row, TraceIndex
from .reader import TraceReader
from .records import Kind, Record
from .stream import hole_note
from .writer import Appender, FileAppender, TraceWriteError, TraceWriter

__all__ = ["FORMAT_VERSION", "Appender", "FileAppender", "Kind", "Record", "Row", "TraceIndex",
           "TraceReadError", "TraceReader", "TraceWriteError", "TraceWriter", "hole_note"]
