"""Trace writer: every record reaches the file before the call returns.

Records go through an `Appender`: the native one (`_append.c`) where it is built, which
appends through a shared mapping from any number of threads (the recorder's C loops
append through its C API, `append.h`), else `FileAppender`, one `os.write` per record on
an `O_APPEND` descriptor. Neither keeps a userspace buffer, so a proxy that records a
message and then forwards it loses nothing if it is killed right after. `batch()` groups
records a caller forwards together into one append. An append is whole or absent, so the
trace stays a clean prefix. Files are mode 0600 whatever the umask: they can hold file
contents.

The first append that fails stops the trace: later records fail at once (the file stays
a prefix of the session, with no hole), except closing ones (`closing_event`: where
recording stopped, the session's end), which the native appender keeps room for
(`FileAppender` keeps none, so there they fit only if the disk has room again). A path
ending in `.zst` is written compressed: the records are appended, plain, to a spool file
beside it, and a `compressor.Compressor` thread follows the spool and writes the frames,
off every appending thread's path.
"""

from __future__ import annotations

import abc
import importlib.metadata
import os
import threading
import time
from types import TracebackType
from typing import Any, Callable, Protocol

import msgpack

from .compat import FORMAT_VERSION, MAGIC
from .compressor import Compressor
from .records import IOCTL_KEYS, TS_LIMIT, Kind, Record

_RESERVED = frozenset({"magic", "format"})


def tool_version() -> str:
    """The fusetrace release writing the file (the header's "tool")."""
    try:
        return importlib.metadata.version("fusetrace")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class TraceWriteError(OSError):
    """A record could not be appended (disk full, I/O error): the file still ends after
    the last whole record, and the message says where and why."""


Stop = tuple[int, int, int, int]  # errno, records before it, bytes before it, monotonic ns


class Appender(Protocol):
    """Whole-record appends to an open trace file, and their counts."""

    records: int
    bytes_written: int
    closed: bool
    stopped: Stop | None  # the append that stopped the trace

    def append(self, data: bytes, count: int = 1, closing: bool = False) -> None:
        """Write `data` (`count` records) whole, or raise with the file as it was; the
        first failure stops the trace, after which only `closing` appends are tried."""

    def stop(self, err: int) -> None:
        """Stop the trace as a failed append would (a no-op once stopped)."""

    def close(self) -> None: ...


