"""The kernel's side of the /dev/fuse ioctls, emulated: the performer the replay's trap
(`inspector.exchange.trap`, the recorder's) hands the server's ioctls to.

Nothing is mounted during a replay and /dev/fuse is never opened, so the server's
passthrough ioctls (caught on its socket exactly as when recording: same filter, same
hand-over) are answered here, deterministically and as the 6.18 kernel does:

- BACKING_OPEN: checked in the order of 6.18's `fuse_backing_open()` (fs/fuse/backing.c),
  so a server that gets two things wrong sees the error the kernel would give: EPERM when
  the replayed INIT did not negotiate passthrough or the calling thread lacks
  CAP_SYS_ADMIN; EINVAL for nonzero flags or padding; EBADF when the fd is not open in the
  server; EISDIR for a directory, EINVAL for any other non-regular file; ELOOP when the
  backing file's filesystem stacks as deep as the INIT reply's max_stack_depth. Then the
  next id of 1, 2, 3 … (never reused, as the kernel's cyclic allocator does not reuse them
  soon). Android's PASSTHROUGH_OPEN forms: EPERM, then EBADF, then EINVAL for a file that
  is not regular.
- BACKING_CLOSE: 0 for an open id (and it is closed), ENOENT for any other.
- SYNC_INIT: ENOTTY, as the recorder answers it (CLONE is the trap's own business: the
  new descriptor becomes another of the relay's, as when recording).

Every ioctl goes to an `IoctlLog`, which the replay reads (and, with `--write`, the new
trace records).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from dissectors.constants import FUSE_WRITEBACK_CACHE
from dissectors.context import Dialect
from dissectors.ioctls import DevIoctl, ioctl_arg_fields

from ..exchange import creds
from ..exchange.trap import Outcome, TrappedIoctl, pidfd_getfd

if TYPE_CHECKING:
    from traces import TraceWriter

CAP_SYS_ADMIN = 21
FILESYSTEM_MAX_STACK_DEPTH = 2  # include/linux/fs.h
#: s_stack_depth of filesystems that stack on others (statfs f_type → at least this deep);
#: any other filesystem is taken as 0 (a FUSE mount that negotiated passthrough is deeper,
#: which nothing outside the kernel can see).
STACKING_MAGIC = {0x794C7630: 1,  # OVERLAYFS_SUPER_MAGIC
                  0xF15F: 1}  # ECRYPTFS_SUPER_MAGIC
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
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


class EmulatedKernel:
    """The trap's performer for a replay: ioctls that never reach a device."""

    def __init__(self, passthrough: Callable[[], int]) -> None:
        """`passthrough()` is the max_stack_depth the replayed INIT reply negotiated
        passthrough with (0: not negotiated)."""
        self.passthrough = passthrough
        self.next_id = 1
        self.open_ids: set[int] = set()

    def perform(self, call: TrappedIoctl) -> Outcome:
        cmd, arg = call.cmd, call.arg
        if cmd == DevIoctl.SYNC_INIT:
            return Outcome(-1, errno.ENOTTY, "answered as a kernel without SYNC_INIT")
        if cmd in _OPENS:
            return self._open(cmd, arg, call.pid, call.tid, call.backing_fd)
        backing_id = ioctl_arg_fields(cmd, arg).get("backing_id")
        if cmd == DevIoctl.BACKING_CLOSE and backing_id is not None:
            if backing_id not in self.open_ids:
                return Outcome(-1, errno.ENOENT, "emulated")
            self.open_ids.discard(backing_id)
            return Outcome(0, 0, "emulated")
        return Outcome(-1, errno.ENOTTY, "not a /dev/fuse ioctl this replay knows")

    def _open(self, cmd: int, arg: bytes, pid: int, tid: int,
              backing_fd: int | None) -> Outcome:
        max_depth = self.passthrough()
        if not max_depth:
            return Outcome(-1, errno.EPERM, "emulated: INIT did not negotiate passthrough")
        try:
            caller = creds.of_thread(pid, tid)
        except OSError as exc:
            return Outcome(-1, exc.errno or errno.ESRCH,
                           recorder_error=f"reading the caller's credentials: {exc.strerror}")
        if not caller.cap_effective >> CAP_SYS_ADMIN & 1:
            return Outcome(-1, errno.EPERM, "emulated: the caller lacks CAP_SYS_ADMIN")
        mainline = cmd == DevIoctl.BACKING_OPEN
        if mainline and any(ioctl_arg_fields(cmd, arg).get(f) for f in ("flags", "padding")):
            return Outcome(-1, errno.EINVAL, "emulated: flags and padding must be 0")
        found = _backing_file(pid, backing_fd) if backing_fd is not None else None
        if found is None:
            return Outcome(-1, errno.EBADF, "emulated")
        mode, depth = found
        if not stat.S_ISREG(mode):
            if mainline and stat.S_ISDIR(mode):
                return Outcome(-1, errno.EISDIR, "emulated: a directory cannot back a file")
            return Outcome(-1, errno.EINVAL, "emulated: only a regular file can back a file")
        if mainline and depth >= max_depth:
            return Outcome(-1, errno.ELOOP, f"emulated: the backing file's filesystem stacks "
                                            f"{depth} deep, max_stack_depth is {max_depth}")
        backing_id, self.next_id = self.next_id, self.next_id + 1
        self.open_ids.add(backing_id)
        return Outcome(backing_id, 0, "emulated")


def negotiated_depth(dialect: Dialect, flags: int, max_stack_depth: int) -> int:
    """The max_stack_depth passthrough works with after this INIT reply, 0 when the kernel
    leaves it off (6.18's process_init_reply: FUSE_PASSTHROUGH with a depth of 1 to
    FILESYSTEM_MAX_STACK_DEPTH, and no writeback cache). Android's dialect stacks up to
    the same limit."""
    if dialect is Dialect.ANDROID:
        return FILESYSTEM_MAX_STACK_DEPTH
    if (dialect is Dialect.MAINLINE and 0 < max_stack_depth <= FILESYSTEM_MAX_STACK_DEPTH
            and not flags & FUSE_WRITEBACK_CACHE):
        return max_stack_depth
    return 0


def _backing_file(pid: int, fd: int) -> tuple[int, int] | None:
    """(st_mode, stack depth) of the file behind `fd` in process `pid`; None when it is not
    open there. Taken and closed again, as the kernel's fget_raw looks it up (O_PATH fds
    count)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        ours = pidfd_getfd(pidfd, fd)
    except OSError:
        return None
    finally:
        os.close(pidfd)
    try:
        return os.fstat(ours).st_mode, STACKING_MAGIC.get(_fs_type(ours), 0)
    finally:
        os.close(ours)


def _fs_type(fd: int) -> int:
    """statfs f_type of the filesystem `fd` is on (0 when fstatfs fails)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first word
    if _LIBC.fstatfs(fd, buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
