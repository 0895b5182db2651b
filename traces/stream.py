"""Low-level reading shared by the reader and the index: open + header, then a chunked walk.

Records are read with `os.pread` chunks fed to a msgpack `Unpacker`, never by loading the
file, and the walk ends at the current end of file, so calling it again later picks up
what a live writer appended. `Unpacker.tell()` stays at the end of the last whole object,
which is where a cut or corrupt tail begins.

Zero bytes where a record should start (no record starts with one: records are msgpack
arrays) come from the native appender (`_append.c`), which allocates space ahead and
fills a reserved slot's first byte last. While the writer holds the file (its exclusive
flock), they are where the writer has not got to yet: the trace ends there for now. Once
it is gone (closed, or killed before it could cut the file to length):
- zeros up to the end of the file are space allocated ahead: the trace ends cleanly;
- zeros followed by more bytes are a hole, a slot a killed writer reserved and never
  (or only partly) filled while other threads went on appending. Its end is known when
  its bytes make a valid record once a first byte is put back (it was copied whole or
  past its lengths); reading resumes at the next plausible record start after it (a
  0x93/0x94 array byte whose record passes `problem()` and is followed by the end, a
  zero, or another such record), and the skipped span is noted in `holes`. Bytes with
  no such record after them are the last slot, left half-copied: the trace ends there,
  noted as a hole too. A record found by resynchronising is plausible, not proven:
  message bytes that happen to hold a whole record (a trace file copied through the
  mount) could be taken for one.

Caveat: msgpack preallocates arrays and maps from their declared length, so the limits
below keep one corrupt length byte from allocating gigabytes. Records may therefore hold
at most 4096 items per array and 1024 keys per map in their meta, and 64 MiB in all.
"""

from __future__ import annotations

import fcntl
import gc
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import msgpack

from .compat import RecordUpgrade
from .errors import TraceReadError
from .records import problem

MAX_RECORD = 64 << 20
#: Limits for `msgpack.unpackb` (one record); `Unpacker` also takes `max_buffer_size`.
#: Arrays decode as lists everywhere (msgpack's default), so every reader sees the same
#: objects and reports the same errors.
LIMITS: dict[str, int] = {
    "max_bin_len": MAX_RECORD,
    "max_str_len": MAX_RECORD,
    "max_ext_len": MAX_RECORD,
    "max_array_len": 4096,
    "max_map_len": 1024,
}
HEADER_LIMIT = 1 << 20
_MAP_MARKERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}

Progress = Callable[[int, int], None]
Hole = tuple[int, int]  # [start, end) bytes skipped: a slot a killed writer never filled
_RECORD_START = re.compile(rb"[\x93\x94]")  # every record is an array of 3 or 4 items


def hole_note(hole: Hole) -> str:
    """What a reader says about a skipped span."""
    return (f"bytes {hole[0]}-{hole[1]} skipped: a record a killed writer never finished "
            f"({hole[1] - hole[0]} bytes)")


@dataclass
class TraceFile:
    """An open trace: its descriptor, checked header and where the records start."""

    fd: int
    path: str
    header: dict[str, Any]
    format: int  # the format the file was written in, before upgrades
    start: int  # offset of the first record
    upgrade: RecordUpgrade | None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pread(self, size: int, offset: int) -> bytes:
        try:
            return os.pread(self.fd, size, offset)
        except OSError as exc:
            raise TraceReadError(
                f"{self.path}: read error at byte {offset}: {exc.strerror}") from None

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def damage(self) -> str | None:
        """Why the readable bytes end before the file does (a compressed trace's cut or
        bad frame); None for a plain trace, whose readers find that themselves."""
        return None

    def writer_alive(self) -> bool:
        """Whether a native appender still holds the file (its exclusive flock): zero
        bytes are then where it has not got to yet, not a hole. (Readers asking at once
        take shared locks, which do not conflict.)"""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False


