"""Streaming trace reader: records in file order, stopping cleanly at a cut or corrupt tail.

Iterating never raises mid-way on bad bytes: it ends and `.tail` says where and why (the
last record of a crashed or still-running capture is often cut). `poll()` continues from
the last good record, so a live view calls it again to get what was appended since.
Only `TraceReadError` escapes (bad header, I/O errors).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from .records import Record, cut_note, decode, problem
from .stream import Scan, open_trace


class TraceReader:
    """Reads one trace; `header` is the (upgraded) header map, records come by iteration."""

    def __init__(self, path: str | os.PathLike[str], *, chunk_size: int = 256 << 10) -> None:
        self._file = open_trace(path)
        self._chunk = chunk_size
        self.path = self._file.path
        self.header: dict[str, Any] = self._file.header
        self.file_format = self._file.format
        self.tail: str | None = None
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
        return self.poll()

    def poll(self) -> Iterator[Record]:
        """Records after the last one read, up to the current end of file."""
        self.tail = None
        scan = Scan(self._file, self.good_bytes, chunk=self._chunk)
        for objs, ends in scan.batches():
            for obj, end in zip(objs, ends):
                why = problem(obj)
                if why is not None:
                    self.tail = cut_note(self.good_bytes, self.good_records, f"bad record: {why}")
                    return
                record = decode(obj, self.good_records, self.good_bytes)
                self.good_records += 1
                self.good_bytes = end
                yield record
        if scan.stop is not None:
            self.tail = cut_note(self.good_bytes, self.good_records, scan.stop)
