"""The server's own view of its conversation (`--trace FILE`), through `traces.TraceWriter`.

Order matters more than anything: a request is recorded before it is handled, and a reply
is stamped before it is written and recorded under the same lock that the next request's
record waits for, so a request the kernel sends because of a reply (RELEASE after OPEN …)
can never appear before that reply. The write's errno goes into the reply record
(`write_errno`), which is why the record is made right after the write, with the
timestamp taken before it.

Without `--trace`, `send` only writes and everything else does nothing. A trace that
cannot be written (disk full …) is given up with an error in the log, rather than
leaving the kernel waiting for replies.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from dissectors.quick import snap

log = logging.getLogger(__name__)


def _write(fd: int, raw: bytes) -> int:
    try:
        os.write(fd, raw)
    except OSError as exc:
        return exc.errno or 0
    return 0


def _cut(true_len: int | None) -> dict[str, int]:
    return {"len": true_len} if true_len is not None else {}


class Tracer:
    """Thread-safe front of a TraceWriter; a no-op when `writer` is None."""

    def __init__(self, writer: Any = None, snaplen: int = 0) -> None:
        self._writer = writer
        self._snaplen = snaplen
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: str, header: dict[str, Any], snaplen: int) -> Tracer:
        from traces import TraceWriter

        return cls(TraceWriter(path, header={**header, "snaplen": snaplen}), snaplen)

    def request(self, raw: bytes) -> None:
        if self._writer is not None:
            kept, true_len = snap(raw, True, None, self._snaplen)
            with self._lock:
                self._record("request", kept, **_cut(true_len))

    def send(self, fd: int, raw: bytes, opcode: int | None = None) -> int:
        """Write one reply (to a request of `opcode`) to /dev/fuse and record it; returns
        the write's errno (0 = ok)."""
        if self._writer is None:
            return _write(fd, raw)
        kept, true_len = snap(raw, False, opcode, self._snaplen)
        with self._lock:
            ts = time.monotonic_ns()
            err = _write(fd, raw)
            extra = {"write_errno": err} if err else {}
            self._record("reply", kept, ts=ts, **_cut(true_len), **extra)
            return err

    def ioctl(self, cmd: int, arg: bytes, result: int, errno: int, fd: int | None) -> None:
        """A /dev/fuse ioctl, with the path behind `fd` as /proc shows it now."""
        if self._writer is None:
            return
        path = None
        if fd is not None:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = None
        with self._lock:
            self._record("ioctl", cmd=cmd, arg=bytes(arg), result=result, errno=errno,
                         tid=threading.get_native_id(), pid=os.getpid(), fd=fd, path=path)

    def event(self, name: str, **data: Any) -> None:
        if self._writer is not None:
            with self._lock:
                self._record("event", name, **data)

    def close(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _record(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call the writer unless it was closed meanwhile (workers outlive shutdown)."""
        if self._writer is None:
            return
        try:
            getattr(self._writer, method)(*args, **kwargs)
        except (OSError, ValueError) as exc:
            log.error("trace %s: %s; no longer tracing", self._writer.path, exc)
            writer, self._writer = self._writer, None
            writer.close()
