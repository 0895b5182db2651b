"""Writing a compressed trace behind the appenders: a spool file and a thread that follows it.

`TraceWriter` for `t.fzt.zst` appends the plain records to `t.fzt.zst.spool` (through the
same appender as a plain trace: mapped, reserve kept, first failure stops it), so nothing
that appends ever waits for compression. The `Compressor` thread wakes every
`POLL_SECONDS`, walks the whole records committed in the spool since it last looked
(a slot still being filled starts with a zero byte: see `_append.c`), and writes them to
`t.fzt.zst` as frames of whole records, a frame each `compressed.FRAME_BYTES` or
`compressed.FRAME_SECONDS`, through an appender of its own, which keeps room for the
closing records. The header's frame is written first, before any record (the trace
opens at once, and the room for closing records is taken before the spool can fill the
disk). Behind it, it punches the framed part out of the spool (the spool stays a few
frames big, whatever the trace's size). On close it frames the rest and removes the
spool.

- Full disk: a frame that does not fit stops the trace (the spool's appender too, so
  every appender stops at once) at that frame's first record, a whole-record boundary;
  what was appended to the spool after it is left out; the closing records appended
  after the stop are framed into the room kept for them. `settle()` frames everything
  appended so far first, so the stop is known before the closing records are written.
- `kill -9`: the frames written so far are whole, and the records not framed yet are in
  the spool, at their plain offsets; readers of `t.fzt.zst` read them from there (see
  `compressed.py`), so a killed recorder loses no more than with a plain trace.
- Order: frames hold the spool's bytes in order, and the spool is in reservation order.

Caveat: the walk reads the spool with `pread` while appenders store into its mapping; a
record's first byte is stored last, which x86-64 makes visible last to any reader. On a
weakly ordered CPU the walk could meet a record the instant its first byte lands and
read the rest stale; only records found a poll earlier are framed, which narrows that
to the walk's own parse.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from typing import TYPE_CHECKING, Callable

import msgpack

from . import compressed
from .stream import MAX_RECORD

if TYPE_CHECKING:
    from .writer import Appender, Stop

POLL_SECONDS = 0.05  # how often the spool is looked at: at most this late in a frame
_READ = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PUNCH = 1 << 20  # punch the framed spool in steps of at least this


_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01  # linux/falloc.h
_libc = ctypes.CDLL(None, use_errno=True)


def _punch(fd: int, offset: int, length: int) -> bool:
    """Free a framed range of the spool (os has no fallocate with flags); False where the
    filesystem cannot."""
    return _libc.fallocate(fd, _PUNCH_HOLE_KEEP_SIZE, ctypes.c_long(offset),
                           ctypes.c_long(length)) == 0


class Compressor:
    """Follows the spool of `path` and writes it to `path` as frames (module docstring).

    `spool_fd` is for the writer's appender (which owns it); `follow(appender)` starts
    the thread once that appender exists; `finish()` after the appender is closed."""

    def __init__(self, path: str, appender: Callable[[int], Appender], level: int = 3) -> None:
        self.path = path
        self.spool_path = path + compressed.SPOOL_SUFFIX
        out = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                      0o600)
        try:
            os.fchmod(out, 0o600)
            self._out = appender(out)
        except BaseException:
            os.close(out)
            raise
        try:
            self.spool_fd = os.open(self.spool_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC
                                    | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except BaseException:
            self._out.close()
            raise
        self._fd = os.open(self.spool_path, os.O_RDWR | os.O_CLOEXEC)  # reads and punches
        self._frames = compressed.FrameWriter(level=level)
        self._spool: Appender | None = None
        self.stopped: Stop | None = None  # the frame that did not fit, if one did not
        self.error: OSError | None = None  # what went wrong otherwise
        self._framed = 0  # spool bytes framed (or left out after a stop)
        self._records = 0  # records framed, the header not counted
        self._seen = 0  # end of the whole committed records found
        self._seen_records = 0  # objects found (the header is the first)
        self._cuts: list[tuple[int, int]] = []  # (end, objects) where a full frame ends
        self._since: float | None = None  # when the oldest unframed record was found
        self._punched = 0
        self._header_end = 0  # the spool's header stays: readers check it
        self._closing = threading.Event()
        self._lock = threading.Lock()  # one pass at a time: the thread's or settle()'s
        self._thread = threading.Thread(target=self._run, name="fusetrace-zstd", daemon=True)

    def follow(self, spool: Appender) -> None:
        """Frame the header (so the trace can be opened, and its closing room is taken
        before the spool can fill the disk), then follow the spool."""
        self._spool = spool
        self._find()
        if not self._header_end:
            raise OSError(errno.EIO, f"{self.spool_path}: no header in the spool")
        self._frame(self._header_end, 1, closing=False)
        if self.stopped is not None:
            raise OSError(self.stopped[0], os.strerror(self.stopped[0]))
        self._thread.start()

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing.wait(POLL_SECONDS):
                with self._lock:
                    self._pass(flush=False)
            with self._lock:
                self._pass(flush=True, closing=True)
        except OSError as exc:
            self.error = exc
        except Exception as exc:  # zstd: nothing the writer can do about it but say so
            self.error = OSError(errno.EIO, f"compressing {self.path}: {exc}")
        finally:
            self._out.close()
            os.close(self._fd)

    def _find(self) -> None:
        """Move `_seen` past the whole, committed records after it, noting where each
        full frame would end."""
        size = _READ
        while True:
            data = os.pread(self._fd, size, self._seen)
            unpacker = msgpack.Unpacker(max_buffer_size=max(size, _READ))
            unpacker.feed(data)
            at = 0
            while at < len(data) and data[at]:  # a zero first byte: not committed yet
                try:
                    unpacker.skip()
                except msgpack.OutOfData:
                    break
                except Exception:  # not a record: cannot happen; nothing more is framed
                    return
                at = unpacker.tell()
                self._seen_records += 1
                if self._seen_records == 1:
                    self._header_end = self._seen + at
                start = self._cuts[-1][0] if self._cuts else self._framed
                if self._seen + at - start >= compressed.FRAME_BYTES:
                    self._cuts.append((self._seen + at, self._seen_records))
            if at and self._since is None:
                self._since = time.monotonic()
            self._seen += at
            if at == 0 and len(data) == size and data[0] and size < 2 * MAX_RECORD:
                size *= 2  # a record longer than what was read
                continue
            if at == 0 or len(data) < size:
                return
            size = _READ

    def _pass(self, flush: bool, closing: bool = False) -> None:
        """Frame what is due: full frames, and the rest once it is old enough or when
        `flush`. Without `flush` only what the previous pass found is framed: a record
        whose first byte was seen a poll ago is whole in what `pread` returns on any CPU
        (a flush comes after the appending threads are done). After a stop, only
        `closing` passes frame (the closing records)."""
        ripe = (self._seen, self._seen_records)
        self._find()
        if flush:
            ripe = (self._seen, self._seen_records)
        if self.stopped is not None:
            if closing:
                self._frame(*ripe, closing=True)
            return
        done = 0
        for end, objects in self._cuts:
            if end > ripe[0] or not self._frame(end, objects, closing):
                break
            done += 1
        del self._cuts[:done]
        late = (self._since is not None
                and time.monotonic() - self._since >= compressed.FRAME_SECONDS)
        if ripe[0] > self._framed and (flush or late) and self.stopped is None:
            self._frame(*ripe, closing)
        if self._framed >= self._seen:
            self._since = None
        elif self._since is None or self._framed == ripe[0]:
            self._since = time.monotonic()

    def _frame(self, end: int, objects: int, closing: bool) -> bool:
        """Spool bytes [_framed, end) as one frame; False when they did not fit (which
        stops the trace there)."""
        if end <= self._framed:
            return True
        plain = os.pread(self._fd, end - self._framed, self._framed)
        try:
            self._out.append(self._frames.framed(plain), 0, closing)
        except OSError as exc:
            if closing or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._stop(exc.errno)
            return False
        self._framed, self._records = end, max(objects - 1, 0)
        if end - self._punched >= _PUNCH:
            start = max(self._punched, -(-self._header_end // _PAGE) * _PAGE)
            length = (end // _PAGE) * _PAGE - start
            if length > 0 and _punch(self._fd, start, length):
                self._punched = start + length
        return True

    def _stop(self, err: int) -> None:
        """The trace ends at `_framed`: stop every appender; what the spool holds up to
        where they stopped is left out, what comes after (the closing records) is not."""
        self.stopped = (err, self._records, self._framed, time.monotonic_ns())
        assert self._spool is not None
        self._spool.stop(err)
        spool_stop = self._spool.stopped
        frozen = spool_stop[2] if spool_stop is not None else self._seen
        self._cuts.clear()
        self._framed = frozen
        self._seen = max(self._seen, frozen)

    # --- the writer's side ----------------------------------------------------------------

    def settle(self) -> None:
        """Frame every record appended so far (or stop at the first frame that does not
        fit)."""
        if self._thread.is_alive():
            with self._lock:
                self._pass(flush=True)

    def finish(self) -> None:
        """After the spool's appender is closed: frame the rest, remove the spool, close;
        raise what went wrong writing, if anything."""
        self._closing.set()
        if self._thread.ident is not None:
            self._thread.join()
        else:
            self._out.close()
            os.close(self._fd)
        if self.error is None:
            try:
                os.unlink(self.spool_path)
            except FileNotFoundError:
                pass
        if self.error is not None:
            raise self.error
