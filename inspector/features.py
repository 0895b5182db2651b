"""What this kernel can do, found out by asking it, never from its version string.

Backported features, distribution kernels and sysctls make a version number a poor guide,
so each probe tries the thing itself (and is done once per process):

- `max_pages_limit()`: `fs.fuse.max_pages_limit`, the most pages one FUSE request may carry
  (the sysctl exists since 6.13; before it the limit was fixed at 256).
- `passthrough()`: mounts a throwaway FUSE connection in a private directory, answers
  its INIT asking for FUSE_PASSTHROUGH and makes a real BACKING_OPEN (and BACKING_CLOSE):
  that is what a kernel without passthrough (before 6.9, or built without
  CONFIG_FUSE_PASSTHROUGH), a caller without CAP_SYS_ADMIN, or a missing /dev/fuse
  refuses, each with its own reason.
- `seccomp_user_notification()`: a forked child installs an allow-all seccomp filter with
  SECCOMP_FILTER_FLAG_NEW_LISTENER, as the recorder's trap does (before 5.0 the flag is
  unknown: EINVAL).
- `seqpacket_limit(sndbuf)`: the largest message a SOCK_SEQPACKET socket takes whole. The
  kernel builds each message in one allocation of at most KMALLOC_MAX_SIZE plus a few
  pages (4 MiB + 68 KiB on x86-64 with 4 KiB pages, whatever the send buffer: larger
  sends fail with ENOBUFS), and within the send buffer (EMSGSIZE).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import platform
import select
import shutil
import socket
import struct
import tempfile

from dissectors import DevIoctl, FuseBackingMap, FuseInHeader, FuseOutHeader
from dissectors.constants import FUSE_INIT_EXT, FUSE_MIN_READ_BUFFER, FUSE_PASSTHROUGH, Opcode
from dissectors.structs import FuseInitIn, FuseInitOut

from . import syscalls

#: the kernel's cap on a connection's max_pages when the sysctl is missing (before 6.13)
DEFAULT_MAX_PAGES_LIMIT = 256
_MAX_PAGES_SYSCTL = "/proc/sys/fs/fuse/max_pages_limit"
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_PROBE_WAIT_S = 5.0  # the kernel sends INIT as the mount returns; this is only a bound
_INIT_AT = len(bytes(FuseInHeader()))


@functools.lru_cache(maxsize=None)
def passthrough() -> str | None:
    """None when this kernel lets this process use FUSE passthrough, else why not."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    where = tempfile.mkdtemp(prefix="fusetrace-probe-")  # 0700, ours
    mounted = False
    try:
        try:
            syscalls.mount("fusetrace-probe", where, "fuse", _MS_NOSUID | _MS_NODEV,
                           f"fd={fd},rootmode=40000,user_id={os.geteuid()},"
                           f"group_id={os.getegid()}")
            mounted = True
        except OSError as exc:
            return f"a FUSE connection cannot be mounted here: {exc.strerror}"
        return _try_backing_open(fd)
    finally:
        os.close(fd)  # aborts the connection: the unmount below cannot wait on it
        if mounted:
            syscalls.umount2(where, _MNT_DETACH)
        shutil.rmtree(where, ignore_errors=True)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}  # the architectures the trap knows
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_ALLOW_ALL = (0x06, 0, 0, 0x7FFF0000)  # BPF_RET | BPF_K, SECCOMP_RET_ALLOW


@functools.lru_cache(maxsize=None)
def seccomp_user_notification() -> str | None:
    """None when a process here can install a seccomp filter with a notification listener
    (the recorder's trap), else why not."""
    nr = _SYS_SECCOMP.get(platform.machine())
    if nr is None:
        return f"no seccomp probe for {platform.machine()}"
    libc = ctypes.CDLL(None, use_errno=True)
    program = (_SockFilter * 1)(_SockFilter(*_ALLOW_ALL))
    prog = _SockFprog(1, program)
    pid = os.fork()
    if pid == 0:  # the filter stays with the child, which only reports how it went
        code = 0
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            code = ctypes.get_errno() or 255
        elif libc.syscall(nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_NEW_LISTENER,
                          ctypes.byref(prog)) < 0:
            code = ctypes.get_errno() or 255
        os._exit(min(code, 255))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    if code < 0:
        return f"the seccomp probe died of signal {-code}"
    return f"seccomp user notification refused: {os.strerror(code)}"


def _try_backing_open(fd: int) -> str | None:
    """Answer the probe connection's INIT asking for passthrough, then BACKING_OPEN."""
    if not select.select([fd], [], [], _PROBE_WAIT_S)[0]:
        return "the probe connection sent no INIT"
    raw = os.read(fd, FUSE_MIN_READ_BUFFER)
    head, init = FuseInHeader(raw[:_INIT_AT]), FuseInitIn(raw[_INIT_AT:])
    if head.opcode != Opcode.INIT:
        return f"the probe connection began with opcode {head.opcode}, not INIT"
    offered = int(init.flags) | (int(init.flags2) << 32 if int(init.flags) & FUSE_INIT_EXT else 0)
    if not offered & FUSE_PASSTHROUGH:
        return "the kernel does not offer FUSE_PASSTHROUGH in INIT (no passthrough before 6.9)"
    reply = FuseOutHeader(unique=head.unique) / FuseInitOut(
        major=7, minor=init.minor, flags=FUSE_INIT_EXT, flags2=FUSE_PASSTHROUGH >> 32,
        max_write=4096, time_gran=1, max_stack_depth=1)
    os.write(fd, bytes(reply))
    backing = os.open(os.path.dirname(os.path.abspath(__file__)) + "/__init__.py",
                      os.O_RDONLY | os.O_CLOEXEC)
    try:
        backing_id = fcntl.ioctl(fd, DevIoctl.BACKING_OPEN,
                                 bytearray(bytes(FuseBackingMap(fd=backing))), True)
    except OSError as exc:
        return f"FUSE_DEV_IOC_BACKING_OPEN refused: {exc.strerror}"
    finally:
        os.close(backing)
    try:
        fcntl.ioctl(fd, DevIoctl.BACKING_CLOSE, bytearray(struct.pack("<I", backing_id)), True)
    except OSError as exc:
        return f"FUSE_DEV_IOC_BACKING_CLOSE refused: {exc.strerror}"
    return None


def max_pages_limit() -> int:
    """How many pages this kernel lets one FUSE request carry (read each time: it is a
    sysctl, and a connection takes it when it is made)."""
    try:
        with open(_MAX_PAGES_SYSCTL, encoding="ascii") as f:
            return max(1, min(int(f.read()), 0xFFFF))  # max_pages is a u16 on the wire
    except (OSError, ValueError):
        return DEFAULT_MAX_PAGES_LIMIT


@functools.lru_cache(maxsize=None)
def seqpacket_limit(sndbuf: int) -> int:
    """The largest message (bytes) one `send` on a SOCK_SEQPACKET socketpair whose send
    buffer is `sndbuf` (forced when allowed, as the relay does) takes whole: found by
    trying, to the byte, between 4 KiB and twice `sndbuf`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        try:
            ours.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, sndbuf)
        except PermissionError:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        ours.setblocking(False)
        low, high = 4096, 2 * sndbuf + 1  # low is sent whole; high is not
        chunk = bytes(high)
        while high - low > 1:
            size = (low + high) // 2
            try:
                ours.send(memoryview(chunk)[:size])
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS, errno.EAGAIN):
                    raise
                high = size
            else:
                theirs.recv(1)  # a SEQPACKET recv takes the whole message off
                low = size
        return low