def read_header(pread: Callable[[int, int], bytes], where: str) -> tuple[Any, int]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_RECORD, **LIMITS)
    pos = 0
    while True:
        try:
            return unpacker.unpack(), unpacker.tell()
        except msgpack.OutOfData:
            pass
        except Exception as exc:  # any decoder complaint means "not our file"
            raise TraceReadError(f"{where}: not a fusetrace trace "
                                 f"(not msgpack: {str(exc) or type(exc).__name__})") from None
        try:
            data = pread(64 << 10, pos)
        except OSError as exc:
            raise TraceReadError(f"{where}: read error at byte {pos}: {exc.strerror}") from None
        if not data:
            if pos == 0:
                raise TraceReadError(f"{where}: empty file, not a fusetrace trace")
            raise TraceReadError(f"{where}: trace cut inside its header at byte {pos}")
        if pos == 0 and data[0] not in _MAP_MARKERS:
            raise TraceReadError(f"{where}: not a fusetrace trace (no header map)")
        if pos >= HEADER_LIMIT:
            raise TraceReadError(f"{where}: not a fusetrace trace (no header in the first MiB)")
        unpacker.feed(data)
        pos += len(data)


class Scan:
    """Whole objects from `start` to the current end of file, one chunk at a time.

    Each batch is (objects, end offsets): object k ends where object k+1 starts, the first
    starts at `batch_start` (the previous batch's end, unless a hole lies between them:
    batches never span one). Afterwards `end` is the offset just past the last whole object and
    `stop` says why the walk ended before the end of file (None when it ended cleanly).
    Batches keep per-record overhead out of the index build's hot loop.
    """

    def __init__(self, trace: TraceFile, start: int, *, chunk: int,
                 progress: Progress | None = None) -> None:
        self.trace = trace
        self.start = self.end = start
        self.chunk = chunk
        self.progress = progress
        self.stop: str | None = None
        self.batch_start = start
        self.holes: list[Hole] = []  # spans skipped (see the module docstring)

    def batches(self) -> Iterator[tuple[list[Any], list[int]]]:
        """(objects, end offsets) per chunk."""
        return self._walk(True)  # type: ignore[return-value]

    def objects(self) -> Iterator[list[Any]]:
        """Objects per chunk without their offsets (cheaper); `batch_start` is where the
        current batch's first object starts, `end` where its last one ends."""
        for objs, _ in self._walk(False):
            yield objs

    def _walk(self, with_ends: bool) -> Iterator[tuple[list[Any], list[int] | None]]:
        segment = self.start  # where the current run of records (after a hole) starts
        while self.stop is None:
            zero_at = yield from self._segment(segment, with_ends)
            if zero_at is None:
                return
            if zero_at is None or self.trace.writer_alive():
                return  # the end, or where a live writer has not got to yet
            resume = self._past_zeros(zero_at)
            if resume is None:
                return
            segment = resume

    def _segment(self, start: int, with_ends: bool
                 ) -> Iterator[tuple[list[Any], list[int] | None]]:
        """Objects from `start` until the end of file, a stop, or a zero byte where an
        object should start (returned: where it is)."""
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_RECORD, **LIMITS)
        tell, upgrade = unpacker.tell, self.trace.upgrade
        total = self.trace.stat().st_size if self.progress else 0
        read_at = first = start
        while self.stop is None:
            data = self.trace.pread(self.chunk, read_at)
            if not data:
                why = self.trace.damage()
                end = max(self.end, start)
                if read_at > end:
                    self.stop = (f"incomplete record ({read_at - end} bytes)"
                                 + (f", {why}" if why else ""))
                else:
                    self.stop = why
                return None
            try:
                unpacker.feed(data)
            except msgpack.BufferFull:
                self.stop = f"record larger than {MAX_RECORD >> 20} MiB"
                return None
            read_at += len(data)
            if self.progress:
                total = max(total, read_at)
                self.progress(read_at, total)
            objs: list[Any] = []
            ends: list[int] | None = [] if with_ends else None
            add_obj = objs.append
            last = tell()
            zero_at = None
            try:
                for obj in unpacker:
                    if type(obj) is int and obj == 0 and tell() == last + 1:
                        zero_at = start + last  # one 0x00 byte: no record starts so
                        break
                    add_obj(obj if upgrade is None else upgrade(obj))
                    last = tell()  # after a cut object tell() is past it: keep this one
                    if ends is not None:
                        ends.append(start + last)
            except Exception as exc:  # the decoder (or an upgrade) rejected the bytes
                self.stop = f"undecodable bytes ({str(exc) or type(exc).__name__})"
            if objs:
                self.batch_start, first = first, start + last
                self.end = start + last
                yield objs, ends
            if zero_at is not None:
                return zero_at
        return None

    def _past_zeros(self, at: int) -> int | None:
        """Where reading goes on after the zero byte at `at` (its writer gone), noting
        what is skipped in `holes`; None when the trace ends there."""
        pos = self._slot_end(at) or at
        slot_end = pos
        while True:
            data = self.trace.pread(self.chunk, pos)
            if not data:  # space allocated ahead of a writer that did not close
                if slot_end > at:
                    self.holes.append((at, slot_end))
                return None
            rest = data.lstrip(b"\0")
            pos += len(data) - len(rest)
            if rest:
                break
        resume, end = self._resync(pos)
        self.holes.append((at, end if resume is None else resume))
        return resume  # None: nothing whole after it, a last slot left half-copied

    def _slot_end(self, at: int) -> int | None:
        """Where the slot at `at` ends, if its bytes are a record but for the first one
        (never written: see `_append.c`), with a meta map or without."""
        for first in (0x94, 0x93):
            end = self._record_end(at, first)
            if end is not None:
                return end
        return None

    def _resync(self, pos: int) -> tuple[int | None, int]:
        """The first plausible record start at or after `pos` (see the module docstring),
        or None and where the file ended."""
        while True:
            data = self.trace.pread(self.chunk, pos)
            if not data:
                return None, pos
            for match in _RECORD_START.finditer(data):
                if self._plausible(pos + match.start()):
                    return pos + match.start(), pos + match.start()
            pos += len(data)

    def _plausible(self, at: int) -> bool:
        end = self._record_end(at)
        if end is None:
            return False
        follow = self.trace.pread(1, end)
        return not follow or follow == b"\0" or (
            follow[0] in (0x93, 0x94) and self._record_end(end) is not None)

    def _record_end(self, at: int, first: int | None = None) -> int | None:
        """Where the record starting at `at` (its first byte taken to be `first`) ends,
        if a whole valid one does."""
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_RECORD, **LIMITS)
        size = 1 << 12
        while True:
            data = self.trace.pread(size, at)
            if first is not None and data:
                data = bytes([first]) + data[1:]
            try:
                unpacker.feed(data)
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                if len(data) < size or size >= MAX_RECORD:
                    return None
                unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_RECORD, **LIMITS)
                size *= 4
                continue
            except Exception:
                return None
            upgrade = self.trace.upgrade
            try:
                if upgrade is not None:
                    obj = upgrade(obj)
            except Exception:
                return None
            return at + unpacker.tell() if problem(obj) is None else None

    def span(self, start: int, count: int) -> int:
        """Where the `count` whole objects from `start` end (found again, slowly: the
        no-offsets walk only knows where whole batches end)."""
        if count == 0:
            return start
        scan = Scan(self.trace, start, chunk=1 << 20)
        seen = 0
        for objs, ends in scan.batches():
            if seen + len(objs) >= count:
                return ends[count - seen - 1]
            seen += len(objs)
        return scan.end


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a pass that keeps millions of small acyclic
    objects (events, pairing tables) otherwise spends a third of its time in collections
    that free nothing. What it made is then frozen out of later collections too (plain
    reference counting still frees it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()
