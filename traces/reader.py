"""Streaming trace reader: records in file order, stopping cleanly at a cut or corrupt tail.

Iterating never raises mid-way on bad bytes: it ends and `.tail` says where and why (the
last record of a crashed or still-running capture is often cut). A span a killed writer
left unfilled is skipped, and `.holes` says where (see `stream.py`). `poll()` continues
from the last good record, so a live view calls it again to get what was appended since.
Only `TraceReadError` escapes (bad header, I/O errors).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from . import native
from .records import REPLY, REQUEST, TS_LIMIT, Record, cut_note, decode, problem
from .opening import open_trace
from .stream import Hole, Progress, Scan


class TraceReader:
    """Reads one trace; `header` is the (upgraded) header map, records come by iteration."""

    def __init__(self, path: str | os.PathLike[str], *, chunk_size: int = 256 << 10) -> None:
        self._file = open_trace(path)
        self._chunk = chunk_size
        self.path = self._file.path
        self.header: dict[str, Any] = self._file.header
        self.file_format = self._file.format
        self.tail: str | None = None
        self.holes: list[Hole] = []  # spans skipped since the start: see `stream.py`
        self.good_records = 0
        self.good_bytes = self._file.start

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[Record]:
        """All records from the start of the file."""
        self.good_records, self.good_bytes = 0, self._file.start
        self.holes = []
        return self.poll()

    def poll(self) -> Iterator[Record]:
        """Records after the last one read, up to the current end of file."""
        self.tail = None
        scan = Scan(self._file, self.good_bytes, chunk=self._chunk)
        base = len(self.holes)
        for objs, ends in scan.batches():
            self.holes.extend(scan.holes[len(self.holes) - base:])
            self.good_bytes = scan.batch_start
            for obj, end in zip(objs, ends):
                why = problem(obj)
                if why is not None:
                    self.tail = cut_note(self.good_bytes, self.good_records, f"bad record: {why}")
                    return
                record = decode(obj, self.good_records, self.good_bytes)
                self.good_records += 1
                self.good_bytes = end
                yield record
        self.holes.extend(scan.holes[len(self.holes) - base:])
        if scan.stop is not None:
            self.tail = cut_note(self.good_bytes, self.good_records, scan.stop)

    def arrays(self, progress: Progress | None = None) -> Iterator[list[Any]]:
        """Every record as its on-disk array (`[kind, ts, raw(, meta)]` or `[kind, ts,
        meta]`), checked like iteration (same stop, same `.tail`) without building
        `Record`s: one-pass analyses of millions of records spend their time elsewhere.
        The i-th array is record i."""
        self.tail, self.good_records, self.good_bytes = None, 0, self._file.start
        scan = Scan(self._file, self.good_bytes, chunk=1 << 20, progress=progress)
        self.holes = scan.holes
        fast = native.plain_until
        for objs in scan.objects():
            k, n = 0, len(objs)
            while k < n:
                if fast is not None:  # plain records in C: only the others are judged here
                    k = fast(objs, k, TS_LIMIT)
                    if k == n:
                        break
                obj = objs[k]
                if not (type(obj) is list and len(obj) == 3 and type(obj[2]) is bytes
                        and type(kind := obj[0]) is int and (kind == REQUEST or kind == REPLY)
                        and type(ts := obj[1]) is int and 0 <= ts < TS_LIMIT):
                    why = problem(obj)
                    if why is not None:
                        yield from objs[:k]
                        self.good_records += k
                        self.good_bytes = scan.span(scan.batch_start, k)
                        self.tail = cut_note(self.good_bytes, self.good_records, f"bad record: {why}")
                        return
                k += 1
            yield from objs
            self.good_records += len(objs)
            self.good_bytes = scan.end
        if scan.stop is not None:
            self.tail = cut_note(self.good_bytes, self.good_records, scan.stop)
