"""Compressed traces (`.fzt.zst`): the plain trace's bytes in independent zstd frames.

Layout: frame after frame, each preceded by a small zstd *skippable* frame that says how
long it is, compressed and not:

    [skippable 0x184D2A5E, 12 bytes: b"fzt1", u32 compressed size, u32 size] [zstd frame] ...

so `zstd -d` reads the file as it is (it skips skippable frames) and gives the plain
trace, while fusetrace walks the markers (one 20-byte read per frame) to a frame table
and reads any byte range of the plain trace by decompressing only the frames that hold
it. Every reader sees offsets of the plain trace: the index, `record(i)`, the TUI's live
tail. Frames end after a megabyte or a second of writing, at a record boundary when a
`TraceWriter` writes them (so a full disk stops the trace at a whole record), anywhere
in `fusetrace compress`: the readers already stop cleanly at a record cut at the end of
what is readable.

Writing: `TraceWriter` for a path ending in `.zst` appends the plain records to a spool
file beside it (`t.fzt.zst.spool`) and a `compressor.Compressor` thread writes the frames
behind it (see there). While the trace is being written, and after a writer was killed,
readers read the records not framed yet from the spool, at their plain offsets, after
the last whole frame: the spool's header must be the trace's, byte for byte. A file cut
anywhere reads up to its last whole frame (and on from the spool, if it is there); zero
bytes where a marker should be are space the writer's appender allocated ahead (see
`_append.c`), not damage (`zstd -d` stops at them with an error, after writing every
frame out); a frame that fails its checksum ends the readable part there.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
from collections import OrderedDict
from typing import Any, Callable

import zstandard

from .compat import RecordUpgrade
from .errors import TraceReadError
from .stream import TraceFile

FRAME_BYTES = 1 << 20  # plain bytes per frame: random access decompresses one or two
FRAME_SECONDS = 1.0  # a slow session still reaches the disk in whole frames this often
_MARKER = struct.Struct("<II4sII")  # skippable magic, payload size, tag, compressed, plain
_SKIPPABLE = 0x184D2A5E
_TAG = b"fzt1"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CACHED_FRAMES = 4
SPOOL_SUFFIX = ".spool"  # the plain records a compressed trace's writer has not framed


def is_compressed(head: bytes) -> bool:
    """Whether a file starting with `head` (4 bytes or more) is zstd of any kind."""
    if head[:4] == _ZSTD_MAGIC:
        return True
    return len(head) >= 4 and int.from_bytes(head[:4], "little") & ~0xF == 0x184D2A50


def marker(compressed: int, plain: int) -> bytes:
    return _MARKER.pack(_SKIPPABLE, 12, _TAG, compressed, plain)


class FrameTable:
    """Where each frame sits, in the file and in the plain trace, and their bytes."""

    def __init__(self, fd: int, where: str) -> None:
        self.fd, self.where = fd, where
        self.file_at: list[int] = []  # offset of each zstd frame in the file
        self.sizes: list[int] = []  # its compressed size
        self.plain_at: list[int] = [0]  # plain offset of each frame; last = plain end
        self.next_marker = 0  # file offset where the next marker is expected
        self.broken: str | None = None  # why the walk cannot go on (a bad frame)
        self._dctx = zstandard.ZstdDecompressor()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def plain_end(self) -> int:
        return self.plain_at[-1]

    def walk(self) -> None:
        """Add the whole frames written since the last walk (a cut last frame waits)."""
        size = os.fstat(self.fd).st_size
        while self.broken is None and self.next_marker + _MARKER.size <= size:
            head = self._read(_MARKER.size, self.next_marker)
            if head[0] == 0:  # no frame starts so: space allocated ahead, or a frame
                return  # being written (or whose writer was killed): see `_append.c`
            magic, length, tag, comp, plain = _MARKER.unpack(head)
            if magic != _SKIPPABLE or length != 12 or tag != _TAG:
                first = self.next_marker == 0
                self.broken = (f"no frame marker at byte {self.next_marker}"
                               + (" (compressed by plain zstd? use `zstd -d`, then "
                                  "`fusetrace compress`)" if first else ""))
                return
            start = self.next_marker + _MARKER.size
            if start + comp > size:
                return  # the last frame is still being written, or was cut
            self.file_at.append(start)
            self.sizes.append(comp)
            self.plain_at.append(self.plain_end + plain)
            self.next_marker = start + comp

    def frame(self, k: int) -> bytes:
        data = self._cache.get(k)
        if data is not None:
            self._cache.move_to_end(k)
            return data
        blob = self._read(self.sizes[k], self.file_at[k])
        want = self.plain_at[k + 1] - self.plain_at[k]
        try:
            data = self._dctx.decompress(blob, max_output_size=want)
        except zstandard.ZstdError as exc:
            data = None
            why = str(exc)
        else:
            why = f"frame holds {len(data)} bytes, its marker says {want}"
        if data is None or len(data) != want:
            self._cut(k, f"bad frame {k} at byte {self.file_at[k]}: {why}")
            return b""
        self._cache[k] = data
        if len(self._cache) > _CACHED_FRAMES:
            self._cache.popitem(last=False)
        return data

    def _cut(self, k: int, why: str) -> None:
        """Forget frame k and everything after it: the readable trace ends there."""
        self.broken = why
        del self.file_at[k:], self.sizes[k:], self.plain_at[k + 1:]
        self._cache.clear()

    def pread(self, size: int, offset: int) -> bytes:
        """Plain bytes [offset, offset + size), fewer at the end of the whole frames."""
        with self._lock:
            if offset + size > self.plain_end:
                self.walk()
            parts: list[bytes] = []
            k = bisect.bisect_right(self.plain_at, offset) - 1
            while size > 0 and 0 <= k < len(self.file_at):
                data = self.frame(k)
                if not data:
                    break
                piece = data[offset - self.plain_at[k]:offset - self.plain_at[k] + size]
                parts.append(piece)
                offset += len(piece)
                size -= len(piece)
                k += 1
            return b"".join(parts)

    def damage(self) -> str | None:
        """A bad frame, or a last frame cut short (still being written, or a crash)."""
        if self.broken:
            return self.broken
        size = os.fstat(self.fd).st_size
        if self.next_marker < size and self._read(1, self.next_marker) != b"\0":
            return (f"compressed frame {len(self.file_at)} cut short (at byte "
                    f"{self.next_marker} of {size} of the file)")
        return None

    def _read(self, size: int, offset: int) -> bytes:
        try:
            return os.pread(self.fd, size, offset)
        except OSError as exc:
            raise TraceReadError(
                f"{self.where}: read error at byte {offset}: {exc.strerror}") from None


class CompressedTraceFile(TraceFile):
    """A `TraceFile` whose offsets and reads are those of the plain trace inside: its
    frames, then the records its spool holds past them, if the spool is there."""

    frames: FrameTable
    spool: int = -1  # the spool's descriptor, when it belongs to this trace

    def pread(self, size: int, offset: int) -> bytes:
        data = self.frames.pread(size, offset)
        if len(data) < size and self.spool >= 0:
            at = offset + len(data)
            if at >= self.frames.plain_end:
                try:
                    data += os.pread(self.spool, size - len(data), at)
                except OSError as exc:
                    raise TraceReadError(f"{self.path}{SPOOL_SUFFIX}: read error at byte "
                                         f"{at}: {exc.strerror}") from None
        return data

    def damage(self) -> str | None:
        return self.frames.damage()

    def close(self) -> None:
        if self.spool >= 0:
            os.close(self.spool)
            self.spool = -1
        super().close()


def _open_spool(where: str, header: bytes) -> int:
    """The spool beside a compressed trace, if there is one and it holds that trace's
    records (its header is `header`, byte for byte); else -1."""
    try:
        fd = os.open(where + SPOOL_SUFFIX, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        if os.pread(fd, len(header), 0) == header:
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


def open_compressed(fd: int, where: str,
                    read_header: Callable[[Callable[[int, int], bytes], str], tuple[Any, int]],
                    check: Callable[[Any, str], tuple[dict[str, Any], RecordUpgrade | None]]
                    ) -> CompressedTraceFile:
    """The trace opener's path for a compressed file (`opening.open_trace` calls it)."""
    frames = FrameTable(fd, where)
    frames.walk()
    if not frames.file_at:
        if frames.broken:
            raise TraceReadError(f"{where}: not a fusetrace compressed trace ({frames.broken})")
        if why := frames.damage():
            raise TraceReadError(f"{where}: {why}, nothing readable before it")
    obj, start = read_header(frames.pread, where)
    header, upgrade = check(obj, where)
    trace = CompressedTraceFile(fd, where, header, obj["format"], start, upgrade)
    trace.frames = frames
    trace.spool = _open_spool(where, frames.pread(start, 0))
    return trace


# --- writing ------------------------------------------------------------------------

class FrameWriter:
    """Frames with their markers, for an open file descriptor (`frame`) or any appender
    (`framed`)."""

    def __init__(self, fd: int = -1, level: int = 3) -> None:
        self.fd = fd
        self._cctx = zstandard.ZstdCompressor(level=level, write_checksum=True,
                                              write_content_size=True)

    def framed(self, plain: bytes) -> bytes:
        """`plain` as one frame with its marker."""
        blob = self._cctx.compress(plain)
        return marker(len(blob), len(plain)) + blob

    def frame(self, plain: bytes) -> None:
        if not plain:
            return
        data = memoryview(self.framed(plain))
        while data:
            data = data[os.write(self.fd, data):]
