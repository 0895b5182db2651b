"""Catch the server's /dev/fuse ioctls with seccomp user notification and do them for real.

The server talks to a socket it believes is /dev/fuse, so its passthrough ioctls would fail
there (ENOTTY) and it would quietly drop passthrough. Before the server's exec, a seccomp
filter is installed in the child that turns every ioctl with the FUSE magic (229) into a
notification on a listener fd handed to fusetrace. The supervisor thread then, for each:

- checks the notification is still valid and that the fd is our relay socket (anything
  else continues untouched, as if nothing had happened);
- reads the argument from the calling thread's memory (/proc/TID/mem);
- for ioctls that pass a file descriptor (BACKING_OPEN, Android PASSTHROUGH_OPEN V0/V1/V2),
  takes that fd from the server with pidfd_getfd and rewrites the argument with our copy;
- performs the ioctl on the real /dev/fuse, records it (command, argument bytes as the
  server wrote them, result or errno, thread, the fd and the path behind it), and answers
  the server with the kernel's result or errno.

FUSE_DEV_IOC_CLONE is refused with EINVAL (libfuse then carries on without clone_fd:
cloning the real device would let the clone steal requests from the relay), and
FUSE_DEV_IOC_SYNC_INIT gets ENOTTY (what kernels without it say). Both are recorded.

Caveats: x86-64 and arm64 only; the supervisor needs CAP_SYS_PTRACE-equivalent access to
the server (root here) for /proc/TID/mem and pidfd_getfd; an ioctl blocked in the
supervisor blocks only the calling server thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import platform
import select
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass

from dissectors.ioctls import DevIoctl
from traces import TraceWriter

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)

# <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PR_SET_NO_NEW_PRIVS = 38
_NOTIF = struct.Struct("<QIIiIQ6Q")  # struct seccomp_notif: id, pid, flags, seccomp_data
_RESP = struct.Struct("<QqiI")  # struct seccomp_notif_resp: id, val, error, flags
SECCOMP_IOCTL_NOTIF_RECV = (3 << 30) | (_NOTIF.size << 16) | (ord("!") << 8) | 0
SECCOMP_IOCTL_NOTIF_SEND = (3 << 30) | (_RESP.size << 16) | (ord("!") << 8) | 1
SECCOMP_IOCTL_NOTIF_ID_VALID = (1 << 30) | (8 << 16) | (ord("!") << 8) | 2

# name: (AUDIT_ARCH_*, __NR_ioctl, __NR_seccomp)
_ARCHES = {"x86_64": (0xC000003E, 16, 317), "aarch64": (0xC00000B7, 29, 277)}
NR_PIDFD_GETFD = 438  # the same on every architecture (added in 5.6)
FUSE_IOCTL_TYPE = 229 << 8

# classic BPF opcodes
_LD_W_ABS, _JEQ_K, _AND_K, _RET_K = 0x20, 0x15, 0x54, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _filter_program(arch: int, nr_ioctl: int) -> list[tuple[int, int, int, int]]:
    """ioctl(_, cmd, _) with cmd's type byte 229 → notify; everything else → allow."""
    return [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 0, 5, arch),  # another ABI (e.g. x32/ia32 syscalls): allow
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JEQ_K, 0, 3, nr_ioctl),
        (_LD_W_ABS, 0, 0, 16 + 8),  # args[1], low 32 bits: the ioctl command
        (_AND_K, 0, 0, 0xFF00),
        (_JEQ_K, 1, 0, FUSE_IOCTL_TYPE),
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
    ]


