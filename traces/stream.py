"""Low-level reading shared by the reader and the index: open + header, then a chunked walk.

Records are read with `os.pread` chunks fed to a msgpack `Unpacker`, never by loading the
file, and the walk ends at the current end of file, so calling it again later picks up
what a live writer appended. `Unpacker.tell()` stays at the end of the last whole object,
which is where a cut or corrupt tail begins.

Caveat: msgpack preallocates arrays and maps from their declared length, so the limits
below keep one corrupt length byte from allocating gigabytes. Records may therefore hold
at most 4096 items per array and 1024 keys per map in their meta, and 64 MiB in all.
"""

from __future__ import annotations

import gc
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import msgpack

from .compat import RecordUpgrade, check_header
from .errors import TraceReadError

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


def open_trace(path: str | os.PathLike[str]) -> TraceFile:
    """Open `path` (plain or compressed, see `compressed.py`) and check its header; any
    problem is a `TraceReadError`."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TraceReadError(f"{where}: no such file") from None
    except OSError as exc:
        raise TraceReadError(f"{where}: cannot open: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise TraceReadError(f"{where}: is a directory, not a trace")
        if not stat.S_ISREG(mode):
            raise TraceReadError(f"{where}: not a regular file")
        from . import compressed  # it builds on this module

        if compressed.is_compressed(os.pread(fd, 4, 0)):
            return compressed.open_compressed(fd, where, _read_header, check_header)
        obj, start = _read_header(lambda size, pos: os.pread(fd, size, pos), where)
        header, upgrade = check_header(obj, where)
        return TraceFile(fd, where, header, obj["format"], start, upgrade)
    except BaseException:
        os.close(fd)
        raise


def _read_header(pread: Callable[[int, int], bytes], where: str) -> tuple[Any, int]:
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
    starts at `start`. Afterwards `end` is the offset just past the last whole object and
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

    def batches(self) -> Iterator[tuple[list[Any], list[int]]]:
        """(objects, end offsets) per chunk."""
        return self._walk(True)  # type: ignore[return-value]

    def objects(self) -> Iterator[list[Any]]:
        """Objects per chunk without their offsets (cheaper); `batch_start` is where the
        current batch's first object starts, `end` where its last one ends."""
        for objs, _ in self._walk(False):
            yield objs

    def _walk(self, with_ends: bool) -> Iterator[tuple[list[Any], list[int] | None]]:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_RECORD, **LIMITS)
        tell, upgrade, start = unpacker.tell, self.trace.upgrade, self.start
        total = self.trace.stat().st_size if self.progress else 0
        read_at = start
        while self.stop is None:
            data = self.trace.pread(self.chunk, read_at)
            if not data:
                why = self.trace.damage()
                if read_at > self.end:
                    self.stop = (f"incomplete record ({read_at - self.end} bytes)"
                                 + (f", {why}" if why else ""))
                else:
                    self.stop = why
                return
            try:
                unpacker.feed(data)
            except msgpack.BufferFull:
                self.stop = f"record larger than {MAX_RECORD >> 20} MiB"
                return
            read_at += len(data)
            if self.progress:
                total = max(total, read_at)
                self.progress(read_at, total)
            objs: list[Any] = []
            ends: list[int] | None = [] if with_ends else None
            add_obj = objs.append
            try:
                if ends is not None:
                    add_end = ends.append
                    for obj in unpacker:
                        add_obj(obj if upgrade is None else upgrade(obj))
                        add_end(start + tell())
                else:
                    last = tell()
                    for obj in unpacker:
                        add_obj(obj if upgrade is None else upgrade(obj))
                        last = tell()  # after a cut object tell() is past it: keep this one
            except Exception as exc:  # the decoder (or an upgrade) rejected the bytes
                self.stop = f"undecodable bytes ({str(exc) or type(exc).__name__})"
            if objs:
                self.batch_start = self.end
                self.end = ends[-1] if ends is not None else start + last
                yield objs, ends

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
