"""The recorder's seccomp trap with the kernel's side of /dev/fuse ioctls emulated.

Nothing is mounted during a replay and /dev/fuse is never opened, so the server's
passthrough ioctls (caught on its socket exactly as when recording: same filter, same
hand-over) are answered here, deterministically and as the 6.18 kernel does:

- BACKING_OPEN (and Android's PASSTHROUGH_OPEN forms): the next id of 1, 2, 3 … when the
  fd is open in the server, flags are 0, the replayed INIT granted passthrough and the
  calling thread has CAP_SYS_ADMIN (EBADF, EINVAL, EPERM otherwise). Ids are never reused, as the kernel's cyclic
  allocator does not reuse them soon.
- BACKING_CLOSE: 0 for an open id (and it is closed), ENOENT for any other.
- CLONE: EINVAL, SYNC_INIT: ENOTTY, as the recorder answers them.

A libfuse 2 server that opens /dev/fuse and calls mount(2) itself gets the socket on its
open and a pretended success on its mount (as root only, as when recording).

Every ioctl goes to an `IoctlLog`, which the replay reads (and, with `--write`, the new
trace records).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, cast

from dissectors.ioctls import DevIoctl

from ..record import creds
from ..record.trap import IoctlTrap, Outcome, ServerMount, pidfd_getfd

if TYPE_CHECKING:
    from traces import TraceWriter

CAP_SYS_ADMIN = 21
_OPENS = frozenset({DevIoctl.BACKING_OPEN, DevIoctl.PASSTHROUGH_OPEN_V1,
                    DevIoctl.PASSTHROUGH_OPEN_V2})


@dataclass
class IoctlCall:
    """One emulated ioctl, numbered in the order the server made them."""

    seq: int
    cmd: int
    arg: bytes
    result: int
    errno: int
    path: str | None


class IoctlLog:
    """Where the trap reports (it calls `ioctl` and `event` as it would on a TraceWriter)."""

    def __init__(self, writer: TraceWriter | None, on_call: Callable[[IoctlCall], None]) -> None:
        self.writer = writer
        self.on_call = on_call
        self.seq = 0
        self.lock = threading.Lock()

    def ioctl(self, *, cmd: int, arg: bytes, result: int, errno: int, path: str | None = None,
              **meta: Any) -> None:
        with self.lock:
            self.seq += 1
            if self.writer is not None:
                self.writer.ioctl(cmd=cmd, arg=arg, result=result, errno=errno, path=path, **meta)
            self.on_call(IoctlCall(self.seq, cmd, bytes(arg), result, errno, path))

    def event(self, name: str, **data: Any) -> None:
        if self.writer is not None:
            self.writer.event(name, **data)


class EmulatedTrap(IoctlTrap):
    """`IoctlTrap` whose ioctls never reach a device."""

    def __init__(self, relay_fd_in_child: int, log: IoctlLog, passthrough: Callable[[], bool],
                 device_open: bool) -> None:
        """`passthrough()` says whether the replayed INIT reply negotiated passthrough."""
        # The trap only calls `ioctl` and `event` on its writer: the log stands in for it.
        super().__init__(relay_fd_in_child, -1, cast("TraceWriter", log),
                         on_mount=self._mounted if device_open else None)
        self.passthrough = passthrough
        self.next_id = 1
        self.open_ids: set[int] = set()

    @staticmethod
    def _mounted(request: ServerMount) -> int:
        return 0  # nothing is mounted in a replay: the server is told it worked

    def _perform(self, cmd: int, arg: bytes, pid: int, tid: int, backing_fd: int | None,
                 fd_at: int | None) -> Outcome:
        if cmd == DevIoctl.CLONE:
            return Outcome(-1, errno.EINVAL, "refused, as when recording")
        if cmd == DevIoctl.SYNC_INIT:
            return Outcome(-1, errno.ENOTTY, "answered as a kernel without SYNC_INIT")
        if cmd in _OPENS:
            return self._open(cmd, arg, pid, tid, backing_fd)
        if cmd == DevIoctl.BACKING_CLOSE and len(arg) == 4:
            backing_id = struct.unpack("<I", arg)[0]
            if backing_id not in self.open_ids:
                return Outcome(-1, errno.ENOENT, "emulated")
            self.open_ids.discard(backing_id)
            return Outcome(0, 0, "emulated")
        return Outcome(-1, errno.ENOTTY, "not a /dev/fuse ioctl this replay knows")

    def _open(self, cmd: int, arg: bytes, pid: int, tid: int,
              backing_fd: int | None) -> Outcome:
        if backing_fd is None or not _has_fd(pid, backing_fd):
            return Outcome(-1, errno.EBADF, "emulated")
        if cmd == DevIoctl.BACKING_OPEN and len(arg) >= 8 and struct.unpack_from("<I", arg, 4)[0]:
            return Outcome(-1, errno.EINVAL, "emulated: flags must be 0")
        if not self.passthrough():
            return Outcome(-1, errno.EPERM, "emulated: INIT did not negotiate passthrough")
        try:
            caller = creds.of_thread(pid, tid)
        except OSError as exc:
            return Outcome(-1, exc.errno or errno.ESRCH,
                           recorder_error=f"reading the caller's credentials: {exc.strerror}")
        if not caller.cap_effective >> CAP_SYS_ADMIN & 1:
            return Outcome(-1, errno.EPERM, "emulated: the caller lacks CAP_SYS_ADMIN")
        backing_id, self.next_id = self.next_id, self.next_id + 1
        self.open_ids.add(backing_id)
        return Outcome(backing_id, 0, "emulated")


def _has_fd(pid: int, fd: int) -> bool:
    """Whether `fd` is open in process `pid` (taken and closed again, as the kernel would
    look it up)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        os.close(pidfd_getfd(pidfd, fd))
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)