def _syscall_check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate `target_fd` of the process behind `pidfd` into ours (close-on-exec)."""
    return _syscall_check(_libc.syscall(NR_PIDFD_GETFD, pidfd, target_fd, 0), "pidfd_getfd")


@dataclass(frozen=True)
class Notification:
    id: int
    tid: int  # the calling thread
    nr: int
    args: tuple[int, ...]

    @property
    def fd(self) -> int:
        return ctypes.c_int(self.args[0] & 0xFFFFFFFF).value

    @property
    def cmd(self) -> int:
        return self.args[1] & 0xFFFFFFFF

    @property
    def arg_address(self) -> int:
        return self.args[2]


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


def _fd_path(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


#: Which ioctls carry a file descriptor, and where in their argument it sits.
_FD_AT: dict[int, int] = {
    DevIoctl.BACKING_OPEN: 0,  # fuse_backing_map.fd (and Android V0's fuse_passthrough_out.fd)
    DevIoctl.PASSTHROUGH_OPEN_V1: 0,
    DevIoctl.PASSTHROUGH_OPEN_V2: 0,
}


class IoctlTrap:
    """Seccomp supervisor for one server (and every process and thread it starts)."""

    @staticmethod
    def available() -> str | None:
        """None, or why seccomp user notification cannot be used here."""
        if platform.machine() not in _ARCHES:
            return f"no seccomp filter for {platform.machine()}"
        if not hasattr(os, "pidfd_open"):
            return "this Python has no os.pidfd_open"
        try:
            with open("/proc/sys/kernel/seccomp/actions_avail", encoding="ascii") as f:
                if "user_notif" not in f.read().split():
                    return "the kernel offers no seccomp user notification"
        except OSError:
            return "the kernel has no seccomp"
        return None

    def __init__(self, relay_fd_in_child: int, device_fd: int, writer: TraceWriter) -> None:
        """`relay_fd_in_child` is the server's socket end, open here under the same number
        (subprocess's pass_fds keeps numbers); its inode is how the relay is recognised."""
        self.relay_fd_in_child = relay_fd_in_child
        self.device_fd = device_fd
        self.writer = writer
        self.relay_inode = os.fstat(relay_fd_in_child).st_ino
        self.open_backing_ids = 0
        self._parent_end, self._child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._listener: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        arch, self._nr_ioctl, self._nr_seccomp = _ARCHES[platform.machine()]
        program = _filter_program(arch, self._nr_ioctl)
        self._filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
        self._prog = _SockFprog(len(program), self._filters)

    # --- in the child, between fork and exec ------------------------------------------

    def child_setup(self) -> None:
        """preexec_fn: install the filter, send the listener fd to the parent."""
        if os.getuid() != 0:
            _syscall_check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
        listener = _syscall_check(
            _libc.syscall(self._nr_seccomp, SECCOMP_SET_MODE_FILTER,
                          SECCOMP_FILTER_FLAG_NEW_LISTENER, ctypes.byref(self._prog)),
            "seccomp")
        socket.send_fds(self._child_end, [b"L"], [listener])
        os.close(listener)

    # --- in fusetrace ----------------------------------------------------------------

    def start(self, proc: subprocess.Popen[bytes]) -> None:
        """Receive the listener from the started server and supervise it."""
        self._child_end.close()
        self._parent_end.settimeout(5)
        try:
            _, fds, _, _ = socket.recv_fds(self._parent_end, 16, 1)
        except (socket.timeout, OSError) as exc:
            raise RuntimeError(f"the server never handed over its seccomp listener: {exc}") from exc
        finally:
            self._parent_end.close()
        if not fds:
            raise RuntimeError("the server never handed over its seccomp listener")
        self._listener = fds[0]
        self._thread = threading.Thread(target=self._serve, name="ioctl-trap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            os.close(self._listener)
            self._listener = None

    def _serve(self) -> None:
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        while not self._stopping.is_set():
            events = poller.poll(200)
            if not events:
                continue
            if events[0][1] & (select.POLLHUP | select.POLLERR) and not events[0][1] & select.POLLIN:
                return  # every process under the filter is gone
            buf = bytearray(_NOTIF.size)  # NOTIF_RECV wants a zeroed buffer
            try:
                fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_RECV, buf)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.ENOENT):
                    continue  # the caller died or was interrupted before we got it
                log.error("seccomp listener: %s", exc)
                return
            nid, tid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buf)
            note = Notification(nid, tid, nr, tuple(args))
            try:
                val, err, cont = self._handle(note)
            except Exception:  # never leave a server thread blocked on our bug
                log.exception("handling ioctl %#x", note.cmd)
                val, err, cont = -1, errno.EIO, False
            self._respond(note, val, err, cont)

    def _respond(self, note: Notification, val: int, err: int, cont: bool) -> None:
        flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0
        resp = _RESP.pack(note.id, 0 if cont else val, 0 if cont else -err, flags)
        try:
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_SEND, bytearray(resp))
        except OSError as exc:  # ENOENT: the thread was interrupted meanwhile
            log.debug("answering ioctl %#x of %d: %s", note.cmd, note.tid, exc)

    def _still_valid(self, note: Notification) -> bool:
        try:
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_ID_VALID,
                        bytearray(struct.pack("<Q", note.id)))
            return True
        except OSError:
            return False

    def _is_relay(self, tid: int, fd: int) -> bool:
        return _fd_path(tid, fd) == f"socket:[{self.relay_inode}]"

    def _handle(self, note: Notification) -> tuple[int, int, bool]:
        """(return value, errno, continue-untouched) for one trapped ioctl."""
        if note.nr != self._nr_ioctl or not self._is_relay(note.tid, note.fd):
            return 0, 0, True  # a real /dev/fuse or another device: not ours to touch
        cmd = note.cmd
        size = (cmd >> 16) & 0x3FFF
        arg = self._read_arg(note, size) if size else b""
        if not self._still_valid(note):
            return 0, 0, True  # gone while we read: the answer would go nowhere
        pid = _tgid(note.tid)
        fd_at = _FD_AT.get(cmd)
        backing_fd = struct.unpack_from("<i", arg, fd_at)[0] if fd_at is not None and len(arg) >= 4 else None
        path = _fd_path(pid, backing_fd) if backing_fd is not None else None
        result, err, note_text = self._perform(cmd, arg, pid, backing_fd, fd_at)
        extra = {"note": note_text} if note_text else {}
        self.writer.ioctl(cmd=cmd, arg=arg, result=result, errno=err, tid=note.tid, pid=pid,
                          fd=backing_fd, path=path, **extra)
        if err == 0 and cmd in _FD_AT:
            self.open_backing_ids += 1
        elif err == 0 and cmd == DevIoctl.BACKING_CLOSE:
            self.open_backing_ids -= 1
        return result, err, False

    def _read_arg(self, note: Notification, size: int) -> bytes:
        fd = os.open(f"/proc/{note.tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, size, note.arg_address)
        finally:
            os.close(fd)

    def _perform(self, cmd: int, arg: bytes, pid: int, backing_fd: int | None,
                 fd_at: int | None) -> tuple[int, int, str]:
        """Do the ioctl on the real device: (result, errno, what fusetrace did instead)."""
        if cmd == DevIoctl.CLONE:
            return -1, errno.EINVAL, "refused: a clone of the real device would bypass the relay"
        if cmd == DevIoctl.SYNC_INIT:
            return -1, errno.ENOTTY, "not relayed: answered as a kernel without SYNC_INIT"
        ours = None
        buf = bytearray(arg)
        try:
            if backing_fd is not None and fd_at is not None:
                pidfd = os.pidfd_open(pid)
                try:
                    ours = pidfd_getfd(pidfd, backing_fd)
                except OSError as exc:
                    return -1, exc.errno or errno.EBADF, f"could not take fd {backing_fd}: {exc.strerror}"
                finally:
                    os.close(pidfd)
                struct.pack_into("<i", buf, fd_at, ours)
            try:
                result = fcntl.ioctl(self.device_fd, cmd, buf) if buf else fcntl.ioctl(self.device_fd, cmd, 0)
            except OSError as exc:
                return -1, exc.errno or errno.EIO, ""
            return result, 0, ""
        finally:
            if ours is not None:
                os.close(ours)