class FileAppender:
    """`Appender` over an O_APPEND descriptor, with a lock: a write that fails half-way is
    cut back to the last whole record, which is only right if nobody appended meanwhile."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.records = 0
        self.bytes_written = 0
        self.stopped: Stop | None = None

    def append(self, data: bytes, count: int = 1, closing: bool = False) -> None:
        with self._lock:
            if self._fd < 0:
                raise ValueError("trace writer is closed")
            if self.stopped is not None and not closing:
                raise OSError(self.stopped[0], os.strerror(self.stopped[0]))
            view, done = memoryview(data), 0
            try:
                while done < len(view):
                    done += os.write(self._fd, view[done:])
            except BaseException as exc:
                if done:  # keep the file a clean prefix of whole records
                    os.ftruncate(self._fd, self.bytes_written)
                if not closing and isinstance(exc, OSError):
                    self.stopped = (exc.errno or 0, self.records, self.bytes_written,
                                    time.monotonic_ns())
                raise
            self.records += count
            self.bytes_written += len(data)

    def stop(self, err: int) -> None:
        with self._lock:
            if self.stopped is None:
                self.stopped = (err, self.records, self.bytes_written, time.monotonic_ns())

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


try:
    from ._append import Appender as NativeAppender
except ImportError:  # built without a compiler: every writer takes FileAppender
    NativeAppender = None  # type: ignore[assignment,misc]


def default_appender(fd: int) -> Appender:
    """The native appender where it is built, else `FileAppender`."""
    return NativeAppender(fd) if NativeAppender is not None else FileAppender(fd)


class _Recorder(abc.ABC):
    """The record-building methods shared by the writer and its batches."""

    @abc.abstractmethod
    def _emit(self, obj: list[Any]) -> None:
        """Store one record object."""

    @staticmethod
    def _ts(ts: int | None) -> int:
        if ts is None:
            return time.monotonic_ns()
        if type(ts) is not int or not 0 <= ts < TS_LIMIT:
            raise ValueError(f"timestamp must be an int in [0, 2**63): {ts!r}")
        return ts

    def _message(self, kind: Kind, raw: bytes, ts: int | None, meta: dict[str, Any]) -> None:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(f"message must be bytes, not {type(raw).__name__}")
        obj: list[Any] = [kind, self._ts(ts), raw]
        if meta:
            obj.append(meta)
        self._emit(obj)

    def request(self, raw: bytes, *, ts: int | None = None, **meta: Any) -> None:
        """kernel → server bytes. meta: len, original, reason (see records.py)."""
        self._message(Kind.REQUEST, raw, ts, meta)

    def reply(self, raw: bytes, *, ts: int | None = None, **meta: Any) -> None:
        """server → kernel bytes (a notification when unique is 0). meta as for requests,
        plus write_errno when the kernel rejected it."""
        self._message(Kind.REPLY, raw, ts, meta)

    def ioctl(self, *, cmd: int, arg: bytes, result: int = 0, errno: int = 0, tid: int = 0,
              pid: int = 0, fd: int | None = None, path: str | None = None,
              out: bytes | None = None, ts: int | None = None, **extra: Any) -> None:
        """A /dev/fuse ioctl the server made: `path` is what `fd` pointed to at call time,
        `out` the argument after the call."""
        meta = dict(zip(IOCTL_KEYS, (cmd, arg, result, errno, tid, pid, fd, path, out),
                        strict=True))
        meta.update(extra)
        self._emit([Kind.IOCTL, self._ts(ts), meta])

    def event(self, name: str, *, ts: int | None = None, **data: Any) -> None:
        """A session event: server_exit, unmount, proxy_error, note, session_end."""
        if "event" in data:
            raise ValueError("event data cannot hold a key named 'event'")
        self._emit([Kind.EVENT, self._ts(ts), {"event": name, **data}])

    def copy(self, rec: Record) -> None:
        """Append a record read from another trace as it was (time and meta kept)."""
        meta = dict(rec.meta)
        if rec.kind is Kind.REQUEST:
            self.request(rec.raw or b"", ts=rec.ts, **meta)
        elif rec.kind is Kind.REPLY:
            self.reply(rec.raw or b"", ts=rec.ts, **meta)
        elif rec.kind is Kind.IOCTL:
            self.ioctl(ts=rec.ts, **meta)
        else:
            self.event(meta.pop("event"), ts=rec.ts, **meta)


class TraceWriter(_Recorder):
    """Appends records to a new trace file (an existing file is replaced).

    `header` holds the caller's fields (kernel, argv, mountpoint, options, snaplen, source
    …); it may also set "tool" and "created", e.g. when rewriting an older capture.
    `appender` wraps the new file's descriptor (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any] | None = None,
                 appender: Callable[[int], Appender] = default_appender) -> None:
        fields = dict(header or {})
        if _RESERVED & fields.keys():
            raise ValueError(f"header fields {sorted(_RESERVED & fields.keys())} are the writer's")
        self.path = os.fspath(path)
        self.header = {"magic": MAGIC, "format": FORMAT_VERSION, "tool": tool_version(),
                       "created": time.time_ns(), **fields}
        self._lock = threading.Lock()
        self._packer = msgpack.Packer(use_bin_type=True)
        head = self._packer.pack(self.header)
        self._sink: Compressor | None = None
        if self.path.endswith(".zst"):  # compressed: the appender writes the spool
            self._sink = Compressor(self.path, appender)
            fd = self._sink.spool_fd
        else:  # read and write: the native appender maps it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                         | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            self.appender = appender(fd)
        except BaseException:
            os.close(fd)
            if self._sink is not None:
                self._sink.finish()
            raise
        try:
            self.appender.append(head, 0)
            if self._sink is not None:  # the header's frame, and its room, come first
                self._sink.follow(self.appender)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self.appender.closed

    @property
    def records(self) -> int:
        return self.appender.records

    @property
    def stopped(self) -> Stop | None:
        """(errno, records, bytes, monotonic ns) of the append that stopped the trace;
        compressed, of the first frame that could not be written, if that came first."""
        if self._sink is not None and self._sink.stopped is not None:
            return self._sink.stopped
        return self.appender.stopped

    def settle(self) -> None:
        """Compressed: wait until every record appended so far is in a frame (or the
        trace stopped at one that did not fit), so `stopped` is final for them; call it
        before the closing records. Plain traces are always settled."""
        if self._sink is not None:
            self._sink.settle()

    @property
    def bytes_written(self) -> int:
        return self.appender.bytes_written

    def close(self) -> None:
        self.appender.close()
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.finish()

    def batch(self) -> Batch:
        """Collect records and write them in one go when the `with` block ends."""
        return Batch(self)

    def _pack(self, obj: list[Any]) -> bytes:
        with self._lock:
            return self._packer.pack(obj)

    def _emit(self, obj: list[Any]) -> None:
        self._write(self._pack(obj), 1)

    def closing_event(self, name: str, *, ts: int | None = None, **data: Any) -> None:
        """`event`, written even after the trace stopped (into the room kept for it):
        the note saying where recording stopped, the session's end."""
        if "event" in data:
            raise ValueError("event data cannot hold a key named 'event'")
        self._write(self._pack([Kind.EVENT, self._ts(ts), {"event": name, **data}]), 1,
                    closing=True)

    def _write(self, data: bytes, count: int, closing: bool = False) -> None:
        stopped = self.stopped
        try:
            self.appender.append(data, count, closing)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None
        except OSError as exc:
            if stopped is not None and not closing:
                raise TraceWriteError(exc.errno, f"{self.path}: recording stopped at record "
                                      f"{stopped[1]} (byte {stopped[2]}): "
                                      f"{os.strerror(stopped[0])}") from exc
            raise TraceWriteError(exc.errno, f"{self.path}: cannot append record "
                                  f"{self.records} at byte {self.bytes_written}: "
                                  f"{exc.strerror or exc}; the trace holds the "
                                  f"{self.records} whole records before it") from exc


class Batch(_Recorder):
    """Records collected in memory; written by one append when the block exits.

    They are written even when the block raises: they describe messages already sent.
    """

    def __init__(self, writer: TraceWriter) -> None:
        self._writer = writer
        self._parts: list[bytes] = []

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.flush()

    def _emit(self, obj: list[Any]) -> None:
        self._parts.append(self._writer._pack(obj))

    def flush(self) -> None:
        """Write what was collected so far."""
        if self._parts:
            data, count = b"".join(self._parts), len(self._parts)
            self._parts = []
            self._writer._write(data, count)
